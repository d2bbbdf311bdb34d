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
import re
import shlex
import shutil
import stat
import subprocess
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: files
short_description: Write several files and folders in one run, only where they differ
description:
  - Each entry of O(files) is a folder (O(files[].state=directory)), a symbolic link
    (O(files[].state=link) to O(files[].target)) or a file with its whole content.
  - A file whose content, owner, group or mode differs is written to a temporary file next
    to it, checked with O(files[].validate) if given, and renamed into place. Folders are
    created or their owner, group and mode set; links are replaced by a rename.
  - Entries are handled in order, so a folder can precede the files in it.
  - Files that only make sense together (Postfix's C(main.cf) and C(master.cf), rspamd's
    C(local.d)) are checked as a set with O(checks) before any entry of the task is
    written. Each check runs on a private staging copy of its O(checks[].base) folder that
    holds the live files with this task's new files laid over them; if a check fails,
    nothing of the task is written.
  - A secret file's content is never shown (no diff, masked in any output).
  - Use it as a task (C(mailops.mail.files)); the action plugin of the same name renders
    O(files[].src) templates on the controller and sends every entry in one module run.
options:
  files:
    description: Files, folders and links, handled in this order.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description: Absolute path of the file, folder or link.
        type: str
        required: true
      state:
        description:
          - V(file) writes a file with O(files[].src) or O(files[].content).
          - V(directory) creates a folder (and its parents) or sets its owner, group and mode.
          - V(link) makes a symbolic link to O(files[].target), replacing what is there
            unless that is a folder.
        type: str
        choices: [file, directory, link]
        default: file
      target:
        description: Where the link points (O(files[].state=link) only).
        type: str
      content:
        description: The whole content of the file (O(files[].state=file)).
        type: str
      src:
        description:
          - A Jinja2 template, found as ansible.builtin.template finds one (the role's
            C(templates/) first), rendered on the controller by the action plugin with the
            task's variables; the result is the file's content.
          - Give O(files[].src) or O(files[].content) for a file.
        type: str
      owner:
        description: Owner of the file or folder (a user name); O(owner) when not given.
        type: str
      group:
        description: Group of the file or folder (a group name); O(group) when not given.
        type: str
      mode:
        description:
          - Permissions as a quoted string of octal digits, like V("0644") or V("2750").
          - O(mode) when not given, else V("0644") for a file and V("0755") for a folder.
          - An unquoted YAML number (C(0644) is read as 420) is refused, not guessed at.
        type: raw
      validate:
        description:
          - A command run (by the shell) on the new file before it replaces the live one; it
            must contain C(%s), which is replaced by the path of the new file.
          - If it exits non-zero the file is not put in place and the task fails.
        type: str
      secret:
        description:
          - The content is secret (a private key, password hashes). The action plugin sends
            it in the no_log O(secret_contents), so it is never shown in output or diffs.
          - In a staging copy for O(checks) a secret file is written with mode V("0600").
        type: bool
        default: false
  checks:
    description:
      - Checks of a whole folder, run before any entry of the task is written, only when at
        least one file of O(files) under O(checks[].base) would change, and not in check mode.
      - For each check a private (C(0700)) staging folder is made, the live
        O(checks[].base) is copied into it (symbolic links as links; sockets and FIFOs left
        out), the new content and mode of every file of O(files) under O(checks[].base) is
        written at the same relative path, and O(checks[].command) is run on it. The
        staging folder is removed afterwards, whatever the outcome.
      - If a check exits non-zero the task fails with the command's output and nothing of
        the task is written.
    type: list
    elements: dict
    default: []
    suboptions:
      base:
        description: Absolute path of the folder to check as a set (it need not exist yet).
        type: str
        required: true
      command:
        description:
          - A command run by the shell; C(%d) is replaced by the path of the staging folder.
          - For Postfix, C(postfix -c %d check) with O(checks[].base=/etc/postfix); for
            rspamd, C(rspamadm --var=LOCAL_CONFDIR=%d configtest) with
            O(checks[].base=/etc/rspamd) (its C(local.d) is under it).
        type: str
        required: true
  owner:
    description: Owner of the entries that give none.
    type: str
    default: root
  group:
    description: Group of the entries that give none.
    type: str
    default: root
  mode:
    description:
      - Mode of the entries that give none (a quoted octal string like V("0640")).
      - When not given, V("0644") for a file and V("0755") for a folder.
    type: raw
  lstrip_blocks:
    description: Strip whitespace before a template's block tags (for O(files[].src)).
    type: bool
    default: true
  trim_blocks:
    description: Remove the first newline after a template's block tag (for O(files[].src)).
    type: bool
    default: true
  secret_contents:
    description:
      - The contents of the O(files[].secret) files, in the order of those entries. Set by
        the action plugin; do not give it in a task.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    description: Reports what would change and writes nothing; O(checks) are not run.
    support: full
  diff_mode:
    description: Shows the change of every file's content, except secret ones.
    support: full
notes:
  - Owner and group are set as given; the module runs as root on the managed hosts.
  - A file under a check's O(checks[].base) that is reached through a symbolic link inside
    it is not staged (writing there would change the live target); the task fails instead.
author: mailops
"""

EXAMPLES = r"""
- name: Write the Postfix configuration; main.cf and master.cf are checked as a set
  mailops.mail.files:
    files:
      - {path: /etc/postfix/main.cf, src: etc/postfix/main.cf.j2}
      - {path: /etc/postfix/master.cf, src: etc/postfix/master.cf.j2}
      - {path: /etc/postfix/virtual_domains, src: etc/postfix/virtual_domains.j2}
    # A staging copy of /etc/postfix with the new files in it; neither live file is
    # replaced unless Postfix accepts the pair.
    checks:
      - base: /etc/postfix
        command: postfix -c %d check
  notify: Reload Postfix

- name: Write rspamd's local configuration, checked before it replaces the live one
  mailops.mail.files:
    files:
      - {path: /etc/rspamd/local.d/actions.conf, src: etc/rspamd/local.d/actions.conf.j2}
      - {path: /etc/rspamd/local.d/dkim_signing.conf,
         src: etc/rspamd/local.d/dkim_signing.conf.j2}
      - path: /var/lib/rspamd/dkim/example.org.key
        content: "{{ vault_dkim_key }}"
        owner: _rspamd
        group: _rspamd
        mode: "0600"
        secret: true
    # LOCAL_CONFDIR is /etc/rspamd, with local.d under it: the staging copy is of
    # /etc/rspamd.
    checks:
      - base: /etc/rspamd
        command: rspamadm --var=LOCAL_CONFDIR=%d configtest

- name: A folder, a file checked on its own, and a link
  mailops.mail.files:
    files:
      - {path: /etc/haproxy/certs, state: directory, mode: "0700"}
      - path: /etc/haproxy/haproxy.cfg
        src: etc/haproxy/haproxy.cfg.j2
        validate: haproxy -c -f %s
      - {path: /etc/localtime, state: link, target: /usr/share/zoneinfo/UTC}
"""

RETURN = r"""
changed_paths:
  description: Paths that were (or in check mode would be) created or changed, in order.
  type: list
  elements: str
  returned: always
  sample: [/etc/postfix/main.cf]
checked_bases:
  description: The O(checks[].base) folders whose check ran (and passed) in this run.
  type: list
  elements: str
  returned: always
  sample: [/etc/postfix]
"""

ENTRY = dict(
    path=dict(type="str", required=True),
    state=dict(type="str", default="file", choices=["file", "directory", "link"]),
    target=dict(type="str"),
    content=dict(type="str"),
    src=dict(type="str"),
    owner=dict(type="str"),
    group=dict(type="str"),
    mode=dict(type="raw"),
    validate=dict(type="str"),
    # Only a flag, no secret: the content itself comes in secret_contents.
    secret=dict(type="bool", default=False, no_log=False),
)
CHECK = dict(
    base=dict(type="str", required=True),
    command=dict(type="str", required=True),
)
ARGUMENT_SPEC = dict(
    files=dict(type="list", elements="dict", required=True, options=ENTRY),
    checks=dict(type="list", elements="dict", default=[], options=CHECK),
    owner=dict(type="str", default="root"),
    group=dict(type="str", default="root"),
    mode=dict(type="raw"),
    # Used by the action plugin when it renders src; accepted here so that a
    # task's options and the module's agree.
    lstrip_blocks=dict(type="bool", default=True),
    trim_blocks=dict(type="bool", default=True),
    secret_contents=dict(type="list", elements="str", default=[], no_log=True),
)

_OCTAL = re.compile(r"[0-7]{3,4}")
_MODE_HELP = 'a quoted string of octal digits like "0644" or "2750"'


def _mode(module: AnsibleModule, entry: dict) -> int:
    """The entry's mode as a number; fails on anything but octal digits."""
    value = entry["mode"] if entry["mode"] is not None else module.params["mode"]
    if value is None:
        return 0o755 if entry["state"] == "directory" else 0o644
    if not isinstance(value, str):
        # YAML reads an unquoted 0644 as 420: guessing which was meant could
        # make a key world-readable.
        module.fail_json(msg=f"{entry['path']}: mode {value!r} is not a string; give "
                             f"{_MODE_HELP}")
    if not _OCTAL.fullmatch(value):
        module.fail_json(msg=f"{entry['path']}: bad mode {value!r}; give {_MODE_HELP}")
    return int(value, 8)


def _ids(module: AnsibleModule, entry: dict) -> tuple[int, int]:
    owner = entry["owner"] or module.params["owner"]
    group = entry["group"] or module.params["group"]
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        module.fail_json(msg=f"{entry['path']}: no such user: {owner!r}")
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        module.fail_json(msg=f"{entry['path']}: no such group: {group!r}")
    return uid, gid


def _prepare(module: AnsibleModule) -> list[dict]:
    """Every entry checked and resolved (ids, mode, content) before anything
    is written: a bad entry late in the list leaves the host as it was."""
    secrets = module.params["secret_contents"]
    wanted = sum(1 for e in module.params["files"] if e["secret"] and e["state"] == "file")
    if wanted != len(secrets):
        module.fail_json(msg=f"{wanted} entries are secret but {len(secrets)} secret contents "
                             "were given")
    items, k = [], 0
    for entry in module.params["files"]:
        path, state = entry["path"], entry["state"]
        if not os.path.isabs(path):
            module.fail_json(msg=f"{path}: the path must be absolute")
        item = dict(entry, path=os.path.normpath(path))
        if entry["src"] is not None:
            module.fail_json(msg=f"{path}: src is rendered on the controller by the action "
                                 "plugin mailops.mail.files; this module cannot read it")
        if state == "link":
            if not entry["target"]:
                module.fail_json(msg=f"{path}: a link needs a target")
            items.append(item)
            continue
        item["uid"], item["gid"] = _ids(module, entry)
        item["mode_bits"] = _mode(module, entry)
        if state == "file":
            if entry["validate"] and "%s" not in entry["validate"]:
                module.fail_json(msg=f"{path}: validate must contain %s (the file to check): "
                                     f"{entry['validate']!r}")
            if entry["secret"]:
                if entry["content"] is not None:
                    module.fail_json(msg=f"{path}: a secret entry's content belongs in "
                                         "secret_contents")
                item["new"] = secrets[k].encode()
                k += 1
            else:
                item["new"] = (entry["content"] or "").encode()
        elif entry["secret"]:
            module.fail_json(msg=f"{path}: only a file can be secret")
        items.append(item)
    return items


def _prepare_checks(module: AnsibleModule) -> list[dict]:
    checks = []
    for check in module.params["checks"]:
        base, command = check["base"], check["command"]
        if not os.path.isabs(base):
            module.fail_json(msg=f"checks: base {base!r} must be an absolute path")
        if "%d" not in command:
            module.fail_json(msg=f"checks: the command for {base} must contain %d (the staging "
                                 f"folder): {command!r}")
        checks.append({"base": os.path.normpath(base), "command": command})
    return checks


def _attrs_differ(st: os.stat_result | None, uid: int, gid: int, mode: int) -> bool:
    return st is None or (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) != (uid, gid, mode)


def _live_file(module: AnsibleModule, path: str) -> tuple[os.stat_result | None, bytes | None]:
    """The live file's stat and content (None for a link or nothing there)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None, None
    except NotADirectoryError:
        module.fail_json(msg=f"{path}: a parent of it is not a folder")
    if stat.S_ISDIR(st.st_mode):
        module.fail_json(msg=f"{path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        return st, None
    with open(path, "rb") as f:
        return st, f.read()


def _file_differs(module: AnsibleModule, item: dict) -> bool:
    st, old = _live_file(module, item["path"])
    return old != item["new"] or _attrs_differ(st, item["uid"], item["gid"], item["mode_bits"])


def _under(path: str, base: str) -> str | None:
    """path relative to base, or None when it is not inside base."""
    rel = os.path.relpath(path, base)
    return None if rel in (os.curdir, os.pardir) or rel.startswith(os.pardir + os.sep) else rel


def _copy_tree(src: str, dst: str, as_root: bool) -> None:
    """Copy src's contents into the existing folder dst: symbolic links as
    links, owner, mode and times kept (a check may compare them)."""
    for de in os.scandir(src):
        s, d = de.path, os.path.join(dst, de.name)
        st = de.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISDIR(st.st_mode):
            os.mkdir(d, 0o700)
            _copy_tree(s, d, as_root)
        elif stat.S_ISREG(st.st_mode):
            shutil.copyfile(s, d, follow_symlinks=False)
        else:
            continue  # sockets, FIFOs, devices: no configuration, and a FIFO blocks a read
        if as_root:
            os.lchown(d, st.st_uid, st.st_gid)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(d, stat.S_IMODE(st.st_mode))
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _stage_file(module: AnsibleModule, stage: str, rel: str, item: dict, as_root: bool) -> None:
    # Never through a link: the staging copy keeps the live links, and
    # writing through one would change a live file.
    parts = rel.split(os.sep)
    here = stage
    for part in parts[:-1]:
        here = os.path.join(here, part)
        if os.path.islink(here):
            module.fail_json(msg=f"{item['path']}: cannot stage it for a check, "
                                 f"{os.path.relpath(here, stage)} is a symbolic link")
        if not os.path.isdir(here):
            os.mkdir(here, 0o755)
    dest = os.path.join(stage, rel)
    if os.path.lexists(dest):
        os.unlink(dest)  # a link there is replaced, as the rename will replace it
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(item["new"])
    if as_root:
        os.chown(dest, item["uid"], item["gid"])
    os.chmod(dest, 0o600 if item["secret"] else item["mode_bits"])


def _redact(text: str, secrets: list[str]) -> str:
    # A check may print a line of a secret file (a parse error quoting it):
    # mask every line of every secret, not only whole contents.
    for secret in secrets:
        for line in sorted({ln.strip() for ln in secret.splitlines()}, key=len, reverse=True):
            if len(line) >= 6:
                text = text.replace(line, "********")
    return text


def _trim(text: str, limit: int = 4000) -> str:
    text = text.strip()
    return text if len(text) <= limit else "[...]\n" + text[-limit:]


def _run_check(module: AnsibleModule, check: dict, members: list[tuple[str, dict]]) -> None:
    base, command = check["base"], check["command"]
    if os.path.lexists(base) and not os.path.isdir(base):
        module.fail_json(msg=f"checks: base {base} is not a folder")
    as_root = os.geteuid() == 0
    stage = tempfile.mkdtemp(prefix="mailops-check-")  # mode 0700
    try:
        if os.path.isdir(base):
            _copy_tree(base, stage, as_root)
        os.chmod(stage, 0o700)
        for rel, item in members:
            _stage_file(module, stage, rel, item, as_root)
        res = subprocess.run(command.replace("%d", shlex.quote(stage)), shell=True,
                             capture_output=True, text=True, errors="replace",
                             stdin=subprocess.DEVNULL)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if os.path.lexists(stage):
        module.fail_json(msg=f"checks: could not remove the staging folder {stage}")
    if res.returncode != 0:
        secrets = module.params["secret_contents"]
        stderr, stdout = _redact(res.stderr, secrets), _redact(res.stdout, secrets)
        output = "\n".join(t for t in (_trim(stderr), _trim(stdout)) if t) or "(no output)"
        module.fail_json(msg=f"check of {base} failed: `{command}` exited {res.returncode}; "
                             f"nothing of this task was written. Output:\n{output}",
                         rc=res.returncode, stdout=stdout, stderr=stderr)


def _directory(module: AnsibleModule, item: dict) -> bool:
    path, uid, gid, mode = item["path"], item["uid"], item["gid"], item["mode_bits"]
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        module.fail_json(msg=f"{path} exists and is not a folder")
    if not _attrs_differ(st, uid, gid, mode):
        return False
    if not module.check_mode:
        if st is None:
            os.makedirs(path, mode=mode)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
    return True


def _link(module: AnsibleModule, item: dict) -> bool:
    path, target = item["path"], item["target"]
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


def _file(module: AnsibleModule, item: dict, diffs: list | None) -> bool:
    path, uid, gid, mode, new = (item["path"], item["uid"], item["gid"], item["mode_bits"],
                                 item["new"])
    st, old = _live_file(module, path)
    if old == new:
        if not _attrs_differ(st, uid, gid, mode):
            return False
        if not module.check_mode:
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        return True
    if diffs is not None:
        diffs.append({"before_header": path, "after_header": path,
                      "before": (old or b"").decode(errors="replace"),
                      "after": new.decode(errors="replace")})
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
        if item["validate"]:
            res = subprocess.run(item["validate"].replace("%s", tmp), shell=True,
                                 capture_output=True, text=True, errors="replace")
            if res.returncode != 0:
                secrets = module.params["secret_contents"]
                module.fail_json(msg=f"{path}: the new file failed `{item['validate']}` "
                                     f"and was not put in place", rc=res.returncode,
                                 stdout=_redact(res.stdout, secrets),
                                 stderr=_redact(res.stderr, secrets))
        os.rename(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return True


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    current = "mailops.mail.files"
    try:
        items = _prepare(module)
        checks = _prepare_checks(module)
        files = [i for i in items if i["state"] == "file"]
        checked: list[str] = []
        for check in checks:
            members = [(rel, i) for i in files
                       if (rel := _under(i["path"], check["base"])) is not None]
            # Only when a file it covers would change; in check mode nothing
            # is staged or run, the changes are only reported.
            if module.check_mode or not any(_file_differs(module, i) for _, i in members):
                continue
            current = check["base"]
            _run_check(module, check, members)
            checked.append(check["base"])
        changed_paths: list[str] = []
        diffs: list[dict] = []
        for item in items:
            current = item["path"]
            if item["state"] == "directory":
                changed = _directory(module, item)
            elif item["state"] == "link":
                changed = _link(module, item)
            else:
                changed = _file(module, item, None if item["secret"] or not module._diff
                                else diffs)
            if changed:
                changed_paths.append(item["path"])
    except OSError as e:
        # A permission or disk problem: a message, not a traceback.
        module.fail_json(msg=f"{current}: {e.strerror or e}"
                             + (f" ({e.filename})" if e.filename else ""))
    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths,
                     checked_bases=checked, diff=diffs)


if __name__ == "__main__":
    main()
