"""Disaster-recovery benchmark: backup throughput, an unchanged backup, and
a node rebuild, each against its floor in the same run.

Run from the repository root:  .venv/bin/python bench/dr.py

On its own lab `mdr` (198.18.64.0/24), deployed with `deploy.py up`:
1. 400 messages (about 5 KB each) are sent through the balancer to the
   lab's four mailboxes and replicated.
2. `deploy.py backup --to DIR` (the first: every message staged, sent,
   sealed, stored) against the floor, a plain copy of the same maildirs:
   `tar` of /var/vmail on the nodes that hold the mailboxes' homes, over
   SSH, into a folder here.
3. A second `deploy.py backup` of the unchanged mail: objects stored and
   bytes sent (both must be 0) and its time.
4. mail2's host destroyed and made anew (`Lab.destroy`, `lab up`), then a
   cold converge of that one node (`bootstrap` + `converge`): the floor;
   destroyed and made anew again, then `deploy.py rebuild mail2`
   (drain, converge, resync from mail1, verify).

Figures: backup over plain copy (s/s), second backup's new objects and
bytes, rebuild over cold converge (s/s). The backup's recovery point is
its schedule's interval plus one backup's run time (no timer is shipped:
run it from cron or a systemd timer). Results: bench/results/dr.json.
"""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchlib import say

LAB = ("mdr", "198.18.64")
MESSAGES = 400
RECIPIENTS = ("alice@example.test", "bob@example.test", "carol@example.net",
              "dave@example.net")


def main() -> int:
    benchlib.setup()
    benchlib.bound(3000)
    from mailops.inventory import remote
    from mailops.lab.lab import Lab
    from mailops.verify.mailclient import message
    from mailops.verify.service import service_for

    with benchlib.own_lab(*LAB) as inv:
        say("`deploy.py up --json` on the DR lab")
        benchlib.up_json(inv, timeout=1800)
        inventory = benchlib.load(inv)
        svc = service_for(inventory)
        user = RECIPIENTS[0]
        ep, password = svc.endpoint(), svc.accounts[user]
        say(f"sending {MESSAGES} messages through the balancer")
        body = "x" * 5000 + "\n"
        smtp = None
        for i in range(MESSAGES):
            if i % 50 == 0:  # a new session every 50 messages
                if smtp is not None:
                    smtp.quit()
                smtp = ep.smtp_tls(587)
                smtp.login(user, password)
            try:
                smtp.send_message(message(user, [RECIPIENTS[i % 4]], f"dr {i:04d}", body))
            except smtplib.SMTPException as e:
                say(f"message {i} refused: {e}")
        if smtp is not None:
            smtp.quit()
        time.sleep(15)  # deliveries and replication settle

        work = Path(tempfile.mkdtemp(prefix="mailops-bench-dr-"))
        say("first backup")
        res, backup_s = benchlib.deploy("backup", "-i", str(inv), "--to", str(work / "b"),
                                        "--json", timeout=1800)
        first = json.loads(res.stdout)
        messages = sum(r["messages"] for r in first["mailboxes"])
        say(f"backup: {messages} messages in {backup_s:.1f} s")

        say("floor: a plain copy of the maildirs over SSH")
        t0 = time.monotonic()
        for host in inventory.group("mail"):
            out = work / "plain" / host.name
            out.mkdir(parents=True)
            with open(out / "vmail.tar", "wb") as f:
                subprocess.run([*remote.ssh_argv(inventory, host),
                                "tar -C /var/vmail --exclude=.mailops-stage -cf - ."],
                               stdout=f, check=True, timeout=900)
        plain_s = time.monotonic() - t0
        say(f"plain copy: {plain_s:.1f} s")

        say("second backup of unchanged mail")
        res, second_s = benchlib.deploy("backup", "-i", str(inv), "--to", str(work / "b"),
                                        "--json", timeout=1800)
        second = json.loads(res.stdout)
        new = sum(r["new"] for r in second["mailboxes"])
        sent = sum(r["bytes_sent"] for r in second["mailboxes"])
        say(f"second backup: {new} new objects, {sent} bytes sent, {second_s:.1f} s")

        lab = Lab(inventory)
        say("floor: mail2 destroyed, made anew, bootstrapped and converged cold")
        lab.destroy("mail2")
        benchlib.deploy("lab", "up", "-i", str(inv))
        _, boot_s = benchlib.deploy("bootstrap", "-i", str(inv))
        _, conv_s = benchlib.deploy("converge", "-i", str(inv))
        cold_s = boot_s + conv_s
        say(f"cold bootstrap + converge: {cold_s:.1f} s")

        say("mail2 destroyed and made anew again, then `deploy.py rebuild mail2`")
        lab.destroy("mail2")
        benchlib.deploy("lab", "up", "-i", str(inv))
        res, rebuild_s = benchlib.deploy("rebuild", "mail2", "-i", str(inv), "--json")
        rebuilt = json.loads(res.stdout)
        say(f"rebuild: {rebuild_s:.1f} s, verify {'ok' if rebuilt['verify_ok'] else 'FAILED'}")

    figures = {
        "backup_over_plain_copy": benchlib.ratio(backup_s, plain_s),
        "rebuild_over_cold_converge": benchlib.ratio(rebuild_s, cold_s),
    }
    benchlib.write_results("dr", {
        "what": "first backup over a plain tar of the same maildirs over SSH; a second "
                "backup of unchanged mail (must store and send nothing); rebuild of a lost "
                "node over a cold bootstrap + converge of that node",
        "lab": list(LAB), "ratios": figures,
        "backup": {"messages": messages, "seconds": round(backup_s, 1),
                   "plain_copy_seconds": round(plain_s, 1)},
        "second_backup": {"new_objects": new, "bytes_sent": sent,
                          "seconds": round(second_s, 1)},
        "rebuild": {"seconds": round(rebuild_s, 1), "cold_converge_seconds": round(cold_s, 1),
                    "verify_ok": rebuilt["verify_ok"], "steps": rebuilt["steps"]},
        "rpo": "the backup schedule's interval plus one backup's run time "
               f"({backup_s:.0f} s here for {messages} messages)",
    })
    print(f"dr: backup/plain copy {figures['backup_over_plain_copy']} ({backup_s:.1f} s / "
          f"{plain_s:.1f} s, {messages} messages); second backup {new} new objects, {sent} "
          f"bytes; rebuild/cold converge {figures['rebuild_over_cold_converge']} "
          f"({rebuild_s:.1f} s / {cold_s:.1f} s)")
    return 0 if new == 0 and sent == 0 and rebuilt["verify_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
