"""`deploy.py migrate plan --from HOST`: what moving an on-premises mail
server into the cluster involves, read off the server itself.

The legacy server (an inventory host in the group `legacy`) is read over
IMAP with its admin login acting for each user (SASL PLAIN with an
authorization id, as Cyrus and Dovecot master users allow), the way
Dovecot's imapc reads it during the sync: which mailboxes it holds, per
folder the message count, size and UIDVALIDITY; where each mailbox will
live in the cluster (its home node, or that it is not in the mail model
yet); and the DNS side of the cutover: the domain's MX as the world sees it
now, its TTL, what to lower it to now and how long to wait before the
cutover.
"""

from __future__ import annotations

import hashlib
import imaplib
import json
import re
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from mailops.core.errors import MailopsError
from mailops.core.paths import vault_file
from mailops.core.progress import step, table, timed
from mailops.dns.settings import settings as dns_settings
from mailops.inventory import remote
from mailops.inventory.model import Host, Inventory
from mailops.ops.backup import imap_name
from mailops.ops.dsync import RETRY_WAITS, TEMPFAIL
from mailops.secrets.vault import load_secrets
from mailops.secrets.wanted import MIGRATE_ADMIN_PASSWORD
from mailops.site.homes import Home, homes
from mailops.site.mailmodel import MAIL_FILE, load_mail_model
from mailops.site.moves import CUTOVER, FINISHED, SOURCE_KEY, SYNCING, Move, moves

TLS_MODES = ("none", "starttls", "imaps")
CUTOVER_TTL = 300  # seconds: the MX TTL to publish a day ahead of the cutover
TIMEOUT = 30


@dataclass(frozen=True)
class Source:
    """A legacy server as migrate reads it."""

    host: Host
    server: str  # cyrus or dovecot: how its mailboxes are listed
    domain: str  # the domain its users' mail is for
    port: int
    tls: str
    admin_user: str
    admin_password: str = field(repr=False)
    pop3_port: int = 0  # its POP3 server, whose UIDLs the sync keeps; 0: none

    def address(self, user: str) -> str:
        """A legacy login as the cluster's address: users without a domain
        get the server's."""
        return user if "@" in user else f"{user}@{self.domain}"


def source_of(inventory: Inventory, name: str) -> Source:
    """The legacy host `name` and how to read it; errors name the key and
    the fix before anything connects."""
    legacy = {h.name: h for h in inventory.group("legacy")}
    hosts_file = inventory.path / "hosts.yml"
    if name not in legacy:
        known = ", ".join(legacy) or "none"
        raise MailopsError(f"{hosts_file}: --from {name}: not a host of the group `legacy` "
                           f"(legacy hosts: {known})\n  fix: add it under "
                           "all.children.legacy.hosts, or name one of those")
    values = inventory.variables.get(name, {}).get(SOURCE_KEY, {})
    key = f"all.children.legacy.hosts.{name}.{SOURCE_KEY}"
    if not isinstance(values, dict):
        raise MailopsError(f"{hosts_file}: {key}: not a mapping\n  fix: e.g. "
                           "{server: cyrus, domain: example.org, admin_user: cyrus}")
    problems = []
    server = values.get("server", "cyrus")
    if server not in ("cyrus", "dovecot"):
        problems.append(f"{key}.server: {server!r} is not cyrus or dovecot")
    domain = values.get("domain")
    if not isinstance(domain, str) or "." not in domain:
        problems.append(f"{key}.domain: the domain its users' mail is for is missing "
                        "(e.g. example.org)")
    tls = values.get("tls", "none")
    if tls not in TLS_MODES:
        problems.append(f"{key}.tls: {tls!r} is not one of {', '.join(TLS_MODES)}")
    port = values.get("port", 993 if tls == "imaps" else 143)
    if not isinstance(port, int) or not 0 < port < 65536:
        problems.append(f"{key}.port: {port!r} is not a port number")
    pop3_port = values.get("pop3_port", 995 if tls == "imaps" else 110)
    if not isinstance(pop3_port, int) or not 0 <= pop3_port < 65536:
        problems.append(f"{key}.pop3_port: {pop3_port!r} is not a port number (0: no POP3)")
    admin = values.get("admin_user", "cyrus" if server == "cyrus" else None)
    if not isinstance(admin, str) or not admin:
        problems.append(f"{key}.admin_user: the admin (master) login is missing")
    if problems:
        raise MailopsError(f"{hosts_file}: " + "\n".join(problems)
                           + "\n  fix: set these under the legacy host; nothing was touched")
    password = _vault_extra(inventory).get(MIGRATE_ADMIN_PASSWORD)
    if not password:
        raise MailopsError(f"{inventory.path}/group_vars/all/vault.yml: vault_extra."
                           f"{MIGRATE_ADMIN_PASSWORD} is missing: the password of {admin} on "
                           f"{name}\n  fix: ansible-vault edit that file and add it under "
                           "vault_extra")
    return Source(legacy[name], server, domain, port, tls, admin, password, pop3_port)


def _vault_extra(inventory: Inventory) -> dict[str, Any]:
    vault = vault_file(inventory.path)
    if not vault.exists():
        return {}
    return dict(load_secrets(vault, inventory.vault_password_file).extra)


def _context() -> ssl.SSLContext:
    # A legacy box's certificate is rarely one the controller can verify
    # (self-signed, or for another name); the session is still encrypted.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def connect(source: Source, user: str | None = None) -> imaplib.IMAP4:
    """An IMAP session on the legacy server: the admin itself (user None) or
    the admin acting for `user`."""
    host = str(source.host.address)
    try:
        if source.tls == "imaps":
            imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(host, source.port, ssl_context=_context(),
                                                    timeout=TIMEOUT)
        else:
            imap = imaplib.IMAP4(host, source.port, timeout=TIMEOUT)
            if source.tls == "starttls":
                imap.starttls(_context())
    except (OSError, imaplib.IMAP4.error) as e:
        raise MailopsError(f"{source.host.name} ({host}:{source.port}): no IMAP server "
                           f"answers: {e}\n  fix: check that it runs and that the port "
                           f"and tls of {SOURCE_KEY} are right") from None
    creds = f"{user or ''}\0{source.admin_user}\0{source.admin_password}".encode()
    try:
        imap.authenticate("PLAIN", lambda _: creds)
    except imaplib.IMAP4.error as e:
        imap.shutdown()
        who = f"{source.admin_user} acting for {user}" if user else source.admin_user
        raise MailopsError(f"{source.host.name}: login as {who} refused ({e})\n  fix: "
                           + (f"check that {user} exists there, " if user else "")
                           + f"check {MIGRATE_ADMIN_PASSWORD} in the vault and that "
                           f"{source.admin_user} is an admin (Cyrus `admins:`, Dovecot a "
                           "master user)") from None
    return imap


_LIST = re.compile(rb'^\((?P<flags>[^)]*)\) (?P<sep>"[^"]*"|NIL) (?P<name>.+)$')


def _listed(data: list[Any]) -> list[tuple[str, str, str]]:
    """LIST replies as (flags, separator, name) with the name unquoted."""
    out = []
    for item in data:
        if isinstance(item, tuple):  # a literal name
            head, name = item[0], item[1]
            found = _LIST.match(head.rsplit(b" {", 1)[0] + b" x")
            if found:
                out.append((found["flags"].decode(), found["sep"].decode().strip('"'),
                            name.decode()))
            continue
        if not item:
            continue
        found = _LIST.match(item)
        if found:
            name = found["name"].decode()
            if name.startswith('"'):
                name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            out.append((found["flags"].decode(), found["sep"].decode().strip('"'), name))
    return out


def quoted(name: str) -> str:
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def list_users(inventory: Inventory, source: Source) -> list[str]:
    """The server's users: Cyrus's from the admin's view of every mailbox,
    Dovecot's from its userdb."""
    if source.server == "dovecot":
        # A Dovecot master user logs in only as somebody else, and sees that
        # user's folders: its userdb lists the users (over SSH, as root).
        res = remote.run(inventory, source.host, "doveadm user '*'")
        if res.returncode != 0:
            raise MailopsError(f"{source.host.name}: `doveadm user '*'` failed: "
                               f"{res.stderr.strip()[:300]}\n  fix: its userdb must be able to "
                               "list users (passwd-file, sql or ldap with an iterate query)")
        users = sorted({line.strip() for line in res.stdout.splitlines() if line.strip()})
        if users:
            connect(source, users[0]).logout()  # the admin login works, or a clear error now
        return users
    imap = connect(source)  # the admin login works, or a clear error now
    try:
        typ, data = imap.list('""', "user.%")
        prefix = "user."
        if typ != "OK":
            raise MailopsError(f"{source.host.name}: LIST refused for {source.admin_user}")
        return sorted(name.removeprefix(prefix) for _, _, name in _listed(data)
                      if name.startswith(prefix))
    finally:
        imap.logout()


@dataclass
class FolderStat:
    name: str  # as IMAP names it on the legacy server (modified UTF-7)
    messages: int
    size: int
    uidvalidity: int

    @property
    def display(self) -> str:
        return imap_name(self.name) if "&" in self.name else self.name


def folders_of(source: Source, user: str) -> list[FolderStat]:
    """Every folder of a user, with counts, sizes and UIDVALIDITY, as the
    user's own session sees it."""
    imap = connect(source, user)
    try:
        out = []
        for name, _, count in _each_folder(imap, source, user):
            uidvalidity = int(imap.untagged_responses.get("UIDVALIDITY", [b"0"])[-1])
            size = 0
            if count:
                typ, sizes = imap.fetch("1:*", "(RFC822.SIZE)")
                size = sum(int(m[1]) for s in sizes if isinstance(s, bytes)
                           and (m := re.search(rb"RFC822\.SIZE (\d+)", s)))
            out.append(FolderStat(name, count, size, uidvalidity))
        return out
    finally:
        imap.logout()


def _each_folder(imap: imaplib.IMAP4, source: Source,
                 user: str) -> Iterator[tuple[str, str, int]]:
    """Every selectable folder of the session's user, selected read-only in
    turn: (name, hierarchy separator, message count)."""
    typ, data = imap.list('""', "*")
    if typ != "OK":
        raise MailopsError(f"{source.host.name}: LIST refused for {user}")
    for flags, sep, name in _listed(data):
        if "\\noselect" in flags.lower():
            continue
        typ, selected = imap.select(quoted(name), readonly=True)
        if typ != "OK":
            raise MailopsError(f"{source.host.name}: {user}'s {name} does not open: "
                               f"{selected}")
        yield name, sep, int(selected[0])
        imap.close()


@dataclass
class MailboxPlan:
    user: str  # the login on the legacy server
    address: str  # the mailbox in the cluster
    home: str | None  # its home node; None: not in the mail model yet
    folders: list[FolderStat]

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.folders)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.folders)


@dataclass
class MigratePlan:
    source: str
    server: str
    domain: str
    mailboxes: list[MailboxPlan]
    mx: list[str]  # the domain's MX now, as the deployment's name server answers
    mx_ttl: int | None
    dns_changes: list[str]
    advice: list[str]

    def text(self) -> str:
        rows = [(m.user, m.address, m.home or "NOT IN THE MAIL MODEL", f.display,
                 f.messages, _size(f.size), f.uidvalidity)
                for m in self.mailboxes for f in m.folders]
        lines = [f"migrate plan: {self.source} ({self.server}) -> the cluster, "
                 f"domain {self.domain}", "",
                 table(("user", "mailbox", "home", "folder", "messages", "size",
                        "uidvalidity"), rows), "",
                 f"{len(self.mailboxes)} mailbox(es), "
                 f"{sum(m.messages for m in self.mailboxes)} messages, "
                 f"{_size(sum(m.size for m in self.mailboxes))}", "",
                 f"MX of {self.domain} now: {', '.join(self.mx) or '(none)'}"
                 + (f" (TTL {self.mx_ttl} s)" if self.mx_ttl is not None else ""),
                 "the cutover will:", *(f"  {c}" for c in self.dns_changes),
                 "now:", *(f"  {a}" for a in self.advice)]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "server": self.server, "domain": self.domain,
                "mailboxes": [{"user": m.user, "address": m.address, "home": m.home,
                               "messages": m.messages, "size": m.size,
                               "folders": [{"name": f.name, "display": f.display,
                                            "messages": f.messages, "size": f.size,
                                            "uidvalidity": f.uidvalidity}
                                           for f in m.folders]}
                              for m in self.mailboxes],
                "mx": self.mx, "mx_ttl": self.mx_ttl, "dns_changes": self.dns_changes,
                "advice": self.advice}


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _mx_now(inventory: Inventory, domain: str) -> tuple[list[str], int | None]:
    """The domain's MX as the deployment's name server answers, and its TTL."""
    import dns.exception
    import dns.resolver

    cfg = dns_settings(inventory)
    server = cfg.rfc2136_server
    if not server:
        return [], None
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [server]
    res.port = cfg.rfc2136_port
    res.lifetime = 5
    try:
        answer = res.resolve(domain, "MX")
    except (OSError, dns.exception.DNSException):
        return [], None
    return sorted(str(r.exchange).rstrip(".") for r in answer), answer.rrset.ttl


def plan(inventory: Inventory, source_name: str) -> MigratePlan:
    source = source_of(inventory, source_name)
    step("migrate", source.host.name, f"listing the users ({source.admin_user})")
    users = list_users(inventory, source)
    model = load_mail_model(inventory)
    home_of = {a: h.node for a, h in homes(inventory, model).items()}
    boxes = []
    for user in users:
        step("migrate", source.host.name, f"reading {user}'s folders")
        address = source.address(user)
        boxes.append(MailboxPlan(user, address, home_of.get(address.lower()),
                                 folders_of(source, user)))
    mx, ttl = _mx_now(inventory, source.domain)
    changes = []
    served = source.domain in model.domains
    if not served:
        changes.append(f"first: add {source.domain} to mailops_domains (mail model) and "
                       "`deploy.py up`, so the cluster takes its mail")
    missing = [b.address for b in boxes if b.home is None]
    if missing:
        changes.append(f"first: add {len(missing)} mailbox(es) to mailops_mailboxes: "
                       + ", ".join(missing))
    changes += [f"MX {source.domain} -> {model.service_name} (was {', '.join(mx) or 'none'})",
                f"SPF, DKIM ({model.dkim_selector}._domainkey) and DMARC of {source.domain} "
                "as for every served domain (deploy.py dns plan shows them)",
                f"{source.host.name} then forwards what still reaches it to the cluster"]
    advice = []
    if ttl is not None and ttl > CUTOVER_TTL:
        advice.append(f"lower the MX TTL of {source.domain} from {ttl} s to {CUTOVER_TTL} s, "
                      f"then wait {ttl} s (the old TTL) before the cutover")
    elif ttl is not None:
        advice.append(f"the MX TTL is {ttl} s: the cutover can follow the sync at once")
    else:
        advice.append(f"no MX of {source.domain} found at the deployment's name server: "
                      f"lower its TTL to {CUTOVER_TTL} s where it is published")
    advice.append(f"run `deploy.py migrate sync --from {source.host.name}` (repeatable) "
                  "until the parity report is equal")
    return MigratePlan(source.host.name, source.server, source.domain, boxes, mx, ttl,
                       changes, advice)



# ------------------------------------------------------------------ sync

MIGRATE_CONF = "/etc/dovecot/mailops-migrate-{source}.conf"  # root only: the admin password
# Exits a re-run settles: 2, doveadm's "run again"; 75 (TEMPFAIL), a locked
# mailbox, or pop3_migration meeting a message that arrived between its POP3
# listing and the IMAP one.
RUN_AGAIN = {2, TEMPFAIL}


def imapc_conf(source: Source) -> str:
    """A doveadm configuration that reads the legacy server: the node's own
    configuration, plus imapc with the admin (master) login."""
    ssl_mode = {"none": "no", "starttls": "starttls", "imaps": "imaps"}[source.tls]
    lines = ["# Managed by mailops (migrate): how this node reads "
             f"{source.host.name}. Root only: it holds the admin's password.",
             "!include /etc/dovecot/dovecot.conf",
             f"imapc_host = {source.host.address}",
             f"imapc_port = {source.port}",
             f"imapc_ssl = {ssl_mode}",
             # A legacy box's certificate is rarely one a node can verify.
             "imapc_ssl_verify = no",
             f"imapc_master_user = {source.admin_user}",
             f"imapc_password = {source.admin_password}",
             "imapc_features = rfc822.size fetch-headers",
             "mail_prefetch_count = 20"]
    if source.server == "cyrus":
        # Cyrus without the alternate namespace shows folders under INBOX.
        lines.append("imapc_list_prefix = INBOX")
    if source.pop3_port:
        # POP3 clients keep their UIDLs: pop3_migration reads each INBOX
        # message's UIDL from the legacy POP3 server (matched by header)
        # and the sync stores it, which Dovecot's POP3 then answers with.
        pop3_ssl = {"none": "no", "starttls": "starttls", "imaps": "pop3s"}[source.tls]
        lines += ["mail_plugins = $mail_plugins pop3_migration",
                  f"pop3c_host = {source.host.address}",
                  f"pop3c_port = {source.pop3_port}",
                  f"pop3c_ssl = {pop3_ssl}",
                  "pop3c_ssl_verify = no",
                  f"pop3c_master_user = {source.admin_user}",
                  f"pop3c_password = {source.admin_password}",
                  "namespace pop3_migration {",
                  "  prefix = POP3-MIGRATION-NS/",
                  "  separator = /",
                  "  location = pop3c:",
                  "  list = no",
                  "  hidden = yes",
                  "}",
                  "plugin {",
                  "  pop3_migration_mailbox = POP3-MIGRATION-NS/INBOX",
                  "}"]
    return "\n".join(lines) + "\n"


@dataclass
class SyncRow:
    user: str
    address: str
    node: str
    result: str  # ok, or what went wrong
    tries: int
    seconds: float


def _sync_user(inventory: Inventory, source: Source, node: Host, user: str,
               address: str, merge: bool = False) -> tuple[str, int]:
    """One user pulled from the legacy server into its home node (`doveadm
    backup -R` over imapc: a mailbox that is still empty takes the legacy
    folders' UIDVALIDITY and UIDs). Niced, and one user at a time: the old
    server stays usable. merge (after the cutover, when the cluster takes
    new mail itself): `doveadm sync -1 -R`, which brings what is new on the
    legacy server and deletes nothing in the cluster."""
    conf = MIGRATE_CONF.format(source=source.host.name)
    pop3 = f"-o pop3c_user={user} " if source.pop3_port else ""
    verb = "sync -1" if merge else "backup"
    cmd = (f"nice -n 10 doveadm -c {conf} -o imapc_user={user} {pop3}{verb} -R -u {address} "
           "imapc:")
    for tries, wait in enumerate((*RETRY_WAITS, 0), 1):
        res = remote.run(inventory, node, cmd, timeout=3600)
        if res.returncode == 0:
            return "ok", tries
        if not _answers(source):
            # What it had copied stays; the next run goes on from there.
            return (f"FAILED: {source.host.name} ({source.host.address}:{source.port}) "
                    "stopped answering; run sync again once it is back"), tries
        last = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["(no output)"]
        if res.returncode not in RUN_AGAIN:
            return f"FAILED (doveadm exit {res.returncode}): {last[0][-200:]}", tries
        if not wait:
            break
        time.sleep(wait)
    return (f"FAILED (doveadm exit {res.returncode} after {tries} tries; run sync again): "
            f"{last[0][-200:]}"), tries


def _answers(source: Source) -> bool:
    """Whether the legacy IMAP server accepts connections now."""
    try:
        socket.create_connection((str(source.host.address), source.port), timeout=5).close()
        return True
    except OSError:
        return False


SASLDB = "/etc/sasldb2"  # where Cyrus keeps its users' passwords (sasl_sasldb_path)


def parse_db_dump(text: str) -> dict[str, str]:
    """`db_dump -p` of a sasldb: user -> password (its userPassword
    entries; keys are user NUL realm NUL property, printed with \\XX escapes)."""
    def unescape(line: str) -> bytes:
        out, i, raw = bytearray(), 0, line[1:]  # each record line starts with a space
        while i < len(raw):
            if raw[i] == "\\" and raw[i + 1:i + 2] == "\\":
                out.append(0x5C)
                i += 2
            elif raw[i] == "\\":
                out.append(int(raw[i + 1:i + 3], 16))
                i += 3
            else:
                out += raw[i].encode()
                i += 1
        return bytes(out)

    body = text.split("HEADER=END\n", 1)[-1].split("DATA=END", 1)[0].splitlines()
    out = {}
    for key, value in zip(body[::2], body[1::2], strict=False):
        parts = unescape(key).split(b"\0")
        if len(parts) == 3 and parts[2] == b"userPassword":
            out[parts[0].decode()] = unescape(value).decode()
    return out


_PASSDB = re.compile(r"^passdb \{\n(?P<body>.*?)^\}", re.M | re.S)


def passwd_files(doveconf: str) -> list[tuple[str, str]]:
    """The user passwd-files of a Dovecot configuration (`doveconf -n`), as
    (path, default scheme); master passdbs and paths with variables left out."""
    out = []
    for block in _PASSDB.finditer(doveconf):
        body = dict(re.findall(r"^\s*(\w+) = (.*)$", block["body"], re.M))
        if body.get("driver") != "passwd-file" or body.get("master") == "yes":
            continue
        args = body.get("args", "").split()
        scheme = next((a.split("=", 1)[1] for a in args if a.startswith("scheme=")), "CRYPT")
        path = next((a for a in args if "=" not in a), "")
        if path and "%" not in path:
            out.append((path, scheme))
    return out


def parse_passwd_file(text: str, scheme: str) -> dict[str, str]:
    """user -> Dovecot hash ({SCHEME}...) of a passwd-file."""
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#") or ":" not in line:
            continue
        user, hashed = line.split(":", 2)[:2]
        if hashed:
            out[user] = hashed if hashed.startswith("{") else f"{{{scheme}}}{hashed}"
    return out


@dataclass
class PasswordRow:
    user: str
    address: str
    result: str  # carried over, unchanged, or why the cluster's own stays


def carry_passwords(inventory: Inventory, source: Source,
                    users: list[str]) -> tuple[list[PasswordRow], bool]:
    """The users' legacy passwords into the vault, where the legacy server
    keeps them readable (Cyrus's sasldb holds them in clear; a Dovecot
    passwd-file holds hashes Dovecot takes as they are), so they log in to
    the cluster as before; the others keep the password mailops
    generated (read it with `ansible-vault view`). No password is printed.
    Returns the rows and whether the vault changed (a converge applies it)."""
    from mailops.secrets.vault import set_mailbox_passwords

    model = load_mail_model(inventory)
    known: dict[str, str] = {}  # clear text (Cyrus)
    hashes: dict[str, str] = {}  # Dovecot hashes, usable as they are
    why = "the legacy server keeps no readable passwords: the generated one stays"
    if source.server == "cyrus":
        res = remote.run(inventory, source.host, f"db_dump -p {SASLDB}")
        if res.returncode == 0:
            known = parse_db_dump(res.stdout)
        else:
            why = (f"{SASLDB} could not be read (db_dump from db-util): the generated "
                   "password stays")
    else:
        conf = remote.run(inventory, source.host, "doveconf -n")
        for path, scheme in passwd_files(conf.stdout):
            res = remote.run(inventory, source.host, f"cat {path}")
            if res.returncode == 0:
                hashes |= parse_passwd_file(res.stdout, scheme)
        if not hashes:
            why = ("no passwd-file passdb with the users' hashes found (doveconf -n): the "
                   "generated password stays")
    wanted: dict[str, str] = {}
    wanted_hashes: dict[str, str] = {}
    rows, carried = [], []
    for user in users:
        address = source.address(user).lower()
        found = next((n for n in (user, address) if n in known or n in hashes), None)
        if model.mailbox(address).password_hash:
            rows.append(PasswordRow(user, address, "the mail model sets password_hash: kept"))
        elif found in known:
            wanted[address] = known[found]
            carried.append((user, address))
        elif found in hashes:
            wanted_hashes[address] = hashes[found]
            carried.append((user, address))
        else:
            rows.append(PasswordRow(user, address, why))
    changed = set(set_mailbox_passwords(vault_file(inventory.path),
                                        inventory.vault_password_file, wanted, wanted_hashes))
    rows += [PasswordRow(u, a, "carried over" + ("" if a in changed else " (unchanged)"))
             for u, a in carried]
    return sorted(rows, key=lambda r: r.address), bool(changed)


def move_of(inventory: Inventory, source: Source) -> Move:
    return next(m for m in moves(inventory) if m.host == source.host.name)


def sync(inventory: Inventory,
         source_name: str) -> tuple[list[SyncRow], Parity, list[PasswordRow]]:
    """Every legacy mailbox pulled into its home node (before the cutover,
    with its password, where it can be carried over), then the parity."""
    source = source_of(inventory, source_name)
    step("migrate", source.host.name, f"listing the users ({source.admin_user})")
    users = list_users(inventory, source)
    home = _homes_of(inventory, source, users)
    merge = move_of(inventory, source).stage != SYNCING
    passwords: list[PasswordRow] = []
    if not merge:
        step("migrate", source.host.name, "carrying the users' passwords over")
        passwords, changed = carry_passwords(inventory, source, users)
        if changed:
            step("migrate", "mail", "converging the mail nodes (the carried passwords)")
            _converge_mail(inventory)
    return (*_sync_all(inventory, source, users, home, merge), passwords)


def _sync_all(inventory: Inventory, source: Source, users: list[str], home: dict[str, Home],
              merge: bool) -> tuple[list[SyncRow], Parity]:
    nodes = {h.name: h for h in inventory.group("mail")}
    conf = MIGRATE_CONF.format(source=source.host.name)
    written: set[str] = set()
    rows = []
    # What the legacy server holds as the sync begins: mail keeps arriving
    # there during a sync, so the parity that follows checks that all of
    # this is in the cluster, not that both sides are equal afterwards.
    before = {}
    for user in users:
        step("migrate", source.host.name, f"reading {user}'s messages")
        before[user] = _legacy_messages(source, user)
    for user in users:
        address = source.address(user).lower()
        t0 = time.monotonic()
        result, tries, used = "FAILED: no node of its pair answers", 0, "-"
        for name in home[address].nodes:
            node = nodes[name]
            if name not in written:
                res = remote.run(inventory, node, f"umask 077 && cat > {conf}.new && "
                                 f"mv {conf}.new {conf}", stdin=imapc_conf(source))
                if res.returncode != 0:
                    continue
                written.add(name)
            step("migrate", name, f"{user} -> {address}")
            result, tries = _sync_user(inventory, source, node, user, address, merge)
            used = name
            break
        rows.append(SyncRow(user, address, used, result, tries, time.monotonic() - t0))
    return rows, parity(inventory, source, users, home, contained=True, legacy_read=before,
                        uids_count=not merge)


def _homes_of(inventory: Inventory, source: Source, users: list[str]) -> dict[str, Home]:
    """Each legacy user's home in the cluster; an error naming the fix while
    one is not in the mail model (before anything is copied or read)."""
    home = homes(inventory, load_mail_model(inventory))
    missing = [source.address(u) for u in users if source.address(u).lower() not in home]
    if missing:
        raise MailopsError(
            f"{inventory.path}/group_vars/all/{MAIL_FILE}: mailops_mailboxes: "
            f"{', '.join(missing)} not in the mail model\n  fix: add them (and "
            f"{source.domain} to mailops_domains), `deploy.py up`, then sync again; nothing "
            "was copied")
    return home


# ---------------------------------------------------------------- parity

@dataclass
class FolderParity:
    user: str
    folder: str  # as the cluster names it (UTF-8, "/" between levels)
    legacy: int
    cluster: int
    missing: int  # messages of the legacy folder not in the cluster's
    extra: int  # messages in the cluster's folder not in the legacy one
    flags_differ: int

    contained: bool = False  # after the cutover: new mail in the cluster is no difference
    uidvalidity_kept: bool = True  # the cluster's folder has the legacy one's UIDVALIDITY
    uids_differ: int = 0  # legacy messages whose UID is not theirs in the cluster
    # After the cutover a message that reached the legacy server late may
    # get a new UID (the cluster has used its number since): shown, not a
    # difference then.
    uids_count: bool = True

    @property
    def equal(self) -> bool:
        uids = not self.uids_count or (self.uidvalidity_kept and not self.uids_differ)
        if self.contained:
            return not (self.missing or self.flags_differ) and uids
        return not (self.missing or self.extra or self.flags_differ) and uids \
            and self.legacy == self.cluster


@dataclass
class Parity:
    folders: list[FolderParity]

    @property
    def equal(self) -> bool:
        return all(f.equal for f in self.folders)

    def table(self) -> str:
        rows = [(f.user, f.folder, f.legacy, f.cluster, f.missing, f.extra, f.flags_differ,
                 ("kept" if f.uidvalidity_kept and not f.uids_differ else
                  "NEW UIDVALIDITY" if not f.uidvalidity_kept else f"{f.uids_differ} moved"),
                 "equal" if f.equal else "DIFFERENT") for f in self.folders]
        contained = any(f.contained for f in self.folders)
        verdict = ("every folder is equal" if self.equal else
                   f"{sum(not f.equal for f in self.folders)} folder(s) differ")
        if contained:
            verdict += (" (every message the legacy server held is in the cluster with its "
                        "flags; `extra` is mail that came since)")
        return "\n".join([table(("user", "folder", "legacy", "cluster", "missing", "extra",
                                 "flags differ", "uids", "parity"), rows), "",
                          f"parity: {verdict}"])

    def to_dict(self) -> dict[str, Any]:
        return {"equal": self.equal, "folders": [{**f.__dict__, "equal": f.equal}
                                                  for f in self.folders]}


def identity(msgid: str, header: bytes) -> str:
    """A message's identity: its Message-ID, or its header's digest."""
    msgid = msgid.strip()
    if msgid:
        return msgid
    text = header.replace(b"\r\n", b"\n").rstrip(b"\n")
    return "sha256:" + hashlib.sha256(text).hexdigest()


def cluster_name(source: Source, name: str, sep: str) -> str:
    """A legacy folder's name as the cluster names it."""
    if source.server == "cyrus" and name.upper().startswith("INBOX" + sep):
        name = name[len("INBOX") + len(sep):]
    return "/".join(imap_name(part) if "&" in part else part for part in name.split(sep))


@dataclass
class FolderRead:
    """One side's folder as read for the parity."""
    messages: Counter = field(default_factory=Counter)  # (identity, flags) -> count
    uidvalidity: int = 0
    uids: dict[int, str] = field(default_factory=dict)  # UID -> identity


def _legacy_messages(source: Source, user: str) -> dict[str, FolderRead]:
    """folder (cluster naming) -> what it holds, read over IMAP."""
    imap = connect(source, user)
    out: dict[str, FolderRead] = {}
    try:
        for name, sep, count in _each_folder(imap, source, user):
            got = FolderRead(uidvalidity=int(imap.untagged_responses.get(
                "UIDVALIDITY", [b"0"])[-1]))
            typ, items = (imap.fetch("1:*", "(UID FLAGS BODY.PEEK[HEADER])") if count
                          else ("OK", []))
            for item in items or []:
                if not isinstance(item, tuple):
                    continue
                found = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                mflags = " ".join(sorted(set((found[1] if found else b"").decode().split())
                                         - {"\\Recent"}))
                msgid = re.search(rb"(?im)^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", item[1])
                ident = identity(msgid[1].decode(errors="replace") if msgid else "", item[1])
                got.messages[(ident, mflags)] += 1
                if uid := re.search(rb"UID (\d+)", item[0]):
                    got.uids[int(uid[1])] = ident
            out[cluster_name(source, name, sep or ".")] = got
    finally:
        imap.logout()
    return out


def _cluster_messages(inventory: Inventory, node: Host, address: str) -> dict[str, FolderRead]:
    res = remote.run(inventory, node, f"doveadm -f json fetch -u {address} "
                     "'mailbox uid flags hdr.message-id hdr' all", timeout=900)
    if res.returncode != 0:
        raise MailopsError(f"{node.name}: reading {address} failed: {res.stderr.strip()[:300]}")
    out: dict[str, FolderRead] = {}
    status = remote.run(inventory, node, f"doveadm -f json mailbox status -u {address} "
                        "uidvalidity '*'")
    for box in json.loads(status.stdout or "[]") if status.returncode == 0 else []:
        out[box["mailbox"]] = FolderRead(uidvalidity=int(box.get("uidvalidity") or 0))
    for m in json.loads(res.stdout or "[]"):
        flags = " ".join(sorted(set(m["flags"].split()) - {"\\Recent"}))
        ident = identity(m["hdr.message-id"], m["hdr"].encode())
        got = out.setdefault(m["mailbox"], FolderRead())
        got.messages[(ident, flags)] += 1
        got.uids[int(m["uid"])] = ident
    return out


def parity(inventory: Inventory, source: Source, users: list[str],
           home: dict[str, Home] | None = None, contained: bool = False,
           legacy_read: dict[str, dict[str, FolderRead]] | None = None,
           uids_count: bool = True) -> Parity:
    """Per user and folder: counts, the identities (Message-ID, or a header
    digest) and flags compared, legacy against the home node. contained:
    mail the cluster has beyond the legacy server's is no difference (it
    came since). legacy_read: the legacy side as read earlier (before a
    sync), instead of now."""
    home = home if home is not None else _homes_of(inventory, source, users)
    nodes = {h.name: h for h in inventory.group("mail")}
    folders = []
    for user in users:
        address = source.address(user).lower()
        step("migrate", source.host.name, f"parity of {user}")
        legacy = (legacy_read or {}).get(user)
        if legacy is None:
            legacy = _legacy_messages(source, user)
        cluster: dict[str, FolderRead] | None = None
        errors = []
        for name in home[address].nodes:
            try:
                cluster = _cluster_messages(inventory, nodes[name], address)
                break
            except MailopsError as e:
                errors.append(str(e))
        if cluster is None:
            raise MailopsError(f"{address}: no node of its pair could be read:\n"
                               + "\n".join(errors))
        for folder in sorted(set(legacy) | set(cluster)):
            if folder not in legacy and not cluster[folder].messages:
                continue  # an empty folder the cluster makes for every mailbox
            old, new = legacy.get(folder, FolderRead()), cluster.get(folder, FolderRead())
            result = compare_folder(user, folder, old.messages, new.messages, contained)
            if folder in legacy and folder in cluster:
                result.uidvalidity_kept = old.uidvalidity == new.uidvalidity
                result.uids_differ = sum(new.uids.get(uid) != ident
                                         for uid, ident in old.uids.items())
            result.uids_count = uids_count
            folders.append(result)
    return Parity(folders)


def compare_folder(user: str, folder: str, legacy: Counter, cluster: Counter,
                   contained: bool = False) -> FolderParity:
    """One folder's parity from both sides' Counters of (identity, flags):
    identities compared as multisets (a Message-ID twice must be there
    twice), then, of the matched ones, how many differ in flags."""
    ids_legacy: Counter = Counter()
    for (ident, _), n in legacy.items():
        ids_legacy[ident] += n
    ids_cluster: Counter = Counter()
    for (ident, _), n in cluster.items():
        ids_cluster[ident] += n
    matched = sum((ids_legacy & ids_cluster).values())
    same_flags = sum((legacy & cluster).values())
    return FolderParity(user, folder, sum(legacy.values()), sum(cluster.values()),
                        sum((ids_legacy - ids_cluster).values()),
                        sum((ids_cluster - ids_legacy).values()), matched - same_flags,
                        contained)


# --------------------------------------------------------------- cutover

CLIENT_PORTS = (110, 143, 465, 587, 993, 995, 4190)  # logins; 25 (MX) stays open
NFT_TABLE = "mailops_migrate"
MOVED_MAP = "/etc/postfix/mailops-moved"


@dataclass
class StepRow:
    step: str
    target: str
    result: str
    seconds: float


@dataclass
class MoveReport:
    """What a cutover or finish did, step by step."""
    action: str
    source: str
    domain: str
    steps: list[StepRow] = field(default_factory=list)
    parity: Parity | None = None
    window: float | None = None  # cutover: seconds during which no client could log in
    summary: dict[str, Any] = field(default_factory=dict)
    dns_plans: list[str] = field(default_factory=list)  # what the DNS step changed
    ok: bool = False

    def run(self, name: str, target: str, fn) -> Any:
        value, shown, seconds = timed("migrate", target, name, fn)
        self.steps.append(StepRow(name, target, shown, seconds))
        return value

    def text(self) -> str:
        lines = [table(("step", "on", "result", "s"),
                       [(r.step, r.target, r.result, f"{r.seconds:.1f}") for r in self.steps])]
        for plan in self.dns_plans:
            lines += ["", plan]
        if self.parity is not None:
            lines += ["", self.parity.table()]
        if self.summary:
            lines += ["", table(("", ""), list(self.summary.items()))]
        if self.window is not None:
            lines += ["", f"client logins were refused for {self.window:.1f} s "
                      f"({self.source} shut to clients until the cluster's records were "
                      "published)"]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "source": self.source, "domain": self.domain,
                "ok": self.ok, "window": self.window, "summary": self.summary,
                "dns_plans": self.dns_plans,
                "steps": [r.__dict__ for r in self.steps],
                "parity": self.parity.to_dict() if self.parity else None}


def client_firewall_rules(allowed: list[str]) -> str:
    ports = ", ".join(str(p) for p in CLIENT_PORTS)
    return "\n".join([
        # Declared, emptied and refilled in one transaction: re-runs replace it.
        f"table inet {NFT_TABLE}", f"delete table inet {NFT_TABLE}",
        f"table inet {NFT_TABLE} {{",
        "  set allowed { type ipv4_addr; elements = { " + ", ".join(allowed) + " } }",
        "  chain input {",
        "    type filter hook input priority 0; policy accept;",
        '    iif "lo" accept',
        # Every packet, not only new connections: open sessions end too.
        f"    meta nfproto ipv4 tcp dport {{ {ports} }} ip saddr != @allowed "
        "reject with tcp reset",
        f"    meta nfproto ipv6 tcp dport {{ {ports} }} reject with tcp reset",
        "  }", "}", ""])


def shut_to_clients(inventory: Inventory, source: Source) -> str:
    """The legacy server refuses every client login (IMAP, POP3, submission,
    sieve; open sessions are cut), except from the cluster's mail nodes and
    this controller, which the final sync and the parity need. Port 25
    stays open: mail still arriving is relayed to the cluster."""
    host = source.host
    who = remote.run(inventory, host, "echo ${SSH_CLIENT%% *}; command -v nft")
    lines = who.stdout.split()
    if who.returncode != 0 or len(lines) < 2:
        raise MailopsError(f"{host.name}: nftables (nft) is not installed: the cutover shuts "
                           "the server to clients with it\n  fix: `apt install nftables` on "
                           f"{host.name}, then run the cutover again; nothing was changed")
    allowed = sorted({str(h.address) for h in inventory.group("mail")} | {lines[0]})
    res = remote.run(inventory, host, "nft -f -", stdin=client_firewall_rules(allowed))
    if res.returncode != 0:
        raise MailopsError(f"{host.name}: nft refused the rules: {res.stderr.strip()[:300]}")
    return f"logins refused except from {', '.join(allowed)}"


# Waits until deliveries begun before the reload (time $t) have ended: at
# most 60 s.
_WAIT_BEGUN = [
    "for i in $(seq 120); do",
    "  postqueue -j | grep -E '\"queue_name\": ?\"(active|incoming)\"' "
    "| grep -oE '\"arrival_time\": ?[0-9]+' "
    "| awk -F: -v t=$t '$2 <= t {found = 1} END {exit found}' && break",
    "  sleep 0.5",
    "done"]


def _hold_script() -> str:
    """The legacy Postfix stops delivering into its own mailboxes (its local
    transports deferred: mail queues there), so the final sync reads a
    mailbox nothing changes any more."""
    return "\n".join([
        "set -e",
        "cd /etc/postfix",
        # What it was, once: the first cutover run's view, for a way back.
        "[ -e mailops-premove.cf ] || postconf -n > mailops-premove.cf",
        "held=$(for p in virtual_transport mailbox_transport local_transport; do "
        "postconf -h $p | cut -d: -f1; done | grep -v '^$' | grep -vx smtp | sort -u "
        "| paste -sd' ')",
        'postconf -e "defer_transports = $held"',
        "t=$(date +%s)",
        "postfix reload >/dev/null 2>&1 || systemctl reload postfix",
        *_WAIT_BEGUN,
        'echo "$held"', ""])


def _relay_script(domain: str, nexthop: str) -> str:
    return "\n".join([
        "set -e",
        "cd /etc/postfix",
        "[ -e mailops-premove.cf ] || postconf -n > mailops-premove.cf",
        f"printf '%s smtp:%s\\n' '{domain}' '{nexthop}' > {MOVED_MAP}.new",
        f"mv {MOVED_MAP}.new {MOVED_MAP}",
        'cur=$(postconf -h transport_maps)',
        f'case "$cur" in *{MOVED_MAP}*) ;; *) postconf -e '
        f'"transport_maps = texthash:{MOVED_MAP}${{cur:+, $cur}}";; esac',
        f"postconf -e 'relayhost = {nexthop}'",
        # The hold ends: what queued meanwhile goes to the cluster now.
        "was=$(sed -n 's/^defer_transports = //p' mailops-premove.cf)",
        'postconf -e "defer_transports = $was"',
        "postfix check",
        "t=$(date +%s)",
        "postfix reload >/dev/null 2>&1 || systemctl reload postfix",
        # Deferred mail goes now, to the cluster: carried over, not bounced.
        "postqueue -f",
        *_WAIT_BEGUN,
        "postqueue -j | wc -l", ""])


def hold_deliveries(inventory: Inventory, source: Source) -> str:
    res = remote.run(inventory, source.host, "bash -s", stdin=_hold_script())
    if res.returncode != 0:
        raise MailopsError(f"{source.host.name}: holding Postfix's local deliveries failed: "
                           f"{(res.stderr or res.stdout).strip()[-300:]}\n  fix: see "
                           f"/etc/postfix there (mailops-premove.cf is how it was), then run "
                           "the cutover again")
    return f"deliveries into its mailboxes held ({res.stdout.strip() or 'none'} deferred)"


def relay_to_cluster(inventory: Inventory, source: Source) -> str:
    """The legacy Postfix forwards the domain's mail, and relays all other,
    to the cluster; its queue is flushed there."""
    from mailops.dns.desired import service_addresses
    from mailops.dns.settings import settings as dns_settings

    nexthop = f"[{service_addresses(inventory, dns_settings(inventory))[0]}]:25"
    res = remote.run(inventory, source.host, "bash -s",
                     stdin=_relay_script(source.domain, nexthop))
    if res.returncode != 0:
        raise MailopsError(f"{source.host.name}: turning Postfix into a relay failed: "
                           f"{(res.stderr or res.stdout).strip()[-300:]}\n  fix: see "
                           f"/etc/postfix there (mailops-premove.cf is how it was), then run "
                           "the cutover again")
    queued = res.stdout.strip().splitlines()[-1:] or ["0"]
    return f"{source.domain} -> {nexthop}; queue flushed ({queued[0]} left)"


def _converge_mail(inventory: Inventory) -> str:
    from mailops.converge.run import converge

    result = converge(inventory, limit="mail")
    if result.failed:
        raise MailopsError("converging the mail nodes failed: " + ", ".join(result.failed)
                           + "\n  fix: see the converge output, then run this again")
    return f"{result.changed} change(s)"


def cutover(inventory: Inventory, source_name: str, force: bool = False) -> MoveReport:
    """Switch the domain from the legacy server to the cluster; safe to run
    again (each step checks or redoes its part)."""
    from mailops.dns import deploy as dnsdeploy
    from mailops.inventory.model import load_inventory
    from mailops.site.moves import set_stage

    source = source_of(inventory, source_name)
    report = MoveReport("cutover", source.host.name, source.domain)
    move = move_of(inventory, source)
    if move.stage == FINISHED:
        raise MailopsError(f"the move from {source.host.name} is finished; nothing to cut over")
    users = report.run("list the legacy users", source.host.name,
                       lambda: list_users(inventory, source))
    home = _homes_of(inventory, source, users)
    mx, ttl = _mx_now(inventory, source.domain)
    if move.stage == SYNCING:
        if ttl is not None and ttl > CUTOVER_TTL and not force:
            raise MailopsError(
                f"MX of {source.domain}: TTL {ttl} s: resolvers would send mail to "
                f"{source.host.name} for up to {ttl} s after the cutover\n  fix: lower it "
                f"to {CUTOVER_TTL} s, wait {ttl} s, then cut over (or --force to accept "
                "the wait); nothing was changed")
        rows, pre = report.run("sync and compare", "cluster",
                               lambda: _sync_all(inventory, source, users, home, False))
        failed = [r for r in rows if r.result != "ok"]
        if failed or not pre.equal:
            report.parity = pre
            report.steps.append(StepRow("refused", source.host.name, "parity does not hold "
                                        "(see below): nothing was switched", 0.0))
            return report
        # Passwords changed on the legacy server since the last sync: the
        # converge below applies them.
        def carry() -> str:
            rows = carry_passwords(inventory, source, users)[0]
            return f"{sum(r.result == 'carried over' for r in rows)} changed"

        report.run("carry the users' passwords over", source.host.name, carry)
    t_closed = time.monotonic()
    report.run("shut the legacy server to clients", source.host.name,
               lambda: shut_to_clients(inventory, source))
    # Nothing changes the legacy mailboxes from here on: the cluster still
    # forwards the domain's mail there, where it now queues. The final sync
    # therefore meets no new mail on either side (a one-way sync over mail
    # that both sides took since can store a message twice).
    report.run("hold the legacy server's own deliveries", source.host.name,
               lambda: hold_deliveries(inventory, source))
    merge = move.stage != SYNCING  # a re-run: the cluster may hold new mail by now
    rows, report.parity = report.run(
        "final sync and compare", "cluster",
        lambda: _sync_all(inventory, source, users, home, merge))
    if any(r.result != "ok" for r in rows) or not report.parity.equal:
        report.steps.append(StepRow("stopped", "cluster", "parity does not hold after the "
                                    "final sync: the legacy server stays shut and holds its "
                                    "mail (queued, not lost); fix, then run the cutover again",
                                    0.0))
        return report
    if move.stage == SYNCING:
        report.run("record the cutover", "inventory",
                   lambda: set_stage(inventory, source.host.name, CUTOVER,
                                     {"mx_ttl": ttl or 0, "mx_before": mx,
                                      "cutover_at": round(time.time(), 1)}) or CUTOVER)
        inventory = load_inventory(inventory.path)
    report.run("converge the mail nodes (they take the domain)", "mail",
               lambda: _converge_mail(inventory))
    report.run("turn the legacy Postfix into a relay (its queue to the cluster)",
               source.host.name, lambda: relay_to_cluster(inventory, source))

    def publish() -> str:
        done = dnsdeploy.apply(inventory, adopt=frozenset({source.domain}))
        report.dns_plans += [p.plan.table() for p in done if not p.plan.is_empty]
        return f"{sum(len(p.result.applied) for p in done if p.result)} change(s)"

    report.run(f"publish {source.domain}'s records (MX to the cluster)", "dns", publish)
    report.window = time.monotonic() - t_closed
    report.ok = True
    return report


def finish(inventory: Inventory, source_name: str, force: bool = False) -> MoveReport:
    """After the old MX TTL has passed: a last sync of what reached the
    legacy server, parity, its queue drained, the move recorded finished."""
    from mailops.inventory.model import load_inventory
    from mailops.site.moves import set_stage

    source = source_of(inventory, source_name)
    report = MoveReport("finish", source.host.name, source.domain)
    move = move_of(inventory, source)
    if move.stage == SYNCING:
        raise MailopsError(f"{source.host.name}: not cut over yet\n  fix: run `deploy.py "
                           f"migrate cutover --from {source.host.name}` first")
    wait = move.since + float(move.facts.get("mx_ttl", 0)) - time.time()
    if move.stage == CUTOVER and wait > 0 and not force:
        raise MailopsError(f"the old MX of {source.domain} may still be cached for "
                           f"{wait:.0f} s\n  fix: run finish after that (or --force); "
                           "nothing was changed")
    users = report.run("list the legacy users", source.host.name,
                       lambda: list_users(inventory, source))
    home = _homes_of(inventory, source, users)
    report.run("keep the legacy server shut to clients", source.host.name,
               lambda: shut_to_clients(inventory, source))
    left = report.run("drain the legacy queue to the cluster", source.host.name,
                      lambda: _drain_queue(inventory, source))
    if left != "empty":
        report.steps.append(StepRow("stopped", source.host.name, "the legacy queue is not "
                                    "empty: see why above, then run finish again", 0.0))
        return report
    rows, report.parity = report.run("last sync (sync -1) and compare", "cluster",
                                     lambda: _sync_all(inventory, source, users, home, True))
    # Users work in the cluster by now: their flags may move on; what must
    # hold is that no legacy message is missing.
    missing = sum(f.missing for f in report.parity.folders)
    if any(r.result != "ok" for r in rows) or missing:
        report.steps.append(StepRow("stopped", "cluster", f"{missing} legacy message(s) not in "
                                    "the cluster: run finish again", 0.0))
        return report
    if move.stage == CUTOVER:
        report.run("record the move finished", "inventory",
                   lambda: set_stage(inventory, source.host.name, FINISHED, move.facts)
                   or FINISHED)
        inventory = load_inventory(inventory.path)
        report.run("converge the mail nodes (the legacy relay no longer trusted)", "mail",
                   lambda: _converge_mail(inventory))
    report.summary = {
        "mailboxes moved": len(users),
        "legacy messages": sum(f.legacy for f in report.parity.folders),
        "in the cluster": sum(f.cluster for f in report.parity.folders),
        "missing": missing,
        "flags changed since (by users in the cluster)":
            sum(f.flags_differ for f in report.parity.folders),
        "cut over": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                  time.gmtime(move.facts.get("cutover_at", move.since))),
        "next": f"{source.host.name} relays to the cluster and refuses logins; switch it "
                "off when you are ready",
    }
    report.ok = True
    return report


def _drain_queue(inventory: Inventory, source: Source, bound: float = 120) -> str:
    """Flush the legacy queue (to the cluster) until it is empty, for at
    most `bound` seconds; what stays is named."""
    deadline = time.monotonic() + bound
    while True:
        res = remote.run(inventory, source.host, "postqueue -f; sleep 2; postqueue -j")
        left = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
        if not left:
            return "empty"
        if time.monotonic() > deadline:
            reasons = {r.get("delay_reason", "?") for m in left for r in m.get("recipients", [])}
            return f"{len(left)} message(s) still queued: {'; '.join(sorted(reasons))[:200]}"
        time.sleep(3)
