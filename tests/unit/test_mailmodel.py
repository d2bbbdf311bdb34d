"""The mail model: the lab's is valid; bad site data is refused with the
file, the key and the fix."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from mailops.core.errors import InventoryErrors
from mailops.inventory.model import load_inventory
from mailops.site.mailmodel import load_mail_model
from tests.conftest import lab_inventory_copy

ROOT = Path(__file__).resolve().parents[2]


def test_lab_mail_model_is_valid():
    model = load_mail_model(load_inventory(ROOT / "inventories" / "lab"))
    assert len(model.domains) >= 2
    assert {m.domain for m in model.mailboxes} == set(model.domains)
    assert model.spam_add_header_score < model.spam_reject_score
    assert model.mailbox("tiny@example.net").quota_bytes == 200 * 1024
    assert "team@example.net" in model.aliases
    # The lab bans briefly (its tests wait a ban out); seconds, derived once.
    assert (model.auth_ban.failures, model.auth_ban.within, model.auth_ban.ban) == (10, 600, 60)


def test_auth_ban_defaults_when_left_out(tmp_path):
    model = load_mail_model(load_inventory(_with(tmp_path, mailops_auth_ban=None)))
    assert (model.auth_ban.failures, model.auth_ban.within, model.auth_ban.ban) == (10, 600, 3600)
    model = load_mail_model(load_inventory(
        _with(tmp_path, mailops_auth_ban={"failures": 5, "within": 120})))
    assert (model.auth_ban.failures, model.auth_ban.within, model.auth_ban.ban) == (5, 120, 3600)


def _with(tmp_path: Path, **changes) -> Path:
    inv = lab_inventory_copy(tmp_path / "inv", "tmodel", "198.19.9")
    mail = inv / "group_vars" / "all" / "mail.yml"
    data = yaml.safe_load(mail.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    mail.write_text(yaml.safe_dump(data))
    return inv


BAD = {
    "missing service name": ({"mailops_service_name": None}, "mailops_service_name",
                             "missing (required)", "mail.example.com"),
    "domain not a name": ({"mailops_domains": ["example.test", "not a domain"]},
                          "mailops_domains[1]", "is not a domain name", "lowercase domain"),
    "mailbox outside served domains": (
        {"mailops_mailboxes": [{"address": "x@elsewhere.org", "quota": "1M"}]},
        "mailops_mailboxes[0].address", "not in mailops_domains", "add the domain"),
    "bad quota": ({"mailops_mailboxes": [{"address": "x@example.test", "quota": "lots"}]},
                  "mailops_mailboxes[0].quota", "is not a quota", "500M"),
    "alias is also a mailbox": (
        {"mailops_aliases": {"alice@example.test": ["bob@example.test"]}},
        "mailops_aliases.alice@example.test", "is also a mailbox", "either a mailbox"),
    "size limit wrong type": ({"mailops_message_size_limit": "10M"},
                              "mailops_message_size_limit", "wrong type", "in bytes"),
    "thresholds inverted": ({"mailops_spam_add_header_score": 20},
                            "mailops_spam_add_header_score", "not below the reject score",
                            "lower score"),
    "unknown tls mode": ({"mailops_tls_mode": "letsencrypt"}, "mailops_tls_mode",
                         "is not a TLS mode", "internal, files"),
    "ban after one failure": ({"mailops_auth_ban": {"failures": 1}},
                              "mailops_auth_ban.failures", "would ban a typo", "at least 2"),
    "ban for a bad duration": ({"mailops_auth_ban": {"ban": "a while"}},
                               "mailops_auth_ban.ban", "is not a duration", "e.g. 1h"),
    "ban with an unknown key": ({"mailops_auth_ban": {"tries": 5}},
                                "mailops_auth_ban.tries", "unknown key", "`failures`"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_mail_model_is_refused(tmp_path, case):
    changes, key, problem, fix = BAD[case]
    inv = _with(tmp_path, **changes)
    with pytest.raises(InventoryErrors) as info:
        load_mail_model(load_inventory(inv))
    hits = [e for e in info.value.errors if e.key == key and problem in e.problem]
    assert hits, str(info.value)
    assert fix in hits[0].fix
    # The error names the file that holds the key.
    assert hits[0].file.endswith("group_vars/all/mail.yml"), hits[0].file


def test_encrypted_vault_without_its_password_is_refused(tmp_path, monkeypatch):
    inv = lab_inventory_copy(tmp_path / "inv", "tvault", "198.19.9")
    (inv / "group_vars" / "all" / "vault.yml").write_text("$ANSIBLE_VAULT;1.1;AES256\n00\n")
    monkeypatch.setenv("MAILOPS_VAULT_PASSWORD_FILE", str(tmp_path / "nope"))
    with pytest.raises(InventoryErrors) as info:
        load_inventory(inv)
    assert "vault password file" in str(info.value) and "MAILOPS_VAULT_PASSWORD_FILE" in str(
        info.value)
    shutil.rmtree(inv)


def test_example_production_inventory_is_valid():
    inv = load_inventory(ROOT / "inventories" / "example")
    assert inv.lab is None
    assert len(inv.group("mail")) == 2
    assert load_mail_model(inv).service_name == "mail.example.com"
