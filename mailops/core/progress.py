"""Progress lines and result tables a person can scan."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_t0 = time.monotonic()


def step(phase: str, target: str, message: str) -> None:
    """One progress line: elapsed time, phase, host (or '-'), what happens."""
    with _lock:
        print(f"[{time.monotonic() - _t0:6.1f}s] {phase:<9} {target:<8} {message}",
              file=sys.stderr, flush=True)


def timed(phase: str, target: str, what: str, fn: Callable[[], T],
          done: str = "ok") -> tuple[T, str, float]:
    """One step of a runbook: its progress line, then fn. Returns fn's value,
    what the step's row in the result table shows (the value when it is a
    string, else done) and the seconds it took."""
    step(phase, target, what)
    t0 = time.monotonic()
    value = fn()
    return value, value if isinstance(value, str) else done, time.monotonic() - t0


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
