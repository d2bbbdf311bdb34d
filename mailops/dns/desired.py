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
from mailops.site import dkim, mtasts
from mailops.site.derived import front, service_zone
from mailops.site.mailmodel import MailModel
from mailops.site.moves import held_domains


def service_addresses(inventory: Inventory, cfg: DnsSettings) -> tuple[str, ...]:
    """Where clients reach the service: the balancers' floating address,
    the balancer, else the first mail node."""
    if cfg.service_ipv4:
        return cfg.service_ipv4
    return (front(inventory)[0],)


def default_spf(inventory: Inventory, service: tuple[str, ...]) -> str:
    # Mail nodes deliver outbound mail themselves, from their own addresses,
    # which the MX (the balancers' address) does not cover.
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
    selectors = dkim.selectors(inventory, model)
    for domain in model.domains:
        if domain in held:
            # Its legacy server still takes its mail: its records change at
            # the cutover (`deploy.py migrate cutover`), not before.
            continue
        # The signing selector first, then a rollover's next and retired ones.
        public = []
        for selector in selectors[domain].published():
            pem = secrets.dkim_key(domain, selector, model.dkim_selector)
            if not pem:
                where = (f"vault_dkim_keys.{domain}" if selector == model.dkim_selector
                         else f"vault_dkim_selector_keys.{domain}.{selector}")
                raise MailopsError(f"{vault_file(inventory.path)}: {where}: missing\n  fix: "
                                   "run `deploy.py converge` first (it generates the key once "
                                   "and installs it on the mail nodes), or `deploy.py dkim "
                                   "rotate` again for a rollover's key")
            public.append((selector, pki.dkim_public_record(pem)))
        try:
            d = MailDomainDNS(domain=domain, service_name=model.service_name,
                              dkim_selector=public[0][0], dkim_public=public[0][1],
                              dkim_more=tuple(public[1:]), ipv4=service,
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
