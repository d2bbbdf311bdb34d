"""dns plan/apply from the inventory, offline: desired records of the lab
model, provider selection, settings errors naming file/key/fix, and a whole
plan -> apply -> re-plan cycle through the zonefile provider."""

from __future__ import annotations

import base64
import dataclasses
from functools import cache
from pathlib import Path

import pytest
import yaml

from mailops.core.errors import InventoryErrors, MailopsError
from mailops.dns import deploy as dnsdeploy
from mailops.dns.plan import UnsafePlanError
from mailops.dns.providers.base import ProviderError
from mailops.dns.providers.rfc2136 import Rfc2136Provider
from mailops.dns.providers.route53 import Route53Provider
from mailops.dns.providers.zonefile import ZoneFileProvider
from mailops.inventory.model import load_inventory
from mailops.secrets import pki, wanted
from mailops.secrets.vault import Secrets
from mailops.site import ansible_vars, derived
from mailops.site.mailmodel import MailModel, load_mail_model
from tests.conftest import lab_inventory_copy

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventories" / "lab"


@cache
def _dkim(domain: str) -> str:
    return pki.generate_dkim_key()


def fake_secrets(domains, tsig: str | None = None) -> Secrets:
    extra = {"tsig_mailops": tsig} if tsig else {}
    return Secrets(None, None, {d: _dkim(d) for d in domains}, "", extra=extra)


def inv_with(tmp_path: Path, *, hosts: list[str] | None = None, **dns_vars):
    """A copy of the lab inventory with group_vars/all/dns.yml amended
    (a value None removes the key)."""
    inv = lab_inventory_copy(tmp_path / "inv", "tdns", "198.19.7", hosts=hosts)
    path = inv / "group_vars" / "all" / "dns.yml"
    data = yaml.safe_load(path.read_text()) or {}
    for key, value in dns_vars.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data))
    return load_inventory(inv)


def problems(excinfo) -> dict[str, object]:
    return {e.key: e for e in excinfo.value.errors}


# --- desired records ------------------------------------------------------------


def test_lab_desired_records():
    inv = load_inventory(LAB)
    model = load_mail_model(inv)
    desired = dnsdeploy.desired_for(inv, model, fake_secrets(model.domains))
    assert sorted(desired) == sorted(model.domains)  # the service name is in example.test
    lb = str(inv.floating_address)  # the balancers' floating address
    by_key = {zone: {(r.name, r.type): r for r in recs} for zone, recs in desired.items()}
    for domain in model.domains:
        recs = by_key[domain]
        assert recs[("@", "MX")].values == (f"10 {model.service_name}.",)
        dkim = recs[(f"{model.dkim_selector}._domainkey", "TXT")].values
        assert dkim == (pki.dkim_public_record(_dkim(domain)),)  # the vault's key, whole
        assert recs[("_dmarc", "TXT")].values[0].startswith("v=DMARC1; p=quarantine")
        spf = recs[("@", "TXT")].values[0]
        # Mail nodes send from their own addresses, which the MX (the balancer) is not.
        assert spf == "v=spf1 mx " + " ".join(
            f"ip4:{h.address}" for h in inv.group("mail")) + " -all"
        assert recs[("_submission._tcp", "SRV")].values == (f"0 1 587 {model.service_name}.",)
    assert by_key["example.test"][("mail", "A")].values == (lb,)
    assert ("mail", "A") not in by_key["example.net"]


def test_service_address_is_first_mail_node_without_balancer(tmp_path):
    inv = inv_with(tmp_path, hosts=["mail1", "mail2", "ns1"])
    model = load_mail_model(inv)
    desired = dnsdeploy.desired_for(inv, model, fake_secrets(model.domains))
    a = {r.name: r for r in desired["example.test"] if r.type == "A"}
    assert a["mail"].values == (str(inv.host("mail1").address),)
    spf = next(r for r in desired["example.test"] if r.type == "TXT" and r.name == "@")
    assert spf.values == (f"v=spf1 mx ip4:{inv.host('mail2').address} -all",)


def test_site_overrides_of_address_spf_dmarc_ttl(tmp_path):
    inv = inv_with(tmp_path, mailops_dns_service_ipv4=["198.19.7.50"],
                   mailops_dns_spf="v=spf1 ip4:198.19.7.0/24 -all",
                   mailops_dns_dmarc="v=DMARC1; p=reject", mailops_dns_ttl=600)
    model = load_mail_model(inv)
    recs = {(r.name, r.type): r for r in dnsdeploy.desired_for(
        inv, model, fake_secrets(model.domains))["example.test"]}
    assert recs[("mail", "A")].values == ("198.19.7.50",)
    assert recs[("@", "TXT")].values == ("v=spf1 ip4:198.19.7.0/24 -all",)
    assert recs[("_dmarc", "TXT")].values == ("v=DMARC1; p=reject",)
    assert {r.ttl for r in recs.values()} == {600}


def test_bad_spf_names_the_key(tmp_path):
    inv = inv_with(tmp_path, mailops_dns_spf="v=spf1 bogus:x -all")
    model = load_mail_model(inv)
    with pytest.raises(InventoryErrors) as info:
        dnsdeploy.desired_for(inv, model, fake_secrets(model.domains))
    (err,) = info.value.errors
    assert err.key == "mailops_dns_spf" and err.file.endswith("group_vars/all/dns.yml")
    assert "unknown mechanism" in err.problem


def test_missing_dkim_key_says_converge_first():
    inv = load_inventory(LAB)
    model = load_mail_model(inv)
    with pytest.raises(MailopsError, match=r"vault_dkim_keys.example.net: missing"
                                           r"(.|\n)*deploy.py converge"):
        dnsdeploy.desired_for(inv, model, fake_secrets(["example.test"]))


def _model(service: str, domains: tuple[str, ...]) -> MailModel:
    return MailModel(service_name=service, domains=domains, dkim_selector="s", mailboxes=(),
                     aliases={}, message_size_limit=10**6, spam_add_header_score=6,
                     spam_reject_score=15, tls_mode="internal")


SERVICE_ZONE_CASES = [
    ("mail.example.test", ("example.test", "example.net"), "example.test"),
    ("mail.lists.example.com", ("example.com", "lists.example.com"), "lists.example.com"),
    ("mail.lists.example.com", ("lists.example.com", "example.com"), "lists.example.com"),
    ("mx.provider.net", ("example.com",), "provider.net"),
    ("example.com", ("example.com",), "example.com"),
]


@pytest.mark.parametrize(("service", "domains", "zone"), SERVICE_ZONE_CASES)
def test_service_zone(service, domains, zone):
    assert derived.service_zone(_model(service, domains)) == zone


def test_name_server_zones_come_from_python_not_jinja():
    """The bind role's zones are mailops_site.zones, renamed: the playbook
    computes nothing (one derivation, in mailops.site)."""
    dns_vars = yaml.safe_load((ROOT / "mailops/converge/playbooks/vars/dns.yml").read_text())
    assert dns_vars["bind__zones"] == "{{ mailops_site.zones }}"
    inv = load_inventory(LAB)
    site = ansible_vars.site_vars(inv, load_mail_model(inv))
    assert site["zones"] == ["example.test", "example.net", "ext.test"]
    assert site["static_records"]["ext.test"][0] == "@ MX 10 ext1.ext.test."


def test_tls_files_mode_turns_mta_sts_off_everywhere(tmp_path):
    """With the operator's own certificate the balancer serves no policy and
    DNS publishes none, even with a certificate left in the vault."""
    inv = load_inventory(LAB)
    model = dataclasses.replace(load_mail_model(inv), tls_mode="files")
    site = ansible_vars.site_vars(inv, model)
    assert site["mta_sts"]["enabled"] is False and site["mta_sts"]["hosts"] == []
    records = dnsdeploy.desired_for(inv, model, fake_secrets(model.domains))
    assert not any("mta-sts" in r.name for rs in records.values() for r in rs)
    internal = ansible_vars.site_vars(inv, load_mail_model(inv))
    assert internal["mta_sts"]["hosts"] == ["mta-sts.example.test", "mta-sts.example.net"]


def test_service_outside_the_mail_domains_gets_its_own_zone(tmp_path):
    inv = load_inventory(LAB)
    model = dataclasses.replace(load_mail_model(inv), service_name="mx.provider.test")
    desired = dnsdeploy.desired_for(inv, model, fake_secrets(model.domains))
    assert [(r.name, r.type, r.values) for r in desired["provider.test"]] == [
        ("mx", "A", (str(inv.floating_address),))]
    assert not any(r.type == "A" and r.name == "mail" for r in desired["example.test"])
    cfg = dnsdeploy.settings(inv)
    assert derived.zones_served(model, cfg.external_domain) == ["example.test", "example.net",
                                                  "provider.test", "ext.test"]


# --- settings and providers -------------------------------------------------------


def test_lab_settings_publish_to_the_lab_name_server():
    inv = load_inventory(LAB)
    cfg = dnsdeploy.settings(inv)
    assert cfg.provider == "rfc2136"
    assert cfg.rfc2136_server == str(inv.group("dns")[0].address) and cfg.rfc2136_port == 53
    assert cfg.external_domain == "ext.test"
    assert 0 < cfg.max_share < 1 and cfg.owner


def test_rfc2136_provider_uses_the_vault_key():
    inv = load_inventory(LAB)
    secret = wanted.new_tsig_secret()
    assert len(base64.b64decode(secret)) == 32
    p = dnsdeploy.provider_for(inv, secrets=fake_secrets([], tsig=secret))
    assert isinstance(p, Rfc2136Provider)
    assert (p.server, p.port) == (str(inv.group("dns")[0].address), 53)
    assert p.key.name == "mailops" and p.key.secret == secret
    assert secret not in repr(p)


def test_rfc2136_without_key_in_vault_says_what_to_do():
    inv = load_inventory(LAB)
    with pytest.raises(MailopsError, match=r"vault_extra\.tsig_mailops(.|\n)*converge"):
        dnsdeploy.provider_for(inv, secrets=fake_secrets([]))


def test_route53_provider(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    inv = inv_with(tmp_path, mailops_dns_provider="route53",
                   mailops_dns_route53_endpoint_url="http://127.0.0.1:9")
    p = dnsdeploy.provider_for(inv)
    assert isinstance(p, Route53Provider)
    assert p.client.meta.endpoint_url == "http://127.0.0.1:9"


def test_zonefile_provider(tmp_path):
    inv = inv_with(tmp_path, mailops_dns_provider="zonefile", mailops_dns_zonefile_dir="zones",
                   mailops_dns_zonefile_nameservers=["ns1.example.test", "ns2.example.net"])
    p = dnsdeploy.provider_for(inv)
    assert isinstance(p, ZoneFileProvider)
    assert p.directory == inv.path / "zones"
    assert p.ns == ("ns1.example.test.", "ns2.example.net.")


def test_bad_settings_are_reported_together_with_file_key_and_fix(tmp_path):
    inv = inv_with(tmp_path, mailops_dns_provider="bind", mailops_dns_owner="no spaces!",
                   mailops_dns_max_change_share=2, mailops_dns_tsig_algorithm="hmac-md5",
                   mailops_dns_service_ipv4=["not-an-ip"])
    with pytest.raises(InventoryErrors) as info:
        dnsdeploy.settings(inv)
    found = problems(info)
    assert set(found) == {"mailops_dns_provider", "mailops_dns_owner",
                          "mailops_dns_max_change_share", "mailops_dns_tsig_algorithm",
                          "mailops_dns_service_ipv4[0]"}
    for err in found.values():
        assert err.file == str(inv.path / "group_vars" / "all" / "dns.yml")
    assert "rfc2136, route53, zonefile" in found["mailops_dns_provider"].fix
    assert "no host was touched" in str(info.value)


def test_provider_required_without_a_dns_host(tmp_path):
    inv = inv_with(tmp_path, hosts=["mail1"], mailops_dns_provider=None)
    with pytest.raises(InventoryErrors) as info:
        dnsdeploy.settings(inv)
    err = problems(info)["mailops_dns_provider"]
    assert "missing" in err.problem and "dns.yml" in err.fix


def test_rfc2136_server_outside_the_lab_is_refused(tmp_path):
    inv = inv_with(tmp_path, mailops_dns_rfc2136_server="192.0.2.53")
    with pytest.raises(InventoryErrors) as info:
        dnsdeploy.settings(inv)
    err = problems(info)["mailops_dns_rfc2136_server"]
    assert "outside the lab subnet 198.19.7.0/24" in err.problem


def test_zonefile_needs_dir_and_nameservers(tmp_path):
    inv = inv_with(tmp_path, mailops_dns_provider="zonefile")
    with pytest.raises(InventoryErrors) as info:
        dnsdeploy.settings(inv)
    assert set(problems(info)) == {"mailops_dns_zonefile_dir",
                                   "mailops_dns_zonefile_nameservers"}


def test_wanted_secrets_only_with_own_name_server(tmp_path):
    extra = wanted.wanted_extra(load_inventory(LAB))
    assert list(extra) == ["tsig_mailops"]
    assert extra["tsig_mailops"]() != extra["tsig_mailops"]()  # random each time
    assert wanted.wanted_extra(inv_with(tmp_path, hosts=["mail1"])) == {}


# --- plan and apply, offline (zonefile) ----------------------------------------------


@pytest.fixture
def zonefile_inv(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILOPS_VAULT_PASSWORD_FILE", str(tmp_path / "vault-pass"))
    inv = inv_with(tmp_path, mailops_dns_provider="zonefile", mailops_dns_zonefile_dir="zones",
                   mailops_dns_zonefile_nameservers=["ns.example.org"])
    from mailops.secrets.wanted import ensure_secrets

    inv, _ = ensure_secrets(inv, load_mail_model(inv))
    return inv


def test_plan_changes_nothing_and_needs_a_vault(tmp_path, monkeypatch):
    monkeypatch.setenv("MAILOPS_VAULT_PASSWORD_FILE", str(tmp_path / "vault-pass"))
    inv = inv_with(tmp_path, mailops_dns_provider="zonefile", mailops_dns_zonefile_dir="zones",
                   mailops_dns_zonefile_nameservers=["ns.example.org"])
    with pytest.raises(MailopsError, match="no vault yet(.|\n)*deploy.py converge"):
        dnsdeploy.plan(inv)
    assert not (inv.path / "group_vars" / "all" / "vault.yml").exists()
    assert not (tmp_path / "vault-pass").exists()


def test_plan_apply_replan_with_zonefile(zonefile_inv):
    inv = zonefile_inv
    plans = dnsdeploy.plan(inv)
    assert {p.zone for p in plans} == {"example.test", "example.net"}
    assert all(p.count("create") > 0 and p.count("update") == p.count("delete") == 0
               for p in plans)
    assert not (inv.path / "zones").exists()  # a plan writes nothing
    report = dnsdeploy.plan_report(plans, dnsdeploy.settings(inv))
    assert "nothing was changed" in report and "mo2026._domainkey" in report

    published = dnsdeploy.apply(inv)
    assert all(p.result is not None and p.result.complete for p in published)
    text = (inv.path / "zones" / "example.test.zone").read_text()
    assert "mo2026._domainkey" in text and "_mailops-owner-mx" in text
    again = dnsdeploy.plan(inv)
    assert all(p.is_empty for p in again), [p.table() for p in again]
    assert '"action": "apply"' in dnsdeploy.apply_report(dnsdeploy.apply(inv),
                                                         dnsdeploy.settings(inv), as_json=True)


def test_unsafe_plan_is_refused_in_every_zone_unless_forced(zonefile_inv, monkeypatch):
    inv = zonefile_inv
    dnsdeploy.apply(inv)
    before = {p.name: p.read_text() for p in (inv.path / "zones").iterdir()}
    cfg = dnsdeploy.settings(inv)
    # A new TTL updates every record: far past the safe share.
    monkeypatch.setattr(dnsdeploy, "settings", lambda _inv: dataclasses.replace(cfg, ttl=900))
    with pytest.raises(UnsafePlanError) as info:
        dnsdeploy.apply(inv)
    msg = str(info.value)
    assert "zone example.test" in msg and "zone example.net" in msg
    assert "Nothing was applied to any zone" in msg and "--force" in msg
    assert {p.name: p.read_text() for p in (inv.path / "zones").iterdir()} == before
    report = dnsdeploy.plan_report(dnsdeploy.plan(inv), dataclasses.replace(cfg, ttl=900))
    assert "apply would refuse" in report
    dnsdeploy.apply(inv, force=True)
    assert all(p.is_empty for p in dnsdeploy.plan(inv))


def test_provider_error_says_what_was_applied_and_second_run_finishes(zonefile_inv,
                                                                     monkeypatch):
    inv = zonefile_inv
    real = dnsdeploy.provider_for

    class Failing(ZoneFileProvider):
        def apply(self, plan):
            if plan.zone == "example.net":
                raise ProviderError(self.name, plan.zone, "disk full", (), plan.changes)
            return super().apply(plan)

    def failing(*args, **kw):
        p = real(*args, **kw)
        p.__class__ = Failing
        return p

    monkeypatch.setattr(dnsdeploy, "provider_for", failing)
    order = [p.zone for p in dnsdeploy.plan(inv)]
    assert order == ["example.test", "example.net"]
    with pytest.raises(dnsdeploy.DnsApplyError) as info:
        dnsdeploy.apply(inv)
    msg = str(info.value)
    assert "stopped at zone example.net" in msg and "disk full" in msg
    assert "applied completely before it: example.test" in msg
    assert "not applied (" in msg and "run `deploy.py dns apply` again" in msg
    monkeypatch.setattr(dnsdeploy, "provider_for", real)
    left = {p.zone: p.is_empty for p in dnsdeploy.plan(inv)}
    assert left == {"example.test": True, "example.net": False}
    dnsdeploy.apply(inv)
    assert all(p.is_empty for p in dnsdeploy.plan(inv))
