"""Key material: certificates chain to the internal CA for exactly their
names, DKIM records carry the signing key's public half."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import dkim
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from mailops.secrets import pki

NAMES = ["mail.example.com", "smtp.example.com", "imap.example.com"]


@pytest.fixture(scope="module")
def ca() -> pki.KeyCert:
    return pki.generate_ca("mailops test CA")


@pytest.fixture(scope="module")
def leaf(ca: pki.KeyCert) -> pki.KeyCert:
    return pki.issue_certificate(ca, NAMES)


@pytest.fixture(scope="module")
def dkim_key() -> str:
    return pki.generate_dkim_key()


def _verify(ca: pki.KeyCert, leaf: pki.KeyCert, name: str) -> None:
    store = Store([x509.load_pem_x509_certificate(ca.cert_pem.encode())])
    verifier = (
        PolicyBuilder()
        .store(store)
        .time(datetime.now(UTC))
        .build_server_verifier(x509.DNSName(name))
    )
    verifier.verify(x509.load_pem_x509_certificate(leaf.cert_pem.encode()), [])


@pytest.mark.parametrize("name", NAMES)
def test_leaf_verifies_against_ca_for_each_name(ca, leaf, name):
    _verify(ca, leaf, name)


def test_leaf_fails_for_another_name(ca, leaf):
    with pytest.raises(VerificationError):
        _verify(ca, leaf, "mail.example.net")


def test_leaf_fails_against_another_ca(leaf):
    with pytest.raises(VerificationError):
        _verify(pki.generate_ca("someone else"), leaf, NAMES[0])


def test_ca_extensions(ca):
    cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert bc.critical and bc.value.ca
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert pki.key_matches_certificate(ca.key_pem, ca.cert_pem)


def test_leaf_extensions(ca, leaf):
    cert = x509.load_pem_x509_certificate(leaf.cert_pem.encode())
    ext = cert.extensions
    assert not ext.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (
        ExtendedKeyUsageOID.SERVER_AUTH in ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert pki.key_matches_certificate(leaf.key_pem, leaf.cert_pem)
    assert pki.is_issued_by(leaf.cert_pem, ca.cert_pem)
    assert not pki.is_issued_by(ca.cert_pem, leaf.cert_pem)


def test_certificate_info(ca, leaf):
    info = pki.certificate_info(leaf.cert_pem)
    assert info.subject_cn == NAMES[0]
    assert info.names == tuple(NAMES)
    assert info.issuer_cn == "mailops test CA"
    assert info.not_after.tzinfo is not None
    expected_end = datetime.now(UTC) + timedelta(days=825)
    assert abs(info.not_after - expected_end) < timedelta(minutes=5)
    assert len(info.fingerprint_sha256.split(":")) == 32
    assert not info.is_ca
    assert pki.certificate_info(ca.cert_pem).is_ca


def test_names_are_normalized_and_deduplicated(ca):
    kc = pki.issue_certificate(ca, ["Mail.Example.COM.", "mail.example.com", "*.example.com"])
    assert pki.certificate_info(kc.cert_pem).names == ("mail.example.com", "*.example.com")


@pytest.mark.parametrize("bad", [[], [""], ["bad name.example"], ["-x.example"], ["ü.example"]])
def test_bad_names_rejected(ca, bad):
    with pytest.raises(ValueError):
        pki.issue_certificate(ca, bad)


def test_key_cert_repr_hides_key(ca):
    assert "PRIVATE" not in repr(ca)


def test_dkim_key_is_pkcs8_rsa_2048(dkim_key):
    assert dkim_key.startswith("-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(dkim_key.encode(), password=None)
    assert key.key_size == 2048
    assert key.private_numbers().public_numbers.e == 65537


def test_dkim_record_round_trip(dkim_key):
    record = pki.dkim_public_record(dkim_key)
    prefix = "v=DKIM1; k=rsa; p="
    assert record.startswith(prefix)
    public = serialization.load_der_public_key(base64.b64decode(record[len(prefix) :]))
    private = serialization.load_pem_private_key(dkim_key.encode(), password=None)
    assert public == private.public_key()
    assert pki.dkim_key_bits(record) == 2048
    assert pki.dkim_key_bits(dkim_key) == 2048
    public_pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    assert pki.dkim_key_bits(public_pem) == 2048
    assert pki.dkim_key_bits(record[len(prefix) :]) == 2048


def test_dkim_signature_verifies_with_published_record(dkim_key):
    # A real verifier (dkimpy) checks a signature made with the private key
    # against the TXT record we would publish.
    message = (
        b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hi\r\n"
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\r\nhello\r\n"
    )
    sig = dkim.sign(message, b"mail", b"example.org", dkim_key.encode())
    record = pki.dkim_public_record(dkim_key).encode()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return record if name == b"mail._domainkey.example.org." else b""

    assert dkim.verify(sig + message, dnsfunc=dns)


def test_small_dkim_key_rejected():
    with pytest.raises(ValueError):
        pki.generate_dkim_key(512)


def test_dkim_record_rejects_ec_key(ca):
    with pytest.raises(ValueError):
        pki.dkim_public_record(ca.key_pem)


def test_random_password():
    a, b = pki.random_password(), pki.random_password()
    assert len(a) == 32 and a != b and a.isalnum()
    assert len(pki.random_password(64)) == 64
