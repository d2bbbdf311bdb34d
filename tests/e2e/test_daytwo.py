"""Day two on the session's lab: `status` shows the whole cluster and exits 1
when a service is down; `drain` takes a node out of the balancer (the test
counts, from HAProxy's own stats, where new sessions go), waits for open
sessions up to its bound and says what stays open; `undrain` gives the node
back once every health check passes. Both are no-ops when repeated."""

from __future__ import annotations

import contextlib
import json
import smtplib

import pytest

from mailops.verify.nodes import BACKEND, haproxy_states
from tests.conftest import deploy

pytestmark = pytest.mark.lab

NODE = "mail2"


def _stats(node) -> dict[tuple[str, str], dict[str, str]]:
    """The mail backends' rows on the balancer that holds the floating
    address: the clients' sessions are counted there."""
    from mailops.verify.nodes import floating_holders

    inv = node.inventory
    held = [n for n, h in floating_holders(inv).items() if h] if inv.floating_address else []
    lb = inv.host(held[0]) if len(held) == 1 else inv.group("lb")[0]
    return {k: v for k, v in haproxy_states(inv, lb).items() if k[0] in BACKEND.values()}


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
    states = {(b["service"], b["node"]): b["state"].split()[0] for b in found["backends"]}
    assert states == {(s, n): "UP" for s in BACKEND.values() for n in mail}  # "UP 2/3" too
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
    assert {v["status"].split()[0] for k, v in _stats(node).items() if k[1] == NODE} == {"UP"}
    again = json.loads(deploy("undrain", NODE, "-i", str(lab_inventory), "--json").stdout)
    assert again["steps"][0]["result"] == "already ready"


class _Load:
    """During a rolling update: `count` messages to one mailbox through the
    balancer (a refused one is tried again, as a sender's MTA would), and an
    IMAP session polling through the balancer (a dropped connection is
    reconnected, which a client does; a NO or BAD answer is an error it
    cannot retry). Bounded in count and time; stops by itself."""

    def __init__(self, node, user: str, password: str, count: int = 300,
                 seconds: float = 600) -> None:
        import threading

        self.node, self.user, self.password = node, user, password
        self.count, self.deadline = count, seconds
        self.accepted: list[str] = []
        self.resent = self.reconnects = 0
        self.fatal: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._poll, daemon=True)]

    def __enter__(self):
        import time

        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)

    def _left(self) -> bool:
        import time

        return time.monotonic() - self.t0 < self.deadline

    def _send(self) -> None:
        import time

        from mailops.verify.mailclient import message

        while len(self.accepted) < self.count and self._left():
            msg = message("sender@ext.test", [self.user], f"rolling {len(self.accepted):03d}")
            try:
                with smtplib.SMTP(self.node.endpoint.address, 25, timeout=30,
                                  local_hostname="client.lab") as smtp:
                    smtp.send_message(msg)
                self.accepted.append(msg["Message-ID"])
            except (OSError, smtplib.SMTPException):
                self.resent += 1
                time.sleep(0.5)
            time.sleep(0.1)

    def _poll(self) -> None:
        import imaplib
        import time

        imap = None
        while not self.stop.is_set() and self._left():
            try:
                if imap is None:
                    imap = self.node.endpoint.imap(self.user, self.password)
                typ, data = imap.select("INBOX", readonly=True)
                if typ != "OK":
                    self.fatal.append(f"SELECT: {typ} {data}")
                imap.noop()
            except imaplib.IMAP4.abort:  # the connection dropped: reconnect
                imap, self.reconnects = None, self.reconnects + 1
            except imaplib.IMAP4.error as e:  # a NO/BAD on a live session
                self.fatal.append(str(e))
                imap = None
            except OSError:
                imap, self.reconnects = None, self.reconnects + 1
            time.sleep(0.5)
        if imap is not None:
            with contextlib.suppress(OSError, imaplib.IMAP4.error):
                imap.logout()


def test_rolling_update_under_load_stores_every_message_once(node, lab_inventory, tmp_path):
    """A configuration change rolled out node by node while 300 messages
    arrive and an IMAP client polls: every accepted message stored once,
    the poller never gets an answer it cannot retry, and every node runs
    the new configuration at the end."""
    import shutil
    import time
    from collections import Counter

    from mailops.inventory import remote

    mail_yml = lab_inventory / "group_vars" / "all" / "mail.yml"
    saved = tmp_path / "mail.yml"
    shutil.copy2(mail_yml, saved)
    text = mail_yml.read_text()
    assert "mailops_message_size_limit: 10485760" in text
    mail_yml.write_text(text.replace("mailops_message_size_limit: 10485760",
                                     "mailops_message_size_limit: 10485761"))
    user, password = node.account("bob@example.test")
    try:
        with _Load(node, user, password) as load:
            res = deploy("rolling-update", "--wait", "10", "-i", str(lab_inventory), "--json",
                         timeout=1800)
            while len(load.accepted) < load.count and load._left():
                time.sleep(1)
        rolled = json.loads(res.stdout)
        nodes = [h.name for h in node.inventory.group("mail")]
        assert rolled["ok"] and rolled["done"] == nodes, res.stdout
        for host in node.inventory.group("mail"):
            limit = remote.run(node.inventory, host, "postconf -h message_size_limit")
            assert limit.stdout.strip() == "10485761", host.name
        assert len(load.accepted) == load.count, (len(load.accepted), load.resent)
        assert load.fatal == [], load.fatal
        wanted = set(load.accepted)
        deadline = time.monotonic() + 120
        while True:
            imap = node.endpoint.imap(user, password)
            imap.select("INBOX", readonly=True)
            typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            imap.logout()
            seen = Counter(item[1].decode().split(":", 1)[1].strip() for item in data
                           if isinstance(item, tuple))
            if wanted <= set(seen) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert wanted - set(seen) == set(), "lost"
        assert [m for m in wanted if seen[m] > 1] == [], "stored twice"
    finally:
        shutil.copy2(saved, mail_yml)
        deploy("converge", "-i", str(lab_inventory), timeout=1800)


def test_restart_a_service_one_node_at_a_time(node, lab_inventory):
    from mailops.inventory import remote

    def started() -> dict[str, str]:
        return {h.name: remote.run(node.inventory, h, "systemctl show -p "
                                   "ActiveEnterTimestampMonotonic --value dovecot").stdout.strip()
                for h in node.inventory.group("mail")}

    before = started()
    res = deploy("restart", "dovecot", "--wait", "5", "-i", str(lab_inventory), "--json",
                 timeout=900)
    rolled = json.loads(res.stdout)
    assert rolled["ok"] and rolled["done"] == list(before)
    after = started()
    assert all(after[n] != before[n] for n in before), (before, after)
    # One at a time: each node was undrained before the next was drained.
    order = [(s["node"], s["step"]) for s in rolled["steps"]]
    first, second = list(before)[:2]
    assert order.index((first, "undrain")) < order.index((second, "drain"))
    res = deploy("restart", "exim", "-i", str(lab_inventory), check=False)
    assert res.returncode == 2 and "invalid choice" in res.stderr
