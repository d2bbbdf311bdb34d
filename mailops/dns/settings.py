"""The site's DNS settings (mailops_dns_* in group_vars), validated before
anything is contacted: every problem named with its file, key and fix. The
settings are declared in DNS_FIELDS; what each provider needs follows in
settings()."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from mailops.core.errors import InventoryErrors
from mailops.dns.ownership import check_owner_id
from mailops.inventory.fields import (
    Field,
    Validator,
    brief,
    holds,
    in_group_vars,
    in_range,
    one_of,
)
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


def _owner_problem(owner: str) -> str | None:
    try:
        check_owner_id(owner)
    except ValueError as e:
        return str(e)
    return None


def _ipv4_problem(value: str) -> str | None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return f"{brief(value)} is not an IPv4 address"
    return None


def _host_name(value: str) -> bool:
    return bool(DNS_NAME_RE.match(value.rstrip(".")))


NAMESERVERS_FIX = "list the zones' name servers, e.g. `[ns1.example.com, ns2.example.com]`"

# mailops_dns_tsig_key_name and mailops_external_domain are checked by
# mailops.site.derived, which computes them for everyone else too.
DNS_FIELDS = (
    # Required only without a `dns` host (which then gets rfc2136): see settings().
    Field("mailops_dns_provider", str, DNS_FILE, default=None,
          check=one_of(PROVIDERS, "{value} is not a DNS provider"),
          fix=f"set `mailops_dns_provider:` to one of {', '.join(PROVIDERS)} "
              "in group_vars/all/dns.yml"),
    Field("mailops_dns_owner", str, DNS_FILE, default=DEFAULT_OWNER, check=_owner_problem,
          fix="write an id like `mailops-prod`"),
    Field("mailops_dns_max_change_share", (int, float), DNS_FILE, default=DEFAULT_MAX_SHARE,
          check=holds(lambda v: 0 < v <= 1, "{value} is not a fraction in (0, 1]"),
          convert=float,
          fix="write a fraction like 0.3 (30% of the records mailops owns in a zone)"),
    Field("mailops_dns_ttl", int, DNS_FILE, default=300,
          check=in_range(30, 86400, "{value} is out of range"),
          fix="write seconds from 30 to 86400, e.g. 300"),
    Field("mailops_dns_tsig_algorithm", str, DNS_FILE, default="hmac-sha256",
          check=one_of(TSIG_ALGORITHMS, "{value} is not supported"),
          fix=f"use one of {', '.join(TSIG_ALGORITHMS)}"),
    Field("mailops_dns_rfc2136_server", str, DNS_FILE, default=None, check=_ipv4_problem,
          fix="give the primary server's IPv4 address, e.g. "
              "`mailops_dns_rfc2136_server: 192.0.2.53`"),
    Field("mailops_dns_rfc2136_port", int, DNS_FILE, default=53,
          check=in_range(1, 65535, "{value} is not a port"),
          fix="write a port number from 1 to 65535, e.g. 53"),
    Field("mailops_dns_route53_profile", str, DNS_FILE, default=None,
          fix="name a profile of ~/.aws/config, or leave it out for the default"),
    Field("mailops_dns_route53_endpoint_url", str, DNS_FILE, default=None,
          fix="write the API's URL (for a stand-in), or leave it out for AWS itself"),
    Field("mailops_dns_zonefile_dir", str, DNS_FILE, default=None,
          fix="name the folder for the zone files, e.g. `mailops_dns_zonefile_dir: zones` "
              "(relative to the inventory)"),
    Field("mailops_dns_zonefile_nameservers", list, DNS_FILE, default=(), convert=tuple,
          each=Field("name server", str, wrong_type="{value} is not a host name",
                     check=holds(_host_name, "{value} is not a host name"),
                     fix=NAMESERVERS_FIX),
          fix=NAMESERVERS_FIX),
    Field("mailops_dns_zonefile_hostmaster", str, DNS_FILE, default=None,
          fix="write the zones' contact as a name, e.g. hostmaster.example.com"),
    Field("mailops_dns_service_ipv4", list, DNS_FILE, default=(), convert=tuple,
          each=Field("address", str, check=_ipv4_problem, wrong_type="{value} is not an "
                     "IPv4 address", fix="write the address clients reach the service at, "
                     "e.g. 192.0.2.10"),
          fix="write a list of IPv4 addresses, e.g. `[192.0.2.10]`"),
    Field("mailops_dns_spf", str, DNS_FILE, default=None,
          fix='write the SPF text, e.g. "v=spf1 mx -all"'),
    Field("mailops_dns_dmarc", str, DNS_FILE, default=None,
          fix='write the DMARC text, e.g. "v=DMARC1; p=quarantine"'),
)


def settings(inventory: Inventory) -> DnsSettings:
    """The site's DNS settings, every problem reported at once."""
    check = Validator(DNS_FIELDS, in_group_vars(inventory.defined_in))
    values = check.run(inventory.site_vars())
    key_name = tsig_key_name(inventory, check.errors)
    external = external_domain(inventory, check.errors)

    # What each provider needs; a provider that failed its own check needs nothing.
    dns_hosts = inventory.group("dns")
    provider = values.get("mailops_dns_provider", "")
    if provider is None and dns_hosts:
        provider = "rfc2136"
    elif provider is None:
        check.add("mailops_dns_provider", "missing (required: the inventory has no `dns` host "
                  "to publish to)")
    server = values.get("mailops_dns_rfc2136_server")
    if provider == "rfc2136" and "mailops_dns_rfc2136_server" in values:
        if server is None and dns_hosts:
            server = str(dns_hosts[0].address)
        if server is None:
            check.add("mailops_dns_rfc2136_server", "missing (required for rfc2136 without a "
                      "`dns` host in the inventory)")
        else:
            _check_lab_server(inventory, server, check)
    zdir = values.get("mailops_dns_zonefile_dir")
    nameservers = values.get("mailops_dns_zonefile_nameservers")
    if provider == "zonefile":
        if "mailops_dns_zonefile_dir" in values and not zdir:
            check.add("mailops_dns_zonefile_dir", "missing (required for the zonefile provider)")
        if nameservers is not None and not nameservers:
            check.add("mailops_dns_zonefile_nameservers",
                      "missing (required for the zonefile provider)")

    if check.errors:
        raise InventoryErrors(check.errors)
    return DnsSettings(
        provider=provider, owner=values["mailops_dns_owner"],
        max_share=values["mailops_dns_max_change_share"], ttl=values["mailops_dns_ttl"],
        tsig_key_name=key_name, tsig_algorithm=values["mailops_dns_tsig_algorithm"],
        rfc2136_server=server, rfc2136_port=values["mailops_dns_rfc2136_port"],
        route53_profile=values["mailops_dns_route53_profile"],
        route53_endpoint_url=values["mailops_dns_route53_endpoint_url"],
        zonefile_dir=inventory.path / zdir if zdir else None,
        zonefile_nameservers=nameservers,
        zonefile_hostmaster=values["mailops_dns_zonefile_hostmaster"],
        service_ipv4=values["mailops_dns_service_ipv4"], spf=values["mailops_dns_spf"],
        dmarc=values["mailops_dns_dmarc"], external_domain=external)


def _check_lab_server(inventory: Inventory, server: str, check: Validator) -> None:
    # A lab publishes only inside itself: its zones are not the world's.
    address = ipaddress.IPv4Address(server)
    if inventory.lab is not None and not (address in inventory.lab.subnet
                                          or address.is_loopback):
        check.add("mailops_dns_rfc2136_server", f"{server} is outside the lab subnet "
                  f"{inventory.lab.subnet}", "a lab publishes to its own name server: leave "
                  "the key out (the `dns` host is used) or give an address in the lab")
