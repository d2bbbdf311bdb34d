"""SPF (RFC 7208) and DMARC (RFC 7489) text: parse, validate, count lookups.

Validation happens before a plan is made, so a typo in an inventory never
reaches a zone: receivers treat a broken SPF as "permerror" and a broken DMARC
as absent, and both fail silently on the receiving side.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

SPF_LOOKUP_LIMIT = 10  # RFC 7208 §4.6.4
# Terms that cost a DNS query (RFC 7208 §4.6.4); ip4/ip6/all and exp do not.
_LOOKUP_TERMS = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})
_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_MODIFIER = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$")
# A domain-spec may hold macros (%{d}, %{i} ...): accept them, check the rest.
_DOMAIN_SPEC = re.compile(r"^(?:%\{[a-zA-Z]\d*r?[-.+,/_=]*\}|%%|%_|%-|[A-Za-z0-9_.-])+$")


@dataclass(frozen=True)
class SpfTerm:
    qualifier: str  # "+", "-", "~", "?" for mechanisms; "" for modifiers
    name: str  # mechanism or modifier name, lower case
    value: str  # domain-spec / address / modifier value; "" when absent
    modifier: bool = False


@dataclass(frozen=True)
class Spf:
    text: str
    terms: tuple[SpfTerm, ...]

    def lookup_terms(self) -> tuple[SpfTerm, ...]:
        return tuple(t for t in self.terms if t.name in _LOOKUP_TERMS)


def _domain_and_cidr(arg: str, term: str) -> str:
    domain, _, cidr = arg.partition("/")
    if cidr:
        for part in re.split(r"/+", cidr):
            if part and not part.isdigit():
                raise ValueError(f"SPF: bad CIDR length in {term!r}")
    if domain and not _DOMAIN_SPEC.match(domain):
        raise ValueError(f"SPF: bad domain in {term!r}")
    return domain


def parse_spf(text: str) -> Spf:
    """Parse an SPF record; ValueError says which term is wrong and why."""
    words = text.split()
    if not words or words[0].lower() != "v=spf1":
        raise ValueError(f"SPF: must start with 'v=spf1', got {text[:40]!r}")
    terms: list[SpfTerm] = []
    seen_modifiers: set[str] = set()
    for word in words[1:]:
        mod = _MODIFIER.match(word)
        if mod and mod.group(1).lower() not in _MECHANISMS:
            name, value = mod.group(1).lower(), mod.group(2)
            if name in ("redirect", "exp"):
                if name in seen_modifiers:  # RFC 7208 §6: at most once each
                    raise ValueError(f"SPF: modifier {name}= given twice")
                if not value or not _DOMAIN_SPEC.match(value):
                    raise ValueError(f"SPF: {name}= needs a domain, got {word!r}")
            seen_modifiers.add(name)
            terms.append(SpfTerm("", name, value, modifier=True))
            continue
        qualifier = "+"
        body = word
        if body[0] in "+-~?":
            qualifier, body = body[0], body[1:]
        name, sep, arg = body.partition(":")
        cidr_only = ""
        if not sep and "/" in name:  # "a/24", "mx/24//64"
            name, _, cidr_only = name.partition("/")
            arg = "/" + cidr_only
        name = name.lower()
        if name not in _MECHANISMS:
            raise ValueError(f"SPF: unknown mechanism {word!r} (known: "
                             f"{', '.join(sorted(_MECHANISMS))})")
        if name == "all":
            if sep or cidr_only:
                raise ValueError(f"SPF: 'all' takes no argument, got {word!r}")
        elif name in ("include", "exists"):
            if not arg or not _DOMAIN_SPEC.match(arg):
                raise ValueError(f"SPF: {name}: needs a domain, got {word!r}")
        elif name in ("ip4", "ip6"):
            if not sep:
                raise ValueError(f"SPF: {name}: needs an address, got {word!r}")
            try:
                net = ipaddress.ip_network(arg, strict=False)
            except ValueError as e:
                raise ValueError(f"SPF: bad address in {word!r}: {e}") from None
            if (name == "ip4") != (net.version == 4):
                raise ValueError(f"SPF: {word!r} has an IPv{net.version} address")
        elif name == "ptr":
            if arg and not _DOMAIN_SPEC.match(arg):
                raise ValueError(f"SPF: bad domain in {word!r}")
        elif arg:  # a, mx
            arg = _domain_and_cidr(arg, word)
        terms.append(SpfTerm(qualifier, name, arg))
    return Spf(text, tuple(terms))


def _spf_of(domain: str, resolver: Any) -> str | None:
    """The one v=spf1 TXT of domain, or None (no record: RFC 7208 §5.2)."""
    import dns.exception
    import dns.resolver

    try:
        answer = resolver.resolve(domain, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as e:
        raise ValueError(f"SPF: cannot look up {domain} TXT: {e}") from e
    found = []
    for rdata in answer:
        text = b"".join(rdata.strings).decode("utf-8", "replace")
        if text.lower() == "v=spf1" or text.lower().startswith("v=spf1 "):
            found.append(text)
    if len(found) > 1:
        raise ValueError(f"SPF: {domain} publishes {len(found)} SPF records (must be one)")
    return found[0] if found else None


def spf_lookup_count(spf: str, resolver: Any = None) -> int:
    """DNS-querying terms in spf (RFC 7208 §4.6.4), through include/redirect
    recursively when resolver (anything with .resolve(name, "TXT"), e.g. a
    dns.resolver.Resolver aimed at a known server) is given.

    Without a resolver each include/redirect counts once: a lower bound.
    Targets with macros cannot be followed and count once."""
    return _count(spf, resolver, frozenset())


def _count(spf: str, resolver: Any, seen: frozenset[str]) -> int:
    count = 0
    for term in parse_spf(spf).lookup_terms():
        count += 1
        if resolver is None or term.name not in ("include", "redirect") or "%" in term.value:
            continue
        target = term.value.rstrip(".").lower()
        if target in seen or len(seen) >= SPF_LOOKUP_LIMIT:
            # A loop or absurd depth: the real evaluation would exceed the
            # limit anyway, so say so rather than recurse forever.
            return SPF_LOOKUP_LIMIT + 1
        inner = _spf_of(target, resolver)
        if inner is not None:
            count += _count(inner, resolver, seen | {target})
    return count


def check_spf(spf: str, resolver: Any = None) -> int:
    """parse_spf + the 10-lookup limit; returns the count, raises ValueError."""
    count = spf_lookup_count(spf, resolver)
    if count > SPF_LOOKUP_LIMIT:
        raise ValueError(f"SPF: {count} DNS-querying terms (include/a/mx/ptr/exists/redirect)"
                         f" exceed the limit of {SPF_LOOKUP_LIMIT} (RFC 7208 §4.6.4); "
                         "receivers will return permerror. Flatten includes into ip4:/ip6:.")
    return count


# --- DMARC -----------------------------------------------------------------

_POLICIES = ("none", "quarantine", "reject")
_DMARC_URI = re.compile(r"^mailto:[^@\s,;!]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+(?:![0-9]+[kmgt]?)?$",
                        re.IGNORECASE)


@dataclass(frozen=True)
class Dmarc:
    text: str
    policy: str
    subdomain_policy: str | None
    pct: int
    rua: tuple[str, ...]
    ruf: tuple[str, ...]
    adkim: str
    aspf: str
    tags: tuple[tuple[str, str], ...]  # every tag as given, unknown ones too


def parse_dmarc(text: str) -> Dmarc:
    """Parse a DMARC record (RFC 7489 §6.3); ValueError names the bad tag."""
    parts = [p.strip() for p in text.split(";")]
    if parts and parts[-1] == "":
        parts.pop()  # a trailing ";" is allowed
    tags: list[tuple[str, str]] = []
    for part in parts:
        key, eq, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not eq or not key:
            raise ValueError(f"DMARC: {part!r} is not tag=value")
        if any(k == key for k, _ in tags):
            raise ValueError(f"DMARC: tag {key}= given twice")
        tags.append((key, value))
    if not tags or tags[0] != ("v", "DMARC1"):
        raise ValueError("DMARC: must start with 'v=DMARC1' (exactly, as the first tag)")
    d = dict(tags)
    if "p" not in d:
        raise ValueError("DMARC: p= (none, quarantine or reject) is required")
    for key in ("p", "sp"):
        if key in d and d[key].lower() not in _POLICIES:
            raise ValueError(f"DMARC: {key}={d[key]!r} must be one of {', '.join(_POLICIES)}")
    for key in ("adkim", "aspf"):
        if key in d and d[key].lower() not in ("r", "s"):
            raise ValueError(f"DMARC: {key}={d[key]!r} must be r (relaxed) or s (strict)")
    pct = 100
    if "pct" in d:
        if not d["pct"].isdigit() or not 0 <= int(d["pct"]) <= 100:
            raise ValueError(f"DMARC: pct={d['pct']!r} must be an integer 0..100")
        pct = int(d["pct"])
    if "ri" in d and not d["ri"].isdigit():
        raise ValueError(f"DMARC: ri={d['ri']!r} must be a number of seconds")
    if "fo" in d and not all(x in ("0", "1", "d", "s") for x in d["fo"].split(":")):
        raise ValueError(f"DMARC: fo={d['fo']!r} must be 0, 1, d, s joined by ':'")
    uris: dict[str, tuple[str, ...]] = {}
    for key in ("rua", "ruf"):
        found = tuple(u.strip() for u in d.get(key, "").split(",") if u.strip())
        for uri in found:
            if not _DMARC_URI.match(uri):
                raise ValueError(f"DMARC: {key}= entry {uri!r} must be mailto:address@domain")
        if key in d and not found:
            raise ValueError(f"DMARC: {key}= is empty")
        uris[key] = found
    return Dmarc(text, d["p"].lower(), d.get("sp", "").lower() or None, pct, uris["rua"],
                 uris["ruf"], d.get("adkim", "r").lower(), d.get("aspf", "r").lower(),
                 tuple(tags))
