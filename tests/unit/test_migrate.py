"""migrate's pure parts: a legacy server's settings checked before anything
connects, folder names mapped as the cluster names them, and the parity of
a folder counted as multisets with flags."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import yaml

from mailops.core.errors import MailopsError
from mailops.inventory.model import load_inventory
from mailops.ops import migrate
from tests.conftest import lab_inventory_copy

pytestmark = pytest.mark.unit


def _inventory(tmp_path: Path, legacy: dict | None) -> Path:
    inv = lab_inventory_copy(tmp_path / "inv", "tmig", "198.19.7")
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())
    if legacy is not None:
        hosts["all"]["children"]["legacy"] = {"hosts": {"legacy1": {
            "ansible_host": "198.19.7.21", "mailops_legacy": legacy}}}
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    return inv


def test_a_source_that_is_not_a_legacy_host_is_named_with_the_fix(tmp_path):
    inv = load_inventory(_inventory(tmp_path, None))
    with pytest.raises(MailopsError, match=r"--from mail1: not a host of the group `legacy` "
                                           r"\(legacy hosts: none\)") as e:
        migrate.source_of(inv, "mail1")
    assert "fix: add it under all.children.legacy.hosts" in str(e.value)


def test_bad_legacy_settings_are_all_named_before_anything_connects(tmp_path):
    inv = load_inventory(_inventory(tmp_path, {"server": "exchange", "tls": "maybe",
                                               "port": 99999}))
    with pytest.raises(MailopsError) as e:
        migrate.source_of(inv, "legacy1")
    text = str(e.value)
    for key in ("mailops_legacy.server: 'exchange'", "mailops_legacy.domain",
                "mailops_legacy.tls: 'maybe'", "mailops_legacy.port: 99999"):
        assert key in text, text
    assert "nothing was touched" in text


def test_the_admin_password_missing_from_the_vault_is_named(tmp_path):
    inv = load_inventory(_inventory(tmp_path, {"server": "cyrus", "domain": "example.org"}))
    with pytest.raises(MailopsError, match="vault_extra.migrate_admin_password is missing"):
        migrate.source_of(inv, "legacy1")


def _source(server: str = "cyrus") -> migrate.Source:
    return migrate.Source(host=None, server=server, domain="example.org", port=143,
                          tls="none", admin_user="cyrus", admin_password="x")


def test_cyrus_folders_are_named_as_the_cluster_names_them():
    src = _source()
    assert migrate.cluster_name(src, "INBOX", ".") == "INBOX"
    assert migrate.cluster_name(src, "INBOX.Sent", ".") == "Sent"
    assert migrate.cluster_name(src, "INBOX.Archive.2024", ".") == "Archive/2024"
    assert migrate.cluster_name(src, "INBOX.R&AOk-unions", ".") == "Réunions"
    assert migrate.cluster_name(src, "INBOX.Kunden &- Partner", ".") == "Kunden & Partner"
    assert migrate.cluster_name(_source("dovecot"), "Archive/2024", "/") == "Archive/2024"
    assert src.address("erin") == "erin@example.org"
    assert src.address("erin@example.com") == "erin@example.com"


def test_a_message_is_known_by_its_message_id_or_its_header():
    assert migrate.identity(" <a@b> ", b"x") == "<a@b>"
    crlf = migrate.identity("", b"Subject: x\r\nFrom: y\r\n\r\n")
    assert crlf == migrate.identity("", b"Subject: x\nFrom: y\n\n")
    assert crlf.startswith("sha256:") and crlf != migrate.identity("", b"Subject: z\n\n")


def test_parity_counts_missing_extra_and_flags_as_multisets():
    legacy = Counter({("<1>", r"\Seen"): 1, ("<2>", ""): 2, ("<3>", r"\Flagged"): 1})
    same = migrate.compare_folder("erin", "INBOX", legacy, Counter(legacy))
    assert same.equal and (same.legacy, same.cluster) == (4, 4)
    cluster = Counter({("<1>", ""): 1, ("<2>", ""): 1, ("<3>", r"\Flagged"): 1,
                       ("<4>", ""): 1})
    diff = migrate.compare_folder("erin", "INBOX", legacy, cluster)
    assert (diff.missing, diff.extra, diff.flags_differ) == (1, 1, 1)
    assert not diff.equal
    report = migrate.Parity([same, diff])
    assert not report.equal and "1 folder(s) differ" in report.table()
    assert report.to_dict()["folders"][1]["missing"] == 1


def _with_domain(inv: Path) -> None:
    mail = inv / "group_vars" / "all" / "mail.yml"
    model = yaml.safe_load(mail.read_text())
    model["mailops_domains"].append("example.org")
    model["mailops_mailboxes"].append({"address": "erin@example.org", "quota": "10M"})
    mail.write_text(yaml.safe_dump(model, sort_keys=False))


def test_a_domain_moving_in_is_forwarded_to_its_legacy_server_until_the_cutover(tmp_path):
    """Before the cutover the cluster forwards the domain's mail to the
    legacy server (no home delivery for its mailboxes) and trusts nobody new;
    after it, the cluster delivers the domain itself and the legacy server
    may relay through it; once finished, neither."""
    from mailops.site.ansible_vars import site_vars
    from mailops.site.mailmodel import load_mail_model
    from mailops.site.moves import CUTOVER, FINISHED, held_domains, set_stage

    path = _inventory(tmp_path, {"server": "cyrus", "domain": "example.org"})
    _with_domain(path)
    inv = load_inventory(path)
    assert list(held_domains(inv)) == ["example.org"]
    values = site_vars(inv, load_mail_model(inv))
    assert values["forward_domains"] == {"example.org": "[198.19.7.21]:25"}
    delivered = {h["address"] for h in values["delivery_homes"]}
    assert "erin@example.org" not in delivered and "alice@example.test" in delivered
    assert "198.19.7.21/32" not in values["mynetworks"]
    # The lab's legacy server is the domain's MX before the move, TTL 3600.
    assert "@ 3600 MX 10 legacy1.example.org." in values["static_records"]["example.org"]

    set_stage(inv, "legacy1", CUTOVER, {"mx_ttl": 300})
    inv = load_inventory(path)  # the same process: the new file is read
    assert held_domains(inv) == {}
    values = site_vars(inv, load_mail_model(inv))
    assert values["forward_domains"] == {}
    assert "erin@example.org" in {h["address"] for h in values["delivery_homes"]}
    assert "198.19.7.21/32" in values["mynetworks"]

    set_stage(inv, "legacy1", FINISHED)
    inv = load_inventory(path)
    assert "198.19.7.21/32" not in site_vars(inv, load_mail_model(inv))["mynetworks"]


def test_a_held_domain_has_no_records_in_the_dns_plan_until_the_cutover(tmp_path):
    from mailops.dns.desired import desired_for
    from mailops.secrets import pki
    from mailops.secrets.vault import Secrets
    from mailops.site.mailmodel import load_mail_model
    from mailops.site.moves import CUTOVER, set_stage

    path = _inventory(tmp_path, {"server": "cyrus", "domain": "example.org"})
    _with_domain(path)
    inv = load_inventory(path)
    model = load_mail_model(inv)
    key = pki.generate_dkim_key()
    secrets = Secrets(None, None, {d: key for d in model.domains}, "")
    assert "example.org" not in desired_for(inv, model, secrets)
    set_stage(inv, "legacy1", CUTOVER)
    inv = load_inventory(path)
    records = desired_for(inv, model, secrets)["example.org"]
    assert any(r.type == "MX" for r in records)


def test_the_cutover_firewall_refuses_client_ports_except_from_the_allowed():
    rules = migrate.client_firewall_rules(["198.18.0.1", "198.18.0.11"])
    assert "elements = { 198.18.0.1, 198.18.0.11 }" in rules
    line = next(x for x in rules.splitlines() if "nfproto ipv4" in x)
    assert "ip saddr != @allowed reject with tcp reset" in line
    for port in (110, 143, 465, 587, 993, 995):
        assert f"{port}" in line
    assert " 25," not in line and "{ 25" not in line  # mail keeps arriving (relayed)
    # Re-runs replace the table in one transaction.
    assert rules.index("delete table inet mailops_migrate") < rules.index("chain input")


def test_after_the_cutover_new_mail_in_the_cluster_is_no_difference_but_a_loss_is():
    legacy = Counter({("<a@x>", r"\Seen"): 1})
    cluster = Counter({("<a@x>", r"\Seen"): 1, ("<new@x>", ""): 1})
    assert not migrate.compare_folder("u", "INBOX", legacy, cluster).equal
    assert migrate.compare_folder("u", "INBOX", legacy, cluster, contained=True).equal
    lost = Counter({("<new@x>", ""): 1})
    assert not migrate.compare_folder("u", "INBOX", legacy, lost, contained=True).equal
    flags = Counter({("<a@x>", ""): 1})
    assert not migrate.compare_folder("u", "INBOX", legacy, flags, contained=True).equal


def test_cyrus_sasldb_passwords_are_read_from_db_dump_with_escapes():
    dump = ("VERSION=3\nformat=print\ntype=hash\nHEADER=END\n"
            " cyrus\\00legacy1\\00userPassword\n admin-pw\n"
            " erin\\00legacy1\\00userPassword\n a\\5cb\\\\c\\20d\n"
            " erin\\00legacy1\\00cmusaslsecretOTP\n ignored\n"
            "DATA=END\n")
    assert migrate.parse_db_dump(dump) == {"cyrus": "admin-pw", "erin": "a\\b\\c d"}


def test_a_legacy_dovecots_user_hashes_are_found_through_doveconf():
    conf = ("auth_master_user_separator = *\n"
            "passdb {\n  args = scheme=SHA512-CRYPT /etc/dovecot/master-users\n"
            "  driver = passwd-file\n  master = yes\n  pass = yes\n}\n"
            "passdb {\n  args = scheme=SHA512-CRYPT username_format=%n /etc/dovecot/users\n"
            "  driver = passwd-file\n}\n"
            "passdb {\n  args = /etc/dovecot/%d/users\n  driver = passwd-file\n}\n"
            "userdb {\n  args = username_format=%n /etc/dovecot/users\n"
            "  driver = passwd-file\n}\n")
    assert migrate.passwd_files(conf) == [("/etc/dovecot/users", "SHA512-CRYPT")]
    users = ("erin:{SHA512-CRYPT}$6$abc$def::::::\n# a comment\n"
             "frank:$6$xyz$uvw:1000:1000::/home/frank::\nnopass:::::::\n")
    assert migrate.parse_passwd_file(users, "SHA512-CRYPT") == {
        "erin": "{SHA512-CRYPT}$6$abc$def", "frank": "{SHA512-CRYPT}$6$xyz$uvw"}


def _fake_runs(monkeypatch, exits: list[int], answers: bool = True) -> list[str]:
    """doveadm's exits, one per try, on a fake node; sleeps cost nothing."""
    import subprocess

    calls: list[str] = []

    def run(inventory, host, command, timeout=None):
        calls.append(command)
        code = exits[len(calls) - 1]
        return subprocess.CompletedProcess(command, code, "", f"dsync: exit {code}")
    monkeypatch.setattr(migrate.remote, "run", run)
    monkeypatch.setattr(migrate.time, "sleep", lambda s: None)
    monkeypatch.setattr(migrate, "_answers", lambda source: answers)
    return calls


def _legacy1() -> migrate.Source:
    from ipaddress import IPv4Address

    from mailops.inventory.model import Host

    host = Host("legacy1", ("legacy",), IPv4Address("198.19.7.21"))
    return migrate.Source(host, "cyrus", "example.org", 143, "starttls", "admin", "secret", 110)


@pytest.mark.parametrize("exits, result, tries", [
    ([75, 2, 0], "ok", 3),  # a locked mailbox / a mid-sync arrival, then done
    ([1], "FAILED (doveadm exit 1): dsync: exit 1", 1),  # not worth a second try
    ([75] * 5, "FAILED (doveadm exit 75 after 5 tries; run sync again): dsync: exit 75", 5),
])
def test_a_sync_is_tried_again_only_where_dsync_says_try_again(monkeypatch, exits, result,
                                                               tries):
    calls = _fake_runs(monkeypatch, exits)
    assert migrate._sync_user(None, _legacy1(), None, "frank", "frank@example.org") == (
        result, tries)
    assert len(calls) == tries and "backup -R -u frank@example.org" in calls[0]


def test_a_sync_whose_source_went_away_is_not_tried_again(monkeypatch):
    calls = _fake_runs(monkeypatch, [75, 0], answers=False)
    result, tries = migrate._sync_user(None, _legacy1(), None, "frank", "frank@example.org")
    assert result.startswith("FAILED: legacy1 (198.19.7.21:143) stopped answering")
    assert tries == 1 and len(calls) == 1
