"""The lab: real Debian hosts, isolated, repeatable, and gone after `down`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import deploy, lab_inventory_copy, no_changes_in

pytestmark = pytest.mark.lab

OUTSIDE = "203.0.113.7"  # TEST-NET-3: must be unreachable from any lab host


def _ssh(lab, host, command, timeout=120):
    res = lab.ssh(host, command, timeout=timeout)
    assert res.returncode == 0, f"{host.name}: {command}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def test_every_host_is_up_named_and_reachable(lab):
    for host in lab.inventory.hosts:
        out = _ssh(lab, host, "systemctl is-system-running; hostname; cat /etc/hostname")
        state, name, file_name = out.split()
        assert state == "running", f"{host.name}: {out}"
        assert name == host.name and file_name == host.name


def test_hosts_resolve_each_other_by_name(lab):
    first, *others = lab.inventory.hosts
    for other in others:
        out = _ssh(lab, first, f"getent hosts {other.name}")
        assert out.split()[0] == str(other.address)


def test_apt_installs_through_the_lab_proxy(lab):
    acng_log = lab.dir / "acng" / "log" / "apt-cacher.log"
    before = acng_log.read_text() if acng_log.exists() else ""
    for host in lab.inventory.hosts:
        out = _ssh(lab, host, "apt-config dump Acquire::http::Proxy")
        assert f"http://{lab.spec.gateway}:3142" in out
        # Cleaned and reinstalled: the package is fetched (through the proxy)
        # on every run, also on a host that has it from an earlier one.
        _ssh(lab, host, "apt-get clean && DEBIAN_FRONTEND=noninteractive apt-get install"
                        " --reinstall -y -q hello >/dev/null && hello", timeout=300)
    after = acng_log.read_text()
    assert "hello_" in after[len(before):], "the hello package did not pass through apt-cacher-ng"


def test_lab_hosts_have_no_route_out(lab):
    probe = (
        "python3 -c \"import socket,time,errno\n"
        "s=socket.socket(); t=time.monotonic()\n"
        f"try:\n s.settimeout(5); s.connect(('{OUTSIDE}', 25)); print('CONNECTED')\n"
        "except OSError as e: print(errno.errorcode.get(e.errno, e), round(time.monotonic()-t,3))\""
    )
    for host in lab.inventory.hosts:
        routes = _ssh(lab, host, "ip -4 route show; ip -6 route show")
        assert "default" not in routes, f"{host.name} has a default route:\n{routes}"
        out = _ssh(lab, host, probe).split()
        assert out[0] == "ENETUNREACH", f"{host.name}: {out}"
        assert float(out[1]) < 0.5, "failed, but not at once: a packet may have left"


def test_machine_does_not_forward_for_the_lab_bridge(lab):
    br = lab.spec.bridge
    assert Path(f"/proc/sys/net/ipv4/conf/{br}/forwarding").read_text().strip() == "0"
    # No NAT for the lab subnet, in whichever firewall tool the machine has.
    for argv in (["nft", "list", "ruleset"], ["iptables-save", "-t", "nat"]):
        if shutil.which(argv[0]):
            rules = subprocess.run(argv, capture_output=True, text=True).stdout
            lab_rules = [r for r in rules.splitlines() if str(lab.spec.subnet) in r]
            assert not any("masquerade" in r.lower() or "snat" in r.lower()
                           for r in lab_rules), lab_rules


def test_lab_up_and_bootstrap_again_change_nothing(lab, lab_inventory):
    res = deploy("lab", "up", "-i", str(lab_inventory))
    assert no_changes_in(res.stdout), res.stdout + res.stderr
    print(no_changes_in(res.stdout).group(0))
    res = deploy("bootstrap", "-i", str(lab_inventory))
    assert no_changes_in(res.stdout), res.stdout + res.stderr
    rows = [line.split() for line in res.stdout.splitlines()
            if line.split() and line.split()[0] in {h.name for h in lab.inventory.hosts}]
    assert len(rows) == len(lab.inventory.hosts)
    assert all(r[2] == "0" and r[3] == "ok" for r in rows), res.stdout


def test_lab_status_table(lab, lab_inventory):
    res = deploy("lab", "status", "-i", str(lab_inventory))
    header = res.stdout.splitlines()[0].split()
    assert header == ["host", "group", "address", "state", "ssh"]
    rows = json.loads(deploy("lab", "status", "--json", "-i", str(lab_inventory)).stdout)
    assert {r["host"] for r in rows} == {h.name for h in lab.inventory.hosts}
    assert all(r["state"] == "running" and r["ssh"] == "yes" for r in rows), rows


# ------------------------------------------------- a small lab of its own


def _snapshot(name: str) -> dict[str, set[str]]:
    def lines(*argv):
        return set(subprocess.run(argv, capture_output=True, text=True).stdout.splitlines())

    procs = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if f"/labs/{name}/" in cmd or f"{name}-" in cmd:
                procs.add(f"{pid} {cmd}")
    mounts = {line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if f"/labs/{name}/" in line}
    return {
        "netns": {n.split()[0] for n in lines("ip", "netns", "list") if n.startswith(f"{name}-")},
        "links": {link.split()[0].split("@")[0] for link in lines("ip", "-br", "link")
                  if link.startswith(f"{name}")},
        "mounts": mounts,
        "processes": procs,
    }


@pytest.fixture
def mini_lab(tmp_path):
    inv = lab_inventory_copy(tmp_path / "mini", "mdown", "198.18.101", hosts=["mail1", "mail2"])
    yield inv
    deploy("lab", "down", "-i", str(inv), check=False)


def test_lab_repairs_after_a_crash_and_down_leaves_nothing(mini_lab):
    if os.geteuid() != 0:
        pytest.fail("needs root")
    before = _snapshot("mdown")
    assert not any(before.values()), f"leftovers from an earlier run: {before}"

    deploy("lab", "up", "-i", str(mini_lab))
    during = _snapshot("mdown")
    assert during["netns"] == {"mdown-mail1", "mdown-mail2"}
    assert {"mdown0", "mdown-11", "mdown-12"} <= during["links"]
    assert len(during["mounts"]) == 2 and during["processes"]

    # Crash: one host's container dies, another host loses its veth.
    state = json.loads(Path("/var/lib/mailops/labs/mdown/state.json").read_text())
    os.kill(state["hosts"]["mail1"]["pid"], signal.SIGKILL)
    subprocess.run(["ip", "link", "del", "mdown-12"], check=True)
    time.sleep(1)
    res = deploy("lab", "up", "-i", str(mini_lab))
    assert "mail1" in res.stderr and re.search(r"mail1\s+booted", res.stderr), res.stderr
    assert "veth mdown-12" in res.stderr, res.stderr
    status = json.loads(deploy("lab", "status", "--json", "-i", str(mini_lab)).stdout)
    assert all(r["state"] == "running" and r["ssh"] == "yes" for r in status), status

    deploy("lab", "down", "-i", str(mini_lab))
    after = _snapshot("mdown")
    assert after == before, f"left behind: {after}"
