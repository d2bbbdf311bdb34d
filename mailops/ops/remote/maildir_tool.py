"""On a mail node: read and write a staged copy of one mailbox, a maildir
in Dovecot's LAYOUT=fs (a folder is a directory holding cur/ new/ tmp/,
INBOX the top one), made by `doveadm backup` (consistent, unlike a tar of
the live store) or to be imported by `doveadm import`.

  index DIR            JSON: per folder its keywords file and every
                       message (path, SHA-256, size, mtime, flags,
                       Message-ID)
  pack DIR < paths     a tar of the listed paths (a JSON list) on stdout
  unpack DIR UID GID   a tar from stdin extracted into DIR, owned UID:GID

Standard library only: it runs with the host's python3.
"""

import hashlib
import json
import os
import sys
import tarfile
from email.parser import BytesHeaderParser
from email.policy import compat32


def _message_id(path):
    with open(path, "rb") as f:
        head = f.read(65536)
    end = head.find(b"\n\n")
    end2 = head.find(b"\r\n\r\n")
    cut = min(e for e in (end, end2, len(head)) if e >= 0)
    headers = BytesHeaderParser(policy=compat32).parsebytes(head[:cut] + b"\n\n")
    value = headers.get("Message-ID") or ""
    return " ".join(str(value).split())


def index(root):
    folders = {}
    for here, dirs, _files in os.walk(root):
        dirs.sort()
        if "cur" not in dirs:
            continue
        rel = os.path.relpath(here, root)
        folder = {"keywords": "", "messages": []}
        kw = os.path.join(here, "dovecot-keywords")
        if os.path.exists(kw):
            with open(kw, encoding="utf-8", errors="replace") as f:
                folder["keywords"] = f.read()
        for sub in ("cur", "new"):
            for name in sorted(os.listdir(os.path.join(here, sub))):
                path = os.path.join(here, sub, name)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                flags = name.split(":2,", 1)[1] if ":2," in name else ""
                # A maildir message's mtime is its received date (INTERNALDATE).
                st = os.stat(path)
                folder["messages"].append({
                    "path": os.path.relpath(path, root), "sha256": digest,
                    "size": st.st_size, "mtime": int(st.st_mtime), "flags": flags,
                    "msgid": _message_id(path)})
        folders["" if rel == "." else rel] = folder
        dirs[:] = [d for d in dirs if d not in ("cur", "new", "tmp")]
    subs = os.path.join(root, "subscriptions")
    out = {"folders": folders, "subscriptions": ""}
    if os.path.exists(subs):
        with open(subs, encoding="utf-8", errors="replace") as f:
            out["subscriptions"] = f.read()
    json.dump(out, sys.stdout)


def pack(root):
    paths = json.load(sys.stdin)
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
        for rel in paths:
            tar.add(os.path.join(root, rel), arcname=rel, recursive=False)


def unpack(root, uid, gid):
    os.makedirs(root, exist_ok=True)
    real = os.path.realpath(root)
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
        for member in tar:
            target = os.path.realpath(os.path.join(root, member.name))
            if not (target == real or target.startswith(real + os.sep)) or \
                    not (member.isfile() or member.isdir()):
                raise SystemExit(f"refusing {member.name!r}: outside {root} or not a file")
            tar.extract(member, root)
    for here, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            os.chown(os.path.join(here, name), uid, gid)
    os.chown(root, uid, gid)


def main():
    command, root = sys.argv[1], sys.argv[2]
    if command == "index":
        index(root)
    elif command == "pack":
        pack(root)
    elif command == "unpack":
        unpack(root, int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main()
