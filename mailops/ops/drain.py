"""`deploy.py drain NODE` / `undrain NODE`, with pyinfra: the balancer
sends a draining node no new sessions; the ones it has may finish, for up
to a bound; its mail queue is flushed (deliveries go to each mailbox's
home node, or its pair's other node). Undrain gives it back and waits until
the balancer's health checks see every service up. Both do nothing where
nothing needs doing, so they are safe to repeat.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mailops.core.errors import MailopsError
from mailops.core.progress import step, table
from mailops.inventory.model import Inventory
from mailops.ops.runbook import Session, session, set_balancer_state

SESSION_WAIT = 120  # seconds open sessions may take to finish
QUEUE_WAIT = 60  # seconds the flushed queue may take to empty
UP_WAIT = 90  # seconds an undrained node may take to pass every health check


@dataclass
class DrainReport:
    action: str
    node: str
    steps: list[tuple[str, str, float]] = field(default_factory=list)  # step, result, s
    ok: bool = True

    def add(self, what: str, result: str, t0: float) -> None:
        self.steps.append((what, result, time.monotonic() - t0))

    def text(self) -> str:
        return "\n".join([table(("step", "result", "s"), [(w, r, f"{t:.1f}")
                                                          for w, r, t in self.steps]), "",
                          f"{self.action} {self.node}: {'done' if self.ok else 'NOT DONE'}"])

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "node": self.node, "ok": self.ok,
                "steps": [{"step": w, "result": r, "seconds": round(t, 1)}
                          for w, r, t in self.steps]}


@contextlib.contextmanager
def _balancers_and(inventory: Inventory, node: str, phase: str) -> Iterator[Session]:
    """A pyinfra session over the balancers and the mail node `node`, all
    reachable, or an error before anything changes."""
    nodes = {h.name: h for h in inventory.group("mail")}
    if node not in nodes:
        raise MailopsError(f"{node}: not a mail node; use one of {', '.join(nodes)}")
    with session(inventory, [*inventory.group("lb"), nodes[node]], phase) as s:
        if s.down:
            raise MailopsError(f"unreachable over SSH: {', '.join(s.down)}; nothing changed")
        yield s


def _sessions(s: Session, node: str) -> int:
    return sum(int(row.get("scur") or 0) for lb in s.hosts.values() if "lb" in lb.groups
               for (_, server), row in s.haproxy(lb.name).items() if server == node)


def _states(s: Session, node: str) -> set[str]:
    return {row.get("status", "") for lb in s.hosts.values() if "lb" in lb.groups
            for (_, server), row in s.haproxy(lb.name).items() if server == node}


def drain(inventory: Inventory, node: str, wait: float = SESSION_WAIT) -> DrainReport:
    report = DrainReport("drain", node)
    with _balancers_and(inventory, node, "drain") as s:
        t0 = time.monotonic()
        changed = set_balancer_state(s, node, "drain")
        report.add("no new sessions from the balancer",
                   f"{len(changed)} service(s) set to drain" if changed else "already draining",
                   t0)

        t0 = time.monotonic()
        deadline = t0 + wait
        while (open_ := _sessions(s, node)) and time.monotonic() < deadline:
            step("drain", node, f"{open_} session(s) still open")
            time.sleep(2)
        report.add("open sessions finish", "none open" if not open_ else
                   f"{open_} still open after {wait:.0f} s (left to end by themselves)", t0)

        t0 = time.monotonic()
        queued = int(s.output(node, "postqueue -j | wc -l").strip() or 0)
        s.operate("Flush the mail queue", node, ["postqueue -f"] if queued else [])
        deadline = t0 + QUEUE_WAIT
        while queued and time.monotonic() < deadline:
            time.sleep(2)
            queued = int(s.output(node, "postqueue -j | wc -l").strip() or 0)
        report.add("queue delivered", "empty" if not queued else
                   f"{queued} message(s) still queued after {QUEUE_WAIT} s (`postqueue -p` on "
                   f"{node} says why)", t0)
        report.ok = not queued
    return report


def undrain(inventory: Inventory, node: str) -> DrainReport:
    report = DrainReport("undrain", node)
    with _balancers_and(inventory, node, "undrain") as s:
        t0 = time.monotonic()
        changed = set_balancer_state(s, node, "ready")
        report.add("sessions from the balancer again",
                   f"{len(changed)} service(s) set to ready" if changed else "already ready", t0)
        t0 = time.monotonic()
        deadline = t0 + UP_WAIT
        while True:
            states = _states(s, node)
            up = bool(states) and all(st.startswith("UP") for st in states)
            if up or time.monotonic() > deadline:
                break
            step("undrain", node, "waiting for the health checks: " + ", ".join(sorted(states)))
            time.sleep(2)
        report.add("every service passes its health check",
                   "UP" if up else f"not UP after {UP_WAIT} s: {', '.join(sorted(states))}", t0)
        report.ok = up
    return report
