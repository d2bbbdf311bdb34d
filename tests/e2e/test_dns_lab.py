"""The lab's DNS: BIND on the dns host, dns plan/apply through RFC 2136 with
the vault's TSIG key, records resolving as planned from every host.

The tests run in file order on one set of zones: wiped back to fresh (`up`
published them already) -> applied -> kept."""

from __future__ import annotations

import dataclasses

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver
import dns.update
import pytest

from mailops.core.paths import vault_file
from mailops.dns import deploy as dnsdeploy
from mailops.dns.plan import UnsafePlanError
from mailops.dns.providers.rfc2136 import Rfc2136Provider, TsigKey
from mailops.dns.wire import from_rdataset, normalize
from mailops.secrets import wanted
from mailops.secrets.pki import dkim_public_record
from mailops.site import derived
from mailops.site.mailmodel import load_mail_model

pytestmark = pytest.mark.lab

FOREIGN = ("www", "A", "192.0.2.80")  # another tool's record in example.test


def resolver(dns_lab) -> dns.resolver.Resolver:
    """Asks the lab's name server only (never this machine's resolv.conf)."""
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [dns_lab.server]
    res.lifetime, res.timeout, res.cache = 5.0, 2.0, None
    return res


def desired(dns_lab):
    inv = dns_lab.inventory
    model = load_mail_model(inv)
    from mailops.secrets.vault import load_secrets  # after ansible_env (via mailops.dns.deploy)

    secrets = load_secrets(vault_file(inv.path), inv.vault_password_file)
    return model, secrets, dnsdeploy.desired_for(inv, model, secrets)


def test_name_server_is_authoritative_for_every_lab_zone(dns_lab):
    model = load_mail_model(dns_lab.inventory)
    zones = derived.zones_served(model, dnsdeploy.settings(dns_lab.inventory).external_domain)
    assert "ext.test" in zones
    for zone in zones:
        response = dns.query.udp(dns.message.make_query(zone, "SOA"), dns_lab.server,
                                 timeout=3)
        assert response.rcode() == dns.rcode.NOERROR and response.answer, zone
        assert response.flags & dns.flags.AA, f"{zone}: answer is not authoritative"
    # Authoritative only: a name outside its zones is refused, not chased.
    response = dns.query.udp(dns.message.make_query("example.com", "A"), dns_lab.server,
                             timeout=3)
    assert response.rcode() == dns.rcode.REFUSED


def test_external_domain_has_its_mail_records(dns_lab):
    ext = dns_lab.inventory.group("external")[0]
    res = resolver(dns_lab)
    (mx,) = list(res.resolve("ext.test", "MX"))
    assert mx.exchange.to_text() == f"{ext.name}.ext.test."
    assert [a.address for a in res.resolve(f"{ext.name}.ext.test", "A")] == [str(ext.address)]


def test_updates_and_transfers_need_the_key(dns_lab):
    wrong = TsigKey("mailops", wanted.new_tsig_secret())
    provider = Rfc2136Provider(dns_lab.server, key=wrong, timeout=3)
    with pytest.raises(Exception, match=r"BADSIG|signature"):
        provider.current("example.test")
    unsigned = dns.update.UpdateMessage("example.test")
    unsigned.add("intruder", 300, "A", "192.0.2.66")
    assert dns.query.tcp(unsigned, dns_lab.server, timeout=3).rcode() == dns.rcode.REFUSED


def wipe_mailops_records(dns_lab, want) -> None:
    """Back to zones as the bind role made them: `deploy.py up` has already
    published, so the records mailops owns (and their markers) are removed."""
    from mailops.dns.ownership import is_marker_name

    provider = Rfc2136Provider(dns_lab.server, key=dns_lab.key, timeout=3)
    for zone, records in want.items():
        keys = {r.key for r in records}
        update = dns.update.UpdateMessage(zone, keyring=dns_lab.key.to_dnspython())
        for r in provider.current(zone):
            if r.key in keys or is_marker_name(r.name):
                update.delete(r.name, r.type)
        assert dns.query.tcp(update, dns_lab.server, timeout=3).rcode() == dns.rcode.NOERROR


def test_plan_on_fresh_zones_creates_every_record(dns_lab):
    _, _, want = desired(dns_lab)
    wipe_mailops_records(dns_lab, want)
    plans = {p.zone: p for p in dnsdeploy.plan(dns_lab.inventory)}
    assert set(plans) == set(want)
    for zone, plan in plans.items():
        assert plan.count("update") == plan.count("delete") == 0, plan.table()
        assert plan.count("create") == len(want[zone]), plan.table()
        assert plan.count("create", markers=True) == len(want[zone])
    # ...and the plan changed nothing.
    assert all(p.count("create") for p in dnsdeploy.plan(dns_lab.inventory))


def test_apply_then_every_record_resolves_as_planned(dns_lab):
    published = dnsdeploy.apply(dns_lab.inventory)
    for pub in published:
        assert pub.result is not None and pub.result.complete
        assert pub.round_trips == 2  # one AXFR, one UPDATE for the whole zone
    model, secrets, want = desired(dns_lab)
    res = resolver(dns_lab)
    for zone, records in want.items():
        for record in records:
            answer = res.resolve(record.fqdn(zone), record.type)
            got = from_rdataset(answer.rrset.name, answer.rrset, zone)
            assert normalize(got, zone) == normalize(record, zone), record
    for domain in model.domains:
        answer = res.resolve(f"{model.dkim_selector}._domainkey.{domain}", "TXT")
        (rdata,) = list(answer)
        assert len(rdata.strings) == 2  # a 2048-bit key does not fit one string
        assert b"".join(rdata.strings).decode() == dkim_public_record(secrets.dkim[domain])


def test_replan_is_empty(dns_lab):
    plans = dnsdeploy.plan(dns_lab.inventory)
    assert all(p.is_empty for p in plans), [p.table() for p in plans]
    assert all(p.existing_count > 0 for p in plans)


def test_foreign_record_survives_apply(dns_lab):
    name, rtype, value = FOREIGN
    update = dns.update.UpdateMessage("example.test", keyring=dns_lab.key.to_dnspython())
    update.add(name, 300, rtype, value)
    assert dns.query.tcp(update, dns_lab.server, timeout=3).rcode() == dns.rcode.NOERROR
    published = dnsdeploy.apply(dns_lab.inventory)
    assert all(p.plan.is_empty and p.result is None for p in published)
    answer = resolver(dns_lab).resolve(f"{name}.example.test", rtype)
    assert [a.address for a in answer] == [value]


def test_unsafe_change_is_refused_and_nothing_applied(dns_lab, monkeypatch):
    cfg = dnsdeploy.settings(dns_lab.inventory)
    # A new TTL would update every record mailops owns.
    monkeypatch.setattr(dnsdeploy, "settings", lambda _inv: dataclasses.replace(cfg, ttl=900))
    with pytest.raises(UnsafePlanError, match="Nothing was applied to any zone"):
        dnsdeploy.apply(dns_lab.inventory)
    monkeypatch.undo()
    assert all(p.is_empty for p in dnsdeploy.plan(dns_lab.inventory))


def test_refused_update_says_what_was_applied_and_second_run_finishes(dns_lab, monkeypatch):
    cfg = dnsdeploy.settings(dns_lab.inventory)
    changed = dataclasses.replace(cfg, dmarc="v=DMARC1; p=reject")
    monkeypatch.setattr(dnsdeploy, "settings", lambda _inv: changed)
    real = dnsdeploy.provider_for

    def second_zone_with_wrong_key(*args, **kw):
        provider = real(*args, **kw)
        apply = provider.apply

        def flaky(plan):
            if plan.zone == "example.net":
                provider.key = TsigKey(provider.key.name, wanted.new_tsig_secret())
            return apply(plan)

        provider.apply = flaky
        return provider

    monkeypatch.setattr(dnsdeploy, "provider_for", second_zone_with_wrong_key)
    with pytest.raises(dnsdeploy.DnsApplyError) as info:
        dnsdeploy.apply(dns_lab.inventory)
    msg = str(info.value)
    assert "stopped at zone example.net" in msg and "BADSIG" in msg
    assert "applied completely before it: example.test" in msg
    assert "not applied (1): update TXT _dmarc" in msg
    monkeypatch.setattr(dnsdeploy, "provider_for", real)
    left = {p.zone: p.count("update") for p in dnsdeploy.plan(dns_lab.inventory)}
    assert left == {"example.test": 0, "example.net": 1}
    dnsdeploy.apply(dns_lab.inventory)  # the second run finishes the job
    assert all(p.is_empty for p in dnsdeploy.plan(dns_lab.inventory))
    monkeypatch.undo()
    dnsdeploy.apply(dns_lab.inventory)  # back to the inventory's DMARC for later tests
    assert all(p.is_empty for p in dnsdeploy.plan(dns_lab.inventory))


def test_every_host_resolves_the_service_name_through_the_dns_host(dns_lab):
    model = load_mail_model(dns_lab.inventory)
    from mailops.site.derived import front

    address = front(dns_lab.inventory)[0]  # the balancers' floating address
    for host in dns_lab.inventory.hosts:
        res = dns_lab.lab.ssh(host, f"grep -c {model.service_name} /etc/hosts; "
                                    "grep '^nameserver' /etc/resolv.conf; "
                                    f"getent ahostsv4 {model.service_name} | head -1")
        count, nameserver, answer = res.stdout.splitlines()
        assert count == "0", f"{host.name}: answered from /etc/hosts, not DNS"
        assert nameserver == f"nameserver {dns_lab.server}", host.name
        assert answer.split()[0] == address, f"{host.name}: {res.stdout}"


def test_second_converge_changes_nothing_and_keeps_the_records(dns_lab):
    result = dns_lab.converge_dns()
    assert result.changed == 0, result.table()
    assert all(p.is_empty for p in dnsdeploy.plan(dns_lab.inventory))
    answer = resolver(dns_lab).resolve(f"{FOREIGN[0]}.example.test", FOREIGN[1])
    assert [a.address for a in answer] == [FOREIGN[2]]
