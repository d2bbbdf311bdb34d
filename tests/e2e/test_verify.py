"""`deploy.py verify` on the deployed lab cluster: it passes on a healthy
cluster, and names each fault when one thing at a time is broken (with its
exit status, the failing row and the remedy), then passes again once the
fault is repaired."""

from __future__ import annotations

import json
import time

import dns.query
import dns.rcode
import dns.update
import pytest

from mailops.dns.records import split_txt
from mailops.secrets import pki
from mailops.verify.nodes import BACKEND
from tests.conftest import deploy

pytestmark = pytest.mark.lab


def verify(lab_inventory) -> tuple[int, dict]:
    res = deploy("verify", "--json", "-i", str(lab_inventory), check=False, timeout=600)
    assert res.returncode in (0, 1), res.stderr[-3000:]
    return res.returncode, json.loads(res.stdout)


def rows(report: dict, result: str) -> list[dict]:
    return [c for c in report["checks"] if c["result"] == result]


def failures(report: dict) -> str:
    """The failing rows in full (pytest shortens a list of dicts to one line)."""
    return "\n".join(f"{c['check']} | {c['target']} | {c['detail']} | {c['cause']}"
                     for c in rows(report, "fail"))


def find(report: dict, result: str, check: str, target: str = "") -> list[dict]:
    return [c for c in rows(report, result) if check in c["check"] and target in c["target"]]


def ssh(node, host, command: str) -> str:
    from mailops.lab.lab import Lab

    res = Lab(node.inventory).ssh(host, command, timeout=120)
    assert res.returncode == 0, f"{host.name}: {command}\n{res.stdout}\n{res.stderr}"
    return res.stdout


def mail_nodes(node):
    return node.inventory.group("mail")


DOVECOT_BACKENDS = ("imap", "imaps", "pop3", "pop3s")
ALL_BACKENDS = tuple(BACKEND.values())


def wait_health(node, host, want_up: bool, backends=DOVECOT_BACKENDS,
                timeout: float = 30) -> None:
    """Until the balancer has the node UP (or not) in these backends."""
    from mailops.verify.nodes import haproxy_states

    lb = node.inventory.group("lb")[0]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [r["status"] for (b, n), r in haproxy_states(node.inventory, lb).items()
                  if n == host.name and b in backends]
        if len(states) == len(backends) and all((s == "UP") == want_up for s in states):
            return
        time.sleep(0.5)
    raise AssertionError(f"{host.name} not {'UP' if want_up else 'DOWN'} in {backends}")


def repaired(lab_inventory) -> dict:
    """After a repair: verify passes again."""
    code, report = verify(lab_inventory)
    assert code == 0, failures(report)
    return report


def test_verify_passes_on_the_deployed_cluster(node, lab_inventory):
    code, report = verify(lab_inventory)
    assert code == 0 and report["ok"], failures(report)
    ok = {c["check"] for c in rows(report, "ok")}
    for port in (25, 587, 465, 143, 993, 110, 995):
        assert any(c.endswith(f"{port} over PROXY protocol") for c in ok), port
    for check in ("no open relay", "no AUTH before TLS on 25", "no login before TLS on 143",
                  "send on 587", "send on 465", "read back over IMAP (993)",
                  "read back over POP3 (995)", "replication", "in the balancer and healthy",
                  "DNS records as planned", "DKIM key matches the nodes", "SPF lookups",
                  "mail queue", "quota headroom", "inbound from ext1", "outbound to ext1",
                  "DKIM on receipt", "SPF on receipt", "DMARC on receipt", "MTA-STS policy"):
        assert check in ok, f"{check} missing from the passing rows"
    # The lab's addresses have no reverse zone: PTR is a warning, never a pass.
    assert {c["check"] for c in rows(report, "warn")} == {"PTR of the outbound address"}


def test_dovecot_stopped_on_one_node(node, lab_inventory):
    mail2 = mail_nodes(node)[1]
    ssh(node, mail2, "systemctl stop dovecot")
    try:
        wait_health(node, mail2, want_up=False)
        code, report = verify(lab_inventory)
        assert code == 1
        # One row per balancer: each health-checks the node itself.
        seen = find(report, "fail", "in the balancer and healthy", mail2.name)
        assert len(seen) == len(node.inventory.group("lb")), seen
        health = seen[0]
        assert "imap" in health["cause"] and "systemctl status postfix dovecot" in health[
            "remedy"]
        probe = find(report, "fail", "IMAPS 993 over PROXY protocol", f"{mail2.name}:993")
        assert probe and "nothing listens" in probe[0]["cause"]
        assert "systemctl status dovecot" in probe[0]["remedy"]
    finally:
        ssh(node, mail2, "systemctl start dovecot")
    # The whole node is back in the balancer within seconds, 465 included
    # (its smtpd died while Dovecot's auth socket was gone: Postfix paused it).
    wait_health(node, mail2, want_up=True, backends=ALL_BACKENDS)
    repaired(lab_inventory)


def test_dns_record_deleted(node, lab_inventory, dns_lab):
    update = dns.update.UpdateMessage("example.net", keyring=dns_lab.key.to_dnspython())
    update.delete("_dmarc", "TXT")
    assert dns.query.tcp(update, dns_lab.server, timeout=5).rcode() == dns.rcode.NOERROR
    code, report = verify(lab_inventory)
    assert code == 1
    (row,) = find(report, "fail", "DNS TXT record", "_dmarc.example.net")
    assert "missing" in row["cause"] and "deploy.py dns apply" in row["remedy"]
    deploy("dns", "apply", "-i", str(lab_inventory))
    repaired(lab_inventory)


def test_dkim_record_changed_to_another_key(node, lab_inventory, dns_lab):
    name = f"{node.model.dkim_selector}._domainkey"
    other = pki.dkim_public_record(pki.generate_dkim_key(2048))
    update = dns.update.UpdateMessage("example.test", keyring=dns_lab.key.to_dnspython())
    update.replace(name, 300, "TXT", " ".join(f'"{s.decode()}"' for s in split_txt(other)))
    assert dns.query.tcp(update, dns_lab.server, timeout=5).rcode() == dns.rcode.NOERROR
    code, report = verify(lab_inventory)
    assert code == 1
    (match,) = find(report, "fail", "DKIM key matches the nodes", f"{name}.example.test")
    assert "not the one" in match["cause"] and "dns apply" in match["remedy"]
    assert find(report, "fail", "DNS TXT record", f"{name}.example.test")
    deploy("dns", "apply", "-i", str(lab_inventory))
    repaired(lab_inventory)


def install_certificate(node, names: list[str], days: int) -> None:
    """A certificate from the deployment's CA, put in place by hand on every
    node (the key goes over SSH's stdin, never on a command line)."""
    from mailops.inventory import remote

    cert = pki.issue_certificate(node.secrets.ca, names, days=days)
    files = {"/etc/mailops/tls/fullchain.pem": cert.cert_pem.strip() + "\n"
             + node.secrets.ca.cert_pem.strip() + "\n",
             "/etc/mailops/tls/key.pem": cert.key_pem.strip() + "\n"}
    for host in mail_nodes(node):
        for path, content in files.items():
            res = remote.run(node.inventory, host, f"cat > {path}", stdin=content)
            assert res.returncode == 0, f"{host.name}: writing {path}: {res.stderr}"
        # Retried: a lab container now and then fails a reload (219/CGROUP).
        ssh(node, host, "systemctl reload postfix dovecot || "
                        "{ sleep 2; systemctl reload postfix dovecot; }")


def test_certificate_expiring_in_a_week_is_a_warning(node, lab_inventory):
    install_certificate(node, [node.model.service_name], days=7)
    try:
        code, report = verify(lab_inventory)
        assert code == 0, failures(report)  # a warning, not a failure
        warned = [c for c in rows(report, "warn") if "expires in" in c["cause"]]
        assert len(warned) >= 7, rows(report, "warn")
        assert all("renew" in c["remedy"] for c in warned)
    finally:
        deploy("converge", "--limit", "mail", "-i", str(lab_inventory), timeout=900)
    report = repaired(lab_inventory)
    assert not [c for c in rows(report, "warn") if "expires" in c["cause"]]


def test_certificate_for_the_wrong_name_fails(node, lab_inventory):
    install_certificate(node, ["wrong.example.test"], days=90)
    try:
        code, report = verify(lab_inventory)
        assert code == 1
        bad = [c for c in rows(report, "fail") if "certificate" in c["cause"]
               and "does not verify" in c["cause"]]
        assert {c["target"].rsplit(":", 1)[-1] for c in bad} >= {"25", "465", "993", "995"}
        assert all("converge" in c["remedy"] for c in bad)
    finally:
        deploy("converge", "--limit", "mail", "-i", str(lab_inventory), timeout=900)
    repaired(lab_inventory)


def test_relaying_opened_by_a_bad_setting(node, lab_inventory):
    for host in mail_nodes(node):
        ssh(node, host, "postconf -e 'mynetworks = 0.0.0.0/0' && "
                        "{ postfix reload || { sleep 2; postfix reload; }; }")
    try:
        code, report = verify(lab_inventory)
        assert code == 1
        (row,) = find(report, "fail", "no open relay")
        assert "OPEN RELAY" in row["cause"] and "mynetworks" in row["remedy"]
    finally:
        deploy("converge", "--limit", "mail", "-i", str(lab_inventory), timeout=900)
    repaired(lab_inventory)


def test_replication_stopped(node, lab_inventory):
    mail2 = mail_nodes(node)[1]
    ssh(node, mail2, "echo wrong-password > /etc/dovecot/private/doveadm-password && "
                     "{ systemctl reload dovecot || { sleep 2; systemctl reload dovecot; }; }")
    try:
        code, report = verify(lab_inventory)
        assert code == 1
        failed = find(report, "fail", "replication")
        assert failed, failures(report)
        assert all("doveadm replicator status" in c["remedy"] for c in failed)
    finally:
        deploy("converge", "--limit", "mail", "-i", str(lab_inventory), timeout=900)
    ssh(node, mail2, "doveadm replicator replicate '*'")
    repaired(lab_inventory)
