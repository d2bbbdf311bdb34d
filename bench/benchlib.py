"""What the benchmark scripts share: set-up, bounded subprocesses, a lab of
their own that is always taken down, progress lines and the results file.

Every benchmark reports ratios of two things measured in the same run (the
machine is shared and noisy); bare times are kept in the JSON for reference.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
_T0 = time.monotonic()


def setup() -> None:
    """Make the controller ready and run inside .venv, as deploy.py does."""
    # bench/ itself leaves the import path: bench/dns.py would hide dnspython.
    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from mailops.core import environment

    environment.ensure()  # re-execs this script in .venv when run with another python


def say(msg: str) -> None:
    """One progress line on stderr."""
    print(f"[bench {time.monotonic() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchTimeout(Exception):
    pass


def bound(seconds: int) -> None:
    """The whole run stops by itself after `seconds` (teardown still runs),
    and SIGTERM ends it through the same `finally` blocks."""

    def on_alarm(signum, frame):
        raise BenchTimeout(f"the benchmark ran out of its {seconds} s bound")

    def on_term(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(seconds)


def unbound() -> None:
    signal.alarm(0)


def run(argv: list[str], timeout: float, capture: bool = True,
        input_text: str | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run a command in its own process group, bounded by `timeout`; on
    timeout or interruption that group (ours) is ended. Returns the result
    and its wall time. stderr passes through (progress lines)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, start_new_session=True, text=True,
                            stdin=subprocess.PIPE if input_text is not None
                            else subprocess.DEVNULL,
                            stdout=subprocess.PIPE if capture else None)
    try:
        out, _ = proc.communicate(input_text, timeout=timeout)
    except BaseException:
        _end_group(proc)
        raise
    took = time.monotonic() - t0
    return subprocess.CompletedProcess(argv, proc.returncode, out or "", ""), took


def _end_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def deploy(*args: str, timeout: float = 1800) -> tuple[subprocess.CompletedProcess, float]:
    """`python3 deploy.py ARGS` (through this venv's python), bounded."""
    res, took = run([sys.executable, str(ROOT / "deploy.py"), *args], timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"deploy.py {' '.join(args)} exited {res.returncode}\n"
                           f"{res.stdout[-2000:]}")
    return res, took


def up_json(inv: Path, timeout: float = 1800) -> tuple[dict[str, Any], float]:
    """`deploy.py up --json`: its summary and its wall time. An `up` whose
    verification fails exits 1, so `deploy` raises (with the JSON's tail)."""
    res, took = deploy("up", "--json", "-i", str(inv), timeout=timeout)
    return json.loads(res.stdout), took


@contextlib.contextmanager
def own_lab(name: str, net: str) -> Iterator[Path]:
    """A copy of inventories/lab with its own lab name and subnet (net is
    like 198.18.60); the lab is taken down at the end, also on failure."""
    from tests.conftest import lab_inventory_copy

    inv = lab_inventory_copy(Path(tempfile.mkdtemp(prefix=f"mailops-bench-{name}-")) / "lab",
                             name, net)
    say(f"lab {name} ({net}.0/24), inventory {inv}")
    try:
        yield inv
    finally:
        unbound()  # teardown is not cut short by the run's bound
        lab_down(inv)


def lab_down(inv: Path) -> None:
    say(f"taking down the lab of {inv}")
    try:
        res, _ = run([sys.executable, str(ROOT / "deploy.py"), "lab", "down", "-i", str(inv)],
                     timeout=300)
        if res.returncode != 0:
            say(f"WARNING: lab down exited {res.returncode}; run "
                f"`python3 deploy.py lab down -i {inv}`")
    except subprocess.TimeoutExpired:
        say(f"WARNING: lab down timed out; run `python3 deploy.py lab down -i {inv}`")


def load(inv: Path):
    from mailops.inventory.model import load_inventory

    return load_inventory(inv)


def wait_for(fn: Callable[[], Any], timeout: float, what: str | None = None,
             every: float = 1.0) -> Any:
    """fn()'s first true value within timeout (a connection error counts as
    not yet); on timeout an error naming `what`, or None without one."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = fn()
        except (OSError, RuntimeError, IndexError, imaplib.IMAP4.error):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            if what is None:
                return None
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def median_of(fn: Callable[[], float], n: int) -> tuple[float, list[float]]:
    samples = [fn() for _ in range(n)]
    return statistics.median(samples), samples


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.monotonic()
    value = fn()
    return value, time.monotonic() - t0


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()}, **data}
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.rename(path)
    say(f"results in {path.relative_to(ROOT)}")
    return path
