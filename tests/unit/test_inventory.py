"""Inventory validation: good input gives the typed model, bad input a clear
error naming file, key and fix, raised before anything touches a host."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailops.core.errors import InventoryErrors
from mailops.inventory.model import load_inventory

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventories" / "lab"

GOOD = """\
all:
  vars:
    mailops_lab: {name: t, subnet: 198.19.7.0/24}
    mailops_apt_proxy: http://198.19.7.1:3142
  children:
    lb:
      hosts:
        lb1: {ansible_host: 198.19.7.10}
    mail:
      hosts:
        mail1: {ansible_host: 198.19.7.11}
        mail2: {ansible_host: 198.19.7.12}
"""


def write(tmp_path: Path, text: str) -> Path:
    inv = tmp_path / "inv"
    inv.mkdir()
    (inv / "hosts.yml").write_text(text)
    return inv


def test_lab_inventory_loads_into_the_model():
    inv = load_inventory(LAB)
    assert inv.lab is not None and inv.lab.name == "mailops"
    assert {h.name for h in inv.group("mail")} == {"mail1", "mail2"}
    for group in ("dns", "external"):
        assert len(inv.group(group)) == 1, group
    assert [h.name for h in inv.group("lb")] == ["lb1", "lb2"]
    assert inv.floating_address is not None and inv.floating_address in inv.lab.subnet
    assert inv.floating_address not in {h.address for h in inv.hosts}
    assert all(h.address in inv.lab.subnet for h in inv.hosts)
    assert len({h.address for h in inv.hosts}) == len(inv.hosts)
    assert inv.host("mail1").apt_proxy == "http://198.18.0.1:3142"


def test_good_inventory_loads(tmp_path):
    inv = load_inventory(write(tmp_path, GOOD))
    assert [h.name for h in inv.group("mail")] == ["mail1", "mail2"]
    assert str(inv.lab.gateway) == "198.19.7.1"
    assert inv.lab.veth(inv.host("mail2")) == "t-12"

PAIR = GOOD.replace("""    lb:
      hosts:
        lb1: {ansible_host: 198.19.7.10}
""", """    lb:
      vars: {mailops_floating_address: 198.19.7.9}
      hosts:
        lb1: {ansible_host: 198.19.7.10}
        lb2: {ansible_host: 198.19.7.13}
""")


def test_a_balancer_pair_has_one_floating_address(tmp_path):
    from mailops.site.derived import front, vrrp

    inv = load_inventory(write(tmp_path, PAIR))
    assert str(inv.floating_address) == "198.19.7.9"
    assert front(inv) == ("198.19.7.9", "lb1+lb2")
    v = vrrp(inv)
    assert v["enabled"] and v["address"] == "198.19.7.9" and v["prefix"] == 32
    assert v["peers"] == {"lb1": ["198.19.7.13"], "lb2": ["198.19.7.10"]}
    assert v["priority"]["lb1"] > v["priority"]["lb2"]
    (tmp_path / "one").mkdir()
    single = load_inventory(write(tmp_path / "one", GOOD))
    assert single.floating_address is None and vrrp(single) == {"enabled": False}
    assert front(single) == ("198.19.7.10", "lb1")


BAD = {
    "two balancers, no floating address": (
        PAIR.replace("      vars: {mailops_floating_address: 198.19.7.9}\n", ""),
        "all.children.lb.vars.mailops_floating_address", "2 balancers need one floating",
        "add a free address"),
    "floating address of a host": (
        PAIR.replace("mailops_floating_address: 198.19.7.9", "mailops_floating_address: "
                     "198.19.7.11"),
        "all.children.lb.vars.mailops_floating_address", "the address of mail1",
        "no host has"),
    "floating address outside the lab": (
        PAIR.replace("mailops_floating_address: 198.19.7.9", "mailops_floating_address: "
                     "10.1.1.9"),
        "all.children.lb.vars.mailops_floating_address", "not a free address of the lab",
        "pick one in 198.19.7.0/24"),
    "floating address not an address": (
        PAIR.replace("mailops_floating_address: 198.19.7.9", "mailops_floating_address: vip"),
        "all.children.lb.vars.mailops_floating_address", "not an IPv4 address",
        "write an IPv4 address"),
    "floating address with one balancer": (
        GOOD.replace("    lb:\n", "    lb:\n      vars: {mailops_floating_address: 198.19.7.9}\n"),
        "all.children.lb.vars.mailops_floating_address", "two or more balancers",
        "add a second host"),
    "unknown group": (
        GOOD + "    webservers:\n      hosts:\n        web1: {ansible_host: 198.19.7.30}\n",
        "all.children.webservers", "unknown group 'webservers'", "use only the groups"),
    "duplicate host": (
        GOOD + "        mail1: {ansible_host: 198.19.7.13}\n",
        "all.children.mail.hosts.mail1", "given twice", "remove or rename one"),
    "duplicate address": (
        GOOD.replace("198.19.7.12", "198.19.7.11"),
        "all.children.mail.hosts.mail2.ansible_host", "already the address of mail1",
        "its own address"),
    "address outside the lab": (
        GOOD.replace("198.19.7.12", "10.0.0.12"),
        "all.children.mail.hosts.mail2.ansible_host", "outside the lab subnet",
        "pick a free address in 198.19.7.0/24"),
    "missing required key": (
        GOOD.replace("mail2: {ansible_host: 198.19.7.12}", "mail2: {}"),
        "all.children.mail.hosts.mail2.ansible_host", "missing (required)",
        "ansible_host: 198.18.0.11"),
    "wrong type (port)": (
        GOOD.replace("lb1: {ansible_host: 198.19.7.10}",
                     "lb1: {ansible_host: 198.19.7.10, ansible_port: twenty-two}"),
        "all.children.lb.hosts.lb1.ansible_port", "not a TCP port number", "1 to 65535"),
    "wrong type (address is a list)": (
        GOOD.replace("lb1: {ansible_host: 198.19.7.10}", "lb1: {ansible_host: [198.19.7.10]}"),
        "all.children.lb.hosts.lb1.ansible_host", "must be an IPv4 address string",
        "ansible_host: 198.18.0.11"),
    "lab subnet outside 198.18.0.0/15": (
        GOOD.replace("subnet: 198.19.7.0/24", "subnet: 192.168.1.0/24"),
        "all.vars.mailops_lab.subnet", "outside the lab range", "inside 198.18.0.0/15"),
    "gateway address taken by a host": (
        GOOD.replace("198.19.7.10}", "198.19.7.1}"),
        "all.children.lb.hosts.lb1.ansible_host", "reserved", "from .10 up"),
    "no mail host": (
        GOOD.split("    mail:")[0],
        "all.children.mail", "no host in group 'mail'", "add `mail:"),
    "invalid YAML": (
        GOOD.replace("    lb:\n", "    lb:\n   bad-indent: [\n"),
        "line", "is not valid YAML", "fix the YAML syntax"),
    "bad host name": (
        GOOD.replace("lb1:", "LB_1:"),
        "all.children.lb.hosts.LB_1", "not a valid hostname", "lowercase letters"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inventory_is_refused_clearly(tmp_path, case):
    text, key, problem, fix = BAD[case]
    inv = write(tmp_path, text)
    with pytest.raises(InventoryErrors) as info:
        load_inventory(inv)
    message = str(info.value)
    assert str(inv / "hosts.yml") in message, message
    match = [e for e in info.value.errors if e.key.startswith(key) and problem in e.problem]
    assert match, f"no error for {key!r} with {problem!r} in:\n{message}"
    assert fix in match[0].fix, match[0].fix


def test_every_problem_is_reported_at_once(tmp_path):
    text = GOOD.replace("198.19.7.12", "10.0.0.12").replace("lb1:", "LB_1:")
    with pytest.raises(InventoryErrors) as info:
        load_inventory(write(tmp_path, text))
    assert len(info.value.errors) == 2, str(info.value)


def test_bad_inventory_touches_no_host(tmp_path):
    """The CLI stops at validation: exit 2, the error on stderr, and no lab
    state, namespace or process created for the inventory's lab."""
    inv = write(tmp_path, GOOD.replace("198.19.7.12", "198.19.7.11").replace(
        "name: t,", "name: tbad,"))
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for cmd in (["lab", "up"], ["bootstrap"], ["lab", "status"]):
        res = subprocess.run([sys.executable, str(ROOT / "deploy.py"), *cmd, "-i", str(inv)],
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, (cmd, res.stdout, res.stderr)
        assert "already the address of mail1" in res.stderr
        assert "no host was touched" in res.stderr
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert before == after
    assert "tbad0" not in subprocess.run(["ip", "-br", "link"], capture_output=True,
                                         text=True).stdout
    assert not Path("/var/lib/mailops/labs/tbad").exists()


def test_ansible_sees_the_same_hosts():
    """ansible-inventory (Ansible's own reader) lists exactly the model's hosts."""
    import json

    model = load_inventory(LAB)
    exe = shutil.which("ansible-inventory", path=str(Path(sys.executable).parent))
    argv = [exe, "-i", str(LAB), "--list"]
    if model.vault_password_file.exists():  # after `deploy.py up`, the lab has its vault
        argv += ["--vault-password-file", str(model.vault_password_file)]
    res = subprocess.run(argv, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    listed = set(json.loads(res.stdout)["_meta"]["hostvars"])
    assert listed == {h.name for h in model.hosts}


def test_converge_limit_naming_no_host_or_group_is_refused_before_any_host(tmp_path):
    inv = tmp_path / "lab"
    shutil.copytree(LAB, inv)
    res = subprocess.run([sys.executable, str(ROOT / "deploy.py"), "converge", "--limit",
                          "mial", "-i", str(inv)], capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "--limit mial" in res.stderr and "mail" in res.stderr and str(inv) in res.stderr
    assert "PLAY" not in res.stdout  # Ansible never ran
