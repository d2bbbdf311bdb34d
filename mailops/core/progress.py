"""Progress lines and result tables a person can scan."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence

_lock = threading.Lock()
_t0 = time.monotonic()


def step(phase: str, target: str, message: str) -> None:
    """One progress line: elapsed time, phase, host (or '-'), what happens."""
    with _lock:
        print(f"[{time.monotonic() - _t0:6.1f}s] {phase:<9} {target:<8} {message}",
              file=sys.stderr, flush=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
