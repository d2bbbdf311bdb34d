"""verify, the DNS side: every planned record present with its planned
value, SPF within 10 lookups, the DKIM key (2048 bits or more, the same as
the one the nodes sign with), and PTR of the nodes' outbound addresses with
forward confirmation (a warning where it cannot be set)."""

from __future__ import annotations

import base64
import ipaddress

import dns.exception
import dns.resolver
import dns.reversename
from cryptography.hazmat.primitives.serialization import load_der_public_key

from mailops.core.errors import MailopsError
from mailops.dns.plan import Plan
from mailops.inventory import remote
from mailops.inventory.model import Inventory
from mailops.site import dkim
from mailops.site.moves import held_domains
from mailops.verify.report import FAIL, OK, WARN, Report, Row

DNS_REMEDY = ("`deploy.py dns plan` shows the difference; `deploy.py dns apply` publishes "
              "the planned records")


def resolver_for(inventory: Inventory) -> dns.resolver.Resolver:
    """Asks the deployment's own name server when mailops runs it (rfc2136),
    else the system's resolver."""
    from mailops.dns.deploy import settings

    cfg = settings(inventory)
    if cfg.provider == "rfc2136" and cfg.rfc2136_server:
        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [cfg.rfc2136_server]
    else:
        res = dns.resolver.Resolver()
    res.lifetime, res.timeout, res.cache = 5.0, 2.0, None
    return res


def _plan_rows(plans: list[Plan], report: Report) -> None:
    for p in plans:
        changes = [c for c in p.changes if not c.is_marker]
        if not changes:
            report.rows.append(Row("DNS records as planned", p.zone, OK,
                                   f"{p.existing_count} records present"))
        for c in changes:
            name = c.record.fqdn(p.zone)
            if c.action == "create":
                cause = f"{name} {c.type} is missing"
            elif c.action == "update":
                assert c.old is not None and c.new is not None
                cause = (f"{name} {c.type} is {_short(' '.join(c.old.values))}, planned "
                         f"{_short(' '.join(c.new.values))}")
            else:
                cause = f"{name} {c.type} is published but no longer planned"
            report.rows.append(Row(f"DNS {c.type} record", name, FAIL, c.action, cause,
                                   DNS_REMEDY))
        for k in p.conflicts:
            report.rows.append(Row(f"DNS {k.type} record", f"{k.record_name} in {p.zone}", WARN,
                                   "not owned by mailops", k.reason,
                                   "remove the other record, or adopt it on purpose"))


def _short(text: str, width: int = 50) -> str:
    return text if len(text) <= width else f"{text[:24]}...{text[-20:]}"


def txt_values(res: dns.resolver.Resolver, name: str) -> list[str]:
    """Each TXT record of name, its strings joined."""
    answer = res.resolve(name, "TXT")
    return [b"".join(r.strings).decode(errors="replace") for r in answer]


def _dkim_p(record: str) -> str:
    tags = dict(t.strip().partition("=")[::2] for t in record.split(";") if "=" in t)
    return tags.get("p", "").replace(" ", "")


def check_dns(inventory: Inventory, report: Report) -> None:
    from mailops.dns import deploy as dnsdeploy
    from mailops.dns.policy import spf_lookup_count
    from mailops.site.mailmodel import load_mail_model

    model = load_mail_model(inventory)
    try:
        _plan_rows(dnsdeploy.plan(inventory), report)
    except (MailopsError, OSError, dns.exception.DNSException) as e:
        report.rows.append(Row("DNS records as planned", "all zones", FAIL, "",
                               f"cannot read the zones: {e}",
                               "check the DNS settings (dns.yml) and that the server answers"))
    res = resolver_for(inventory)
    held = held_domains(inventory)
    signing = dkim.selectors(inventory, model)
    for domain in model.domains:
        if domain in held:
            report.rows.append(Row("DNS records", domain, OK, f"moving in from "
                                   f"{held[domain].host}: its records change at the cutover",
                                   "", ""))
            continue
        try:
            spf = [t for t in txt_values(res, domain) if t.lower().startswith("v=spf1")]
            count = spf_lookup_count(spf[0], res) if spf else None
        except (dns.exception.DNSException, ValueError) as e:
            spf, count = [], None
            report.rows.append(Row("SPF", domain, FAIL, "", f"cannot evaluate it: {e}",
                                   DNS_REMEDY))
        if spf and count is not None:
            ok = count <= 10
            report.rows.append(Row("SPF lookups", domain, OK if ok else FAIL,
                                   f"{count} DNS lookups",
                                   "" if ok else f"SPF needs {count} lookups, more than 10: "
                                   "receivers return permerror and SPF fails",
                                   "" if ok else "replace include:/a/mx terms with ip4:/ip6: "
                                   "ranges (mailops_dns_spf)"))
        # The selector mail is signed with now (after a rollover, its new one).
        _check_dkim(inventory, res, domain, signing[domain].signing, report)
    _check_ptr(inventory, res, model.service_name, report)


def _check_dkim(inventory: Inventory, res: dns.resolver.Resolver, domain: str,
                selector: str, report: Report) -> None:
    name = f"{selector}._domainkey.{domain}"
    try:
        published = _dkim_p(next(t for t in txt_values(res, name) if "p=" in t))
        bits = load_der_public_key(base64.b64decode(published)).key_size
    except (dns.exception.DNSException, StopIteration, ValueError) as e:
        report.rows.append(Row("DKIM key", name, FAIL, "", f"no usable DKIM key in DNS: {e}",
                               DNS_REMEDY))
        return
    if bits < 2048:
        report.rows.append(Row("DKIM key size", name, FAIL, f"{bits} bits",
                               f"the key has {bits} bits; receivers want 2048 or more",
                               "roll over to a new 2048-bit key: `deploy.py dkim rotate "
                               f"--domain {domain}`"))
    # The nodes' public half, derived on the node: the private key never leaves it.
    path = f"/var/lib/rspamd/dkim/{domain}.{selector}.key"
    mismatched = []
    for node in inventory.group("mail"):
        out = remote.run(inventory, node, f"openssl pkey -in {path} -pubout -outform DER | "
                                          "base64 -w0")
        if out.returncode != 0 or out.stdout.strip() != published:
            mismatched.append(node.name)
    if mismatched:
        report.rows.append(Row("DKIM key matches the nodes", name, FAIL, f"{bits} bits",
                               f"the key in DNS is not the one {', '.join(mismatched)} "
                               "sign with: receivers fail DKIM (and DMARC)", DNS_REMEDY))
    else:
        report.rows.append(Row("DKIM key matches the nodes", name, OK,
                               f"{bits} bits, same key on every node"))


def _check_ptr(inventory: Inventory, res: dns.resolver.Resolver, service_name: str,
               report: Report) -> None:
    for node in inventory.group("mail"):
        address = str(node.address)
        rev = dns.reversename.from_address(address)
        try:
            names = [r.target.to_text().rstrip(".") for r in res.resolve(rev, "PTR")]
        except dns.exception.DNSException:
            names = []
        if not names:
            private = ipaddress.ip_address(address).is_private
            report.rows.append(Row(
                "PTR of the outbound address", f"{node.name} {address}", WARN,
                "no PTR record", f"{address} has no reverse name: receivers may refuse or "
                "mark mail from it" + (" (a lab or private address)" if private else ""),
                f"ask whoever owns {address} (the housing facility, the ISP) to set its PTR "
                f"to {service_name}; mailops cannot publish reverse zones it does not hold"))
            continue
        try:
            forward = {r.address for n in names for r in res.resolve(n, "A")}
        except dns.exception.DNSException:
            forward = set()
        ok = address in forward
        report.rows.append(Row("PTR of the outbound address", f"{node.name} {address}",
                               OK if ok else FAIL, ", ".join(names),
                               "" if ok else f"{names[0]} does not resolve back to {address}",
                               "" if ok else f"publish an A record {names[0]} -> {address}"))


def _https_get(address: str, host: str, path: str, ca_file) -> tuple[int, str]:
    """GET over TLS to address, checking the certificate for host."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    with socket.create_connection((address, 443), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


def check_mta_sts(inventory: Inventory, svc, report: Report) -> None:
    """The policy each domain's senders fetch: served over HTTPS with a
    valid certificate, naming our MX, and the same text whose id is published."""
    from mailops.site import mtasts
    from mailops.site.mailmodel import load_mail_model

    model = load_mail_model(inventory)
    if not mtasts.enabled(model, inventory):
        return
    want = mtasts.policy(model)
    for domain in model.domains:
        host = f"mta-sts.{domain}"
        target = f"https://{host}/.well-known/mta-sts.txt via {svc.address}"
        try:
            status, body = _https_get(svc.address, host, "/.well-known/mta-sts.txt",
                                      svc.ca_file)
        except OSError as e:  # ssl errors are OSErrors too
            report.rows.append(Row("MTA-STS policy", target, FAIL, "",
                                   f"cannot fetch it: {e}",
                                   f"the balancer serves it on 443: `systemctl status haproxy` "
                                   f"on {svc.front}; its certificate must name {host} "
                                   "(`deploy.py converge`)"))
            continue
        fields = dict(ln.split(":", 1) for ln in body.splitlines() if ":" in ln)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        problems = []
        if status != 200:
            problems.append(f"HTTP {status}")
        if fields.get("mx") != model.service_name:
            problems.append(f"mx is {fields.get('mx')!r}, not {model.service_name}")
        if fields.get("mode") != model.mta_sts_mode:
            problems.append(f"mode is {fields.get('mode')!r}, not {model.mta_sts_mode}")
        if body != want:
            problems.append("the served text is not the one whose id DNS publishes")
        if problems:
            report.rows.append(Row("MTA-STS policy", target, FAIL, "", "; ".join(problems),
                                   "`deploy.py converge` rewrites the policy on the balancer, "
                                   "`deploy.py dns apply` its id in _mta-sts TXT"))
        else:
            report.rows.append(Row("MTA-STS policy", target, OK,
                                   f"mode {fields['mode']}, mx {fields['mx']}, id "
                                   f"{mtasts.policy_id(body)} as published"))
