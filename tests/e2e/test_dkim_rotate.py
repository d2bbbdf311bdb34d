"""DKIM key rollover on the session's lab: `dkim rotate` while mail is sent
all along. Every message, signed before, during and after the rotation,
verifies with dkimpy against the lab's own name server; the new selector
signs once it resolves; after the grace period the DNS plan deletes the old
selector and only the new one is published; verify checks the signing
selector. Afterwards the lab is put back (the model's selector signs)."""

from __future__ import annotations

import email
import json
import re
import subprocess
import threading
import time
from pathlib import Path

import dkim
import dns.exception
import dns.resolver
import pytest

from mailops.verify.mailclient import message, wait_imap
from tests.conftest import DEPLOY, ROOT, deploy

pytestmark = pytest.mark.lab

DOMAIN = "example.test"
GRACE = 40  # seconds the old selector stays published in this test


def _resolver(node) -> dns.resolver.Resolver:
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [str(node.inventory.group("dns")[0].address)]
    res.cache = None
    return res


def _lab_dns(node):
    """dkimpy's key lookup, asking the lab's name server (no cache)."""
    res = _resolver(node)

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            answer = res.resolve(name.decode().rstrip("."), "TXT", lifetime=timeout)
        except dns.exception.DNSException:
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    return lookup


def _published(node, selector: str) -> bool:
    try:
        _resolver(node).resolve(f"{selector}._domainkey.{DOMAIN}", "TXT")
        return True
    except dns.resolver.NXDOMAIN:
        return False


class _Sender(threading.Thread):
    """A message from alice to bob every two seconds while the rotation
    runs; bounded by count and time."""

    def __init__(self, node, limit: int = 120, seconds: float = 300) -> None:
        super().__init__(daemon=True)
        self.node, self.limit, self.seconds = node, limit, seconds
        self.stop = threading.Event()
        self.subjects: list[str] = []

    def run(self) -> None:
        alice, password = self.node.account("alice@example.test")
        deadline = time.monotonic() + self.seconds
        while (not self.stop.is_set() and len(self.subjects) < self.limit
               and time.monotonic() < deadline):
            msg = message(alice, ["bob@example.test"], f"rotation {len(self.subjects):03d}")
            self.node.endpoint.send(587, alice, password, msg)
            self.subjects.append(msg["Subject"])
            time.sleep(2.0)


def _signed(node, subject: str) -> tuple[str, bool]:
    """(selector, verifies) of a message bob received."""
    raw = wait_imap(node.endpoint, *node.account("bob@example.test"), subject, timeout=60)
    sig = email.message_from_bytes(raw)["DKIM-Signature"]
    assert sig, subject
    selector = re.search(r"\bs=([^;\s]+)", sig)[1]
    return selector, dkim.verify(raw, dnsfunc=_lab_dns(node))


def test_rotate_while_mail_flows_then_the_old_selector_goes(node, lab_inventory):
    old = node.model.dkim_selector
    state = Path(lab_inventory) / "group_vars" / "all" / "dkim.yml"
    alice, password = node.account("alice@example.test")
    before = message(alice, ["bob@example.test"], "before the rotation")
    node.endpoint.send(587, alice, password, before)
    assert _signed(node, before["Subject"]) == (old, True)
    try:
        sender = _Sender(node)
        sender.start()
        try:
            time.sleep(2)
            proc = subprocess.run(
                [*DEPLOY, "dkim", "rotate", "--domain", DOMAIN, "--grace", f"{GRACE}s",
                 "-i", str(lab_inventory), "--json"],
                capture_output=True, text=True, timeout=900, cwd=ROOT)
            switched = time.monotonic()
            time.sleep(3)
        finally:
            sender.stop.set()
            sender.join(timeout=60)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        new = report["selectors"][DOMAIN]["signing"]
        assert new != old and new.startswith(old + "-")
        assert list(report["selectors"][DOMAIN]["retired"]) == [old]
        # Progress went to stderr, step by step; no key was printed.
        assert "wait for" in proc.stderr and "PRIVATE KEY" not in proc.stdout + proc.stderr
        steps = [s["step"] for s in report["steps"]]
        assert steps.index("publish the new selectors") < steps.index(
            f"wait for {new}._domainkey to resolve") < len(steps) - 1

        # Both published during the grace period; every message of the
        # run verifies, the first ones signed by the old key, the last by
        # the new one.
        assert _published(node, old) and _published(node, new)
        after = message(alice, ["bob@example.test"], "after the rotation")
        node.endpoint.send(587, alice, password, after)
        seen = [_signed(node, s) for s in [*sender.subjects, after["Subject"]]]
        assert len(seen) >= 10, seen
        assert all(ok for _, ok in seen), seen
        assert seen[0][0] == old and seen[-1][0] == new, seen
        assert {s for s, _ in seen} == {old, new}, seen
        assert time.monotonic() - switched < GRACE, "checked after the grace period"

        # verify checks the selector the nodes sign with now.
        res = deploy("verify", "-i", str(lab_inventory), "--json", check=False)
        rows = [r for r in json.loads(res.stdout)["checks"]
                if r["check"] == "DKIM key matches the nodes" and DOMAIN in r["target"]]
        assert [r["target"] for r in rows] == [f"{new}._domainkey.{DOMAIN}"], rows
        assert rows[0]["result"] == "ok", rows

        # After the grace period the normal DNS plan deletes the old
        # selector (and nothing else); the new one stays, and signs.
        time.sleep(max(0.0, GRACE - (time.monotonic() - switched)) + 1)
        plan = json.loads(deploy("dns", "plan", "-i", str(lab_inventory), "--json").stdout)
        changes = [c for z in plan["zones"] for c in z["changes"] if not c["marker"]]
        assert [(c["action"], c["name"]) for c in changes] == [
            ("delete", f"{old}._domainkey")], changes
        deploy("dns", "apply", "-i", str(lab_inventory))
        assert not _published(node, old) and _published(node, new)
        last = message(alice, ["bob@example.test"], "after the grace period")
        node.endpoint.send(587, alice, password, last)
        assert _signed(node, last["Subject"]) == (new, True)
    finally:
        # Put the lab back: the model's selector signs and is published
        # again (its key never left the vault), the rotated one goes.
        state.unlink(missing_ok=True)
        # The nodes sign (rspamd); the records are the DNS apply's.
        deploy("converge", "--limit", "mail", "-i", str(lab_inventory), timeout=1800)
        deploy("dns", "apply", "-i", str(lab_inventory), "--force")
    assert _published(node, old)
    again = message(alice, ["bob@example.test"], "put back")
    node.endpoint.send(587, alice, password, again)
    assert _signed(node, again["Subject"]) == (old, True)
