"""Backup building blocks, offline: the key, sealing (wrong key, truncated
or tampered objects refused with a clear error), content addresses,
retention, and the local store."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from mailops.core.errors import MailopsError
from mailops.ops import retention
from mailops.ops.sealed import Sealer, SealError, key_file, load_or_make_key
from mailops.ops.store import LocalStore, StoreError, open_store


def test_a_key_is_made_once_private_and_read_back(tmp_path):
    path = tmp_path / "keys" / "lab.backup-key"
    key = load_or_make_key(path, create=True)
    assert len(key) == 32 and oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_or_make_key(path, create=False) == key


def test_a_missing_or_broken_key_is_a_clear_error(tmp_path):
    with pytest.raises(MailopsError, match="no backup key there"):
        load_or_make_key(tmp_path / "none", create=False)
    bad = tmp_path / "bad"
    bad.write_text("not base64!\n")
    with pytest.raises(MailopsError, match="not a backup key"):
        load_or_make_key(bad, create=False)


def test_the_key_lives_outside_the_inventory_and_the_lab(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILOPS_BACKUP_KEY_FILE", raising=False)
    lab_key = key_file(tmp_path / "inv", "mtest")
    assert "labs" not in lab_key.parts and tmp_path not in lab_key.parents
    monkeypatch.setenv("MAILOPS_BACKUP_KEY_FILE", str(tmp_path / "k"))
    assert key_file(tmp_path / "inv", "mtest") == tmp_path / "k"


def test_same_content_same_name_and_names_do_not_reveal_a_plain_hash():
    import hashlib

    a, b = Sealer(b"a" * 32), Sealer(b"b" * 32)
    data = b"From: x\r\n\r\nhello\r\n"
    assert a.name(data) == a.name(data) != a.name(data + b"!")
    assert a.name(data) != b.name(data) != hashlib.sha256(data).hexdigest()


def test_a_sealed_object_opens_only_with_its_key_name_and_every_byte():
    s = Sealer(b"k" * 32)
    data = b"x" * 1000
    name = s.name(data)
    blob = s.seal(name, data)
    assert data not in blob and s.open(name, blob) == data
    assert s.seal(name, data) != blob  # a fresh nonce each time
    with pytest.raises(SealError, match="does not open with this key"):
        Sealer(b"o" * 32).open(name, blob)
    with pytest.raises(SealError, match="altered or truncated"):
        s.open(name, blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(SealError, match="does not open"):
        s.open("another-name", blob)  # moved to another object's place
    with pytest.raises(SealError, match="truncated"):
        s.open(name, blob[:20])


def test_retention_keeps_the_newest_per_day_and_per_week():
    now = datetime(2026, 12, 2, 3, 0)
    snaps = [now - timedelta(hours=12 * i) for i in range(60)]  # two a day for 30 days
    kept = retention.keep(snaps, daily=7, weekly=4)
    assert now in kept
    days = sorted({k.date() for k in kept}, reverse=True)
    assert days[:7] == [(now - timedelta(days=i)).date() for i in range(7)]
    # One per day, the newest of it, for the daily ones.
    for d in days[:7]:
        assert [k for k in kept if k.date() == d] == [max(s for s in snaps if s.date() == d)]
    weeks = {k.isocalendar()[:2] for k in kept}
    assert len(weeks) == 4 and len(kept) <= 7 + 4
    assert retention.keep(snaps, daily=0, weekly=0) == {now}
    assert retention.keep([], daily=3, weekly=3) == set()


def test_the_local_store_lists_gets_and_deletes(tmp_path):
    store = open_store(str(tmp_path / "b"))
    assert isinstance(store, LocalStore)
    for i in range(5):
        store.put(f"objects/{i:02x}/obj{i}", bytes([i]) * 10)
    store.put("snapshots/s1.json", b"{}")
    assert sorted(store.names("objects/")) == [f"objects/{i:02x}/obj{i}" for i in range(5)]
    assert store.get("objects/03/obj3") == b"\x03" * 10
    store.delete(["objects/03/obj3"])
    with pytest.raises(StoreError, match="missing from the backup"):
        store.get("objects/03/obj3")
    with pytest.raises(StoreError, match="not a name inside"):
        store.put("../escape", b"")


def test_a_target_that_is_neither_a_folder_nor_s3_is_refused():
    with pytest.raises(StoreError, match="not a backup target"):
        open_store("ftp://example.test/x")
    with pytest.raises(StoreError, match="no bucket"):
        open_store("s3:///prefix")
