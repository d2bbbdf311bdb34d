"""Amazon Route 53 through a boto3 `route53` client.

A plan goes out in as few ChangeResourceRecordSets requests as the API
allows: at most 1,000 ResourceRecord elements and 32,000 characters of Value
per request, where an UPSERT counts twice (AWS quota rules). Each request
is atomic and waited on until INSYNC before the next, so requests apply in
plan order (markers before records, see ownership.py). Throttling and
PriorRequestNotComplete are retried with bounded exponential backoff.

The client is passed in, so tests hand in a moto or Stubber'd client.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mailops.dns.plan import Change, Plan
from mailops.dns.providers.base import ApplyResult, Provider, ProviderError
from mailops.dns.records import Record, relative_name, split_txt
from mailops.dns.wire import origin_of

MAX_RECORDS = 1_000  # ResourceRecord elements per request
MAX_CHARS = 32_000  # characters of Value per request
RETRYABLE = frozenset({"Throttling", "ThrottlingException", "PriorRequestNotComplete",
                       "RequestLimitExceeded", "TooManyRequestsException"})


def quote_txt(value: str) -> str:
    """One logical TXT value as Route 53 wants it: quoted <=255-byte strings,
    '"' and '\\' escaped, bytes outside printable ASCII as \\ooo (octal)."""
    parts = []
    for chunk in split_txt(value):
        out = []
        for byte in chunk:
            ch = chr(byte)
            if ch in '"\\':
                out.append("\\" + ch)
            elif 0x20 <= byte < 0x7F:
                out.append(ch)
            else:
                out.append(f"\\{byte:03o}")
        parts.append('"' + "".join(out) + '"')
    return " ".join(parts)


def unquote_txt(value: str) -> str:
    """Inverse of quote_txt; unquoted words are taken as they are."""
    data = bytearray()
    for m in re.finditer(r'"((?:[^"\\]|\\.)*)"|(\S+)', value):
        text = m.group(1) if m.group(1) is not None else m.group(2)
        i = 0
        while i < len(text):
            if text[i] == "\\" and re.match(r"[0-7]{3}", text[i + 1:i + 4]):
                data.append(int(text[i + 1:i + 4], 8))
                i += 4
            elif text[i] == "\\" and i + 1 < len(text):
                data += text[i + 1].encode()
                i += 2
            else:
                data += text[i].encode()
                i += 1
    return data.decode("utf-8", "replace")


def _decode_name(name: str) -> str:
    # Route 53 shows '*' and other specials as octal escapes (\052).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), name)


@dataclass(frozen=True)
class _Item:
    change: Change
    request: dict
    records: int  # ResourceRecord elements, UPSERT counted twice
    chars: int  # characters of Value, UPSERT counted twice


class Route53Provider(Provider):
    name = "route53"

    def __init__(self, client: Any, *, poll_interval: float = 2.0, wait_timeout: float = 600.0,
                 max_attempts: int = 8, backoff: float = 0.5, max_backoff: float = 20.0,
                 sleep: Callable[[float], None] = time.sleep, zone_id: str | None = None,
                 max_records: int = MAX_RECORDS, max_chars: int = MAX_CHARS) -> None:
        super().__init__()
        self.client = client
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.sleep = sleep
        self.max_records = max_records
        self.max_chars = max_chars
        self._zone_ids: dict[str, str] = {}
        self._fixed_zone_id = zone_id
        # RRsets exactly as last read: a DELETE must match Route 53's copy
        # byte for byte, not our normalized one.
        self._raw: dict[tuple[str, str, str], dict] = {}

    # --- requests -----------------------------------------------------------

    def _call(self, method: str, **kwargs: Any) -> dict:
        """One API call, retried on throttling with exponential backoff."""
        for attempt in range(self.max_attempts):
            self.round_trips += 1
            try:
                return getattr(self.client, method)(**kwargs)
            except ClientError as e:
                code = e.response.get("Error", {}).get("Code", "")
                if code not in RETRYABLE or attempt == self.max_attempts - 1:
                    raise
                self.sleep(min(self.max_backoff, self.backoff * 2 ** attempt))
        raise AssertionError("unreachable")

    def zone_id(self, zone: str) -> str:
        fqdn = origin_of(zone).to_text()
        zone = fqdn.rstrip(".")
        if self._fixed_zone_id:
            return self._fixed_zone_id
        if fqdn in self._zone_ids:
            return self._zone_ids[fqdn]
        try:
            found = self._call("list_hosted_zones_by_name", DNSName=fqdn, MaxItems="10")
        except (ClientError, BotoCoreError) as e:
            raise ProviderError(self.name, zone, f"cannot list hosted zones: {e}") from e
        ids = [z["Id"] for z in found.get("HostedZones", []) if z["Name"].lower() == fqdn]
        if not ids:
            raise ProviderError(self.name, zone, "no hosted zone of that name in this account; "
                                "create it first (or check the account/credentials)")
        if len(ids) > 1:
            raise ProviderError(self.name, zone, f"{len(ids)} hosted zones have that name "
                                f"({', '.join(ids)}); pass zone_id to choose one")
        self._zone_ids[fqdn] = ids[0].rsplit("/", 1)[-1]
        return self._zone_ids[fqdn]

    # --- reading ------------------------------------------------------------

    def current(self, zone: str) -> list[Record]:
        zid = self.zone_id(zone)
        zone = origin_of(zone).to_text().rstrip(".").lower()
        kwargs: dict[str, Any] = {"HostedZoneId": zid}
        out: list[Record] = []
        while True:
            try:
                page = self._call("list_resource_record_sets", **kwargs)
            except (ClientError, BotoCoreError) as e:
                raise ProviderError(self.name, zone, f"cannot read the zone: {e}; "
                                    "nothing was changed") from e
            for rrset in page["ResourceRecordSets"]:
                rec = self._record(rrset, zone)
                if rec is not None:
                    out.append(rec)
            if not page.get("IsTruncated"):
                return out
            kwargs = {"HostedZoneId": zid, "StartRecordName": page["NextRecordName"],
                      "StartRecordType": page["NextRecordType"]}
            if page.get("NextRecordIdentifier"):
                kwargs["StartRecordIdentifier"] = page["NextRecordIdentifier"]

    def _record(self, rrset: dict, zone: str) -> Record | None:
        rtype = rrset["Type"]
        if rtype == "SOA":
            return None
        name = relative_name(_decode_name(rrset["Name"]), zone)
        if "AliasTarget" in rrset:
            # Not representable as plain data; shown so a plan can see the
            # name is taken (it is never ours: we write no aliases).
            values: tuple[str, ...] = (f"ALIAS {rrset['AliasTarget']['DNSName']}",)
        elif rtype in ("TXT", "SPF"):
            values = tuple(unquote_txt(r["Value"]) for r in rrset["ResourceRecords"])
        else:
            values = tuple(r["Value"] for r in rrset["ResourceRecords"])
        self._raw[(zone, name, rtype)] = rrset
        return Record(name, rtype, int(rrset.get("TTL", 0)), values)

    # --- writing ------------------------------------------------------------

    def _rrset(self, record: Record, zone: str) -> dict:
        if record.type in ("TXT", "SPF"):
            values = [quote_txt(v) for v in record.values]
        else:
            values = list(record.values)
        return {"Name": record.fqdn(zone), "Type": record.type, "TTL": record.ttl,
                "ResourceRecords": [{"Value": v} for v in values]}

    def _item(self, change: Change, zone: str) -> _Item:
        if change.action == "delete":
            assert change.old is not None
            rrset = self._raw.get((zone, change.old.name, change.old.type)) \
                or self._rrset(change.old, zone)
            action = "DELETE"
        else:
            assert change.new is not None
            rrset = self._rrset(change.new, zone)
            action = "CREATE" if change.action == "create" else "UPSERT"
        weight = 2 if action == "UPSERT" else 1  # AWS counts an UPSERT twice
        rrs = rrset.get("ResourceRecords", [])
        return _Item(change, {"Action": action, "ResourceRecordSet": rrset},
                     weight * len(rrs), weight * sum(len(r["Value"]) for r in rrs))

    def batches(self, plan: Plan) -> list[list[_Item]]:
        """The plan in request-sized batches, in plan order."""
        zone = plan.zone.rstrip(".").lower()
        out: list[list[_Item]] = [[]]
        records = chars = 0
        for change in plan.changes:
            item = self._item(change, zone)
            if item.records > self.max_records or item.chars > self.max_chars:
                raise ProviderError(self.name, plan.zone,
                                    f"{change.type} {change.record_name} alone exceeds one "
                                    f"request ({item.records} records, {item.chars} characters"
                                    f"; limits {self.max_records} and {self.max_chars})",
                                    (), plan.changes)
            if out[-1] and (records + item.records > self.max_records
                            or chars + item.chars > self.max_chars):
                out.append([])
                records = chars = 0
            out[-1].append(item)
            records += item.records
            chars += item.chars
        return [b for b in out if b]

    def apply(self, plan: Plan) -> ApplyResult:
        before = self.round_trips
        if plan.is_empty:
            return ApplyResult(plan.zone, (), (), 0)
        zid = self.zone_id(plan.zone)
        batches = self.batches(plan)
        applied: list[Change] = []
        for i, batch in enumerate(batches):
            pending = [it.change for b in batches[i:] for it in b]
            try:
                resp = self._call("change_resource_record_sets", HostedZoneId=zid, ChangeBatch={
                    "Comment": f"mailops {plan.owner} {i + 1}/{len(batches)}"[:256],
                    "Changes": [it.request for it in batch]})
            except ClientError as e:
                err = e.response.get("Error", {})
                cause = f"request {i + 1} of {len(batches)} refused: {err.get('Code')}: " \
                        f"{err.get('Message')}"
                if err.get("Code") == "InvalidChangeBatch":
                    cause += " (did the zone change since the plan was made?)"
                raise ProviderError(self.name, plan.zone, cause, applied, pending) from e
            except BotoCoreError as e:
                raise ProviderError(self.name, plan.zone, f"request {i + 1} of {len(batches)} "
                                    f"failed: {e}", applied, pending) from e
            applied += [it.change for it in batch]
            self._wait(plan, resp["ChangeInfo"], applied, pending[len(batch):])
        for change in applied:  # our copy of the zone is stale now
            self._raw.pop((plan.zone.rstrip(".").lower(), change.record_name, change.type), None)
        return ApplyResult(plan.zone, tuple(applied), (), self.round_trips - before)

    def _wait(self, plan: Plan, info: dict, applied: list[Change],
              pending: list[Change]) -> None:
        """Poll get_change until INSYNC (bounded by wait_timeout)."""
        waited = 0.0  # counted in poll intervals, so an injected sleep stays bounded too
        while info.get("Status") != "INSYNC":
            if waited >= self.wait_timeout:
                raise ProviderError(self.name, plan.zone,
                                    f"change {info.get('Id')} accepted but not INSYNC after "
                                    f"{self.wait_timeout:g} s", applied, pending)
            self.sleep(self.poll_interval)
            waited += self.poll_interval
            try:
                info = self._call("get_change", Id=info["Id"])["ChangeInfo"]
            except (ClientError, BotoCoreError) as e:
                raise ProviderError(self.name, plan.zone, f"waiting for {info.get('Id')}: {e}",
                                    applied, pending) from e
