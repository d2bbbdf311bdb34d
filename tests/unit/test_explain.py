"""`explain`: every reply MAIL-BASICS.md names, as real servers word them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailops.verify.explain import explain

ROOT = Path(__file__).resolve().parents[2]

# (reply as sent, words the cause must contain, words the remedy must contain)
CASES = [
    ("550 Host unknown", "domain", "after @"),
    ("550 5.1.2 <x@nowhere.invalid>: Recipient address rejected: Domain not found",
     "domain", "after @"),
    ("550 User unknown", "account", "before @"),
    ("550 5.1.1 <nobody@example.test>: Recipient address rejected: User unknown in virtual "
     "mailbox table", "does not exist", "before @"),
    ("551 Access denied", "not local", "destination"),
    ("554 5.7.1 <v@elsewhere.example>: Relay access denied", "relay", "587"),
    ("552 Message too large", "too large", "attachments"),
    ("552 5.3.4 Message size exceeds fixed limit", "larger", "attachments"),
    ("552 5.2.2 <tiny@example.net>: Recipient address rejected: Mailbox is full",
     "full", "quota"),
    ("553 Recipient is not local", "not owned", "settings"),
    ("553 5.7.1 <bob@example.test>: Sender address rejected: not owned by user "
     "alice@example.test", "not theirs", "your own address"),
    ("554 5.7.1 Spam message rejected", "spam", "spam"),
    ("554 Service unavailable", "transaction failed", "full reply text"),
    ("530 5.7.0 Must issue a STARTTLS command first", "before starting TLS", "STARTTLS"),
    ("451 4.3.0 Temporary lookup failure", "temporary", "retries"),
    ("452 4.2.2 Mailbox full", "full", "free"),
]


@pytest.mark.parametrize(("reply", "cause", "remedy"), CASES)
def test_reply_is_explained(reply, cause, remedy):
    e = explain(reply)
    assert e.known
    assert cause.lower() in e.cause.lower(), e
    assert remedy.lower() in e.remedy.lower(), e
    assert e.permanent is (reply[0] == "5")


def test_unknown_reply_says_so_and_points_to_the_full_text():
    e = explain("599 9.9.9 something nobody has seen")
    assert not e.known
    assert "does not know" in e.cause and "full reply text" in e.remedy


def test_explain_command_prints_cause_and_remedy():
    res = subprocess.run([sys.executable, str(ROOT / "deploy.py"), "explain",
                          "550 5.1.1 User unknown"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "cause:" in res.stdout and "before @" in res.stdout
    res = subprocess.run([sys.executable, str(ROOT / "deploy.py"), "explain",
                          "599 9.9.9 odd"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3 and "does not know" in res.stdout, res.stdout
