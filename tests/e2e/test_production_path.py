"""The production path: an inventory without `mailops_lab`, plain SSH hosts
as inventories/example describes them (address, user, key, known hosts),
pointed at the running lab hosts, deploys and verifies the same service.
Nothing on this path asks the lab for anything (tests/unit/test_layout.py
keeps the lab out of every stage but the workflows)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.conftest import deploy, no_changes_in

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def production_inventory(converged, lab_inventory, tmp_path_factory):
    from mailops.core.paths import lab_known_hosts, lab_ssh_key, vault_password_file

    lab = converged.lab
    lab_hosts = yaml.safe_load((lab_inventory / "hosts.yml").read_text())
    inv = tmp_path_factory.mktemp("production") / "site"
    children = {}
    for group, body in lab_hosts["all"]["children"].items():
        children[group] = {"hosts": {name: {"ansible_host": h["ansible_host"]}
                                     for name, h in (body.get("hosts") or {}).items()},
                           # The balancers' floating address.
                           **({"vars": body["vars"]} if body.get("vars") else {})}
    dns = [str(h.address) for h in converged.group("dns")]
    hosts = {"all": {"vars": {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(lab_ssh_key(lab.name)),
        "mailops_ssh_known_hosts_file": str(lab_known_hosts(lab.name)),
        "mailops_apt_proxy": f"http://{lab.gateway}:3142",
        "mailops_dns_servers": dns,
        "mailops_verify_account": "alice@example.test",
    }, "children": children}}
    inv.mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    # The same site data and the same secrets (the vault and its password).
    shutil.copytree(lab_inventory / "group_vars", inv / "group_vars")
    password = vault_password_file(lab_inventory, lab.name)
    return inv, {"MAILOPS_VAULT_PASSWORD_FILE": str(password)}


def test_plain_ssh_inventory_deploys_and_verifies_the_same_service(production_inventory):
    inv, env = production_inventory
    text = (inv / "hosts.yml").read_text()
    assert "mailops_lab" not in text and "198.18." in text
    up = deploy("up", "-i", str(inv), timeout=1200, env=env)
    # The hosts and phases tables say where a change was made.
    assert no_changes_in(up.stdout.splitlines()[-1]), up.stdout[:1500] + up.stderr[-6000:]
    assert not any(line.startswith("lab ") for line in up.stdout.splitlines()), \
        "up ran the lab phase for an inventory without mailops_lab"
    assert "test account  alice@example.test (password in the vault)" in up.stdout
    verify = deploy("verify", "-i", str(inv), timeout=600, env=env)
    assert "verify: " in verify.stdout and " 0 failed" in verify.stdout, verify.stdout[-4000:]
