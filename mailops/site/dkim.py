"""DKIM selectors per mail domain, and where a key rollover stands
(`deploy.py dkim rotate`). A domain never rotated signs with the mail
model's mailops_dkim_selector. A rollover goes:

    next      a new selector's record is published; signing stays
    signing   once that record resolves from the deployment's name
              servers, mail is signed with the new selector; the old one
              is retired: still published until its grace period ends
              (messages in flight and in queues still verify), then left
              out of the DNS plan, which deletes it

The state is kept in the inventory (group_vars/all/dkim.yml, written by
`dkim rotate`): every converge and DNS plan agrees on it, and so does a
rebuilt controller. The keys themselves live in the vault.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from mailops.inventory.model import Inventory
from mailops.site.mailmodel import SELECTOR_RE, MailModel

STATE_KEY = "mailops_dkim_rotation"
STATE_FILE = "dkim.yml"


@dataclass(frozen=True)
class Selectors:
    """One domain's selectors: the one mail is signed with, the next one
    (published, not signing yet) and the retired ones (selector -> until
    when it stays published, epoch seconds)."""

    signing: str
    next: str | None = None
    retired: dict[str, float] = field(default_factory=dict)

    def published(self, now: float | None = None) -> list[str]:
        """Every selector whose record the domain's zone holds now."""
        now = time.time() if now is None else now
        out = [self.signing, *([self.next] if self.next else [])]
        return out + sorted(s for s, until in self.retired.items()
                            if until > now and s not in out)

    def to_dict(self) -> dict[str, Any]:
        return {"signing": self.signing, "next": self.next,
                "retired": {s: round(u, 1) for s, u in sorted(self.retired.items())}}


def selectors(inventory: Inventory, model: MailModel) -> dict[str, Selectors]:
    """domain -> its selectors, for every mail domain. An entry that does
    not read as a rollover (hand-edited) counts as never rotated."""
    state = inventory.site_vars().get(STATE_KEY) or {}
    out = {}
    for domain in model.domains:
        entry = state.get(domain) if isinstance(state, dict) else None
        entry = entry if isinstance(entry, dict) else {}
        signing = entry.get("signing")
        if not isinstance(signing, str) or not SELECTOR_RE.match(signing):
            out[domain] = Selectors(model.dkim_selector)
            continue
        nxt = entry.get("next")
        retired = entry.get("retired") if isinstance(entry.get("retired"), dict) else {}
        out[domain] = Selectors(
            signing, nxt if isinstance(nxt, str) and SELECTOR_RE.match(nxt) else None,
            {str(s): float(u) for s, u in retired.items()
             if SELECTOR_RE.match(str(s)) and isinstance(u, (int, float))})
    return out


def new_selector(base: str, now: float | None = None) -> str:
    """A selector for a new key: the model's selector and the time (UTC),
    within a DNS label's 63 characters."""
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(time.time() if now is None else now))
    return f"{base[:63 - len(stamp) - 1]}-{stamp}"


def save(inventory: Inventory, changed: dict[str, Selectors]) -> None:
    """Record domains' selectors in the inventory (a file mailops owns), in
    one atomic write."""
    path = inventory.path / "group_vars" / "all" / STATE_FILE
    data: dict[str, Any] = {}
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
    state = data.setdefault(STATE_KEY, {})
    for domain, sel in changed.items():
        # Plain types only (names come as Ansible's own str subclass).
        state[str(domain)] = json.loads(json.dumps(sel.to_dict()))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".new")
    tmp.write_text("# Written by `deploy.py dkim rotate`: each domain's DKIM selectors (the\n"
                   "# one signing, the next, the retired ones and until when they stay\n"
                   "# published). Keep it with the inventory; the keys are in the vault.\n"
                   + yaml.safe_dump(data, sort_keys=True))
    tmp.replace(path)
