"""`deploy.py status`: the whole cluster in one look, read with pyinfra
facts from every mail node and balancer at once: each node's services,
queue, disk, certificate and DKIM key ages; each balancer's view of every
backend; each mailbox's replication lag. Reads only; exit 1 when something
needs a person (a service down, a backend down, a replication failing).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from mailops.core.progress import step, table
from mailops.inventory.model import Inventory
from mailops.ops.runbook import session
from mailops.verify.nodes import BACKEND

SERVICES = ("postfix", "dovecot", "rspamd", "redis-server")
CERT = "/etc/mailops/tls/fullchain.pem"
DKIM_DIR = "/var/lib/rspamd/dkim"
LAG_WARN = 300  # seconds a change may wait for replication before status flags it

# One command per mail node; every line "key: value", parsed below.
NODE_PROBE = "; ".join([
    "echo now: $(date +%s)",
    f"echo services: $(systemctl is-active {' '.join(SERVICES)} | paste -sd' ')",
    "echo queue: $(postqueue -j | wc -l) $(postqueue -j | grep -c '\"queue_name\": \"deferred\"')",
    "echo disk: $(df -P /var/vmail | awk 'NR==2 {print $5}')",
    f"openssl x509 -noout -in {CERT} >/dev/null 2>&1 && echo cert: "
    f"$(date -d \"$(openssl x509 -noout -startdate -in {CERT} | cut -d= -f2)\" +%s)"
    f" $(date -d \"$(openssl x509 -noout -enddate -in {CERT} | cut -d= -f2)\" +%s)",
    f"for f in {DKIM_DIR}/*.key; do echo dkim: $(basename $f .key) $(stat -c %Y $f); done",
    "doveadm replicator status '*' | tail -n +2 | sed 's/^/repl: /'",
])


@dataclass
class NodeStatus:
    name: str
    reachable: bool = True
    services: dict[str, str] = field(default_factory=dict)
    queue: int = 0
    deferred: int = 0
    disk: str = "?"
    cert_age_days: int | None = None
    cert_days_left: int | None = None
    dkim_age_days: dict[str, int] = field(default_factory=dict)  # domain.selector -> days


@dataclass
class Replication:
    mailbox: str
    node: str
    pending: bool  # a change waits to be replicated
    since_success: int  # seconds since the last successful sync
    failed: bool

    @property
    def lag(self) -> int:
        """0 while nothing waits; else how long the oldest change may have waited."""
        return self.since_success if self.pending else 0


@dataclass
class Status:
    nodes: list[NodeStatus] = field(default_factory=list)
    backends: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    # (balancer, service, node, status, sessions)
    replication: list[Replication] = field(default_factory=list)
    # (balancer, haproxy, keepalived, holds the floating address)
    balancers: list[tuple[str, str, str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        svc = [(n.name, " ".join(f"{s}={v}" for s, v in n.services.items()) if n.reachable
                else "UNREACHABLE", f"{n.queue} ({n.deferred} deferred)", n.disk,
                "-" if n.cert_age_days is None else
                f"{n.cert_age_days} d old, {n.cert_days_left} d left",
                ", ".join(f"{k} {v} d" for k, v in sorted(n.dkim_age_days.items())) or "-")
               for n in self.nodes]
        out = [table(("node", "services", "queue", "disk", "certificate", "DKIM keys"), svc)]
        if self.balancers:
            out += ["", table(("balancer", "haproxy", "keepalived", "floating address"),
                              self.balancers)]
        if self.backends:
            out += ["", table(("balancer", "service", "node", "state", "sessions"),
                              self.backends)]
        if self.replication:
            rows = [(r.mailbox, r.node, "waiting" if r.pending else "in sync",
                     f"{r.lag} s", "last try failed" if r.failed else "-")
                    for r in sorted(self.replication, key=lambda r: (r.mailbox, r.node))]
            out += ["", table(("mailbox", "node", "replication", "lag", "retry"), rows)]
        out += ["", "status: " + ("ok" if self.ok else f"{len(self.problems)} problem(s)")]
        out += [f"  {p}" for p in self.problems]
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": self.problems,
                "nodes": [n.__dict__ for n in self.nodes],
                "backends": [dict(zip(("balancer", "service", "node", "state", "sessions"), b,
                                      strict=True)) for b in self.backends],
                "balancers": [dict(zip(("balancer", "haproxy", "keepalived", "floating"), b,
                                       strict=True)) for b in self.balancers],
                "replication": [{**r.__dict__, "lag": r.lag} for r in self.replication]}


_SINCE = re.compile(r"^(?:(\d+)d\s*)?(\d+):(\d+):(\d+)$")
_T = r"(?:\d+d\s+)?\S+"  # a doveadm time ("00:01:02", "1d 02:03:04") or "-"
_REPL = re.compile(rf"^(?P<user>\S+)\s+(?P<prio>\S+)\s+(?P<fast>{_T})\s+(?P<full>{_T})\s+"
                   rf"(?P<success>{_T})\s+(?P<failed>\S+)\s*$")


def since_seconds(text: str) -> int | None:
    """doveadm's "00:01:02" or "1d 02:03:04" -> seconds; None for "-"."""
    found = _SINCE.match(text.strip())
    if not found:
        return None
    d, h, m, s = (int(x or 0) for x in found.groups())
    return ((d * 24 + h) * 60 + m) * 60 + s


def parse_node(name: str, output: str) -> tuple[NodeStatus, list[Replication]]:
    node, repl = NodeStatus(name), []
    now = int(time.time())
    for line in output.splitlines():
        key, _, value = line.partition(": ")
        words = value.split()
        if key == "now" and words:
            now = int(words[0])
        elif key == "services":
            node.services = dict(zip(SERVICES, words + ["?"] * (len(SERVICES) - len(words)),
                                     strict=True))
        elif key == "queue" and len(words) == 2:
            node.queue, node.deferred = int(words[0]), int(words[1])
        elif key == "disk" and words:
            node.disk = words[0]
        elif key == "cert" and len(words) == 2:
            node.cert_age_days = (now - int(words[0])) // 86400
            node.cert_days_left = (int(words[1]) - now) // 86400
        elif key == "dkim" and len(words) == 2 and words[1].isdigit():
            node.dkim_age_days[words[0]] = (now - int(words[1])) // 86400
        elif key == "repl" and (found := _REPL.match(value.strip())):
            repl.append(Replication(found["user"], name, found["prio"] != "none",
                                    since_seconds(found["success"]) or 0,
                                    found["failed"] != "-"))
    return node, repl


def status(inventory: Inventory) -> Status:
    result = Status()
    mail, lbs = list(inventory.group("mail")), list(inventory.group("lb"))
    with session(inventory, [*mail, *lbs], "status") as s:
        for host in mail:
            if host.name in s.down:
                result.nodes.append(NodeStatus(host.name, reachable=False))
                result.problems.append(f"{host.name}: unreachable over SSH")
                continue
            step("status", host.name, "reading services, queue, disk, keys, replication")
            node, repl = parse_node(host.name, s.output(host.name, NODE_PROBE))
            result.nodes.append(node)
            result.replication += repl
            result.problems += [f"{host.name}: {svc} is {state}"
                                for svc, state in node.services.items() if state != "active"]
            if node.cert_days_left is not None and node.cert_days_left < 21:
                result.problems.append(f"{host.name}: the certificate expires in "
                                       f"{node.cert_days_left} days (`deploy.py converge` "
                                       "renews the lab's; else replace it)")
        for lb in lbs:
            if lb.name in s.down:
                result.problems.append(f"{lb.name}: unreachable over SSH")
                continue
            step("status", lb.name, "reading the balancer's backends")
            if inventory.floating_address is not None:
                words = s.output(lb.name, "systemctl is-active haproxy keepalived | xargs; "
                                 f"ip -o -4 addr show to {inventory.floating_address}/32 "
                                 "| wc -l").split()
                words += ["?"] * (3 - len(words))
                result.balancers.append((lb.name, words[0], words[1],
                                         f"{inventory.floating_address} held" if words[2] == "1"
                                         else "-"))
            rows = s.haproxy(lb.name)
            for service in BACKEND.values():
                for host in mail:
                    row = rows.get((service, host.name))
                    state = row["status"] if row else "MISSING"
                    result.backends.append((lb.name, service, host.name, state,
                                            int(row.get("scur") or 0) if row else 0))
                    if not state.startswith(("UP", "DRAIN", "MAINT")):
                        result.problems.append(f"{lb.name}: {service} on {host.name} is "
                                               f"{state}")
    if inventory.floating_address is not None:
        holders = [b[0] for b in result.balancers if b[3] != "-"]
        if len(holders) != 1:
            result.problems.append(f"floating address {inventory.floating_address}: held by "
                                   f"{' and '.join(holders) or 'no balancer'} "
                                   "(`systemctl status keepalived` on each balancer)")
        result.problems += [f"{b[0]}: keepalived is {b[2]}" for b in result.balancers
                            if b[2] != "active"]
    for r in result.replication:
        # A failed try right after a node came back is retried by Dovecot;
        # it needs a person once no sync has succeeded for LAG_WARN.
        if r.failed and r.since_success > LAG_WARN:
            result.problems.append(f"{r.node}: replication of {r.mailbox} failing for "
                                   f"{r.since_success} s (`doveadm replicator status "
                                   f"{r.mailbox}` there)")
        elif r.lag > LAG_WARN:
            result.problems.append(f"{r.node}: {r.mailbox} waits {r.lag} s for replication")
    return result
