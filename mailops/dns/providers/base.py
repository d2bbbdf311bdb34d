"""What every DNS provider offers: read a zone, apply a plan, count requests."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from mailops.core.errors import MailopsError
from mailops.dns.plan import Change, Plan
from mailops.dns.records import Record


def describe(changes: Sequence[Change], limit: int = 8) -> str:
    """'create MX @, update TXT _dmarc, ... (+3 more)' for error messages;
    records before owner markers, which say less to a reader."""
    changes = sorted(changes, key=lambda c: c.is_marker)
    parts = [f"{c.action} {c.type} {c.record_name}" for c in changes[:limit]]
    if len(changes) > limit:
        parts.append(f"(+{len(changes) - limit} more)")
    return ", ".join(parts) if parts else "nothing"


class ProviderError(MailopsError):
    """A provider request failed; says what was applied, what was not, and
    that running again is safe (the next plan starts from what is there)."""

    def __init__(self, provider: str, zone: str, cause: str,
                 applied: Sequence[Change] = (), not_applied: Sequence[Change] = ()) -> None:
        self.provider = provider
        self.zone = zone
        self.cause = cause
        self.applied = tuple(applied)
        self.not_applied = tuple(not_applied)
        lines = [f"{provider}: zone {zone}: {cause}"]
        if self.applied or self.not_applied:
            lines.append(f"  applied ({len(self.applied)}): {describe(self.applied)}")
            lines.append(f"  not applied ({len(self.not_applied)}): "
                         f"{describe(self.not_applied)}")
            lines.append("  fix: remove the cause, then run again: the next plan is made "
                         "from the zone as it is now and finishes the job")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class ApplyResult:
    zone: str
    applied: tuple[Change, ...]
    not_applied: tuple[Change, ...]
    round_trips: int  # requests this apply took (the benchmark figure)

    @property
    def complete(self) -> bool:
        return not self.not_applied

    def to_dict(self) -> dict:
        return {"zone": self.zone, "complete": self.complete, "round_trips": self.round_trips,
                "applied": [c.to_dict() for c in self.applied],
                "not_applied": [c.to_dict() for c in self.not_applied]}


class Provider(ABC):
    """A DNS zone host. `round_trips` counts every request sent, ever."""

    name: str = "provider"

    def __init__(self) -> None:
        self.round_trips = 0

    @abstractmethod
    def current(self, zone: str) -> list[Record]:
        """Every RRset in the zone now (SOA excluded), names relative."""

    @abstractmethod
    def apply(self, plan: Plan) -> ApplyResult:
        """Make the plan's changes. Call check_safety(plan) first: apply does
        what it is told. Raises ProviderError if a request fails."""
