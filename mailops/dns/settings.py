"""The site's DNS settings (mailops_dns_* in group_vars), validated before
anything is contacted: every problem named with its file, key and fix."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailops.core.errors import InventoryError, InventoryErrors
from mailops.dns.ownership import check_owner_id
from mailops.inventory.model import Inventory
from mailops.site.derived import external_domain, tsig_key_name
from mailops.site.mailmodel import DNS_NAME_RE

PROVIDERS = ("rfc2136", "route53", "zonefile")
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")
DEFAULT_OWNER = "mailops"
DEFAULT_MAX_SHARE = 0.3
DNS_FILE = "dns.yml"  # where a DNS setting belongs when no file sets it yet


@dataclass(frozen=True)
class DnsSettings:
    provider: str
    owner: str  # owner id in the owner markers
    max_share: float  # safety threshold of check_safety
    ttl: int
    tsig_key_name: str
    tsig_algorithm: str
    rfc2136_server: str | None
    rfc2136_port: int
    route53_profile: str | None
    route53_endpoint_url: str | None
    zonefile_dir: Path | None
    zonefile_nameservers: tuple[str, ...]
    zonefile_hostmaster: str | None
    service_ipv4: tuple[str, ...]  # override of the address clients use
    spf: str | None
    dmarc: str | None
    external_domain: str | None

    def describe(self) -> str:
        where = {"rfc2136": f"{self.rfc2136_server}:{self.rfc2136_port}, TSIG key "
                            f"{self.tsig_key_name}",
                 "route53": f"profile {self.route53_profile or '(default)'}"
                            + (f", endpoint {self.route53_endpoint_url}"
                               if self.route53_endpoint_url else ""),
                 "zonefile": str(self.zonefile_dir)}[self.provider]
        return f"provider {self.provider} ({where}), owner id {self.owner}"


def settings(inventory: Inventory) -> DnsSettings:
    """The site's DNS settings, every problem reported at once."""
    hv = inventory.site_vars()
    errors: list[InventoryError] = []

    def err(key: str, problem: str, fix: str) -> None:
        errors.append(InventoryError(inventory.defined_in(key, DNS_FILE), key, problem, fix))

    def opt(key: str, kind: type | tuple[type, ...], default: Any, fix: str) -> Any:
        value = hv.get(key, default)
        if value is default:
            return default
        if isinstance(value, bool) or not isinstance(value, kind):
            err(key, f"has the wrong type ({type(value).__name__})", fix)
            return default
        return value

    dns_hosts = inventory.group("dns")
    provider = opt("mailops_dns_provider", str, "rfc2136" if dns_hosts else None,
                   f"write one of {', '.join(PROVIDERS)}")
    if provider is None:
        err("mailops_dns_provider", "missing (required: the inventory has no `dns` host "
            "to publish to)", f"set `mailops_dns_provider:` to one of {', '.join(PROVIDERS)} "
            "in group_vars/all/dns.yml")
    elif provider not in PROVIDERS:
        err("mailops_dns_provider", f"{provider!r} is not a DNS provider",
            f"use one of {', '.join(PROVIDERS)}")

    owner = opt("mailops_dns_owner", str, DEFAULT_OWNER, "write an id like `mailops-prod`")
    try:
        check_owner_id(owner)
    except ValueError as e:
        err("mailops_dns_owner", str(e), "write an id like `mailops-prod`")
        owner = DEFAULT_OWNER
    share = opt("mailops_dns_max_change_share", (int, float), DEFAULT_MAX_SHARE,
                "write a fraction like 0.3")
    if not 0 < share <= 1:
        err("mailops_dns_max_change_share", f"{share} is not a fraction in (0, 1]",
            "write a fraction like 0.3 (30% of the records mailops owns in a zone)")
        share = DEFAULT_MAX_SHARE
    ttl = opt("mailops_dns_ttl", int, 300, "write seconds, e.g. 300")
    if not 30 <= ttl <= 86400:
        err("mailops_dns_ttl", f"{ttl} is out of range", "use 30 to 86400 seconds")
        ttl = 300

    key_name = tsig_key_name(inventory, errors)
    algorithm = opt("mailops_dns_tsig_algorithm", str, "hmac-sha256", "e.g. hmac-sha256")
    if algorithm not in TSIG_ALGORITHMS:
        err("mailops_dns_tsig_algorithm", f"{algorithm!r} is not supported",
            f"use one of {', '.join(TSIG_ALGORITHMS)}")

    server = opt("mailops_dns_rfc2136_server", str, None, "write the server's IPv4 address")
    port = opt("mailops_dns_rfc2136_port", int, 53, "write a port number, e.g. 53")
    if provider == "rfc2136":
        if server is None and dns_hosts:
            server = str(dns_hosts[0].address)
        if server is None:
            err("mailops_dns_rfc2136_server", "missing (required for rfc2136 without a "
                "`dns` host in the inventory)", "give the primary server's address, "
                "e.g. `mailops_dns_rfc2136_server: 192.0.2.53`")
        else:
            _check_server(inventory, server, err)
        if not 0 < port < 65536:
            err("mailops_dns_rfc2136_port", f"{port} is not a port", "write 1 to 65535")

    zdir = opt("mailops_dns_zonefile_dir", str, None, "write a directory path")
    nameservers = opt("mailops_dns_zonefile_nameservers", list, [], "write a list of names")
    hostmaster = opt("mailops_dns_zonefile_hostmaster", str, None, "e.g. hostmaster.example.com")
    if provider == "zonefile":
        if not zdir:
            err("mailops_dns_zonefile_dir", "missing (required for the zonefile provider)",
                "name the folder for the zone files, e.g. `mailops_dns_zonefile_dir: zones` "
                "(relative to the inventory)")
        if not nameservers or not all(isinstance(n, str) and DNS_NAME_RE.match(n.rstrip("."))
                                      for n in nameservers):
            err("mailops_dns_zonefile_nameservers", "missing or not a list of host names "
                "(required for the zonefile provider)",
                "list the zones' name servers, e.g. `[ns1.example.com, ns2.example.com]`")
    zonefile_dir = (inventory.path / zdir) if zdir else None

    service_ipv4 = opt("mailops_dns_service_ipv4", list, [], "write a list of IPv4 addresses")
    for i, ip in enumerate(service_ipv4):
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            err(f"mailops_dns_service_ipv4[{i}]", f"{ip!r} is not an IPv4 address",
                "write the address clients reach the service at, e.g. 192.0.2.10")
    spf = opt("mailops_dns_spf", str, None, 'write the SPF text, e.g. "v=spf1 mx -all"')
    dmarc = opt("mailops_dns_dmarc", str, None, 'e.g. "v=DMARC1; p=quarantine"')
    external = external_domain(inventory, errors)
    if errors:
        raise InventoryErrors(errors)
    return DnsSettings(
        provider=provider, owner=owner, max_share=float(share), ttl=ttl,
        tsig_key_name=key_name, tsig_algorithm=algorithm, rfc2136_server=server,
        rfc2136_port=port, route53_profile=opt("mailops_dns_route53_profile", str, None, ""),
        route53_endpoint_url=opt("mailops_dns_route53_endpoint_url", str, None, ""),
        zonefile_dir=zonefile_dir, zonefile_nameservers=tuple(nameservers),
        zonefile_hostmaster=hostmaster, service_ipv4=tuple(service_ipv4), spf=spf,
        dmarc=dmarc, external_domain=external)


def _check_server(inventory: Inventory, server: str, err: Callable[..., None]) -> None:
    try:
        address = ipaddress.IPv4Address(server)
    except ValueError:
        err("mailops_dns_rfc2136_server", f"{server!r} is not an IPv4 address",
            "write the primary server's address, e.g. 192.0.2.53")
        return
    # A lab publishes only inside itself: its zones are not the world's.
    if inventory.lab is not None and not (address in inventory.lab.subnet
                                          or address.is_loopback):
        err("mailops_dns_rfc2136_server", f"{server} is outside the lab subnet "
            f"{inventory.lab.subnet}", "a lab publishes to its own name server: leave the key "
            "out (the `dns` host is used) or give an address in the lab")
