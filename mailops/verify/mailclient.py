"""Real protocol clients: smtplib, imaplib, poplib over TLS that verifies
against the deployment's CA and service name (used by verify and the tests)."""

from __future__ import annotations

import email
import imaplib
import poplib
import smtplib
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

TIMEOUT = 20


@dataclass(frozen=True)
class Endpoint:
    address: str  # where to connect (a node, or the balancer)
    service_name: str  # the name the certificate must carry
    ca_file: Path

    def context(self, **versions) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        for attr, value in versions.items():
            setattr(ctx, attr, value)
        return ctx

    # -- SMTP
    def smtp(self, port: int) -> smtplib.SMTP:
        """Plain SMTP (25, 587), before any STARTTLS."""
        return smtplib.SMTP(self.address, port, timeout=TIMEOUT, local_hostname="client.lab")

    def smtp_tls(self, port: int) -> smtplib.SMTP:
        if port == 465:
            return _SMTPS(self.address, self.service_name, self.context())
        conn = smtplib.SMTP(self.address, port, timeout=TIMEOUT, local_hostname="client.lab")
        conn.ehlo()
        conn._host = self.service_name
        conn.starttls(context=self.context())
        conn.ehlo()
        return conn

    def send(self, port: int, user: str, password: str, msg: EmailMessage) -> dict:
        with self.smtp_tls(port) as conn:
            conn.login(user, password)
            return conn.send_message(msg)

    # -- IMAP / POP3
    def imap(self, user: str, password: str) -> imaplib.IMAP4_SSL:
        conn = imaplib.IMAP4_SSL(self.address, 993, ssl_context=_named(self), timeout=TIMEOUT)
        conn.login(user, password)
        return conn

    def imap_plain(self) -> imaplib.IMAP4:
        return imaplib.IMAP4(self.address, 143, timeout=TIMEOUT)

    def pop3_plain(self) -> poplib.POP3:
        return poplib.POP3(self.address, 110, timeout=TIMEOUT)

    def pop3(self, user: str, password: str) -> poplib.POP3_SSL:
        conn = poplib.POP3_SSL(self.address, 995, context=_named(self), timeout=TIMEOUT)
        conn.user(user)
        conn.pass_(password)
        return conn

    def tls_handshake(self, port: int, ctx: ssl.SSLContext | None = None) -> ssl.SSLSocket:
        """Implicit TLS straight from the first byte (465, 993, 995)."""
        raw = socket.create_connection((self.address, port), timeout=TIMEOUT)
        return (ctx or self.context()).wrap_socket(raw, server_hostname=self.service_name)


class _SMTPS(smtplib.SMTP_SSL):
    """SMTP_SSL that connects to an address but checks the service name."""

    def __init__(self, address: str, name: str, ctx: ssl.SSLContext) -> None:
        self._name = name
        super().__init__(address, 465, timeout=TIMEOUT, context=ctx,
                         local_hostname="client.lab")

    def _get_socket(self, host, port, timeout):
        raw = socket.create_connection((host, port), timeout)
        return self.context.wrap_socket(raw, server_hostname=self._name)


def _named(ep: Endpoint) -> ssl.SSLContext:
    """imaplib/poplib pass the connect host as the TLS name; wrap so the
    certificate is checked against the service name instead."""
    ctx = ep.context()
    wrap = ctx.wrap_socket

    def wrap_socket(sock, *args, server_hostname=None, **kw):
        return wrap(sock, *args, server_hostname=ep.service_name, **kw)

    ctx.wrap_socket = wrap_socket  # type: ignore[method-assign]
    return ctx


def message(sender: str, to: list[str], subject: str | None = None, body: str = "hello\n",
            ) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject or f"mailops test {uuid.uuid4().hex[:12]}"
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@mailops.test>"
    msg["Date"] = email.utils.formatdate(localtime=False)
    msg.set_content(body)
    return msg


def inbox_subjects(ep: Endpoint, user: str, password: str, prefix: str) -> set[str]:
    """Subjects of the INBOX messages whose subject contains prefix."""
    conn = ep.imap(user, password)
    try:
        conn.select("INBOX", readonly=True)
        _, data = conn.search(None, "SUBJECT", f'"{prefix}"')
        ids = data[0].split()
        if not ids:
            return set()
        _, fetched = conn.fetch(b",".join(ids), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        return {part[1].decode().split(":", 1)[1].strip() for part in fetched
                if isinstance(part, tuple)}
    finally:
        conn.logout()


def _poll(find, what: str, timeout: float) -> bytes:
    """Call find() until it returns a message: delivery is asynchronous."""
    deadline = time.monotonic() + timeout
    while (raw := find()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} after {timeout} s")
        time.sleep(0.5)
    return raw


def wait_imap(ep: Endpoint, user: str, password: str, subject: str,
              timeout: float = 30) -> bytes:
    """The raw message with this subject from INBOX, waiting for delivery."""

    def find() -> bytes | None:
        conn = ep.imap(user, password)
        try:
            conn.select("INBOX")
            _, data = conn.search(None, "SUBJECT", f'"{subject}"')
            ids = data[0].split()
            return conn.fetch(ids[-1], "(RFC822)")[1][0][1] if ids else None
        finally:
            conn.logout()

    return _poll(find, f"{subject!r} not in {user}'s INBOX", timeout)


def wait_pop3(ep: Endpoint, user: str, password: str, subject: str,
              timeout: float = 30) -> bytes:
    """The raw message with this subject from the POP3 drop, waiting for delivery."""

    def find() -> bytes | None:
        conn = ep.pop3(user, password)
        try:
            for i in range(len(conn.list()[1]), 0, -1):
                raw = b"\r\n".join(conn.retr(i)[1])
                if email.message_from_bytes(raw)["Subject"] == subject:
                    return raw
            return None
        finally:
            conn.quit()

    return _poll(find, f"{subject!r} not in {user}'s POP3 drop", timeout)
