"""Shared fixtures. End-to-end tests share ONE lab cluster per session, with
its own name and subnet, so they never touch a lab the user has up."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = [sys.executable, str(ROOT / "deploy.py")]
# The session lab's name and subnet; overridable for development.
TEST_LAB_NAME = os.environ.get("MAILOPS_TEST_LAB_NAME", "mtest")
TEST_LAB_NET = os.environ.get("MAILOPS_TEST_LAB_NET", "198.18.100")
# MAILOPS_TEST_KEEP_LAB=1 (for development) reuses a test lab left up by an
# earlier run, with its inventory, and leaves it up; normally every session
# starts clean.
KEEP_LAB = os.environ.get("MAILOPS_TEST_KEEP_LAB") == "1"
TIMINGS: list[tuple[str, float]] = []
FIRST_UP: list[subprocess.CompletedProcess] = []  # the session's cold `deploy.py up`


def lab_inventory_copy(dest: Path, name: str, net: str, hosts: list[str] | None = None) -> Path:
    """inventories/lab with its own lab name and subnet (and optionally fewer
    hosts); group_vars are copied as they are, so the mail model is the same."""
    src = ROOT / "inventories" / "lab"
    dest.mkdir(parents=True, exist_ok=True)
    text = (src / "hosts.yml").read_text()
    text = text.replace("name: mailops", f"name: {name}").replace("198.18.0.", f"{net}.")
    if hosts is not None:
        import yaml

        data = yaml.safe_load(text)
        for group in data["all"]["children"].values():
            group["hosts"] = {h: v for h, v in (group.get("hosts") or {}).items() if h in hosts}
            if len(group["hosts"]) < 2 and "mailops_floating_address" in (group.get("vars") or {}):
                # One balancer left: it has no floating address to share.
                del group["vars"]["mailops_floating_address"]
        text = yaml.safe_dump(data, sort_keys=False)
    (dest / "hosts.yml").write_text(text)
    if (src / "group_vars").exists():
        # The lab's vault belongs to the lab's password; a copy makes its own.
        shutil.copytree(src / "group_vars", dest / "group_vars", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("vault.yml"))
    return dest


def deploy(*args: str, timeout: float = 900, check: bool = True,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    res = subprocess.run([*DEPLOY, *args], capture_output=True, text=True, timeout=timeout,
                         cwd=ROOT, stdin=subprocess.DEVNULL,
                         env=None if env is None else {**os.environ, **env})
    took = time.monotonic() - t0
    TIMINGS.append((" ".join(a for a in args if not a.startswith("/")), took))
    if check and res.returncode != 0:
        raise AssertionError(f"deploy.py {' '.join(args)} failed ({res.returncode}):\n"
                             f"{res.stdout}\n{res.stderr}")
    return res


# Test tiers, by folder: unit (offline, seconds, no root), integration
# (loopback named, moto, the linters, real ansible-playbook on localhost),
# container (the roles' files checked with the real tools in an nspawn
# container), lab (end to end on lab hosts). `-m unit` runs the fast ones.
TIERS = {"unit": "unit", "integration": "integration", "container": "container", "e2e": "lab"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT).parts
        tier = TIERS.get(parts[1]) if len(parts) > 2 and parts[0] == "tests" else None
        if tier is None:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of tests/"
                                    f"{{{','.join(TIERS)}}}/ (its tier)")
        item.add_marker(tier)


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("deploy.py timings")
        for what, took in TIMINGS:
            terminalreporter.write_line(f"{took:7.1f} s  deploy.py {what}")


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests boot lab hosts and need root")


@pytest.fixture(scope="session")
def lab_inventory(tmp_path_factory) -> Path:
    if KEEP_LAB:
        # A kept lab keeps its inventory too: a new copy would make a new vault,
        # and the next `up` would rotate every secret (DKIM keys included,
        # which receivers still hold in their DNS caches).
        dest = Path("/var/lib/mailops/test-inventories") / TEST_LAB_NAME / "lab"
        return lab_inventory_copy(dest, TEST_LAB_NAME, TEST_LAB_NET)
    return lab_inventory_copy(tmp_path_factory.mktemp("inv") / "lab", TEST_LAB_NAME,
                              TEST_LAB_NET)


@pytest.fixture(scope="session")
def lab(lab_inventory):
    """The session's lab cluster: up and bootstrapped once, down at the end."""
    _need_root()
    from mailops.inventory.model import load_inventory
    from mailops.lab.lab import Lab

    inventory = load_inventory(lab_inventory)
    if not KEEP_LAB:
        deploy("lab", "down", "-i", str(lab_inventory))  # a crashed earlier run
    # The whole main job: lab, bootstrap, converge, DNS, verify.
    res = deploy("up", "-i", str(lab_inventory), timeout=1800)
    FIRST_UP.append(res)
    yield Lab(inventory)
    if not KEEP_LAB:
        deploy("lab", "down", "-i", str(lab_inventory), check=False)


def no_changes_in(output: str) -> re.Match | None:
    return re.search(r"no changes in [0-9.]+ s", output)


class MailNode:
    """A converged mail node as the tests see it: where to connect, the
    accounts' passwords and the DKIM keys (read from the lab's vault)."""

    def __init__(self, inventory, address: str, tmp: Path) -> None:
        from mailops.core.paths import vault_file
        from mailops.secrets.pki import dkim_public_record
        from mailops.secrets.vault import load_secrets
        from mailops.site.mailmodel import load_mail_model
        from mailops.verify.mailclient import Endpoint

        self.inventory = inventory
        self.model = load_mail_model(inventory)
        # Read only: the tests never write the vault the converge made.
        secrets = load_secrets(vault_file(inventory.path), inventory.vault_password_file)
        missing = {m.address for m in self.model.mailboxes if m.password_hash is None} - set(
            secrets.mailboxes)
        missing |= set(self.model.domains) - set(secrets.dkim)
        assert not missing and secrets.ca, f"the converge left secrets to generate: {missing}"
        self.secrets = secrets
        self._passwords = {a: v["password"] for a, v in secrets.mailboxes.items()}
        ca = tmp / "ca.crt"
        ca.write_text(secrets.ca.cert_pem)
        self.endpoint = Endpoint(address, self.model.service_name, ca)
        sel = self.model.dkim_selector
        self._dkim = {f"{sel}._domainkey.{d}.".encode(): dkim_public_record(k).encode()
                      for d, k in secrets.dkim.items()}

    def account(self, address: str) -> tuple[str, str]:
        return address, self._passwords[address]

    def dkim_dns(self, name: bytes, timeout: int = 5) -> bytes | None:
        return self._dkim.get(name.lower())


@pytest.fixture(scope="session")
def converged(lab, lab_inventory):
    """The session lab with the mail service deployed on it (`up` converged it)."""
    from mailops.inventory.model import load_inventory

    return load_inventory(lab_inventory)


@pytest.fixture(scope="session")
def node(converged, tmp_path_factory):
    """The mail service as clients reach it: through the balancers'
    floating address (the nodes take only PROXY protocol connections from
    the balancers)."""
    from mailops.site.derived import front

    return MailNode(converged, front(converged)[0], tmp_path_factory.mktemp("node"))


def message_ids(imap, folder: str) -> dict[str, str]:
    """Message-ID -> flags of every message in a folder."""
    imap.select(f'"{folder}"', readonly=True)
    typ, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    found = {}
    for item in data:
        if isinstance(item, tuple):
            flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
            msgid = item[1].decode().split(":", 1)[1].strip()
            # \Recent belongs to a session, not to the message.
            found[msgid] = " ".join(sorted(set(flags[1].decode().split()) - {"\\Recent"}))
    return found


def session_node(imap) -> str:
    """Which node serves an IMAP session: x-mailops-node in the ID reply,
    sent after login by the node at the end of any proxy hop."""
    import imaplib

    imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))
    typ, data = imap._simple_command("ID", "NIL")
    ids = imap._untagged_response(typ, data, "ID")[1]
    found = re.search(r'"x-mailops-node" "([^"]*)"',
                      b" ".join(d for d in ids if isinstance(d, bytes)).decode())
    return found[1] if found else ""
