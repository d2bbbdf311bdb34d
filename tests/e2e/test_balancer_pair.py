"""Two balancers with a floating address (keepalived: VRRP by unicast
between the lb hosts, HAProxy's health tracked, nopreempt). The MX and the
service name point at the floating address; exactly one balancer holds it.
When that one loses power under load the other takes the address over
within about three VRRP intervals, every message accepted before and after
is delivered once, and the one that comes back does not take the address
back. A holder whose HAProxy stops gives the address away too. Each test
leaves both balancers up."""

from __future__ import annotations

import contextlib
import re
import smtplib
import subprocess
import threading
import time
import uuid

import dns.resolver
import pytest

from mailops.lab.lab import Lab
from mailops.verify.mailclient import message
from mailops.verify.nodes import FLOATING_WATCH, floating_holders

pytestmark = pytest.mark.lab

ADVERT = 1.0  # keepalived__advert_int, seconds
def _holder(inv, timeout: float = 30) -> str:
    """The one balancer holding the floating address (waits for one)."""
    deadline = time.monotonic() + timeout
    while True:
        holders = floating_holders(inv)
        held = [n for n, h in holders.items() if h]
        if len(held) == 1:
            return held[0]
        assert time.monotonic() < deadline, f"held by {held or 'nobody'}: {holders}"
        time.sleep(0.5)


class _Sender(threading.Thread):
    """alice -> bob through the floating address on 587, five messages a
    session, a broken session replaced; bounded by count and time."""

    def __init__(self, node, run: str, limit: int = 240, seconds: float = 150) -> None:
        super().__init__(daemon=True)
        self.node, self.run_id, self.limit, self.seconds = node, run, limit, seconds
        self.stop = threading.Event()
        self.accepted: list[tuple[float, str]] = []  # (when, subject)
        self.failed = 0
        # Subjects whose try broke after the message was sent, before the
        # answer came back: the node may have stored it (the balancer died
        # with its 250), and the retry then stores it again (RFC 1047).
        self.unanswered: set[str] = set()

    def run(self) -> None:
        alice, password = self.node.account("alice@example.test")
        conn, i = None, 0
        deadline = time.monotonic() + self.seconds
        while not self.stop.is_set() and i < self.limit and time.monotonic() < deadline:
            subject = f"vrrp {self.run_id} {i:03d}"
            try:
                if conn is None or i % 5 == 0:
                    if conn is not None:
                        with contextlib.suppress(smtplib.SMTPException, OSError):
                            conn.quit()
                    conn = self.node.endpoint.smtp_tls(587)
                    conn.login(alice, password)
            except (smtplib.SMTPException, OSError):
                self.failed += 1
                conn = None
                time.sleep(0.2)
                continue
            try:
                if not conn.send_message(message(alice, ["bob@example.test"], subject)):
                    self.accepted.append((time.time(), subject))
                i += 1
            except (smtplib.SMTPException, OSError) as e:
                if not isinstance(e, smtplib.SMTPResponseException):
                    self.unanswered.add(subject)
                self.failed += 1
                conn = None
                time.sleep(0.2)
            time.sleep(0.05)
        if conn is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.quit()


def _bob_subjects(node, prefix: str) -> list[str]:
    """Every subject in bob's INBOX that starts with prefix, duplicates kept."""
    imap = node.endpoint.imap(*node.account("bob@example.test"))
    try:
        imap.select("INBOX", readonly=True)
        typ, data = imap.search(None, "SUBJECT", f'"{prefix}"')
        ids = data[0].split()
        if not ids:
            return []
        typ, data = imap.fetch(b",".join(ids).decode(), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return [m[1] for item in data if isinstance(item, tuple)
                if (m := re.search(r"Subject: (.*)", item[1].decode().strip()))]
    finally:
        imap.logout()


def test_the_mx_and_service_name_point_at_the_floating_address(node):
    inv = node.inventory
    vip = str(inv.floating_address)
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [str(inv.group("dns")[0].address)]
    res.cache = None
    name = node.model.service_name
    assert [r.address for r in res.resolve(name, "A")] == [vip]
    for domain in node.model.domains:
        mx = [str(r.exchange).rstrip(".") for r in res.resolve(domain, "MX")]
        assert mx == [name], (domain, mx)
        # Outbound mail leaves from the nodes, not the floating address:
        # SPF lists the nodes' own addresses.
        spf = [b"".join(r.strings).decode() for r in res.resolve(domain, "TXT")
               if b"".join(r.strings).startswith(b"v=spf1")]
        for host in inv.group("mail"):
            assert f"ip4:{host.address}" in spf[0], (domain, spf)
    # keepalived runs on both, each knowing only the other by unicast.
    lab = Lab(inv)
    for lb in inv.group("lb"):
        conf = lab.ssh(lb, "systemctl is-active keepalived && cat /etc/keepalived/keepalived.conf")
        assert conf.returncode == 0, (lb.name, conf.stdout, conf.stderr)
        peers = [str(h.address) for h in inv.group("lb") if h != lb]
        assert "nopreempt" in conf.stdout and all(p in conf.stdout for p in peers)
    assert _holder(inv) in {h.name for h in inv.group("lb")}


def test_power_off_the_holding_balancer_under_load(node):
    """The holder loses power (its init killed: no goodbye advert) while a
    client sends; the other balancer holds the address within about three
    advert intervals; every accepted message, before and after, is stored
    once (twice only where the dying balancer took the 250 with it and the
    client sent again); the returned balancer does not take the address back."""
    inv = node.inventory
    vip = str(inv.floating_address)
    lab = Lab(inv)
    holder = inv.host(_holder(inv))
    other = next(h for h in inv.group("lb") if h != holder)
    run = uuid.uuid4().hex[:8]
    watcher = subprocess.Popen([*lab.ssh_argv(other), "python3", "-", vip, "60"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    watcher.stdin.write(FLOATING_WATCH)
    watcher.stdin.close()
    assert watcher.stdout.readline().strip() == "ready"
    sender = _Sender(node, run)
    sender.start()
    try:
        deadline = time.monotonic() + 60
        while len(sender.accepted) < 30:
            assert time.monotonic() < deadline and sender.is_alive(), "30 accepted before"
            time.sleep(0.2)
        cut = time.time()
        with contextlib.suppress(subprocess.TimeoutExpired):  # its session dies with it
            lab.ssh(holder, "systemctl poweroff --force --force", timeout=10)
        seen = watcher.stdout.readline().split()
        watcher.wait(timeout=70)
        assert seen[:1] == ["held"], f"{other.name} never took {vip} over: {seen}"
        moved = float(seen[1]) - cut
        deadline = time.monotonic() + 60
        while len([t for t, _ in sender.accepted if t > cut + moved]) < 30:
            assert time.monotonic() < deadline and sender.is_alive(), "30 accepted after"
            time.sleep(0.2)
    finally:
        sender.stop.set()
        sender.join(timeout=60)
        with contextlib.suppress(ProcessLookupError):
            watcher.kill()
    print(f"{vip} moved {holder.name} -> {other.name} {moved:.2f} s after the power cut "
          f"({moved / ADVERT:.2f} advert intervals); accepted {len(sender.accepted)}, "
          f"failed tries {sender.failed}, unanswered {len(sender.unanswered)}")
    # About three intervals after the holder's last advert (and its last
    # advert came less than one interval before the cut); a second's slack
    # for a busy machine.
    assert 0 < moved < 3 * ADVERT + 1.0, moved
    before = [s for t, s in sender.accepted if t < cut]
    after = [s for t, s in sender.accepted if t > cut + moved]
    assert len(before) >= 30 and len(after) >= 30
    try:
        want = {s for _, s in sender.accepted}
        deadline = time.monotonic() + 120
        while True:
            got = _bob_subjects(node, f"vrrp {run}")
            if want <= set(got) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert want - set(got) == set(), "accepted but not delivered"
        twice = {s for s in got if got.count(s) > 1}
        # Only a message whose answer the dying balancer never passed on.
        assert twice <= sender.unanswered, f"stored twice: {sorted(twice)}"
        assert all(got.count(s) == 2 for s in twice), got
    finally:
        lab.up()  # power back on; its services start at boot
    # Back, healthy, and a backup: the address stays where it is (nopreempt).
    deadline = time.monotonic() + 90
    while lab.ssh(holder, "systemctl is-active keepalived haproxy").stdout.split() != [
            "active", "active"]:
        assert time.monotonic() < deadline, f"{holder.name} did not come back"
        time.sleep(1)
    time.sleep(4 * ADVERT)
    assert _holder(inv) == other.name


def test_a_holder_whose_haproxy_stops_gives_the_address_away(node):
    inv = node.inventory
    lab = Lab(inv)
    holder = inv.host(_holder(inv))
    other = next(h for h in inv.group("lb") if h != holder)
    stopped = lab.ssh(holder, "systemctl stop haproxy")
    assert stopped.returncode == 0, stopped.stderr
    try:
        t0 = time.monotonic()
        while _holder(inv, timeout=30) != other.name:
            assert time.monotonic() - t0 < 20, "the address stayed with a dead HAProxy"
            time.sleep(0.5)
        # Served through the floating address meanwhile.
        with node.endpoint.smtp_tls(587) as smtp:
            smtp.login(*node.account("alice@example.test"))
    finally:
        assert lab.ssh(holder, "systemctl start haproxy").returncode == 0
    time.sleep(4 * ADVERT)
    assert _holder(inv) == other.name  # nopreempt: it stays
