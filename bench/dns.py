"""DNS publish benchmark: provider round trips per zone publish and per no-op
re-plan, for rfc2136 against a real `named` on 127.0.0.1 and route53 against
moto's server mode on 127.0.0.1. No lab; nothing leaves loopback.

Run from the repository root:  .venv/bin/python bench/dns.py
Figures: round trips per publish (reading included), per no-op re-plan, and
records (RRsets written, owner markers included) per round trip.
"""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import benchlib
from benchlib import say

LOOPBACK = "127.0.0.1"
NAMED = "/usr/sbin/named"
OWNER = "mailops-bench"
SELECTOR = "mo2026"
BIG_DOMAINS = 100  # mail domains in the one "big" zone (shows request splitting)
# Zones published: the lab's two mail domains, and one zone holding many.
ZONES = ("example.test", "example.net", "big.test")

ZONE_TEMPLATE = """\
$TTL 300
@    IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 900 1209600 300
@    IN NS  ns1.{zone}.
ns1  IN A   127.0.0.1
"""
CONF_TEMPLATE = """\
options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    managed-keys-directory "{dir}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    notify no;
    dnssec-validation no;
    allow-query {{ 127.0.0.1; }};
    allow-transfer {{ none; }};
}};
controls {{ }};
{key}
"""
ZONE_CONF = """\
zone "{zone}" {{
    type primary;
    file "{dir}/{zone}.db";
    allow-update {{ key "{key}"; }};
    allow-transfer {{ key "{key}"; }};
}};
"""


def free_port() -> int:
    """A port free on 127.0.0.1 for both TCP and UDP."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
            if port > 20000:
                return port
    raise RuntimeError("no free port on 127.0.0.1")


def stop(proc: subprocess.Popen) -> None:
    """End a child we started, by its pid."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def need(path: str) -> str:
    found = shutil.which(path)
    if not found:
        sys.exit(f"{path} is not installed (Debian: apt-get install bind9 bind9-utils; "
                 "`python3 deploy.py` installs the controller packages)")
    return found


def start_named(directory: Path) -> tuple[subprocess.Popen, int, object]:
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    from mailops.dns.providers.rfc2136 import TsigKey

    key_text = subprocess.run([need("tsig-keygen"), "-a", "hmac-sha256", "mailops-bench"],
                              check=True, capture_output=True, text=True, timeout=30).stdout
    key = TsigKey.from_bind(key_text)
    port = free_port()
    conf = CONF_TEMPLATE.format(dir=directory, port=port, key=key_text)
    for zone in ZONES:
        (directory / f"{zone}.db").write_text(ZONE_TEMPLATE.format(zone=zone))
        conf += ZONE_CONF.format(zone=zone, dir=directory, key=key.name)
    conf_path = directory / "named.conf"
    conf_path.write_text(conf)
    subprocess.run([need("named-checkconf"), "-z", str(conf_path)], check=True,
                   capture_output=True, timeout=30)
    log = open(directory / "named.log", "wb")  # noqa: SIM115 - lives as long as named
    proc = subprocess.Popen([NAMED, "-g", "-n", "1", "-c", str(conf_path)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def answers(zone: str) -> bool:
        try:
            r = dns.query.tcp(dns.message.make_query(zone, "SOA"), LOOPBACK, port=port,
                              timeout=0.5)
        except (OSError, dns.exception.DNSException):
            return False
        return r.rcode() == dns.rcode.NOERROR and bool(r.answer)

    deadline = time.monotonic() + 20
    while not all(answers(z) for z in ZONES):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"named did not start; see {directory / 'named.log'}")
        time.sleep(0.1)
    return proc, port, key


def start_moto(directory: Path) -> tuple[subprocess.Popen, str]:
    server = benchlib.ROOT / ".venv" / "bin" / "moto_server"
    if not server.exists():
        sys.exit(f"{server} is missing; `.venv/bin/pip install -e .[test]` installs it")
    port = free_port()
    log = open(directory / "moto.log", "wb")  # noqa: SIM115 - lives as long as moto
    proc = subprocess.Popen([str(server), "-H", LOOPBACK, "-p", str(port)],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return proc, f"http://{LOOPBACK}:{port}"
        except OSError as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(
                    f"moto_server did not start; see {directory / 'moto.log'}") from e
            time.sleep(0.1)


def dkim_public() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def desired() -> dict[str, list]:
    """zone -> records, as mailops computes them for mail domains."""
    from mailops.dns.publish import desired_by_zone
    from mailops.dns.records import MailDomainDNS

    pub = dkim_public()
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
