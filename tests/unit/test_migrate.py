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
