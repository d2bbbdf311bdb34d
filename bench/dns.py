"""DNS publish benchmark: provider round trips per zone publish and per no-op
re-plan, for rfc2136 against a real `named` on 127.0.0.1 and route53 against
moto's server mode on 127.0.0.1. No lab; nothing leaves loopback.

Run from the repository root:  .venv/bin/python bench/dns.py
Figures: round trips per publish (reading included), per no-op re-plan, and
records (RRsets written, owner markers included) per round trip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import benchlib
from benchlib import say

OWNER = "mailops-bench"
SELECTOR = "mo2026"
BIG_DOMAINS = 100  # mail domains in the one "big" zone (shows request splitting)
# Zones published: the lab's two mail domains, and one zone holding many.
ZONES = ("example.test", "example.net", "big.test")



def start_named(directory: Path) -> tuple[subprocess.Popen, int, object]:
    from tests.integration.dns.loopback import start_named as start

    try:
        return start(directory, ZONES, "mailops-bench")
    except RuntimeError as e:  # Missing included: a tool that is not installed
        sys.exit(str(e))


def start_moto(directory: Path) -> tuple[subprocess.Popen, str]:
    from tests.integration.dns.loopback import start_moto as start

    server = benchlib.ROOT / ".venv" / "bin" / "moto_server"
    if not server.exists():
        sys.exit(f"{server} is missing; `.venv/bin/pip install -e .[test]` installs it")
    return start(str(server), directory / "moto.log")


def desired() -> dict[str, list]:
    """zone -> records, as mailops computes them for mail domains."""
    from mailops.dns.publish import desired_by_zone
    from mailops.dns.records import MailDomainDNS
    from mailops.secrets.pki import dkim_public_record, generate_dkim_key

    pub = dkim_public_record(generate_dkim_key(2048))
    domains = [MailDomainDNS(domain=z, service_name="mail.example.test", dkim_selector=SELECTOR,
                             dkim_public=pub, ipv4=("192.0.2.25",))
               for z in ("example.test", "example.net")]
    domains += [MailDomainDNS(domain=f"d{i:03d}.big.test", zone="big.test",
                              service_name="mail.example.test", dkim_selector=SELECTOR,
                              dkim_public=pub) for i in range(BIG_DOMAINS)]
    return desired_by_zone(domains)


def measure(provider_name: str, make_provider, zones: dict[str, list]) -> list[dict]:
    from mailops.dns.publish import publish

    rows = []
    for zone, records in zones.items():
        first = make_provider()
        t0 = time.monotonic()
        pub = publish(first, zone, records, OWNER, apply=True)
        took = time.monotonic() - t0
        assert pub.result is not None and pub.result.complete, pub
        again_provider = make_provider()  # a later run: a fresh client, nothing cached
        t1 = time.monotonic()
        again = publish(again_provider, zone, records, OWNER, apply=True)
        took_again = time.monotonic() - t1
        if not again.plan.is_empty:
            raise RuntimeError(f"{provider_name} {zone}: re-plan after apply is not empty:\n"
                               f"{again.plan.table()}")
        written = len(pub.plan.changes)
        row = {"provider": provider_name, "zone": zone, "records": len(records),
               "rrsets_written": written,
               "publish_round_trips": pub.round_trips,
               "publish_apply_round_trips": pub.result.round_trips,
               "noop_replan_round_trips": again.round_trips,
               "records_per_round_trip": benchlib.ratio(written, pub.round_trips),
               "publish_seconds": round(took, 3), "noop_seconds": round(took_again, 3)}
        say(f"{provider_name} {zone}: {written} RRsets in {pub.round_trips} round trip(s); "
            f"no-op re-plan {again.round_trips}")
        rows.append(row)
    return rows


def main() -> int:
    benchlib.setup()
    benchlib.bound(600)
    import boto3

    from mailops.dns.providers.rfc2136 import Rfc2136Provider
    from mailops.dns.providers.route53 import Route53Provider
    from tests.integration.dns.loopback import LOOPBACK, stop

    work = Path(tempfile.mkdtemp(prefix="mailops-bench-dns-"))
    procs: list[subprocess.Popen] = []
    try:
        say("starting named and moto_server on 127.0.0.1")
        named, port, key = start_named(work)
        procs.append(named)
        moto, url = start_moto(work)
        procs.append(moto)
        zones = desired()

        rows = measure("rfc2136", lambda: Rfc2136Provider(LOOPBACK, port, key=key, timeout=5.0),
                       zones)
        # Dummy credentials and an explicit endpoint: nothing leaves 127.0.0.1.
        client = boto3.client("route53", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        for zone in zones:
            client.create_hosted_zone(Name=zone, CallerReference=str(uuid.uuid4()))
        rows += measure("route53", lambda: Route53Provider(client, poll_interval=0.01), zones)
    finally:
        benchlib.unbound()
        for proc in procs:
            stop(proc)
        shutil.rmtree(work, ignore_errors=True)

    summary = {}
    for prov in ("rfc2136", "route53"):
        mine = [r for r in rows if r["provider"] == prov]
        lab = [r for r in mine if r["zone"] != "big.test"]
        big = next(r for r in mine if r["zone"] == "big.test")
        summary[prov] = {
            "round_trips_per_zone_publish": round(
                sum(r["publish_round_trips"] for r in lab) / len(lab), 2),
            "round_trips_per_noop_replan": round(
                sum(r["noop_replan_round_trips"] for r in lab) / len(lab), 2),
            "records_per_round_trip": benchlib.ratio(sum(r["rrsets_written"] for r in lab),
                                                     sum(r["publish_round_trips"] for r in lab)),
            "big_zone_round_trips": big["publish_round_trips"],
            "big_zone_records_per_round_trip": big["records_per_round_trip"],
        }
    benchlib.write_results("dns", {
        "what": "provider round trips per zone publish (reading included) and per no-op "
                "re-plan; records = RRsets written, owner markers included",
        "big_zone_domains": BIG_DOMAINS, "summary": summary, "zones": rows})
    parts = []
    for prov, s in summary.items():
        parts.append(f"{prov}: {s['round_trips_per_zone_publish']:g} round trips/zone publish, "
                     f"{s['round_trips_per_noop_replan']:g}/no-op re-plan, "
                     f"{s['records_per_round_trip']:g} records/round trip "
                     f"(big zone: {s['big_zone_round_trips']} round trips, "
                     f"{s['big_zone_records_per_round_trip']:g} records/round trip)")
    print("dns: " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
