"""The DNS records a mail domain needs, as plain data.

`Record` is one RRset in presentation format with its name relative to the
zone ("@" for the apex). Target names in values are absolute (trailing dot).
TXT values hold the whole logical string; whoever writes the zone (provider
or zone-file writer) splits it into <=255-byte strings (`split_txt`), and
whoever reads it joins them again, so a 2048-bit DKIM key compares as one
value however a server happened to chunk it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import dns.name

from mailops.dns.policy import (
    SPF_LOOKUP_LIMIT,
    Dmarc,
    Spf,
    check_spf,
    parse_dmarc,
    parse_spf,
    spf_lookup_count,
)

__all__ = [
    "SPF_LOOKUP_LIMIT", "Dmarc", "MailDomainDNS", "Record", "Spf", "desired_records",
    "parse_dmarc", "parse_spf", "relative_name", "spf_lookup_count", "split_txt",
]

TXT_CHUNK = 255  # RFC 1035 §3.3: a character-string is at most 255 bytes
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_STS_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")  # RFC 8461 §3.1


@dataclass(frozen=True)
class Record:
    name: str  # relative to the zone, "@" for the apex
    type: str
    ttl: int
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        # Names and types are case-insensitive in DNS: store one spelling so
        # equality and sorting mean what they should.
        object.__setattr__(self, "name", self.name.lower())
        object.__setattr__(self, "type", self.type.upper())
        object.__setattr__(self, "values", tuple(self.values))
        if not self.name or self.name.endswith("."):
            raise ValueError(f"record name {self.name!r} must be relative to the zone "
                             "('@' for the apex), without a trailing dot")
        if not isinstance(self.ttl, int) or not 0 <= self.ttl <= 2**31 - 1:
            raise ValueError(f"{self.name} {self.type}: ttl {self.ttl!r} out of range")
        if not self.values:
            raise ValueError(f"{self.name} {self.type}: a record needs at least one value")

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.type)

    def fqdn(self, zone: str) -> str:
        origin = dns.name.from_text(zone)
        if self.name == "@":
            return origin.to_text()
        return dns.name.from_text(self.name, origin).to_text()

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "ttl": self.ttl,
                "values": list(self.values)}


def split_txt(value: str) -> tuple[bytes, ...]:
    """One logical TXT value as <=255-byte strings, never cutting a UTF-8
    character in two (a receiver joins the bytes, but humans read the zone)."""
    data = value.encode("utf-8")
    chunks: list[bytes] = []
    while len(data) > TXT_CHUNK:
        cut = TXT_CHUNK
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # continuation byte
            cut -= 1
        chunks.append(data[:cut])
        data = data[cut:]
    chunks.append(data)
    return tuple(chunks)


def relative_name(fqdn: str, zone: str) -> str:
    """'_dmarc.example.com' in zone 'example.com' -> '_dmarc'; apex -> '@'."""
    origin = dns.name.from_text(zone)
    name = dns.name.from_text(fqdn)
    if not name.is_subdomain(origin):
        raise ValueError(f"{fqdn} is not inside zone {origin.to_text()}")
    rel = name.relativize(origin)
    return "@" if rel == dns.name.empty else rel.to_text().lower()


def _absolute(host: str) -> str:
    return dns.name.from_text(host).to_text().lower()


def _in_zone(host: str, zone: str) -> bool:
    return dns.name.from_text(host).is_subdomain(dns.name.from_text(zone))


def _prefixed(label: str, base: str) -> str:
    """label under base, both relative to the zone ('@' is the apex)."""
    return label if base == "@" else f"{label}.{base}"


def _join_quoted(value: str) -> str:
    # Keys pasted from opendkim-genkey come as ( "v=DKIM1; ..." "p=MIIB..." ).
    if '"' in value:
        return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', value))
    return " ".join(value.split())


@dataclass(frozen=True, kw_only=True)
class MailDomainDNS:
    """One mail domain's DNS input. Fields left empty get the usual defaults."""

    domain: str
    service_name: str  # e.g. mail.example.com: MX target and client host
    dkim_selector: str
    dkim_public: str  # "v=DKIM1; k=rsa; p=..."
    # Other selectors published beside it (a key rollover's next and
    # retired ones): (selector, "v=DKIM1; k=rsa; p=...").
    dkim_more: tuple[tuple[str, str], ...] = ()
    zone: str = ""  # the zone the domain lives in; default: the domain itself
    mx_hosts: tuple[str, ...] = ()  # "host" (preference 10) or "pref host"
    ipv4: tuple[str, ...] = ()
    ipv6: tuple[str, ...] = ()
    spf: str | None = None  # default: "v=spf1 mx -all"
    dmarc: str | None = None  # default: p=quarantine, reports to dmarc-reports@domain
    mta_sts_id: str | None = None  # None: no _mta-sts record (needs the HTTPS policy)
    tlsrpt_rua: str | None = None  # address or URI; default tls-reports@domain
    ttl: int = 300
    srv_priority: int = 0  # of the RFC 6186 SRV records
    srv_weight: int = 1

    def __post_init__(self) -> None:
        domain = self.domain.rstrip(".").lower()
        object.__setattr__(self, "domain", domain)
        object.__setattr__(self, "zone", (self.zone or domain).rstrip(".").lower())
        object.__setattr__(self, "service_name", self.service_name.rstrip(".").lower())
        object.__setattr__(self, "mx_hosts", tuple(self.mx_hosts) or (self.service_name,))
        object.__setattr__(self, "ipv4", tuple(self.ipv4))
        object.__setattr__(self, "ipv6", tuple(self.ipv6))
        object.__setattr__(self, "dkim_public", _join_quoted(self.dkim_public))
        object.__setattr__(self, "dkim_more",
                           tuple((s, _join_quoted(r)) for s, r in self.dkim_more))
        if self.spf is None:
            object.__setattr__(self, "spf", "v=spf1 mx -all")
        if self.dmarc is None:
            object.__setattr__(self, "dmarc",
                               f"v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@{domain}")
        rua = self.tlsrpt_rua or f"tls-reports@{domain}"
        if ":" not in rua:
            rua = f"mailto:{rua}"
        object.__setattr__(self, "tlsrpt_rua", rua)
        self._validate()

    def _validate(self) -> None:
        where = f"mail domain {self.domain}"
        if not _in_zone(self.domain, self.zone):
            raise ValueError(f"{where}: not inside zone {self.zone}")
        for ip in self.ipv4:
            if ipaddress.ip_address(ip).version != 4:
                raise ValueError(f"{where}: ipv4 {ip!r} is not an IPv4 address")
        for ip in self.ipv6:
            if ipaddress.ip_address(ip).version != 6:
                raise ValueError(f"{where}: ipv6 {ip!r} is not an IPv6 address")
        if _in_zone(self.service_name, self.zone) and not (self.ipv4 or self.ipv6):
            raise ValueError(f"{where}: {self.service_name} is in zone {self.zone} but has "
                             "no ipv4/ipv6 address; MX and SRV would point at nothing")
        for selector, public in ((self.dkim_selector, self.dkim_public), *self.dkim_more):
            if not _LABEL.match(selector):
                raise ValueError(f"{where}: dkim_selector {selector!r} is not one label")
            if "p=" not in public or not public.startswith("v=DKIM1"):
                raise ValueError(f"{where}: dkim_public must look like 'v=DKIM1; k=rsa; p=...'")
        if self.mta_sts_id is not None and not _STS_ID.match(self.mta_sts_id):
            raise ValueError(f"{where}: mta_sts_id {self.mta_sts_id!r} must be 1-32 letters "
                             "or digits (RFC 8461)")
        assert self.spf is not None and self.dmarc is not None
        try:
            check_spf(self.spf)  # no resolver: counts includes once (a lower bound)
            parse_dmarc(self.dmarc)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        for host in self.mx_hosts:
            parts = host.split()
            if len(parts) == 2 and not parts[0].isdigit() or len(parts) > 2:
                raise ValueError(f"{where}: mx host {host!r} must be 'host' or 'pref host'")


def desired_records(d: MailDomainDNS) -> list[Record]:
    """Every record the mail domain needs, in its zone."""
    base = relative_name(d.domain, d.zone)
    service = _absolute(d.service_name)
    assert d.spf is not None and d.dmarc is not None
    mx = []
    for host in d.mx_hosts:
        parts = host.split()
        pref, target = (parts[0], parts[1]) if len(parts) == 2 else ("10", parts[0])
        mx.append(f"{int(pref)} {_absolute(target)}")
    out = [Record(base, "MX", d.ttl, tuple(mx))]
    if _in_zone(d.service_name, d.zone):
        svc = relative_name(d.service_name, d.zone)
        if d.ipv4:
            out.append(Record(svc, "A", d.ttl, d.ipv4))
        if d.ipv6:
            out.append(Record(svc, "AAAA", d.ttl,
                              tuple(ipaddress.ip_address(ip).compressed for ip in d.ipv6)))
    out += [
        Record(base, "TXT", d.ttl, (d.spf,)),
        *(Record(_prefixed(f"{sel}._domainkey", base), "TXT", d.ttl, (public,))
          for sel, public in ((d.dkim_selector, d.dkim_public), *d.dkim_more)),
        Record(_prefixed("_dmarc", base), "TXT", d.ttl, (d.dmarc,)),
        Record(_prefixed("_smtp._tls", base), "TXT", d.ttl, (f"v=TLSRPTv1; rua={d.tlsrpt_rua}",)),
    ]
    if d.mta_sts_id is not None:
        out.append(Record(_prefixed("_mta-sts", base), "TXT", d.ttl,
                          (f"v=STSv1; id={d.mta_sts_id}",)))
        # The policy host, served where the service is (the balancer).
        if d.ipv4:
            out.append(Record(_prefixed("mta-sts", base), "A", d.ttl, d.ipv4))
        if d.ipv6:
            out.append(Record(_prefixed("mta-sts", base), "AAAA", d.ttl,
                              tuple(ipaddress.ip_address(ip).compressed for ip in d.ipv6)))
    # RFC 6186 (+ RFC 8314 for submissions): every port the service offers,
    # so clients find STARTTLS and implicit-TLS variants alike.
    for label, port in (("_submission._tcp", 587), ("_submissions._tcp", 465),
                        ("_imap._tcp", 143), ("_imaps._tcp", 993),
                        ("_pop3._tcp", 110), ("_pop3s._tcp", 995)):
        out.append(Record(_prefixed(label, base), "SRV", d.ttl,
                          (f"{d.srv_priority} {d.srv_weight} {port} {service}",)))
    return out
