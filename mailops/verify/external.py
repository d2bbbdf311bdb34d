"""verify, the mail path with the outside world: inbound from the `external`
host (another domain's server sends to ours by MX, through the balancer),
and outbound to it, where its rspamd reports DKIM, SPF and DMARC on receipt
(Authentication-Results)."""

from __future__ import annotations

import re
import time
import uuid

from mailops.inventory import remote
from mailops.inventory.model import Inventory
from mailops.verify.mailclient import message, wait_imap
from mailops.verify.probes import delete_message, run
from mailops.verify.report import FAIL, OK, Outcome, Report, Row
from mailops.verify.service import Service

MAILDIR = "/home/catchall/Maildir"


def _queue_reason(inventory: Inventory, host, subject: str) -> str:
    """Why a message waits in host's queue (Postfix's deferral reason)."""
    out = remote.run(inventory, host, "postqueue -p | tail -n +2 | head -12").stdout
    reasons = re.findall(r"^\s+\((.+)\)$", out, re.M)
    return reasons[0] if reasons else "nothing queued"


def check_external(inventory: Inventory, svc: Service, report: Report,
                   timeout: float = 45) -> None:
    externals = inventory.group("external")
    if not externals or not svc.accounts:
        return
    ext = externals[0]
    domain = inventory.variables.get(ext.name, {}).get("mailops_external_domain", "ext.test")
    user, password = next(iter(svc.accounts.items()))
    ep = svc.endpoint()

    # Inbound: the other domain's server delivers to us by MX.
    subject = f"mailops inbound {uuid.uuid4().hex[:10]}"
    sender = f"probe@{domain}"
    res = remote.sendmail(inventory, ext, sender, user, subject, "inbound check")
    if res.returncode != 0:
        report.rows.append(Row(f"inbound from {ext.name}", user, FAIL, "",
                               f"could not hand the message to Postfix on {ext.name}: "
                               f"{res.stderr.strip()[:200]}",
                               f"on {ext.name}: `systemctl status postfix`; `deploy.py "
                               "converge` sets it up"))
    else:
        def inbound() -> Outcome:
            t0 = time.monotonic()
            try:
                wait_imap(ep, user, password, subject, timeout)
            except AssertionError:
                raise AssertionError(
                    f"not delivered within {timeout:.0f} s; {ext.name} says: "
                    f"{_queue_reason(inventory, ext, subject)}") from None
            took = time.monotonic() - t0
            return Outcome.ok(f"arrived by MX through the balancer in {took:.1f} s")

        run(report, f"inbound from {ext.name}", f"{sender} -> {user}", 25, svc, inbound)
        delete_message(ep, user, password, subject)

    # Outbound: we deliver to the other domain; its rspamd judges us.
    subject = f"mailops outbound {uuid.uuid4().hex[:10]}"
    rcpt = f"verify@{domain}"
    target = f"{user} -> {rcpt}"

    def send() -> Outcome:
        refused = ep.send(587, user, password, message(user, [rcpt], subject))
        if refused:
            raise AssertionError(f"recipients refused: {refused}")
        return Outcome.ok("accepted (250)")

    if not run(report, f"send to {domain} on 587", target, 587, svc, send):
        return
    find = (f"grep -l -F 'Subject: {subject}' {MAILDIR}/new/* 2>/dev/null | head -1 | "
            "xargs -r sh -c 'cat \"$0\"; rm -f \"$0\"'")
    raw = ""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        raw = remote.run(inventory, ext, find).stdout
        if raw:
            break
        time.sleep(1)
    if not raw:
        reasons = [f"{n.name}: {_queue_reason(inventory, n, subject)}"
                   for n in inventory.group("mail")]
        report.rows.append(Row(f"outbound to {ext.name}", target, FAIL, "",
                               f"not received within {timeout:.0f} s; the nodes' queues: "
                               + "; ".join(reasons),
                               "on the nodes: `postqueue -p` and `journalctl -u postfix`; "
                               f"check that {domain}'s MX resolves from them"))
        return
    report.rows.append(Row(f"outbound to {ext.name}", target, OK,
                           f"received after {time.monotonic() - t0:.1f} s"))
    results = auth_results(raw)
    remedies = {
        "dkim": "the nodes must sign with the key published in DNS: `deploy.py verify` DKIM "
                "rows, `deploy.py dns apply`; rspamd must sign (`journalctl -u rspamd`)",
        "spf": "the SPF record must list the nodes' outbound addresses "
               "(mailops_dns_spf, `deploy.py dns apply`)",
        "dmarc": "DMARC passes when DKIM or SPF passes for the From domain: fix those first",
    }
    for method in ("dkim", "spf", "dmarc"):
        got = results.get(method, "none")
        report.rows.append(Row(f"{method.upper()} on receipt", f"{ext.name} for {user}",
                               OK if got == "pass" else FAIL, f"{method}={got}",
                               "" if got == "pass" else
                               f"{ext.name} judged {method}={got}",
                               "" if got == "pass" else remedies[method]))


def auth_results(raw: str) -> dict[str, str]:
    """method -> result from the Authentication-Results header(s)."""
    unfolded = re.sub(r"\r?\n[ \t]+", " ", raw.split("\n\n", 1)[0])
    out: dict[str, str] = {}
    for line in unfolded.splitlines():
        if line.lower().startswith("authentication-results:"):
            for method, result in re.findall(r"\b(dkim|spf|dmarc)=(\w+)", line, re.I):
                out.setdefault(method.lower(), result.lower())
    return out
