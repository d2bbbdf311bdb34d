"""Brute-force protection behind the balancer: wrong passwords from one lab
host (ext1) through the balancer, over SMTP AUTH, IMAP and POP3, get that
address refused on every mail port at the balancer (fail2ban there, fed by
the nodes' Dovecot auth lines, which name the client's real address from
the PROXY header) for the ban period, and then let in again. Another
address logs in meanwhile without delay (Dovecot's auth penalty judges the
real address too), and the balancer's own address is never banned."""

from __future__ import annotations

import json
import time

import pytest

from mailops.verify.nodes import BACKEND, haproxy_states

pytestmark = pytest.mark.lab

ATTACKER = "ext1"
JAIL = "mailops-auth"
PORTS = (25, 465, 587, 110, 995, 143, 993)

# Run on the attacking host with python3 - : wrong passwords, spread over
# SMTP AUTH (587), IMAP (143) and POP3 (110), five at a time; bounded by
# count and by time. Prints a JSON count of the outcomes.
ATTACK = r"""
import imaplib, json, poplib, smtplib, socket, ssl, threading, time
LB, USER, N, PASSWORD = {lb!r}, {user!r}, {n}, {password!r}
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
def smtp(pw):
    with smtplib.SMTP(LB, 587, timeout=20, local_hostname="attacker.lab") as s:
        s.starttls(context=ctx)
        s.ehlo()
        s.user, s.password = USER, pw
        try:
            # One AUTH command per try (login() would try PLAIN, then LOGIN).
            s.auth("PLAIN", s.auth_plain)
            return "in"
        except smtplib.SMTPAuthenticationError:
            return "failed"
def imap(pw):
    c = imaplib.IMAP4(LB, 143, timeout=20)
    c.starttls(ssl_context=ctx)
    try:
        c.login(USER, pw)
        return "in"
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error:
        return "failed"
    finally:
        c.shutdown()
def pop3(pw):
    c = poplib.POP3(LB, 110, timeout=20)
    c.stls(context=ctx)
    try:
        c.user(USER)
        c.pass_(pw)
        return "in"
    except poplib.error_proto:
        return "failed"
    finally:
        c.close()
PROTOCOLS = (smtp, imap, pop3)
def attempt(i, pw):
    try:
        return PROTOCOLS[i % 3].__name__ + " " + PROTOCOLS[i % 3](pw)
    except ConnectionRefusedError:
        return PROTOCOLS[i % 3].__name__ + " refused"
    except (OSError, EOFError, smtplib.SMTPException, imaplib.IMAP4.abort) as e:
        # A session open when the ban came: cut by the balancer's firewall.
        return PROTOCOLS[i % 3].__name__ + " cut " + type(e).__name__
    except Exception as e:
        return PROTOCOLS[i % 3].__name__ + " error " + type(e).__name__
if PASSWORD:
    print(json.dumps([attempt(i, PASSWORD) for i in range(3)]))
    raise SystemExit
out, lock, todo, deadline = [], threading.Lock(), iter(range(N)), time.monotonic() + 150
def worker():
    while time.monotonic() < deadline:
        with lock:
            i = next(todo, None)
        if i is None:
            return
        res = attempt(i, "wrong-%d" % i)
        with lock:
            out.append(res)
threads = [threading.Thread(target=worker) for _ in range(5)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(out))
"""

# Connects to each port; prints port -> "open" or the error's name.
PROBE = r"""
import json, socket
out = {{}}
for port in {ports!r}:
    try:
        socket.create_connection(({lb!r}, port), 5).close()
        out[port] = "open"
    except OSError as e:
        out[port] = type(e).__name__
print(json.dumps(out))
"""


def _py(inv, host: str, script: str, timeout: float = 240) -> object:
    from mailops.inventory import remote

    res = remote.run(inv, inv.host(host), "python3 -", stdin=script, timeout=timeout)
    assert res.returncode == 0, (host, res.stdout, res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _jail(inv, *args: str, lb=None) -> str:
    from mailops.inventory import remote

    res = remote.run(inv, lb or inv.group("lb")[0], "fail2ban-client " + " ".join(args))
    assert res.returncode == 0, res.stderr
    return res.stdout


def _banned(inv) -> dict[str, list[str]]:
    """balancer -> the addresses it refuses now."""
    return {lb.name: _jail(inv, "get", JAIL, "banip", lb=lb).split() for lb in inv.group("lb")}


def _ban_left(inv, address: str) -> float:
    """Seconds the ban of address has left, the least over the balancers
    (0: not banned on one of them), by each balancer's own clock."""
    from mailops.inventory import remote

    left = []
    for lb in inv.group("lb"):
        res = remote.run(inv, lb, f"fail2ban-client get {JAIL} banip --with-time | "
                         f"awk -v a={address} '$1 == a {{print $7\" \"$8}}' | "
                         "xargs -r -I{} date -d {} +%s; echo now $(date +%s)")
        assert res.returncode == 0, res.stderr
        ends = [int(w) for w in res.stdout.split() if w.isdigit()]
        now = int(res.stdout.split("now")[1])
        left.append(ends[0] - now if len(ends) == 2 else 0)
    return min(left)


def _unban(inv, address: str) -> None:
    for lb in inv.group("lb"):
        _jail(inv, "set", JAIL, "unbanip", address, lb=lb)


def test_wrong_passwords_ban_the_address_everywhere_and_only_it(node, lab_inventory):
    from mailops.inventory import remote

    inv = node.inventory
    lb = node.endpoint.address  # the balancers' floating address
    attacker = str(inv.host(ATTACKER).address)
    user, password = node.account("alice@example.test")
    ban = node.model.auth_ban
    assert ban.failures < 50 and ban.ban <= 120  # the lab's short ban: the test waits it out
    _unban(inv, attacker)  # a kept lab's last run
    try:
        t0 = time.monotonic()
        outcomes = _py(inv, ATTACKER, ATTACK.format(lb=lb, user=user, n=50, password=""))
        assert len(outcomes) == 50, outcomes
        assert not [o for o in outcomes if o.endswith(" in")], outcomes
        failed = [o for o in outcomes if o.endswith(" failed")]
        refused = [o for o in outcomes if o.endswith(" refused")]
        # Refused once the failures reached the limit: all of SMTP, IMAP, POP3
        # counted together (one protocol alone had only a third of them).
        assert ban.failures <= len(failed) < 50 and refused, outcomes
        assert {o.split()[0] for o in failed} == {"smtp", "imap", "pop3"}, outcomes
        assert not [o for o in outcomes if " error " in o], outcomes
        # Every balancer bans it: the floating address may move to either.
        assert all(attacker in banned for banned in _banned(inv).values()), _banned(inv)

        # Banned at the balancer, the one way in to every node: every mail
        # port refuses it, several times over (SMTP is spread round robin).
        # Judged only while the ban is still on everywhere after the probe (a
        # slow machine's attack can eat into the ban period).
        judged = 0
        for _ in range(3):
            probe = _py(inv, ATTACKER, PROBE.format(lb=lb, ports=PORTS))
            if _ban_left(inv, attacker) <= 0:
                break
            assert set(probe.values()) == {"ConnectionRefusedError"}, probe
            judged += 1
        assert judged, f"the ban ({ban.ban} s) ended before a probe: the attack took " \
                       f"{time.monotonic() - t0:.0f} s"

        # Another address logs in meanwhile, at once: neither the ban nor
        # Dovecot's auth penalty (per client address) falls on the balancer.
        def smtp_login() -> None:
            with node.endpoint.smtp_tls(587) as smtp:
                smtp.login(user, password)

        for login in (lambda: node.endpoint.imap(user, password).logout(),
                      lambda: node.endpoint.pop3(user, password).quit(), smtp_login):
            t1 = time.monotonic()
            login()
            assert time.monotonic() - t1 < 5
        states = {k: v["status"] for k, v in haproxy_states(inv, inv.group("lb")[0]).items()
                  if k[0] in BACKEND.values()}
        assert set(states.values()) == {"UP"}, states

        # The balancers' own addresses are never judged: failures logged
        # as if from them (lines a node sends) ban nothing.
        mail1 = inv.group("mail")[0]
        own = [str(h.address) for h in inv.group("lb")] + [lb]
        tag = f"forged{int(time.time())}x"  # this run's lines only (a kept lab has others)
        forged = " ; ".join(
            "logger -t dovecot 'imap-login: Disconnected: Connection closed (auth failed, 1 "
            f"attempts in 2 secs): user=<alice@example.test>, method=PLAIN, rip={a}, "
            f"lip={lb}, TLS, session=<{tag}{i}>'" for a in own for i in range(ban.failures + 5))
        assert remote.run(inv, mail1, forged).returncode == 0
        want = str(len(own) * (ban.failures + 5))
        deadline = time.monotonic() + 40  # a rebooted balancer: rsyslog's retry backoff
        while any(remote.run(inv, h, f"grep -c {tag} /var/log/mailops/auth.log").stdout.strip()
                  != want for h in inv.group("lb")):
            assert time.monotonic() < deadline, "the forged lines never reached the balancers"
            time.sleep(1)
        time.sleep(3)  # fail2ban reads the file every second
        assert not set(own) & {a for b in _banned(inv).values() for a in b}, _banned(inv)
        assert set(_py(inv, "ns1", PROBE.format(lb=lb, ports=PORTS)).values()) == {"open"}

        # The ban ends after its period (the lab's: a minute), counted from
        # the ban; the address then logs in again with the right password.
        deadline = time.monotonic() + ban.ban + 60
        while _py(inv, ATTACKER, PROBE.format(lb=lb, ports=(143,)))["143"] != "open":
            assert time.monotonic() < deadline, "the ban did not end"
            time.sleep(3)
        assert time.monotonic() - t0 >= ban.ban - 1  # not before its period
        back = _py(inv, ATTACKER, ATTACK.format(lb=lb, user=user, n=3, password=password))
        assert back == ["smtp in", "imap in", "pop3 in"], back
    finally:
        # ext1 is the lab's outside world: later tests send mail from it.
        _unban(inv, attacker)


def test_the_ban_settings_come_from_the_mail_model(node):
    """What fail2ban runs with on every balancer is what the inventory says
    (seconds), and the ignore list names the balancers, their floating
    address and every node."""
    inv = node.inventory
    ban = node.model.auth_ban
    for lb in inv.group("lb"):
        assert _jail(inv, "get", JAIL, "maxretry", lb=lb).strip() == str(ban.failures)
        assert _jail(inv, "get", JAIL, "findtime", lb=lb).strip() == str(ban.within)
        assert _jail(inv, "get", JAIL, "bantime", lb=lb).strip() == str(ban.ban)
        ignored = _jail(inv, "get", JAIL, "ignoreip", lb=lb)
        for address in [*(h.address for h in [*inv.group("lb"), *inv.group("mail")]),
                        inv.floating_address]:
            assert str(address) in ignored, (lb.name, address, ignored)
        assert str(inv.host(ATTACKER).address) not in ignored
