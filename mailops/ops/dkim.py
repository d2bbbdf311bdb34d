"""DKIM key rollover (`deploy.py dkim rotate`): a new selector and key are
published first; signing switches to them only once the new record
resolves from the deployment's name servers; the old selector stays
published for a grace period (mail signed with it is still in flight and in
queues) and is then deleted by the normal DNS plan. Each step is recorded
before the next begins (mailops.site.dkim), so a failed run is safe to run
again: it goes on from where it stopped."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import dns.exception

from mailops.core.errors import MailopsError
from mailops.core.paths import vault_file
from mailops.core.progress import table, timed
from mailops.inventory.model import Inventory, load_inventory
from mailops.secrets import pki
from mailops.secrets.vault import add_dkim_keys, load_secrets
from mailops.site import dkim as selectors_of
from mailops.site.mailmodel import load_mail_model

GRACE = 7 * 86400  # how long a retired selector stays published, by default
WAIT = 300  # at most this long for the new record to resolve


@dataclass
class RotateRow:
    domain: str
    step: str
    result: str
    seconds: float


@dataclass
class RotateReport:
    rows: list[RotateRow] = field(default_factory=list)
    selectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # domain -> after
    ok: bool = False

    def run(self, domain: str, name: str, fn) -> Any:
        value, shown, seconds = timed("dkim", domain, name, fn)
        self.rows.append(RotateRow(domain, name, shown, seconds))
        return value

    def text(self) -> str:
        now = time.time()
        lines = [table(("domain", "step", "result", "s"),
                       [(r.domain, r.step, r.result, f"{r.seconds:.1f}") for r in self.rows])]
        rows = []
        for domain, sel in self.selectors.items():
            for retired, until in sorted(sel["retired"].items()):
                left = until - now
                rows.append((domain, sel["signing"], retired,
                             time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(until))
                             + ("" if left > 0 else " (passed)")))
        if rows:
            lines += ["", table(("domain", "signing", "retired selector", "published until"),
                                rows),
                      "", "after that time, `deploy.py dns apply` deletes the retired record"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "steps": [r.__dict__ for r in self.rows],
                "selectors": self.selectors}


def _published(inventory: Inventory, domain: str, selector: str, record: str,
               wait: float) -> str:
    """Wait until every deployment name server answers the new selector's
    record as planned; at most `wait` seconds."""
    from mailops.verify.dnscheck import resolver_for, txt_values

    res = resolver_for(inventory)
    name = f"{selector}._domainkey.{domain}"
    want = "".join(record.split())
    deadline = time.monotonic() + wait
    while True:
        try:
            got = ["".join(t.split()) for t in txt_values(res, name)]
            if want in got:
                return f"{name} resolves from {', '.join(res.nameservers)}"
            problem = "answers another key"
        except dns.exception.DNSException as e:
            problem = f"not yet: {type(e).__name__}"
        if time.monotonic() > deadline:
            raise MailopsError(f"{name} {problem} after {wait:.0f} s: signing was not "
                               "switched\n  fix: check the name server and `deploy.py dns "
                               "plan`, then run `deploy.py dkim rotate` again (it goes on "
                               "from here)")
        time.sleep(1)


def rotate(inventory: Inventory, domains: list[str] | None = None, grace: float = GRACE,
           wait: float = WAIT) -> RotateReport:
    """Roll the chosen domains (default: all) over to a new key each."""
    from mailops.converge.run import converge
    from mailops.dns import deploy as dnsdeploy

    report = RotateReport()
    model = load_mail_model(inventory)
    current = selectors_of.selectors(inventory, model)
    chosen = domains or list(model.domains)
    unknown = [d for d in chosen if d not in current]
    if unknown:
        raise MailopsError(f"{', '.join(unknown)}: not a mail domain of this inventory\n  "
                           f"fix: name one of {', '.join(model.domains)} with --domain")
    now = time.time()
    # 1. A next selector and key for each domain that has none (a re-run
    # keeps the one it made), recorded before anything is published.
    nxt = {d: current[d].next or selectors_of.new_selector(model.dkim_selector, now)
           for d in chosen}
    made = report.run(", ".join(chosen), "generate the new keys",
                      lambda: add_dkim_keys(vault_file(inventory.path),
                                            inventory.vault_password_file, nxt))
    if made:
        report.rows[-1].result = f"{len(made)} key(s) made"
    selectors_of.save(inventory, {d: replace(current[d], next=nxt[d]) for d in chosen})
    inventory = load_inventory(inventory.path)

    # 2. Published beside the signing one, through the normal plan and its
    # safety checks; then seen from the name servers.
    def publish() -> str:
        done = dnsdeploy.apply(inventory)
        return f"{sum(len(p.result.applied) for p in done if p.result)} change(s)"

    report.run(", ".join(chosen), "publish the new selectors", publish)
    secrets = load_secrets(vault_file(inventory.path), inventory.vault_password_file)
    for d in chosen:
        pem = secrets.dkim_key(d, nxt[d], model.dkim_selector)
        assert pem is not None  # made above
        report.run(d, f"wait for {nxt[d]}._domainkey to resolve",
                   lambda d=d, pem=pem: _published(inventory, d, nxt[d],
                                                   pki.dkim_public_record(pem), wait))

    # 3. Signing switches; the old selector retires, published until the
    # grace period ends (counted again once the nodes have switched).
    # Recorded first: the converge then applies it.
    until = time.time() + grace
    state = selectors_of.selectors(inventory, model)
    switched = {}
    for d in chosen:
        retired = {s: u for s, u in state[d].retired.items() if u > time.time()}
        if state[d].signing != nxt[d]:
            retired[state[d].signing] = until
        switched[d] = selectors_of.Selectors(nxt[d], None, retired)
    selectors_of.save(inventory, switched)
    inventory = load_inventory(inventory.path)

    def switch() -> str:
        result = converge(inventory, limit="mail")
        if result.failed:
            raise MailopsError("converging the mail nodes failed: " + ", ".join(result.failed)
                               + "\n  fix: see the converge output, then run `deploy.py "
                               "converge`: the nodes sign with the new selector once it "
                               "succeeds")
        return f"{result.changed} change(s)"

    report.run(", ".join(chosen), "sign with the new selectors (converge the mail nodes)",
               switch)
    # The grace period counts from when the nodes sign with the new key.
    until = time.time() + grace
    switched = {d: replace(s, retired={r: max(u, until) if r == current[d].signing else u
                                       for r, u in s.retired.items()})
                for d, s in switched.items()}
    selectors_of.save(inventory, switched)
    report.selectors = {d: s.to_dict() for d, s in switched.items()}
    report.ok = True
    return report


def rotate_command(inventory: Inventory, domains: list[str] | None, grace: float,
                   as_json: bool) -> int:
    t0 = time.monotonic()
    report = rotate(inventory, domains, grace)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.text())
        print(f"\ndkim rotate: done in {time.monotonic() - t0:.1f} s")
    return 0 if report.ok else 1
