"""Argument parsing for deploy.py; each command calls into mailops."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from mailops.core.environment import ROOT
from mailops.core.errors import InventoryErrors, MailopsError

DEFAULT_INVENTORY = ROOT / "inventories" / "lab"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deploy.py", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def inv(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("-i", "--inventory", type=Path, default=DEFAULT_INVENTORY,
                        help="inventory folder (default: inventories/lab)")

    def wait_json(sp: argparse.ArgumentParser, default: float, what: str) -> None:
        sp.add_argument("--wait", type=float, default=default, metavar="S",
                        help=f"how long {what} open sessions may take to finish ({default:.0f})")
        sp.add_argument("--json", action="store_true")
        inv(sp)

    lab = sub.add_parser("lab", help="the lab: Debian hosts on this machine")
    lab.add_argument("action", choices=["up", "down", "status"])
    lab.add_argument("--rebuild-image", action="store_true",
                     help="rebuild the cached Debian base image")
    lab.add_argument("--json", action="store_true", help="status as JSON")
    inv(lab)

    boot = sub.add_parser("bootstrap", help="bring bare Debian hosts to where Ansible runs")
    inv(boot)

    conv = sub.add_parser("converge", help="secrets, then Ansible's site playbook on the hosts")
    conv.add_argument("--check", action="store_true", help="Ansible check mode: change nothing")
    conv.add_argument("--diff", action="store_true", help="show file differences")
    conv.add_argument("--limit", metavar="PATTERN",
                      help="only these hosts: an Ansible pattern (a group like `mail`, a host)")
    inv(conv)

    dns = sub.add_parser("dns", help="the mail domains' DNS records: plan (a dry run) or apply")
    dns.add_argument("action", choices=["plan", "apply"])
    dns.add_argument("--force", action="store_true",
                     help="apply even a plan that changes more than the safe share of a zone")
    dns.add_argument("--json", action="store_true", help="the plan or result as JSON")
    inv(dns)

    up = sub.add_parser("up", help="the main job: lab (if a lab inventory), bootstrap, converge, "
                                   "DNS publish, verify, and how to connect")
    up.add_argument("--rebuild-image", action="store_true")
    up.add_argument("--json", action="store_true",
                    help="the summary as JSON on stdout (progress stays on stderr)")
    inv(up)

    pl = sub.add_parser("plan", help="what up would change (Ansible check mode with diffs, "
                                     "the DNS plan); changes nothing")
    pl.add_argument("--json", action="store_true")
    inv(pl)

    ver = sub.add_parser("verify", help="check the deployed service from outside: ports, TLS, "
                                        "login rules, relaying, mail path, cluster, DNS")
    ver.add_argument("--json", action="store_true")
    inv(ver)

    mv = sub.add_parser("move-mailbox", help="give a mailbox a new home node: copy, switch, "
                                             "kick its sessions, final sync, check")
    mv.add_argument("address", help="the mailbox, e.g. alice@example.test")
    mv.add_argument("--to", required=True, metavar="NODE", help="its new home (a mail node)")
    mv.add_argument("--keep-old", action="store_true",
                    help="keep the old pair's copies (normally removed once nothing is missing)")
    mv.add_argument("--json", action="store_true")
    inv(mv)

    mg = sub.add_parser("migrate", help="move an on-premises mail server into the cluster: "
                                        "plan (read it, say what the move involves), sync "
                                        "(pull every mailbox, repeatable), parity (compare), "
                                        "cutover (switch the domain to the cluster), finish "
                                        "(after the old MX TTL: last sync, queue, summary)")
    mg.add_argument("action", choices=["plan", "sync", "parity", "cutover", "finish"])
    mg.add_argument("--force", action="store_true",
                    help="(cutover) despite a long MX TTL; (finish) before the old TTL passed")
    mg.add_argument("--from", dest="source", required=True, metavar="HOST",
                    help="the legacy server (a host of the group legacy)")
    mg.add_argument("--json", action="store_true")
    inv(mg)

    st = sub.add_parser("status", help="the whole cluster in one look: services, queues, "
                                       "disk, certificate and DKIM key ages, the balancer's "
                                       "backends, replication lag; exit 1 on a problem")
    st.add_argument("--json", action="store_true")
    inv(st)

    for name, text in (("drain", "the balancer sends NODE no new sessions; open ones may "
                                 "finish (up to --wait s); its queue is delivered"),
                       ("undrain", "NODE takes sessions again, once every health check "
                                   "passes")):
        dr = sub.add_parser(name, help=text)
        dr.add_argument("node", help="the mail node, e.g. mail2")
        if name == "drain":
            wait_json(dr, 120, "its")
        else:
            dr.add_argument("--json", action="store_true")
            inv(dr)

    ru = sub.add_parser("rolling-update", help="one mail node at a time: drain, apt-get "
                                               "upgrade, converge it, check its ports and a "
                                               "round trip, undrain; stops at the first failure")
    ru.add_argument("--no-upgrade", action="store_true",
                    help="only converge (a configuration change), no apt-get upgrade")
    wait_json(ru, 60, "a drained node's")

    rs_ = sub.add_parser("restart", help="restart a service on every mail node, one at a "
                                         "time, each drained first and checked after")
    rs_.add_argument("service", choices=["postfix", "dovecot", "rspamd", "redis"])
    wait_json(rs_, 60, "a drained node's")

    dk = sub.add_parser("dkim", help="DKIM key rollover: `rotate` publishes a new selector, "
                                     "switches signing once it resolves, keeps the old one "
                                     "published for --grace")
    dk.add_argument("action", choices=["rotate"])
    dk.add_argument("--domain", action="append", metavar="D",
                    help="only this mail domain (repeatable; default: every one)")
    dk.add_argument("--grace", default="7d", metavar="DURATION",
                    help="how long the old selector stays published (7d; e.g. 2d, 12h)")
    dk.add_argument("--json", action="store_true")
    inv(dk)

    rb = sub.add_parser("rebuild", help="rebuild a lost mail node on its empty host: drained, "
                                        "converged, resynced from its pair, its queue back, "
                                        "undrained, verified")
    rb.add_argument("node", help="the mail node, e.g. mail2")
    rb.add_argument("--no-requeue", action="store_true",
                    help="do not put its queue from the latest backup back")
    rb.add_argument("--json", action="store_true")
    inv(rb)

    bk = sub.add_parser("backup", help="back up every mailbox and the inventory (encrypted, "
                                       "incremental); `backup verify` restores one into a "
                                       "scratch folder and checks it")
    bk.add_argument("action", nargs="?", choices=["verify"],
                    help="verify: check a backup instead of making one")
    bk.add_argument("--to", dest="url", metavar="URL",
                    help="a folder or s3://BUCKET/PREFIX (default: mailops_backup.url)")
    bk.add_argument("--from", dest="source", metavar="URL", help="(verify) the backup to check")
    bk.add_argument("--at", metavar="DATE", help="(verify) the newest backup made by then")
    bk.add_argument("--json", action="store_true")
    inv(bk)

    rs = sub.add_parser("restore", help="bring mail back from a backup, merging: nothing newer "
                                        "is replaced")
    rs.add_argument("--from", dest="url", metavar="URL",
                    help="a folder or s3://BUCKET/PREFIX (default: mailops_backup.url)")
    rs.add_argument("--mailbox", metavar="ADDRESS", help="only this mailbox")
    rs.add_argument("--at", metavar="DATE", help="the newest backup made by then")
    rs.add_argument("--queue", metavar="NODE",
                    help="only put NODE's saved Postfix queue back on it (after that queue "
                         "was lost: what is still queued would go out twice)")
    rs.add_argument("--inventory-to", metavar="DIR", type=Path,
                    help="only write the backed-up inventory into DIR (a fresh controller's "
                         "first step; the key from MAILOPS_BACKUP_KEY_FILE)")
    rs.add_argument("--json", action="store_true")
    inv(rs)

    expl = sub.add_parser("explain", help="cause and remedy for an SMTP/IMAP/POP3 reply")
    expl.add_argument("reply", help='the reply text, e.g. "550 5.1.1 User unknown"')
    expl.add_argument("--json", action="store_true")

    test = sub.add_parser("test", help="run the whole test suite (pytest)")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER)
    return p


def _summary(what: str, changes: int, started: float, extra: str = "") -> str:
    """The closing line of a step; tests read "no changes in N s" from it."""
    verdict = f"{changes} change(s)" if changes else "no changes"
    return f"{what}: {verdict} in {time.monotonic() - started:.1f} s{extra}"


def _lab_up(inventory, rebuild: bool) -> None:
    from mailops.lab.lab import Lab

    lab = Lab(inventory)
    t0 = time.monotonic()
    changes = lab.up(rebuild_image=rebuild)
    print(lab.status_table())
    print("\n" + _summary("lab up", len(changes), t0,
                          f"; SSH: ssh -F {lab.ssh_config} <host>"))


def _bootstrap(inventory) -> None:
    from mailops.converge.bootstrap import bootstrap

    t0 = time.monotonic()
    result = bootstrap(inventory)
    print(result.table())
    print("\n" + _summary("bootstrap", result.changed, t0))
    if result.failed:
        raise MailopsError(f"bootstrap failed on: {', '.join(result.failed)}")


def _converge(inventory, check: bool = False, diff: bool = False,
              limit: str | None = None) -> None:
    from mailops.converge.run import converge

    if limit and not any(limit in (h.name, *h.groups) for h in inventory.hosts) \
            and not any(c in limit for c in ":,&!*~["):
        names = sorted({n for h in inventory.hosts for n in (h.name, *h.groups)})
        raise MailopsError(f"--limit {limit}: no host or group of {inventory.path} has that "
                           f"name; use one of {', '.join(names)}")
    t0 = time.monotonic()
    result = converge(inventory, check=check, diff=diff, limit=limit)
    print(result.table())
    secrets = len(result.secrets_changes)
    print("\n" + _summary("converge", result.changed, t0,
                          f"; secrets: {secrets} generated" if secrets else ""))


def _up(inventory, rebuild: bool, as_json: bool) -> int:
    import contextlib

    from mailops.workflows.up import up

    t0 = time.monotonic()
    # With --json, stdout carries only the JSON: anything else goes to stderr.
    with contextlib.redirect_stdout(sys.stderr if as_json else sys.stdout):
        result = up(inventory, rebuild_image=rebuild)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result.text())
        print("\n" + _summary("up", result.changes, t0,
                               "" if result.verify.ok else "; VERIFY FAILED (see above)"))
    return 0 if result.verify.ok else 1


def _migrate(inventory, action: str, source: str, as_json: bool, force: bool) -> int:
    from mailops.core.progress import table
    from mailops.ops import migrate

    t0 = time.monotonic()
    if action in ("cutover", "finish"):
        report = (migrate.cutover if action == "cutover" else migrate.finish)(
            inventory, source, force)
        if as_json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print(report.text())
            print(f"\nmigrate {action}: {'done' if report.ok else 'NOT DONE'} in "
                  f"{time.monotonic() - t0:.1f} s")
        return 0 if report.ok else 1
    if action == "plan":
        planned = migrate.plan(inventory, source)
        print(json.dumps(planned.to_dict(), indent=2) if as_json else planned.text())
        if not as_json:
            print(f"\nmigrate plan: done in {time.monotonic() - t0:.1f} s; nothing was changed")
        return 0
    rows, passwords = [], []
    if action == "sync":
        rows, parity, passwords = migrate.sync(inventory, source)
    else:
        src = migrate.source_of(inventory, source)
        moved = migrate.move_of(inventory, src).stage != "syncing"
        parity = migrate.parity(inventory, src, migrate.list_users(inventory, src),
                                contained=moved, uids_count=not moved)
    synced = all(r.result == "ok" for r in rows)
    if as_json:
        print(json.dumps({"synced": [r.__dict__ for r in rows], "parity": parity.to_dict(),
                          "passwords": [r.__dict__ for r in passwords]}, indent=2))
    else:
        if passwords:
            print(table(("user", "mailbox", "password"),
                        [(r.user, r.address, r.result) for r in passwords]) + "\n")
        if rows:
            print(table(("user", "mailbox", "node", "result", "tries", "s"),
                        [(r.user, r.address, r.node, r.result, r.tries, f"{r.seconds:.1f}")
                         for r in rows]) + "\n")
        print(parity.table())
        print(f"\nmigrate {action}: done in {time.monotonic() - t0:.1f} s")
    return 0 if synced and parity.equal else 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["test"]:
        # Everything after `test` is pytest's, options first included
        # (`test -m unit`), which argparse's REMAINDER would refuse.
        cmd = [sys.executable, "-m", "pytest", *argv[1:]]
        os.chdir(ROOT)
        os.execv(sys.executable, cmd)
    args = _parser().parse_args(argv)
    if args.command == "explain":
        from mailops.verify.explain import explain

        e = explain(args.reply)
        print(json.dumps(e.to_dict(), indent=2) if args.json else e.text())
        return 0 if e.known else 3
    if args.command == "restore" and args.inventory_to is not None:
        from mailops.ops.backup import restore_inventory
        from mailops.ops.sealed import KEY_ENV

        if not args.url or not os.environ.get(KEY_ENV):
            print(f"error: restore --inventory-to needs --from URL and {KEY_ENV} (the backup "
                  "key: there is no inventory yet to find it by)", file=sys.stderr)
            return 2
        try:
            written = restore_inventory(args.url, Path(os.environ[KEY_ENV]), args.inventory_to,
                                        args.at)
        except MailopsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print("\n".join(f"wrote {args.inventory_to / w}" for w in written))
        print(f"\nnext: the vault password, then `deploy.py up -i {args.inventory_to}` and "
              f"`deploy.py restore -i {args.inventory_to} --from {args.url}`")
        return 0
    try:
        from mailops.inventory.model import load_inventory

        inventory = load_inventory(args.inventory)
        if args.command == "lab":
            from mailops.lab.lab import Lab

            lab = Lab(inventory)
            if args.action == "up":
                _lab_up(inventory, args.rebuild_image)
            elif args.action == "down":
                t0 = time.monotonic()
                changes = lab.down()
                print(f"lab down: {len(changes)} removal(s) in {time.monotonic() - t0:.1f} s")
            elif args.json:
                print(json.dumps(lab.status(), indent=2))
            else:
                print(lab.status_table())
        elif args.command == "bootstrap":
            _bootstrap(inventory)
        elif args.command == "converge":
            _converge(inventory, args.check, args.diff, args.limit)
        elif args.command == "dns":
            from mailops.dns.deploy import command

            print(command(inventory, args.action, force=args.force, as_json=args.json))
        elif args.command == "up":
            return _up(inventory, args.rebuild_image, args.json)
        elif args.command == "verify":
            from mailops.verify.run import full

            t0 = time.monotonic()
            report = full(inventory)
            if args.json:
                print(json.dumps({"ok": report.ok, "summary": report.counts(),
                                  "checks": report.to_list()}, indent=2))
            else:
                print(report.table())
                print(f"\nverify: {report.summary()} in {time.monotonic() - t0:.1f} s")
            return 0 if report.ok else 1
        elif args.command == "move-mailbox":
            from mailops.ops.move import move_mailbox

            t0 = time.monotonic()
            moved = move_mailbox(inventory, args.address, args.to, keep_old=args.keep_old)
            if args.json:
                print(json.dumps(moved.to_dict(), indent=2))
            else:
                print(moved.text())
                print(f"\nmove-mailbox: done in {time.monotonic() - t0:.1f} s")
            return 0 if moved.ok else 1
        elif args.command == "migrate":
            return _migrate(inventory, args.action, args.source, args.json, args.force)
        elif args.command == "status":
            from mailops.ops.status import status

            found = status(inventory)
            print(json.dumps(found.to_dict(), indent=2) if args.json else found.text())
            return 0 if found.ok else 1
        elif args.command in ("drain", "undrain"):
            from mailops.ops import drain as ops_drain

            done = (ops_drain.drain(inventory, args.node, args.wait) if args.command == "drain"
                    else ops_drain.undrain(inventory, args.node))
            print(json.dumps(done.to_dict(), indent=2) if args.json else done.text())
            return 0 if done.ok else 1
        elif args.command in ("rolling-update", "restart"):
            from mailops.ops import rolling

            rolled = (rolling.rolling_update(inventory, not args.no_upgrade, args.wait)
                      if args.command == "rolling-update"
                      else rolling.restart(inventory, args.service, args.wait))
            print(json.dumps(rolled.to_dict(), indent=2) if args.json else rolled.text())
            return 0 if rolled.ok else 1
        elif args.command == "dkim":
            from mailops.core.durations import seconds
            from mailops.ops.dkim import rotate_command

            try:
                grace = seconds(args.grace, "s")
            except ValueError:
                raise MailopsError(f"--grace {args.grace!r} is not a duration\n  fix: give "
                                   "one like 7d, 12h or 30m") from None
            return rotate_command(inventory, args.domain, grace, args.json)
        elif args.command == "rebuild":
            from mailops.ops.rebuild import rebuild

            t0 = time.monotonic()
            rebuilt = rebuild(inventory, args.node, requeue=not args.no_requeue)
            if args.json:
                print(json.dumps(rebuilt.to_dict(), indent=2))
            else:
                print(rebuilt.table())
                print(f"\nrebuild: done in {time.monotonic() - t0:.1f} s")
            return 0 if rebuilt.verify_ok else 1
        elif args.command in ("backup", "restore"):
            from mailops.ops import backup as ops_backup

            t0 = time.monotonic()
            if args.command == "restore" and args.queue:
                count = ops_backup.restore_queue(inventory, args.queue, args.url, args.at)
                print(f"{args.queue}: {count} message(s) re-queued")
                return 0
            if args.command == "restore":
                res = ops_backup.restore(inventory, args.url, args.mailbox, args.at)
            elif args.action == "verify":
                res = ops_backup.verify_backup(inventory, args.source or args.url, args.at)
            else:
                res = ops_backup.backup(inventory, args.url)
            if args.json:
                print(json.dumps(res.to_dict(), indent=2))
            else:
                print(res.table())
                what = " ".join(filter(None, [args.command, getattr(args, "action", None)]))
                print(f"\n{what}: done in {time.monotonic() - t0:.1f} s")
            return 0 if getattr(res, "ok", True) else 1
        elif args.command == "plan":
            from mailops.workflows.plan import plan

            t0 = time.monotonic()
            result = plan(inventory)
            if args.json:
                print(json.dumps(result.to_dict(), indent=2))
            else:
                print(result.text())
                print("\n" + _summary("plan", result.changes, t0, "; nothing was changed"))
    except InventoryErrors as exc:
        print(exc, file=sys.stderr)
        return 2
    except MailopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; the run is safe to repeat", file=sys.stderr)
        return 130
    return 0
