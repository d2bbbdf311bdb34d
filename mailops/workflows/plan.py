"""`deploy.py plan`: what `up` would change on running hosts (Ansible in
check mode with the file diffs, and the DNS plan), changing nothing and
generating no secret."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

from mailops.converge.run import converge
from mailops.core.errors import MailopsError
from mailops.dns import deploy as dnsdeploy
from mailops.dns.settings import settings as dns_settings
from mailops.inventory.model import Inventory
from mailops.lab.lab import Lab
from mailops.site.mailmodel import load_mail_model


@dataclass
class PlanResult:
    tasks: list[dict]  # changed task results from Ansible's check mode
    dns: list  # mailops.dns.plan.Plan, zone by zone
    dns_cfg: Any = None

    @property
    def changes(self) -> int:
        return len(self.tasks) + sum(len(p.changes) for p in self.dns)

    def to_dict(self) -> dict[str, Any]:
        return {"changes": self.changes,
                "converge": [{k: t[k] for k in ("host", "task", "handler")}
                             | {"diff": [_unified(d) for d in t["diff"]]} for t in self.tasks],
                "dns": [p.to_dict() for p in self.dns]}

    def text(self) -> str:
        out = [f"converge (Ansible check mode): {len(self.tasks)} task(s) would change"]
        for t in self.tasks:
            kind = " (handler)" if t["handler"] else ""
            out.append(f"  {t['host']}: {t['task']}{kind}")
            for d in t["diff"]:
                out += ["      " + ln for ln in _unified(d).splitlines()]
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
    return PlanResult([t for t in result.tasks if t["changed"]], dnsdeploy.plan(inventory),
                      dns_settings(inventory))
