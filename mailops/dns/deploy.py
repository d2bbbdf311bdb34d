"""`deploy.py dns plan|apply`: the one plan -> safety -> apply path that the
CLI, `up`, the tests and the benchmarks use.

    provider_for   where the zones live: rfc2136 (the lab's BIND), route53,
                   zonefile
    plan           a dry run: reads the zones, changes nothing (not even the
                   vault: a missing secret is an error, not generated here)
    apply          plans every zone first and refuses, with nothing applied,
                   if any plan changes more than the safe share (unless
                   force); then applies zone by zone. A provider error says
                   what was applied and what was not; a second run finishes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from typing import Any

from mailops.core.errors import MailopsError
from mailops.core.paths import vault_file
from mailops.core.progress import step
from mailops.dns.desired import desired_for
from mailops.dns.plan import Plan, UnsafePlanError, check_safety, make_plan
from mailops.dns.providers.base import Provider, ProviderError
from mailops.dns.providers.rfc2136 import TsigKey
from mailops.dns.publish import Published
from mailops.dns.settings import DnsSettings, settings
from mailops.inventory.model import Inventory
from mailops.secrets.vault import load_secrets
from mailops.secrets.wanted import TSIG_PREFIX, ensure_secrets
from mailops.site.mailmodel import load_mail_model


def read_secrets(inventory: Inventory):
    """The vault as it is, read only."""
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
    inventory, _ = ensure_secrets(inventory, load_mail_model(inventory))
    return tsig_key(inventory, read_secrets(inventory))


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


@dataclass(frozen=True)
class _Planned:
    cfg: DnsSettings
    provider: Provider
    plans: tuple[Plan, ...]
    reads: tuple[int, ...]  # round trips each zone's read took


def _plan_all(inventory: Inventory, adopt: frozenset[str] = frozenset()) -> _Planned:
    cfg = settings(inventory)
    model = load_mail_model(inventory)
    secrets = read_secrets(inventory)
    desired = desired_for(inventory, model, secrets, cfg)
    provider = provider_for(inventory, cfg, secrets)
    plans, reads = [], []
    for zone, records in desired.items():
        before = provider.round_trips
        plans.append(make_plan(zone, records, provider.current(zone), cfg.owner,
                               adopt=zone in adopt))
        reads.append(provider.round_trips - before)
        step("dns", zone, plans[-1].summary().split(": ", 1)[1])
    return _Planned(cfg, provider, tuple(plans), tuple(reads))


def plan(inventory: Inventory, adopt: frozenset[str] = frozenset()) -> list[Plan]:
    """What apply would change, zone by zone; changes nothing anywhere.
    adopt: zones whose records without an owner marker are taken over (a
    domain moved in, whose old records point at its legacy server)."""
    return list(_plan_all(inventory, adopt).plans)


class DnsApplyError(MailopsError):
    """An apply that stopped part way: what was applied, what was not."""


def apply(inventory: Inventory, force: bool = False,
          adopt: frozenset[str] = frozenset()) -> list[Published]:
    planned = _plan_all(inventory, adopt)
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
