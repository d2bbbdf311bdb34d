"""Scaling out to two pairs, and moving a mailbox between them: the
session's lab gains mail3 and mail4 (the lab's mailboxes pinned where they
live, so none moves by itself), `move-mailbox` moves one to the new pair
with a client connected, and then the lab is put back as it was (the
mailbox moved back, the second pair removed) for the tests that follow."""

from __future__ import annotations

import imaplib
import re
import time
import uuid
from pathlib import Path

import pytest
import yaml

from mailops.verify.mailclient import message
from tests.conftest import deploy, message_ids

pytestmark = pytest.mark.lab

MOVED = "dave@example.net"
SEEDED = 30  # messages in the mailbox before the move, in two folders
NEW_NODES = {"mail3": 14, "mail4": 15}  # host part of the lab subnet's address


def _session_node(imap: imaplib.IMAP4) -> str:
    """Which node serves an IMAP session (x-mailops-node in its ID)."""
    imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))
    typ, data = imap._simple_command("ID", "NIL")
    ids = imap._untagged_response(typ, data, "ID")[1]
    text = b" ".join(d for d in ids if isinstance(d, bytes)).decode()
    found = re.search(r'"x-mailops-node" "([^"]*)"', text)
    return found[1] if found else ""


def _stored_on(inv, host, user: str, subject: str) -> int:
    from mailops.inventory import remote

    res = remote.run(inv, host, f"doveadm search -u {user} mailbox INBOX header subject "
                                f"'{subject}' 2>/dev/null")
    return len(res.stdout.split())


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.5)
    return value


def test_a_mailbox_moved_to_the_second_pair_is_stored_only_there(node, lab_inventory):
    from mailops.inventory.model import load_inventory
    from mailops.site.homes import homes
    from mailops.site.mailmodel import load_mail_model, set_mailbox_home

    hosts_file = Path(lab_inventory) / "hosts.yml"
    mail_file = Path(lab_inventory) / "group_vars" / "all" / "mail.yml"
    hosts_before, mail_before = hosts_file.read_text(), mail_file.read_text()
    inv = load_inventory(lab_inventory)
    old_home = homes(inv, load_mail_model(inv))[MOVED].node
    user, password = node.account(MOVED)
    run = uuid.uuid4().hex[:8]
    folder = f"Projects/{run}"  # nested, and new to this run
    try:
        # Pin every mailbox where it lives, then add the second pair.
        for address, home in homes(inv, load_mail_model(inv)).items():
            set_mailbox_home(inv, address, home.node)
        hosts = yaml.safe_load(hosts_before)
        net = str(next(iter(inv.group("mail"))).address).rsplit(".", 1)[0]
        hosts["all"]["children"]["mail"]["hosts"].update(
            {n: {"ansible_host": f"{net}.{k}"} for n, k in NEW_NODES.items()})
        hosts_file.write_text(yaml.safe_dump(hosts, sort_keys=False))
        up = deploy("up", "-i", str(lab_inventory), timeout=1800)
        assert "mail3" in up.stdout and "mail4" in up.stdout
        inv = load_inventory(lab_inventory)
        assert [h.name for h in inv.group("mail")] == ["mail1", "mail2", "mail3", "mail4"]
        # verify (part of up) found every node's sessions served by the home;
        # here again for a mailbox of the first pair from the second pair's nodes.
        verify = deploy("verify", "-i", str(lab_inventory), "--json")
        assert '"ok": true' in verify.stdout
        assert verify.stdout.count('"check": "IMAP session on the home node"') == 4

        # Seed the mailbox: two folders, flags.
        sent = []
        with node.endpoint.smtp_tls(587) as smtp:
            smtp.login(user, password)
            for i in range(SEEDED):
                msg = message(user, [user], f"move {run} {i:02d}")
                smtp.send_message(msg)
                sent.append(msg["Message-ID"])
        imap = node.endpoint.imap(user, password)
        _wait(lambda: len(message_ids(imap, "INBOX").keys() & set(sent)) == SEEDED, 60,
              "the seeded messages in INBOX")
        imap.create(f'"{folder}"')
        imap.select("INBOX")
        typ, data = imap.search(None, "ALL")
        ids = data[0].split()[-SEEDED:]
        imap.copy(b",".join(ids[:10]).decode(), f'"{folder}"')
        imap.store(b",".join(ids[:5]).decode(), "+FLAGS", r"(\Seen \Flagged)")
        before = {f: message_ids(imap, f) for f in ("INBOX", folder)}
        assert len(before[folder]) == 10
        imap.select("INBOX")
        assert _session_node(imap) == old_home

        # Move it to the second pair, the client still connected.
        moved = deploy("move-mailbox", MOVED, "--to", "mail3", "-i", str(lab_inventory),
                       "--json")
        assert '"ok": true' in moved.stdout, moved.stdout
        with pytest.raises((imaplib.IMAP4.abort, OSError)):
            for _ in range(20):  # kicked: the session ends within seconds
                imap.noop()
                time.sleep(0.5)
        imap = node.endpoint.imap(user, password)  # reconnects through the balancer
        assert _session_node(imap) == "mail3"
        after = {f: message_ids(imap, f) for f in ("INBOX", folder)}
        # Every message of the mailbox is there (the move checked each by
        # GUID too); this run's messages with their flags, the folder whole.
        assert before["INBOX"].keys() <= after["INBOX"].keys()
        assert {m: after["INBOX"][m] for m in sent} == {m: before["INBOX"][m] for m in sent}
        assert after[folder] == before[folder]
        imap.logout()

        # Handed to a node of the first pair, stored only on the second.
        inv = load_inventory(lab_inventory)
        from mailops.inventory import remote

        subject = f"move {run} after"
        res = remote.sendmail(inv, inv.host("mail1"), user, user, subject, "after the move")
        assert res.returncode == 0, res.stderr
        _wait(lambda: _stored_on(inv, inv.host("mail3"), user, subject), 60, "on mail3")
        _wait(lambda: _stored_on(inv, inv.host("mail4"), user, subject), 60, "on mail4")
        for name in ("mail1", "mail2"):
            # Not even the mailbox is there (doveadm would make it: not asked).
            gone = remote.run(inv, inv.host(name), "test -e /var/vmail/example.net/dave")
            assert gone.returncode == 1, f"the old copy is still on {name}"
    finally:
        # Put the lab back: the mailbox home again, the second pair gone.
        inv = load_inventory(lab_inventory)
        if homes(inv, load_mail_model(inv))[MOVED].node != old_home:
            deploy("move-mailbox", MOVED, "--to", old_home, "-i", str(lab_inventory))
        mail_file.write_text(mail_before)
        hosts_file.write_text(hosts_before)
        deploy("up", "-i", str(lab_inventory), timeout=1800)
    inv = load_inventory(lab_inventory)
    assert [h.name for h in inv.group("mail")] == ["mail1", "mail2"]
    from mailops.lab.lab import Lab

    lab = Lab(inv)
    assert not any((lab.dir / "hosts" / n).exists() for n in NEW_NODES)  # `lab up` removed them
    imap = node.endpoint.imap(user, password)
    assert message_ids(imap, folder) == before[folder]  # back, nothing lost
    imap.logout()
