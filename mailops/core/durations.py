"""Durations as Postfix and HAProxy write them ("500ms", "2s", "1m"), in seconds."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def seconds(value: str | float, bare: str) -> float:
    """`bare` is the unit of a number written without one: "s" in Postfix,
    "ms" in HAProxy."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)?", str(value).strip())
    if not m:
        raise ValueError(f"cannot read the duration {value!r}")
    return float(m[1]) * _UNITS[m[2] or bare]
