"""`deploy.py rolling-update` and `deploy.py restart SERVICE`: one mail node
at a time, the others serving. For each node: drain it, do the work
(rolling-update: `apt-get upgrade` with pyinfra, then a converge of that
node alone; restart: the service restarted), check it (every service port
answers as the balancer speaks to it, and a message handed to its Postfix
reaches the test account's home), then undrain it. The first failure stops
the run with that node left drained: the cluster goes on serving from the
others, and the report says what to look at.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from mailops.core.errors import MailopsError
from mailops.core.progress import step, table
from mailops.inventory import remote
from mailops.inventory.model import Host, Inventory
from mailops.ops.drain import drain, undrain
from mailops.ops.runbook import session

SERVICES = {"postfix": "postfix", "dovecot": "dovecot", "rspamd": "rspamd",
            "redis": "redis-server"}  # what `restart` accepts -> its unit
DRAIN_WAIT = 60  # seconds open sessions may take to finish before the work
ROUND_TRIP_WAIT = 60  # seconds a message handed to the node may take to arrive


@dataclass
class RollReport:
    action: str
    steps: list[tuple[str, str, str, float]] = field(default_factory=list)
    # node, step, result, seconds
    done: list[str] = field(default_factory=list)  # nodes finished
    stopped_at: str | None = None

    @property
    def ok(self) -> bool:
        return self.stopped_at is None

    def run(self, node: str, what: str, fn) -> Any:
        step(self.action, node, what)
        t0 = time.monotonic()
        try:
            value = fn()
        except MailopsError as e:
            self.steps.append((node, what, f"FAILED: {str(e).splitlines()[0][:200]}",
                               time.monotonic() - t0))
            self.stopped_at = node
            raise
        self.steps.append((node, what, value if isinstance(value, str) else "ok",
                           time.monotonic() - t0))
        return value

    def text(self) -> str:
        lines = [table(("node", "step", "result", "s"),
                       [(n, w, r, f"{t:.1f}") for n, w, r, t in self.steps]), ""]
        if self.ok:
            lines.append(f"{self.action}: done on {', '.join(self.done)}")
        else:
            lines.append(f"{self.action}: STOPPED at {self.stopped_at}, which stays drained "
                         f"(the others serve); done before it: {', '.join(self.done) or 'none'}"
                         f". Fix the cause, then `deploy.py undrain {self.stopped_at}` or run "
                         "again")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "ok": self.ok, "done": self.done,
                "stopped_at": self.stopped_at,
                "steps": [{"node": n, "step": w, "result": r, "seconds": round(t, 1)}
                          for n, w, r, t in self.steps]}


def _upgrade(inventory: Inventory, host: Host) -> str:
    """apt's upgrade with pyinfra: the index refreshed, the installed
    packages upgraded (the converge after rewrites mailops's files)."""
    from pyinfra.operations import apt

    with session(inventory, [host], "upgrade") as s:
        if s.down:
            raise MailopsError(f"{host.name}: unreachable over SSH")
        s.apply("Refresh the package index", host.name, apt.update, _timeout=600)
        changed = s.apply("Upgrade the installed packages", host.name, apt.upgrade,
                          _timeout=1800)
    return "packages upgraded" if changed else "nothing to upgrade"


def _converge_node(inventory: Inventory, host: Host) -> str:
    from mailops.converge.run import converge

    return f"{converge(inventory, limit=host.name).changed} change(s)"


def _check(inventory: Inventory, host: Host) -> str:
    """Every service port answers as the balancer speaks to it, and a
    message handed to this node's Postfix reaches the test account's home."""
    from mailops.verify.nodes import probe_node
    from mailops.verify.service import service_for

    svc = service_for(inventory)
    probed = probe_node(inventory, host, svc)
    if not probed.ok:
        raise MailopsError(f"{host.name}: " + "; ".join(f"{r.check}: {r.cause}"
                                                       for r in probed.failed))
    if not svc.accounts:
        return f"{len(probed.rows)} port(s) answer; no test account for a round trip"
    user = next(iter(svc.accounts))
    msgid = f"<rolling-{uuid.uuid4().hex[:12]}@{host.name}>"
    sent = remote.run(inventory, host, f"printf 'From: postmaster\\nTo: {user}\\nSubject: "
                      f"mailops round trip through {host.name}\\nMessage-ID: {msgid}\\n\\n"
                      f"check\\n' | sendmail -f '' {user}")
    if sent.returncode != 0:
        raise MailopsError(f"{host.name}: sendmail refused the check message: "
                           f"{sent.stderr.strip()[:200]}")
    home = svc.homes[user].node if user in svc.homes else host.name
    home_host = inventory.host(home)
    deadline = time.monotonic() + ROUND_TRIP_WAIT
    query = f"doveadm search -u {user} mailbox INBOX header message-id '{msgid}'"
    while time.monotonic() < deadline:
        if remote.run(inventory, home_host, query).stdout.strip():
            remote.run(inventory, home_host, query.replace("search", "expunge", 1))
            return f"{len(probed.rows)} port(s) answer; a message through it reached {home}"
        time.sleep(1)
    raise MailopsError(f"{host.name}: a message handed to its Postfix did not reach {user} on "
                       f"{home} within {ROUND_TRIP_WAIT} s (`postqueue -p` on {host.name})")


def _each_node(inventory: Inventory, report: RollReport, work,
               wait: float = DRAIN_WAIT) -> RollReport:
    for host in inventory.group("mail"):
        try:
            report.run(host.name, "drain", lambda h=host: _drained(inventory, h, wait))
            for what, fn in work(host):
                report.run(host.name, what, fn)
            report.run(host.name, "check: ports and a round trip",
                       lambda h=host: _check(inventory, h))
            report.run(host.name, "undrain", lambda h=host: _undrained(inventory, h))
        except MailopsError:
            return report
        report.done.append(host.name)
    return report


def _drained(inventory: Inventory, host: Host, wait: float) -> str:
    done = drain(inventory, host.name, wait)
    return "; ".join(r for _, r, _ in done.steps)


def _undrained(inventory: Inventory, host: Host) -> str:
    done = undrain(inventory, host.name)
    if not done.ok:
        raise MailopsError(f"{host.name}: {done.steps[-1][1]}")
    return done.steps[-1][1]


def rolling_update(inventory: Inventory, upgrade: bool = True,
                   wait: float = DRAIN_WAIT) -> RollReport:
    def work(host: Host):
        if upgrade:
            yield "apt-get upgrade", lambda: _upgrade(inventory, host)
        yield "converge this node", lambda: _converge_node(inventory, host)

    return _each_node(inventory, RollReport("rolling-update"), work, wait)


def restart(inventory: Inventory, service: str, wait: float = DRAIN_WAIT) -> RollReport:
    if service not in SERVICES:
        raise MailopsError(f"restart {service}: not a mail node service; use one of "
                           f"{', '.join(SERVICES)}")
    unit = SERVICES[service]

    def work(host: Host):
        def go() -> str:
            from pyinfra.operations import systemd

            with session(inventory, [host], "restart") as s:
                if s.down:
                    raise MailopsError(f"{host.name}: unreachable over SSH")
                s.apply(f"Restart {unit}", host.name, systemd.service, service=unit,
                        running=True, restarted=True)
                state = s.output(host.name, f"systemctl is-active {unit}").strip()
            if state != "active":
                raise MailopsError(f"{host.name}: {unit} is {state} after the restart "
                                   f"(`journalctl -u {unit}` there)")
            return f"{unit} active"
        yield f"restart {unit}", go

    return _each_node(inventory, RollReport(f"restart {service}"), work, wait)
