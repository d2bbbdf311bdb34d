"""The verify passes: the short one `up` ends with (ports and a round trip)
and `deploy.py verify`'s full one (client side, the outside world, the
cluster as the balancer sees it, DNS)."""

from __future__ import annotations

from mailops.core.progress import step
from mailops.inventory.model import Inventory
from mailops.verify import dnscheck, external, nodes, probes
from mailops.verify.report import Report
from mailops.verify.service import Service, service_for


def quick(svc: Service) -> Report:
    """The pass `up` ends with: every port through the balancer, a round trip."""
    report = Report()
    probes.check_ports(svc, report)
    probes.check_round_trip(svc, report)
    return report


def full(inventory: Inventory) -> Report:
    """`deploy.py verify`: the service as clients and other servers see it,
    the cluster as the balancer sees it, and the DNS."""
    svc = service_for(inventory)
    report = Report()
    probes.check_ports(svc, report)
    probes.check_security(svc, report)
    probes.check_round_trip(svc, report)
    external.check_external(inventory, svc, report)
    nodes.check_balancer_view(inventory, svc, report)
    down = nodes.dovecot_down(inventory)
    nodes.check_replication(inventory, svc, report, down)
    nodes.check_homes(inventory, svc, report, down)
    nodes.check_session_homes(inventory, svc, report)
    nodes.check_node_health(inventory, report)
    step("verify", "-", "DNS")
    dnscheck.check_dns(inventory, report)
    dnscheck.check_mta_sts(inventory, svc, report)
    return report
