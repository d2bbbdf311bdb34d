"""Values derived from the inventory and the mail model, computed once here
and handed on: to the DNS plan, the secrets, verify, and Ansible (through
mailops.site.ansible_vars). Nothing downstream computes them again."""

from __future__ import annotations

import re

from mailops.core.errors import InventoryError, InventoryErrors
from mailops.inventory.model import Inventory
from mailops.site.mailmodel import DNS_NAME_RE, MailModel

DEFAULT_TSIG_KEY = "mailops"
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def tsig_key_name(inventory: Inventory, errors: list[InventoryError] | None = None) -> str:
    """The TSIG key name the name server and the rfc2136 provider share.
    Problems go to errors when given (to be reported with others), else raise."""
    key = "mailops_dns_tsig_key_name"
    name = inventory.site_vars().get(key, DEFAULT_TSIG_KEY)
    if isinstance(name, str) and _KEY_NAME_RE.match(name):
        return name
    problem = InventoryError(inventory.defined_in(key, "dns.yml"), key,
                             f"{name!r} is not a TSIG key name",
                             "use a DNS-style name of letters, digits, '-' and '.', "
                             f"e.g. `{key}: mailops`")
    if errors is None:
        raise InventoryErrors([problem])
    errors.append(problem)
    return DEFAULT_TSIG_KEY


def external_domain(inventory: Inventory,
                    errors: list[InventoryError] | None = None) -> str | None:
    """The lab's other mail domain (the external host's), if any."""
    key = "mailops_external_domain"
    value = inventory.site_vars().get(key)
    if value is None or (isinstance(value, str) and DNS_NAME_RE.match(value)):
        return value
    problem = InventoryError(inventory.defined_in(key, "dns.yml"), key,
                             f"{value!r} is not a domain name",
                             "write a lowercase domain like ext.test")
    if errors is None:
        raise InventoryErrors([problem])
    errors.append(problem)
    return None


def service_zone(model: MailModel) -> str:
    """The zone holding the service name: the longest mail domain it is in,
    else its parent."""
    name = model.service_name
    inside = [d for d in model.domains if name == d or name.endswith("." + d)]
    return max(inside, key=len) if inside else name.split(".", 1)[1]


def zones_served(model: MailModel, external_domain: str | None) -> list[str]:
    """Every zone the deployment's own name server is authoritative for."""
    zones = [*model.domains, service_zone(model)]
    if external_domain:
        zones.append(external_domain)
    return list(dict.fromkeys(zones))


def replication_pairs(inventory: Inventory) -> list[tuple[str, str]]:
    """The mail nodes paired in inventory order (1st with 2nd, 3rd with
    4th, ...): dsync replicates within a pair. A node left alone has none."""
    nodes = [h.name for h in inventory.group("mail")]
    return [(nodes[i], nodes[i + 1]) for i in range(0, len(nodes) - 1, 2)]


def front(inventory: Inventory) -> tuple[str, str]:
    """Where clients and other mail servers reach the service, and what to
    call it in reports: the balancers' floating address, else the one
    balancer, else the first mail node."""
    lbs = inventory.group("lb")
    if inventory.floating_address is not None:
        return str(inventory.floating_address), "+".join(h.name for h in lbs)
    host = (lbs or inventory.group("mail"))[0]
    return str(host.address), host.name


def vrrp(inventory: Inventory) -> dict[str, object]:
    """The balancers' VRRP settings, each balancer's own: the floating
    address and its prefix, the others' addresses (unicast adverts), and a
    priority falling in inventory order (it only decides who takes the
    address when they start together: nopreempt keeps it where it is)."""
    lbs = inventory.group("lb")
    if inventory.floating_address is None:
        return {"enabled": False}
    # A /32 is answered by ARP all the same and routes nothing of its own.
    return {"enabled": True, "address": str(inventory.floating_address), "prefix": 32,
            "priority": {h.name: max(1, 254 - i) for i, h in enumerate(lbs)},
            "peers": {h.name: [str(o.address) for o in lbs if o != h] for h in lbs}}
