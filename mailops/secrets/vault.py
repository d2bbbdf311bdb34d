"""The vault: every secret the deployment needs, generated once and kept.

Secrets live in one ansible-vault encrypted YAML file inside the inventory
(e.g. `inventories/prod/group_vars/all/vault.yml`), so Ansible roles read
them as ordinary variables and a disaster-recovery rebuild reuses the same
CA, certificate, DKIM keys and passwords. `ensure_secrets` only ever adds
what is missing; it never rotates or deletes a secret on its own, and it
rewrites the file only when something changed (so a no-op run leaves its
bytes and mtime alone).

Nothing in this module prints, logs or puts secret text in an exception.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailops.core import ansible_env  # noqa: F401  (must precede ansible imports)

# isort: split
from ansible.errors import AnsibleError
from ansible.parsing.dataloader import DataLoader
from ansible.parsing.vault import (
    AnsibleVaultFormatError,
    VaultLib,
    get_file_vault_secret,
    is_encrypted,
)

from mailops.core.errors import MailopsError
from mailops.secrets import pki
from mailops.secrets.pki import KeyCert

TLS_MODES = ("internal", "acme", "files")
PASSWORD_FILE_ENV = "MAILOPS_VAULT_PASSWORD_FILE"
VAULT_ID = "default"
# Renew the service certificate this long before it expires; the CA is not
# renewed automatically (every client trusting it would need the new one).
RENEW_BEFORE = timedelta(days=30)
_PASSWORD_FIX = f"check --vault-password-file / the {PASSWORD_FILE_ENV} environment variable"

# Variable names as the roles consume them (group_vars).
V_CA_CERT = "vault_tls_ca_cert"
V_CA_KEY = "vault_tls_ca_key"
V_CERT = "vault_tls_cert"
V_KEY = "vault_tls_key"
V_DKIM = "vault_dkim_keys"
V_DKIM_ROTATED = "vault_dkim_selector_keys"
V_DOVEADM = "vault_doveadm_password"
V_EXTRA = "vault_extra"
V_MAILBOXES = "vault_mailbox_passwords"

_HEADER = """\
# Managed by mailops: secrets generated once and reused on every run and rebuild.
# Read with `ansible-vault view`. Keys mailops does not know are kept as they are,
# but comments are not: mailops rewrites this file when it adds a secret.
"""


class SecretsError(MailopsError):
    """A vault problem; the message names the file and the fix, never a secret."""

    def __init__(self, file: Path | str, problem: str, fix: str) -> None:
        self.file = str(file)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.file}: {problem}\n  fix: {fix}")


@dataclass(frozen=True, repr=False)
class Secrets:
    ca: KeyCert | None  # None unless tls_mode is "internal" (or was, once)
    service_cert: KeyCert | None
    dkim: dict[str, str]  # mail domain -> DKIM private key PEM
    doveadm_password: str
    extra: dict[str, str] = field(default_factory=dict)  # later additions, e.g. TSIG keys
    # mailbox address -> {"password": clear, "hash": Dovecot {SHA512-CRYPT} hash},
    # for mailboxes whose inventory entry gives no password_hash of its own.
    mailboxes: dict[str, dict[str, str]] = field(default_factory=dict)
    # mail domain -> selector -> DKIM private key PEM: the keys made by
    # `dkim rotate` (dkim holds each domain's first, for the model's selector).
    dkim_rotated: dict[str, dict[str, str]] = field(default_factory=dict)

    def dkim_key(self, domain: str, selector: str, base_selector: str) -> str | None:
        """The private key of one of a domain's selectors, if the vault has it."""
        if selector == base_selector:
            return self.dkim.get(domain)
        return self.dkim_rotated.get(domain, {}).get(selector)

    def __repr__(self) -> str:
        # Safe to log: names only, no key material.
        ca = pki.certificate_info(self.ca.cert_pem).subject_cn if self.ca else None
        cert = pki.certificate_info(self.service_cert.cert_pem).names if self.service_cert else None
        return (
            f"Secrets(ca={ca!r}, service_cert={cert!r}, dkim={sorted(self.dkim)!r}, "
            f"doveadm_password='***', extra={sorted(self.extra)!r}, "
            f"mailboxes={sorted(self.mailboxes)!r})"
        )


# --- vault password -------------------------------------------------------


def ensure_vault_password_file(path: Path) -> Path:
    """Create a random vault password file (0600, parent 0700) unless one exists.

    The file appears complete or not at all (written aside, then hard-linked
    into place), so an interrupted run never leaves an empty password behind.
    """
    path = Path(path)
    if path.exists():
        return path
    _make_private_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(pki.random_password(48) + "\n")
            f.flush()
            os.fsync(f.fileno())
        # Fails if another run created it meanwhile: keep theirs.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    return path


def _make_private_dirs(directory: Path) -> None:
    # Only directories we create get 0700; an existing parent is not ours to change.
    missing = []
    for d in [directory, *directory.parents]:
        if d.exists():
            break
        missing.append(d)
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        os.chmod(d, 0o700)


def _vault(password_file: Path) -> VaultLib:
    """The vault as ansible-vault sees it: same password file rules (an
    executable file is a script whose output is the password)."""
    path = Path(password_file)
    if not path.is_file():
        raise SecretsError(
            path,
            "vault password file not found",
            f"{_PASSWORD_FIX}; without the password the existing vault cannot be read",
        )
    try:
        secret = get_file_vault_secret(str(path), vault_id=VAULT_ID, loader=DataLoader())
        secret.load()
    except AnsibleError:
        raise SecretsError(
            path, "cannot read a vault password from this file (empty or unreadable)", _PASSWORD_FIX
        ) from None
    return VaultLib([(VAULT_ID, secret)])


# --- reading --------------------------------------------------------------


def _decrypt(vault_file: Path, vault: VaultLib) -> bytes:
    data = vault_file.read_bytes()
    if not is_encrypted(data):
        raise SecretsError(
            vault_file,
            "not an ansible-vault file (does not start with $ANSIBLE_VAULT); "
            "mailops will not overwrite it",
            "move it away, or encrypt it: ansible-vault encrypt --vault-password-file F "
            f"{vault_file}",
        )
    try:
        return vault.decrypt(data)
    except AnsibleVaultFormatError:
        raise SecretsError(
            vault_file,
            "vault file is corrupt (damaged header or ciphertext)",
            "restore it from backup or version control",
        ) from None
    except AnsibleError:
        # HMAC mismatch: almost always the wrong password, rarely a damaged file.
        raise SecretsError(
            vault_file,
            "cannot decrypt the vault: wrong vault password (or damaged file)",
            _PASSWORD_FIX,
        ) from None


def _parse_yaml(vault_file: Path, plaintext: bytes) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        # Only the position: a YAML error's own text quotes the (secret) content.
        mark = getattr(e, "problem_mark", None)
        where = f" near line {mark.line + 1}" if mark else ""
        raise SecretsError(
            vault_file,
            f"decrypted vault is not valid YAML{where}",
            f"fix it with: ansible-vault edit --vault-password-file F {vault_file}",
        ) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SecretsError(
            vault_file, "decrypted vault is not a YAML mapping", "restore it from backup"
        )
    return doc


def _bad(vault_file: Path, key: str, problem: str) -> SecretsError:
    return SecretsError(
        vault_file,
        f"{key}: {problem}",
        f"fix or remove {key} with: ansible-vault edit --vault-password-file F {vault_file} "
        "(a removed entry is generated anew)",
    )


def _string(doc: dict[str, Any], key: str, file: Path) -> str | None:
    value = doc.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(file, key, "must be a string")
    return value


def _mapping(doc: dict[str, Any], key: str, file: Path) -> dict[str, str]:
    value = doc.get(key) or {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _bad(file, key, "must be a mapping of strings to strings")
    return dict(value)


def _key_cert(doc: dict[str, Any], key_var: str, cert_var: str, file: Path) -> KeyCert | None:
    key, cert = _string(doc, key_var, file), _string(doc, cert_var, file)
    if key is None and cert is None:
        return None
    if key is None or cert is None:
        # Regenerating half a pair would silently replace a CA clients trust.
        missing = key_var if key is None else cert_var
        raise _bad(file, missing, "missing while its pair is present")
    try:
        x509.load_pem_x509_certificate(cert.encode())
    except ValueError:
        raise _bad(file, cert_var, "is not a PEM certificate") from None
    try:
        serialization.load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError):
        raise _bad(file, key_var, "is not an unencrypted PEM private key") from None
    if not pki.key_matches_certificate(key, cert):
        raise _bad(file, key_var, f"does not belong to the certificate in {cert_var}")
    return KeyCert(key_pem=key, cert_pem=cert)


def _dkim(doc: dict[str, Any], file: Path) -> dict[str, str]:
    keys = _mapping(doc, V_DKIM, file)
    for domain, pem in keys.items():
        try:
            pki.dkim_key_bits(pem)
        except ValueError:
            raise _bad(file, f"{V_DKIM}.{domain}", "is not an RSA private key PEM") from None
    return keys


def _dkim_rotated(doc: dict[str, Any], file: Path) -> dict[str, dict[str, str]]:
    value = doc.get(V_DKIM_ROTATED) or {}
    if not isinstance(value, dict):
        raise _bad(file, V_DKIM_ROTATED, "must map each domain to {selector: key}")
    out = {}
    for domain in value:
        keys = _mapping(value, domain, file)
        for selector, pem in keys.items():
            try:
                pki.dkim_key_bits(pem)
            except ValueError:
                raise _bad(file, f"{V_DKIM_ROTATED}.{domain}.{selector}",
                           "is not an RSA private key PEM") from None
        out[str(domain)] = keys
    return out


def _mailboxes(doc: dict[str, Any], file: Path) -> dict[str, dict[str, str]]:
    value = doc.get(V_MAILBOXES) or {}
    if not isinstance(value, dict) or not all(
        isinstance(v, dict) and all(isinstance(v.get(k), str) for k in ("password", "hash"))
        for v in value.values()
    ):
        raise _bad(file, V_MAILBOXES, "must map each address to {password: ..., hash: ...}")
    return {str(k): {"password": v["password"], "hash": v["hash"]} for k, v in value.items()}


def _load(vault_file: Path, vault: VaultLib) -> tuple[dict[str, Any], Secrets]:
    """The file's raw mapping (to keep unknown keys) and what it holds."""
    if not vault_file.exists():
        return {}, Secrets(None, None, {}, "")
    doc = _parse_yaml(vault_file, _decrypt(vault_file, vault))
    ca = _key_cert(doc, V_CA_KEY, V_CA_CERT, vault_file)
    if ca is not None and not pki.certificate_info(ca.cert_pem).is_ca:
        raise _bad(vault_file, V_CA_CERT, "is not a CA certificate")
    return doc, Secrets(
        ca=ca,
        service_cert=_key_cert(doc, V_KEY, V_CERT, vault_file),
        dkim=_dkim(doc, vault_file),
        doveadm_password=_string(doc, V_DOVEADM, vault_file) or "",
        extra=_mapping(doc, V_EXTRA, vault_file),
        mailboxes=_mailboxes(doc, vault_file),
        dkim_rotated=_dkim_rotated(doc, vault_file),
    )


# --- completing -----------------------------------------------------------


def _cert_problem(ca: KeyCert, cert: KeyCert, names: list[str]) -> str | None:
    """Why the service certificate must be reissued, or None to keep it."""
    info = pki.certificate_info(cert.cert_pem)
    if not pki.is_issued_by(cert.cert_pem, ca.cert_pem):
        return "not signed by the current CA"
    if info.subject_cn != names[0] or set(info.names) != set(names):
        added = sorted(set(names) - set(info.names))
        removed = sorted(set(info.names) - set(names))
        parts = [f"added {', '.join(added)}"] if added else []
        parts += [f"removed {', '.join(removed)}"] if removed else []
        return "service names changed: " + ("; ".join(parts) or f"primary name is {names[0]}")
    if info.not_after - datetime.now(UTC) < RENEW_BEFORE:
        return f"expires {info.not_after:%Y-%m-%d}"
    return None


def _complete_tls(
    current: Secrets, names: list[str], changes: list[str]
) -> tuple[KeyCert, KeyCert]:
    ca = current.ca
    if ca is None:
        ca = pki.generate_ca(f"mailops CA {names[0]}")
        changes.append(f"created internal CA '{pki.certificate_info(ca.cert_pem).subject_cn}'")
    cert = current.service_cert
    reason = "new" if cert is None else _cert_problem(ca, cert, names)
    if cert is None or reason is not None:
        cert = pki.issue_certificate(ca, names)
        changes.append(f"issued TLS certificate for {', '.join(names)} ({reason})")
    return ca, cert


def _complete(
    current: Secrets, names: list[str], domains: list[str], tls_mode: str,
    mailboxes: list[str] = (),
    extra_wanted: Mapping[str, Callable[[], str]] | None = None,
) -> tuple[Secrets, list[str]]:
    changes: list[str] = []
    ca, cert = current.ca, current.service_cert
    if tls_mode == "internal":
        ca, cert = _complete_tls(current, names, changes)
    # Keys of domains no longer listed are kept: re-adding a domain must not
    # rotate its DKIM key behind the DNS record's back.
    dkim = dict(current.dkim)
    for domain in domains:
        if domain not in dkim:
            dkim[domain] = pki.generate_dkim_key()
            changes.append(f"generated DKIM key for {domain}")
    doveadm = current.doveadm_password
    if not doveadm:
        doveadm = pki.random_password()
        changes.append("generated doveadm password")
    boxes = dict(current.mailboxes)
    for address in mailboxes:
        if address not in boxes:
            password = pki.random_password(24)
            boxes[address] = {"password": password, "hash": pki.dovecot_sha512_crypt(password)}
            changes.append(f"generated password for mailbox {address}")
    extra = dict(current.extra)
    for key, make in sorted((extra_wanted or {}).items()):
        if not extra.get(key):
            extra[key] = make()
            changes.append(f"generated {V_EXTRA}.{key}")
    new = replace(current, ca=ca, service_cert=cert, dkim=dkim, doveadm_password=doveadm,
                  mailboxes=boxes, extra=extra)
    return new, changes


# --- writing --------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """PEM blocks as YAML literal blocks, readable in `ansible-vault view`."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _to_vars(s: Secrets) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if s.ca is not None:
        out |= {V_CA_CERT: s.ca.cert_pem, V_CA_KEY: s.ca.key_pem}
    if s.service_cert is not None:
        out |= {V_CERT: s.service_cert.cert_pem, V_KEY: s.service_cert.key_pem}
    out |= {
        V_DKIM: dict(sorted(s.dkim.items())),
        V_DKIM_ROTATED: {d: dict(sorted(k.items())) for d, k in sorted(s.dkim_rotated.items())},
        V_DOVEADM: s.doveadm_password,
        V_EXTRA: dict(sorted(s.extra.items())),
        V_MAILBOXES: dict(sorted(s.mailboxes.items())),
    }
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: the old vault or the
    new one, never half of either, even if the run dies here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _save(vault_file: Path, vault: VaultLib, raw: dict[str, Any], s: Secrets) -> None:
    ours = _to_vars(s)
    doc = {**ours, **{k: v for k, v in raw.items() if k not in ours}}
    text = _HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
    _write_atomic(vault_file, vault.encrypt(text.encode("utf-8")))


# --- entry point ----------------------------------------------------------


def _normalize(names: list[str], what: str) -> list[str]:
    try:
        return list(dict.fromkeys(pki.normalize_dns_name(n) for n in names))
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None


def ensure_secrets(
    vault_file: Path,
    vault_password_file: Path,
    service_names: list[str],
    domains: list[str],
    tls_mode: str = "internal",
    mailboxes: list[str] = (),
    extra_wanted: Mapping[str, Callable[[], str]] | None = None,
) -> tuple[Secrets, list[str]]:
    """Load the vault, add only what is missing, save if anything was added.

    extra_wanted: `extra` entries to generate when absent (key -> generator),
    e.g. {"tsig_mailops": new_tsig_secret}; an existing entry is never replaced.

    Returns the secrets and human-readable changes (names only, never
    secret text); an empty list means the file was not touched.
    """
    if tls_mode not in TLS_MODES:
        raise ValueError(f"tls_mode must be one of {', '.join(TLS_MODES)}, not {tls_mode!r}")
    names = _normalize(service_names, "service_names")
    if tls_mode == "internal" and not names:
        raise ValueError("service_names: at least one name is needed for the certificate")
    vault_file = Path(vault_file).resolve()  # through a symlink: replace its target
    vault = _vault(Path(vault_password_file))
    raw, current = _load(vault_file, vault)
    new, changes = _complete(current, names, _normalize(domains, "domains"), tls_mode,
                             [m.lower() for m in mailboxes], extra_wanted)
    if changes:
        _save(vault_file, vault, raw, new)
    return new, changes


def load_secrets(vault_file: Path, vault_password_file: Path) -> Secrets:
    """What the vault holds now, read only: nothing is generated or written
    (a missing vault reads as empty). For dry runs such as `dns plan`."""
    return _load(Path(vault_file).resolve(), _vault(Path(vault_password_file)))[1]


def set_mailbox_passwords(vault_file: Path, vault_password_file: Path,
                          passwords: Mapping[str, str],
                          hashes: Mapping[str, str] | None = None) -> list[str]:
    """Give mailboxes known passwords (carried over from a server they move
    from): clear ones stored as generated ones are, clear and hashed; where
    only a Dovecot hash ({SCHEME}...) is known, the hash alone (the clear
    text stays empty). Returns the addresses whose password changed (names
    only); the vault is written only when one did."""
    vault_file = Path(vault_file).resolve()
    vault = _vault(Path(vault_password_file))
    raw, current = _load(vault_file, vault)
    boxes = dict(current.mailboxes)
    changed = []
    for address, password in sorted(passwords.items()):
        address = address.lower()
        if boxes.get(address, {}).get("password") != password:
            boxes[address] = {"password": password,
                              "hash": pki.dovecot_sha512_crypt(password)}
            changed.append(address)
    for address, hashed in sorted((hashes or {}).items()):
        address = address.lower()
        if address not in passwords and boxes.get(address, {}).get("hash") != hashed:
            boxes[address] = {"password": "", "hash": hashed}
            changed.append(address)
    if changed:
        _save(vault_file, vault, raw, replace(current, mailboxes=boxes))
    return changed


def add_dkim_keys(vault_file: Path, vault_password_file: Path,
                  wanted: Mapping[str, str]) -> list[str]:
    """A new DKIM key for each domain -> selector that has none yet (a key
    rollover's next selector); an existing key is never replaced. Returns
    what was generated (names only)."""
    vault_file = Path(vault_file).resolve()
    vault = _vault(Path(vault_password_file))
    raw, current = _load(vault_file, vault)
    rotated = {d: dict(k) for d, k in current.dkim_rotated.items()}
    made = []
    for domain, selector in sorted(wanted.items()):
        if selector not in rotated.setdefault(domain, {}):
            rotated[domain][selector] = pki.generate_dkim_key()
            made.append(f"generated DKIM key {selector} for {domain}")
    if made:
        _save(vault_file, vault, raw, replace(current, dkim_rotated=rotated))
    return made
