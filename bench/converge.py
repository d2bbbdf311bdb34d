"""Converge benchmark: `deploy.py up` on a fresh lab against the floor, the
least work each phase has to do, by hand, on equally fresh hosts.

Run from the repository root:  .venv/bin/python bench/converge.py

1. Lab `mbench` (198.18.60.0/24): a cold `deploy.py up --json`, its phase
   times; then, on that converged lab, the dns floor (per zone one AXFR and
   one UPDATE carrying the same records, which changes nothing) and the
   verify floor (one connection to each of the 7 ports on the balancer,
   reading the greeting, after the TLS handshake on 465/993/995); then a
   no-op `deploy.py up --json` and one SSH round trip (`true`) to every host
   in parallel. The lab is taken down.
2. Lab `mfloor` (198.18.61.0/24), equally fresh hosts: `deploy.py lab up`
   (lab floor), then over SSH, all hosts in parallel: bootstrap floor (apt
   proxy file, apt-get update, bootstrap's packages) and converge floor
   (apt-get install of the packages the roles install per group, with a
   policy-rc.d so nothing starts with its default configuration, then
   systemctl start of their services, then waiting until rspamd's milter
   port accepts connections, as the toolkit's converge does). The lab is
   taken down.

Ratios: toolkit/floor per phase and in total, no-op up/cold up, no-op
up/SSH round trip. Results: bench/results/converge.json and converge.png.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import benchlib
from benchlib import say

TOOLKIT_LAB = ("mbench", "198.18.60")
FLOOR_LAB = ("mfloor", "198.18.61")
PHASES = ("lab", "bootstrap", "converge", "dns", "verify")
REPEAT = 5  # repetitions of the short floors (median taken)
# The roles each group gets (mailops/converge/playbooks/site.yml) and the services
# each role starts. chrony is installed and enabled but cannot run in a
# container (no CAP_SYS_TIME), so it is not restarted (the toolkit does not
# start it either).
GROUP_ROLES = {"mail": ("common", "tls", "rspamd", "dovecot", "postfix"),
               "lb": ("haproxy",), "dns": ("bind",), "external": ("rspamd", "external")}
ROLE_SERVICES = {"rspamd": ("redis-server", "rspamd"), "dovecot": ("dovecot",),
                 "postfix": ("postfix",), "haproxy": ("haproxy",), "bind": ("named",),
                 "external": ("postfix",)}
# Ports that must accept connections before a host counts as converged: the
# toolkit waits for rspamd's milter (its first start compiles its URL rules
# for many seconds, and Postfix refuses mail until it answers).
ROLE_READY_PORTS = {"rspamd": (11332,)}
APT = "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
NO_START = ("printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d"
            " && chmod +x /usr/sbin/policy-rc.d")


def role_packages(role: str) -> list[str]:
    import yaml

    roles = benchlib.ROOT / ("mailops/lab/roles" if role == "external" else "roles")
    defaults = yaml.safe_load((roles / role / "defaults" / "main.yml").read_text())
    key = "common__base_packages" if role == "common" else f"{role}__packages"
    return list(defaults[key])


def group_work(host) -> tuple[list[str], list[str], list[int]]:
    """(packages, services, ports to wait for) the site playbook installs,
    starts and waits for on a host."""
    pkgs: list[str] = []
    svcs: list[str] = []
    ports: list[int] = []
    for group in host.groups:
        for role in GROUP_ROLES.get(group, ()):
            pkgs += [p for p in role_packages(role) if p not in pkgs]
            svcs += [s for s in ROLE_SERVICES.get(role, ()) if s not in svcs]
            ports += [p for p in ROLE_READY_PORTS.get(role, ()) if p not in ports]
    return pkgs, svcs, ports


def converge_floor_cmd(pkgs: list[str], svcs: list[str], ports: list[int]) -> str:
    waits = "".join(f" && until (exec 3<>/dev/tcp/127.0.0.1/{p}) 2>/dev/null; do sleep 0.2; done"
                    for p in ports)
    # The time the services were started is printed too (the floor without
    # the wait for rspamd, for comparison).
    return (f"{NO_START} && {APT} {' '.join(pkgs)} && rm /usr/sbin/policy-rc.d"
            f" && systemctl start {' '.join(svcs)} && echo STARTED $(date +%s.%N){waits}")


# ------------------------------------------------------------------ toolkit lab


def dns_floor(inventory) -> tuple[float, list[float], int]:
    """Per zone the toolkit publishes: one AXFR and one UPDATE with the same
    records (which changes nothing). Median seconds of REPEAT runs."""
    import dns.query
    import dns.rcode
    import dns.update

    from mailops.dns import deploy as dnsdeploy
    from mailops.dns.wire import name_of, to_rdataset
    from mailops.site.mailmodel import load_mail_model

    cfg = dnsdeploy.settings(inventory)
    secrets = dnsdeploy.read_secrets(inventory)
    desired = dnsdeploy.desired_for(inventory, load_mail_model(inventory), secrets, cfg)
    key = dnsdeploy.tsig_key(inventory, secrets, cfg).to_dnspython()
    updates = []
    for zone, records in desired.items():
        upd = dns.update.UpdateMessage(zone, keyring=key)
        for rec in records:
            upd.add(name_of(rec.name, zone), to_rdataset(rec, zone))
        updates.append((zone, upd))

    def once() -> float:
        provider = dnsdeploy.provider_for(inventory, cfg, secrets)
        t0 = time.monotonic()
        for zone, upd in updates:
            provider.current(zone)
            resp = dns.query.tcp(upd, cfg.rfc2136_server, port=cfg.rfc2136_port, timeout=10)
            if resp.rcode() != dns.rcode.NOERROR:
                raise RuntimeError(f"floor UPDATE of {zone}: {dns.rcode.to_text(resp.rcode())}")
        return time.monotonic() - t0

    median, samples = benchlib.median_of(once, REPEAT)
    return median, samples, len(updates)


def verify_floor(inventory) -> tuple[float, list[float]]:
    """One connection to each of the 7 ports on the balancer, reading the
    greeting (after the TLS handshake on the implicit-TLS ports)."""
    import socket

    from mailops.verify.service import PORTS, service_for

    ep = service_for(inventory).endpoint()
    ctx = ep.context()

    def once() -> float:
        t0 = time.monotonic()
        for port, _, tls in PORTS:
            with socket.create_connection((ep.address, port), timeout=10) as raw:
                sock = ctx.wrap_socket(raw, server_hostname=ep.service_name) \
                    if tls == "implicit" else raw
                greeting = sock.recv(512)
                if not greeting.startswith((b"220", b"* OK", b"+OK")):
                    raise RuntimeError(f"port {port}: unexpected greeting {greeting[:60]!r}")
        return time.monotonic() - t0

    return benchlib.median_of(once, REPEAT)


def ssh_round_trip(inventory) -> tuple[float, list[float]]:
    """`true` over a fresh SSH connection to every host, in parallel."""
    from mailops.lab.lab import Lab

    lab = Lab(inventory)
    hosts = inventory.hosts

    def one(host) -> None:
        res = lab.ssh(host, "true", timeout=30)
        if res.returncode != 0:
            raise RuntimeError(f"{host.name}: ssh true: {res.stderr.strip()}")

    def once() -> float:
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
            list(pool.map(one, hosts))
        return time.monotonic() - t0

    return benchlib.median_of(once, REPEAT)


def toolkit_run(inv: Path) -> dict:
    say("cold `deploy.py up --json` on the toolkit lab")
    cold, cold_wall = benchlib.up_json(inv, timeout=1800)
    phases = {p["name"]: p for p in cold["phases"]}
    say("cold up: " + ", ".join(f"{n} {p['seconds']:.1f}s" for n, p in phases.items()))
    inventory = benchlib.load(inv)  # with the vault the converge wrote
    say("dns floor: AXFR + UPDATE per zone")
    dns_s, dns_samples, zones = dns_floor(inventory)
    say("verify floor: greeting on each of the 7 ports")
    ver_s, ver_samples = verify_floor(inventory)
    say("no-op `deploy.py up --json`")
    noop, noop_wall = benchlib.up_json(inv, timeout=900)
    say(f"no-op up: {noop_wall:.1f}s wall, {noop['changes']} change(s)")
    say("SSH round trip to every host in parallel")
    rt_s, rt_samples = ssh_round_trip(inventory)
    return {"cold_up": {"wall_seconds": round(cold_wall, 2), "changes": cold["changes"],
                        "phases": cold["phases"], "verify": cold["verify"]["summary"]},
            "noop_up": {"wall_seconds": round(noop_wall, 2), "changes": noop["changes"],
                        "phases": noop["phases"], "verify": noop["verify"]["summary"]},
            "floor_dns": {"seconds": round(dns_s, 4), "samples": dns_samples, "zones": zones},
            "floor_verify": {"seconds": round(ver_s, 4), "samples": ver_samples},
            "ssh_round_trip": {"seconds": round(rt_s, 4), "samples": rt_samples,
                               "hosts": len(inventory.hosts)}}


# ------------------------------------------------------------------ floor lab


def on_hosts(lab, jobs: dict, timeout: float) -> dict[str, dict]:
    """Run {host: command} in parallel over SSH; per host rc, seconds, tail."""

    def one(item):
        host, cmd = item
        t0 = time.monotonic()
        try:
            res = lab.ssh(host, cmd, timeout=timeout)
            rc, out = res.returncode, (res.stdout + res.stderr).strip()
        except subprocess.TimeoutExpired:
            rc, out = 124, f"timed out after {timeout:.0f} s"
        return host.name, {"rc": rc, "seconds": round(time.monotonic() - t0, 2),
                           "tail": out[-400:]}

    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        return dict(pool.map(one, jobs.items()))


def floor_run(inv: Path) -> dict:
    from mailops.converge.bootstrap import PACKAGES
    from mailops.lab.lab import Lab

    say("lab floor: `deploy.py lab up` on the floor lab")
    _, lab_s = benchlib.deploy("lab", "up", "-i", str(inv), timeout=600)
    inventory = benchlib.load(inv)
    lab = Lab(inventory)
    hosts = list(inventory.hosts)

    def boot_cmd(host) -> str:
        proxy = f"echo 'Acquire::http::Proxy \"{host.apt_proxy}\";' " \
                "> /etc/apt/apt.conf.d/01proxy && " if host.apt_proxy else ""
        return f"{proxy}apt-get update -qq && {APT} {' '.join(PACKAGES)}"

    say("bootstrap floor: apt proxy, apt-get update, bootstrap's packages")
    # One host first, alone: apt-cacher-ng races when several clients make it
    # fetch the same index at once (see mailops/lab.py); then the rest at once.
    t0 = time.monotonic()
    boot = on_hosts(lab, {hosts[0]: boot_cmd(hosts[0])}, 600)
    boot |= on_hosts(lab, {h: boot_cmd(h) for h in hosts[1:]}, 600)
    boot_s = time.monotonic() - t0

    say("converge floor: apt-get install per group, systemctl start, rspamd's milter up")
    work = {h: group_work(h) for h in hosts}
    t0, wall0 = time.monotonic(), time.time()  # lab hosts share this machine's clock
    conv = on_hosts(lab, {h: converge_floor_cmd(*w) for h, w in work.items()}, 900)
    conv_s = time.monotonic() - t0
    started = [float(line.split()[1]) for r in conv.values()
               for line in r["tail"].splitlines() if line.startswith("STARTED ")]
    started_s = max(started) - wall0 if len(started) == len(conv) else None
    failed = [f"{phase} {name}: {r['tail']}" for phase, rows in (("bootstrap", boot),
                                                                  ("converge", conv))
              for name, r in rows.items() if r["rc"] != 0]
    for f in failed:
        say(f"WARNING: floor step failed: {f}")
    return {"lab": {"seconds": round(lab_s, 2)},
            "bootstrap": {"seconds": round(boot_s, 2), "hosts": boot},
            "converge": {"seconds": round(conv_s, 2), "hosts": conv,
                         "services_started_seconds": round(started_s, 2) if started_s else None,
                         "work": {h.name: {"packages": p, "services": s, "ports": r}
                                  for h, (p, s, r) in work.items()}},
            "failed": failed}


# ------------------------------------------------------------------ report


def chart(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        say("matplotlib missing: installing the [bench] extra into .venv")
        subprocess.run([str(benchlib.ROOT / ".venv" / "bin" / "pip"), "install", "-q",
                        "--disable-pip-version-check", "-e", f"{benchlib.ROOT}[bench]"],
                       check=True, timeout=600)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["phase"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.bar([i - 0.2 for i in x], [r["toolkit_seconds"] for r in rows], 0.4, label="toolkit")
    ax.bar([i + 0.2 for i in x], [r["floor_seconds"] for r in rows], 0.4, label="floor")
    for i, r in enumerate(rows):
        top = max(r["toolkit_seconds"], r["floor_seconds"])
        ax.annotate(f"{r['ratio']:.1f}x", (i, top), ha="center", va="bottom", fontsize=9,
                    xytext=(0, 3), textcoords="offset points")
    ax.set_xticks(list(x), names)
    ax.set_yscale("log")
    ax.set_ylim(top=3 * max(max(r["toolkit_seconds"], r["floor_seconds"]) for r in rows))
    ax.set_ylabel("seconds (log scale)")
    ax.set_title("deploy.py up on a fresh lab vs the floor (label: toolkit/floor)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    benchlib.setup()
    benchlib.bound(3600)
    try:
        with benchlib.own_lab(*TOOLKIT_LAB) as inv:
            toolkit = toolkit_run(inv)
        benchlib.bound(1800)
        with benchlib.own_lab(*FLOOR_LAB) as inv:
            floor = floor_run(inv)
    finally:
        benchlib.unbound()

    tk = {p["name"]: p["seconds"] for p in toolkit["cold_up"]["phases"]}
    fl = {"lab": floor["lab"]["seconds"], "bootstrap": floor["bootstrap"]["seconds"],
          "converge": floor["converge"]["seconds"], "dns": toolkit["floor_dns"]["seconds"],
          "verify": toolkit["floor_verify"]["seconds"]}
    rows = [{"phase": n, "toolkit_seconds": round(tk[n], 2), "floor_seconds": round(fl[n], 4),
             "ratio": benchlib.ratio(tk[n], fl[n])} for n in PHASES]
    total_tk, total_fl = sum(tk[n] for n in PHASES), sum(fl[n] for n in PHASES)
    noop_wall = toolkit["noop_up"]["wall_seconds"]
    ratios = {
        "per_phase_toolkit_over_floor": {r["phase"]: r["ratio"] for r in rows},
        "total_toolkit_over_floor": benchlib.ratio(total_tk, total_fl),
        "noop_up_over_cold_up": benchlib.ratio(noop_wall, toolkit["cold_up"]["wall_seconds"]),
        "noop_up_over_ssh_round_trip": benchlib.ratio(noop_wall,
                                                      toolkit["ssh_round_trip"]["seconds"]),
        # For comparison only: the converge floor up to `systemctl start`,
        # without waiting for rspamd to answer (which the toolkit does).
        "converge_over_floor_without_rspamd_wait": benchlib.ratio(
            tk["converge"], floor["converge"]["services_started_seconds"])
        if floor["converge"]["services_started_seconds"] else None,
    }
    png = benchlib.RESULTS / "converge.png"
    benchlib.RESULTS.mkdir(parents=True, exist_ok=True)
    chart(rows, png)
    benchlib.write_results("converge", {
        "what": "toolkit/floor per phase of a cold `deploy.py up` (floor: the least work "
                "each phase must do, by hand, on equally fresh hosts; dns and verify floors "
                "measured on the toolkit's lab, median of 5), and a no-op up against the "
                "cold up and against one parallel SSH round trip to every host",
        "labs": {"toolkit": list(TOOLKIT_LAB), "floor": list(FLOOR_LAB)},
        "ratios": ratios, "phases": rows,
        "totals": {"toolkit_seconds": round(total_tk, 2), "floor_seconds": round(total_fl, 2)},
        "floor_complete": not floor["failed"],
        "toolkit": toolkit, "floor": floor, "chart": str(png.relative_to(benchlib.ROOT))})
    per = ", ".join(f"{r['phase']} {r['ratio']:.2f}" for r in rows)
    flag = "" if not floor["failed"] else f" [FLOOR INCOMPLETE: {len(floor['failed'])} failed]"
    print(f"converge: toolkit/floor {per}; total {ratios['total_toolkit_over_floor']:.2f}; "
          f"no-op up/cold up {ratios['noop_up_over_cold_up']:.3f}; no-op up/SSH round trip "
          f"{ratios['noop_up_over_ssh_round_trip']:.1f} "
          f"({toolkit['noop_up']['changes']} changes){flag}")
    return 0 if not floor["failed"] else 1


if __name__ == "__main__":
    sys.exit(main())
