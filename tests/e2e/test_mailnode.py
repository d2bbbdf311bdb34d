"""The mail service does everything MAIL-BASICS.md asks, tested over the
network with real clients through the balancer (TLS passes through it to the
nodes): ports, TLS, AUTH rules, send and read back, DKIM, and the standard
error replies."""

from __future__ import annotations

import email
import imaplib
import poplib
import smtplib
import ssl
import subprocess
import time

import dkim
import pytest

from mailops.verify.mailclient import message, wait_imap, wait_pop3

pytestmark = pytest.mark.lab

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def test_all_seven_ports_answer_their_protocol(node):
    ep = node.endpoint
    for port in (25, 587):
        with ep.smtp(port) as conn:
            code, _ = conn.ehlo()
            assert code == 250, port
            assert conn.has_extn("starttls"), f"{port} offers no STARTTLS"
    with ep.smtp_tls(465) as conn:
        assert conn.ehlo()[0] == 250
    imap = ep.imap_plain()
    assert imap.welcome.startswith(b"* OK") and "STARTTLS" in imap.capabilities
    imap.logout()
    pop = ep.pop3_plain()
    assert pop.getwelcome().startswith(b"+OK") and "STLS" in pop.capa()
    pop.quit()
    for port, greeting in ((993, b"* OK"), (995, b"+OK")):
        with ep.tls_handshake(port) as tls:
            assert tls.recv(200).startswith(greeting), port


@pytest.mark.parametrize("port", [25, 587, 143, 110])
def test_starttls_gives_a_certificate_for_the_service_name(node, port):
    ep = node.endpoint
    if port in (25, 587):
        with ep.smtp_tls(port) as conn:
            cert = conn.sock.getpeercert()
            version = conn.sock.version()
    elif port == 143:
        conn = ep.imap_plain()
        conn.host = ep.service_name  # the name the certificate is checked against
        conn.starttls(ssl_context=ep.context())
        cert, version = conn.sock.getpeercert(), conn.sock.version()
        conn.logout()
    else:
        conn = ep.pop3_plain()
        conn.host = ep.service_name
        conn.stls(context=ep.context())
        cert, version = conn.sock.getpeercert(), conn.sock.version()
        conn.quit()
    names = {v for k, v in cert["subjectAltName"] if k == "DNS"}
    assert ep.service_name in names
    assert version in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("port", [465, 993, 995])
def test_implicit_tls_verifies_against_the_lab_ca(node, port):
    with node.endpoint.tls_handshake(port) as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    other = ssl.create_default_context()  # the system CAs do not know the lab CA
    with pytest.raises(ssl.SSLCertVerificationError):
        node.endpoint.tls_handshake(port, other)


@pytest.mark.parametrize("port", [465, 993, 995])
def test_tls_1_1_and_older_are_refused(node, port):
    def ctx(version):
        c = node.endpoint.context(minimum_version=ssl.TLSVersion.TLSv1,
                                  maximum_version=version)
        c.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer old versions
        return c

    # Control: the same client with TLS 1.2 allowed gets through.
    node.endpoint.tls_handshake(port, ctx(ssl.TLSVersion.TLSv1_2)).close()
    with pytest.raises(ssl.SSLError):
        node.endpoint.tls_handshake(port, ctx(ssl.TLSVersion.TLSv1_1)).close()


def test_no_auth_before_tls(node):
    ep = node.endpoint
    user, password = node.account("alice@example.test")
    with ep.smtp(25) as conn:
        conn.ehlo()
        assert not conn.has_extn("auth"), "port 25 offers AUTH before STARTTLS"
    with ep.smtp(587) as conn:
        conn.ehlo()
        assert not conn.has_extn("auth")
        code, reply = conn.docmd("AUTH", "PLAIN AGFsaWNlAHdyb25n")
        assert code == 530 and b"STARTTLS" in reply.upper(), (code, reply)
    imap = ep.imap_plain()
    assert "LOGINDISABLED" in imap.capabilities
    with pytest.raises(imaplib.IMAP4.error):
        imap.login(user, password)
    imap.logout()
    pop = ep.pop3_plain()
    with pytest.raises(poplib.error_proto):
        pop.user(user)
        pop.pass_(password)
    pop.quit()


@pytest.mark.parametrize("port", [587, 465])
def test_send_to_two_domains_and_an_alias_read_back_and_dkim(node, port):
    ep = node.endpoint
    alice, alice_pw = node.account("alice@example.test")
    msg = message(alice, ["bob@example.test", "carol@example.net", "team@example.net"])
    subject = msg["Subject"]
    assert ep.send(port, alice, alice_pw, msg) == {}

    raw_bob = wait_imap(ep, *node.account("bob@example.test"), subject)
    raw_carol = wait_pop3(ep, *node.account("carol@example.net"), subject)
    # team@example.net expands to alice and carol: alice gets a copy too.
    wait_imap(ep, alice, alice_pw, subject)
    for raw in (raw_bob, raw_carol):
        assert email.message_from_bytes(raw)["DKIM-Signature"], "not DKIM-signed"
        assert dkim.verify(raw, dnsfunc=node.dkim_dns), "DKIM signature does not verify"


def _rcpt(ep, port, sender, rcpt, auth=None):
    conn = ep.smtp_tls(port) if port != 25 else ep.smtp(25)
    with conn:
        conn.ehlo()
        if auth:
            conn.login(*auth)
        code, reply = conn.mail(sender)
        if code != 250:
            return code, reply
        return conn.rcpt(rcpt)


def test_unknown_user_550_5_1_1(node):
    code, reply = _rcpt(node.endpoint, 25, "someone@ext.example", "nobody@example.test")
    assert code == 550 and b"5.1.1" in reply, (code, reply)


def test_relaying_without_auth_554_5_7_1(node):
    code, reply = _rcpt(node.endpoint, 25, "someone@ext.example", "victim@elsewhere.example")
    assert code == 554 and b"5.7.1" in reply and b"Relay access denied" in reply, (code, reply)


def test_over_size_limit_552_5_3_4(node):
    alice, pw = node.account("alice@example.test")
    msg = message(alice, ["bob@example.test"], body="x" * (node.model.message_size_limit + 1024))
    # Postfix advertises SIZE, so the refusal comes at MAIL FROM (or at the
    # end of DATA for a client that does not declare the size).
    with pytest.raises((smtplib.SMTPSenderRefused, smtplib.SMTPDataError)) as info, \
            node.endpoint.smtp_tls(587) as conn:
        conn.login(alice, pw)
        conn.send_message(msg)
    assert info.value.smtp_code == 552 and b"5.3.4" in info.value.smtp_error, info.value


def test_over_quota_552_5_2_2(node):
    """tiny@ has a 200K quota: fill it, then the next delivery is refused."""
    alice, pw = node.account("alice@example.test")
    filler = "y" * (120 * 1024)
    refused = None
    with node.endpoint.smtp_tls(587) as conn:
        conn.login(alice, pw)
        for _ in range(4):
            try:
                conn.send_message(message(alice, ["tiny@example.net"], body=filler))
            except smtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients["tiny@example.net"]
                break
            time.sleep(2)  # delivery is asynchronous: let the quota count it
    assert refused is not None, "a full mailbox still accepted mail"
    code, reply = refused
    assert code == 552 and b"5.2.2" in reply, refused


def test_sender_not_owned_553_5_7_1(node):
    alice, pw = node.account("alice@example.test")
    code, reply = _rcpt(node.endpoint, 587, "bob@example.test", "carol@example.net",
                        auth=(alice, pw))
    if code == 250:
        raise AssertionError("alice may send as bob")
    assert code == 553 and b"5.7.1" in reply, (code, reply)


def test_gtube_is_rejected_as_spam_554_5_7_1(node):
    alice, pw = node.account("alice@example.test")
    msg = message(alice, ["bob@example.test"], body=f"{GTUBE}\n")
    with pytest.raises(smtplib.SMTPDataError) as info, node.endpoint.smtp_tls(587) as conn:
        conn.login(alice, pw)
        conn.send_message(msg)
    assert info.value.smtp_code == 554 and b"5.7.1" in info.value.smtp_error, info.value


def test_second_converge_changes_nothing_and_logs_no_secret(node, lab_inventory):
    from tests.conftest import ROOT, deploy, no_changes_in

    res = deploy("converge", "-i", str(lab_inventory), timeout=900)
    assert no_changes_in(res.stdout), res.stdout[-3000:]
    secrets = node.secrets
    needles = [v["password"] for v in secrets.mailboxes.values()] + [secrets.doveadm_password]
    for pem in [*secrets.dkim.values(), secrets.service_cert.key_pem, secrets.ca.key_pem]:
        needles += [line for line in pem.splitlines() if "-----" not in line][1:3]
    journal = node_journal(node)
    repo = subprocess.run(["git", "grep", "-I", "-c", "-F", *sum((["-e", n] for n in needles), []),
                           "HEAD"], cwd=ROOT, capture_output=True, text=True)
    for needle in needles:
        assert needle not in res.stdout + res.stderr, "a secret is in the converge output"
        assert needle not in journal, "a secret is in the mail node's journal"
    assert repo.stdout == "", f"a secret is committed: {repo.stdout}"


def node_journal(node) -> str:
    from mailops.lab.lab import Lab

    host = node.inventory.group("mail")[0]
    return Lab(node.inventory).ssh(host, "journalctl --no-pager -q -o cat", timeout=60).stdout


def test_a_main_cf_postfix_rejects_never_replaces_the_live_one(node):
    """A main.cf that `postfix -c` rejects (here a misspelt parameter, a
    warning) fails the converge before it is written: the live main.cf is
    unchanged and Postfix keeps running the old one, serving mail."""
    from mailops.converge.run import run_playbook
    from mailops.core.errors import MailopsError
    from mailops.inventory import remote

    inv = node.inventory
    mail1 = inv.group("mail")[0]
    state = "sha256sum /etc/postfix/main.cf; systemctl show -p MainPID --value postfix"
    before = remote.run(inv, mail1, state).stdout
    bad = '{"postfix__main_extra": {"smtpd_tls_auth_onyl": "yes"}}'
    with pytest.raises(MailopsError) as failed:
        run_playbook(inv, extra=["--limit", mail1.name, "-e", bad])
    assert "smtpd_tls_auth_onyl" in str(failed.value) and "/etc/postfix" in str(failed.value)
    after = remote.run(inv, mail1, state).stdout
    assert after == before and before.split()[0], (before, after)
    assert remote.run(inv, mail1, "systemctl is-active postfix").stdout.strip() == "active"
    assert remote.run(inv, mail1, "grep -c smtpd_tls_auth_onyl /etc/postfix/main.cf").stdout \
        .strip() == "0"
    with node.endpoint.smtp(25) as conn:  # still serving, through the balancer
        assert conn.ehlo()[0] == 250


def test_dovecot_runs_with_its_drop_in_after_a_cold_converge(node):
    """The replication drop-in is written before Dovecot first starts: the
    converge reloads systemd's units first, so the running Dovecot has it."""
    from mailops.inventory import remote

    for host in node.inventory.group("mail"):
        out = remote.run(node.inventory, host, "systemctl show -p NeedDaemonReload -p "
                                               "DropInPaths dovecot").stdout
        assert "NeedDaemonReload=no" in out, (host.name, out)
        assert "mailops-replication.conf" in out, (host.name, out)
