"""Record <-> dnspython rdata, and the one normal form plans compare in.

Servers hand back the same data in many spellings (case of names, IPv6
compression, TXT chunking, relative or absolute targets). Comparing the
normal form keeps a re-plan empty after an apply, whatever the provider.
"""

from __future__ import annotations

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.rdtypes.ANY.TXT

from mailops.dns.records import Record, split_txt

IN = dns.rdataclass.IN


def origin_of(zone: str) -> dns.name.Name:
    return dns.name.from_text(zone)


def name_of(record_name: str, zone: str) -> dns.name.Name:
    origin = origin_of(zone)
    return origin if record_name == "@" else dns.name.from_text(record_name, origin)


def txt_rdata(value: str, rdtype: str = "TXT") -> dns.rdata.Rdata:
    return dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.from_text(rdtype), split_txt(value))


def to_rdatas(record: Record, zone: str) -> list[dns.rdata.Rdata]:
    """The record's values as rdata; TXT split into <=255-byte strings."""
    if record.type in ("TXT", "SPF"):
        return [txt_rdata(v, record.type) for v in record.values]
    origin = origin_of(zone)
    return [dns.rdata.from_text(IN, record.type, v, origin=origin) for v in record.values]


def to_rdataset(record: Record, zone: str) -> dns.rdataset.Rdataset:
    rds = dns.rdataset.Rdataset(IN, dns.rdatatype.from_text(record.type), ttl=record.ttl)
    for rd in to_rdatas(record, zone):
        rds.add(rd)
    return rds


def rdata_text(rd: dns.rdata.Rdata) -> str:
    """Presentation text with absolute names; TXT as its joined logical string."""
    if isinstance(rd, dns.rdtypes.ANY.TXT.TXT):
        return b"".join(rd.strings).decode("utf-8", "replace")
    return rd.to_text(origin=None, relativize=False)


def from_rdataset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset, zone: str) -> Record:
    origin = origin_of(zone)
    if not name.is_absolute():
        name = name.derelativize(origin)
    rel = name.relativize(origin)
    rel_text = "@" if rel == dns.name.empty else rel.to_text()
    # Names inside rdata may be relative to the zone (zone files): print them
    # absolute, as Record values are.
    values = tuple(rdata_text(rd) if isinstance(rd, dns.rdtypes.ANY.TXT.TXT)
                   else rd.to_text(origin=origin, relativize=False) for rd in rdataset)
    return Record(rel_text, dns.rdatatype.to_text(rdataset.rdtype), int(rdataset.ttl), values)


def normalize(record: Record, zone: str) -> Record:
    """Canonical spelling: lower-case absolute names, sorted unique values.

    Values dnspython cannot parse (say, a Route 53 alias shown as text) are
    kept as they are: they still compare, they just never equal ours."""
    if record.type in ("TXT", "SPF"):
        return Record(record.name, record.type, record.ttl, tuple(sorted(set(record.values))))
    origin = origin_of(zone)
    out = set()
    for value in record.values:
        try:
            rd = dns.rdata.from_text(IN, record.type, value, origin=origin)
            # The canonical wire form (RFC 4034 §6.2) lower-cases embedded names.
            wire = rd.to_digestable(origin)
            rd = dns.rdata.from_wire(IN, rd.rdtype, wire, 0, len(wire), origin=None)
            out.add(rd.to_text(origin=None, relativize=False))
        except (dns.exception.DNSException, ValueError):
            out.add(value)
    return Record(record.name, record.type, record.ttl, tuple(sorted(out)))
