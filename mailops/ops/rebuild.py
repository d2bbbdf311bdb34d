"""`deploy.py rebuild NODE`: a mail node was lost and its host is back
empty (a new machine, or in the lab a host made anew from the image).

From the inventory and the vault alone (the same secrets, DKIM keys and
certificates, so the DNS plan stays empty): the node is drained first, in
the balancer (maintenance on every service) and for its peers (converged
with the node left out of every mailbox's home list, so no delivery and
no proxied session reaches a mailbox that is not there yet); it is
bootstrapped and converged; its pair's mailboxes are synced onto it from
its pair (from the latest backup when the pair is gone too) and checked
equal; its saved Postfix queue is put back; then it is undrained and the
service verified.

Safe to re-run: every step looks at where things are now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mailops.converge.bootstrap import bootstrap
from mailops.converge.run import converge
from mailops.core import progress
from mailops.core.errors import MailopsError
from mailops.inventory import remote
from mailops.inventory.model import Host, Inventory
from mailops.ops import backup as ops_backup
from mailops.ops.dsync import node_sync
from mailops.site.homes import homes
from mailops.site.mailmodel import load_mail_model
from mailops.verify.nodes import BACKEND, haproxy_states


@dataclass
class RebuildResult:
    node: str
    steps: list[tuple[str, str, float]] = field(default_factory=list)  # step, result, s
    ready_at: float = 0.0  # epoch seconds when the balancer took the node back
    verify_ok: bool = False

    def table(self) -> str:
        lines = [f"rebuild {self.node}", "", f"{'step':<40} {'result':<50} {'s':>6}"]
        lines += [f"{w:<40} {r:<50} {t:6.1f}" for w, r, t in self.steps]
        back = time.strftime("%H:%M:%S", time.localtime(self.ready_at))
        lines += ["", f"back in the balancer from {back}" if self.ready_at else
                  "not back in the balancer",
                  "verify passed" if self.verify_ok else "VERIFY FAILED (see the rows above)"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "ready_at": self.ready_at, "verify_ok": self.verify_ok,
                "steps": [{"step": w, "result": r, "seconds": round(t, 1)}
                          for w, r, t in self.steps]}


def _balancer(inventory: Inventory, node: str, state: str) -> str:
    for lb in inventory.group("lb"):
        script = "; ".join(f"echo 'set server {b}/{node} state {state}' | "
                           "socat - /run/haproxy/admin.sock" for b in BACKEND.values())
        res = remote.run(inventory, lb, script, timeout=30)
        if res.returncode != 0:
            raise MailopsError(f"setting {node} to {state} on {lb.name} failed: "
                               f"{res.stderr.strip()[:200]}")
    return f"{state} on {len(BACKEND)} services"


def _guids(inventory: Inventory, host: Host, address: str) -> set[str]:
    res = remote.run(inventory, host, f"doveadm -f tab fetch -u {address} 'mailbox guid' ALL",
                     timeout=300)
    if res.returncode != 0:
        raise MailopsError(f"reading {address} on {host.name}: {res.stderr.strip()[:200]}")
    return set(res.stdout.splitlines()[1:])


def _wait_up(inventory: Inventory, node: str, timeout: float = 90) -> None:
    lbs = inventory.group("lb")
    if not lbs:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # On every balancer: either may hold the floating address.
        states = [r["status"] for lb in lbs for (_, n), r in haproxy_states(inventory, lb).items()
                  if n == node]
        if states and all(s == "UP" for s in states):
            return
        time.sleep(1)
    raise MailopsError(f"{node} is not UP in the balancer after {timeout:.0f} s")


def rebuild(inventory: Inventory, node: str, requeue: bool = True) -> RebuildResult:
    from mailops.verify.run import full

    nodes = {h.name: h for h in inventory.group("mail")}
    if node not in nodes:
        raise MailopsError(f"rebuild {node}: not a mail node; use one of {', '.join(nodes)}")
    host = nodes[node]
    result = RebuildResult(node)
    every_home = homes(inventory, load_mail_model(inventory))
    stored_here = [a for a, h in every_home.items() if node in h.nodes]
    peers = sorted({n for h in every_home.values() if node in h.nodes for n in h.nodes} - {node})
    others = [n for n in nodes if n != node]

    def timed(what: str, fn) -> Any:
        out, shown, seconds = progress.timed("rebuild", node, what, fn, done="done")
        result.steps.append((what, shown, seconds))
        return out

    drained = frozenset({node})
    timed("drain it in the balancer", lambda: _balancer(inventory, node, "maint"))
    if others:
        timed("leave it out on the other nodes", lambda: (
            f"{converge(inventory, limit=','.join(others), drained=drained).changed} change(s)"))
    timed("bootstrap", lambda: f"{bootstrap(inventory).changed} change(s)")
    timed("converge it (drained)", lambda: (
        f"{converge(inventory, limit=node, drained=drained).changed} change(s)"))

    # Its pair's mailboxes, from the pair (dsync: same folder GUIDs), or
    # from the latest backup when no peer answers.
    alive = [p for p in peers if remote.run(inventory, nodes[p], "doveadm who >/dev/null",
                                            timeout=20).returncode == 0]

    def resync() -> str:
        if not stored_here:
            return "no mailbox lives here"
        if not alive:
            res = ops_backup.restore(inventory)
            if not res.ok:
                raise MailopsError("restoring from the backup left folders short:\n"
                                   + res.table())
            return f"{len(stored_here)} mailbox(es) from the latest backup (no peer answers)"
        peer = nodes[alive[0]]
        for address in stored_here:
            # Any failure is tried again (the node has just started), under
            # the user's dsync lock: its own replicator may sync the same
            # mailbox at the same time.
            res = node_sync(inventory, peer, host, address, retry_on=None, timeout=900)
            if res.returncode != 0:
                raise MailopsError(f"syncing {address} from {peer.name} failed: "
                                   f"{res.stderr.strip()[:300]}\nthe node stays drained; "
                                   "run the rebuild again")
            missing = _guids(inventory, peer, address) - _guids(inventory, host, address)
            if missing:
                raise MailopsError(f"{address}: {len(missing)} message(s) of {peer.name} are "
                                   f"not on {node} after the sync; the node stays drained")
        return f"{len(stored_here)} mailbox(es) from {peer.name}, all equal"
    timed("sync its pair's mailboxes onto it", resync)

    def requeue() -> str:
        try:
            count = ops_backup.restore_queue(inventory, node)
        except MailopsError:
            return "nothing re-queued: no backup holds its queue"
        return f"{count} message(s) re-queued"
    if requeue:
        timed("put its saved Postfix queue back", requeue)

    timed("converge the mail nodes (undrained)",
          lambda: f"{converge(inventory, limit='mail').changed} change(s)")
    result.ready_at = time.time()  # no session reached it before this
    timed("undrain it in the balancer", lambda: _balancer(inventory, node, "ready"))
    timed("wait until the balancer has it UP", lambda: _wait_up(inventory, node) or "UP")
    report = timed("verify", lambda: full(inventory))
    result.steps[-1] = ("verify", report.summary(), result.steps[-1][2])
    result.verify_ok = report.ok
    return result
