"""`deploy.py move-mailbox ADDRESS --to NODE`: give a mailbox a new home.

The home node is authoritative for its mailbox, so the move copies from it:
a one-way `doveadm backup` to the new home, and from there to its pair's
other node (a stale copy found on either is removed first, not merged;
every sync takes the user's dsync lock, as replication does), then the new home is
pinned in the mail model (the entry's `home:`) and converged onto every mail
node (Postfix's transport map, Dovecot's proxy homes), the mailbox's client
sessions are kicked on every node (clients reconnect and are proxied to the
new home), and a final two-way sync brings over what arrived during the
switch. Nothing of the old home's is missing on the new pair, or the move
stops there, before the old pair's copies are removed.

Safe to re-run: each step looks at where the mailbox is now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailops.converge.run import converge
from mailops.core import progress
from mailops.core.errors import InventoryError, MailopsError
from mailops.inventory import remote
from mailops.inventory.model import Host, Inventory, load_inventory
from mailops.ops.dsync import node_sync
from mailops.site.homes import home_of, homes, pairs_of
from mailops.site.mailmodel import MAIL_FILE, load_mail_model, set_mailbox_home


@dataclass
class FolderCheck:
    folder: str
    old: int  # messages on the old home before its copy was removed
    new: dict[str, int]  # node -> messages there after the final sync
    missing: dict[str, int]  # node -> messages of the old home not there


@dataclass
class MoveResult:
    address: str
    old: str
    new: str
    steps: list[tuple[str, str, str, float]] = field(default_factory=list)  # what, where, result, s
    folders: list[FolderCheck] = field(default_factory=list)
    kicked: int = 0
    moved: bool = False

    @property
    def ok(self) -> bool:
        return not any(sum(f.missing.values()) for f in self.folders)

    def text(self) -> str:
        if not self.moved and self.old == self.new:
            return f"{self.address} already lives on {self.new}: nothing to do"
        lines = [f"move {self.address}: {self.old} -> {self.new}", "",
                 f"{'step':<34} {'where':<16} {'result':<40} {'s':>6}"]
        lines += [f"{w:<34} {h:<16} {r:<40} {t:6.1f}" for w, h, r, t in self.steps]
        if self.folders:
            nodes = list(self.folders[0].new)
            lines += ["", f"{'folder':<24} {'old home':>9} "
                      + " ".join(f"{n:>9}" for n in nodes) + f" {'missing':>8}"]
            for f in self.folders:
                lines.append(f"{f.folder:<24} {f.old:>9} "
                             + " ".join(f"{f.new[n]:>9}" for n in nodes)
                             + f" {sum(f.missing.values()):>8}")
        lines.append("")
        lines.append("nothing lost" if self.ok else
                     "MESSAGES MISSING on the new pair: the old copies were kept")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"address": self.address, "from": self.old, "to": self.new, "ok": self.ok,
                "kicked": self.kicked,
                "steps": [{"step": w, "where": h, "result": r, "seconds": round(t, 1)}
                          for w, h, r, t in self.steps],
                "folders": [{"folder": f.folder, "old": f.old, "new": f.new,
                             "missing": f.missing} for f in self.folders]}


def _run(inventory: Inventory, host: Host, command: str, what: str,
         timeout: float = 600) -> str:
    res = remote.run(inventory, host, command, timeout=timeout)
    if res.returncode != 0:
        raise _failed(host, what, res)
    return res.stdout


def _failed(host: Host, what: str, res: Any) -> MailopsError:
    return MailopsError(f"{what} failed on {host.name} (exit {res.returncode}): "
                        f"{(res.stderr or res.stdout).strip()[:400]}\n"
                        "nothing was removed; fix the cause and run the move again")


def _messages(inventory: Inventory, host: Host, address: str) -> dict[str, set[str]]:
    """folder -> message GUIDs (dsync keeps a message's GUID on every copy)."""
    out = _run(inventory, host, f"doveadm -f tab fetch -u {address} 'mailbox guid' ALL",
               f"listing {address}'s messages")
    folders: dict[str, set[str]] = {}
    for line in out.splitlines()[1:]:  # the first line names the columns
        if "\t" in line:
            folder, guid = line.rsplit("\t", 1)
            folders.setdefault(folder, set()).add(guid)
    return folders


def move_mailbox(inventory: Inventory, address: str, to: str,
                 keep_old: bool = False) -> MoveResult:
    address = address.lower()
    model = load_mail_model(inventory)
    nodes = {h.name: h for h in inventory.group("mail")}
    if to not in nodes:
        raise MailopsError(f"--to {to}: not a mail node; use one of {', '.join(nodes)}")
    current = homes(inventory, model).get(address)
    if current is None:
        file = inventory.defined_in("mailops_mailboxes", MAIL_FILE)
        raise InventoryError(file, "mailops_mailboxes", f"{address} is not a mailbox",
                             f"add `- address: {address}` there and converge first")
    target = home_of(address, pairs_of(inventory), pinned=to)
    result = MoveResult(address, current.node, to)
    if current.node == to:
        return result
    old_home, new_home = nodes[current.node], nodes[to]

    def timed(what: str, where: str, fn) -> Any:
        out, shown, seconds = progress.timed("move", where, what, fn, done="done")
        result.steps.append((what, where, shown, seconds))
        return out

    def dsync(verb: str, src: Host, dest: Host, done: str) -> str:
        res = node_sync(inventory, src, dest, address, verb)
        if res.returncode != 0:
            raise _failed(src, f"doveadm {verb}", res)
        return done

    def remove_copy(host: Host) -> str:
        """A copy of the mailbox on a node outside its pair is stale (made by
        an earlier move, or by a login there): gone, or dsync could not
        match its folders (an INBOX made apart has a GUID of its own and
        cannot be deleted)."""
        home = _run(inventory, host, f"doveadm user -f home {address}",
                    "finding the mailbox").strip()
        if not home.startswith("/var/vmail/"):
            raise MailopsError(f"{address}'s home on {host.name} is {home!r}, not under "
                               "/var/vmail: not removed")
        out = _run(inventory, host, f"doveadm replicator remove {address} >/dev/null 2>&1; "
                   f"doveadm kick {address} >/dev/null 2>&1; "
                   f"if [ -e '{home}' ]; then rm -rf -- '{home}'; echo removed; fi",
                   "removing a copy")
        return f"removed {home}" if "removed" in out else "none there"

    # 1. Copy from the old home to the new home: one way, the old home is
    #    authoritative until the switch. The new pair's other node takes its
    #    copy from the new home, never from a second source: the new home's
    #    replicator syncs that node too, and two writers into one copy can
    #    lose messages.
    fresh = [name for name in target.nodes if name not in current.nodes]
    for name in fresh:
        timed("clear a stale copy", name, lambda h=nodes[name]: remove_copy(h))
    if to in fresh:
        timed("copy from the old home", to, lambda: dsync("backup", old_home, new_home, "copied"))
    else:
        timed("sync with the new home", to, lambda: dsync("sync", old_home, new_home, "synced"))
    for name in fresh:
        if name != to:
            timed("copy from the new home", name,
                  lambda d=nodes[name]: dsync("sync", new_home, d, "synced"))

    # 2. Pin the new home in the mail model; converge the mail nodes.
    timed("pin the new home", "mail model",
          lambda: f"home: {to} in {set_mailbox_home(inventory, address, to).name}")
    inventory = load_inventory(inventory.path)  # as edited
    if homes(inventory, load_mail_model(inventory))[address].node != to:
        raise MailopsError(f"the mail model does not make {to} the home of {address} after "
                           "the edit; set `home:` in its entry by hand")
    timed("converge the mail nodes", "mail",
          lambda: f"{converge(inventory, limit='mail').changed} change(s)")

    # 3. Kick the mailbox's sessions everywhere: clients reconnect to the new home.
    def kick() -> str:
        count = 0
        for host in nodes.values():
            res = remote.run(inventory, host, f"doveadm kick {address} 2>&1; "
                             f"doveadm proxy kick {address} 2>&1; true")
            count += sum(1 for ln in res.stdout.splitlines() if address in ln.lower())
        result.kicked = count
        return f"{count} session(s) kicked"
    timed("kick the mailbox's sessions", "every node", kick)

    # 4. Final sync: what reached the old home before the switch.
    timed("final sync from the old home", to,
          lambda: dsync("sync", new_home, old_home, "synced"))
    if target.fallback:
        timed("sync to the new fallback", target.fallback,
              lambda: dsync("sync", new_home, nodes[target.fallback], "synced"))

    # 5. Check: every message of the old home is on each node of the new pair.
    before = _messages(inventory, old_home, address)
    after = {name: _messages(inventory, nodes[name], address) for name in target.nodes}
    for folder in sorted(set(before) | {f for a in after.values() for f in a}):
        old = before.get(folder, set())
        result.folders.append(FolderCheck(
            folder, len(old), {n: len(a.get(folder, set())) for n, a in after.items()},
            {n: len(old - a.get(folder, set())) for n, a in after.items()}))
    result.moved = True
    if not result.ok or keep_old:
        return result

    # 6. Remove the old pair's copies (a later move back starts clean). Their
    #    replication stops on both first: one node's replicator would
    #    otherwise make the copy just removed from the other anew.
    old_nodes = [nodes[name] for name in current.nodes if name not in target.nodes]
    for host in old_nodes:
        _run(inventory, host, f"doveadm replicator remove {address} >/dev/null 2>&1; true",
             "stopping the mailbox's replication")
    for host in old_nodes:
        timed("remove the old copy", host.name, lambda h=host: remove_copy(h))
    return result
