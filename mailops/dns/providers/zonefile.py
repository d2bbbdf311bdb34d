"""A BIND zone file, for DNS hosts mailops has no API for.

The file is `<directory>/<zone>.zone`: SOA and apex NS from the parameters,
then every other RRset. Records already in the file that the plan does not
touch are written back unchanged, so hand-made records survive. Writes are
atomic (temporary file, then rename) and, with `checkzone`, validated by
`named-checkzone` before they replace the old file.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.rdatatype
import dns.zone

from mailops.dns.plan import Change, Plan
from mailops.dns.providers.base import ApplyResult, Provider, ProviderError
from mailops.dns.records import Record, relative_name
from mailops.dns.wire import from_rdataset, normalize, origin_of, to_rdatas

BANNER = "; Managed by mailops (zonefile provider). Records not owned by mailops are kept."


@dataclass(frozen=True)
class Soa:
    mname: str  # primary name server, e.g. ns1.example.com.
    rname: str  # contact mailbox as a name, e.g. hostmaster.example.com.
    refresh: int = 3600
    retry: int = 900
    expire: int = 1_209_600
    minimum: int = 300  # negative-caching TTL (RFC 2308)

    def text(self, serial: int) -> str:
        return (f"{_abs(self.mname)} {_abs(self.rname)} {serial} {self.refresh} "
                f"{self.retry} {self.expire} {self.minimum}")


def _abs(name: str) -> str:
    return name if name.endswith(".") else name + "."


class ZoneFileProvider(Provider):
    name = "zonefile"

    def __init__(self, directory: Path | str, *, soa: Soa, ns: tuple[str, ...],
                 glue: Mapping[str, tuple[str, ...]] | None = None, ttl: int = 300,
                 checkzone: str | None = None) -> None:
        """glue: addresses of name servers inside the zone ({"ns1.example.com": ("192.0.2.1",)}).
        checkzone: path of named-checkzone to validate each write (None: no check)."""
        super().__init__()
        if not ns:
            raise ValueError("zonefile: at least one NS is required")
        self.directory = Path(directory)
        self.soa = soa
        self.ns = tuple(_abs(n) for n in ns)
        self.glue = dict(glue or {})
        self.ttl = ttl
        self.checkzone = checkzone

    def path_for(self, zone: str) -> Path:
        return self.directory / f"{origin_of(zone).to_text().rstrip('.')}.zone"

    # --- reading ------------------------------------------------------------

    def _read(self, zone: str) -> tuple[list[Record], int, dict[tuple[str, str], list[str]]]:
        """Records, SOA serial, and each RRset's rdata as written in the file
        (so records the plan does not touch are written back verbatim)."""
        path = self.path_for(zone)
        if not path.exists():
            return [], 0, {}
        self.round_trips += 1
        origin = origin_of(zone)
        try:
            parsed = dns.zone.from_file(str(path), origin=origin, relativize=False)
        except (dns.exception.DNSException, OSError) as e:
            raise ProviderError(self.name, zone, f"cannot read {path}: {e}") from e
        records, serial, verbatim = [], 0, {}
        for name, node in parsed.nodes.items():
            for rdataset in node:
                if rdataset.rdtype == dns.rdatatype.SOA:
                    serial = rdataset[0].serial
                    continue
                rec = from_rdataset(name, rdataset, zone)
                records.append(rec)
                verbatim[rec.key] = [rd.to_text(origin=origin, relativize=True)
                                     for rd in rdataset]
        return records, serial, verbatim

    def current(self, zone: str) -> list[Record]:
        return self._read(zone)[0]

    # --- writing ------------------------------------------------------------

    def _fixed(self, zone: str) -> list[Record]:
        """The records this provider's parameters define: apex NS and glue."""
        out = [Record("@", "NS", self.ttl, self.ns)]
        for host, addrs in sorted(self.glue.items()):
            name = relative_name(host, zone)
            v4 = tuple(a for a in addrs if ":" not in a)
            v6 = tuple(a for a in addrs if ":" in a)
            out += [Record(name, "A", self.ttl, v4)] if v4 else []
            out += [Record(name, "AAAA", self.ttl, v6)] if v6 else []
        return out

    def apply(self, plan: Plan) -> ApplyResult:
        zone = plan.zone.rstrip(".")
        before = self.round_trips
        existing, old_serial, verbatim = self._read(zone)
        fixed = {r.key: r for r in self._fixed(zone)}
        records = {r.key: r for r in existing if r.key not in fixed}
        for change in plan.changes:
            rec = change.record
            verbatim.pop(rec.key, None)
            if change.action == "create" and rec.key in records and \
                    normalize(records[rec.key], zone) != normalize(rec, zone):
                raise ProviderError(self.name, zone, f"{rec.type} {rec.name} exists in the "
                                    "file now: the zone changed since the plan was made",
                                    (), plan.changes)
            if change.action == "delete":
                records.pop(rec.key, None)
            else:
                records[rec.key] = rec
        today = int(datetime.datetime.now(datetime.UTC).strftime("%Y%m%d00"))
        serial = max(old_serial + 1, today) % 2**32  # RFC 1982 arithmetic wraps
        text = self.render(zone, serial, list(records.values()), verbatim)
        self._write(zone, text, plan.changes)
        return ApplyResult(plan.zone, plan.changes, (), self.round_trips - before)

    def render(self, zone: str, serial: int, records: list[Record],
               verbatim: Mapping[tuple[str, str], list[str]] | None = None) -> str:
        """The zone file text; `verbatim` rdata (from the old file) wins over
        re-rendering, so foreign TXT keeps its own string boundaries."""
        origin = origin_of(zone)
        verbatim = verbatim or {}
        rows = [("@", "SOA", self.ttl, self.soa.text(serial))]
        for rec in self._fixed(zone) + sorted(records, key=_order):
            texts = verbatim.get(rec.key) or [rd.to_text(origin=origin, relativize=True)
                                             for rd in to_rdatas(rec, zone)]
            rows += [(rec.name, rec.type, rec.ttl, text) for text in texts]
        width = max(len(r[0]) for r in rows)
        lines = [BANNER, f"$ORIGIN {origin.to_text()}", f"$TTL {self.ttl}"]
        lines += [f"{n.ljust(width)} {ttl:>6} IN {t:<5} {v}" for n, t, ttl, v in rows]
        return "\n".join(lines) + "\n"

    def _write(self, zone: str, text: str, changes: tuple[Change, ...]) -> None:
        path = self.path_for(zone)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        self.round_trips += 1
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            if self.checkzone:
                # -i local: check only in-zone targets, so no lookups leave the host.
                res = subprocess.run([self.checkzone, "-i", "local", zone, tmp],
                                     capture_output=True, text=True, timeout=60)
                if res.returncode != 0:
                    raise ProviderError(self.name, zone, "named-checkzone rejected the new "
                                        f"file, the old one is unchanged:\n{res.stdout}"
                                        f"{res.stderr}", (), changes)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _order(rec: Record) -> tuple:
    # Apex first, then by name from the zone down (reversed labels), then type.
    labels = () if rec.name == "@" else tuple(reversed(rec.name.split(".")))
    return (labels, rec.type)
