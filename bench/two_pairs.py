"""Two-pairs benchmark: the cluster scaled out from one pair of mail nodes to
two, and a mailbox moved to the new pair with a client connected; what the
scale-out and the move cost, and whether the move loses anything.

Run from the repository root:  .venv/bin/python bench/two_pairs.py

On its own lab `mtwo` (198.18.66.0/24), deployed with `deploy.py up`:
1. Every mailbox is pinned where it lives (its entry's `home:`, so none moves
   by itself), mail3 (.14) and mail4 (.15) are added to the mail group, and
   `deploy.py up --json` with four mail nodes (the scale-out: two new hosts
   booted, bootstrapped and converged, the others converged again, verify)
   is timed; then `deploy.py verify --json` (a login on each of the four
   nodes must be served by the account's home) and a second `up`, which
   changes nothing, timed too.
2. dave@example.net gets SEEDED messages through the balancer on 587
   (STARTTLS, login); 10 of them are copied into a new nested folder and 5
   flagged \\Seen \\Flagged; the Message-IDs with their flags are read per
   folder over IMAP.
3. The floor: one `doveadm backup -u dave@example.net tcp:mail4:12345` by
   hand over SSH on dave's home node (the copy the move's first step makes,
   without its dsync lock), timed; that copy is removed again, from mail4
   and from mail3 (mail4's replicator passes it on to its pair), so the move
   starts clean.
4. `deploy.py move-mailbox dave@example.net --to mail3 --json` with an IMAP
   client logged in, sending a NOOP every 0.5 s: the move must end its
   session (when and why is kept). Then, through the balancer: the session
   is served by mail3, nothing that was in the INBOX is missing, the seeded
   messages keep their flags, the folder is unchanged; a message handed to
   mail1's Postfix is stored on mail3 and mail4, and the old copies on mail1
   and mail2 are gone.

Figures: the scale-out `up` over the no-op `up` (wall times), move-mailbox
over the raw doveadm backup (the floor), the move's own copy step over the
same floor, and messages lost (must be 0). Every check is kept in the JSON as
true/false; the script exits 1 if any is false.
Results: bench/results/two_pairs.json.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import sys
import threading
import time
import uuid
from pathlib import Path

import benchlib
import yaml
from benchlib import say, wait_for

LAB = ("mtwo", "198.18.66")
MOVED = "dave@example.net"
MAILDIR = "/var/vmail/example.net/dave"  # the mailbox's home on every node
SEEDED = 200  # messages in the mailbox before the move
NEW_NODES = {"mail3": 14, "mail4": 15}  # host part of the lab subnet's address
TARGET, TARGET_PAIR = "mail3", "mail4"  # the move's new home and its pair
COPIED, FLAGGED = 10, 5  # seeded messages copied into the folder, and flagged


def add_pair(inv: Path, inventory) -> None:
    """mail3 and mail4 in hosts.yml's mail group, on the lab's subnet."""
    hosts_file = inv / "hosts.yml"
    hosts = yaml.safe_load(hosts_file.read_text())
    net = str(next(iter(inventory.group("mail"))).address).rsplit(".", 1)[0]
    hosts["all"]["children"]["mail"]["hosts"].update(
        {n: {"ansible_host": f"{net}.{k}"} for n, k in NEW_NODES.items()})
    hosts_file.write_text(yaml.safe_dump(hosts, sort_keys=False))


def stored_on(inventory, host, user: str, subject: str) -> int:
    """Messages whose subject contains `subject` in the user's INBOX on one
    node (doveadm search prints one line per message)."""
    from mailops.inventory import remote

    res = remote.run(inventory, host, f"doveadm search -u {user} mailbox INBOX header subject "
                                      f"'{subject}' 2>/dev/null", timeout=60)
    return len(res.stdout.splitlines())


def main() -> int:
    benchlib.setup()
    benchlib.bound(2400)
    from mailops.inventory import remote
    from mailops.site.homes import BACKEND_PORTS, homes
    from mailops.site.mailmodel import load_mail_model, set_mailbox_home
    from mailops.verify.mailclient import message
    from mailops.verify.service import service_for
    from tests.conftest import message_ids, session_node

    run_id = uuid.uuid4().hex[:8]
    prefix = f"two pairs {run_id}"
    folder = f"Projects/{run_id}"  # nested, and new to this run
    checks: dict[str, bool] = {}
    with benchlib.own_lab(*LAB) as inv:
        say("`deploy.py up --json` on the two-pairs lab (one pair of mail nodes)")
        _, first_s = benchlib.up_json(inv, timeout=1800)
        inventory = benchlib.load(inv)
        old_home = homes(inventory, load_mail_model(inventory))[MOVED].node
        say(f"pinning every mailbox where it lives ({MOVED} on {old_home}); adding "
            f"{', '.join(NEW_NODES)}")
        for address, home in homes(inventory, load_mail_model(inventory)).items():
            set_mailbox_home(inventory, address, home.node)
        add_pair(inv, inventory)

        say("scale-out: `deploy.py up --json` with four mail nodes")
        scaled, scale_s = benchlib.up_json(inv, timeout=1800)  # raises if verify failed
        inventory = benchlib.load(inv)
        mail = [h.name for h in inventory.group("mail")]
        checks["four_mail_nodes_in_inventory"] = mail == ["mail1", "mail2", "mail3", "mail4"]
        checks["scale_out_up_verify_ok"] = scaled["verify"]["ok"] is True
        say(f"scale-out up: {scale_s:.1f} s, {scaled['changes']} change(s); "
            "`deploy.py verify --json`")
        # The whole verify (up's is shorter): a login on each of the four nodes
        # is served by the account's home (proxied there unless it is that node).
        res, verify_s = benchlib.run([sys.executable, str(benchlib.ROOT / "deploy.py"),
                                      "verify", "--json", "-i", str(inv)], timeout=900)
        try:
            verified = json.loads(res.stdout)
        except ValueError:
            verified = {"ok": False, "checks": [], "output": res.stdout[-2000:]}
        checks["verify_ok"] = res.returncode == 0 and verified.get("ok") is True
        home_rows = [c for c in verified.get("checks", [])
                     if c["check"] == "IMAP session on the home node"]
        checks["verify_home_sessions_on_4_nodes"] = (
            len(home_rows) == 4 and all(c["result"] == "ok" for c in home_rows))
        say(f"verify: {verified.get('summary')}, {len(home_rows)} home-session row(s); no-op "
            "`deploy.py up --json`")
        noop, noop_s = benchlib.up_json(inv, timeout=900)
        say(f"no-op up: {noop_s:.1f} s, {noop['changes']} change(s)")

        svc = service_for(inventory)
        ep, password = svc.endpoint(), svc.accounts[MOVED]
        nodes = {h.name: h for h in inventory.group("mail")}
        say(f"seeding {MOVED}: {SEEDED} messages through {svc.front}:587")
        sent: list[str] = []
        with ep.smtp_tls(587) as smtp:
            smtp.login(MOVED, password)
            for i in range(SEEDED):
                msg = message(MOVED, [MOVED], f"{prefix} {i:03d}")
                if smtp.send_message(msg):
                    raise RuntimeError(f"message {i} refused")
                sent.append(msg["Message-ID"])
        imap = ep.imap(MOVED, password)
        if not wait_for(lambda: len(message_ids(imap, "INBOX").keys() & set(sent)) == SEEDED,
                        300, every=2):
            raise RuntimeError(f"the {SEEDED} seeded messages not in the INBOX within 300 s")
        typ, _ = imap.create(f'"{folder}"')
        if typ != "OK":
            raise RuntimeError(f"could not create {folder}")
        imap.select("INBOX")
        typ, data = imap.search(None, "SUBJECT", f'"{prefix}"')
        ids = data[0].split()
        imap.copy(b",".join(ids[:COPIED]).decode(), f'"{folder}"')
        imap.store(b",".join(ids[:FLAGGED]).decode(), "+FLAGS", r"(\Seen \Flagged)")
        before = {f: message_ids(imap, f) for f in ("INBOX", folder)}
        if len(before[folder]) != COPIED:
            raise RuntimeError(f"{len(before[folder])} messages in {folder}, not {COPIED}")
        imap.select("INBOX")
        node_before = session_node(imap)
        checks["served_by_old_home_before"] = node_before == old_home
        say(f"{len(before['INBOX'])} messages in the INBOX, {len(before[folder])} in "
            f"{folder}; the session is served by {node_before}")

        # The floor: the move's copy by hand, on the old home, to the new pair.
        port = BACKEND_PORTS["doveadm"]
        floor_dest = nodes[TARGET_PAIR]
        say(f"floor: raw `doveadm backup` of {MOVED} on {old_home} to {floor_dest.name}")
        t0 = time.monotonic()
        res = remote.run(inventory, nodes[old_home],
                         f"doveadm backup -u {MOVED} tcp:{floor_dest.address}:{port}",
                         timeout=600)
        floor_s = time.monotonic() - t0
        if res.returncode != 0:
            raise RuntimeError(f"raw doveadm backup exited {res.returncode}: "
                               f"{(res.stderr or res.stdout)[-500:]}")
        floor_copied = stored_on(inventory, floor_dest, MOVED, prefix)
        say(f"floor: {floor_s:.2f} s ({floor_copied} seeded messages in the copy's INBOX); "
            "removing that copy")
        # mail4's replicator passes the copy on to its pair (mail3): removed
        # there too, replication stopped on both first, so the move starts
        # clean (its own first step would otherwise remove mail3's copy).
        pair = [nodes[TARGET_PAIR], nodes[TARGET]]
        floor_copies: list[dict[str, bool]] = []
        for attempt in range(4):
            floor_copies.append({h.name: remote.run(inventory, h, f"test -e {MAILDIR}")
                                 .returncode == 0 for h in pair})
            if not any(floor_copies[-1].values()):
                break
            if attempt == 3:
                raise RuntimeError(f"the floor's copy keeps coming back: {floor_copies}")
            for h in pair:
                remote.run(inventory, h, f"doveadm replicator remove {MOVED}", timeout=60)
            for h in pair:
                res = remote.run(inventory, h, f"doveadm kick {MOVED}; rm -rf {MAILDIR}",
                                 timeout=120)
                if res.returncode != 0:
                    raise RuntimeError(f"removing the floor's copy on {h.name}: "
                                       f"{(res.stderr or res.stdout)[-500:]}")
            time.sleep(3)  # a replication already under way would make it anew
        say(f"floor's copy found and removed: {floor_copies[:-1]}")

        # The client stays logged in and sends a NOOP every 0.5 s: when its
        # session ends during the move, and why, is noted.
        ended: dict[str, object] = {}
        stop = threading.Event()

        def keep_alive() -> None:
            try:
                while not stop.is_set():
                    imap.noop()
                    time.sleep(0.5)
            except (imaplib.IMAP4.abort, OSError) as e:
                ended.update(at=time.monotonic(), reason=str(e)[:300])
            except imaplib.IMAP4.error as e:
                ended.update(error=str(e)[:300])

        say(f"`deploy.py move-mailbox {MOVED} --to {TARGET} --json`, a client logged in")
        watcher = threading.Thread(target=keep_alive, daemon=True)
        t_move = time.monotonic()
        watcher.start()
        try:
            res, move_s = benchlib.run([sys.executable, str(benchlib.ROOT / "deploy.py"),
                                        "move-mailbox", MOVED, "--to", TARGET, "--json",
                                        "-i", str(inv)], timeout=1200)
            # kicked: the session ends within seconds
            wait_for(lambda: "at" in ended or "error" in ended, 10, every=0.5)
        finally:
            stop.set()
            watcher.join(timeout=30)
        try:
            moved = json.loads(res.stdout)
        except ValueError:
            moved = {"ok": False, "output": res.stdout[-2000:]}
        checks["move_ok"] = res.returncode == 0 and moved.get("ok") is True
        say(f"move-mailbox: {move_s:.1f} s, exit {res.returncode}")
        copy_s = next((s["seconds"] for s in moved.get("steps", [])
                       if s["step"] == "copy from the old home"), None)

        kicked = "at" in ended
        session_ended = {"seconds_into_move": round(ended["at"] - t_move, 2) if kicked else None,
                         "reason": ended.get("reason") or ended.get("error")}
        if not kicked:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                imap.logout()
        checks["client_session_kicked"] = kicked
        say(f"the client's session ended: {session_ended}")

        # Reconnect through the balancer; compare with what was there before.
        imap = wait_for(lambda: ep.imap(MOVED, password), 60, every=2)
        after: dict[str, dict[str, str]] = {"INBOX": {}, folder: {}}
        node_after = ""
        if imap is not None:
            node_after = session_node(imap)
            after = {f: message_ids(imap, f) for f in ("INBOX", folder)}
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                imap.logout()
        checks["served_by_new_home_after"] = node_after == TARGET
        lost_inbox = sorted(before["INBOX"].keys() - after["INBOX"].keys())
        lost_folder = sorted(before[folder].keys() - after[folder].keys())
        checks["nothing_missing_in_inbox"] = not lost_inbox
        checks["seeded_flags_kept"] = all(after["INBOX"].get(m) == before["INBOX"][m]
                                          for m in sent)
        checks["folder_equal"] = after[folder] == before[folder]
        lost = len(lost_inbox) + len(lost_folder)
        say(f"after the move: served by {node_after or '?'}, {len(after['INBOX'])} in the "
            f"INBOX, {len(after[folder])} in {folder}, {lost} lost")

        # New mail handed to a node of the first pair is stored on the second only.
        inventory = benchlib.load(inv)
        subject = f"{prefix} after"
        res = remote.sendmail(inventory, nodes["mail1"], MOVED, MOVED, subject,
                              "after the move")
        checks["new_mail_accepted_by_mail1"] = res.returncode == 0
        for name in (TARGET, TARGET_PAIR):
            checks[f"new_mail_stored_on_{name}"] = bool(wait_for(
                lambda n=name: stored_on(inventory, nodes[n], MOVED, subject), 90, every=2))
        for name in sorted(set(nodes) - {TARGET, TARGET_PAIR}):
            # Not even the mailbox is there (doveadm would make it: not asked).
            gone = remote.run(inventory, nodes[name], f"test -e {MAILDIR}")
            checks[f"old_copy_gone_on_{name}"] = gone.returncode == 1
        say("checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in checks.items()))

    figures = {
        "scale_out_up_over_noop_up": benchlib.ratio(scale_s, noop_s),
        "move_over_raw_doveadm_backup": benchlib.ratio(move_s, floor_s),
        "move_copy_step_over_raw_doveadm_backup":
            benchlib.ratio(copy_s, floor_s) if copy_s is not None else None,
        "messages_lost": lost,
    }
    failed = [k for k, v in checks.items() if not v]
    benchlib.write_results("two_pairs", {
        "what": "scale-out `deploy.py up` from two mail nodes to four over a no-op `up` (wall "
                "times); `deploy.py move-mailbox` of a mailbox to the new pair, a client "
                "logged in, over one raw `doveadm backup` of the same mailbox from its home "
                "to a node of the new pair (the floor); messages lost by the move (must be 0)",
        "lab": list(LAB), "seeded": SEEDED, "ratios": figures, "checks": checks,
        "failed_checks": failed,
        "up": {"first_seconds": round(first_s, 2),
               "scale_out": {"wall_seconds": round(scale_s, 2), "changes": scaled["changes"],
                             "phases": scaled["phases"], "hosts": scaled["hosts"],
                             "verify": scaled["verify"]["summary"]},
               "verify": {"wall_seconds": round(verify_s, 2), "summary": verified.get("summary"),
                          "home_sessions": home_rows},
               "noop": {"wall_seconds": round(noop_s, 2), "changes": noop["changes"],
                        "phases": noop["phases"], "verify": noop["verify"]["summary"]}},
        "floor": {"seconds": round(floor_s, 3), "from": old_home, "to": floor_dest.name,
                  "seeded_messages_copied": floor_copied,
                  "copies_found_and_removed": floor_copies[:-1]},
        "move": {"wall_seconds": round(move_s, 2), "copy_step_seconds": copy_s,
                 "from": old_home, "to": TARGET, "result": moved},
        "messages": {"inbox_before": len(before["INBOX"]), "inbox_after": len(after["INBOX"]),
                     "folder_before": len(before[folder]), "folder_after": len(after[folder]),
                     "lost": lost, "lost_inbox": lost_inbox[:50],
                     "lost_folder": lost_folder[:50]},
        "session": {"before": node_before, "after": node_after, "kicked": kicked,
                    "ended": session_ended},
    })
    copy = (f"; its copy step {figures['move_copy_step_over_raw_doveadm_backup']:.2f}"
            if copy_s is not None else "")
    print(f"two_pairs: scale-out up (2 -> 4 mail nodes) "
          f"{figures['scale_out_up_over_noop_up']:.2f} x the no-op up ({scale_s:.1f} s / "
          f"{noop_s:.1f} s, no-op {noop['changes']} changes); move-mailbox {old_home} -> {TARGET} "
          f"{figures['move_over_raw_doveadm_backup']:.1f} x a raw doveadm backup ({move_s:.1f} s"
          f" / {floor_s:.2f} s{copy}); messages lost {lost} of "
          f"{len(before['INBOX']) + len(before[folder])}; checks "
          f"{len(checks) - len(failed)}/{len(checks)} passed"
          + (f" (FAILED: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
