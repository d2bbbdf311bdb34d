"""`deploy.py backup`, `restore` and `backup verify`: every mailbox as mail,
encrypted on the controller, content-addressed and incremental.

A backup reads each mailbox on its home node (its pair's other node when
the home does not answer) from a staged copy that `doveadm backup` makes
next to the store (consistent per folder, unlike a tar of live files, and
itself incremental on the node). The node reports every message's SHA-256;
only messages the target does not hold yet are sent, sealed (mailops.ops
.sealed) and stored under their content address. A snapshot's manifest
(sealed too) lists per mailbox and folder each message (object, flags,
size, Message-ID), the count, the size and a digest of the Message-ID set,
and the inventory's files (the vault as it is, still encrypted). Snapshots
beyond the retention are deleted, then the objects no kept snapshot names.

Restore merges, never replaces: per folder, only the manifest's messages
whose Message-ID the live folder lacks are staged on the home node and
brought in with `doveadm import` (flags and keywords kept); mail newer than
the backup stays. Afterwards every folder is checked against the manifest.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailops.core.errors import InventoryError, MailopsError
from mailops.core.progress import step
from mailops.inventory import remote
from mailops.inventory.model import Host, Inventory
from mailops.ops import retention
from mailops.ops.sealed import Sealer, key_file, load_or_make_key
from mailops.ops.store import Store, open_store
from mailops.site.homes import homes
from mailops.site.mailmodel import load_mail_model

TOOL = (Path(__file__).parent / "remote" / "maildir_tool.py").read_text()
STAGE = "/var/vmail/.mailops-stage"  # beside the store: same disk, vmail's
SPOOL = "/var/spool/postfix"
QUEUES = ("incoming", "active", "deferred", "hold")
VMAIL = "vmail"
# How many messages this node's rspamd has learned (Bayes), from `rspamc stat`.
REDIS_LEARNED = ("out=$(rspamc stat) && printf '%s\\n' \"$out\" | awk '/^Statfile:/ "
                 "{for (i = 1; i < NF; i++) if ($i == \"learned:\") "
                 "{v = $(i + 1); sub(\";\", \"\", v); s += v}} END {print s + 0}'")
# A digest of the Redis dataset's contents (every key's serialized value, in
# key order), unlike an RDB file, which also carries when it was made.
REDIS_DIGEST = ("set -o pipefail; redis-cli --scan | LC_ALL=C sort | sed 's/^/DUMP /' "
                "| redis-cli | sha256sum")
SNAP_FORMAT = "%Y-%m-%dT%H%M%SZ"
BACKUP_FILE = "backup.yml"  # group_vars/all/<this>: mailops_backup


@dataclass(frozen=True)
class Settings:
    url: str
    region: str | None = None
    endpoint_url: str | None = None
    keep_daily: int = 7
    keep_weekly: int = 4


def settings(inventory: Inventory, url: str | None = None) -> Settings:
    """mailops_backup from the inventory; --to/--from overrides its url."""
    raw = inventory.site_vars().get("mailops_backup") or {}
    file = inventory.defined_in("mailops_backup", BACKUP_FILE)
    if not isinstance(raw, dict):
        raise InventoryError(file, "mailops_backup", "is not a mapping",
                             "write `mailops_backup: {url: s3://BUCKET/PREFIX}`")
    unknown = set(raw) - {"url", "region", "endpoint_url", "keep_daily", "keep_weekly"}
    if unknown:
        raise InventoryError(file, f"mailops_backup.{sorted(unknown)[0]}", "is not a setting",
                             "use url, region, endpoint_url, keep_daily, keep_weekly")
    for key in ("keep_daily", "keep_weekly"):
        if key in raw and (not isinstance(raw[key], int) or raw[key] < 0):
            raise InventoryError(file, f"mailops_backup.{key}", f"{raw[key]!r} is not a count",
                                 "give a whole number of backups to keep, e.g. 7")
    target = url or raw.get("url")
    if not target:
        if inventory.lab is None:
            raise InventoryError(file, "mailops_backup.url", "no backup target",
                                 "set it (a folder or s3://BUCKET/PREFIX), or give --to")
        from mailops.core.paths import STATE_ROOT

        target = str(STATE_ROOT / "backups" / inventory.lab.name)
    return Settings(target, raw.get("region"), raw.get("endpoint_url"),
                    raw.get("keep_daily", 7), raw.get("keep_weekly", 4))


def _tool(args: str) -> str:
    return "python3 -c \"$(cat <<'EOF'\n" + TOOL + "\nEOF\n)\" " + args


def _run(inventory: Inventory, host: Host, command: str, what: str, timeout: float = 900,
         stdin: str | None = None) -> str:
    res = remote.run(inventory, host, command, timeout=timeout, stdin=stdin)
    if res.returncode != 0:
        raise MailopsError(f"{what} failed on {host.name} (exit {res.returncode}): "
                           f"{(res.stderr or res.stdout).strip()[:400]}")
    return res.stdout


def _binary(inventory: Inventory, host: Host, command: str, data: bytes = b"",
            timeout: float = 900) -> bytes:
    res = subprocess.run([*remote.ssh_argv(inventory, host), command], input=data,
                         capture_output=True, timeout=timeout)
    if res.returncode != 0:
        raise MailopsError(f"{command.split()[0]} failed on {host.name}: "
                           f"{res.stderr.decode(errors='replace').strip()[:400]}")
    return res.stdout


def _object(name: str) -> str:
    return f"objects/{name[:2]}/{name}"


def msgid_digest(msgids: list[str]) -> str:
    """Of a folder's Message-ID set (one per message, sorted)."""
    return hashlib.sha256("\n".join(sorted(msgids)).encode()).hexdigest()


def imap_name(folder: str) -> str:
    """A staged folder's path (LAYOUT=fs, modified UTF-7 on disk) as IMAP
    names it: "" is INBOX."""
    if folder == "":
        return "INBOX"
    out, i = [], 0
    while i < len(folder):
        if folder[i] == "&":
            end = folder.index("-", i)
            chunk = folder[i + 1:end]
            if chunk == "":
                out.append("&")
            else:
                raw = base64.b64decode(chunk.replace(",", "/") + "=" * (-len(chunk) % 4))
                out.append(raw.decode("utf-16-be"))
            i = end + 1
        else:
            out.append(folder[i])
            i += 1
    return "".join(out)


# ---------------------------------------------------------------- backup


@dataclass
class MailboxRow:
    address: str
    node: str
    folders: int
    messages: int
    new: int  # objects this run stored
    bytes_sent: int
    seconds: float
    result: str = "ok"


@dataclass
class BackupResult:
    url: str
    snapshot: str
    key: Path
    rows: list[MailboxRow] = field(default_factory=list)
    files: int = 0
    deleted_snapshots: list[str] = field(default_factory=list)
    deleted_objects: int = 0
    queues: dict[str, str] = field(default_factory=dict)  # node -> what was saved
    rspamd: dict[str, str] = field(default_factory=dict)  # node -> what was saved

    def table(self) -> str:
        head = f"{'mailbox':<28} {'node':<8} {'folders':>7} {'messages':>8} {'new':>6} " \
               f"{'sent KB':>8} {'s':>6}  result"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.address:<28} {r.node:<8} {r.folders:>7} {r.messages:>8} "
                         f"{r.new:>6} {r.bytes_sent // 1024:>8} {r.seconds:6.1f}  {r.result}")
        lines += ["", f"snapshot {self.snapshot} in {self.url}: "
                  f"{sum(r.messages for r in self.rows)} messages, "
                  f"{sum(r.new for r in self.rows)} new objects, {self.files} inventory files",
                  "Postfix queues: " + ", ".join(f"{n} {q}" for n, q in self.queues.items()),
                  "rspamd's learned data: " + ", ".join(f"{n} {q}"
                                                        for n, q in self.rspamd.items()),
                  f"retention: {len(self.deleted_snapshots)} snapshot(s) and "
                  f"{self.deleted_objects} object(s) deleted",
                  f"key: {self.key} (not in the backup: keep a copy offline)"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "snapshot": self.snapshot, "key": str(self.key),
                "mailboxes": [r.__dict__ for r in self.rows], "files": self.files,
                "deleted_snapshots": self.deleted_snapshots,
                "deleted_objects": self.deleted_objects, "queues": self.queues,
                "rspamd": self.rspamd}


def _snapshots(store: Store) -> dict[datetime, str]:
    out = {}
    for name in store.names("snapshots/"):
        stamp = name.rsplit("/", 1)[1].removesuffix(".json")
        try:
            out[datetime.strptime(stamp, SNAP_FORMAT).replace(tzinfo=UTC)] = name
        except ValueError:
            continue  # not ours
    return out


def read_manifest(store: Store, sealer: Sealer, name: str) -> dict[str, Any]:
    manifest = json.loads(sealer.open(name, store.get(name)))
    if manifest.get("key_id") != sealer.key_id:
        raise MailopsError(f"{store.url}/{name}: made with another backup key")
    return manifest


def _last_rspamd(store: Store, sealer: Sealer) -> dict[str, Any]:
    """The newest snapshot's rspamd entries, per node ({} when none opens)."""
    snaps = _snapshots(store)
    if not snaps:
        return {}
    try:
        return read_manifest(store, sealer, snaps[max(snaps)]).get("rspamd", {})
    except MailopsError:
        return {}


def _stage_mailbox(inventory: Inventory, host: Host, address: str) -> dict[str, Any]:
    stage = f"{STAGE}/backup/{address}"
    # The stage is kept between runs (the next backup only adds what is
    # new); one that no longer matches the mailbox (made anew since, so
    # its INBOX has another GUID, which dsync cannot replace) is made again.
    _run(inventory, host, f"install -d -o {VMAIL} -g {VMAIL} -m 0700 {STAGE} {STAGE}/backup && "
         f"{{ doveadm backup -u {address} 'maildir:{stage}:LAYOUT=fs' 2>/dev/null || "
         f"{{ rm -rf '{stage}' && doveadm backup -u {address} 'maildir:{stage}:LAYOUT=fs'; }}; }}",
         "doveadm backup")
    return json.loads(_run(inventory, host, _tool(f"index '{stage}'"), "reading the staged copy"))


def _file_objects(inventory: Inventory) -> dict[str, bytes]:
    """The inventory's own files: hosts.yml and group_vars (the vault as it
    is, encrypted with the vault password, which is not in the backup)."""
    root = inventory.path
    files = {"hosts.yml": (root / "hosts.yml").read_bytes()}
    for path in sorted((root / "group_vars").rglob("*")) if (root / "group_vars").exists() else []:
        if path.is_file():
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


def manifest_folders(index: dict[str, Any], sealer: Sealer) -> dict[str, Any]:
    """A staged mailbox's index (maildir_tool index) as the manifest keeps
    it: per folder its IMAP name, keywords, count, size, Message-ID digest
    and messages (object name, SHA-256, path with flags, size, Message-ID)."""
    folders = {}
    for path, folder in index["folders"].items():
        msgs = [{"obj": sealer.name_of_digest(m["sha256"]), "sha256": m["sha256"],
                 "path": m["path"], "flags": m["flags"], "size": m["size"],
                 "mtime": m["mtime"], "msgid": m["msgid"]} for m in folder["messages"]]
        folders[path] = {"name": imap_name(path), "keywords": folder["keywords"],
                         "count": len(msgs), "size": sum(m["size"] for m in msgs),
                         "msgid_digest": msgid_digest([m["msgid"] for m in msgs]),
                         "messages": msgs}
    return folders


def _target(inventory: Inventory, url: str | None, create_key: bool) -> tuple[Store, Sealer]:
    """The backup target and the sealer of the inventory's backup key."""
    cfg = settings(inventory, url)
    store = open_store(cfg.url, cfg.region, cfg.endpoint_url)
    kfile = key_file(inventory.path, inventory.lab.name if inventory.lab else None)
    return store, Sealer(load_or_make_key(kfile, create=create_key))


def _snapshot(inventory: Inventory, url: str | None,
              at: str | None) -> tuple[Store, Sealer, str, dict[str, Any]]:
    """The target, the sealer, and the chosen snapshot's name and manifest."""
    store, sealer = _target(inventory, url, create_key=False)
    name = choose_snapshot(store, at)
    return store, sealer, name, read_manifest(store, sealer, name)


def backup(inventory: Inventory, url: str | None = None) -> BackupResult:
    cfg = settings(inventory, url)
    store, sealer = _target(inventory, url, create_key=True)
    kfile = key_file(inventory.path, inventory.lab.name if inventory.lab else None)
    stamp = datetime.now(UTC).strftime(SNAP_FORMAT)
    result = BackupResult(store.url, f"snapshots/{stamp}.json", kfile)
    step("backup", "-", f"listing what {store.url} holds")
    have = {n.rsplit("/", 1)[1] for n in store.names("objects/")}
    model = load_mail_model(inventory)
    nodes = {h.name: h for h in inventory.group("mail")}
    manifest: dict[str, Any] = {"format": 1, "created": stamp, "key_id": sealer.key_id,
                                "inventory": inventory.path.name, "mailboxes": {},
                                "files": {}}

    def put(data: bytes) -> tuple[str, bool]:
        name = sealer.name(data)
        if name in have:
            return name, False
        store.put(_object(name), sealer.seal(name, data))
        have.add(name)
        return name, True

    for address, home in homes(inventory, model).items():
        t0 = time.monotonic()
        index, source, errors = None, None, []
        for name in home.nodes:
            step("backup", name, address)
            try:
                index, source = _stage_mailbox(inventory, nodes[name], address), nodes[name]
                break
            except MailopsError as e:
                errors.append(str(e))
        if index is None or source is None:
            raise MailopsError(f"{address}: no node of its pair could stage it:\n"
                               + "\n".join(errors) + "\nno snapshot was written")
        by_sha: dict[str, dict] = {}
        for folder in index["folders"].values():
            for m in folder["messages"]:
                by_sha.setdefault(m["sha256"], m)
        wanted = [m["path"] for sha, m in by_sha.items()
                  if sealer.name_of_digest(sha) not in have]
        new = sent = 0
        if wanted:
            tar = _binary(inventory, source, _tool(f"pack '{STAGE}/backup/{address}'"),
                          json.dumps(wanted).encode())
            with tarfile.open(fileobj=io.BytesIO(tar)) as t:
                for member in t:
                    data = t.extractfile(member).read()
                    _, added = put(data)
                    new += added
                    sent += len(data)
        folders = manifest_folders(index, sealer)
        for folder in folders.values():
            missing = [m for m in folder["messages"] if m["obj"] not in have]
            if missing:
                raise MailopsError(f"{address}: {len(missing)} message(s) of {folder['name']} "
                                   "were not stored (changed while read?); no snapshot was "
                                   "written: run the backup again")
        manifest["mailboxes"][address] = {"node": source.name, "folders": folders,
                                          "subscriptions": index["subscriptions"]}
        result.rows.append(MailboxRow(address, source.name, len(folders),
                                      sum(f["count"] for f in folders.values()), new, sent,
                                      time.monotonic() - t0))
    # Each node's Postfix queue: complete queue files only (Postfix sets the
    # owner's execute bit when a file is whole), for `restore --queue NODE`.
    manifest["queues"] = {}
    for host in nodes.values():
        step("backup", host.name, "the Postfix queue")
        try:
            tar = _binary(inventory, host, f"cd {SPOOL} && find {' '.join(QUEUES)} -type f "
                          "-perm -u+x -print0 | tar --null -T - -cf -")
        except MailopsError as e:
            result.queues[host.name] = f"not saved: {e}"
            continue
        saved = []
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            for member in t:
                if member.isfile():
                    data = t.extractfile(member).read()
                    saved.append({"path": member.name, "obj": put(data)[0],
                                  "size": len(data)})
        manifest["queues"][host.name] = saved
        result.queues[host.name] = f"{len(saved)} message(s)"
    # rspamd's learned data (Bayes statistics, in each node's Redis): a dump
    # of the dataset, made by Redis itself, so it is consistent.
    # An RDB file carries its time of making, so two dumps of the same data
    # differ: the dataset's own digest decides whether the last one is kept.
    manifest["rspamd"] = {}
    last = _last_rspamd(store, sealer)
    for host in nodes.values():
        step("backup", host.name, "rspamd's learned data (Redis)")
        try:
            learned = int(_run(inventory, host, REDIS_LEARNED, "counting learned messages")
                          .strip() or 0)
            digest = _run(inventory, host, REDIS_DIGEST, "digesting rspamd's Redis").split()[0]
            before = last.get(host.name, {})
            if before.get("digest") == digest and before.get("obj") in have:
                manifest["rspamd"][host.name] = {**before, "learned": learned}
                result.rspamd[host.name] = f"{learned} learned message(s), unchanged"
                continue
            dump = _binary(inventory, host, "f=$(mktemp) && redis-cli --rdb \"$f\" >/dev/null "
                           "&& cat \"$f\"; rc=$?; rm -f \"$f\"; exit $rc")
        except (MailopsError, ValueError, IndexError) as e:
            result.rspamd[host.name] = f"not saved: {e}"
            continue
        manifest["rspamd"][host.name] = {"obj": put(dump)[0], "size": len(dump),
                                         "learned": learned, "digest": digest}
        result.rspamd[host.name] = f"{learned} learned message(s)"
    for rel, data in _file_objects(inventory).items():
        manifest["files"][rel] = put(data)[0]
    result.files = len(manifest["files"])
    body = json.dumps(manifest, sort_keys=True).encode()
    store.put(result.snapshot, sealer.seal(result.snapshot, body))

    # Retention: snapshots beyond it, then the objects no kept one names.
    snaps = _snapshots(store)
    kept = retention.keep(snaps, cfg.keep_daily, cfg.keep_weekly)
    drop = [snaps[d] for d in snaps if d not in kept]
    if drop:
        step("backup", "-", f"retention: deleting {len(drop)} snapshot(s)")
        store.delete(drop)
        result.deleted_snapshots = drop
        named: set[str] = set()
        for d in kept:
            m = read_manifest(store, sealer, snaps[d])
            named |= set(m["files"].values())
            named |= {q["obj"] for saved in m.get("queues", {}).values() for q in saved}
            named |= {r["obj"] for r in m.get("rspamd", {}).values()}
            named |= {msg["obj"] for box in m["mailboxes"].values()
                      for f in box["folders"].values() for msg in f["messages"]}
        orphans = [_object(n) for n in have - named]
        store.delete(orphans)
        result.deleted_objects = len(orphans)
    return result


# ---------------------------------------------------------------- restore


def choose_snapshot(store: Store, at: str | None = None) -> str:
    """The newest snapshot, or the newest made at or before `at` (a date,
    2026-12-02, or a time, 2026-12-02T10:00)."""
    snaps = _snapshots(store)
    if not snaps:
        raise MailopsError(f"{store.url}: no backup there (no snapshots/): check the URL")
    if at is None:
        return snaps[max(snaps)]
    try:
        limit = datetime.fromisoformat(at)
    except ValueError:
        raise MailopsError(f"--at {at}: not a date or time: write 2026-12-02 or "
                           "2026-12-02T10:00") from None
    if limit.tzinfo is None:
        limit = limit.replace(tzinfo=UTC)
    if len(at) == 10:
        limit = limit.replace(hour=23, minute=59, second=59)
    older = [d for d in snaps if d <= limit]
    if not older:
        raise MailopsError(f"--at {at}: no backup made by then; the oldest is "
                           f"{min(snaps).strftime(SNAP_FORMAT)}")
    return snaps[max(older)]


def _live(inventory: Inventory, host: Host, address: str) -> dict[str, list[str]]:
    """IMAP folder -> the Message-IDs of its messages, on a node."""
    out = _run(inventory, host, f"doveadm -f tab fetch -u {address} 'mailbox hdr.message-id' "
               "ALL", "reading the mailbox")
    folders: dict[str, list[str]] = {}
    for line in out.splitlines()[1:]:
        folder, _, msgid = line.partition("\t")
        folders.setdefault(folder, []).append(" ".join(msgid.split()))
    names = _run(inventory, host, f"doveadm mailbox list -u {address}", "listing folders")
    for name in names.splitlines():
        folders.setdefault(name.strip(), [])
    return folders


def missing_indexes(want: list[str], have: list[str]) -> list[int]:
    """Indexes of `want` not in `have`, counting repeats (a Message-ID twice
    in the backup and once live: one is missing)."""
    from collections import Counter

    left = Counter(have)
    out = []
    for i, msgid in enumerate(want):
        if left[msgid] > 0:
            left[msgid] -= 1
        else:
            out.append(i)
    return out


@dataclass
class RestoreRow:
    address: str
    node: str
    folder: str
    in_backup: int
    restored: int
    ok: bool
    detail: str = ""


@dataclass
class RestoreResult:
    url: str
    snapshot: str
    rows: list[RestoreRow] = field(default_factory=list)
    rspamd: dict[str, str] = field(default_factory=dict)  # node -> what happened

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows) and not any(
            v.startswith("FAILED") for v in self.rspamd.values())

    def table(self) -> str:
        head = f"{'mailbox':<28} {'node':<8} {'folder':<24} {'backup':>7} {'restored':>8}  result"
        lines = [f"restore from {self.url}, {self.snapshot}", "", head, "-" * len(head)]
        for r in self.rows:
            lines.append(f"{r.address:<28} {r.node:<8} {r.folder:<24} {r.in_backup:>7} "
                         f"{r.restored:>8}  {'ok' if r.ok else 'FAILED'} {r.detail}".rstrip())
        boxes = sorted({r.address for r in self.rows})
        failed = sorted({r.address for r in self.rows if not r.ok})
        lines += ["", f"{len(boxes) - len(failed)} of {len(boxes)} mailbox(es) hold what the "
                  "backup holds" + (f"; NOT: {', '.join(failed)} (see above; a re-run "
                                    "adds only what is missing)" if failed else "")]
        if self.rspamd:
            lines.append("rspamd's learned data: " + ", ".join(
                f"{n} {v}" for n, v in self.rspamd.items()))
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "snapshot": self.snapshot, "ok": self.ok,
                "folders": [r.__dict__ for r in self.rows], "rspamd": self.rspamd}


def _restore_mailbox(inventory: Inventory, store: Store, sealer: Sealer, host: Host,
                     address: str, box: dict[str, Any], result: RestoreResult) -> None:
    live = _live(inventory, host, address)
    buf = io.BytesIO()
    plan: dict[str, int] = {}
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add(name: str, data: bytes | None, mtime: float | None = None) -> None:
            # A message keeps its received date (its file's mtime); the rest
            # is new (Dovecot rereads dovecot-keywords only when its mtime
            # moved on: from 0 it would never read it).
            info = tarfile.TarInfo(name)
            info.mtime = int(time.time() if mtime is None else mtime)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o700
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o600
                tar.addfile(info, io.BytesIO(data))

        for path, folder in box["folders"].items():
            msgs = folder["messages"]
            todo = missing_indexes([m["msgid"] for m in msgs], live.get(folder["name"], []))
            plan[path] = len(todo)
            if not todo:
                continue
            for sub in ("cur", "new", "tmp"):
                add(f"{path}/{sub}" if path else sub, None)
            if folder["keywords"]:
                add(f"{path}/dovecot-keywords" if path else "dovecot-keywords",
                    folder["keywords"].encode())
            for i in todo:
                m = msgs[i]
                data = sealer.open(m["obj"], store.get(_object(m["obj"])))
                if hashlib.sha256(data).hexdigest() != m["sha256"]:
                    raise MailopsError(f"object {m['obj']}: its content is not the message "
                                       "the manifest names; nothing of this mailbox was "
                                       "restored")
                add(m["path"], data, m.get("mtime"))
    stage = f"{STAGE}/restore/{address}"
    for folder in box["folders"].values():
        if folder["name"] not in live:
            _run(inventory, host, f"doveadm mailbox create -u {address} -s "
                 f"'{folder['name']}'", f"creating {folder['name']}")
    if any(plan.values()):
        _run(inventory, host, f"install -d -o {VMAIL} -g {VMAIL} -m 0700 {STAGE} "
             f"{STAGE}/restore && rm -rf '{stage}'", "preparing the stage")
        _binary(inventory, host, _tool(f"unpack '{stage}' $(id -u {VMAIL}) $(id -g {VMAIL})"),
                buf.getvalue())
        _run(inventory, host, f"doveadm import -u {address} -s 'maildir:{stage}:LAYOUT=fs' "
             f"'' ALL && rm -rf '{stage}'", "doveadm import")
    after = _live(inventory, host, address)
    for path, folder in box["folders"].items():
        gone = missing_indexes([m["msgid"] for m in folder["messages"]],
                               after.get(folder["name"], []))
        result.rows.append(RestoreRow(address, host.name, folder["name"], folder["count"],
                                      plan[path], not gone,
                                      f"{len(gone)} still missing" if gone else ""))


def restore(inventory: Inventory, url: str | None = None, mailbox: str | None = None,
            at: str | None = None) -> RestoreResult:
    store, sealer, name, manifest = _snapshot(inventory, url, at)
    result = RestoreResult(store.url, name)
    boxes = manifest["mailboxes"]
    if mailbox is not None:
        mailbox = mailbox.lower()
        if mailbox not in boxes:
            raise MailopsError(f"--mailbox {mailbox}: not in {name} (it holds "
                               f"{', '.join(sorted(boxes)) or 'no mailbox'})")
        boxes = {mailbox: boxes[mailbox]}
    every_home = homes(inventory, load_mail_model(inventory))
    nodes = {h.name: h for h in inventory.group("mail")}
    for address, box in boxes.items():
        home = every_home.get(address)
        if home is None:
            result.rows.append(RestoreRow(address, "-", "-", 0, 0, False,
                                          "not in the mail model: add it and converge first"))
            continue
        host = next((nodes[n] for n in home.nodes if remote.run(
            inventory, nodes[n], f"doveadm user {address} >/dev/null").returncode == 0), None)
        if host is None:
            result.rows.append(RestoreRow(address, "-", "-", 0, 0, False,
                                          f"no node of {', '.join(home.nodes)} answers"))
            continue
        step("restore", host.name, address)
        try:
            _restore_mailbox(inventory, store, sealer, host, address, box, result)
        except MailopsError as exc:
            # The other mailboxes still come back; this one says what stopped it.
            # Objects are checked before anything is imported, so a bad object
            # leaves the mailbox as it was; a re-run adds only what is missing.
            count = sum(f["count"] for f in box["folders"].values())
            result.rows.append(RestoreRow(address, host.name, "(every folder)", count, 0,
                                          False, f"not restored: {exc}"))
    if mailbox is None:
        _restore_rspamd(inventory, store, sealer, manifest, nodes, result)
    return result


def _restore_rspamd(inventory: Inventory, store: Store, sealer: Sealer,
                    manifest: dict[str, Any], nodes: dict[str, Host],
                    result: RestoreResult) -> None:
    """Each node's learned data back into its Redis, only where it has
    learned nothing of its own (a Redis dataset replaces, it cannot merge)."""
    for name, saved in manifest.get("rspamd", {}).items():
        host = nodes.get(name)
        if host is None or not saved.get("learned"):
            continue
        step("restore", name, "rspamd's learned data (Redis)")
        try:
            now = int(_run(inventory, host, REDIS_LEARNED, "counting learned messages")
                      .strip() or 0)
            if now:
                result.rspamd[name] = (f"kept its own ({now} learned; the backup's "
                                       f"{saved['learned']} not restored)")
                continue
            dump = sealer.open(saved["obj"], store.get(_object(saved["obj"])))
            _binary(inventory, host, "f=/var/lib/redis/dump.rdb; cat > \"$f.mailops\" && "
                    "chown redis:redis \"$f.mailops\" && chmod 0660 \"$f.mailops\" && "
                    "systemctl stop redis-server && mv \"$f.mailops\" \"$f\" && "
                    "systemctl start redis-server", dump)
            back = 0
            # Redis loads the dump as it starts; rspamd re-reads its counts
            # from Redis every 30 s or so.
            for _ in range(75):
                with contextlib.suppress(MailopsError, ValueError):
                    back = int(_run(inventory, host, REDIS_LEARNED, "counting learned "
                                    "messages").strip() or 0)
                if back >= saved["learned"]:
                    break
                time.sleep(1)
            result.rspamd[name] = (f"{back} learned message(s) restored" if back >=
                                   saved["learned"] else f"FAILED: {back} of "
                                   f"{saved['learned']} learned messages back")
        except MailopsError as e:
            result.rspamd[name] = f"FAILED: {e}"


def restore_queue(inventory: Inventory, node: str, url: str | None = None,
                  at: str | None = None) -> int:
    """Put a node's saved Postfix queue back on it (a node rebuilt after it
    was lost): the files go on hold, Postfix renames them to match their
    new inodes (postsuper -s), releases them and tries them at once. Only
    for a queue that was lost: messages still queued would go out twice."""
    nodes = {h.name: h for h in inventory.group("mail")}
    if node not in nodes:
        raise MailopsError(f"--queue {node}: not a mail node; use one of {', '.join(nodes)}")
    store, sealer, name, manifest = _snapshot(inventory, url, at)
    saved = manifest.get("queues", {}).get(node)
    if saved is None:
        raise MailopsError(f"{name} holds no Postfix queue of {node}")
    if not saved:
        return 0
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for q in saved:
            data = sealer.open(q["obj"], store.get(_object(q["obj"])))
            info = tarfile.TarInfo(q["path"].rsplit("/", 1)[1])
            info.size, info.mode, info.mtime = len(data), 0o700, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    host = nodes[node]
    step("restore", node, f"re-queueing {len(saved)} message(s)")
    _binary(inventory, host, _tool(f"unpack {SPOOL}/hold $(id -u postfix) 0"), buf.getvalue())
    _run(inventory, host, "postsuper -s && postsuper -H ALL && postqueue -f",
         "re-queueing the saved queue")
    return len(saved)


def restore_inventory(url: str, key: Path, dest: Path, at: str | None = None) -> list[str]:
    """A fresh controller's first step: the backed-up inventory (hosts.yml,
    group_vars with the vault still encrypted) written into dest, which
    must not hold one yet. The key is given (there is no inventory to find
    it by); S3's region and endpoint come from boto3's own settings."""
    if (dest / "hosts.yml").exists():
        raise MailopsError(f"{dest}/hosts.yml exists: give an empty folder (nothing is "
                           "overwritten)")
    store = open_store(url)
    sealer = Sealer(load_or_make_key(key, create=False))
    manifest = read_manifest(store, sealer, choose_snapshot(store, at))
    written = []
    for rel, obj in sorted(manifest["files"].items()):
        target = (dest / rel).resolve()
        if dest.resolve() not in target.parents:
            raise MailopsError(f"{rel}: not a path inside {dest}; nothing more was written")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(sealer.open(obj, store.get(_object(obj))))
        written.append(rel)
    return written


# ---------------------------------------------------------------- verify


@dataclass
class VerifyRow:
    what: str
    folders: int
    messages: int
    ok: bool
    detail: str = ""


@dataclass
class VerifyResult:
    url: str
    snapshot: str
    rows: list[VerifyRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def table(self) -> str:
        head = f"{'mailbox / files':<30} {'folders':>7} {'messages':>8}  result"
        lines = [f"backup verify: {self.url}, {self.snapshot}, restored into a scratch folder",
                 "", head, "-" * len(head)]
        lines += [f"{r.what:<30} {r.folders:>7} {r.messages:>8}  "
                  f"{'ok' if r.ok else 'FAILED'} {r.detail}".rstrip() for r in self.rows]
        lines += ["", "the backup restores as its manifest says" if self.ok else
                  "THE BACKUP DOES NOT RESTORE AS ITS MANIFEST SAYS (see above)"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "snapshot": self.snapshot, "ok": self.ok,
                "rows": [r.__dict__ for r in self.rows]}


def verify_backup(inventory: Inventory, url: str | None = None,
                  at: str | None = None) -> VerifyResult:
    """Restore a snapshot into a scratch folder on the controller and check
    it against its manifest: every object opens (key, integrity), is the
    message named, and each folder's count and Message-ID digest match."""
    import sys
    import tempfile

    store, sealer, name, manifest = _snapshot(inventory, url, at)
    result = VerifyResult(store.url, name)
    with tempfile.TemporaryDirectory(prefix="mailops-verify-") as scratch:
        for address, box in manifest["mailboxes"].items():
            step("backup verify", "-", address)
            root = Path(scratch) / address
            bad: list[str] = []
            for path, folder in box["folders"].items():
                for sub in ("cur", "new", "tmp"):
                    (root / path / sub).mkdir(parents=True, exist_ok=True)
                for m in folder["messages"]:
                    try:
                        data = sealer.open(m["obj"], store.get(_object(m["obj"])))
                    except MailopsError as e:
                        bad.append(str(e))
                        continue
                    if hashlib.sha256(data).hexdigest() != m["sha256"]:
                        bad.append(f"object {m['obj']}: not the message the manifest names")
                        continue
                    (root / m["path"]).write_bytes(data)
            res = subprocess.run([sys.executable, "-c", TOOL, "index", str(root)],
                                 capture_output=True, text=True, timeout=600)
            index = json.loads(res.stdout)["folders"] if res.returncode == 0 else {}
            for path, folder in box["folders"].items():
                got = index.get(path, {"messages": []})["messages"]
                if len(got) != folder["count"]:
                    bad.append(f"{folder['name']}: {len(got)} of {folder['count']} messages")
                elif msgid_digest([m["msgid"] for m in got]) != folder["msgid_digest"]:
                    bad.append(f"{folder['name']}: the Message-ID set differs")
            result.rows.append(VerifyRow(
                address, len(box["folders"]),
                sum(f["count"] for f in box["folders"].values()), not bad,
                f"{len(bad)} problem(s): {bad[0]}" if bad else ""))
        bad = []
        for rel, obj in manifest["files"].items():
            try:
                sealer.open(obj, store.get(_object(obj)))
            except MailopsError as e:
                bad.append(f"{rel}: {e}")
        result.rows.append(VerifyRow("inventory files", 0, len(manifest["files"]), not bad,
                                     bad[0] if bad else ""))
    return result
