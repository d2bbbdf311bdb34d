"""Failover benchmark: a mail node dies under load; how fast the balancer
routes around it, and whether any accepted message is lost.

Run from the repository root:  .venv/bin/python bench/failover.py

On its own lab `mfail` (198.18.63.0/24), deployed with `deploy.py up`: a
client on this machine sends messages through the balancer on 587 (STARTTLS,
login as alice@example.test, five messages per session, a broken session
replaced by a new one), at most 300 messages or 90 s. After 60 messages are
accepted, mail2 is powered off (`systemctl poweroff`). A watcher on lb1
reads HAProxy's admin socket every 50 ms and notes when mail2 is no longer
UP in any of the 7 backends. The client stops; mail2 is booted again
(`Lab.up()`), and once it is UP in the balancer, every message that got a
250 is looked for in alice's INBOX over IMAP through the balancer (waiting
for replication), and then in each node's own store (doveadm on the node:
IMAP follows the mailbox's home, so a login cannot pick the node). mail2 is
alice's home: meanwhile a reader logs in over IMAP through the balancer
every 0.5 s, and the time from the poweroff to its first good login after
it is the IMAP outage (the other node's homes watcher must first see mail2
down before it stops proxying her sessions there).

Figures: seconds from poweroff to routed around, that divided by the health
check interval (haproxy__check_inter), messages lost and stored twice (both
must be 0), and the IMAP outage in seconds.

Then the balancers: the same client sends through the floating address (at
most 200 messages or 90 s); after 40 are accepted the balancer holding it
loses power (`systemctl poweroff --force --force`: its init is killed, so
keepalived sends no goodbye advert). A watcher on the other balancer notes
when it holds the address. Figures: seconds from the power cut to the move,
over the VRRP advert interval (keepalived__advert_int), and messages
accepted but not delivered (must be 0). The balancer is booted again and
must not take the address back (nopreempt).
Results: bench/results/failover.json.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import smtplib
import subprocess
import sys
import threading
import time
import uuid

import benchlib
from benchlib import say, wait_for

LAB = ("mfail", "198.18.63")
MAX_MESSAGES = 300
MAX_SECONDS = 90
POWEROFF_AFTER = 60  # accepted messages before the node is powered off
USER = "alice@example.test"
VICTIM = 1  # index in the mail group: mail2

WATCH = r'''
import json, socket, sys, time
node, limit = sys.argv[1], float(sys.argv[2])
def states():
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/haproxy/admin.sock")
    s.sendall(b"show stat\n")
    data = b""
    while True:
        c = s.recv(65536)
        if not c:
            break
        data += c
    s.close()
    lines = data.decode().splitlines()
    hdr = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(hdr, ln.split(","))) for ln in lines[1:] if ln]
    return {r["pxname"]: r["status"] for r in rows if r.get("svname") == node}
print("ready", time.time(), json.dumps(states()), flush=True)
end = time.time() + limit
while time.time() < end:
    st = states()
    if st and all(not v.startswith("UP") for v in st.values()):
        print("down", time.time(), json.dumps(st), flush=True)
        sys.exit(0)
    time.sleep(0.05)
print("timeout", time.time(), json.dumps(states()), flush=True)
sys.exit(1)
'''


VIP_MAX_MESSAGES = 200
VIP_CUT_AFTER = 40


def advert_int() -> float:
    import yaml

    defaults = yaml.safe_load((benchlib.ROOT / "roles/keepalived/defaults/main.yml").read_text())
    return float(defaults["keepalived__advert_int"])


def send(ep, password: str, prefix: str, limit: int, stop: threading.Event, deadline: float,
         accepted: list[tuple[float, str]], refused: list[str]) -> None:
    """Up to `limit` messages to USER on 587 (STARTTLS, login), five a
    session, a broken session replaced by a new one; until stopped or the
    deadline. accepted gets (time, subject) of each 250, refused the rest."""
    from mailops.verify.mailclient import message

    conn = None
    for i in range(limit):
        if stop.is_set() or time.monotonic() > deadline:
            break
        subject = f"{prefix} {i:03d}"
        try:
            if conn is None or i % 5 == 0:
                if conn is not None:
                    with contextlib.suppress(smtplib.SMTPException, OSError):
                        conn.quit()
                conn = ep.smtp_tls(587)
                conn.login(USER, password)
            bad = conn.send_message(message(USER, [USER], subject))
            if bad:
                refused.append(subject)
            else:
                accepted.append((time.time(), subject))
        except (smtplib.SMTPException, OSError):
            refused.append(subject)
            conn = None
            time.sleep(0.2)  # a moment before the next session, as a client would
    if conn is not None:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            conn.quit()


def balancer_cut(inventory, lab, ep, password: str, prefix: str) -> dict:
    """The balancer holding the floating address loses power under load."""
    from mailops.verify import mailclient
    from mailops.verify.nodes import FLOATING_WATCH, floating_holders

    vip = str(inventory.floating_address)
    held = [n for n, h in floating_holders(inventory).items() if h]
    if len(held) != 1:
        raise RuntimeError(f"{vip} held by {held or 'nobody'}")
    holder = inventory.host(held[0])
    other = next(h for h in inventory.group("lb") if h != holder)
    accepted: list[tuple[float, str]] = []
    refused: list[str] = []
    stop = threading.Event()
    deadline = time.monotonic() + MAX_SECONDS

    watcher = subprocess.Popen([*lab.ssh_argv(other), "python3", "-", vip, "60"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    watcher.stdin.write(FLOATING_WATCH)
    watcher.stdin.close()
    if watcher.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the watcher on {other.name} did not start")
    say(f"client: up to {VIP_MAX_MESSAGES} messages through {vip}:587 ({holder.name} holds it)")
    thread = threading.Thread(target=send, args=(ep, password, prefix, VIP_MAX_MESSAGES, stop,
                                                 deadline, accepted, refused), daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(accepted) >= VIP_CUT_AFTER, 60,
                 f"{VIP_CUT_AFTER} messages accepted", every=0.2)
        say(f"{len(accepted)} accepted; cutting {holder.name}'s power")
        cut = time.time()
        with contextlib.suppress(subprocess.TimeoutExpired):
            lab.ssh(holder, "systemctl poweroff --force --force", timeout=10)
        seen = watcher.stdout.readline().split()
        watcher.wait(timeout=70)
        if len(seen) != 2 or seen[0] != "held":
            raise RuntimeError(f"{other.name} did not take {vip} over: {seen}")
        moved = float(seen[1]) - cut
        say(f"{other.name} holds {vip} {moved:.2f} s after the cut")
        thread.join(timeout=MAX_SECONDS + 30)
    finally:
        stop.set()
        thread.join(timeout=60)
        if watcher.poll() is None:
            watcher.kill()  # our own ssh child, by its handle
            watcher.wait(timeout=10)
    want = {s for _, s in accepted}
    found: set[str] = set()

    def all_found() -> bool:
        found.update(mailclient.inbox_subjects(ep, USER, password, prefix))
        return want <= found

    with contextlib.suppress(RuntimeError):
        wait_for(all_found, 180, "every accepted message in the INBOX", every=2)
    say(f"booting {holder.name} again (Lab.up)")
    lab.up()
    wait_for(lambda: lab.ssh(holder, "systemctl is-active keepalived haproxy").stdout.split()
             == ["active", "active"], 120, f"{holder.name} back")
    time.sleep(5)
    after = [n for n, h in floating_holders(inventory).items() if h]
    return {"moved_seconds": round(moved, 3), "from": holder.name, "to": other.name,
            "accepted": len(accepted), "after_cut": sum(1 for t, _ in accepted if t > cut),
            "not_accepted": len(refused), "lost": len(want - found),
            "lost_subjects": sorted(want - found)[:50], "holder_after_return": after}


def check_inter() -> float:
    import yaml

    from mailops.core.durations import seconds

    defaults = yaml.safe_load((benchlib.ROOT / "roles/haproxy/defaults/main.yml").read_text())
    return seconds(defaults["haproxy__check_inter"], bare="ms")


def states_of(inventory, node: str) -> dict[str, str]:
    from mailops.verify.nodes import BACKEND, haproxy_states

    return {b: row["status"] for (b, n), row in haproxy_states(
        inventory, inventory.group("lb")[0]).items() if n == node and b in BACKEND.values()}


def stored_subjects(inventory, node, user: str, prefix: str) -> list[str]:
    """The run's subjects stored in the user's INBOX on one node (one per copy)."""
    from mailops.inventory import remote

    res = remote.run(inventory, node, f"doveadm -f flow fetch -u {user} hdr.subject mailbox "
                                      f"INBOX header subject '{prefix}'", timeout=60)
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip())
    return [ln.split("=", 1)[1].strip() for ln in res.stdout.splitlines() if "=" in ln]


def main() -> int:
    benchlib.setup()
    benchlib.bound(2400)
    from mailops.lab.lab import Lab
    from mailops.verify import mailclient
    from mailops.verify.nodes import BACKEND
    from mailops.verify.service import service_for

    run_id = uuid.uuid4().hex[:8]
    prefix = f"failover {run_id}"
    inter = check_inter()
    with benchlib.own_lab(*LAB) as inv:
        say("`deploy.py up --json` on the failover lab")
        benchlib.up_json(inv, timeout=1800)
        inventory = benchlib.load(inv)
        lab = Lab(inventory)
        lb, victim = inventory.group("lb")[0], inventory.group("mail")[VICTIM]
        svc = service_for(inventory)
        ep, password = svc.endpoint(), svc.accounts[USER]

        accepted: list[tuple[float, str]] = []
        refused: list[str] = []
        stop = threading.Event()
        deadline = time.monotonic() + MAX_SECONDS

        # A reader that logs in over IMAP through the balancer every 0.5 s:
        # the victim is alice's home, so after the poweroff her sessions are
        # proxied to a dead node until the watcher on the other node sees it.
        logins: list[tuple[float, bool]] = []

        def reader() -> None:
            while not stop.is_set() and time.monotonic() < deadline + 60:
                t = time.time()
                try:
                    imap = ep.imap(USER, password)
                    imap.select("INBOX", readonly=True)
                    imap.logout()
                    logins.append((t, True))
                except (imaplib.IMAP4.error, OSError):
                    logins.append((t, False))
                time.sleep(0.5)

        say(f"client: up to {MAX_MESSAGES} messages / {MAX_SECONDS} s through "
            f"{lb.name}:587 as {USER}")
        thread = threading.Thread(target=send, args=(ep, password, prefix, MAX_MESSAGES, stop,
                                                     deadline, accepted, refused), daemon=True)
        t_start = time.monotonic()
        thread.start()
        reading = threading.Thread(target=reader, daemon=True)
        reading.start()
        watcher = None
        try:
            wait_for(lambda: len(accepted) >= POWEROFF_AFTER, 60,
                     f"{POWEROFF_AFTER} messages accepted", every=0.2)
            say(f"{len(accepted)} accepted; starting the watcher on {lb.name}")
            cmd = ("python3 -c \"$(cat <<'EOF'\n" + WATCH + "\nEOF\n)\" "
                   f"{victim.name} 60")
            watcher = subprocess.Popen([*lab.ssh_argv(lb), cmd], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.PIPE, text=True)
            ready = watcher.stdout.readline().split(maxsplit=2)
            if not ready or ready[0] != "ready":
                raise RuntimeError(f"the watcher on {lb.name} did not start: {ready}")
            before = json.loads(ready[2])
            say(f"powering off {victim.name} (its states now: {sorted(set(before.values()))})")
            t_off = time.time()
            accepted_at_off = len(accepted)
            with contextlib.suppress(subprocess.TimeoutExpired):  # the session dies with it
                lab.ssh(victim, "systemctl poweroff", timeout=10)
            seen = watcher.stdout.readline().split(maxsplit=2)
            watcher.wait(timeout=30)
            if not seen or seen[0] != "down":
                raise RuntimeError(f"the balancer did not route around {victim.name}: {seen}")
            routed = float(seen[1]) - t_off
            say(f"{victim.name} not UP in any backend {routed:.2f}s after the poweroff "
                f"({routed / inter:.2f} check intervals)")
            thread.join(timeout=MAX_SECONDS + 60)
            # Give the reader time to see IMAP served again.
            wait_for(lambda: any(ok and t > t_off + 1 for t, ok in logins), 60,
                     "an IMAP login after the poweroff", every=0.5)
        finally:
            stop.set()
            thread.join(timeout=60)
            reading.join(timeout=60)
            if watcher is not None and watcher.poll() is None:
                watcher.kill()  # our own ssh child, by its handle
                watcher.wait(timeout=10)
        client_seconds = time.monotonic() - t_start
        say(f"client done: {len(accepted)} accepted, {len(refused)} not accepted, "
            f"{client_seconds:.1f}s")
        # IMAP outage: from the poweroff to the first good login after it.
        after = [t for t, ok in logins if ok and t > t_off]
        imap_outage = (after[0] - t_off) if after else float("nan")
        failed_logins = sum(1 for t, ok in logins if not ok and t > t_off)
        say(f"IMAP served again {imap_outage:.2f}s after the poweroff "
            f"({failed_logins} failed login(s) in between)")

        say(f"booting {victim.name} again (Lab.up)")
        t_boot = time.monotonic()
        lab.up()
        wait_for(lambda: (s := states_of(inventory, victim.name)) and len(s) == len(BACKEND)
                 and all(v == "UP" for v in s.values()), 120,
                 f"{victim.name} UP in every backend")
        back_up = time.monotonic() - t_boot
        say(f"{victim.name} UP in every backend {back_up:.1f}s after the boot started")

        want = {s for _, s in accepted}
        say(f"looking for the {len(want)} accepted messages in {USER}'s INBOX via {lb.name}")
        found: set[str] = set()

        def all_found() -> bool:
            found.update(mailclient.inbox_subjects(ep, USER, password, prefix))
            return want <= found

        t_find = time.monotonic()
        with contextlib.suppress(RuntimeError):
            wait_for(all_found, 180, "every accepted message in the INBOX", every=2)
        find_seconds = time.monotonic() - t_find
        lost = sorted(want - found)
        # Each node's own store (IMAP follows the mailbox's home, so a login
        # cannot pick the node): the subjects there, read with doveadm.
        per_node: dict[str, int] = {}
        copies: dict[str, int] = {}
        for node in inventory.group("mail"):
            have: list[str] = []

            def node_has(node=node, have=have) -> bool:
                have[:] = stored_subjects(inventory, node, USER, prefix)
                return want <= set(have)

            with contextlib.suppress(RuntimeError):
                wait_for(node_has, 120, f"every accepted message on {node.name}", every=2)
            per_node[node.name] = len(want - set(have))
            copies[node.name] = len(have) - len(set(have))
            say(f"{node.name}: {per_node[node.name]} accepted message(s) missing, "
                f"{copies[node.name]} stored twice")

        vip = balancer_cut(inventory, lab, ep, password, f"vrrp {run_id}")
    advert = advert_int()
    vip_ratio = benchlib.ratio(vip["moved_seconds"], advert)

    ratio = benchlib.ratio(routed, inter)
    benchlib.write_results("failover", {
        "what": "seconds from `systemctl poweroff` of a mail node under load to HAProxy "
                "having it not UP in every backend, over the health-check interval; and "
                "messages that got a 250 but are not in the INBOX (must be 0)",
        "lab": list(LAB),
        "ratios": {"routed_around_over_check_inter": ratio,
                   "floating_address_moved_over_advert_int": vip_ratio},
        "balancer": {**vip, "advert_int_seconds": advert},
        "routed_around_seconds": round(routed, 3), "check_inter_seconds": inter,
        "messages": {"accepted": len(accepted), "not_accepted": len(refused),
                     "accepted_before_poweroff": accepted_at_off, "lost": len(lost),
                     "lost_subjects": lost[:50], "missing_per_node": per_node,
                     "duplicates_per_node": copies,
                     "found_after_seconds": round(find_seconds, 1)},
        "imap": {"served_again_after_seconds": round(imap_outage, 2),
                 "failed_logins": failed_logins, "logins": len(logins)},
        "client_seconds": round(client_seconds, 1),
        "node_back_up_seconds": round(back_up, 1),
        "states_before": before, "states_routed": json.loads(seen[2])})
    print(f"failover: routed around {victim.name} in {ratio:.2f} health-check intervals "
          f"({routed:.2f} s / {inter:g} s); messages lost {len(lost)} of {len(accepted)} "
          f"accepted ({len(refused)} not accepted, retried by a real client); missing per "
          f"node {per_node}, stored twice {copies}; IMAP served again {imap_outage:.2f} s "
          "after the poweroff")
    print(f"failover: the floating address moved {vip['from']} -> {vip['to']} in "
          f"{vip_ratio:.2f} VRRP advert intervals ({vip['moved_seconds']:.2f} s / {advert:g} s) "
          f"after a power cut; messages lost {vip['lost']} of {vip['accepted']} accepted "
          f"({vip['after_cut']} after the cut); held by {vip['holder_after_return']} once "
          f"{vip['from']} was back")
    return 0 if not lost and not any(copies.values()) and not vip["lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
