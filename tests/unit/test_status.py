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
