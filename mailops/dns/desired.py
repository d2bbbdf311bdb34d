"""What every zone must hold: the mail model, the inventory's addresses and
the vault's DKIM public keys -> records per zone."""

from __future__ import annotations

from typing import Any

from mailops.core.errors import InventoryError, InventoryErrors, MailopsError
from mailops.core.paths import vault_file
from mailops.dns.records import MailDomainDNS, Record, desired_records, relative_name
from mailops.dns.settings import DNS_FILE, DnsSettings, settings
from mailops.inventory.model import Inventory
from mailops.secrets import pki
from mailops.site import mtasts
from mailops.site.derived import service_zone
from mailops.site.mailmodel import MailModel
from mailops.site.moves import held_domains


def service_addresses(inventory: Inventory, cfg: DnsSettings) -> tuple[str, ...]:
    """Where clients reach the service: the balancer, else the first mail node."""
    if cfg.service_ipv4:
        return cfg.service_ipv4
    front = inventory.group("lb") or inventory.group("mail")
    return (str(front[0].address),)


def default_spf(inventory: Inventory, service: tuple[str, ...]) -> str:
    # Mail nodes deliver outbound mail themselves, from their own addresses,
    # which the MX (the balancer) does not cover.
    senders = [str(h.address) for h in inventory.group("mail") if str(h.address) not in service]
    return " ".join(["v=spf1", "mx", *(f"ip4:{a}" for a in senders), "-all"])


def desired_for(inventory: Inventory, model: MailModel, secrets: Any,
                cfg: DnsSettings | None = None) -> dict[str, list[Record]]:
    """zone -> the records mailops publishes there."""
    cfg = cfg or settings(inventory)
    service = service_addresses(inventory, cfg)
    spf = cfg.spf or default_spf(inventory, service)
    sts_id = (mtasts.policy_id(mtasts.policy(model)) if mtasts.enabled(model, inventory)
              else None)
    out: dict[str, list[Record]] = {}
    held = held_domains(inventory)
    for domain in model.domains:
        if domain in held:
            # Its legacy server still takes its mail: its records change at
            # the cutover (`deploy.py migrate cutover`), not before.
            continue
        pem = secrets.dkim.get(domain)
        if not pem:
            raise MailopsError(f"{vault_file(inventory.path)}: vault_dkim_keys.{domain}: "
                               "missing\n  fix: run `deploy.py converge` first (it generates "
                               "the key once and installs it on the mail nodes)")
        try:
            d = MailDomainDNS(domain=domain, service_name=model.service_name,
                              dkim_selector=model.dkim_selector,
                              dkim_public=pki.dkim_public_record(pem), ipv4=service,
                              spf=spf, dmarc=cfg.dmarc, ttl=cfg.ttl, mta_sts_id=sts_id)
        except ValueError as e:
            key = "mailops_dns_dmarc" if "DMARC" in str(e) else "mailops_dns_spf"
            raise InventoryErrors([InventoryError(inventory.defined_in(key, DNS_FILE), key, str(e),
                                                  "correct the record text")]) from None
        out.setdefault(d.zone, []).extend(desired_records(d))
    zone = service_zone(model)
    if zone not in out:  # the service name lives outside every mail domain
        out[zone] = [Record(relative_name(model.service_name, zone), "A", cfg.ttl, service)]
    return out
