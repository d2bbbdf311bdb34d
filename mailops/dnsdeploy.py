"""`deploy.py dns plan|apply`: the mail domains' records, published.

    settings       the site's mailops_dns_* variables, validated (errors name
                   file, key and fix, before anything is contacted)
    desired_for    what every zone must hold: the model, the inventory's
                   addresses and the vault's DKIM keys -> records per zone
    provider_for   where the zones live: rfc2136 (the lab's BIND), route53,
                   zonefile
    plan           a dry run: reads the zones, changes nothing (not even the
                   vault: a missing secret is an error, not generated here)
    apply          plans every zone first and refuses, with nothing applied,
                   if any plan changes more than the safe share (unless
                   force); then applies zone by zone. A provider error says
                   what was applied and what was not; a second run finishes.

The TSIG key the lab's BIND and the rfc2136 provider share is generated once
into the vault (`vault_extra.tsig_<key name>`) by the converge's secrets step
(`wanted_secrets`) or by `ensure_tsig`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import secrets as _random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mailops import pki
from mailops.dns.ownership import check_owner_id
from mailops.dns.plan import Plan, UnsafePlanError, check_safety, make_plan
from mailops.dns.providers.base import Provider, ProviderError
from mailops.dns.providers.rfc2136 import TsigKey
from mailops.dns.publish import Published
from mailops.dns.records import MailDomainDNS, Record, desired_records, relative_name
from mailops.errors import InventoryError, InventoryErrors, MailopsError
from mailops.mailmodel import DNS_NAME_RE, MailModel, load_mail_model
from mailops.model import Inventory
from mailops.paths import vault_file
from mailops.progress import step

PROVIDERS = ("rfc2136", "route53", "zonefile")
TSIG_ALGORITHMS = ("hmac-sha256", "hmac-sha384", "hmac-sha512")
TSIG_PREFIX = "tsig_"  # vault_extra key: tsig_<key name>
DEFAULT_TSIG_KEY = "mailops"
DEFAULT_OWNER = "mailops"
DEFAULT_MAX_SHARE = 0.3
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


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


# --- settings ---------------------------------------------------------------


def _site_vars(inventory: Inventory) -> dict[str, Any]:
    # Site data lives in group_vars/all: every host sees it; read it where the
    # mail model does (the first mail node).
    mail = inventory.group("mail")
    return inventory.variables.get(mail[0].name, {}) if mail else {}


def _source(inventory: Inventory, key: str) -> Path:
    """The group_vars file that sets key, else where it belongs (dns.yml)."""
    gv = inventory.path / "group_vars"
    for file in sorted(gv.rglob("*.yml")) if gv.exists() else []:
        try:
            text = file.read_text()
            data = {} if text.startswith("$ANSIBLE_VAULT") else yaml.safe_load(text)
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and key in data:
            return file
    return gv / "all" / "dns.yml"


def _tsig_key_name(inventory: Inventory, hv: dict[str, Any],
                   errors: list[InventoryError]) -> str:
    key = "mailops_dns_tsig_key_name"
    name = hv.get(key, DEFAULT_TSIG_KEY)
    if not isinstance(name, str) or not _KEY_NAME_RE.match(name):
        errors.append(InventoryError(_source(inventory, key), key,
                                     f"{name!r} is not a TSIG key name",
                                     "use a DNS-style name of letters, digits, '-' and '.', "
                                     f"e.g. `{key}: mailops`"))
        return DEFAULT_TSIG_KEY
    return name


def settings(inventory: Inventory) -> DnsSettings:
    """The site's DNS settings, every problem reported at once."""
    hv = _site_vars(inventory)
    errors: list[InventoryError] = []

    def err(key: str, problem: str, fix: str) -> None:
        errors.append(InventoryError(_source(inventory, key), key, problem, fix))

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

    key_name = _tsig_key_name(inventory, hv, errors)
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
    external = opt("mailops_external_domain", str, None, "write a domain like ext.test")
    if external is not None and not DNS_NAME_RE.match(external):
        err("mailops_external_domain", f"{external!r} is not a domain name",
            "write a lowercase domain like ext.test")
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


# --- secrets ----------------------------------------------------------------


def new_tsig_secret() -> str:
    """A random HMAC-SHA256 key, base64, as `tsig-keygen` makes it."""
    return base64.b64encode(_random.token_bytes(32)).decode("ascii")


def wanted_secrets(inventory: Inventory) -> dict[str, Callable[[], str]]:
    """vault_extra entries the converge's secrets step must generate: the
    TSIG key, when the inventory runs its own name server (a `dns` host).
    An outside server's key is the operator's to put in the vault."""
    if not inventory.group("dns"):
        return {}
    errors: list[InventoryError] = []
    name = _tsig_key_name(inventory, _site_vars(inventory), errors)
    if errors:
        raise InventoryErrors(errors)
    return {TSIG_PREFIX + name: new_tsig_secret}


def read_secrets(inventory: Inventory):
    """The vault as it is, read only."""
    from mailops.secrets import load_secrets

    vault = vault_file(inventory.path)
    if not vault.exists():
        raise MailopsError(f"{vault}: no vault yet, so no DKIM keys or TSIG key to publish "
                           "with\n  fix: run `deploy.py converge` first (it generates them "
                           "once and installs them)")
    return load_secrets(vault, inventory.vault_password_file)


def tsig_key(inventory: Inventory, secrets: Any, cfg: DnsSettings | None = None) -> TsigKey:
    cfg = cfg or settings(inventory)
    entry = TSIG_PREFIX + cfg.tsig_key_name
    secret = secrets.extra.get(entry)
    if not secret:
        fix = ("run `deploy.py converge`: it generates the key once and installs it on the "
               "`dns` host" if inventory.group("dns") else
               f"put the server's key secret (base64) in the vault as vault_extra.{entry}: "
               f"ansible-vault edit {vault_file(inventory.path)}")
        raise MailopsError(f"{vault_file(inventory.path)}: vault_extra.{entry}: no TSIG key "
                           f"{cfg.tsig_key_name!r} in the vault\n  fix: {fix}")
    try:
        return TsigKey(cfg.tsig_key_name, secret, cfg.tsig_algorithm)
    except ValueError:
        raise MailopsError(f"{vault_file(inventory.path)}: vault_extra.{entry}: is not base64"
                           f"\n  fix: replace it with a key from `tsig-keygen`, or remove it "
                           "and converge to generate one") from None


def ensure_tsig(inventory: Inventory) -> TsigKey:
    """The TSIG key from the vault, generated there first if missing (the
    vault's other secrets are completed too, as a converge would)."""
    from mailops.converge import ensure_secrets

    inventory, _ = ensure_secrets(inventory, load_mail_model(inventory))
    return tsig_key(inventory, read_secrets(inventory))


# --- desired records ----------------------------------------------------------


def service_zone(model: MailModel) -> str:
    """The zone holding the service name: the longest mail domain it is in,
    else its parent (mailops/playbooks/dns.yml computes the same)."""
    name = model.service_name
    inside = [d for d in model.domains if name == d or name.endswith("." + d)]
    return max(inside, key=len) if inside else name.split(".", 1)[1]


def zones_served(model: MailModel, cfg: DnsSettings) -> list[str]:
    """Every zone the lab's name server is authoritative for."""
    zones = [*model.domains, service_zone(model)]
    if cfg.external_domain:
        zones.append(cfg.external_domain)
    return list(dict.fromkeys(zones))


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
    from mailops import mtasts

    cfg = cfg or settings(inventory)
    service = service_addresses(inventory, cfg)
    spf = cfg.spf or default_spf(inventory, service)
    sts_id = (mtasts.policy_id(mtasts.policy(model)) if mtasts.enabled(model, inventory)
              else None)
    out: dict[str, list[Record]] = {}
    for domain in model.domains:
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
            raise InventoryErrors([InventoryError(_source(inventory, key), key, str(e),
                                                  "correct the record text")]) from None
        out.setdefault(d.zone, []).extend(desired_records(d))
    zone = service_zone(model)
    if zone not in out:  # the service name lives outside every mail domain
        out[zone] = [Record(relative_name(model.service_name, zone), "A", cfg.ttl, service)]
    return out


# --- providers ----------------------------------------------------------------


def provider_for(inventory: Inventory, cfg: DnsSettings | None = None,
                 secrets: Any = None) -> Provider:
    cfg = cfg or settings(inventory)
    if cfg.provider == "rfc2136":
        from mailops.dns.providers.rfc2136 import Rfc2136Provider

        secrets = secrets if secrets is not None else read_secrets(inventory)
        return Rfc2136Provider(cfg.rfc2136_server, cfg.rfc2136_port,
                               key=tsig_key(inventory, secrets, cfg))
    if cfg.provider == "route53":
        import boto3

        from mailops.dns.providers.route53 import Route53Provider

        # Credentials come from the environment or the profile, never the inventory.
        session = boto3.Session(profile_name=cfg.route53_profile)
        return Route53Provider(session.client("route53",
                                              endpoint_url=cfg.route53_endpoint_url))
    from mailops.dns.providers.zonefile import Soa, ZoneFileProvider

    assert cfg.zonefile_dir is not None
    model = load_mail_model(inventory)
    hostmaster = cfg.zonefile_hostmaster or f"hostmaster.{model.domains[0]}"
    return ZoneFileProvider(cfg.zonefile_dir, soa=Soa(cfg.zonefile_nameservers[0], hostmaster),
                            ns=cfg.zonefile_nameservers, ttl=cfg.ttl,
                            checkzone=shutil.which("named-checkzone"))


# --- plan and apply -------------------------------------------------------------


@dataclass(frozen=True)
class _Planned:
    cfg: DnsSettings
    provider: Provider
    plans: tuple[Plan, ...]
    reads: tuple[int, ...]  # round trips each zone's read took


def _plan_all(inventory: Inventory) -> _Planned:
    cfg = settings(inventory)
    model = load_mail_model(inventory)
    secrets = read_secrets(inventory)
    desired = desired_for(inventory, model, secrets, cfg)
    provider = provider_for(inventory, cfg, secrets)
    plans, reads = [], []
    for zone, records in desired.items():
        before = provider.round_trips
        plans.append(make_plan(zone, records, provider.current(zone), cfg.owner))
        reads.append(provider.round_trips - before)
        step("dns", zone, plans[-1].summary().split(": ", 1)[1])
    return _Planned(cfg, provider, tuple(plans), tuple(reads))


def plan(inventory: Inventory) -> list[Plan]:
    """What apply would change, zone by zone; changes nothing anywhere."""
    return list(_plan_all(inventory).plans)


class DnsApplyError(MailopsError):
    """An apply that stopped part way: what was applied, what was not."""


def apply(inventory: Inventory, force: bool = False) -> list[Published]:
    planned = _plan_all(inventory)
    cfg, provider = planned.cfg, planned.provider
    refusals = []
    for p in planned.plans:
        try:
            check_safety(p, max_share=cfg.max_share, force=force)
        except UnsafePlanError as e:
            refusals.append(str(e).replace(" Nothing was applied.", ""))
    if refusals:
        # Every zone is checked before any is touched: all or nothing here.
        raise UnsafePlanError("\n".join(refusals) + "\nNothing was applied to any zone.")
    done: list[Published] = []
    for i, (p, reads) in enumerate(zip(planned.plans, planned.reads, strict=True)):
        if p.is_empty:
            done.append(Published(p, None, reads))
            continue
        before = provider.round_trips
        try:
            result = provider.apply(p)
        except ProviderError as e:
            complete = [q.plan.zone for q in done if q.result is not None]
            waiting = [q.zone for q in planned.plans[i + 1:] if not q.is_empty]
            lines = [f"dns apply stopped at zone {p.zone}:", str(e)]
            lines.append("zones applied completely before it: " + (", ".join(complete)
                                                                 or "none"))
            lines.append("zones not attempted: " + (", ".join(waiting) or "none"))
            lines.append("run `deploy.py dns apply` again once the cause is fixed: each plan "
                         "starts from the zone as it is, so the second run finishes the job")
            raise DnsApplyError("\n".join(lines)) from e
        step("dns", p.zone, f"applied {len(result.applied)} change(s)")
        done.append(Published(p, result, reads + provider.round_trips - before))
    return done


# --- reports --------------------------------------------------------------------


def _refusal(p: Plan, cfg: DnsSettings) -> str | None:
    try:
        check_safety(p, max_share=cfg.max_share)
    except UnsafePlanError as e:
        return str(e).split("\n", 1)[0].replace(" Nothing was applied.", "")
    return None


def plan_report(plans: list[Plan], cfg: DnsSettings, as_json: bool = False) -> str:
    if as_json:
        return json.dumps({"action": "plan", "provider": cfg.provider, "owner": cfg.owner,
                           "zones": [p.to_dict() | {"refused_without_force": bool(
                               _refusal(p, cfg))} for p in plans]}, indent=2)
    lines = [cfg.describe(), ""]
    for p in plans:
        lines += [p.table(), ""]
        if (why := _refusal(p, cfg)) is not None:
            lines += [f"apply would refuse: {why}; check the plan, then apply with --force",
                      ""]
    changes = sum(len(p.changes) for p in plans)
    lines.append(f"dns plan: {changes} change(s) in {sum(not p.is_empty for p in plans)} of "
                 f"{len(plans)} zone(s); nothing was changed"
                 + ("; `deploy.py dns apply` makes them" if changes else ""))
    return "\n".join(lines)


def apply_report(published: list[Published], cfg: DnsSettings, as_json: bool = False) -> str:
    if as_json:
        return json.dumps({"action": "apply", "provider": cfg.provider, "owner": cfg.owner,
                           "zones": [p.to_dict() for p in published]}, indent=2)
    lines = [cfg.describe(), ""]
    for pub in published:
        lines.append(pub.plan.table())
        if pub.result is not None:
            lines.append(f"applied {len(pub.result.applied)} change(s) in "
                         f"{pub.round_trips} round trip(s), reading included")
        lines.append("")
    applied = sum(len(p.result.applied) for p in published if p.result)
    lines.append(f"dns apply: {applied} change(s) applied" if applied else
                 "dns apply: no changes")
    return "\n".join(lines)


def command(inventory: Inventory, action: str, force: bool = False,
            as_json: bool = False) -> str:
    """`deploy.py dns plan|apply`: the report to print."""
    cfg = settings(inventory)
    if action == "plan":
        return plan_report(plan(inventory), cfg, as_json)
    if action == "apply":
        return apply_report(apply(inventory, force=force), cfg, as_json)
    raise ValueError(f"unknown dns action {action!r}")
