"""A backup's manifest and `backup verify`, offline: a maildir staged as
`doveadm backup` leaves it (LAYOUT=fs), indexed by the node script run
here, stored sealed in a folder, then restored into a scratch folder and
checked; a tampered or truncated object and a wrong key are named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mailops.core.errors import MailopsError
from mailops.inventory.model import load_inventory
from mailops.ops import backup
from mailops.ops.sealed import Sealer, load_or_make_key
from mailops.ops.store import LocalStore
from tests.conftest import lab_inventory_copy


def _maildir(root: Path) -> None:
    """INBOX (the top folder), a nested folder and one with a non-ASCII name
    (modified UTF-7 on disk: "Entwürfe" is "Entw&APw-rfe")."""
    for folder, n in (("", 3), ("Projects/2026", 2), ("Entw&APw-rfe", 1)):
        for sub in ("cur", "new", "tmp"):
            (root / folder / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            text = (f"Message-ID: <m{i}.{len(folder)}@example.test>\r\nSubject: {folder} {i}"
                    f"\r\n\r\nbody {i}\r\n").encode()
            (root / folder / "cur" / f"17000000{i}.M1P1.mail1,S={len(text)}:2,S").write_bytes(
                text)
    (root / "Projects/2026" / "dovecot-keywords").write_text("0 $Important\n")


def _index(root: Path) -> dict:
    res = subprocess.run([sys.executable, "-c", backup.TOOL, "index", str(root)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


@pytest.fixture
def made(tmp_path, monkeypatch):
    """A one-mailbox backup in a folder, and an inventory pointing at it."""
    monkeypatch.setenv("MAILOPS_BACKUP_KEY_FILE", str(tmp_path / "key"))
    sealer = Sealer(load_or_make_key(tmp_path / "key", create=True))
    inv = load_inventory(lab_inventory_copy(tmp_path / "inv", "tbackup", "198.19.8"))
    _maildir(tmp_path / "stage")
    folders = backup.manifest_folders(_index(tmp_path / "stage"), sealer)
    store = LocalStore(tmp_path / "target")
    for folder in folders.values():
        for m in folder["messages"]:
            data = (tmp_path / "stage" / m["path"]).read_bytes()
            store.put(f"objects/{m['obj'][:2]}/{m['obj']}", sealer.seal(m["obj"], data))
    hosts = (inv.path / "hosts.yml").read_bytes()
    name = sealer.name(hosts)
    store.put(f"objects/{name[:2]}/{name}", sealer.seal(name, hosts))
    manifest = {"format": 1, "created": "2026-12-02T100000Z", "key_id": sealer.key_id,
                "mailboxes": {"alice@example.test": {"node": "mail2", "folders": folders,
                                                     "subscriptions": ""}},
                "files": {"hosts.yml": name}}
    snap = "snapshots/2026-12-02T100000Z.json"
    store.put(snap, sealer.seal(snap, json.dumps(manifest).encode()))
    return inv, store, folders


def test_the_manifest_names_folders_as_imap_does_with_counts_and_digests(made):
    _, _, folders = made
    names = {f["name"]: f["count"] for f in folders.values()}
    assert names == {"INBOX": 3, "Projects/2026": 2, "Entwürfe": 1}
    inbox = folders[""]
    assert inbox["msgid_digest"] == backup.msgid_digest(
        [f"<m{i}.0@example.test>" for i in range(3)])
    assert all(m["flags"] == "S" for m in inbox["messages"])
    assert folders["Projects/2026"]["keywords"] == "0 $Important\n"


def test_backup_verify_restores_into_scratch_and_finds_it_whole(made):
    inv, store, _ = made
    res = backup.verify_backup(inv, store.url)
    assert res.ok, res.table()
    assert [(r.what, r.folders, r.messages) for r in res.rows] == [
        ("alice@example.test", 3, 6), ("inventory files", 0, 1)]


def test_a_tampered_or_truncated_object_is_named_by_verify(made):
    inv, store, folders = made
    obj = folders["Projects/2026"]["messages"][0]["obj"]
    path = store.root / "objects" / obj[:2] / obj
    blob = path.read_bytes()
    path.write_bytes(blob[:-3] + b"xyz")
    res = backup.verify_backup(inv, store.url)
    assert not res.ok and obj in res.table() and "altered or truncated" in res.table()
    path.write_bytes(blob[:10])
    assert "truncated" in backup.verify_backup(inv, store.url).table()
    path.unlink()
    assert "missing from the backup" in backup.verify_backup(inv, store.url).table()


def test_the_wrong_key_and_an_empty_target_are_clear_errors(made, tmp_path, monkeypatch):
    inv, store, _ = made
    monkeypatch.setenv("MAILOPS_BACKUP_KEY_FILE", str(tmp_path / "other-key"))
    load_or_make_key(tmp_path / "other-key", create=True)
    with pytest.raises(MailopsError, match="does not open with this key"):
        backup.verify_backup(inv, store.url)
    with pytest.raises(MailopsError, match="no backup there"):
        backup.verify_backup(inv, str(tmp_path / "empty"))


def test_snapshots_are_chosen_by_date():
    store = LocalStore(Path("/nonexistent"))  # only names are listed
    store.names = lambda prefix: iter(["snapshots/2026-11-30T020000Z.json",  # type: ignore
                                       "snapshots/2026-12-01T020000Z.json",
                                       "snapshots/2026-12-02T020000Z.json"])
    assert backup.choose_snapshot(store).endswith("2026-12-02T020000Z.json")
    assert backup.choose_snapshot(store, "2026-12-01").endswith("2026-12-01T020000Z.json")
    assert backup.choose_snapshot(store, "2026-12-01T01:00").endswith("2026-11-30T020000Z.json")
    with pytest.raises(MailopsError, match="no backup made by then"):
        backup.choose_snapshot(store, "2026-11-01")
    with pytest.raises(MailopsError, match="not a date"):
        backup.choose_snapshot(store, "yesterday")


def test_restore_counts_repeated_message_ids():
    assert backup.missing_indexes(["a", "a", "b"], ["a"]) == [1, 2]
    assert backup.missing_indexes(["a"], ["a", "a"]) == []


def test_backup_settings_errors_name_the_file_and_key(tmp_path):
    from mailops.core.errors import InventoryError

    inv_path = lab_inventory_copy(tmp_path / "inv", "tbackup", "198.19.8")
    (inv_path / "group_vars" / "all" / "backup.yml").write_text(
        "mailops_backup:\n  url: /srv/b\n  keep_dayly: 3\n")
    with pytest.raises(InventoryError) as info:
        backup.settings(load_inventory(inv_path))
    assert info.value.key == "mailops_backup.keep_dayly"
    assert info.value.file.endswith("group_vars/all/backup.yml")


def test_a_fresh_controller_gets_the_inventory_back_and_nothing_is_overwritten(made,
                                                                              tmp_path):
    inv, store, _ = made
    dest = tmp_path / "new-controller" / "lab"
    written = backup.restore_inventory(store.url, tmp_path / "key", dest)
    assert written == ["hosts.yml"]
    assert (dest / "hosts.yml").read_bytes() == (inv.path / "hosts.yml").read_bytes()
    with pytest.raises(MailopsError, match="nothing is overwritten"):
        backup.restore_inventory(store.url, tmp_path / "key", dest)


def test_a_restore_report_names_the_mailboxes_that_did_not_come_back():
    res = backup.RestoreResult("file:///b", "snapshots/x.json")
    res.rows += [backup.RestoreRow("alice@example.test", "mail1", "INBOX", 3, 3, True),
                 backup.RestoreRow("carol@example.net", "mail2", "(every folder)", 5, 0, False,
                                   "not restored: object ab: does not open with this key")]
    assert not res.ok
    table = res.table()
    assert "1 of 2 mailbox(es) hold what the backup holds; NOT: carol@example.net" in table
    assert "FAILED not restored: object ab" in table
    res.rows.pop()
    res.rspamd["mail1"] = "FAILED: 0 of 4 learned messages back"
    assert not res.ok and "rspamd's learned data: mail1 FAILED" in res.table()
    res.rspamd["mail1"] = "4 learned message(s) restored"
    assert res.ok and res.to_dict()["rspamd"] == {"mail1": "4 learned message(s) restored"}
