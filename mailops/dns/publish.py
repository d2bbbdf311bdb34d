"""One zone publish: read -> plan -> safety check -> apply (only when asked).

Dry run is the default: without apply=True nothing is written, and the plan
is returned for printing. This is the whole `dns` step of the data flow."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailops.dns.plan import Plan, check_safety, make_plan
from mailops.dns.providers.base import ApplyResult, Provider
from mailops.dns.records import MailDomainDNS, Record, desired_records


@dataclass(frozen=True)
class Published:
    plan: Plan
    result: ApplyResult | None  # None on a dry run or an empty plan
    round_trips: int  # requests this publish took, reading included

    def to_dict(self) -> dict:
        return {"plan": self.plan.to_dict(), "round_trips": self.round_trips,
                "result": self.result.to_dict() if self.result else None}


def desired_by_zone(domains: Iterable[MailDomainDNS]) -> dict[str, list[Record]]:
    """Desired records of several mail domains, grouped by the zone they go in."""
    out: dict[str, list[Record]] = {}
    for d in domains:
        out.setdefault(d.zone, []).extend(desired_records(d))
    return out


def publish(provider: Provider, zone: str, desired: list[Record], owner: str, *,
            apply: bool = False, force: bool = False, max_share: float = 0.3,
            adopt: bool = False) -> Published:
    """Plan the zone and, with apply=True, apply it. The safety check runs on
    dry runs too, so a dry run shows the refusal a real run would get."""
    before = provider.round_trips
    plan = make_plan(zone, desired, provider.current(zone), owner, adopt=adopt)
    check_safety(plan, max_share=max_share, force=force)
    result = provider.apply(plan) if apply and not plan.is_empty else None
    return Published(plan, result, provider.round_trips - before)
