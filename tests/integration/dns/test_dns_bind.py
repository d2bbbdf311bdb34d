"""RFC 2136 provider against a real BIND (named) on 127.0.0.1.

Each test has its own zone on the one server (see conftest.ZONES)."""

from __future__ import annotations

import base64

import dns.query
import dns.resolver
import dns.update
import pytest

from mailops.dns.plan import Plan, check_safety, make_plan
from mailops.dns.policy import check_spf, spf_lookup_count
from mailops.dns.providers.base import ProviderError
from mailops.dns.providers.rfc2136 import Rfc2136Provider, TsigKey
from mailops.dns.records import Record, desired_records
from mailops.dns.wire import from_rdataset, normalize
from tests.unit.dns.samples import dkim_public, domain

LOOPBACK = "127.0.0.1"
OWNER = "itest"


def provider(bind, **kw) -> Rfc2136Provider:
    return Rfc2136Provider(LOOPBACK, bind.port, key=bind.key, timeout=3.0, **kw)


def publish(bind, zone: str, desired: list[Record], **kw) -> tuple[Plan, Rfc2136Provider]:
    p = provider(bind, **kw)
    plan = make_plan(zone, desired, p.current(zone), OWNER)
    check_safety(plan)
    result = p.apply(plan)
    assert result.complete
    return plan, p


def resolve(bind, zone: str, record: Record) -> Record:
    answer = bind.resolver().resolve(record.fqdn(zone), record.type)
    return from_rdataset(answer.rrset.name, answer.rrset, zone)


def foreign_update(bind, zone: str, *rrs: tuple[str, int, str, str]) -> None:
    """Another tool's change, made with dnspython directly."""
    update = dns.update.UpdateMessage(zone, keyring=bind.key.to_dnspython())
    for name, ttl, rtype, value in rrs:
        update.add(name, ttl, rtype, value)
    response = dns.query.tcp(update, LOOPBACK, port=bind.port, timeout=3)
    assert response.rcode() == 0


def test_apply_then_every_record_resolves_as_planned(bind):
    zone = "apply.test"
    desired = desired_records(domain(zone))
    p = provider(bind)
    plan = make_plan(zone, desired, p.current(zone), OWNER)
    assert p.round_trips == 1  # one AXFR
    assert plan.count("create") == len(desired) and plan.count("create", True) == len(desired)
    result = p.apply(plan)
    assert result.complete and len(result.applied) == len(plan.changes)
    assert result.round_trips == 1  # the whole zone in one UPDATE
    for change in plan.changes:  # records and owner markers alike
        got = resolve(bind, zone, change.record)
        assert normalize(got, zone) == normalize(change.record, zone), change
    # DKIM: two strings on the wire, the whole key once reassembled.
    answer = bind.resolver().resolve(f"mail2025._domainkey.{zone}", "TXT")
    (rdata,) = list(answer)
    assert [len(s) for s in rdata.strings] == [255, len(dkim_public()) - 255]
    assert b"".join(rdata.strings).decode() == dkim_public()
    # Re-plan from the server is empty.
    again = make_plan(zone, desired, p.current(zone), OWNER)
    assert again.is_empty, again.table()
    assert again.existing_count == len(desired)


def test_foreign_records_survive_apply(bind):
    zone = "foreign.test"
    foreign_update(bind, zone, ("www", 3600, "A", "192.0.2.80"),
                   ("@", 3600, "TXT", '"site-verification=abc"'))
    desired = desired_records(domain(zone))
    plan, p = publish(bind, zone, desired)
    # Our SPF would replace the foreign apex TXT: reported and left alone.
    assert [(k.record_name, k.type) for k in plan.conflicts] == [("@", "TXT")]
    assert all(c.record.key not in {("www", "A"), ("@", "TXT")} for c in plan.changes)
    # Added by someone else after our publish, beside our records.
    foreign_update(bind, zone, ("legacy._domainkey", 3600, "TXT", '"v=DKIM1; p=old"'))
    rotate, _ = publish(bind, zone, desired_records(domain(zone, key=1)))
    assert [(c.action, c.record_name) for c in rotate.changes] == [
        ("update", "mail2025._domainkey")]
    # Removing the mail domain deletes ours only.
    p2 = provider(bind)
    gone = make_plan(zone, [], p2.current(zone), OWNER)
    check_safety(gone, force=True)
    p2.apply(gone)
    left = {r.key: r for r in p2.current(zone)}
    assert set(left) == {("@", "NS"), ("ns1", "A"), ("www", "A"), ("@", "TXT"),
                         ("legacy._domainkey", "TXT")}
    assert left["@", "TXT"].values == ("site-verification=abc",)
    assert resolve(bind, zone, Record("www", "A", 1, ("x",))).values == ("192.0.2.80",)


def test_zone_changed_between_plan_and_apply_applies_nothing(bind):
    zone = "race.test"
    p = provider(bind)
    desired = desired_records(domain(zone))
    plan = make_plan(zone, desired, p.current(zone), OWNER)
    foreign_update(bind, zone, ("_dmarc", 300, "TXT", '"v=DMARC1; p=none"'))
    with pytest.raises(ProviderError) as err:
        p.apply(plan)
    message = str(err.value)
    assert "zone changed since the plan was made" in message
    assert f"not applied ({len(plan.changes)})" in message and "run again" in message
    assert {r.key for r in p.current(zone)} == {("@", "NS"), ("ns1", "A"), ("_dmarc", "TXT")}
    # Running again finishes the job around the foreign record.
    plan2, _ = publish(bind, zone, desired)
    assert [(k.record_name, k.type) for k in plan2.conflicts] == [("_dmarc", "TXT")]
    assert make_plan(zone, desired, p.current(zone), OWNER).is_empty


def test_a_plan_over_the_message_size_goes_out_in_several_updates(bind):
    zone = "split.test"
    desired = [Record(f"k{i}._domainkey", "TXT", 300, (dkim_public(),)) for i in range(30)]
    plan, p = publish(bind, zone, desired, max_message=6_000)
    assert p.round_trips >= 1 + 3  # AXFR + several UPDATEs
    assert make_plan(zone, desired, p.current(zone), OWNER).is_empty


def wrong_secret(key: TsigKey) -> TsigKey:
    return TsigKey(key.name, base64.b64encode(b"not the secret, 32 bytes long!!!").decode())


@pytest.mark.parametrize("make_key, code", [
    (wrong_secret, "BADSIG"),
    (lambda key: TsigKey("no-such-key", key.secret), "BADKEY"),
])
def test_a_wrong_tsig_key_is_a_clear_provider_error(bind, make_key, code):
    zone = "badkey.test"
    bad = Rfc2136Provider(LOOPBACK, bind.port, key=make_key(bind.key), timeout=3.0)
    with pytest.raises(ProviderError) as err:
        bad.current(zone)
    assert code in str(err.value) and "nothing was changed" in str(err.value)
    plan = make_plan(zone, desired_records(domain(zone)), provider(bind).current(zone), OWNER)
    with pytest.raises(ProviderError) as err:
        bad.apply(plan)
    message = str(err.value)
    assert code in message and "TSIG" in message
    assert "applied (0): nothing" in message
    assert f"not applied ({len(plan.changes)})" in message and "run again" in message
    assert err.value.not_applied == plan.changes
    assert {r.key for r in provider(bind).current(zone)} == {("@", "NS"), ("ns1", "A")}


def test_unknown_zone_and_no_server_are_clear_errors(bind, unused_port):
    with pytest.raises(ProviderError, match=r"nosuch\.test.*(NOTAUTH|REFUSED)"):
        provider(bind).current("nosuch.test")
    plan = make_plan("nosuch.test", [Record("@", "MX", 300, ("0 .",))], [], OWNER)
    with pytest.raises(ProviderError, match="NOTAUTH|REFUSED"):
        provider(bind).apply(plan)
    nobody = Rfc2136Provider(LOOPBACK, unused_port, key=bind.key, timeout=1.0)
    with pytest.raises(ProviderError, match="connection refused"):
        nobody.current("apply.test")


def test_spf_lookups_counted_through_includes_on_the_server(bind):
    zone = "spf.test"
    desired = [
        Record("_spf", "TXT", 300, ("v=spf1 include:_a._spf.spf.test include:_b._spf.spf.test"
                                    " -all",)),
        Record("_a._spf", "TXT", 300, ("v=spf1 a mx ip4:192.0.2.0/24 -all",)),
        Record("_b._spf", "TXT", 300, ("v=spf1 " + " ".join(
            f"exists:{i}.x.spf.test" for i in range(7)) + " -all",)),
    ]
    publish(bind, zone, desired)
    resolver: dns.resolver.Resolver = bind.resolver()
    assert spf_lookup_count("v=spf1 mx -all", resolver) == 1
    # mx + include:_spf (+ include _a (+ a + mx) + include _b (+ 7 exists))
    spf = "v=spf1 mx include:_spf.spf.test -all"
    assert spf_lookup_count(spf) == 2
    assert spf_lookup_count(spf, resolver) == 13
    with pytest.raises(ValueError, match="13 DNS-querying terms"):
        check_spf(spf, resolver)
    assert check_spf("v=spf1 include:_a._spf.spf.test -all", resolver) == 3
