"""status's parsing of what the nodes and the balancer say: the node probe's
lines, doveadm's replicator times, HAProxy's stats CSV."""

from __future__ import annotations

import pytest

from mailops.ops.status import parse_node, since_seconds
from mailops.verify.nodes import parse_haproxy_stat

pytestmark = pytest.mark.unit

PROBE = """now: 1000000
services: active active inactive active
queue: 3 1
disk: 29%
cert: 913600 9640000
dkim: example.net.mo2026 827200
repl: gina@example.org         none     00:00:02  00:00:41  00:00:41     -
repl: alice@example.test       high     00:00:27  1d 00:00:41  1d 02:00:28     y
repl: garbage
"""


def test_a_node_probe_becomes_services_queue_disk_key_ages_and_replication():
    node, repl = parse_node("mail1", PROBE)
    assert node.services == {"postfix": "active", "dovecot": "active", "rspamd": "inactive",
                             "redis-server": "active"}
    assert (node.queue, node.deferred, node.disk) == (3, 1, "29%")
    assert (node.cert_age_days, node.cert_days_left) == (1, 100)
    assert node.dkim_age_days == {"example.net.mo2026": 2}
    assert [(r.mailbox, r.pending, r.failed, r.lag) for r in repl] == [
        ("gina@example.org", False, False, 0),  # nothing waits: no lag
        ("alice@example.test", True, True, (26 * 60 + 0) * 60 + 28)]


def test_replicator_times_with_days_and_dashes():
    assert since_seconds("00:01:02") == 62
    assert since_seconds("2d 01:00:00") == 2 * 86400 + 3600
    assert since_seconds("-") is None


def test_haproxy_stats_rows_by_backend_and_server():
    csv = ("# pxname,svname,scur,stot,status\n"
           "smtp,FRONTEND,0,5,OPEN\nsmtp,mail1,1,7,UP\nsmtp,mail2,0,3,DRAIN\n"
           "smtp,BACKEND,1,10,UP\n")
    rows = parse_haproxy_stat(csv)
    assert sorted(rows) == [("smtp", "mail1"), ("smtp", "mail2")]
    assert rows[("smtp", "mail2")]["status"] == "DRAIN" and rows[("smtp", "mail1")]["scur"] == "1"


class _Balancers:
    """The part of a runbook session set_balancer_state uses: two balancers'
    stats rows, and the commands it would run on each."""

    def __init__(self, status: dict[str, str]):
        from ipaddress import IPv4Address

        from mailops.inventory.model import Host
        from mailops.verify.nodes import BACKEND

        self.hosts = {n: Host(n, ("lb",), IPv4Address(f"198.19.9.{k}"))
                      for k, n in enumerate(("lb1", "lb2"), 1)}
        self.rows = {(b, "mail1"): {"status": status.get(b, "UP")} for b in BACKEND.values()}
        self.ran: dict[str, list[str]] = {}

    def haproxy(self, name):
        return self.rows

    def operate(self, name, host, commands):
        self.ran[host] = commands
        return bool(commands)


def test_undrain_readies_a_server_that_shows_down_as_its_drain_may_hide_under_it():
    from mailops.ops.runbook import set_balancer_state

    s = _Balancers({"imaps": "DOWN", "pop3": "DRAIN", "imap": "UP 1/2"})
    changed = set_balancer_state(s, "mail1", "ready")
    assert changed == ["lb1: imaps", "lb1: pop3", "lb2: imaps", "lb2: pop3"]
    assert all(len(cmds) == 2 and "set server imaps/mail1 state ready" in cmds[0]
               for cmds in s.ran.values())
    assert set_balancer_state(_Balancers({}), "mail1", "ready") == []  # all UP: nothing
