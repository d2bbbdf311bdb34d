"""verify, as a client sees the service: every port through the balancer
(protocol, TLS, certificate), no login before TLS, no open relay, and a
message sent on 587 and 465 read back over IMAP and POP3."""

from __future__ import annotations

import imaplib
import poplib
import smtplib
import socket
import ssl
import time
import uuid

from mailops.verify.explain import explain
from mailops.verify.mailclient import Endpoint, message, wait_imap, wait_pop3
from mailops.verify.report import Outcome, Report, run_probe
from mailops.verify.service import PORTS, Service

# A certificate that expires sooner than this is a warning.
EXPIRY_WARN_DAYS = 14


# ------------------------------------------------------------------ failures


def failure_cause(exc: BaseException, address: str, port: int, front: str) -> tuple[str, str]:
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


def run(report: Report, check: str, target: str, port: int, svc: Service,
        probe) -> bool:
    """One probe against the service's port: its Outcome is the row; an
    exception is explained (failure_cause) as a failed row."""
    return run_probe(report, check, target, probe,
                     lambda exc: failure_cause(exc, svc.address, port, svc.front), svc.front)


# ------------------------------------------------------------------ probes


def _tls_outcome(sock: ssl.SSLSocket, name: str) -> Outcome:
    cert = sock.getpeercert() or {}
    days = int((ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) // 86400)
    detail = f"{sock.version()}, certificate for {name} verified, expires in {days} days"
    if days < EXPIRY_WARN_DAYS:
        return Outcome.warn(detail, f"the certificate expires in {days} days",
                            "renew the certificate before it expires (lab: remove "
                            "vault_tls_cert from the vault and run `deploy.py converge`)")
    return Outcome.ok(detail)


def probe_port(ep: Endpoint, port: int, proto: str, tls: str) -> Outcome:
    """Speak the port's protocol, start TLS, verify the certificate against
    the CA and the service name; the detail names the TLS version and expiry."""
    if proto in ("SMTP", "submission", "submissions"):
        with ep.smtp_tls(port) as conn:
            conn.ehlo_or_helo_if_needed()
            detail = _tls_outcome(conn.sock, ep.service_name)
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
            return _tls_outcome(conn.sock, ep.service_name)
        finally:
            conn.shutdown()
    if proto == "POP3":
        conn = ep.pop3_plain()
        try:
            conn.host = ep.service_name
            conn.stls(context=ep.context())
            return _tls_outcome(conn.sock, ep.service_name)
        finally:
            conn.close()
    greeting = {"IMAPS": b"* OK", "POP3S": b"+OK"}[proto]
    with ep.tls_handshake(port) as sock:
        first = sock.recv(200)
        if not first.startswith(greeting):
            raise AssertionError(f"{proto} greeting was {first[:60]!r}")
        return _tls_outcome(sock, ep.service_name)


def check_ports(svc: Service, report: Report) -> None:
    ep = svc.endpoint()
    for port, proto, tls in PORTS:
        how = "STARTTLS" if tls == "starttls" else "TLS"
        run(report, f"{proto} {port} ({how})", f"{svc.front} {svc.address}:{port}", port, svc,
             lambda p=port, n=proto, t=tls: probe_port(ep, p, n, t))


def check_round_trip(svc: Service, report: Report, timeout: float = 20) -> None:
    """Send from a test account to itself on 587 and on 465, read both back
    over IMAP and POP3 (through the balancer, so possibly from the other
    node), then delete them."""
    if not svc.accounts:
        report.add("send and read back", svc.front, Outcome.warn(
            "no test account", "no test account to send with",
            "set mailops_verify_account to a mailbox kept for tests"))
        return
    ep = svc.endpoint()
    user, password = next(iter(svc.accounts.items()))
    run_id = uuid.uuid4().hex[:12]
    target = f"{user} via {svc.address}"
    sent = []
    for port in (587, 465):
        subject = f"mailops verify {run_id} {port}"

        def send(port: int = port, subject: str = subject) -> Outcome:
            refused = ep.send(port, user, password, message(user, [user], subject))
            if refused:
                raise AssertionError(f"recipients refused: {refused}")
            how = "STARTTLS" if port == 587 else "TLS"
            return Outcome.ok(f"accepted (250) after {how} and AUTH")

        if run(report, f"send on {port}", target, port, svc, send):
            sent.append(subject)
    if not sent:
        return
    t0 = time.monotonic()

    def read_back(wait, with_time: bool) -> Outcome:
        for s in sent:
            wait(ep, user, password, s, timeout)  # raises when it is not there in time
        took = f" after {time.monotonic() - t0:.1f} s" if with_time else ""
        return Outcome.ok(f"{len(sent)} found{took}")

    run(report, "read back over IMAP (993)", target, 993, svc, lambda: read_back(wait_imap, True))
    run(report, "read back over POP3 (995)", target, 995, svc, lambda: read_back(wait_pop3, False))
    for subject in sent:
        delete_message(ep, user, password, subject)


def check_security(svc: Service, report: Report) -> None:
    """No login before TLS on any port; no relaying for strangers."""
    ep = svc.endpoint()

    def smtp_no_auth(port: int) -> Outcome:
        with ep.smtp(port) as conn:
            conn.ehlo()
            if conn.has_extn("auth"):
                raise AssertionError(f"AUTH is offered before STARTTLS on {port}: "
                                     f"{conn.esmtp_features['auth']}")
            code, msg = conn.docmd("AUTH", "PLAIN AHZlcmlmeQBub3QtYS1wYXNzd29yZA==")
            if code == 235:
                raise AssertionError(f"a login before TLS was accepted on {port}")
            return Outcome.ok(f"AUTH refused before TLS ({code})")

    def imap_no_login() -> Outcome:
        conn = ep.imap_plain()
        try:
            if "LOGINDISABLED" not in conn.capabilities:
                raise AssertionError("IMAP 143 allows LOGIN before STARTTLS")
            return Outcome.ok("LOGINDISABLED before STARTTLS")
        finally:
            conn.shutdown()

    def pop3_no_login() -> Outcome:
        # Read from CAPA, not tried: Dovecot counts even a refused USER as a
        # failed login, and the balancers ban an address after a few (this
        # machine's, were verify to try on every run).
        conn = ep.pop3_plain()
        try:
            capa = conn.capa()
            offered = (["USER"] if "USER" in capa else []) + list(capa.get("SASL", []))
            if offered:
                raise AssertionError(f"POP3 110 offers a login before STLS: {offered}")
            return Outcome.ok("no USER or SASL mechanism before STLS")
        finally:
            conn.close()

    def no_open_relay() -> Outcome:
        # RCPT only: nothing is ever sent, whatever the answer.
        with ep.smtp(25) as conn:
            conn.ehlo()
            conn.mail("verify@relay-test.invalid")
            code, msg = conn.rcpt("relay-test@relay-test.invalid")
            conn.rset()
        if 200 <= code < 300:
            raise RelayOpen(code, msg)
        return Outcome.ok(f"refused: {code} {msg.decode(errors='replace')[:40]}")

    target = f"{svc.front} {svc.address}"
    for port in (25, 587):
        run(report, f"no AUTH before TLS on {port}", f"{target}:{port}", port, svc,
             lambda p=port: smtp_no_auth(p))
    run(report, "no login before TLS on 143", f"{target}:143", 143, svc, imap_no_login)
    run(report, "no login before TLS on 110", f"{target}:110", 110, svc, pop3_no_login)
    run(report, "no open relay", f"{target}:25", 25, svc, no_open_relay)


class RelayOpen(Exception):
    """A stranger's RCPT for a foreign domain was accepted."""

    def __init__(self, code: int, msg: bytes) -> None:
        super().__init__(f"{code} {msg.decode(errors='replace')}")


def delete_message(ep: Endpoint, user: str, password: str, subject: str) -> None:
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


