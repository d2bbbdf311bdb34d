"""Key material: the internal CA, service certificates, DKIM keys, passwords.

Pure functions over PEM text, so the results can be stored as they are in the
vault and compared byte for byte on the next run. Nothing here touches disk.
"""

from __future__ import annotations

import base64
import secrets
import string
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Backdate validity a little: a host whose clock lags the controller's must
# still accept a certificate issued a moment ago.
_BACKDATE = timedelta(minutes=5)
_PASSWORD_ALPHABET = string.ascii_letters + string.digits
DKIM_MIN_BITS = 1024  # RFC 8301: verifiers must reject smaller keys


@dataclass(frozen=True)
class KeyCert:
    """A private key and its certificate, both PEM text."""

    key_pem: str = field(repr=False)  # never in logs or tracebacks
    cert_pem: str


@dataclass(frozen=True)
class CertInfo:
    subject_cn: str
    names: tuple[str, ...]  # DNS subjectAltNames, in certificate order
    not_before: datetime  # timezone-aware, UTC
    not_after: datetime  # timezone-aware, UTC
    issuer_cn: str
    fingerprint_sha256: str  # "AB:CD:...", as `openssl x509 -fingerprint -sha256` prints it
    spki_sha256: str  # hex digest of the public key, for DANE TLSA 3 1 1
    is_ca: bool


def _now() -> datetime:
    return datetime.now(UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _as_bytes(pem: str | bytes) -> bytes:
    return pem.encode("ascii") if isinstance(pem, str) else pem


def _common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def normalize_dns_name(name: str) -> str:
    """Lower case, no trailing dot; rejects what cannot be a certificate name."""
    clean = name.strip().rstrip(".").lower()
    labels = clean.split(".")
    if not clean or not clean.isascii() or len(clean) > 253:
        raise ValueError(f"not a DNS name (use the ASCII/punycode form): {name!r}")
    for i, label in enumerate(labels):
        wildcard = i == 0 and label == "*" and len(labels) > 2
        valid = 0 < len(label) <= 63 and label.replace("-", "").isalnum()
        if not (wildcard or (valid and not label.startswith("-") and not label.endswith("-"))):
            raise ValueError(f"not a DNS name: {name!r} (bad label {label!r})")
    return clean


def _unique_names(names: list[str]) -> list[str]:
    # dict keeps first-seen order: the first name stays the CN
    unique = list(dict.fromkeys(normalize_dns_name(n) for n in names))
    if not unique:
        raise ValueError("a certificate needs at least one DNS name")
    return unique


def generate_ca(common_name: str, days: int = 3650) -> KeyCert:
    """A self-signed CA that may sign server certificates only (pathlen 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailops"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyCert(key_pem=_key_pem(key), cert_pem=_cert_pem(cert))


def issue_certificate(ca: KeyCert, names: list[str], days: int = 825) -> KeyCert:
    """A server certificate for `names` (first one is the CN), signed by `ca`.

    RSA 2048 for the leaf: every SMTP/IMAP client and MTA in the field speaks it.
    """
    dns_names = _unique_names(names)
    ca_cert = x509.load_pem_x509_certificate(_as_bytes(ca.cert_pem))
    ca_key = serialization.load_pem_private_key(_as_bytes(ca.key_pem), password=None)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    now = _now()
    not_after = min(now + timedelta(days=days), ca_cert.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=True,  # RSA key exchange, for old TLS 1.2 peers
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return KeyCert(key_pem=_key_pem(key), cert_pem=_cert_pem(cert))


def certificate_info(cert_pem: str | bytes) -> CertInfo:
    cert = x509.load_pem_x509_certificate(_as_bytes(cert_pem))
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return CertInfo(
        subject_cn=_common_name(cert.subject),
        names=names,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        issuer_cn=_common_name(cert.issuer),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        spki_sha256=digest.finalize().hex(),
        is_ca=is_ca,
    )


def key_matches_certificate(key_pem: str | bytes, cert_pem: str | bytes) -> bool:
    """True when the private key belongs to the certificate's public key."""
    key = serialization.load_pem_private_key(_as_bytes(key_pem), password=None)
    cert = x509.load_pem_x509_certificate(_as_bytes(cert_pem))
    return key.public_key() == cert.public_key()


def is_issued_by(cert_pem: str | bytes, ca_cert_pem: str | bytes) -> bool:
    """True when `ca_cert_pem` signed `cert_pem` (signature and issuer name)."""
    cert = x509.load_pem_x509_certificate(_as_bytes(cert_pem))
    ca_cert = x509.load_pem_x509_certificate(_as_bytes(ca_cert_pem))
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def generate_dkim_key(bits: int = 2048) -> str:
    """An RSA private key for DKIM signing, PKCS#8 PEM without a passphrase."""
    if bits < DKIM_MIN_BITS:
        raise ValueError(f"DKIM keys below {DKIM_MIN_BITS} bits are rejected (RFC 8301)")
    return _key_pem(rsa.generate_private_key(public_exponent=65537, key_size=bits))


def _rsa_private(private_pem: str | bytes) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(_as_bytes(private_pem), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("a DKIM key must be RSA (k=rsa)")
    return key


def dkim_public_record(private_pem: str | bytes) -> str:
    """The TXT record for `<selector>._domainkey.<domain>` (unsplit)."""
    der = (
        _rsa_private(private_pem)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def _dkim_record_p(record: str) -> str:
    for tag in record.split(";"):
        name, _, value = tag.partition("=")
        if name.strip() == "p":
            return "".join(value.split())  # TXT strings may be split/folded
    raise ValueError("DKIM record has no p= tag")


def dkim_key_bits(private_or_public: str | bytes) -> int:
    """Key size of a DKIM key given as private PEM, public PEM, a DKIM TXT
    record (`v=DKIM1; ... p=...`) or the bare base64 of the public key."""
    text = _as_bytes(private_or_public).decode("ascii").strip()
    if "PRIVATE KEY-----" in text:
        key: object = serialization.load_pem_private_key(text.encode(), password=None)
    elif "PUBLIC KEY-----" in text:
        key = serialization.load_pem_public_key(text.encode())
    else:
        b64 = _dkim_record_p(text) if "=" in text.rstrip("=") else "".join(text.split())
        key = serialization.load_der_public_key(base64.b64decode(b64, validate=True))
    if not isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        raise ValueError("not an RSA key")
    return key.key_size


def random_password(length: int = 32) -> str:
    """Letters and digits only: safe unquoted in YAML, Dovecot and shell configs."""
    if length < 1:
        raise ValueError("password length must be positive")
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


def dovecot_sha512_crypt(password: str) -> str:
    """A Dovecot {SHA512-CRYPT} hash (glibc crypt, random salt)."""
    import subprocess

    # The crypt module is deprecated in 3.11; openssl makes the same
    # $6$ hash and is on every Debian machine.
    res = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password,
                         capture_output=True, text=True, check=True)
    return "{SHA512-CRYPT}" + res.stdout.strip()
