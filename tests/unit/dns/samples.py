"""Sample mail domains and real 2048-bit DKIM keys for the DNS tests."""

from __future__ import annotations

import base64
from functools import cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mailops.dns.records import MailDomainDNS


def dkim_public(n: int = 0) -> str:
    """The DKIM TXT value of a 2048-bit RSA key made once per n and session."""
    return _dkim_public(n)


@cache  # called with a positional n only, so dkim_public() and (0) share a key
def _dkim_public(n: int) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def domain(name: str = "example.test", *, zone: str | None = None, key: int = 0,
           **kw) -> MailDomainDNS:
    zone = zone or name
    kw.setdefault("service_name", f"mail.{zone}")
    kw.setdefault("ipv4", ("192.0.2.25",))
    kw.setdefault("ipv6", ("2001:db8::25",))
    kw.setdefault("mta_sts_id", "20250101T000000")
    return MailDomainDNS(domain=name, zone=zone, dkim_selector="mail2025",
                         dkim_public=dkim_public(key), **kw)
