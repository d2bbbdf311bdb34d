"""`deploy.py plan`: what `up` would change on running hosts (Ansible in
check mode with the file diffs, and the DNS plan), changing nothing and
generating no secret."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from mailops.converge.run import converge
from mailops.core.errors import MailopsError
from mailops.core.progress import table
from mailops.dns import deploy as dnsdeploy
from mailops.dns.settings import settings as dns_settings
from mailops.inventory.model import Inventory
from mailops.lab.lab import Lab
from mailops.site.homes import moves
from mailops.site.mailmodel import load_mail_model

HOMES_FILE = "/etc/postfix/transport_homes"


@dataclass
class PlanResult:
    tasks: list[dict]  # changed task results from Ansible's check mode
    dns: list  # mailops.dns.plan.Plan, zone by zone
    dns_cfg: Any = None
    # (mailbox, home node now, home node after) for each mailbox that moves
    home_moves: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def changes(self) -> int:
        return len(self.tasks) + sum(len(p.changes) for p in self.dns)

    def to_dict(self) -> dict[str, Any]:
        return {"changes": self.changes,
                "converge": [{k: t[k] for k in ("host", "task", "handler")}
                             | {"diff": [_unified(d) for d in t["diff"]]} for t in self.tasks],
                "dns": [p.to_dict() for p in self.dns],
                "home_moves": [{"mailbox": a, "from": old, "to": new}
                               for a, old, new in self.home_moves]}

    def text(self) -> str:
        out = [f"converge (Ansible check mode): {len(self.tasks)} task(s) would change"]
        for t in self.tasks:
            kind = " (handler)" if t["handler"] else ""
            out.append(f"  {t['host']}: {t['task']}{kind}")
            for d in t["diff"]:
                out += ["      " + ln for ln in _unified(d).splitlines()]
        if self.home_moves:
            out += ["", f"mailbox homes: {len(self.home_moves)} mailbox(es) would move "
                    "(their deliveries and sessions go to the new home node)",
                    table(["mailbox", "home now", "home after"],
                          [list(m) for m in self.home_moves])]
        out += ["", dnsdeploy.plan_report(self.dns, self.dns_cfg)]
        return "\n".join(out)


def _unified(d: dict) -> str:
    """One Ansible diff (before/after texts, or a prepared text) as a unified diff."""
    if "prepared" in d:
        return str(d["prepared"]).rstrip()
    before, after = d.get("before", ""), d.get("after", "")
    if not isinstance(before, str) or not isinstance(after, str):
        return f"{d.get('before_header', '')}: {before!r} -> {after!r}"
    name = str(d.get("before_header", "before"))
    after_name = str(d.get("after_header", "after"))
    if "/.ansible/tmp" in after_name:  # the rendered template's temporary copy
        after_name = f"{name} (as the inventory wants it)"
    return "".join(difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True),
        fromfile=name, tofile=after_name)).rstrip()


def _homes_in(text: str, names: dict[str, str]) -> dict[str, str]:
    """mailbox -> home node name, from a transport_homes file's text (the
    first nexthop is the home)."""
    homes = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#") and "[" in parts[1]:
            ip = parts[1].split("[", 1)[1].split("]", 1)[0]
            homes[parts[0]] = names.get(ip, ip)
    return homes


def home_moves(tasks: list[dict], inventory: Inventory) -> list[tuple[str, str, str]]:
    """The mailboxes whose home node the converge would change, read from
    the check-mode diff of the home table (the same on every node)."""
    names = {str(h.address): h.name for h in inventory.hosts}
    for t in tasks:
        for d in t["diff"]:
            if d.get("before_header") == HOMES_FILE and isinstance(d.get("after"), str):
                return moves(_homes_in(str(d.get("before", "")), names),
                             _homes_in(d["after"], names))
    return []


def plan(inventory: Inventory) -> PlanResult:
    """What `up` would change on hosts that exist: Ansible in check mode with
    diffs, and the DNS plan. Generates no secret and changes nothing."""
    load_mail_model(inventory)
    if inventory.lab is not None:
        down = [r["host"] for r in Lab(inventory).status() if r["ssh"] != "yes"]
        if down:
            raise MailopsError(f"lab hosts not running: {', '.join(down)}; plan compares "
                               "running hosts with the inventory\n  fix: `deploy.py up` "
                               "creates and converges them")
    result = converge(inventory, check=True, diff=True)
    tasks = [t for t in result.tasks if t["changed"]]
    return PlanResult(tasks, dnsdeploy.plan(inventory), dns_settings(inventory),
                      home_moves(tasks, inventory))
