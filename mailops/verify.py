"""verify: check a deployed mail service from the outside, like a client.

Every check is a row (check, target, result, detail, cause, remedy); a failed
row says why and what to do, using the same explanations as `deploy.py
explain` for the replies servers send. `deploy.py up` ends with this pass:
every mail port through the balancer, then a send-and-read round trip.
"""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mailops.explain import explain
from mailops.mailclient import Endpoint, message, wait_imap, wait_pop3
from mailops.progress import step, table

OK, WARN, FAIL = "ok", "warn", "fail"

# Port, protocol, how TLS starts (starttls or implicit).
PORTS: tuple[tuple[int, str, str], ...] = (
    (25, "SMTP", "starttls"), (587, "submission", "starttls"), (465, "submissions", "implicit"),
    (143, "IMAP", "starttls"), (993, "IMAPS", "implicit"),
    (110, "POP3", "starttls"), (995, "POP3S", "implicit"),
)

# A certificate that expires sooner than this is a warning.
EXPIRY_WARN_DAYS = 14


@dataclass(frozen=True)
class Row:
    check: str
    target: str
    result: str  # ok, warn or fail
    detail: str = ""
    cause: str = ""
    remedy: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.result == FAIL]

    @property
    def ok(self) -> bool:
        return not self.failed

    def counts(self) -> dict[str, int]:
        return {k: sum(r.result == k for r in self.rows) for k in (OK, WARN, FAIL)}

    def summary(self) -> str:
        c = self.counts()
        return f"{c[OK]} ok, {c[WARN]} warning(s), {c[FAIL]} failed"

    def table(self) -> str:
        out = table(["check", "target", "result", "detail"],
                    [[r.check, r.target, r.result, r.detail] for r in self.rows])
        for r in self.rows:
            if r.result != OK:
                out += f"\n\n{r.result.upper()}: {r.check} ({r.target})\n  cause:  {r.cause}" \
                       f"\n  remedy: {r.remedy}"
        return out

    def to_list(self) -> list[dict]:
        return [asdict(r) for r in self.rows]


@dataclass(frozen=True)
class Service:
    """How clients reach the deployed service."""

    service_name: str
    address: str  # the balancer's (or the only node's) address
    front: str  # that host's name
    ca_file: Path | None  # None: the system's CAs
    accounts: dict[str, str]  # test accounts: address -> password

    def endpoint(self) -> Endpoint:
        return Endpoint(self.address, self.service_name, self.ca_file)


# ------------------------------------------------------------------ failures


def _failure(exc: BaseException, address: str, port: int, front: str) -> tuple[str, str]:
    """cause and remedy for an exception a probe raised."""
    if isinstance(exc, RelayOpen):
        return (f"OPEN RELAY: a client that did not log in may send to any domain ({exc}); "
                "spammers will find it within hours",
                "remove the setting that lets strangers relay (mynetworks, "
                "smtpd_relay_restrictions; `postconf -n` on the nodes), then `deploy.py "
                "converge` restores the managed configuration")
    if isinstance(exc, smtplib.SMTPRecipientsRefused) and exc.recipients:
        code, msg = next(iter(exc.recipients.values()))
        exc = smtplib.SMTPResponseException(code, msg)
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(
            exc.smtp_error, bytes) else str(exc.smtp_error)
        e = explain(f"{exc.smtp_code} {text}")
        return f"server replied {exc.smtp_code} {text.strip()}: {e.cause}", e.remedy
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (f"the certificate does not verify: {exc.verify_message}",
                "install a certificate for the service name, issued by a CA clients trust "
                "(lab: `deploy.py converge` reinstalls the one in the vault)")
    if isinstance(exc, ssl.SSLError):
        return (f"TLS failed: {exc.reason or exc}",
                "check the TLS settings of Postfix/Dovecot on the nodes (TLS 1.2 or newer, a "
                "certificate and key that match); `deploy.py converge` restores them")
    if isinstance(exc, ConnectionRefusedError):
        return (f"nothing accepts connections on {address}:{port}",
                f"on {front}: `systemctl status haproxy`, and the nodes' state with "
                f"`echo 'show servers state' | socat - /run/haproxy/admin.sock`; "
                "`deploy.py converge` starts what is stopped")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return (f"no answer from {address}:{port} in time",
                f"a node may be down without the balancer noticing yet, or {front} is "
                "unreachable: check the nodes' services and the balancer's health checks")
    if isinstance(exc, (imaplib.IMAP4.error, poplib.error_proto)):
        e = explain(str(exc))
        return f"server replied {exc}: {e.cause}", e.remedy
    if isinstance(exc, AssertionError):
        return str(exc), ("check the mail log on the nodes (`journalctl -u postfix -u dovecot`)"
                          " for the message; `deploy.py explain` decodes any reply there")
    return f"{type(exc).__name__}: {exc}", "see the message; `deploy.py converge` and run again"


def _run(report: Report, check: str, target: str, port: int, svc: Service,
         probe: Callable[[], str]) -> bool:
    """Run one probe; its return value is the row's detail (a WARN: prefix
    makes it a warning)."""
    t0 = time.monotonic()
    try:
        detail = probe()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row
        cause, remedy = _failure(exc, svc.address, port, svc.front)
        report.rows.append(Row(check, target, FAIL, "", cause, remedy))
        step("verify", svc.front, f"{check}: FAILED ({cause})")
        return False
    if detail.startswith("WARN:"):
        cause, _, remedy = detail[5:].partition("|")
        report.rows.append(Row(check, target, WARN, cause.strip(), cause.strip(),
                               remedy.strip()))
    else:
        report.rows.append(Row(check, target, OK, detail))
    step("verify", svc.front, f"{check}: {report.rows[-1].result} "
                              f"({time.monotonic() - t0:.1f} s)")
    return True


# ------------------------------------------------------------------ probes


def _tls_detail(sock: ssl.SSLSocket, name: str) -> str:
    cert = sock.getpeercert() or {}
    days = int((ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) // 86400)
    detail = f"{sock.version()}, certificate for {name} verified, expires in {days} days"
    if days < EXPIRY_WARN_DAYS:
        return (f"WARN:{detail} | renew the certificate before it expires (lab: remove "
                "vault_tls_cert from the vault and run `deploy.py converge`)")
    return detail


def probe_port(ep: Endpoint, port: int, proto: str, tls: str) -> str:
    """Speak the port's protocol, start TLS, verify the certificate against
    the CA and the service name; the detail names the TLS version and expiry."""
    if proto in ("SMTP", "submission", "submissions"):
        with ep.smtp_tls(port) as conn:
            conn.ehlo_or_helo_if_needed()
            detail = _tls_detail(conn.sock, ep.service_name)
            if port != 25 and "auth" not in conn.esmtp_features:
                raise AssertionError(f"no AUTH offered on {port} after TLS")
            return detail
    if proto == "IMAP":
        conn = ep.imap_plain()
        try:
            if "STARTTLS" not in conn.capabilities:
                raise AssertionError("IMAP offers no STARTTLS")
            conn.host = ep.service_name  # the name the certificate is checked against
            conn.starttls(ssl_context=ep.context())
            return _tls_detail(conn.sock, ep.service_name)
        finally:
            conn.shutdown()
    if proto == "POP3":
        conn = ep.pop3_plain()
        try:
            conn.host = ep.service_name
            conn.stls(context=ep.context())
            return _tls_detail(conn.sock, ep.service_name)
        finally:
            conn.close()
    greeting = {"IMAPS": b"* OK", "POP3S": b"+OK"}[proto]
    with ep.tls_handshake(port) as sock:
        first = sock.recv(200)
        if not first.startswith(greeting):
            raise AssertionError(f"{proto} greeting was {first[:60]!r}")
        return _tls_detail(sock, ep.service_name)


def check_ports(svc: Service, report: Report) -> None:
    ep = svc.endpoint()
    for port, proto, tls in PORTS:
        how = "STARTTLS" if tls == "starttls" else "TLS"
        _run(report, f"{proto} {port} ({how})", f"{svc.front} {svc.address}:{port}", port, svc,
             lambda p=port, n=proto, t=tls: probe_port(ep, p, n, t))


def check_round_trip(svc: Service, report: Report, timeout: float = 20) -> None:
    """Send from a test account to itself on 587 and on 465, read both back
    over IMAP and POP3 (through the balancer, so possibly from the other
    node), then delete them."""
    if not svc.accounts:
        report.rows.append(Row("send and read back", svc.front, WARN, "no test account",
                               "no test account to send with",
                               "set mailops_verify_account to a mailbox kept for tests"))
        return
    ep = svc.endpoint()
    user, password = next(iter(svc.accounts.items()))
    run_id = uuid.uuid4().hex[:12]
    target = f"{user} via {svc.address}"
    sent = []
    for port in (587, 465):
        subject = f"mailops verify {run_id} {port}"

        def send(port: int = port, subject: str = subject) -> str:
            refused = ep.send(port, user, password, message(user, [user], subject))
            if refused:
                raise AssertionError(f"recipients refused: {refused}")
            how = "STARTTLS" if port == 587 else "TLS"
            return f"accepted (250) after {how} and AUTH"

        if _run(report, f"send on {port}", target, port, svc, send):
            sent.append(subject)
    if not sent:
        return
    t0 = time.monotonic()
    _run(report, "read back over IMAP (993)", target, 993, svc, lambda: (
        all(wait_imap(ep, user, password, s, timeout) for s in sent) and
        f"{len(sent)} found after {time.monotonic() - t0:.1f} s"))
    _run(report, "read back over POP3 (995)", target, 995, svc, lambda: (
        all(wait_pop3(ep, user, password, s, timeout) for s in sent) and
        f"{len(sent)} found"))
    for subject in sent:
        _delete(ep, user, password, subject)


def check_security(svc: Service, report: Report) -> None:
    """No login before TLS on any port; no relaying for strangers."""
    ep = svc.endpoint()

    def smtp_no_auth(port: int) -> str:
        with ep.smtp(port) as conn:
            conn.ehlo()
            if conn.has_extn("auth"):
                raise AssertionError(f"AUTH is offered before STARTTLS on {port}: "
                                     f"{conn.esmtp_features['auth']}")
            code, msg = conn.docmd("AUTH", "PLAIN AHZlcmlmeQBub3QtYS1wYXNzd29yZA==")
            if code == 235:
                raise AssertionError(f"a login before TLS was accepted on {port}")
            return f"AUTH refused before TLS ({code})"

    def imap_no_login() -> str:
        conn = ep.imap_plain()
        try:
            if "LOGINDISABLED" not in conn.capabilities:
                raise AssertionError("IMAP 143 allows LOGIN before STARTTLS")
            return "LOGINDISABLED before STARTTLS"
        finally:
            conn.shutdown()

    def pop3_no_login() -> str:
        conn = ep.pop3_plain()
        try:
            try:
                conn.user("verify@invalid")
                conn.pass_("not-a-password")
            except poplib.error_proto as e:
                return f"login refused before STLS ({e.args[0][:40]!r})"
            raise AssertionError("POP3 110 accepted a login before STLS")
        finally:
            conn.close()

    def no_open_relay() -> str:
        # RCPT only: nothing is ever sent, whatever the answer.
        with ep.smtp(25) as conn:
            conn.ehlo()
            conn.mail("verify@relay-test.invalid")
            code, msg = conn.rcpt("relay-test@relay-test.invalid")
            conn.rset()
        if 200 <= code < 300:
            raise RelayOpen(code, msg)
        return f"refused: {code} {msg.decode(errors='replace')[:40]}"

    target = f"{svc.front} {svc.address}"
    for port in (25, 587):
        _run(report, f"no AUTH before TLS on {port}", f"{target}:{port}", port, svc,
             lambda p=port: smtp_no_auth(p))
    _run(report, "no login before TLS on 143", f"{target}:143", 143, svc, imap_no_login)
    _run(report, "no login before TLS on 110", f"{target}:110", 110, svc, pop3_no_login)
    _run(report, "no open relay", f"{target}:25", 25, svc, no_open_relay)


class RelayOpen(Exception):
    """A stranger's RCPT for a foreign domain was accepted."""

    def __init__(self, code: int, msg: bytes) -> None:
        super().__init__(f"{code} {msg.decode(errors='replace')}")


def _delete(ep: Endpoint, user: str, password: str, subject: str) -> None:
    """Remove the verify message, so repeated runs leave nothing behind."""
    try:
        conn = ep.imap(user, password)
        try:
            conn.select("INBOX")
            _, data = conn.search(None, "SUBJECT", f'"{subject}"')
            for num in data[0].split():
                conn.store(num, "+FLAGS", "\\Deleted")
            conn.expunge()
        finally:
            conn.logout()
    except (OSError, imaplib.IMAP4.error):
        pass  # a leftover test message harms nobody


def run(svc: Service) -> Report:
    """The pass `up` ends with: every port through the balancer, a round trip."""
    report = Report()
    check_ports(svc, report)
    check_round_trip(svc, report)
    return report


def full(inventory) -> Report:
    """`deploy.py verify`: the service as clients and other servers see it,
    the cluster as the balancer sees it, and the DNS."""
    from mailops import verify_dns, verify_external, verify_nodes

    svc = service_for(inventory)
    report = Report()
    check_ports(svc, report)
    check_security(svc, report)
    check_round_trip(svc, report)
    verify_external.check_external(inventory, svc, report)
    verify_nodes.check_balancer_view(inventory, svc, report)
    verify_nodes.check_replication(inventory, svc, report)
    verify_nodes.check_node_health(inventory, report)
    step("verify", "-", "DNS")
    verify_dns.check_dns(inventory, report)
    verify_dns.check_mta_sts(inventory, svc, report)
    return report


def service_for(inventory) -> Service:
    """Where and how to reach the service an inventory deploys; writes the
    CA certificate (public) where clients can read it."""
    from mailops.mailmodel import load_mail_model
    from mailops.paths import ca_file, vault_file
    from mailops.secrets import load_secrets

    model = load_mail_model(inventory)
    secrets = load_secrets(vault_file(inventory.path), inventory.vault_password_file)
    front = (inventory.group("lb") or inventory.group("mail"))[0]
    ca: Path | None = None
    if secrets.ca is not None:
        ca = ca_file(inventory.path, inventory.lab.name if inventory.lab else None)
        ca.parent.mkdir(parents=True, exist_ok=True)
        if not ca.exists() or ca.read_text() != secrets.ca.cert_pem:
            ca.write_text(secrets.ca.cert_pem)
    passwords = {a: v["password"] for a, v in secrets.mailboxes.items()}
    if inventory.lab is not None:
        # The lab's mailboxes are test accounts, the first one does the round trip.
        accounts = {m.address: passwords[m.address] for m in model.mailboxes
                    if m.address in passwords}
    else:
        # Elsewhere only a mailbox kept for tests, never a user's.
        wanted = inventory.variables.get(front.name, {}).get("mailops_verify_account")
        accounts = {wanted: passwords[wanted]} if wanted in passwords else {}
    return Service(model.service_name, str(front.address), front.name, ca, accounts)
