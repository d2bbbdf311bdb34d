#!/usr/bin/python
"""Put a role's files and folders in place in one module run.

ansible.builtin.template and copy cost one to three SSH round trips per file
(stat, upload, copy); a role writes up to a dozen small files, and converge
time was mostly those round trips. This module receives every file's content
in its arguments (rendered on the controller by the action plugin of the
same name) and writes only what differs, atomically.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: mailops_files
short_description: Write several files and folders in one run, only where they differ
description:
  - Each entry of O(files) is a folder (O(files[].state=directory)), a symbolic link
    (O(files[].state=link) to O(files[].target)) or a file with its whole content.
  - A file whose content, owner, group or mode differs is written to a temporary file next
    to it, checked with O(files[].validate) if given, and renamed into place. Folders are
    created or their owner, group and mode set; links are replaced by a rename.
  - Entries are handled in order, so a folder can precede the files in it.
  - A secret file's content is in O(secret_contents) (no_log), the entry naming its index
    in O(files[].secret): it is never shown (no diff, masked in any output).
  - Use the action plugin of the same name: it renders O(files[].src) templates on the
    controller.
options:
  files:
    description: Files and folders, in order.
    type: list
    elements: dict
    required: true
  secret_contents:
    description: The contents of secret files (keys, password hashes).
    type: list
    elements: str
    default: []
author: mailops
"""

RETURN = r"""
changed_paths:
  description: Paths that were (or in check mode would be) created or changed.
  type: list
  elements: str
  returned: always
"""

ENTRY = dict(
    path=dict(type="str", required=True),
    state=dict(type="str", default="file", choices=["file", "directory", "link"]),
    target=dict(type="str"),
    content=dict(type="str"),
    owner=dict(type="str", default="root"),
    group=dict(type="str", default="root"),
    mode=dict(type="str"),
    validate=dict(type="str"),
    secret=dict(type="int"),
)


def _ids(module: AnsibleModule, entry: dict) -> tuple[int, int]:
    try:
        return pwd.getpwnam(entry["owner"]).pw_uid, grp.getgrnam(entry["group"]).gr_gid
    except KeyError as e:
        module.fail_json(msg=f"{entry['path']}: no such user or group: {e}")
        raise  # not reached


def _mode(entry: dict) -> int:
    default = "0755" if entry["state"] == "directory" else "0644"
    return int(entry["mode"] or default, 8)


def _attrs_differ(st: os.stat_result, uid: int, gid: int, mode: int) -> bool:
    return (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (uid, gid, mode)


def _directory(module: AnsibleModule, entry: dict) -> bool:
    path, (uid, gid), mode = entry["path"], _ids(module, entry), _mode(entry)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        module.fail_json(msg=f"{path} exists and is not a folder")
    if st is not None and not _attrs_differ(st, uid, gid, mode):
        return False
    if not module.check_mode:
        if st is None:
            os.makedirs(path, mode=mode)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return True


def _link(module: AnsibleModule, entry: dict) -> bool:
    path, target = entry["path"], entry["target"]
    if not target:
        module.fail_json(msg=f"{path}: a link needs a target")
    if os.path.islink(path) and os.readlink(path) == target:
        return False
    if os.path.isdir(path) and not os.path.islink(path):
        module.fail_json(msg=f"{path} is a folder, not a link")
    if not module.check_mode:
        # A new link under a temporary name, renamed over the old path: no
        # moment without one.
        tmp = os.path.join(os.path.dirname(path) or ".", f".mailops-{os.getpid()}-link")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.rename(tmp, path)
    return True


def _file(module: AnsibleModule, entry: dict, new: bytes, diffs: list | None) -> bool:
    path, (uid, gid), mode = entry["path"], _ids(module, entry), _mode(entry)
    old = None
    try:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                old = f.read()
        elif stat.S_ISDIR(st.st_mode):
            module.fail_json(msg=f"{path} is a folder, not a file")
    except FileNotFoundError:
        st = None
    if old == new:
        if not _attrs_differ(st, uid, gid, mode):
            return False
        if not module.check_mode:
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        return True
    if diffs is not None:
        diffs.append({"before_header": path, "after_header": path,
                      "before": (old or b"").decode(errors="replace"), "after": new.decode()})
    if module.check_mode:
        return True
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".mailops-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(new)
            f.flush()
            os.fsync(f.fileno())
        os.chown(tmp, uid, gid)
        os.chmod(tmp, mode)
        if entry["validate"]:
            if "%s" not in entry["validate"]:
                module.fail_json(msg=f"{path}: validate must contain %s (the file to check)")
            res = subprocess.run(entry["validate"].replace("%s", tmp), shell=True,
                                 capture_output=True, text=True)
            if res.returncode != 0:
                module.fail_json(msg=f"{path}: the new file failed `{entry['validate']}` "
                                     f"and was not put in place", rc=res.returncode,
                                 stdout=res.stdout, stderr=res.stderr)
        os.rename(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="dict", required=True, options=ENTRY),
            secret_contents=dict(type="list", elements="str", default=[], no_log=True),
        ),
        supports_check_mode=True,
    )
    secrets = module.params["secret_contents"]
    changed_paths: list[str] = []
    diffs: list[dict] = []
    for entry in module.params["files"]:
        if entry["state"] == "directory":
            changed = _directory(module, entry)
        elif entry["state"] == "link":
            changed = _link(module, entry)
        elif entry["secret"] is not None:
            changed = _file(module, entry, secrets[entry["secret"]].encode(), None)
        else:
            changed = _file(module, entry, (entry["content"] or "").encode(),
                            diffs if module._diff else None)
        if changed:
            changed_paths.append(entry["path"])
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
