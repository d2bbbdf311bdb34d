"""Mail path benchmark: SMTP through the balancer against straight to one node.

Run from the repository root:  .venv/bin/python bench/mailpath.py

On its own lab `mpath` (198.18.62.0/24), deployed with `deploy.py up`:
Postfix's smtp-source runs on ext1 (the external mail host) and sends a fixed
number of messages of a fixed size, several sessions at once, to
bob@example.test (rspamd scans every one): through the balancer (lb1:25) and
straight to mail1, and through the balancer with mail2 drained (`set server
smtp/mail2 state drain` on the admin socket, so every session goes to mail1:
the balancer's own cost, without the spreading over two nodes that share
this machine's cores). The nodes take only PROXY-protocol sessions on 25, so
for the run mail1 gets a plain listener on 2525, the `smtp` service without
`smtpd_upstream_proxy_protocol`; it is removed at the end. Rounds run
balancer, one, direct, direct, one, balancer, each after both nodes' queues
drained.
Then single-message sessions, one at a time, alternating between the two
targets, time each session (connect to QUIT) from ext1.

Every message is delivered on bob's home node (mailops.site.homes) whichever
node accepted it; the stored copies are counted on both nodes (copies /
distinct = 1.000 when no message is stored twice).

Ratios: messages per second through the balancer (to both nodes, and to mail1
alone) / straight to mail1, and p50/p90/p99 session latency through the
balancer / straight.
Results: bench/results/mailpath.json.
"""

from __future__ import annotations

import json
import sys
import time
import uuid

import benchlib
from benchlib import say

LAB = ("mpath", "198.18.62")
MESSAGES = 500  # per smtp-source round
SIZE = 5120  # bytes per message
SESSIONS = 10  # smtp-source's parallel sessions
ROUNDS = ("balancer", "one", "direct", "direct", "one", "balancer")
LATENCY_N = 100  # single-message sessions per target
DIRECT_PORT = 2525
SENDER = "bench@ext.test"
RCPT = "bob@example.test"
QUEUE_WAIT = 180  # seconds a round may leave for delivery before the next

LATENCY = r'''
import json, smtplib, sys, time
P = json.loads(sys.stdin.readline())
line = "x" * 76 + "\r\n"
body = line * (P["size"] // len(line))
out = {t["label"]: [] for t in P["targets"]}
errors = []
for i in range(P["n"]):
    for t in P["targets"]:
        msg = ("From: <%s>\r\nTo: <%s>\r\nSubject: %s %s %d\r\n\r\n%s"
               % (P["sender"], P["rcpt"], P["subject"], t["label"], i, body))
        t0 = time.monotonic()
        try:
            s = smtplib.SMTP(t["host"], t["port"], timeout=20, local_hostname=P["helo"])
            s.sendmail(P["sender"], [P["rcpt"]], msg)
            s.quit()
        except Exception as e:
            errors.append("%s %d: %s: %s" % (t["label"], i, type(e).__name__, e))
            continue
        out[t["label"]].append(time.monotonic() - t0)
print(json.dumps({"samples": out, "errors": errors[:20], "error_count": len(errors)}))
'''


def set_state(inventory, lb, server: str, state: str) -> None:
    """Set a node's state in the SMTP backend (port 25) over HAProxy's admin socket."""
    ssh_ok(inventory, lb, f"echo 'set server smtp/{server} state {state}' "
                          "| socat - /run/haproxy/admin.sock")


def heredoc_python(script: str, args: str = "") -> str:
    return "python3 -c \"$(cat <<'EOF'\n" + script + "\nEOF\n)\" " + args


def ssh_ok(inventory, host, command: str, timeout: float = 60) -> str:
    from mailops.inventory import remote

    res = remote.run(inventory, host, command, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{host.name}: {command}: exit {res.returncode}\n"
                           f"{res.stdout[-1000:]}{res.stderr[-1000:]}")
    return res.stdout


def wait_queues_empty(inventory) -> float:
    """Until both nodes' Postfix queues are empty; returns the seconds waited."""
    t0 = time.monotonic()
    nodes = inventory.group("mail")
    while True:
        left = {n.name: len(ssh_ok(inventory, n, "postqueue -j").splitlines()) for n in nodes}
        if not any(left.values()):
            return time.monotonic() - t0
        if time.monotonic() - t0 > QUEUE_WAIT:
            raise RuntimeError(f"queues not drained after {QUEUE_WAIT} s: {left}")
        time.sleep(1)


def smtp_source(inventory, ext, target: tuple[str, int], subject: str) -> dict:
    addr, port = target
    cmd = (f"s=$(date +%s.%N); timeout 600 smtp-source -s {SESSIONS} -m {MESSAGES} "
           f"-l {SIZE} -M {ext.name}.ext.test -f {SENDER} -t {RCPT} -S '{subject}' "
           f"{addr}:{port}; rc=$?; e=$(date +%s.%N); echo RESULT $rc $s $e")
    out = ssh_ok(inventory, ext, cmd, timeout=660)
    last = out.strip().splitlines()[-1].split()
    rc, start, end = int(last[1]), float(last[2]), float(last[3])
    if rc != 0:
        raise RuntimeError(f"smtp-source to {addr}:{port} exited {rc}:\n{out[-1500:]}")
    seconds = end - start
    return {"messages": MESSAGES, "seconds": round(seconds, 3),
            "messages_per_second": round(MESSAGES / seconds, 2)}


def count_delivered(inventory, node, subject: str, want: int,
                    timeout: float = 180) -> tuple[int, int]:
    """(distinct messages, copies) with this subject in the recipient's INBOX
    on one node (both paths' mail reaches it: directly, or by replication),
    waiting up to `timeout` for delivery and replication to catch up.
    Distinct by Dovecot's message GUID: a message stored twice (two UIDs,
    one GUID) counts once among the distinct ones."""
    deadline = time.monotonic() + timeout
    while True:
        out = ssh_ok(inventory, node, f"doveadm fetch -u {RCPT} guid mailbox INBOX "
                                      f"subject '{subject}' | grep '^guid: '")
        guids = out.split()[1::2]
        if len(set(guids)) >= want or time.monotonic() > deadline:
            return len(set(guids)), len(guids)
        time.sleep(2)


def pct(samples: list[float]) -> dict:
    return {f"p{p}_ms": round(1000 * benchlib.percentile(samples, p), 1) for p in (50, 90, 99)}


def main() -> int:
    benchlib.setup()
    benchlib.bound(2700)
    from mailops.inventory import remote

    run_id = uuid.uuid4().hex[:8]
    with benchlib.own_lab(*LAB) as inv:
        say("`deploy.py up --json` on the mail path lab")
        _, up_wall = benchlib.up_json(inv, timeout=1800)
        inventory = benchlib.load(inv)
        lb, mail1 = inventory.group("lb")[0], inventory.group("mail")[0]
        ext = inventory.group("external")[0]
        targets = {"balancer": (str(lb.address), 25), "one": (str(lb.address), 25),
                   "direct": (str(mail1.address), DIRECT_PORT)}
        mail2 = inventory.group("mail")[1]
        say(f"{mail1.name}: plain listener on {DIRECT_PORT} (the smtp service, no PROXY)")
        ssh_ok(inventory, mail1, f"postconf -M {DIRECT_PORT}/inet='{DIRECT_PORT} inet n - n - "
                                 "- smtpd' && postfix reload")
        try:
            time.sleep(1)
            rounds = []
            for i, label in enumerate(ROUNDS):
                waited = wait_queues_empty(inventory)
                say(f"round {i + 1}/{len(ROUNDS)}: smtp-source {MESSAGES} x {SIZE} B, "
                    f"{SESSIONS} sessions, {label} {targets[label][0]}:{targets[label][1]} "
                    f"(queues drained in {waited:.1f}s)")
                # "one": the balancer with mail2 drained (new sessions go to mail1).
                set_state(inventory, lb, mail2.name, "drain" if label == "one" else "ready")
                r = smtp_source(inventory, ext, targets[label],
                                f"mailpath {run_id} {label} round {i + 1}")
                say(f"  {r['messages_per_second']:.1f} msg/s")
                rounds.append({"target": label, **r, "queue_wait_seconds": round(waited, 1)})
            set_state(inventory, lb, mail2.name, "ready")
            wait_queues_empty(inventory)

            say(f"latency: {LATENCY_N} single-message sessions per target, alternating")
            params = {"n": LATENCY_N, "size": SIZE, "sender": SENDER, "rcpt": RCPT,
                      "helo": f"{ext.name}.ext.test", "subject": f"mailpath {run_id} latency",
                      "targets": [{"label": k, "host": a, "port": p}
                                  for k, (a, p) in targets.items() if k != "one"]}
            res = remote.run(inventory, ext, heredoc_python(LATENCY), timeout=600,
                             stdin=json.dumps(params) + "\n")
            if res.returncode != 0:
                raise RuntimeError(f"latency run on {ext.name}: {res.stderr[-1500:]}")
            latency = json.loads(res.stdout.strip().splitlines()[-1])
            if latency["error_count"]:
                say(f"WARNING: {latency['error_count']} latency session(s) failed: "
                    f"{latency['errors'][:3]}")
            sent = MESSAGES * len(ROUNDS) + sum(len(v) for v in latency["samples"].values())
            copies: int | None = None
            stored: dict[str, dict] = {}
            try:
                for host in (mail1, mail2):
                    n_distinct, n_copies = count_delivered(inventory, host,
                                                           f"mailpath {run_id}", sent)
                    stored[host.name] = {
                        "distinct": n_distinct, "copies": n_copies,
                        "copies_over_distinct": benchlib.ratio(n_copies, n_distinct)}
                    say(f"{n_distinct} of {sent} accepted messages in {RCPT}'s INBOX on "
                        f"{host.name}, in {n_copies} copies")
                delivered, copies = (stored[mail1.name]["distinct"],
                                     stored[mail1.name]["copies"])
            except (RuntimeError, ValueError) as e:  # a figure missing, not a failed bench
                delivered = None
                say(f"WARNING: could not count the delivered messages: {e}")
        finally:
            set_state(inventory, lb, mail2.name, "ready")
            say(f"{mail1.name}: removing the listener on {DIRECT_PORT}")
            remote.run(inventory, mail1, f"postconf -MX {DIRECT_PORT}/inet && postfix reload",
                       timeout=60)

    def rate(label: str) -> float:
        mine = [r for r in rounds if r["target"] == label]
        return sum(r["messages"] for r in mine) / sum(r["seconds"] for r in mine)

    lat = {k: pct(v) for k, v in latency["samples"].items() if v}
    throughput_ratio = benchlib.ratio(rate("balancer"), rate("direct"))
    one_ratio = benchlib.ratio(rate("one"), rate("direct"))
    latency_ratio = {p: benchlib.ratio(lat["balancer"][p], lat["direct"][p])
                     for p in ("p50_ms", "p90_ms", "p99_ms")}
    benchlib.write_results("mailpath", {
        "what": "SMTP messages per second through the balancer (lb1:25, PROXY protocol to "
                "both nodes; and with mail2 drained, to mail1 alone) / straight to mail1 "
                "(plain listener on 2525), smtp-source on ext1; and single-session latency "
                "percentiles, balancer / direct",
        "lab": list(LAB),
        "settings": {"messages_per_round": MESSAGES, "size_bytes": SIZE, "sessions": SESSIONS,
                     "rounds": list(ROUNDS), "latency_sessions_per_target": LATENCY_N,
                     "recipient": RCPT},
        "ratios": {"throughput_balancer_over_direct": throughput_ratio,
                   "throughput_balancer_one_node_over_direct": one_ratio,
                   "latency_balancer_over_direct": latency_ratio},
        "messages_per_second": {"balancer": round(rate("balancer"), 2),
                                "balancer_one_node": round(rate("one"), 2),
                                "direct": round(rate("direct"), 2)},
        "rounds": rounds, "latency": lat,
        "latency_errors": latency["error_count"],
        "delivered": {"accepted": sent, "in_inbox_on_mail1": delivered,
                      "copies_in_inbox_on_mail1": copies, "by_node": stored},
        "latency_samples_seconds": latency["samples"],
        "up_wall_seconds": round(up_wall, 1)})
    b, d = lat["balancer"], lat["direct"]
    print(f"mailpath: throughput balancer/direct {throughput_ratio:.2f}, balancer to mail1 "
          f"alone/direct {one_ratio:.2f} ({rate('balancer'):.1f}, {rate('one'):.1f} vs "
          f"{rate('direct'):.1f} msg/s, {SESSIONS} sessions, "
          f"{SIZE // 1024} KB); latency balancer/direct p50 {latency_ratio['p50_ms']:.2f} "
          f"p90 {latency_ratio['p90_ms']:.2f} p99 {latency_ratio['p99_ms']:.2f} "
          f"(balancer {b['p50_ms']:.0f}/{b['p90_ms']:.0f}/{b['p99_ms']:.0f} ms, "
          f"direct {d['p50_ms']:.0f}/{d['p90_ms']:.0f}/{d['p99_ms']:.0f} ms); "
          f"delivered {'?' if delivered is None else delivered}/{sent}"
          f" (in {'?' if copies is None else copies} copies); copies/distinct "
          + ", ".join(f"{n} {v['copies_over_distinct']}" for n, v in stored.items()))
    return 0 if delivered is None or delivered >= sent else 1


if __name__ == "__main__":
    sys.exit(main())
