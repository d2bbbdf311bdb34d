"""The derived site values handed to Ansible as one variable, mailops_site,
so that the playbooks' vars/*.yml only rename: zones and the external
domain's records for the name server, replication pairs, the balancer's
backends, the balancers' floating address, PROXY protocol, MTA-STS, the
resolvers, the mailboxes' homes and the brute-force ban.
Computed in Python (mailops.site.derived, .mtasts, .homes) and nowhere else."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mailops.inventory.model import Inventory
from mailops.site import dkim, homes, moves, mtasts
from mailops.site.derived import (
    external_domain,
    replication_pairs,
    service_zone,
    tsig_key_name,
    vrrp,
    zones_served,
)
from mailops.site.mailmodel import MailModel

BANNER = "Managed by mailops; local changes are overwritten."
LEGACY_TTL = 3600  # a lab legacy domain's record TTL before the move
MYNETWORKS = ("127.0.0.0/8", "[::1]/128")  # who may relay through a mail node


def proxy_protocol(inventory: Inventory) -> bool:
    """Behind a balancer (an `lb` group) the nodes take PROXY protocol
    headers, and only the balancer may send them."""
    value = inventory.site_vars().get("mailops_proxy_protocol")
    return bool(inventory.group("lb")) if value is None else bool(value)


def site_vars(inventory: Inventory, model: MailModel,
              drained: frozenset[str] = frozenset()) -> dict[str, Any]:
    """drained: mail nodes that take no mailbox's deliveries or sessions
    (a node being rebuilt): left out of every home's list, unless a
    mailbox has no other node."""
    addr = {h.name: str(h.address) for h in inventory.hosts}
    ext = external_domain(inventory)
    ext_hosts = inventory.group("external")
    static: dict[str, list[str]] = {}
    if ext and ext_hosts:
        # The external domain is nobody's to publish: its mail records go
        # into its zone's first file.
        host = ext_hosts[0].name
        static[ext] = [f"@ MX 10 {host}.{ext}.", '@ TXT "v=spf1 mx -all"',
                       f"{host} A {addr[host]}"]
    every_move = moves.moves(inventory)
    legacy_zones = []
    if inventory.lab:
        # A lab's legacy server is the domain's MX before the move, with the
        # long TTL such records have (the cutover adopts the records).
        for move in every_move:
            legacy_zones.append(move.domain)
            static.setdefault(move.domain, [
                f"@ {LEGACY_TTL} MX 10 {move.host}.{move.domain}.",
                f'@ {LEGACY_TTL} TXT "v=spf1 mx -all"',
                f"{move.host} {LEGACY_TTL} A {move.address}"])
    held = {m.domain: m for m in every_move if m.held}
    peers: dict[str, dict[str, Any]] = {}
    for first, second in replication_pairs(inventory):
        peers[first] = {"address": addr[second], "first": True}
        peers[second] = {"address": addr[first], "first": False}
    every_home = homes.homes(inventory, model)
    mail_nodes = [h.name for h in inventory.group("mail")]
    sts = mtasts.enabled(model, inventory)
    resolvers = inventory.site_vars().get("mailops_dns_servers")
    if not resolvers:
        # A lab resolves through its own name server (there is no other);
        # an authoritative-only server must not become a production resolver.
        resolvers = [addr[h.name] for h in inventory.group("dns")] if inventory.lab else []
    return {
        "banner": BANNER,
        "service_zone": service_zone(model),
        "zones": list(dict.fromkeys([*zones_served(model, ext), *legacy_zones])),
        "static_records": static,
        "tsig_key_name": tsig_key_name(inventory),
        "external_domain": ext or "",
        "proxy_protocol": proxy_protocol(inventory),
        "peers": peers,
        "backends": {h.name: addr[h.name] for h in inventory.group("mail")},
        "balancers": [addr[h.name] for h in inventory.group("lb")],
        # The balancers' floating address (keepalived), when there are two.
        "vrrp": vrrp(inventory),
        "resolvers": list(resolvers),  # resolv.conf and rspamd alike
        "mailboxes": [m.address.lower() for m in model.mailboxes],
        # Where each mailbox is delivered and its sessions served: its home
        # node, then the fallback.
        "homes": [{"address": h.address, "node": h.node,
                   "nodes": [addr[n] for n in h.nodes if n not in drained]
                   or [addr[n] for n in h.nodes]}
                  for h in every_home.values()],
        # Postfix delivers the mailboxes of domains that a legacy server
        # still takes (a move before its cutover) to that server instead.
        "delivery_homes": [{"address": h.address,
                            "nodes": [addr[n] for n in h.nodes if n not in drained]
                            or [addr[n] for n in h.nodes]}
                           for h in every_home.values()
                           if h.address.rsplit("@", 1)[1] not in held],
        "forward_domains": {d: f"[{m.address}]:25" for d, m in sorted(held.items())},
        # A legacy server after the cutover relays through the cluster.
        "mynetworks": [*MYNETWORKS, *(f"{m.address}/32" for m in every_move if m.relaying)],
        "backend_ports": dict(homes.BACKEND_PORTS),
        # Each mail node's peers: they proxy logins to it and deliver to it.
        "mail_peers": {n: [addr[m] for m in mail_nodes if m != n] for n in mail_nodes},
        # The mailboxes each node's pair stores (made there, synced there).
        "pair_mailboxes": {n: [a for a, h in every_home.items() if n in (h.node, h.fallback)]
                           for n in mail_nodes},
        # Brute-force protection: the nodes' failed logins go to every
        # balancer, which refuses an address that failed too often (a node
        # sees only the balancer's address on the wire); never the
        # balancers' or the nodes' own addresses.
        "auth_ban": {"failures": model.auth_ban.failures, "within": model.auth_ban.within,
                     "ban": model.auth_ban.ban,
                     "ignore": ["127.0.0.1/8", "::1",
                                *(addr[h.name] for h in inventory.group("lb")),
                                *([str(inventory.floating_address)]
                                  if inventory.floating_address else []),
                                *(addr[n] for n in mail_nodes)],
                     "log_senders": [addr[n] for n in mail_nodes],
                     "log_receivers": {h.name: addr[h.name] for h in inventory.group("lb")}},
        # The selector each domain signs with (a rollover's, else the model's).
        "dkim_selectors": {d: s.signing for d, s in dkim.selectors(inventory, model).items()},
        "mta_sts": {"enabled": sts, "hosts": mtasts.hosts(model) if sts else [],
                    "policy": mtasts.policy(model)},
    }


def write(inventory: Inventory, model: MailModel, path: Path,
          drained: frozenset[str] = frozenset()) -> Path:
    """As an extra-vars file for ansible-playbook (-e @path)."""
    path.write_text(json.dumps({"mailops_site": site_vars(inventory, model, drained)},
                               indent=1))
    return path
