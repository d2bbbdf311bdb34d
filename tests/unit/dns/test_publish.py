"""publish(): dry run by default, apply on request, the safety check first."""

from __future__ import annotations

import pytest

from mailops.dns.plan import UnsafePlanError
from mailops.dns.providers.zonefile import Soa, ZoneFileProvider
from mailops.dns.publish import desired_by_zone, publish

from .samples import domain

ZONE = "example.test"


def provider(tmp_path) -> ZoneFileProvider:
    return ZoneFileProvider(tmp_path, soa=Soa("ns1.example.net.", "hostmaster.example.test."),
                            ns=("ns1.example.net.",))


def test_dry_run_writes_nothing_and_apply_writes(tmp_path):
    p = provider(tmp_path)
    desired = desired_by_zone([domain(ZONE)])[ZONE]
    dry = publish(p, ZONE, desired, "prod")
    assert dry.result is None and dry.plan.count("create") == len(desired)
    assert not p.path_for(ZONE).exists()
    done = publish(p, ZONE, desired, "prod", apply=True)
    assert done.result is not None and done.result.complete
    assert p.path_for(ZONE).exists()
    again = publish(p, ZONE, desired, "prod", apply=True)
    assert again.plan.is_empty and again.result is None
    assert again.round_trips == 1  # reading the zone, nothing written


def test_unsafe_plan_is_refused_before_anything_is_written(tmp_path):
    p = provider(tmp_path)
    publish(p, ZONE, desired_by_zone([domain(ZONE)])[ZONE], "prod", apply=True)
    before = p.path_for(ZONE).read_text()
    with pytest.raises(UnsafePlanError):
        publish(p, ZONE, [], "prod", apply=True)
    assert p.path_for(ZONE).read_text() == before
    forced = publish(p, ZONE, [], "prod", apply=True, force=True)
    assert forced.result is not None and forced.plan.count("delete") == 16


def test_domains_are_grouped_by_zone():
    grouped = desired_by_zone([domain(ZONE), domain("shop.example.test", zone=ZONE, key=1),
                               domain("other.test")])
    assert sorted(grouped) == ["example.test", "other.test"]
    assert {r.name for r in grouped[ZONE]} >= {"@", "shop", "_dmarc.shop"}
