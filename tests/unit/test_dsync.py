"""node_sync: the one way the runbooks copy a mailbox between mail nodes
(move-mailbox, rebuild): under the user's dsync lock, tried again only
where asked, a bounded number of times."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address

import pytest

from mailops.inventory.model import Host
from mailops.ops import dsync

pytestmark = pytest.mark.unit

SRC = Host("mail1", ("mail",), IPv4Address("198.19.7.11"))
DEST = Host("mail2", ("mail",), IPv4Address("198.19.7.12"))


def _fake_runs(monkeypatch, exits: list[int]) -> tuple[list[str], list[float]]:
    """doveadm's exits, one per try, run on a fake node; sleeps recorded, not slept."""
    calls: list[str] = []
    slept: list[float] = []

    def run(inventory, host, command, timeout=None):
        assert host is SRC
        calls.append(command)
        code = exits[len(calls) - 1]
        return subprocess.CompletedProcess(command, code, "", f"dsync: exit {code}")
    monkeypatch.setattr(dsync.remote, "run", run)
    monkeypatch.setattr(dsync.time, "sleep", slept.append)
    return calls, slept


def test_the_sync_holds_the_users_lock_and_goes_to_the_doveadm_port(monkeypatch):
    calls, slept = _fake_runs(monkeypatch, [0])
    res = dsync.node_sync(None, SRC, DEST, "alice@example.test", "backup")
    assert res.returncode == 0 and slept == []
    assert calls == [f"doveadm backup -l {dsync.LOCK_WAIT} -u alice@example.test "
                     "tcp:198.19.7.12:12345"]


@pytest.mark.parametrize("retry_on, exits, tries", [
    ((dsync.TEMPFAIL,), [75, 75, 0], 3),  # locked twice, then done
    ((dsync.TEMPFAIL,), [1], 1),  # not dsync's "try again": one try
    ((dsync.TEMPFAIL,), [75] * 5, 5),  # bounded: the first try and one per wait
    (None, [1, 2, 0], 3),  # a node that has just started: any failure again
    (None, [1] * 5, 5),
])
def test_tried_again_only_where_asked_and_bounded(monkeypatch, retry_on, exits, tries):
    calls, slept = _fake_runs(monkeypatch, exits)
    res = dsync.node_sync(None, SRC, DEST, "alice@example.test", retry_on=retry_on)
    assert res.returncode == exits[tries - 1]
    assert len(calls) == tries and slept == list(dsync.RETRY_WAITS[:tries - 1])
    assert all(c.startswith("doveadm sync -l ") for c in calls)


def test_only_sync_and_backup_copy_between_nodes(monkeypatch):
    calls, _ = _fake_runs(monkeypatch, [0])
    with pytest.raises(ValueError, match="doveadm mirror"):
        dsync.node_sync(None, SRC, DEST, "alice@example.test", "mirror")
    assert calls == []
