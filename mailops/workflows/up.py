"""`deploy.py up`, the main job: from an inventory to a working, verified
mail service. Lab (for a lab inventory) -> bootstrap -> converge -> DNS
publish -> verify, then a summary of the hosts, what changed, the DNS
records and how to connect. """

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mailops.core.errors import MailopsError
from mailops.core.progress import step, table
from mailops.inventory.model import Inventory, load_inventory
from mailops.verify.report import Report
from mailops.verify.service import PORTS, Service


@dataclass
class Phase:
    name: str
    changes: int
    seconds: float
    note: str = ""


@dataclass
class UpResult:
    inventory: Inventory
    phases: list[Phase] = field(default_factory=list)
    hosts: list[dict[str, Any]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    dns_server: str | None = None
    domains: list[str] = field(default_factory=list)
    service: Service | None = None
    verify: Report = field(default_factory=Report)

    @property
    def changes(self) -> int:
        return sum(p.changes for p in self.phases)

    def to_dict(self) -> dict[str, Any]:
        svc = self.service
        assert svc is not None
        return {
            "service_name": svc.service_name,
            "lb_address": svc.address,
            "lb_host": svc.front,
            "dns_server": self.dns_server,
            "ca_file": str(svc.ca_file) if svc.ca_file else None,
            "domains": self.domains,
            "ports": [{"port": p, "protocol": n, "tls": t} for p, n, t in PORTS],
            # Lab only: its mailboxes are test accounts (service_for).
            "accounts": [{"address": a, "password": pw} for a, pw in svc.accounts.items()]
            if self.inventory.lab is not None else [],
            "hosts": self.hosts,
            "phases": [vars(p) for p in self.phases],
            "changes": self.changes,
            "dns_records": self.records,
            "verify": {"ok": self.verify.ok, "summary": self.verify.summary(),
                       "checks": self.verify.to_list()},
        }

    def text(self) -> str:
        svc = self.service
        assert svc is not None
        out = ["hosts", table(["host", "groups", "address", "state", "changed"],
                              [[h["host"], h["groups"], h["address"], h["state"], h["changed"]]
                               for h in self.hosts])]
        out += ["", "phases", table(["phase", "changes", "seconds", "note"],
                                     [[p.name, p.changes, f"{p.seconds:.1f}", p.note]
                                      for p in self.phases])]
        out += ["", "DNS records" + (f" (served by {self.dns_server})" if self.dns_server
                                     else ""),
                table(["name", "type", "value"],
                      [[r["name"], r["type"], _short(r["value"])] for r in self.records])]
        out += ["", "verify: " + self.verify.summary(), self.verify.table()]
        ports = {n: p for p, n, _ in PORTS}
        account = next(iter(svc.accounts.items()), None)
        connect = [
            ["server name", svc.service_name + (
                f" (resolves through {self.dns_server})" if self.dns_server else "")],
            ["address", f"{svc.address} ({svc.front})"],
            ["SMTP", f"{ports['SMTP']} for servers; {ports['submission']} STARTTLS and "
                     f"{ports['submissions']} TLS for users (login required)"],
            ["IMAP", "143 STARTTLS, 993 TLS"],
            ["POP3", "110 STLS, 995 TLS"],
            ["CA file", str(svc.ca_file) if svc.ca_file else "the system's CAs"],
        ]
        if account and self.inventory.lab is not None:
            connect.append(["test account", f"{account[0]}  password {account[1]}"])
        elif account:
            connect.append(["test account", f"{account[0]} (password in the vault)"])
        out += ["", "how to connect", table(["", ""], connect).split("\n", 2)[2]]
        return "\n".join(out)


def _short(value: str, width: int = 60) -> str:
    return value if len(value) <= width else value[: width - 3] + "..."


def _timed(result: UpResult, name: str, fn, note: str = "") -> Any:
    t0 = time.monotonic()
    step(name, "-", "start")
    value, changes = fn()
    result.phases.append(Phase(name, changes, time.monotonic() - t0, note))
    return value


def up(inventory: Inventory, rebuild_image: bool = False) -> UpResult:
    from mailops.converge.bootstrap import bootstrap
    from mailops.converge.run import converge
    from mailops.dns import deploy as dnsdeploy
    from mailops.dns.desired import desired_for
    from mailops.dns.settings import settings as dns_settings
    from mailops.site.mailmodel import load_mail_model
    from mailops.verify.run import quick
    from mailops.verify.service import service_for

    model = load_mail_model(inventory)  # all input checked before any host is touched
    dns_cfg = dns_settings(inventory)
    result = UpResult(inventory, domains=list(model.domains))
    states: dict[str, str] = {}
    if inventory.lab is not None:
        from mailops.lab.lab import Lab

        lab = Lab(inventory)
        _timed(result, "lab", lambda: (None, len(lab.up(rebuild_image=rebuild_image))))
        states = {r["host"]: r["state"] for r in lab.status()}

    def do_bootstrap():
        b = bootstrap(inventory)
        if b.failed:
            raise MailopsError(f"bootstrap failed on: {', '.join(b.failed)}")
        return b, b.changed

    _timed(result, "bootstrap", do_bootstrap)

    def do_converge():
        c = converge(inventory)
        return c, c.changed + len(c.secrets_changes)

    conv = _timed(result, "converge", do_converge)
    inventory = load_inventory(inventory.path)  # the vault may have grown
    result.inventory = inventory

    def do_dns():
        published = dnsdeploy.apply(inventory)
        return published, sum(len(p.result.applied) for p in published if p.result)

    _timed(result, "dns", do_dns, dns_cfg.provider)
    desired = desired_for(inventory, model, dnsdeploy.read_secrets(inventory),
                                    dns_cfg)
    result.records = [{"zone": zone, "name": r.fqdn(zone), "type": r.type, "ttl": r.ttl,
                       "value": " ".join(r.values)}
                      for zone, records in desired.items() for r in records]
    result.dns_server = (f"{dns_cfg.rfc2136_server}" if dns_cfg.provider == "rfc2136"
                         else dns_cfg.provider)

    svc = service_for(inventory)
    result.service = svc
    result.verify = _timed(result, "verify", lambda: (_wait_healthy(inventory) or quick(svc), 0))
    result.phases[-1].note = result.verify.summary()
    for host in inventory.hosts:
        recap = conv.recap.get(host.name, {})
        result.hosts.append({
            "host": host.name, "groups": ",".join(host.groups), "address": str(host.address),
            "state": states.get(host.name, "converged" if recap else "-")
            if not recap.get("failed") else "failed",
            "changed": recap.get("changed", 0)})
    return result



def _wait_healthy(inventory: Inventory, timeout: float = 30) -> None:
    """A converge that reloaded a service leaves its node out of the
    balancer until two health checks pass again: wait (bounded) for every
    node to be UP before verifying through the balancer."""
    from mailops.verify.nodes import haproxy_states

    lbs = inventory.group("lb")
    if not lbs:
        return
    deadline = time.monotonic() + timeout
    waiting: list[str] = []
    while time.monotonic() < deadline:
        waiting = []
        for lb in lbs:
            try:
                states = haproxy_states(inventory, lb)
            except (RuntimeError, IndexError):
                continue  # verify reports an unreadable balancer itself
            waiting += sorted({f"{n} ({b})" for (b, n), r in states.items()
                               if r["status"] != "UP"} - set(waiting))
        if not waiting:
            return
        step("verify", lbs[0].name, f"waiting for the balancer: {', '.join(waiting[:4])}")
        time.sleep(1)
    step("verify", lbs[0].name, f"still not UP after {timeout:.0f} s: {', '.join(waiting)}")
