"""Day two on the session's lab: `status` shows the whole cluster and exits 1
when a service is down; `drain` takes a node out of the balancer (the test
counts, from HAProxy's own stats, where new sessions go), waits for open
sessions up to its bound and says what stays open; `undrain` gives the node
back once every health check passes. Both are no-ops when repeated."""

from __future__ import annotations

import json
import smtplib

import pytest

from mailops.verify.nodes import BACKEND, haproxy_states
from tests.conftest import deploy

pytestmark = pytest.mark.lab

NODE = "mail2"


def _stats(node) -> dict[tuple[str, str], dict[str, str]]:
    lb = node.inventory.group("lb")[0]
    return {k: v for k, v in haproxy_states(node.inventory, lb).items() if k[0] in
            BACKEND.values()}


def _status(lab_inventory, check: bool = True) -> tuple[int, dict]:
    res = deploy("status", "-i", str(lab_inventory), "--json", check=check)
    return res.returncode, json.loads(res.stdout)


def test_status_shows_every_node_backend_and_mailbox_and_fails_on_a_stopped_service(
        node, lab_inventory):
    from mailops.inventory import remote

    code, found = _status(lab_inventory)
    assert code == 0 and found["ok"], found["problems"]
    mail = [h.name for h in node.inventory.group("mail")]
    assert [n["name"] for n in found["nodes"]] == mail
    for n in found["nodes"]:
        assert set(n["services"].values()) == {"active"}, n
        assert n["cert_days_left"] > 0 and n["disk"].endswith("%")
        assert any(k.startswith("example.test.") for k in n["dkim_age_days"]), n
    states = {(b["service"], b["node"]): b["state"] for b in found["backends"]}
    assert states == {(s, n): "UP" for s in BACKEND.values() for n in mail}
    user = "alice@example.test"  # the lab's test account, replicated on both nodes
    assert {(r["mailbox"], r["node"]) for r in found["replication"]} >= {(user, n) for n in mail}

    # A stopped service is a problem, named; status is read-only and the
    # service comes back by the test's hand.
    host = node.inventory.host(NODE)
    assert remote.run(node.inventory, host, "systemctl stop redis-server").returncode == 0
    try:
        code, found = _status(lab_inventory, check=False)
        assert code == 1 and f"{NODE}: redis-server is inactive" in found["problems"]
    finally:
        remote.run(node.inventory, host, "systemctl start redis-server")
    code, found = _status(lab_inventory)
    assert code == 0


def test_drain_sends_new_sessions_elsewhere_and_undrain_brings_the_node_back(
        node, lab_inventory):
    before = _stats(node)
    res = deploy("drain", NODE, "--wait", "3", "-i", str(lab_inventory), "--json")
    drained = json.loads(res.stdout)
    assert drained["ok"]
    try:
        states = {k: v["status"] for k, v in _stats(node).items() if k[1] == NODE}
        assert set(states.values()) == {"DRAIN"}, states
        code, found = _status(lab_inventory)  # a drained node is no problem
        assert code == 0
        assert {b["state"] for b in found["backends"] if b["node"] == NODE} == {"DRAIN"}
        # New sessions all go to the other node(s), by HAProxy's own count.
        for _ in range(10):
            with smtplib.SMTP(node.endpoint.address, 25, timeout=20,
                              local_hostname="client.lab") as smtp:
                smtp.noop()
        after = _stats(node)
        got = {n: int(after[("smtp", n)]["stot"]) - int(before[("smtp", n)]["stot"])
               for n in {k[1] for k in after}}
        assert got[NODE] == 0 and sum(got.values()) >= 10, got
        # Again: nothing to do.
        again = json.loads(deploy("drain", NODE, "--wait", "1", "-i", str(lab_inventory),
                                  "--json").stdout)
        assert again["steps"][0]["result"] == "already draining"
    finally:
        res = deploy("undrain", NODE, "-i", str(lab_inventory), "--json")
    back = json.loads(res.stdout)
    assert back["ok"] and back["steps"][-1]["result"] == "UP"
    assert {v["status"] for k, v in _stats(node).items() if k[1] == NODE} == {"UP"}
    again = json.loads(deploy("undrain", NODE, "-i", str(lab_inventory), "--json").stdout)
    assert again["steps"][0]["result"] == "already ready"
