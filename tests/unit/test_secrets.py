"""The vault: generated once, reused byte for byte, readable by Ansible,
never leaking secret text into files in clear, messages or errors."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from mailops.secrets import pki
from mailops.secrets.vault import (
    Secrets,
    SecretsError,
    ensure_secrets,
    ensure_vault_password_file,
)

from ansible.parsing.vault import VaultLib, VaultSecret  # isort: skip  (after mailops)

BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
NAMES = ["mail.example.com", "mx.example.com"]
DOMAINS = ["example.com", "example.org"]


@pytest.fixture
def pwfile(tmp_path: Path) -> Path:
    return ensure_vault_password_file(tmp_path / "secret" / "vault-pass")


@pytest.fixture
def vault(tmp_path: Path) -> Path:
    return tmp_path / "inv" / "group_vars" / "all" / "vault.yml"


def _vaultlib(pwfile: Path) -> VaultLib:
    return VaultLib([("default", VaultSecret(pwfile.read_bytes().strip()))])


def _plaintext(vault: Path, pwfile: Path) -> dict:
    return yaml.safe_load(_vaultlib(pwfile).decrypt(vault.read_bytes()))


def _write_plain(vault: Path, pwfile: Path, doc: dict) -> None:
    vault.parent.mkdir(parents=True, exist_ok=True)
    vault.write_bytes(_vaultlib(pwfile).encrypt(yaml.safe_dump(doc).encode()))


def _secret_texts(s: Secrets) -> list[str]:
    """Every secret value, and each line of every PEM body (a leak of part
    of a key is a leak too)."""
    values = [s.doveadm_password, *s.dkim.values(), *s.extra.values()]
    for kc in (s.ca, s.service_cert):
        if kc is not None:
            values += [kc.key_pem]
    lines = [ln for v in values for ln in v.splitlines() if ln and not ln.startswith("-----")]
    return [s.doveadm_password, *lines]


def _run(vault: Path, pwfile: Path, names=NAMES, domains=DOMAINS, mode="internal"):
    return ensure_secrets(vault, pwfile, list(names), list(domains), tls_mode=mode)


def test_first_run_creates_everything_encrypted(vault, pwfile):
    s, changes = _run(vault, pwfile)
    assert s.ca is not None and s.service_cert is not None
    assert sorted(s.dkim) == DOMAINS
    assert len(s.doveadm_password) >= 32
    assert len(changes) == 5
    assert "generated DKIM key for example.org" in changes

    data = vault.read_bytes()
    assert data.startswith(b"$ANSIBLE_VAULT")
    assert b"BEGIN" not in data and b"PRIVATE" not in data
    for secret in _secret_texts(s):
        assert secret.encode() not in data
    assert stat.S_IMODE(vault.stat().st_mode) == 0o600
    assert not [p for p in vault.parent.iterdir() if p != vault]  # no temp files left

    doc = _plaintext(vault, pwfile)
    assert doc["vault_tls_ca_cert"] == s.ca.cert_pem
    assert doc["vault_tls_ca_key"] == s.ca.key_pem
    assert doc["vault_tls_cert"] == s.service_cert.cert_pem
    assert doc["vault_tls_key"] == s.service_cert.key_pem
    assert doc["vault_dkim_keys"] == s.dkim
    assert doc["vault_doveadm_password"] == s.doveadm_password
    assert doc["vault_extra"] == {}


def test_ansible_vault_cli_reads_it(vault, pwfile):
    s, _ = _run(vault, pwfile)
    out = subprocess.run(
        [BIN / "ansible-vault", "view", "--vault-password-file", pwfile, vault],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert yaml.safe_load(out)["vault_tls_cert"] == s.service_cert.cert_pem


def test_ansible_inventory_sees_variables(vault, pwfile):
    s, _ = _run(vault, pwfile)
    hosts = vault.parents[2] / "hosts.yml"
    hosts.write_text("all:\n  hosts:\n    mail1: {ansible_host: 198.18.0.11}\n")
    cmd = [BIN / "ansible-inventory", "-i", hosts, "--vault-password-file", pwfile]
    out = subprocess.run(
        [*cmd, "--host", "mail1"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    hostvars = json.loads(out)
    assert hostvars["vault_tls_key"] == s.service_cert.key_pem
    assert hostvars["vault_tls_ca_cert"] == s.ca.cert_pem
    assert hostvars["vault_dkim_keys"] == s.dkim
    assert hostvars["vault_doveadm_password"] == s.doveadm_password


def test_second_run_changes_nothing(vault, pwfile):
    first, _ = _run(vault, pwfile)
    before, mtime = vault.read_bytes(), vault.stat().st_mtime_ns
    second, changes = _run(vault, pwfile)
    assert changes == []
    assert second == first
    assert vault.read_bytes() == before
    assert vault.stat().st_mtime_ns == mtime


def test_adding_a_domain_adds_one_key_only(vault, pwfile):
    first, _ = _run(vault, pwfile)
    second, changes = _run(vault, pwfile, domains=[*DOMAINS, "example.net"])
    assert changes == ["generated DKIM key for example.net"]
    assert set(second.dkim) == {*DOMAINS, "example.net"}
    for domain in DOMAINS:
        assert second.dkim[domain] == first.dkim[domain]
    assert second.ca == first.ca
    assert second.service_cert == first.service_cert
    assert second.doveadm_password == first.doveadm_password
    assert _plaintext(vault, pwfile)["vault_dkim_keys"] == second.dkim


def test_removed_domain_keeps_its_key(vault, pwfile):
    first, _ = _run(vault, pwfile)
    second, changes = _run(vault, pwfile, domains=["example.com"])
    assert changes == []
    assert second.dkim == first.dkim


def test_changing_service_names_reissues_cert_keeps_ca(vault, pwfile):
    first, _ = _run(vault, pwfile)
    names = [*NAMES, "imap.example.com"]
    second, changes = _run(vault, pwfile, names=names)
    assert len(changes) == 1 and "issued TLS certificate" in changes[0]
    assert "added imap.example.com" in changes[0]
    assert second.ca == first.ca
    assert second.service_cert != first.service_cert
    assert second.dkim == first.dkim
    assert pki.certificate_info(second.service_cert.cert_pem).names == tuple(names)
    store = Store([x509.load_pem_x509_certificate(second.ca.cert_pem.encode())])
    verifier = (
        PolicyBuilder()
        .store(store)
        .time(datetime.now(UTC))
        .build_server_verifier(x509.DNSName("imap.example.com"))
    )
    verifier.verify(x509.load_pem_x509_certificate(second.service_cert.cert_pem.encode()), [])


def test_same_names_other_case_or_order_keep_cert(vault, pwfile):
    first, _ = _run(vault, pwfile)
    second, changes = _run(vault, pwfile, names=["MAIL.example.com.", "mx.example.com"])
    assert changes == []
    assert second.service_cert == first.service_cert


def test_expiring_cert_is_renewed(vault, pwfile):
    first, _ = _run(vault, pwfile)
    doc = _plaintext(vault, pwfile)
    short = pki.issue_certificate(first.ca, NAMES, days=10)
    doc["vault_tls_cert"], doc["vault_tls_key"] = short.cert_pem, short.key_pem
    _write_plain(vault, pwfile, doc)
    second, changes = _run(vault, pwfile)
    assert len(changes) == 1 and "expires" in changes[0]
    assert second.ca == first.ca and second.service_cert != short


def test_unknown_keys_and_extra_survive_a_rewrite(vault, pwfile):
    _run(vault, pwfile)
    doc = _plaintext(vault, pwfile)
    doc["vault_extra"] = {"tsig_lab": "c2VjcmV0"}
    doc["site_api_token"] = "tok-123"
    _write_plain(vault, pwfile, doc)
    s, changes = _run(vault, pwfile, domains=[*DOMAINS, "example.net"])
    assert changes == ["generated DKIM key for example.net"]
    assert s.extra == {"tsig_lab": "c2VjcmV0"}
    after = _plaintext(vault, pwfile)
    assert after["site_api_token"] == "tok-123"
    assert after["vault_extra"] == {"tsig_lab": "c2VjcmV0"}


def test_files_mode_makes_no_ca(vault, pwfile):
    s, changes = _run(vault, pwfile, mode="files")
    assert s.ca is None and s.service_cert is None
    assert not any("CA" in c or "certificate" in c for c in changes)
    doc = _plaintext(vault, pwfile)
    assert "vault_tls_ca_key" not in doc and "vault_tls_key" not in doc
    assert sorted(doc["vault_dkim_keys"]) == DOMAINS


def test_wrong_password_names_file_and_fix(vault, pwfile, tmp_path):
    _run(vault, pwfile)
    before = vault.read_bytes()
    other = tmp_path / "other-pass"
    other.write_text("not-the-password\n")
    with pytest.raises(SecretsError) as err:
        _run(vault, other)
    msg = str(err.value)
    assert str(vault) in msg
    assert "MAILOPS_VAULT_PASSWORD_FILE" in msg and "--vault-password-file" in msg
    assert "not-the-password" not in msg and pwfile.read_text().strip() not in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert vault.read_bytes() == before


def test_missing_password_file(vault, tmp_path):
    with pytest.raises(SecretsError, match="MAILOPS_VAULT_PASSWORD_FILE"):
        _run(vault, tmp_path / "nope")


def test_corrupt_vault(vault, pwfile):
    _run(vault, pwfile)
    lines = vault.read_text().splitlines()
    lines[3] = lines[3][:-4] + ("0000" if not lines[3].endswith("0000") else "1111")
    vault.write_text("\n".join(lines) + "\n")
    with pytest.raises(SecretsError) as err:
        _run(vault, pwfile)
    assert str(vault) in str(err.value)


def test_plain_yaml_is_not_overwritten(vault, pwfile):
    vault.parent.mkdir(parents=True)
    vault.write_text("vault_doveadm_password: in-the-clear\n")
    with pytest.raises(SecretsError) as err:
        _run(vault, pwfile)
    assert str(vault) in str(err.value) and "ansible-vault encrypt" in str(err.value)
    assert "in-the-clear" not in str(err.value)
    assert vault.read_text() == "vault_doveadm_password: in-the-clear\n"


def test_half_a_key_pair_is_an_error_not_a_new_ca(vault, pwfile):
    _run(vault, pwfile)
    doc = _plaintext(vault, pwfile)
    del doc["vault_tls_ca_key"]
    _write_plain(vault, pwfile, doc)
    with pytest.raises(SecretsError, match="vault_tls_ca_key"):
        _run(vault, pwfile)


def test_bad_yaml_error_does_not_quote_content(vault, pwfile):
    vault.parent.mkdir(parents=True)
    vault.write_bytes(_vaultlib(pwfile).encrypt(b"a: b\nsecretvalue42: [unclosed\n"))
    with pytest.raises(SecretsError) as err:
        _run(vault, pwfile)
    assert "secretvalue42" not in str(err.value) and "unclosed" not in str(err.value)


def test_no_secret_in_changes_or_repr(vault, pwfile):
    s, changes = _run(vault, pwfile)
    s2, changes2 = _run(vault, pwfile, names=["smtp.example.com"], domains=["example.net"])
    text = "\n".join(changes + changes2) + repr(s) + repr(s2)
    assert "BEGIN" not in text and "PRIVATE" not in text
    for secret in _secret_texts(s) + _secret_texts(s2):
        assert secret not in text


def test_vault_password_file(tmp_path, capsys):
    path = tmp_path / "new" / "dir" / "vault-pass"
    existing_mode = tmp_path.stat().st_mode
    assert ensure_vault_password_file(path) == path
    password = path.read_text()
    assert len(password.strip()) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
    assert tmp_path.stat().st_mode == existing_mode  # a parent we did not create is left alone
    ensure_vault_password_file(path)
    assert path.read_text() == password  # never replaced
    assert os.listdir(path.parent) == ["vault-pass"]
    captured = capsys.readouterr()
    assert password.strip() not in captured.out + captured.err


def test_bad_input_rejected_before_touching_the_vault(vault, pwfile):
    with pytest.raises(ValueError):
        _run(vault, pwfile, mode="selfsigned")
    with pytest.raises(ValueError):
        _run(vault, pwfile, names=[])
    with pytest.raises(ValueError):
        _run(vault, pwfile, domains=["bad domain"])
    assert not vault.exists()


def test_carried_over_passwords_replace_generated_ones_and_are_kept(vault, pwfile):
    from mailops.secrets.vault import load_secrets, set_mailbox_passwords

    ensure_secrets(vault, pwfile, list(NAMES), list(DOMAINS),
                   mailboxes=["erin@example.org", "frank@example.org"])
    before = vault.read_bytes()
    generated = load_secrets(vault, pwfile).mailboxes["frank@example.org"]
    assert set_mailbox_passwords(vault, pwfile, {"Erin@example.org": "old secret"}) == \
        ["erin@example.org"]
    after = load_secrets(vault, pwfile).mailboxes
    assert after["erin@example.org"]["password"] == "old secret"
    assert after["erin@example.org"]["hash"].startswith("{SHA512-CRYPT}$6$")
    assert after["frank@example.org"] == generated  # the others untouched
    assert b"old secret" not in vault.read_bytes() and vault.read_bytes() != before
    # The same password again: nothing to write.
    written = vault.read_bytes()
    assert set_mailbox_passwords(vault, pwfile, {"erin@example.org": "old secret"}) == []
    assert vault.read_bytes() == written
    # A later ensure_secrets keeps it (it only adds what is missing).
    ensure_secrets(vault, pwfile, list(NAMES), list(DOMAINS),
                   mailboxes=["erin@example.org", "frank@example.org"])
    assert load_secrets(vault, pwfile).mailboxes["erin@example.org"]["password"] == \
        "old secret"
