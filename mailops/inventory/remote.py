"""Run a command on an inventory host over SSH, the way Ansible reaches it
(Inventory.connection: strict host key checking, no prompts)."""

from __future__ import annotations

import subprocess

from mailops.inventory.model import Host, Inventory


def ssh_argv(inventory: Inventory, host: Host) -> list[str]:
    return inventory.connection(host).ssh_argv()


def run(inventory: Inventory, host: Host, command: str, timeout: float = 60,
        stdin: str | None = None) -> subprocess.CompletedProcess:
    """The command's result; never raises for a non-zero status."""
    try:
        return subprocess.run([*ssh_argv(inventory, host), command], capture_output=True,
                              text=True, timeout=timeout, input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, 124, e.stdout or "",
                                           f"timed out after {timeout:.0f} s")


def sendmail(inventory: Inventory, host: Host, sender: str, rcpt: str, subject: str,
             body: str) -> subprocess.CompletedProcess:
    """Hand a message to the host's own Postfix, as a local program would
    (it is delivered or relayed from that host)."""
    text = f"From: {sender}\nTo: {rcpt}\nSubject: {subject}\n\n{body}\n"
    return run(inventory, host, f"/usr/sbin/sendmail -f {sender} {rcpt}", stdin=text)
