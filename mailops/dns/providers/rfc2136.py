"""RFC 2136 dynamic update with TSIG, for BIND, Knot, PowerDNS and friends.

Reads a zone with one TSIG-signed AXFR over TCP; applies a plan with one
UPDATE message per zone (split only when it would not fit a TCP message).
Each message carries prerequisites (RFC 2136 §2.4) that restate ownership:
a record is created only where none exists, and changed or deleted only while
its owner marker still names us. If the zone changed between plan and
apply, the server refuses the whole message and nothing in it is applied.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.update
import dns.xfr
import dns.zone

from mailops.dns.ownership import marker_name, marker_value
from mailops.dns.plan import Change, Plan
from mailops.dns.providers.base import ApplyResult, Provider, ProviderError
from mailops.dns.records import Record
from mailops.dns.wire import from_rdataset, name_of, origin_of, to_rdataset, txt_rdata

MAX_MESSAGE = 60_000  # bytes; a DNS message over TCP is at most 65,535 (RFC 1035 §4.2.2)
_SKIP_TYPES = frozenset({"SOA"})

_RCODE_HELP = {
    dns.rcode.NOTAUTH: "the server is not authoritative for this zone (NOTAUTH): check the "
                       "zone name and that the server is its primary",
    dns.rcode.REFUSED: "the server refused (REFUSED): the zone is not served there, or its "
                       "allow-update / allow-transfer / update-policy does not grant this key",
    dns.rcode.NOTZONE: "a name in the update is outside the zone (NOTZONE)",
    dns.rcode.SERVFAIL: "the server failed (SERVFAIL): see its log",
    dns.rcode.YXDOMAIN: "the zone changed since the plan was made (prerequisite YXDOMAIN)",
    dns.rcode.YXRRSET: "the zone changed since the plan was made: a record to create exists "
                       "now (prerequisite YXRRSET)",
    dns.rcode.NXRRSET: "the zone changed since the plan was made: an owner marker is gone or "
                       "changed (prerequisite NXRRSET)",
    dns.rcode.NXDOMAIN: "the zone changed since the plan was made (prerequisite NXDOMAIN)",
}


@dataclass(frozen=True)
class TsigKey:
    name: str
    secret: str = field(repr=False)  # base64; never printed
    algorithm: str = "hmac-sha256"

    def __post_init__(self) -> None:
        try:
            base64.b64decode(self.secret, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"TSIG key {self.name}: secret is not base64") from None

    @classmethod
    def from_bind(cls, text: str) -> TsigKey:
        """The first `key "name" { algorithm ...; secret "..."; };` block,
        as tsig-keygen prints it."""
        m = re.search(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', text, re.S)
        if not m:
            raise ValueError("no key { ... }; block found")
        alg = re.search(r"algorithm\s+\"?([\w-]+)\"?\s*;", m.group(2))
        secret = re.search(r'secret\s+"([^"]+)"\s*;', m.group(2))
        if not secret:
            raise ValueError(f"key {m.group(1)}: no secret")
        return cls(m.group(1), secret.group(1), alg.group(1) if alg else "hmac-sha256")

    def to_dnspython(self) -> dns.tsig.Key:
        return dns.tsig.Key(self.name, self.secret, self.algorithm)


class Rfc2136Provider(Provider):
    name = "rfc2136"

    def __init__(self, server: str, port: int = 53, *, key: TsigKey | None = None,
                 key_name: str | None = None, key_secret: str | None = None,
                 key_algorithm: str = "hmac-sha256", timeout: float = 5.0,
                 max_message: int = MAX_MESSAGE) -> None:
        super().__init__()
        if key is None:
            if not key_name or not key_secret:
                raise ValueError("rfc2136: a TSIG key is required (key= or key_name/key_secret)")
            key = TsigKey(key_name, key_secret, key_algorithm)
        self.server = server
        self.port = port
        self.key = key
        self.timeout = timeout
        self.max_message = max_message

    def __repr__(self) -> str:
        return f"Rfc2136Provider({self.server}:{self.port}, key={self.key.name})"

    # --- reading ------------------------------------------------------------

    def current(self, zone: str) -> list[Record]:
        origin = origin_of(zone)
        query = dns.message.make_query(origin, dns.rdatatype.AXFR)
        query.use_tsig(self.key.to_dnspython())
        holder = dns.zone.Zone(origin, relativize=False)
        self.round_trips += 1
        try:
            dns.query.inbound_xfr(self.server, holder, query=query, port=self.port,
                                  timeout=self.timeout, lifetime=self.timeout * 4)
        except Exception as e:  # noqa: BLE001 - every failure becomes one clear message
            raise ProviderError(self.name, zone.rstrip("."),
                                f"reading the zone (AXFR from {self.server}:{self.port}) "
                                f"failed: {self._explain(e)}; nothing was changed") from e
        out = []
        for name, node in holder.nodes.items():
            for rdataset in node:
                if dns.rdatatype.to_text(rdataset.rdtype) not in _SKIP_TYPES:
                    out.append(from_rdataset(name, rdataset, zone))
        return out

    # --- writing ------------------------------------------------------------

    def apply(self, plan: Plan) -> ApplyResult:
        before = self.round_trips
        messages = self._messages(plan)
        applied: list[Change] = []
        for i, (update, changes) in enumerate(messages):
            rest = [c for _, cs in messages[i + 1:] for c in cs]
            self.round_trips += 1
            try:
                response = dns.query.tcp(update, self.server, timeout=self.timeout,
                                         port=self.port)
            except Exception as e:  # noqa: BLE001
                doubt = (" (the server may or may not have applied this message)"
                         if isinstance(e, dns.exception.Timeout) else "")
                raise ProviderError(self.name, plan.zone,
                                    f"update to {self.server}:{self.port} failed: "
                                    f"{self._explain(e)}{doubt}",
                                    applied, list(changes) + rest) from e
            rcode = response.rcode()
            if rcode != dns.rcode.NOERROR:
                cause = _RCODE_HELP.get(rcode, f"the server answered {dns.rcode.to_text(rcode)}")
                raise ProviderError(self.name, plan.zone, f"update refused: {cause}",
                                    applied, list(changes) + rest)
            applied += changes
        return ApplyResult(plan.zone, tuple(applied), (), self.round_trips - before)

    def _messages(self, plan: Plan) -> list[tuple[dns.update.UpdateMessage, list[Change]]]:
        """Pack the plan into as few UPDATE messages as fit max_message bytes,
        keeping the plan's order (markers before records, see ownership.py)."""
        if not plan.changes:
            return []
        empty = len(self._update(plan.zone, plan.owner, []).to_wire())
        sizes = [len(self._update(plan.zone, plan.owner, [c]).to_wire()) - empty
                 for c in plan.changes]
        tsig_room = 200  # the TSIG record added when the message is signed
        groups: list[list[Change]] = [[]]
        used = empty + tsig_room
        for change, size in zip(plan.changes, sizes, strict=True):
            if empty + tsig_room + size > self.max_message:
                raise ProviderError(self.name, plan.zone,
                                    f"{change.type} {change.record_name} alone does not fit "
                                    "one DNS message", (), plan.changes)
            if groups[-1] and used + size > self.max_message:
                groups.append([])
                used = empty + tsig_room
            groups[-1].append(change)
            used += size  # an over-estimate: name compression only shrinks it
        return [(self._update(plan.zone, plan.owner, g, signed=True), g) for g in groups]

    def _update(self, zone: str, owner: str, changes: Sequence[Change],
                signed: bool = False) -> dns.update.UpdateMessage:
        update = dns.update.UpdateMessage(zone, keyring=self.key.to_dnspython() if signed
                                          else None)
        created_markers = {c.record_name for c in changes
                           if c.is_marker and c.action == "create"}
        # Each prerequisite once: the server compares whole RRsets, and a
        # repeated RR would make "marker present with this value" fail.
        must_have: dict[str, str] = {}  # marker name -> its value
        must_lack: list[tuple[str, str]] = []
        for c in changes:
            rec = c.record
            if c.is_marker:
                if c.action == "create":
                    must_lack.append((rec.name, "TXT"))
                else:
                    must_have[rec.name] = rec.values[0]
                continue
            mname = marker_name(rec.name, rec.type)
            if mname not in created_markers:
                # Still ours at the moment the server applies the message.
                must_have[mname] = marker_value(owner, rec.type)
            if c.action == "create":
                must_lack.append((rec.name, rec.type))
        for rname, rtype in must_lack:
            update.absent(name_of(rname, zone), rtype)
        for mname, value in must_have.items():
            update.present(name_of(mname, zone), txt_rdata(value))
        for c in changes:
            rec = c.record
            name = name_of(rec.name, zone)
            if c.action == "create":
                update.add(name, to_rdataset(rec, zone))
            elif c.action == "update":
                update.replace(name, to_rdataset(rec, zone))
            else:
                update.delete(name, rec.type)
        return update

    def _explain(self, e: Exception) -> str:
        key = self.key.name
        if isinstance(e, dns.tsig.PeerBadKey):
            return (f"the server does not know TSIG key {key!r} (BADKEY): check the key "
                    "name and algorithm against the server's key statement")
        if isinstance(e, dns.tsig.PeerBadSignature):
            return (f"the server rejected the signature of TSIG key {key!r} (BADSIG): the "
                    "secret or algorithm differs from the server's")
        if isinstance(e, dns.tsig.PeerBadTime):
            return "TSIG time check failed (BADTIME): the clocks differ; fix time sync"
        if isinstance(e, dns.tsig.PeerError | dns.tsig.BadSignature | dns.tsig.BadKey):
            return f"TSIG failure ({type(e).__name__}): the key does not match the server's"
        if isinstance(e, dns.xfr.TransferError):
            return _RCODE_HELP.get(e.rcode, f"transfer refused ({dns.rcode.to_text(e.rcode)})")
        if isinstance(e, dns.exception.Timeout):
            return f"no answer within {self.timeout:g} s"
        if isinstance(e, ConnectionRefusedError):
            return "connection refused: is the DNS server running and listening there?"
        if isinstance(e, OSError):
            return f"network error: {e}"
        return f"{type(e).__name__}: {e}"

