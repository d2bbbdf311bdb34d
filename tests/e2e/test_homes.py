"""Every mailbox has a home node: mail spread over both nodes by the
balancer is delivered on each recipient's home and stored exactly once on
both replicas (no copy made twice by concurrent two-way dsync)."""

from __future__ import annotations

import contextlib
import smtplib
import threading
import time
import uuid

import pytest

from mailops.verify.mailclient import message
from tests.conftest import session_node

pytestmark = pytest.mark.lab

RECIPIENTS = ("alice@example.test", "bob@example.test", "carol@example.net",
              "dave@example.net")
MESSAGES = 1000
SENDERS = 4  # parallel client sessions through the balancer
PER_SESSION = 25
SEND_BOUND = 240  # seconds: the senders stop by themselves


def stored(node, host, user: str, prefix: str) -> list[tuple[str, str]]:
    """(Message-ID, GUID) of every stored copy of the run's messages in a
    mailbox on one node, read with doveadm on that node."""
    from mailops.inventory import remote

    res = remote.run(node.inventory, host,
                     f"doveadm fetch -u {user} 'guid hdr' mailbox INBOX header subject "
                     f"'{prefix}'", timeout=120)
    assert res.returncode == 0, res.stderr
    copies = []
    for record in res.stdout.split("\f"):
        guid = msgid = ""
        for line in record.splitlines():
            if line.startswith("guid: "):
                guid = line.split(": ", 1)[1].strip()
            elif line.lower().startswith("message-id:"):
                msgid = line.split(":", 1)[1].strip()
        if guid:
            copies.append((msgid, guid))
    return copies


def test_mail_spread_over_both_nodes_is_stored_once_on_each_replica(node):
    user, password = node.account(RECIPIENTS[0])
    run = uuid.uuid4().hex[:8]
    prefix = f"homes {run}"
    sent: dict[str, set[str]] = {r: set() for r in RECIPIENTS}
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + SEND_BOUND

    def sender(k: int) -> None:
        conn = None
        for i in range(k, MESSAGES, SENDERS):
            if time.monotonic() > deadline:
                break
            rcpt = RECIPIENTS[i % len(RECIPIENTS)]
            msg = message(user, [rcpt], f"{prefix} {i:04d}")
            try:
                if conn is None or i // SENDERS % PER_SESSION == 0:
                    if conn is not None:
                        conn.quit()
                    conn = node.endpoint.smtp_tls(587)  # a new session: the balancer picks
                    conn.login(user, password)
                if not conn.send_message(msg):
                    with lock:
                        sent[rcpt].add(msg["Message-ID"])
            except (smtplib.SMTPException, OSError) as e:
                with lock:
                    errors.append(f"{i}: {e}")
                conn = None
        if conn is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.quit()

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(SENDERS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=SEND_BOUND + 60)
    accepted = sum(len(s) for s in sent.values())
    print(f"{accepted} of {MESSAGES} accepted in {time.monotonic() - t0:.1f} s; "
          f"{len(errors)} error(s) {errors[:3]}")
    assert not any(t.is_alive() for t in threads)
    assert accepted == MESSAGES, errors[:5]

    # Both replicas, every mailbox: each accepted message once, none lost.
    mail = node.inventory.group("mail")
    deadline = time.monotonic() + 180
    while True:
        found = {(h.name, r): stored(node, h, r, prefix) for h in mail for r in RECIPIENTS}
        complete = all({m for m, _ in found[(h.name, r)]} >= sent[r]
                       for h in mail for r in RECIPIENTS)
        if complete or time.monotonic() > deadline:
            break
        time.sleep(3)
    time.sleep(5)  # a late second copy would show now
    found = {(h.name, r): stored(node, h, r, prefix) for h in mail for r in RECIPIENTS}
    table = []
    for (host, rcpt), copies in sorted(found.items()):
        ids = [m for m, _ in copies]
        table.append(f"{host} {rcpt}: {len(set(ids))} distinct, {len(copies)} copies, "
                     f"{len(sent[rcpt] - set(ids))} missing")
    print("\n".join(table))
    for (host, rcpt), copies in found.items():
        ids = [m for m, _ in copies]
        assert set(ids) == sent[rcpt], f"{host} {rcpt}: missing {len(sent[rcpt] - set(ids))}"
        assert len(ids) == len(set(ids)), "\n".join(table)
        assert len({g for _, g in copies}) == len(copies), "\n".join(table)


def test_sessions_on_any_node_are_served_by_the_home_with_the_clients_address(node):
    """IMAP and POP3 through the balancer (round robin over both nodes): the
    home node serves every session, the other node proxies the ones it
    takes, and the home node logs the client's address, not its peer's."""
    from mailops.inventory import remote
    from mailops.site.homes import BACKEND_PORTS
    from mailops.verify.service import service_for

    user, password = node.account(RECIPIENTS[0])
    inv = node.inventory
    home = service_for(inv).homes[user].node
    home_host = inv.host(home)
    other = next(h for h in inv.group("mail") if h.name != home)
    since = remote.run(inv, home_host, "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
    served = []
    for _ in range(6):  # the balancer alternates: both nodes take some
        imap = node.endpoint.imap(user, password)
        served.append(session_node(imap))
        imap.logout()
        pop = node.endpoint.pop3(user, password)
        assert pop.stat()[0] >= 0
        pop.quit()
    assert served == [home] * 6

    def log(host, what: str) -> list[str]:
        res = remote.run(inv, host, f"journalctl -u dovecot --since '{since}' --no-pager "
                                    f"| grep -F '{what}'")
        return res.stdout.splitlines()

    for proto, port in (("imap", BACKEND_PORTS["imap"]), ("pop3", BACKEND_PORTS["pop3"])):
        proxied = log(other, f"{proto}-login: proxy({user},{home_host.address}:{port}): "
                             "Started proxying")
        assert proxied, f"{other.name} proxied no {proto} session of {user} to {home}"
        logins = log(home_host, f"{proto}-login: Login: user=<{user}>")
        assert len(logins) >= 6, logins
        # Through the proxy too, the home node logs the client (this machine).
        assert not [ln for ln in logins if f"rip={other.address}," in ln], logins
