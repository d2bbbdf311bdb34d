"""verify, the cluster side: each node as the balancer sees it (health state,
and the same probe run from the balancer host over PROXY protocol),
replication between the nodes, mail queues, disk and quota headroom.

Probes that must run on a host (the balancer, a node) go over SSH
(mailops.inventory.remote) and use only what every host has: python3, socat, doveadm,
postqueue, df."""

from __future__ import annotations

import json
import re
import time
import uuid

from mailops.inventory import remote
from mailops.inventory.model import Host, Inventory
from mailops.site.homes import BACKEND_PORTS
from mailops.verify.report import FAIL, OK, WARN, Report, Row
from mailops.verify.service import PORTS, Service

_LMTP_BY = re.compile(r"\bby\s+(\S+)\s+with LMTP\b")
BACKEND = {25: "smtp", 587: "submission", 465: "submissions", 143: "imap", 993: "imaps",
           110: "pop3", 995: "pop3s"}

# Run on the balancer host with python3: for each port, connect to the node,
# send a PROXY v2 header (as HAProxy does), speak the protocol up to TLS and
# verify the certificate. Parameters arrive as JSON on the first line.
_PROXY_PROBE = r'''
import json, socket, ssl, struct, sys, time
P = json.loads(sys.stdin.readline())
ctx = ssl.create_default_context(cadata=P["ca"]) if P["ca"] else ssl.create_default_context()
def header(src, dst, port):
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", 40000, port)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body
def line(s):
    buf = b""
    while not buf.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            break
        buf += c
    return buf.decode(errors="replace").strip()
def until(s, tag):
    while True:
        ln = line(s)
        if not ln or ln.startswith(tag):
            return ln
out = []
for port, proto, mode in P["ports"]:
    r = {"port": port}
    try:
        s = socket.create_connection((P["node"], port), timeout=10)
        s.sendall(header(P["src"], P["node"], port))
        if mode == "implicit":
            s = ctx.wrap_socket(s, server_hostname=P["name"])
            r["greeting"] = line(s)
        else:
            r["greeting"] = line(s)
            if proto in ("SMTP", "submission"):
                s.sendall(b"EHLO verify.invalid\r\n"); until(s, "250 ")
                s.sendall(b"STARTTLS\r\n"); r["starttls"] = line(s)
            elif proto == "IMAP":
                s.sendall(b"v1 STARTTLS\r\n"); r["starttls"] = until(s, "v1 ")
            else:
                s.sendall(b"STLS\r\n"); r["starttls"] = line(s)
            s = ctx.wrap_socket(s, server_hostname=P["name"])
        cert = s.getpeercert()
        r["tls"] = s.version()
        r["days"] = int((ssl.cert_time_to_seconds(cert["notAfter"]) - time.time()) // 86400)
        s.close()
    except Exception as e:
        r["error"] = "%s: %s" % (type(e).__name__, e)
    out.append(r)
print(json.dumps(out))
'''


def haproxy_states(inventory: Inventory, lb: Host) -> dict[tuple[str, str], dict]:
    """(backend, server) -> the balancer's stats row, over its admin socket."""
    res = remote.run(inventory, lb, "echo 'show stat' | socat - /run/haproxy/admin.sock",
                     timeout=20)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip() or f"exit {res.returncode}")
    return parse_haproxy_stat(res.stdout)


def parse_haproxy_stat(text: str) -> dict[tuple[str, str], dict]:
    """HAProxy's `show stat` CSV -> (backend, server) -> its row."""
    lines = text.splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, ln.split(","), strict=False)) for ln in lines[1:] if ln]
    return {(r["pxname"], r["svname"]): r for r in rows
            if r.get("svname") not in (None, "FRONTEND", "BACKEND")}


def check_balancer_view(inventory: Inventory, svc: Service, report: Report) -> None:
    lbs = inventory.group("lb")
    if not lbs:
        return
    _check_floating_address(inventory, lbs, report)
    ca = svc.ca_file.read_text() if svc.ca_file else ""
    for i, lb in enumerate(lbs):
        try:
            states = haproxy_states(inventory, lb)
        except (RuntimeError, IndexError) as e:
            report.rows.append(Row("balancer health states", lb.name, FAIL, "",
                                   f"cannot read HAProxy's admin socket: {e}",
                                   f"on {lb.name}: `systemctl status haproxy`; "
                                   "`deploy.py converge` installs and starts it"))
            continue
        for node in inventory.group("mail"):
            _check_backend(node, lb, states, report)
            if i == 0:
                # What a balancer sends, once per node (every balancer sends the same).
                _proxy_probe(inventory, lb, node, svc, ca, report)


def _check_backend(node: Host, lb: Host, states: dict, report: Report) -> None:
    down = []
    for port, _, _ in PORTS:
        row = states.get((BACKEND[port], node.name))
        status = row["status"] if row else "absent"
        if status != "UP":
            down.append(f"{BACKEND[port]} {status}"
                        + (f" ({row.get('check_status', '')} {row.get('check_desc', '')})"
                           .rstrip() if row else ""))
    if down:
        report.rows.append(Row(
            "in the balancer and healthy", f"{node.name} via {lb.name}", FAIL,
            "; ".join(down), f"the balancer sends no sessions to {node.name} for: "
            + ", ".join(d.split()[0] for d in down),
            f"on {node.name}: `systemctl status postfix dovecot`, start what is stopped "
            "(`deploy.py converge` does); if a node was drained, `deploy.py undrain "
            f"{node.name}`"))
    else:
        report.rows.append(Row("in the balancer and healthy", f"{node.name} via {lb.name}",
                               OK, "UP on all 7 services"))


# Run on a balancer (python3 - ADDRESS SECONDS): says "ready", then "held T"
# at the wall-clock time T (one kernel: the controller's clock) when this
# balancer first holds the floating address, or "timeout T". For failover
# tests and benchmarks.
FLOATING_WATCH = r"""
import subprocess, sys, time
vip, limit = sys.argv[1], float(sys.argv[2])
end = time.time() + limit
print("ready", flush=True)
while time.time() < end:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "to", vip + "/32"],
                         capture_output=True, text=True).stdout
    if out.strip():
        print("held", repr(time.time()), flush=True)
        sys.exit(0)
    time.sleep(0.02)
print("timeout", repr(time.time()), flush=True)
sys.exit(1)
"""


def floating_holders(inventory: Inventory) -> dict[str, bool | None]:
    """balancer -> whether it holds the floating address now (None: could
    not be asked)."""
    vip = str(inventory.floating_address)
    out: dict[str, bool | None] = {}
    for lb in inventory.group("lb"):
        res = remote.run(inventory, lb, f"ip -o -4 addr show to {vip}/32", timeout=20)
        out[lb.name] = None if res.returncode else bool(res.stdout.strip())
    return out


def _check_floating_address(inventory: Inventory, lbs: tuple[Host, ...],
                            report: Report) -> None:
    if inventory.floating_address is None:
        return
    vip = str(inventory.floating_address)
    holders = floating_holders(inventory)
    held = [n for n, h in holders.items() if h]
    unknown = [n for n, h in holders.items() if h is None]
    if len(held) == 1:
        report.rows.append(Row("floating address held once", vip, OK, f"on {held[0]}"
                               + (f" ({', '.join(unknown)} not reachable)" if unknown else "")))
        return
    cause = ("no balancer holds it: clients and the MX reach nothing" if not held else
             f"{' and '.join(held)} all hold it: VRRP adverts do not pass between them")
    report.rows.append(Row("floating address held once", vip, FAIL,
                           ", ".join(held) or "nobody", cause,
                           "on each balancer: `systemctl status keepalived haproxy` and "
                           "`journalctl -u keepalived`; `deploy.py converge` starts them"))


def probe_node(inventory: Inventory, node: Host, svc: Service) -> Report:
    """Every service port of one node, spoken to as the balancer does (PROXY
    header, protocol up to TLS, certificate): a runbook's health check of a
    node the balancer does not send sessions to (drained)."""
    report = Report()
    lbs = inventory.group("lb")
    if lbs:
        _proxy_probe(inventory, lbs[0], node, svc,
                     svc.ca_file.read_text() if svc.ca_file else "", report)
    return report


def _proxy_probe(inventory: Inventory, lb: Host, node: Host, svc: Service, ca: str,
                 report: Report) -> None:
    params = {"node": str(node.address), "src": str(lb.address), "name": svc.service_name,
              "ca": ca, "ports": [list(p) for p in PORTS]}
    res = remote.run(inventory, lb, "python3 -c \"$(cat <<'EOF'\n" + _PROXY_PROBE + "\nEOF\n)\"",
                     timeout=120, stdin=json.dumps(params) + "\n")
    try:
        results = json.loads(res.stdout)
    except json.JSONDecodeError:
        report.rows.append(Row("probe over PROXY protocol", f"{lb.name} -> {node.name}", FAIL,
                               "", f"the probe did not run on {lb.name}: "
                               f"{(res.stderr or res.stdout).strip()[:200]}",
                               f"check SSH to {lb.name} and that python3 is installed there"))
        return
    for r, (port, proto, _) in zip(results, PORTS, strict=True):
        check = f"{proto} {port} over PROXY protocol"
        target = f"{lb.name} -> {node.name}:{port}"
        if "error" in r:
            err = r["error"]
            if "Refused" in err:
                cause = f"nothing listens on {node.name}:{port}"
                remedy = (f"on {node.name}: `systemctl status "
                          f"{'postfix' if port in (25, 465, 587) else 'dovecot'}`; "
                          "`deploy.py converge` starts it")
            elif "CERTIFICATE_VERIFY_FAILED" in err or "certificate" in err.lower():
                cause = f"{node.name}'s certificate does not verify: {err.split(': ', 1)[-1]}"
                remedy = ("install a certificate for the service name from the deployment's "
                          "CA (`deploy.py converge` reinstalls the one in the vault)")
            else:
                cause = f"{node.name} did not complete the handshake: {err}"
                remedy = (f"on {node.name}: check that it expects the PROXY header from "
                          f"{lb.name} (postfix__proxy_protocol, dovecot__proxy_trusted_networks)"
                          " and read `journalctl -u postfix -u dovecot`")
            report.rows.append(Row(check, target, FAIL, "", cause, remedy))
            continue
        detail = f"{r['greeting'][:30]}, {r['tls']}, certificate expires in {r['days']} days"
        if r["days"] < 14:
            report.rows.append(Row(check, target, WARN, detail,
                                   f"the certificate on {node.name} expires in {r['days']} days",
                                   "renew it (lab: remove vault_tls_cert from the vault and run"
                                   " `deploy.py converge`)"))
        else:
            report.rows.append(Row(check, target, OK, detail))


def dovecot_down(inventory: Inventory) -> set[str]:
    """The mail nodes whose Dovecot is not running: the checks that need it
    there fail at once rather than after a wait. Asked once per verify run."""
    return {h.name for h in inventory.group("mail")
            if remote.run(inventory, h, "systemctl is-active --quiet dovecot").returncode != 0}


def _dovecot_down_row(check: str, target: str, host: str, what: str) -> Row:
    return Row(check, target, FAIL, "", f"Dovecot is not running on {host}: {what}",
               f"on {host}: `systemctl status dovecot` and `journalctl -u dovecot`; "
               "`deploy.py converge` starts it")


def check_replication(inventory: Inventory, svc: Service, report: Report, down: set[str],
                      timeout: float = 15) -> None:
    """A message delivered on one node must appear on its pair."""
    nodes = inventory.group("mail")
    if len(nodes) < 2 or not svc.accounts:
        return
    user = next(iter(svc.accounts))
    for a, b in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
        subject = f"mailops replication {uuid.uuid4().hex[:10]}"
        target = f"{a.name} -> {b.name}"
        if down & {a.name, b.name}:
            report.rows.append(_dovecot_down_row(
                "replication", target, min(down & {a.name, b.name}),
                f"nothing replicates between {a.name} and {b.name}"))
            continue
        res = remote.sendmail(inventory, a, user, user, subject, "replication check")
        if res.returncode != 0:
            report.rows.append(Row("replication", target, FAIL, "",
                                   f"could not inject a message on {a.name}: "
                                   f"{res.stderr.strip()[:200]}",
                                   f"on {a.name}: `systemctl status postfix`"))
            continue
        search = f"doveadm search -u {user} mailbox INBOX header subject '{subject}'"
        t0 = time.monotonic()
        found = False
        while time.monotonic() - t0 < timeout:
            if remote.run(inventory, b, search).stdout.strip():
                found = True
                break
            time.sleep(1)
        if found:
            report.rows.append(Row("replication", target, OK,
                                   f"delivered on {a.name}, seen on {b.name} after "
                                   f"{time.monotonic() - t0:.1f} s"))
            remote.run(inventory, b, f"doveadm expunge -u {user} mailbox INBOX header subject "
                                     f"'{subject}'")
        else:
            status = remote.run(inventory, a, "doveadm replicator status '*' | head -5").stdout
            report.rows.append(Row(
                "replication", target, FAIL, "",
                f"a message delivered on {a.name} was not on {b.name} after {timeout:.0f} s"
                + (f"; replicator on {a.name}: {' / '.join(status.split()[-6:])}" if status
                   else ""),
                f"on {a.name}: `doveadm replicator status '*'` and `journalctl -u dovecot | "
                f"grep -i dsync`; check the doveadm password and port 12345 on both nodes "
                "(`deploy.py converge` restores them), then `doveadm replicator replicate "
                "'*'`"))


def check_homes(inventory: Inventory, svc: Service, report: Report, down: set[str],
                timeout: float = 30) -> None:
    """A message for the test account handed to each node is stored on the
    account's home node, once, by that node's own LMTP (Dovecot's Received
    header names the host that stored it)."""
    nodes = inventory.group("mail")
    if len(nodes) < 2 or not svc.accounts:
        return
    user = next(iter(svc.accounts))
    home = svc.homes.get(user.lower())
    if home is None:
        return
    home_host = inventory.host(home.node)
    if home.node in down:
        for node in nodes:
            report.rows.append(_dovecot_down_row(
                "delivered on the home node", f"{user} via {node.name}", home.node,
                f"the home of {user}, nothing can be stored there"))
        return
    # Handed to every node first, then looked for together: one wait, not
    # one per node, when the home does not store them.
    sent: dict[str, str] = {}  # node -> subject
    for node in nodes:
        subject = f"mailops home {uuid.uuid4().hex[:10]}"
        res = remote.sendmail(inventory, node, user, user, subject, "home node check")
        if res.returncode != 0:
            report.rows.append(Row("delivered on the home node", f"{user} via {node.name}", FAIL,
                                   "", f"could not inject a message on {node.name}: "
                                   f"{res.stderr.strip()[:200]}",
                                   f"on {node.name}: `systemctl status postfix`"))
        else:
            sent[node.name] = subject
    t0, found, took = time.monotonic(), {}, {}
    while sent.keys() - found.keys() and time.monotonic() - t0 < timeout:
        for name in sent.keys() - found.keys():
            query = f"mailbox INBOX header subject '{sent[name]}'"
            out = remote.run(inventory, home_host, f"doveadm search -u {user} {query}").stdout
            if out.strip():
                found[name], took[name] = out, time.monotonic() - t0
        if sent.keys() - found.keys():
            time.sleep(0.5)
    for name, subject in sent.items():
        check, target = "delivered on the home node", f"{user} via {name}"
        query = f"mailbox INBOX header subject '{subject}'"
        copies = len(found.get(name, "").strip().splitlines())
        headers = remote.run(inventory, home_host,
                             f"doveadm fetch -u {user} hdr {query}").stdout if copies else ""
        # The header is folded: "Received: from ...\n\tby mail2 with LMTP ...".
        lmtp = _LMTP_BY.search(headers)
        stored_by = lmtp[1] if lmtp else ""
        remote.run(inventory, home_host, f"doveadm expunge -u {user} {query}")
        if copies == 1 and stored_by == home.node:
            report.rows.append(Row(check, target, OK,
                                   f"stored once on {home.node} (its home) after "
                                   f"{took[name]:.1f} s"))
        elif copies == 0:
            report.rows.append(Row(
                check, target, FAIL, "",
                f"handed to {name}, not on its home {home.node} after {timeout:.0f} s",
                f"on {name}: `postqueue -p` and `journalctl -u postfix | grep lmtp` show "
                f"why; LMTP to {home.node}:24 must be reachable (`deploy.py converge` writes "
                "/etc/postfix/transport_homes and Dovecot's LMTP listener)"))
        else:
            report.rows.append(Row(
                check, target, FAIL, f"{copies} cop(ies), stored by {stored_by or 'unknown'}",
                f"handed to {name}, the message was stored {copies} time(s) on "
                f"{home.node}, by {stored_by or 'an unknown host'} rather than once by "
                f"{home.node} itself",
                f"on {name}: `postmap -q {user} texthash:/etc/postfix/transport_homes` must "
                f"name {home.node} first (`deploy.py converge` writes it)"))


# Run on a mail node: log in on the node's own backend listener (plain IMAP,
# secure because the client is the node itself), as a client handed to that
# node would, and ask after login which node serves the session (ID, answered
# by the backend at the end of any proxy hop). Parameters as JSON on stdin.
_SESSION_PROBE = r'''
import imaplib, json, re, sys
imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))
P = json.loads(sys.stdin.readline())
try:
    imap = imaplib.IMAP4(P["host"], P["port"], timeout=15)
    imap.login(P["user"], P["password"])
    typ, data = imap._simple_command("ID", "NIL")
    ids = imap._untagged_response(typ, data, "ID")[1]
    text = b" ".join(d for d in ids if isinstance(d, bytes)).decode(errors="replace")
    node = re.search(r'"x-mailops-node" "([^"]*)"', text)
    imap.logout()
    print(json.dumps({"node": node[1] if node else "", "id": text[:200]}))
except Exception as e:
    print(json.dumps({"error": "%s: %s" % (type(e).__name__, e)}))
'''


def check_session_homes(inventory: Inventory, svc: Service, report: Report) -> None:
    """An IMAP login for the test account on each node is served by the
    account's home node (proxied there unless it is that node)."""
    nodes = inventory.group("mail")
    if len(nodes) < 2 or not svc.accounts:
        return
    user, password = next(iter(svc.accounts.items()))
    home = svc.homes.get(user.lower())
    if home is None:
        return
    check = "IMAP session on the home node"
    for node in nodes:
        target = f"{user} via {node.name}"
        params = {"host": str(node.address), "port": BACKEND_PORTS["imap"], "user": user,
                  "password": password}
        res = remote.run(inventory, node, "python3 -c \"$(cat <<'EOF'\n" + _SESSION_PROBE
                         + "\nEOF\n)\"", timeout=60, stdin=json.dumps(params) + "\n")
        try:
            r = json.loads(res.stdout)
        except json.JSONDecodeError:
            report.rows.append(Row(check, target, FAIL, "",
                                   f"the probe did not run on {node.name}: "
                                   f"{(res.stderr or res.stdout).strip()[:200]}",
                                   f"check SSH to {node.name} and that python3 is installed"))
            continue
        if "error" in r:
            report.rows.append(Row(
                check, target, FAIL, "", f"login on {node.name} failed: {r['error'][:200]}",
                f"on {node.name}: `journalctl -u dovecot | grep -i proxy`; "
                f"/etc/dovecot/homes/imap must send {user} to {home.node} (`systemctl status "
                "mailops-dovecot-homes`; `deploy.py converge` restarts it)"))
        elif r["node"] == home.node:
            how = "locally" if node.name == home.node else f"proxied to {home.node}"
            report.rows.append(Row(check, target, OK, f"served by {home.node} ({how})"))
        else:
            served = r["node"] or "a node that does not say (no x-mailops-node in its ID)"
            report.rows.append(Row(
                check, target, FAIL if r["node"] else WARN, f"served by {served}",
                f"the session was served by {served}, not by the home {home.node}",
                f"on {node.name}: `cat /etc/dovecot/homes/imap`; if {home.node} is up, "
                "`systemctl restart mailops-dovecot-homes`; `deploy.py converge` rewrites "
                "its input"))


def check_node_health(inventory: Inventory, report: Report) -> None:
    """Queues not stuck, disk and quota headroom, on every mail node."""
    script = ("postqueue -j 2>/dev/null | python3 -c 'import json,sys,time; "
              "q=[json.loads(l) for l in sys.stdin if l.strip()]; "
              "print(len(q), int(time.time()-min([m[\"arrival_time\"] for m in q] or "
              "[time.time()])))'; df -P /var/vmail /var/spool/postfix | tail -n +2; "
              "doveadm -f tab quota get -A 2>/dev/null | tail -n +2")
    for node in inventory.group("mail"):
        res = remote.run(inventory, node, script, timeout=30)
        if res.returncode != 0 or not res.stdout.strip():
            report.rows.append(Row("queue, disk, quota", node.name, FAIL, "",
                                   f"cannot read them: {res.stderr.strip()[:200]}",
                                   f"check SSH to {node.name}"))
            continue
        lines = res.stdout.splitlines()
        count, oldest = (int(x) for x in lines[0].split())
        if oldest > 1800:
            report.rows.append(Row("mail queue", node.name, FAIL, f"{count} queued",
                                   f"the oldest queued message waits for {oldest // 60} min",
                                   f"on {node.name}: `postqueue -p` shows why each waits; fix "
                                   "the cause (`deploy.py explain` the reply), then "
                                   "`postqueue -f`"))
        else:
            report.rows.append(Row("mail queue", node.name, OK,
                                   f"{count} queued, oldest {oldest} s"))
        disks = [ln.split() for ln in lines[1:] if ln.startswith("/") or "%" in ln]
        disks = [d for d in disks if len(d) >= 6 and d[4].endswith("%")]
        worst = max(disks, key=lambda d: int(d[4].rstrip("%")), default=None)
        if worst:
            used = int(worst[4].rstrip("%"))
            result = OK if used < 80 else WARN if used < 95 else FAIL
            report.rows.append(Row("disk", f"{node.name} {worst[5]}", result, f"{used}% used",
                                   "" if result == OK else f"{worst[5]} is {used}% full",
                                   "" if result == OK else "free space or grow the file system"
                                   " before mail is refused"))
        quotas = [ln.split("\t") for ln in lines[1 + len(disks):] if "\t" in ln]
        full = [q[0] for q in quotas if len(q) >= 6 and q[5].isdigit() and int(q[5]) >= 90
                and q[2] == "STORAGE"]
        report.rows.append(Row("quota headroom", node.name, WARN if full else OK,
                               f"{len(full)} mailbox(es) at 90% or more" if full else
                               "every mailbox under 90%",
                               f"nearly full: {', '.join(sorted(set(full)))}" if full else "",
                               "the users free space, or raise their quota in the mail model"
                               if full else ""))
