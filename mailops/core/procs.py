"""Processes mailops starts and later ends: by recorded id, never by name.

A pid alone can be reused after a crash or reboot, so each record carries the
process start time (field 22 of /proc/<pid>/stat); a pid whose start time
differs is somebody else's process and is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int  # clock ticks since boot, from /proc/<pid>/stat

    def to_dict(self) -> dict:
        return asdict(self)


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields resume after ')'.
    rest = stat.rsplit(")", 1)[1].split()
    if rest[0] == "Z":  # a zombie has ended already
        return None
    return int(rest[19])


def alive(proc: Proc | None) -> bool:
    return proc is not None and _start_time(proc.pid) == proc.start


def spawn(argv: list[str], log: Path) -> Proc:
    """Start a daemon-like child in its own session, output to log."""
    with open(log, "ab") as out:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    start = _start_time(child.pid)
    if start is None:
        raise RuntimeError(f"{argv[0]} exited at once; see {log}")
    return Proc(child.pid, start)


def stop(proc: Proc | None, timeout: float = 20.0) -> bool:
    """SIGTERM, then SIGKILL after timeout. True if it was ours and is gone."""
    if not alive(proc):
        return False
    os.kill(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(proc.pid)
        if not alive(proc):
            return True
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    while alive(proc):
        _reap(proc.pid)
        time.sleep(0.05)
    return True


def _reap(pid: int) -> None:
    # Our own child (same process started it) must be waited for, or it
    # lingers as a zombie; other processes are reaped by their parent.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
