"""Housing-move benchmark: how fast `migrate sync` brings a legacy server's
mail in, against a raw `doveadm backup` of the same data, and how long the
cutover keeps clients out.

Run from the repository root:  .venv/bin/python bench/migrate.py

On its own lab `mmig` (198.18.65.0/24) with the legacy host legacy1 (Cyrus,
example.org) and example.org's three mailboxes in the mail model:
1. MESSAGES messages (about 5 KB each, over six folders) appended to the
   legacy server over IMAP.
2. The floor: for each user, on its home node, the same `doveadm backup -R
   ... imapc:` that `migrate sync` runs, by hand over SSH, into a scratch
   maildir in each user's home, with the same imapc/pop3c settings and no
   other plugin (a first pass warms the legacy server's caches and is not
   timed; the second is).
3. `deploy.py migrate sync` (listing the users, the sync of each on its home
   node, then the parity read of both sides): its sync part (the per-user
   times it reports) and the whole run, each over the floor.
4. The MX TTL lowered, then `deploy.py migrate cutover`: the window during
   which no client could log in (from the legacy server shut to clients
   until the domain's records point at the cluster), and its steps.

Figures: messages per second of the sync and of the floor, and their ratio;
the whole sync with parity over the floor; the cutover window in seconds.
Results: bench/results/migrate.json.
"""

from __future__ import annotations

import imaplib
import json
import time

import benchlib
import yaml
from benchlib import say

LAB = ("mmig", "198.18.65")
LEGACY = "legacy1"
DOMAIN = "example.org"
USERS = ("erin", "frank", "gina")
FOLDERS = ("INBOX", "INBOX.Sent", "INBOX.Archive", "INBOX.Archive.2024",
           "INBOX.R&AOk-unions", "INBOX.Kunden &- Partner")
MESSAGES = 3000
SCRATCH = "/root/mailops-bench-raw"  # the floor's configuration files


def _add_legacy(inv) -> None:
    hosts_file = inv / "hosts.yml"
    hosts = yaml.safe_load(hosts_file.read_text())
    hosts["all"]["children"]["legacy"] = {"hosts": {LEGACY: {
        "ansible_host": f"{LAB[1]}.21",
        "mailops_legacy": {"server": "cyrus", "domain": DOMAIN},
        "mailops_legacy_users": list(USERS)}}}
    hosts_file.write_text(yaml.safe_dump(hosts, sort_keys=False))
    mail_file = inv / "group_vars" / "all" / "mail.yml"
    model = yaml.safe_load(mail_file.read_text())
    model["mailops_domains"].append(DOMAIN)
    model["mailops_mailboxes"] += [{"address": f"{u}@{DOMAIN}", "quota": "1G"} for u in USERS]
    mail_file.write_text(yaml.safe_dump(model, sort_keys=False))


def _seed(address: str, password: str) -> int:
    from mailops.verify.mailclient import message

    body = "legacy mail " * 400 + "\n"
    for n, user in enumerate(USERS):
        imap = imaplib.IMAP4(address, 143, timeout=30)
        creds = f"{user}\0cyrus\0{password}".encode()
        imap.authenticate("PLAIN", lambda _, c=creds: c)
        for folder in FOLDERS[1:]:
            imap.create(f'"{folder}"')
        for i in range(n, MESSAGES, len(USERS)):
            msg = message(f"{user}@{DOMAIN}", [f"{user}@{DOMAIN}"], f"bench {i:05d}", body)
            flags = (r"(\Seen)", None, r"(\Seen \Flagged)")[i % 3]
            typ, res = imap.append(f'"{FOLDERS[i % len(FOLDERS)]}"', flags, None,
                                   msg.as_bytes())
            if typ != "OK":
                raise RuntimeError(f"append refused: {res}")
        imap.logout()
    return MESSAGES


def main() -> int:
    benchlib.setup()
    benchlib.bound(3000)
    from mailops.core.paths import vault_file
    from mailops.inventory import remote
    from mailops.ops import migrate
    from mailops.secrets.vault import load_secrets
    from mailops.site.homes import homes
    from mailops.site.mailmodel import load_mail_model

    with benchlib.own_lab(*LAB) as inv:
        _add_legacy(inv)
        say("`deploy.py up --json` on the migrate lab (with legacy1)")
        benchlib.up_json(inv, timeout=1800)
        inventory = benchlib.load(inv)
        secrets = load_secrets(vault_file(inventory.path), inventory.vault_password_file)
        admin_pw = secrets.extra["migrate_admin_password"]
        legacy_addr = str(inventory.host(LEGACY).address)
        say(f"appending {MESSAGES} messages to the legacy server")
        _seed(legacy_addr, admin_pw)

        source = migrate.source_of(inventory, LEGACY)
        home = homes(inventory, load_mail_model(inventory))
        nodes = {h.name: h for h in inventory.group("mail")}
        used = sorted({home[f"{u}@{DOMAIN}"].node for u in USERS})

        def raw_conf(tag: str) -> str:
            """What an admin would type: doveadm with the same imapc (and
            pop3c) settings into plain maildirs (a scratch folder in each
            user's home: doveadm asks the running auth service for homes);
            none of the cluster's plugins, no SSH round trip per step, no
            parity."""
            base = "\n".join(["protocols =", "ssl = no",
                              f"mail_location = maildir:~/mailops-bench-raw-{tag}",
                              "namespace inbox {", "  inbox = yes", "  separator = /", "}"])
            return migrate.imapc_conf(source).replace("!include /etc/dovecot/dovecot.conf",
                                                      base)

        def raw(tag: str) -> float:
            conf = f"{SCRATCH}/raw-{tag}.conf"
            for name in used:
                remote.run(inventory, nodes[name], f"mkdir -p {SCRATCH} && umask 077 && "
                           f"cat > {conf}", stdin=raw_conf(tag))
            t0 = time.monotonic()
            for user in USERS:
                address = f"{user}@{DOMAIN}"
                node = nodes[home[address].node]
                res = remote.run(
                    inventory, node,
                    f"nice -n 10 doveadm -c {conf} -o imapc_user={user} -o pop3c_user={user} "
                    f"backup -R -u {address} imapc:", timeout=1800)
                if res.returncode != 0:
                    raise RuntimeError(f"raw doveadm backup of {user}: {res.stderr[-500:]}")
            return time.monotonic() - t0

        say("floor, warm-up pass (not timed): raw doveadm backup into a scratch location")
        raw("warm")
        say("floor: raw doveadm backup of every user, timed")
        raw_s = raw("timed")
        say(f"floor: {raw_s:.1f} s")

        say("`deploy.py migrate sync`")
        res, sync_total_s = benchlib.deploy("migrate", "sync", "--from", LEGACY, "-i",
                                            str(inv), "--json", timeout=1800)
        synced = json.loads(res.stdout)
        if not synced["parity"]["equal"]:
            raise RuntimeError("parity does not hold after the sync")
        sync_s = sum(r["seconds"] for r in synced["synced"])
        say(f"migrate sync: {sync_s:.1f} s of sync, {sync_total_s:.1f} s in all")

        say("lowering the MX TTL, then `deploy.py migrate cutover`")
        _lower_ttl(inventory, secrets)
        res, cutover_s = benchlib.deploy("migrate", "cutover", "--from", LEGACY, "-i",
                                         str(inv), "--json", timeout=1800)
        cut = json.loads(res.stdout)
        if not cut["ok"]:
            raise RuntimeError(f"cutover not done: {res.stdout[-2000:]}")
        say(f"cutover: window {cut['window']:.1f} s, {cutover_s:.1f} s in all")

    figures = {
        "sync_msgs_per_s": round(MESSAGES / sync_s, 1),
        "raw_msgs_per_s": round(MESSAGES / raw_s, 1),
        "sync_over_raw_doveadm_backup": benchlib.ratio(sync_s, raw_s),
        "sync_with_parity_over_raw": benchlib.ratio(sync_total_s, raw_s),
        "cutover_window_s": round(cut["window"], 1),
    }
    benchlib.write_results("migrate", {
        "what": "migrate sync of a Cyrus server's mail into the cluster over a raw doveadm "
                "backup -R over imapc of the same data (same nice level, warm caches); the "
                "whole sync run with its parity over the same floor; the cutover's window "
                "(legacy shut to clients until the domain's records point at the cluster)",
        "lab": list(LAB), "messages": MESSAGES, "ratios": figures,
        "sync": {"seconds": round(sync_s, 1), "with_parity_seconds": round(sync_total_s, 1),
                 "rows": synced["synced"]},
        "raw": {"seconds": round(raw_s, 1)},
        "cutover": {"seconds": round(cutover_s, 1), "window": round(cut["window"], 1),
                    "steps": cut["steps"]},
    })
    print(f"migrate: sync {figures['sync_msgs_per_s']} msgs/s, raw doveadm backup "
          f"{figures['raw_msgs_per_s']} msgs/s, ratio {figures['sync_over_raw_doveadm_backup']}"
          f" (with parity {figures['sync_with_parity_over_raw']}); cutover window "
          f"{figures['cutover_window_s']} s")
    return 0


def _lower_ttl(inventory, secrets) -> None:
    """What the plan tells the operator to do a day ahead: the MX TTL down."""
    import dns.query
    import dns.tsigkeyring
    import dns.update

    key = dns.tsigkeyring.from_text({"mailops": secrets.extra["tsig_mailops"]})
    update = dns.update.UpdateMessage(DOMAIN, keyring=key, keyalgorithm="hmac-sha256")
    update.replace("@", 5, "MX", f"10 {LEGACY}.{DOMAIN}.")
    ns = str(inventory.group("dns")[0].address)
    if dns.query.tcp(update, ns, timeout=5).rcode() != 0:
        raise RuntimeError("lowering the MX TTL was refused")


if __name__ == "__main__":
    raise SystemExit(main())
