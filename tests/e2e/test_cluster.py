"""The redundant cluster: two mail nodes behind HAProxy, tested through the
balancer's address with real clients. PROXY protocol (nodes see and log the
client's address), dsync replication (mail accepted on one node is read on
either), a bounded failover under load, `up` idempotence and `plan`."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import smtplib
import socket
import subprocess
import threading
import time
import uuid

import pytest

from mailops.verify.mailclient import inbox_subjects as inbox_subjects_of
from mailops.verify.mailclient import message
from mailops.verify.nodes import BACKEND
from tests.conftest import FIRST_UP, deploy

pytestmark = pytest.mark.lab

BACKENDS = tuple(BACKEND.values())


# ------------------------------------------------------------------ helpers


def lab_of(node):
    from mailops.lab.lab import Lab

    return Lab(node.inventory)


def ssh(node, host, command: str, timeout: float = 60) -> str:
    res = lab_of(node).ssh(host, command, timeout=timeout)
    assert res.returncode == 0, f"{host.name}: {command}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def haproxy(node, command: str) -> str:
    """A command on every balancer's admin socket (either may hold the
    floating address); the first one's answer."""
    out = [ssh(node, lb, f"echo '{command}' | socat - /run/haproxy/admin.sock")
           for lb in node.inventory.group("lb")]
    return out[0]


def server_states(node) -> dict[tuple[str, str], str]:
    """(backend, server) -> UP/DOWN/MAINT... of the mail backends, from the balancer's stats."""
    from mailops.verify.nodes import haproxy_states

    lb = node.inventory.group("lb")[0]
    return {key: row["status"] for key, row in haproxy_states(node.inventory, lb).items()
            if key[0] in BACKENDS}


def only_node(node, name: str | None) -> None:
    """Send every new session to one node (the others in maintenance), or,
    with None, to all of them again."""
    for backend in BACKENDS:
        for host in node.inventory.group("mail"):
            state = "ready" if name in (None, host.name) else "maint"
            haproxy(node, f"set server {backend}/{host.name} state {state}")


def inbox_subjects(node, user: str, prefix: str) -> set[str]:
    addr, password = node.account(user)
    return inbox_subjects_of(node.endpoint, addr, password, prefix)


def wait_for(predicate, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)


# ------------------------------------------------------------------ tests


def test_first_up_deployed_and_verified_the_cluster(node):
    out = FIRST_UP[0].stdout
    assert re.search(r"^verify: \d+ ok, \d+ warning\(s\), 0 failed$", out, re.M), out[-3000:]
    for port in (25, 587, 465, 143, 993, 110, 995):
        assert re.search(rf"^\S+ {port} \((STARTTLS|TLS)\)\s+lb1\+lb2 \S+:{port}\s+ok\b", out,
                         re.M), f"port {port} not verified through the balancer:\n{out}"
    for phase in ("lab", "bootstrap", "converge", "dns", "verify"):
        assert re.search(rf"^{phase}\s+\d+\s+[0-9.]+", out, re.M), f"no {phase} phase row"
    assert "how to connect" in out and "ca.crt" in out


def test_all_seven_ports_are_balanced_to_healthy_nodes(node):
    states = server_states(node)
    nodes = [h.name for h in node.inventory.group("mail")]
    assert set(states) == {(b, n) for b in BACKENDS for n in nodes}
    assert set(states.values()) == {"UP"}, states


def test_nodes_refuse_clients_that_bypass_the_balancer(node):
    mail1 = node.inventory.group("mail")[0]
    def first_bytes(port: int) -> bytes:
        with socket.create_connection((str(mail1.address), port), timeout=10) as s:
            try:
                return s.recv(200)
            except (TimeoutError, ConnectionResetError):
                return b""

    # Postfix waits for a PROXY header that a direct client never sends, then
    # gives up (421); Dovecot drops a client that is not a trusted balancer.
    for port in (25, 587):
        reply = first_bytes(port)
        assert not reply.startswith(b"220"), (port, reply)
    for port in (143, 110):
        reply = first_bytes(port)
        assert not reply.startswith((b"* OK", b"+OK")), (port, reply)


def test_node_log_shows_the_clients_real_address(node):
    client = str(node.inventory.lab.gateway)  # this machine, as the lab sees it
    balancers = [str(h.address) for h in node.inventory.group("lb")]
    addr, password = node.account("bob@example.test")
    msg = message(addr, [addr])
    node.endpoint.send(587, addr, password, msg)
    msgid = msg["Message-ID"]
    lines = ""
    for host in node.inventory.group("mail"):
        log = ssh(node, host, "journalctl --no-pager -q -o cat --since -10min "
                              "-t postfix/cleanup -t postfix/submission/smtpd")
        if (m := re.search(rf"^(\w+): message-id={re.escape(msgid)}", log, re.M)):
            lines = "\n".join(ln for ln in log.splitlines() if ln.startswith(m[1]))
            break
    assert lines, f"no node logged {msgid}"
    assert f"client=unknown[{client}]" in lines or f"[{client}]" in lines, lines
    assert not [lb for lb in balancers if f"[{lb}]" in lines], lines


def test_mail_accepted_by_one_node_is_read_on_every_node(node):
    """Delivered on node A (injected there), then read through the balancer
    with IMAP and POP3 while only A, then only B, serves sessions."""
    from mailops.verify.mailclient import wait_imap, wait_pop3

    mail1 = node.inventory.group("mail")[0]
    addr, password = node.account("carol@example.net")
    subject = f"replicated {uuid.uuid4().hex[:10]}"
    from mailops.inventory import remote

    res = remote.sendmail(node.inventory, mail1, addr, addr, subject, "hi")
    assert res.returncode == 0, res.stderr
    try:
        for host in node.inventory.group("mail"):
            only_node(node, host.name)
            t0 = time.monotonic()
            wait_imap(node.endpoint, addr, password, subject, timeout=15)
            wait_pop3(node.endpoint, addr, password, subject, timeout=15)
            print(f"{host.name}: read after {time.monotonic() - t0:.1f} s")
    finally:
        only_node(node, None)


def test_failover_loses_no_accepted_message(node):
    """300 messages through the balancer, the recipient's home node powered
    off part way. Every 250 is found later, read over IMAP through the
    balancer during the outage (delivered on the pair's other node); the
    balancer routes around the dead node within seconds; the node comes back,
    catches up and serves again, and no message is stored twice."""
    from mailops.lab.lab import Lab
    from mailops.site.homes import homes
    from tests.e2e.test_homes import stored

    addr, password = node.account("bob@example.test")
    mail2 = node.inventory.host(homes(node.inventory, node.model)[addr].node)
    run = uuid.uuid4().hex[:8]
    accepted: list[str] = []
    failed: list[str] = []
    deadline = time.monotonic() + 90  # the sender stops by itself

    def sender() -> None:
        # Five messages per session, as a busy client sends them; a session
        # that breaks is replaced by a new one (the balancer picks the node).
        conn = None
        for i in range(300):
            if time.monotonic() > deadline:
                break
            subject = f"failover {run} {i:03d}"
            try:
                if conn is None or i % 5 == 0:
                    if conn is not None:
                        conn.quit()
                    conn = node.endpoint.smtp_tls(587)
                    conn.login(addr, password)
                refused = conn.send_message(message(addr, [addr], subject))
                (failed if refused else accepted).append(subject)
            except (smtplib.SMTPException, OSError):
                failed.append(subject)
                conn = None
        if conn is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.quit()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    wait_for(lambda: len(accepted) >= 60, 60, "60 messages accepted before the stop")
    stopped = time.monotonic()
    with contextlib.suppress(subprocess.TimeoutExpired):  # the session dies with the host
        lab_of(node).ssh(mail2, "systemctl poweroff", timeout=10)
    wait_for(lambda: all(s != "UP" for (b, n), s in server_states(node).items()
                         if n == mail2.name), 15, "the balancer marks the stopped node down",
             every=0.2)
    routed_around = time.monotonic() - stopped
    thread.join(timeout=120)
    assert not thread.is_alive()
    print(f"accepted {len(accepted)}, not accepted {len(failed)}, "
          f"marked down after {routed_around:.1f} s")
    assert routed_around < 8
    assert len(accepted) >= 200, f"only {len(accepted)} of 300 accepted ({len(failed)} failed)"

    # While the home node is down, everything accepted is read on its pair.
    want = set(accepted)
    try:
        got = wait_for(lambda: want <= inbox_subjects(node, "bob@example.test",
                                                      f"failover {run}"),
                       60, "every accepted message read through the balancer during the outage",
                       every=2)
        assert got
    finally:
        Lab(node.inventory).up()  # boots the stopped node again, for the tests after this one
    wait_for(lambda: all(s == "UP" for (b, n), s in server_states(node).items()
                         if n == mail2.name), 90, "the returned node is UP in the balancer")
    try:
        for host in node.inventory.group("mail"):
            only_node(node, host.name)
            got = wait_for(lambda: want <= inbox_subjects(node, "bob@example.test",
                                                          f"failover {run}"),
                           90, f"every accepted message on {host.name}", every=2)
            assert got
    finally:
        only_node(node, None)
    for host in node.inventory.group("mail"):
        # A message can be stored although its client saw the session break
        # (it is not in `accepted`), so at least every accepted one, each once.
        copies = stored(node, host, addr, f"failover {run}")
        distinct = {m for m, _ in copies}
        assert len(copies) == len(distinct) >= len(want), \
            f"{host.name}: {len(copies)} copies of {len(distinct)} messages ({len(want)} accepted)"


def test_second_up_changes_nothing_and_dns_plan_is_empty(node, lab_inventory):
    res = deploy("up", "--json", "-i", str(lab_inventory), timeout=900)
    summary = json.loads(res.stdout)
    assert summary["changes"] == 0, [p for p in summary["phases"] if p["changes"]]
    assert summary["verify"]["ok"], summary["verify"]
    for key in ("service_name", "lb_address", "dns_server", "ca_file", "domains", "accounts"):
        assert summary[key], key
    assert summary["lb_address"] == str(node.inventory.floating_address)
    assert summary["accounts"] and all({"address", "password"} <= set(a)
                                       for a in summary["accounts"])
    # The printed account works through the balancer.
    first = summary["accounts"][0]
    node.endpoint.imap(first["address"], first["password"]).logout()
    plan = json.loads(deploy("dns", "plan", "--json", "-i", str(lab_inventory)).stdout)
    assert all(not z["changes"] for z in plan["zones"]), plan


def test_plan_shows_exactly_one_changed_setting_and_touches_nothing(node, lab_inventory,
                                                                     tmp_path):
    mail_yml = lab_inventory / "group_vars" / "all" / "mail.yml"
    saved = tmp_path / "mail.yml"
    shutil.copy2(mail_yml, saved)
    text = mail_yml.read_text()
    assert "mailops_message_size_limit: 10485760" in text
    mail_yml.write_text(text.replace("mailops_message_size_limit: 10485760",
                                     "mailops_message_size_limit: 20971520"))
    try:
        res = deploy("plan", "--json", "-i", str(lab_inventory), timeout=900)
    finally:
        shutil.copy2(saved, mail_yml)
    plan = json.loads(res.stdout)
    nodes = {h.name for h in node.inventory.group("mail")}
    tasks = [t for t in plan["converge"] if not t["handler"]]
    assert {t["host"] for t in tasks} == nodes and len(tasks) == len(nodes), plan["converge"]
    assert all("Postfix configuration" in t["task"] for t in tasks), tasks
    for t in tasks:
        changed = [ln for d in t["diff"] for ln in d.splitlines()
                   if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
        assert changed == ["-message_size_limit = 10485760",
                           "+message_size_limit = 20971520"], t["diff"]
    assert all(not z["changes"] for z in plan["dns"])
    for host in node.inventory.group("mail"):
        assert ssh(node, host, "postconf -h message_size_limit").strip() == "10485760"
