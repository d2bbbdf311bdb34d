"""Backup and restore on the session lab: a mailbox with folders (nested,
non-ASCII), flags and keywords is backed up to a folder and to S3 (moto's
server on 127.0.0.1), verified, lost on both nodes of its pair, restored
with every message, folder and flag; a second backup of unchanged mail
stores nothing new, and a restore merges: mail newer than the backup stays
and nothing is stored twice."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

import pytest

from mailops.ops.backup import REDIS_LEARNED
from mailops.verify.mailclient import message
from tests.conftest import deploy

pytestmark = pytest.mark.lab

USER = "carol@example.net"
RUN = uuid.uuid4().hex[:8]
FOLDERS = (f"Archive/{RUN}", f"Entwürfe {RUN}")  # nested; non-ASCII, with a space
SEEDED = 24


def _imap_folder(name: str) -> str:
    """An IMAP folder name as imaplib sends it (modified UTF-7, quoted)."""
    import base64

    out, buf = [], ""
    for ch in name + "\0":
        if ch != "\0" and not (0x20 <= ord(ch) <= 0x7e):
            buf += ch
            continue
        if buf:
            b64 = base64.b64encode(buf.encode("utf-16-be")).decode().rstrip("=")
            out.append("&" + b64.replace("/", ",") + "-")
            buf = ""
        if ch != "\0":
            out.append("&-" if ch == "&" else ch)
    return '"' + "".join(out) + '"'


def _contents(imap, folders: tuple[str, ...] = FOLDERS) -> dict[str, dict[str, str]]:
    """Folder -> Message-ID -> flags (without \\Recent) and received date."""
    out = {}
    for name in ("INBOX", *folders):
        typ, _ = imap.select(_imap_folder(name), readonly=True)
        assert typ == "OK", name
        typ, data = imap.fetch("1:*", "(FLAGS INTERNALDATE "
                                      "BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        found = {}
        for item in data:
            if isinstance(item, tuple):
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])[1].decode().split()
                date = re.search(rb'INTERNALDATE "([^"]*)"', item[0])[1].decode()
                msgid = item[1].decode().split(":", 1)[1].strip()
                found[msgid] = " ".join(sorted(set(flags) - {"\\Recent"})) + " | " + date
        out[name] = found
    return out


def _lose_mailbox(node) -> None:
    """The mailbox is gone from both nodes of its pair."""
    from mailops.inventory import remote

    for host in node.inventory.group("mail"):
        res = remote.run(node.inventory, host,
                         f"doveadm replicator remove {USER} >/dev/null 2>&1; "
                         f"doveadm kick {USER} >/dev/null 2>&1; "
                         f"rm -rf /var/vmail/example.net/carol")
        assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def seeded(node):
    user, password = node.account(USER)
    run = RUN
    with node.endpoint.smtp_tls(587) as smtp:
        smtp.login(user, password)
        for i in range(SEEDED):
            smtp.send_message(message(user, [user], f"backup {run} {i:02d}"))
    imap = node.endpoint.imap(user, password)
    deadline = time.monotonic() + 60
    while True:
        imap.select("INBOX")
        ids = imap.search(None, "SUBJECT", f'"backup {run}"')[1][0].split()
        if len(ids) >= SEEDED or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(ids) == SEEDED
    for k, folder in enumerate(FOLDERS):
        imap.create(_imap_folder(folder))
        part = b",".join(ids[k * 8:(k + 1) * 8]).decode()
        assert imap.copy(part, _imap_folder(folder))[0] == "OK"
    imap.store(b",".join(ids[:4]).decode(), "+FLAGS", r"(\Seen \Flagged)")
    imap.store(b",".join(ids[4:6]).decode(), "+FLAGS", r"(\Answered $Important)")
    imap.select(_imap_folder(FOLDERS[1]))
    imap.store("1:2", "+FLAGS", r"(\Seen)")
    before = _contents(imap)
    imap.logout()
    assert len(before[FOLDERS[0]]) == 8 and len(before[FOLDERS[1]]) == 8
    return before


def test_backup_verify_lose_and_restore_a_mailbox(node, lab_inventory, seeded, tmp_path):
    inv = str(lab_inventory)
    target = tmp_path / "backups"
    first = json.loads(deploy("backup", "-i", inv, "--to", str(target), "--json").stdout)
    carol = next(r for r in first["mailboxes"] if r["address"] == USER)
    assert carol["messages"] >= SEEDED + 16
    # The 16 copies in folders are the INBOX's messages: stored once.
    assert SEEDED <= carol["new"] <= carol["messages"] - 16
    # INBOX and the two folders (empty special folders are made on first use).
    assert carol["folders"] >= 3
    assert Path(first["key"]).exists() and not Path(first["key"]).is_relative_to(target)
    # Nothing is in clear in the target: no subject, no address.
    blob = b"".join(p.read_bytes() for p in target.rglob("*") if p.is_file())
    assert b"carol" not in blob and b"backup " not in blob and b"Message-ID" not in blob

    # Unchanged mail: the second backup stores no new object.
    second = json.loads(deploy("backup", "-i", inv, "--to", str(target), "--json").stdout)
    assert sum(r["new"] for r in second["mailboxes"]) == 0
    assert sum(r["bytes_sent"] for r in second["mailboxes"]) == 0
    # Retention keeps the newest backup of each day: the first one goes, and
    # no object with it (the second names them all).
    assert second["deleted_snapshots"] == [first["snapshot"]]
    assert second["deleted_objects"] == 0
    assert [p.name for p in (target / "snapshots").iterdir()] == \
        [Path(second["snapshot"]).name]

    verified = deploy("backup", "verify", "-i", inv, "--from", str(target))
    assert "the backup restores as its manifest says" in verified.stdout

    _lose_mailbox(node)
    user, password = node.account(USER)
    restored = deploy("restore", "-i", inv, "--from", str(target), "--mailbox", USER,
                      "--json")
    report = json.loads(restored.stdout)
    assert report["ok"], restored.stdout
    imap = node.endpoint.imap(user, password)
    assert _contents(imap) == seeded  # every message, folder and flag
    imap.logout()

    # Merge, not replace: a message newer than the backup stays, and a second
    # restore stores nothing twice.
    fresh = message(user, [user], "after the backup")
    with node.endpoint.smtp_tls(587) as smtp:
        smtp.login(user, password)
        smtp.send_message(fresh)
    time.sleep(3)
    again = json.loads(deploy("restore", "-i", inv, "--from", str(target), "--mailbox", USER,
                              "--json").stdout)
    assert again["ok"] and sum(r["restored"] for r in again["folders"]) == 0
    imap = node.endpoint.imap(user, password)
    now = _contents(imap)
    imap.logout()
    assert now["INBOX"].keys() == seeded["INBOX"].keys() | {fresh["Message-ID"]}
    assert {f: now[f] for f in FOLDERS} == {f: seeded[f] for f in FOLDERS}


def test_backup_to_s3_and_restore_from_it(node, lab_inventory, seeded, tmp_path):
    import boto3

    from tests.integration.dns import loopback

    server = loopback.which(str(Path(__file__).resolve().parents[2] / ".venv/bin/moto_server"))
    proc, url = loopback.start_moto(server, tmp_path / "moto.log")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": url,
           "AWS_EC2_METADATA_DISABLED": "true"}
    try:
        s3 = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                   region_name="us-east-1").client("s3", endpoint_url=url)
        missing = deploy("backup", "-i", str(lab_inventory), "--to", "s3://mailops-dr/lab",
                         env=env, check=False)
        assert missing.returncode == 1
        assert "the bucket mailops-dr does not exist" in missing.stderr
        s3.create_bucket(Bucket="mailops-dr")
        deploy("backup", "-i", str(lab_inventory), "--to", "s3://mailops-dr/lab", env=env)
        # One page holds 1000 keys and objects/ sorts before snapshots/.
        listed = s3.list_objects_v2(Bucket="mailops-dr", Prefix="lab/snapshots/")
        assert listed.get("KeyCount", 0) >= 1, listed
        _lose_mailbox(node)
        res = deploy("restore", "-i", str(lab_inventory), "--from", "s3://mailops-dr/lab",
                     "--mailbox", USER, env=env)
        assert "1 of 1 mailbox(es) hold what the backup holds" in res.stdout
        user, password = node.account(USER)
        imap = node.endpoint.imap(user, password)
        now = _contents(imap)
        imap.logout()
        for folder in FOLDERS:
            assert now[folder] == seeded[folder]
        assert seeded["INBOX"].keys() <= now["INBOX"].keys()
    finally:
        loopback.stop(proc)


def test_a_bad_object_stops_one_mailbox_and_says_so_the_rest_come_back(node, lab_inventory,
                                                                       seeded, tmp_path):
    """A whole-service restore where one of carol's objects was altered in the
    store: carol is left as she was and named, every other mailbox is
    restored, the exit status says it failed; with the object repaired, a
    re-run brings carol back."""
    from mailops.ops import backup
    from mailops.ops.sealed import Sealer, load_or_make_key
    from mailops.ops.store import LocalStore

    inv = str(lab_inventory)
    user, password = node.account(USER)
    imap = node.endpoint.imap(user, password)
    before = _contents(imap)
    imap.logout()
    target = tmp_path / "bad"
    made = json.loads(deploy("backup", "-i", inv, "--to", str(target), "--json").stdout)
    store = LocalStore(target)
    sealer = Sealer(load_or_make_key(Path(made["key"]), create=False))
    manifest = backup.read_manifest(store, sealer, backup.choose_snapshot(store))
    obj = next(iter(manifest["mailboxes"][USER]["folders"].values()))["messages"][0]["obj"]
    path = target / "objects" / obj[:2] / obj
    good = path.read_bytes()
    path.write_bytes(good[:40] + bytes([good[40] ^ 1]) + good[41:])

    _lose_mailbox(node)
    res = deploy("restore", "-i", inv, "--from", str(target), "--json", check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads(res.stdout)
    bad = [r for r in report["folders"] if not r["ok"]]
    assert [r["address"] for r in bad] == [USER], report
    assert "not restored" in bad[0]["detail"] and obj in bad[0]["detail"]
    assert {r["address"] for r in report["folders"]} - {USER}  # the others were restored
    imap = node.endpoint.imap(user, password)
    assert imap.select("INBOX", readonly=True)[1] == [b"0"]  # nothing half-way
    imap.logout()
    table = deploy("restore", "-i", inv, "--from", str(target), "--mailbox", USER,
                   check=False)
    assert table.returncode == 1 and f"NOT: {USER}" in table.stdout

    path.write_bytes(good)
    again = json.loads(deploy("restore", "-i", inv, "--from", str(target), "--json").stdout)
    assert again["ok"], again
    imap = node.endpoint.imap(user, password)
    assert _contents(imap) == before
    imap.logout()


def _on(node, host, command: str, stdin: str | None = None) -> str:
    from mailops.inventory import remote

    res = remote.run(node.inventory, host, command, stdin=stdin)
    assert res.returncode == 0, (command, res.stdout, res.stderr)
    return res.stdout


def _dkim_record(node) -> str:
    import dns.resolver

    ns = node.inventory.group("dns")[0]
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [str(ns.address)]
    answer = res.resolve(f"{node.model.dkim_selector}._domainkey.example.net", "TXT",
                         lifetime=10)
    return b"".join(b"".join(r.strings) for r in answer).decode()


# The whole-cluster test's extra mail: two mailboxes (their homes on both
# nodes), several folders each, flags and keywords, 500 messages with the
# seeded ones.
BULK_FOLDERS = (f"Reports/{RUN}", f"Reports/{RUN}/Q4", f"Kunden & Partner {RUN}")
BULK_FLAGS = ("", r"\Seen", r"\Seen \Flagged", r"\Answered", r"\Seen $Important")


def _append_bulk(node, user: str, count: int) -> None:
    """`count` messages appended over IMAP through the balancer, spread over
    INBOX and BULK_FOLDERS, with flags."""

    address, password = node.account(user)
    imap = node.endpoint.imap(address, password)
    for folder in BULK_FOLDERS:
        imap.create(_imap_folder(folder))
    boxes = ("INBOX", *BULK_FOLDERS)
    for i in range(count):
        msg = message(address, [address], f"bulk {RUN} {i:03d}")
        flags = BULK_FLAGS[i % len(BULK_FLAGS)]
        typ, _ = imap.append(_imap_folder(boxes[i % len(boxes)]),
                             f"({flags})" if flags else None,
                             time.time() - 86400 * (i % 30), msg.as_bytes())
        assert typ == "OK", (user, i)
    imap.logout()


def _everything(node, users: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    out = {}
    for user, folders in users.items():
        address, password = node.account(user)
        imap = node.endpoint.imap(address, password)
        out[user] = _contents(imap, folders)
        imap.logout()
    return out


def test_whole_cluster_loss_then_up_and_restore_brings_everything_back(node, lab_inventory,
                                                                        seeded, tmp_path):
    """Every host destroyed (the inventory and its vault kept, as a backup
    would hold them): `up` makes the cluster anew with the same secrets and
    `restore` brings every mailbox back: 500 messages in several folders,
    with flags, Message-ID sets and flags equal per folder."""
    inv = str(lab_inventory)
    user, password = node.account(USER)
    other = "alice@example.test"
    bulk = 500 - sum(len(v) for v in seeded.values())
    _append_bulk(node, USER, bulk // 2)
    _append_bulk(node, other, bulk - bulk // 2)
    users = {USER: FOLDERS + BULK_FOLDERS, other: BULK_FOLDERS}
    everything = _everything(node, users)
    assert sum(len(f) for box in everything.values() for f in box.values()) >= 500
    imap = node.endpoint.imap(user, password)
    before = _contents(imap)
    imap.logout()
    dkim = _dkim_record(node)
    # rspamd's learned data: one message learned as spam on the first node.
    mail1 = node.inventory.group("mail")[0]
    words = " ".join(f"offer{i} cheap{i} pills{i} winner{i}" for i in range(30))
    spam = message("promo@example.org", [user], f"spam {RUN}", body=words + "\n")
    taught = _on(node, mail1, "rspamc learn_spam", stdin=spam.as_string())
    assert "success = true" in taught.replace('"', ""), taught
    learned = 0
    for _ in range(75):  # rspamd re-reads its counts from Redis every 30 s or so
        learned = int(_on(node, mail1, REDIS_LEARNED).strip())
        if learned:
            break
        time.sleep(1)
    assert learned >= 1
    target = tmp_path / "dr"
    deploy("backup", "-i", inv, "--to", str(target))

    deploy("lab", "down", "-i", inv)  # every host gone, its mail with it
    deploy("up", "-i", inv, timeout=1800)
    imap = node.endpoint.imap(user, password)  # the old password still works
    assert imap.select("INBOX", readonly=True)[1] == [b"0"]  # a new, empty cluster
    imap.logout()

    res = deploy("restore", "-i", inv, "--from", str(target), "--json")
    report = json.loads(res.stdout)
    assert report["ok"], res.stdout
    assert {r["address"] for r in report["folders"]} >= {USER, "alice@example.test"}
    imap = node.endpoint.imap(user, password)
    assert _contents(imap) == before  # every message, folder, flag and date
    imap.logout()
    assert _everything(node, users) == everything
    assert int(_on(node, mail1, REDIS_LEARNED).strip()) == learned, report["rspamd"]
    assert _dkim_record(node) == dkim  # same selector, same key
    plan = json.loads(deploy("dns", "plan", "--json", "-i", inv).stdout)
    assert all(z["summary"] == {"create": 0, "update": 0, "delete": 0} for z in plan["zones"])


def test_a_lost_postfix_queue_comes_back_from_the_backup(node, lab_inventory, tmp_path):
    """A message deferred on a node (the other domain's server down) is in
    the backup; the node's queue is lost; `restore --queue` puts it back
    and it is delivered, once, when the other server returns."""
    from mailops.inventory import remote

    inv = node.inventory
    ext = inv.group("external")[0]
    user, password = node.account(USER)
    rcpt = f"queued-{uuid.uuid4().hex[:8]}@ext.test"
    subject = f"queued {rcpt}"

    def queued_on() -> str | None:
        for host in inv.group("mail"):
            out = remote.run(inv, host, "postqueue -j").stdout
            if rcpt in out:
                return host.name
        return None

    assert remote.run(inv, ext, "systemctl stop postfix").returncode == 0
    try:
        with node.endpoint.smtp_tls(587) as smtp:
            smtp.login(user, password)
            smtp.send_message(message(user, [rcpt], subject))
        deadline = time.monotonic() + 60
        while (where := queued_on()) is None and time.monotonic() < deadline:
            time.sleep(1)
        assert where, "the message was not deferred on a node"
        target = tmp_path / "q"
        out = deploy("backup", "-i", str(lab_inventory), "--to", str(target), "--json").stdout
        assert json.loads(out)["queues"][where] != "0 message(s)"
        host = inv.host(where)
        assert remote.run(inv, host, "postsuper -d ALL").returncode == 0  # the queue is lost
        assert queued_on() is None
        res = deploy("restore", "-i", str(lab_inventory), "--from", str(target), "--queue",
                     where)
        assert "re-queued" in res.stdout
        assert queued_on() == where
    finally:
        remote.run(inv, ext, "systemctl start postfix")
    for host in inv.group("mail"):
        remote.run(inv, host, "postqueue -f")
    grep = f"grep -l -F 'Subject: {subject}' /home/catchall/Maildir/new/* 2>/dev/null | wc -l"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if remote.run(inv, ext, grep).stdout.strip() != "0":
            break
        time.sleep(2)
    time.sleep(3)
    assert remote.run(inv, ext, grep).stdout.strip() == "1"  # delivered, once
    assert queued_on() is None
