"""Domains moving in from a legacy server (`deploy.py migrate`), and where
each move stands. The stage decides who takes the domain's mail:

    syncing   the legacy server does: the cluster forwards the domain's
              mail to it and publishes none of its DNS records; the sync
              copies the legacy mailboxes in
    cutover   the cluster does: it stores the mail and publishes the
              records; the legacy server forwards what still reaches it and
              may relay through the cluster (its queue drains there)
    finished  the move is over: nothing special

The stage is kept in the inventory (group_vars/all/migrate.yml, written by
`migrate cutover` and `migrate finish`), so a rebuilt controller and every
later converge agree on it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import yaml

from mailops.inventory.model import Inventory

STATE_KEY = "mailops_migrate_state"
STATE_FILE = "migrate.yml"
SOURCE_KEY = "mailops_legacy"  # host var of a legacy host: how to read it
SYNCING, CUTOVER, FINISHED = "syncing", "cutover", "finished"
STAGES = (SYNCING, CUTOVER, FINISHED)


@dataclass(frozen=True)
class Move:
    host: str  # the legacy host
    address: str  # its address
    domain: str  # the domain it takes mail for
    stage: str
    since: float  # when the stage began (epoch seconds; 0: unknown)
    facts: dict[str, Any]  # what the step that began the stage recorded

    @property
    def held(self) -> bool:
        """The legacy server still takes the domain's mail."""
        return self.stage == SYNCING

    @property
    def relaying(self) -> bool:
        """The legacy server forwards to the cluster and relays through it."""
        return self.stage == CUTOVER


def moves(inventory: Inventory) -> list[Move]:
    """Every legacy host with a domain, and its move's stage."""
    state = inventory.site_vars().get(STATE_KEY) or {}
    out = []
    for host in inventory.group("legacy"):
        source = inventory.variables.get(host.name, {}).get(SOURCE_KEY)
        domain = source.get("domain") if isinstance(source, dict) else None
        if not isinstance(domain, str) or "." not in domain:
            continue  # `migrate` names the missing key; nothing moves meanwhile
        entry = state.get(host.name) if isinstance(state, dict) else None
        entry = entry if isinstance(entry, dict) else {}
        stage = entry.get("stage", SYNCING)
        out.append(Move(host.name, str(host.address), domain.lower(),
                        stage if stage in STAGES else SYNCING,
                        float(entry.get("since", 0) or 0), dict(entry.get("facts") or {})))
    return out


def held_domains(inventory: Inventory) -> dict[str, Move]:
    """Domains whose mail a legacy server still takes: domain -> its move."""
    return {m.domain: m for m in moves(inventory) if m.held}


def set_stage(inventory: Inventory, host: str, stage: str,
              facts: dict[str, Any] | None = None) -> None:
    """Record a move's new stage in the inventory (a file mailops owns)."""
    path = inventory.path / "group_vars" / "all" / STATE_FILE
    data: dict[str, Any] = {}
    if path.exists():
        data = yaml.safe_load(path.read_text()) or {}
    state = data.setdefault(STATE_KEY, {})
    # Plain types only (host names come as Ansible's own str subclass).
    state[str(host)] = {"stage": stage, "since": round(time.time(), 1),
                        "facts": json.loads(json.dumps(facts or {}))}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".new")
    tmp.write_text("# Written by `deploy.py migrate`: where each move from a legacy server "
                   "stands\n# (syncing, cutover, finished). Keep it with the inventory.\n"
                   + yaml.safe_dump(data, sort_keys=True))
    tmp.replace(path)
