"""converge: secrets first, then ansible-playbook runs the site playbook.

The vault is completed (generated once, reused on every rebuild) before
Ansible starts, so the roles always find every secret they need. Progress is
streamed as task lines; the PLAY RECAP is parsed into a per-host table.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mailops.core.environment import ROOT, venv_bin
from mailops.core.errors import MailopsError
from mailops.core.progress import step, table
from mailops.inventory.model import Inventory
from mailops.secrets.wanted import ensure_secrets
from mailops.site import ansible_vars
from mailops.site.mailmodel import load_mail_model

SITE = ROOT / "mailops" / "converge" / "playbooks" / "site.yml"
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                      r"failed=(\d+)\s+skipped=(\d+)\s+rescued=(\d+)\s+ignored=(\d+)")


@dataclass
class ConvergeResult:
    recap: dict[str, dict[str, int]] = field(default_factory=dict)
    secrets_changes: list[str] = field(default_factory=list)
    returncode: int = 0
    # Every task result (host, task, role, handler, status, changed, seconds,
    # diff), from the mailops.mail.record callback.
    tasks: list[dict] = field(default_factory=list)

    def changed_tasks(self) -> list[dict]:
        return [t for t in self.tasks if t["changed"]]

    @property
    def changed(self) -> int:
        return sum(r["changed"] for r in self.recap.values())

    @property
    def failed(self) -> list[str]:
        return [h for h, r in self.recap.items() if r["failed"] or r["unreachable"]]

    def table(self) -> str:
        rows = [[h, r["ok"], r["changed"], r["failed"], r["unreachable"]]
                for h, r in sorted(self.recap.items())]
        return table(["host", "ok", "changed", "failed", "unreachable"], rows)


def ansible_env(inventory: Inventory) -> dict[str, str]:
    # Strict host keys and the hosts' key (Inventory.connection), and a
    # persistent control connection so tasks reuse one SSH session.
    env = dict(os.environ) | inventory.ansible_ssh_env()
    env.setdefault("ANSIBLE_SSH_ARGS", "-o ControlMaster=auto -o ControlPersist=120s")
    # Handlers run for what a host changed even when a later task fails
    # there: the re-run finds the files in place and would never reload.
    env.setdefault("ANSIBLE_FORCE_HANDLERS", "true")
    return env


def run_playbook(inventory: Inventory, playbook: Path = SITE, check: bool = False,
                 diff: bool = False, extra: list[str] | None = None,
                 drained: frozenset[str] = frozenset()) -> ConvergeResult:
    argv = [venv_bin("ansible-playbook"), "-i", str(inventory.path), str(playbook),
            "--vault-password-file", str(inventory.vault_password_file)]
    if check:
        argv.append("--check")
    if diff:
        argv.append("--diff")
    result = ConvergeResult()
    log = []
    env = ansible_env(inventory)
    # The derived site values (mailops_site), computed in Python once.
    site_dir = tempfile.mkdtemp(prefix="mailops-site-")
    site_file = ansible_vars.write(inventory, load_mail_model(inventory),
                                   Path(site_dir) / "site.json", drained)
    argv += ["-e", f"@{site_file}", *(extra or [])]
    # MAILOPS_RECORD_FILE set by the caller keeps the per-task record (for
    # finding where converge time goes); otherwise a temporary file.
    keep = os.environ.get("MAILOPS_RECORD_FILE")
    if keep:
        Path(keep).write_text("")
        record_name = keep
    else:
        fd, record_name = tempfile.mkstemp(prefix="mailops-tasks-", suffix=".jsonl")
        os.close(fd)
    env["MAILOPS_RECORD_FILE"] = record_name
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=ROOT, stdin=subprocess.DEVNULL)
        _follow(proc, result, log)
        text = Path(record_name).read_text()
    finally:
        if not keep:
            os.unlink(record_name)
        shutil.rmtree(site_dir, ignore_errors=True)
    result.tasks = [json.loads(line) for line in text.splitlines() if line.strip()]
    result.returncode = proc.wait()
    if result.returncode != 0 and not result.failed:
        tail = "".join(log[-30:])
        raise MailopsError(f"ansible-playbook failed ({result.returncode}):\n{tail}")
    if result.failed:
        # Show the failing tasks' output (Ansible keeps secrets out with no_log).
        fatal = "".join(ln for ln in log if ln.startswith(("fatal:", "failed:")))
        raise MailopsError(f"converge failed on {', '.join(result.failed)}:\n{fatal}\n"
                           "fix the cause and run again: converge is safe to repeat")
    return result


def _follow(proc: subprocess.Popen, result: ConvergeResult, log: list[str]) -> None:
    """Stream progress from ansible-playbook's output and parse its recap."""
    in_recap = False
    for line in proc.stdout:
        log.append(line)
        line = line.rstrip()
        if line.startswith(("TASK [", "RUNNING HANDLER [")):
            step("converge", "*", line.split("[", 1)[1].split("]")[0])
        elif line.startswith(("changed: [", "fatal: [", "failed: [")):
            host = line.split("[", 1)[1].split("]")[0]
            step("converge", host, line.split(":")[0])
        elif line.startswith("PLAY RECAP"):
            in_recap = True
        elif in_recap and (m := RECAP_RE.match(line)):
            keys = ("ok", "changed", "unreachable", "failed", "skipped", "rescued", "ignored")
            result.recap[m[1]] = dict(zip(keys, map(int, m.groups()[1:]), strict=True))


def converge(inventory: Inventory, check: bool = False, diff: bool = False,
             limit: str | None = None,
             drained: frozenset[str] = frozenset()) -> ConvergeResult:
    """limit: an Ansible host pattern (`mail`: the mail nodes only);
    drained: mail nodes that get no deliveries or sessions (a rebuild)."""
    model = load_mail_model(inventory)
    changes: list[str] = []
    if not check:
        inventory, changes = ensure_secrets(inventory, model)
    result = run_playbook(inventory, check=check, diff=diff,
                          extra=["--limit", limit] if limit else None, drained=drained)
    result.secrets_changes = changes
    return result
