"""Plans: what a provider would change in a zone, as plain data.

make_plan compares desired records with what the zone holds now and lists
creates, updates and deletes, only ever for records mailops owns (see
ownership.py). A plan is printed (table / JSON) and checked (check_safety)
before anything is applied; dry run is the default, as in octoDNS.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from mailops.core.errors import MailopsError
from mailops.dns.ownership import (
    check_owner_id,
    is_marker_name,
    marker_for,
    marker_target,
    parse_marker,
)
from mailops.dns.records import Record
from mailops.dns.wire import normalize

Action = Literal["create", "update", "delete"]
MIN_EXISTING_FOR_SAFETY = 4  # below this a zone is "fresh": any share may change


class UnsafePlanError(MailopsError):
    """The plan changes more of the zone than the safety threshold allows."""


@dataclass(frozen=True)
class Change:
    action: Action
    record_name: str
    type: str
    old: Record | None
    new: Record | None

    @property
    def is_marker(self) -> bool:
        return is_marker_name(self.record_name)

    @property
    def record(self) -> Record:
        """The record this change is about (new for create/update, old for delete)."""
        rec = self.new if self.new is not None else self.old
        assert rec is not None
        return rec

    def to_dict(self) -> dict:
        return {"action": self.action, "name": self.record_name, "type": self.type,
                "marker": self.is_marker,
                "old": self.old.to_dict() if self.old else None,
                "new": self.new.to_dict() if self.new else None}


@dataclass(frozen=True)
class Conflict:
    """A desired record mailops may not write: the zone's copy is not ours."""

    record_name: str
    type: str
    reason: str
    current: Record | None
    desired: Record

    def to_dict(self) -> dict:
        return {"name": self.record_name, "type": self.type, "reason": self.reason,
                "current": self.current.to_dict() if self.current else None,
                "desired": self.desired.to_dict()}


@dataclass(frozen=True)
class Plan:
    zone: str
    changes: tuple[Change, ...]
    existing_count: int  # records (not markers) mailops owns in the zone now
    conflicts: tuple[Conflict, ...] = ()
    owner: str = ""

    @property
    def is_empty(self) -> bool:
        return not self.changes

    def count(self, action: Action, markers: bool = False) -> int:
        return sum(1 for c in self.changes if c.action == action and c.is_marker == markers)

    def summary(self) -> str:
        if self.is_empty:
            text = f"zone {self.zone}: no changes ({self.existing_count} records owned)"
        else:
            text = (f"zone {self.zone}: {self.count('create')} to create, "
                    f"{self.count('update')} to update, {self.count('delete')} to delete "
                    f"(of {self.existing_count} records owned; owner markers "
                    f"+{self.count('create', True)} -{self.count('delete', True)})")
        if self.conflicts:
            text += f"; {len(self.conflicts)} record(s) left alone, not owned by mailops"
        return text

    def to_dict(self) -> dict:
        return {"zone": self.zone, "owner": self.owner, "existing_count": self.existing_count,
                "summary": {a: self.count(a) for a in ("create", "update", "delete")},
                "changes": [c.to_dict() for c in self.changes],
                "conflicts": [c.to_dict() for c in self.conflicts]}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def table(self, width: int = 40, markers: bool = False) -> str:
        """An aligned text table, long values shortened to `width` characters.
        Owner-marker changes are summed up in one line unless markers=True."""
        rows = [("ACTION", "NAME", "TYPE", "TTL", "OLD", "NEW")]
        hidden = 0
        for c in self.changes:
            if c.is_marker and not markers:
                hidden += 1
                continue
            ttls = [str(r.ttl) for r in (c.old, c.new) if r is not None]
            ttl = ttls[0] if len(set(ttls)) == 1 else "->".join(ttls)
            rows.append((c.action, c.record_name, c.type, ttl, _cell(c.old, width),
                         _cell(c.new, width)))
        lines = [self.summary()]
        if len(rows) > 1:
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
            for r in rows:
                lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True))
                             .rstrip())
        if hidden:
            lines.append(f"(+ {hidden} owner-marker change(s) at _mailops-owner-<type>.<name>;"
                         " table(markers=True) lists them)")
        for k in self.conflicts:
            lines.append(f"left alone: {k.record_name} {k.type}: {k.reason}")
        return "\n".join(lines)


def shorten(text: str, width: int) -> str:
    """Keep head and tail: a rotated DKIM key differs at the end as well."""
    if len(text) <= width:
        return text
    keep = max(width - 3, 2)
    return text[: keep - keep // 2] + "..." + text[len(text) - keep // 2:]


def _cell(record: Record | None, width: int) -> str:
    if record is None:
        return "-"
    return shorten(" | ".join(record.values), width)


def _merge_desired(zone: str, desired: list[Record]) -> dict[tuple[str, str], Record]:
    # Several mail domains in one zone may ask for the same RRset (say the
    # service name's A); the same data is fine, different data is an error.
    out: dict[tuple[str, str], Record] = {}
    for rec in desired:
        if is_marker_name(rec.name):
            raise ValueError(f"desired record {rec.name} {rec.type}: names starting with "
                             "'_mailops-owner-' are reserved for owner markers")
        rec = normalize(rec, zone)
        prev = out.get(rec.key)
        if prev is not None and prev != rec:
            raise ValueError(f"two different desired {rec.type} records for {rec.name}: "
                             f"{prev.values} (ttl {prev.ttl}) and {rec.values} (ttl {rec.ttl})")
        out[rec.key] = rec
    return out


@dataclass
class _Buckets:
    marker_creates: list[Change] = field(default_factory=list)
    creates: list[Change] = field(default_factory=list)
    updates: list[Change] = field(default_factory=list)
    deletes: list[Change] = field(default_factory=list)
    marker_deletes: list[Change] = field(default_factory=list)

    def ordered(self) -> tuple[Change, ...]:
        # Apply order matters when a provider needs several requests: marker
        # before its record, record deletion before its marker's (see
        # ownership.py), so a half-done run is completed by the next.
        return tuple(self.marker_creates + self.creates + self.updates + self.deletes
                     + self.marker_deletes)


def make_plan(zone: str, desired: list[Record], current: list[Record], owner: str,
              *, adopt: bool = False) -> Plan:
    """Changes that take `current` to `desired`, touching only what `owner` owns.

    adopt=True also takes over desired records that exist without a marker
    (e.g. hand-made before mailops): their markers are created and their
    values updated. It never takes over records claimed by another owner id."""
    check_owner_id(owner)
    zone = zone.rstrip(".").lower()
    want = _merge_desired(zone, desired)
    records: dict[tuple[str, str], Record] = {}
    markers: dict[tuple[str, str], tuple[str, Record]] = {}  # key -> (owner, marker)
    for rec in current:
        rec = normalize(rec, zone)
        if not is_marker_name(rec.name):
            records[rec.key] = rec
            continue
        claim = parse_marker(rec)
        # A marker name holding anything else (hand-edited, another type)
        # blocks that name+type: it is somebody's, just not provably ours.
        markers[marker_target(rec.name)] = (claim.owner if claim else "<unreadable>", rec)
    ours = {k for k, (o, _) in markers.items() if o == owner}

    b = _Buckets()
    conflicts: list[Conflict] = []
    for key in sorted(want):
        new, old = want[key], records.get(key)
        differs = old is not None and (old.ttl, old.values) != (new.ttl, new.values)
        if key in ours:
            if old is None:
                b.creates.append(Change("create", new.name, new.type, None, new))
            elif differs:
                b.updates.append(Change("update", new.name, new.type, old, new))
        elif key in markers:
            conflicts.append(Conflict(new.name, new.type,
                                      f"claimed by owner id {markers[key][0]!r}", old, new))
        elif old is None:
            mark = marker_for(new, owner)
            b.marker_creates.append(Change("create", mark.name, "TXT", None, mark))
            b.creates.append(Change("create", new.name, new.type, None, new))
        elif adopt:
            mark = marker_for(new, owner)
            b.marker_creates.append(Change("create", mark.name, "TXT", None, mark))
            if differs:
                b.updates.append(Change("update", new.name, new.type, old, new))
        elif differs:
            conflicts.append(Conflict(
                new.name, new.type, "exists without a mailops owner marker; change or "
                "remove it by hand, or plan with adopt to take it over", old, new))
    for key in sorted(ours - want.keys()):
        old = records.get(key)
        if old is not None:
            b.deletes.append(Change("delete", old.name, old.type, old, None))
        mark = markers[key][1]
        b.marker_deletes.append(Change("delete", mark.name, "TXT", mark, None))
    existing = sum(1 for k in ours if k in records)
    return Plan(zone, b.ordered(), existing, tuple(conflicts), owner)


def check_safety(plan: Plan, max_share: float = 0.3, force: bool = False,
                 min_existing: int = MIN_EXISTING_FOR_SAFETY) -> None:
    """Refuse a plan that updates or deletes more than max_share of the
    records mailops owns in the zone (a wrong inventory, a wrong zone)."""
    risky = plan.count("update") + plan.count("delete")
    if force or plan.existing_count < min_existing or risky == 0:
        return
    share = risky / plan.existing_count
    if share > max_share:
        raise UnsafePlanError(
            f"zone {plan.zone}: the plan would update {plan.count('update')} and delete "
            f"{plan.count('delete')} of the {plan.existing_count} records mailops owns "
            f"({share:.0%}, limit {max_share:.0%}). Nothing was applied.\n"
            "  fix: check the plan (wrong inventory or zone?); if it is what you want, "
            "run again with --force")
