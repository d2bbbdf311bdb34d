"""The mail model: domains, mailboxes, aliases, limits, from the inventory's
group_vars, validated into typed data with errors naming file, key and fix.
The settings are declared in MAIL_FIELDS; the rules across entries (served
domains, duplicates, the spam thresholds) follow in load_mail_model."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailops.core.durations import seconds
from mailops.core.errors import InventoryError, InventoryErrors
from mailops.inventory.fields import Field, Validator, holds, in_group_vars, matches, one_of
from mailops.inventory.model import Inventory
from mailops.site.mtasts import MODES as STS_MODES

DNS_NAME_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
LOCAL_RE = re.compile(r"^[a-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
QUOTA_RE = re.compile(r"^(\d+)([KMGT]?)$")
SELECTOR_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
TLS_MODES = ("internal", "files")
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@dataclass(frozen=True)
class Mailbox:
    address: str
    quota: str  # Dovecot syntax, e.g. 50M
    quota_bytes: int
    password_hash: str | None = None  # None: mailops generates one into the vault
    home: str | None = None  # a mail node pinned as its home (mailops.site.homes)

    @property
    def domain(self) -> str:
        return self.address.split("@", 1)[1]


@dataclass(frozen=True)
class AuthBan:
    """Brute-force protection: a client address with `failures` failed
    logins (SMTP AUTH, IMAP, POP3, on any node) within `within` seconds is
    refused at the balancers for `ban` seconds."""

    failures: int = 10
    within: int = 600
    ban: int = 3600


@dataclass(frozen=True)
class MailModel:
    service_name: str
    domains: tuple[str, ...]
    dkim_selector: str
    mailboxes: tuple[Mailbox, ...]
    aliases: dict[str, tuple[str, ...]]
    message_size_limit: int
    spam_add_header_score: float
    spam_reject_score: float
    tls_mode: str
    mta_sts_mode: str = "testing"
    auth_ban: AuthBan = AuthBan()

    def mailbox(self, address: str) -> Mailbox:
        for box in self.mailboxes:
            if box.address == address:
                return box
        raise KeyError(address)


def _address_ok(address: Any) -> bool:
    if not isinstance(address, str) or address.count("@") != 1:
        return False
    local, domain = address.split("@")
    return bool(LOCAL_RE.match(local)) and bool(DNS_NAME_RE.match(domain))


def _mailbox(entry: dict[str, Any]) -> Mailbox:
    quota = str(entry["quota"])
    match = QUOTA_RE.match(quota)
    return Mailbox(entry["address"], quota, int(match[1]) * _UNITS[match[2]],
                   entry["password_hash"], entry["home"])


def _destinations(value: str | list) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _destinations_problem(value: str | list) -> str | None:
    dests = _destinations(value)
    return None if dests and all(_address_ok(d) for d in dests) else DESTINATIONS


def _duration_problem(value: str) -> str | None:
    try:
        return None if seconds(value, "s") >= 1 else f"{value!r} is under a second"
    except ValueError:
        return f"{value!r} is not a duration"


def _auth_ban(value: dict[str, Any]) -> AuthBan:
    return AuthBan(value["failures"], int(seconds(value["within"], "s")),
                   int(seconds(value["ban"], "s")))


MAIL_FILE = "mail.yml"  # where a mail setting belongs when no file sets it yet
MAILBOX = "`- {address: user@example.com, quota: 1G}`"
DESTINATIONS = "destinations must be a list of mail addresses"
AUTH_BAN = "`mailops_auth_ban: {failures: 10, within: 10m, ban: 1h}`"

MAIL_FIELDS = (
    Field("mailops_service_name", str, MAIL_FILE,
          check=matches(DNS_NAME_RE, "{value} is not a DNS name"),
          fix="give the mail service's lowercase fully qualified DNS name, e.g. "
              "`mailops_service_name: mail.example.com`"),
    Field("mailops_domains", list, MAIL_FILE, check=holds(len, "is empty"),
          fix="list the mail domains, at least one: `mailops_domains: [example.com]`",
          each=Field("domain", str, wrong_type="{value} is not a domain name",
                     check=matches(DNS_NAME_RE, "{value} is not a domain name"),
                     fix="write a lowercase domain like example.com")),
    Field("mailops_dkim_selector", str, MAIL_FILE,
          check=matches(SELECTOR_RE, "{value} is not a DNS label"),
          fix="name the DKIM selector with lowercase letters, digits and '-', e.g. "
              "`mailops_dkim_selector: mail2026`"),
    Field("mailops_mailboxes", list, MAIL_FILE, fix=f"list mailboxes as {MAILBOX}",
          each=Field("mailbox", dict, wrong_type="must be a mapping", fix=f"write {MAILBOX}",
                     convert=_mailbox, fields=(
              Field("address", str, MAIL_FILE, wrong_type="{value} is not a mail address",
                    check=holds(_address_ok, "{value} is not a mail address"),
                    fix="write a lowercase address like user@example.com"),
              Field("quota", (str, int), MAIL_FILE, wrong_type="{value} is not a quota",
                    check=holds(lambda v: QUOTA_RE.match(str(v)), "{value} is not a quota"),
                    fix="write a size like 500M or 2G (K, M, G, T)"),
              Field("password_hash", str, MAIL_FILE, default=None,
                    wrong_type="is not a Dovecot password hash",
                    check=holds(lambda v: v.startswith("{"), "is not a Dovecot password hash"),
                    fix="generate one with `doveadm pw -s SHA512-CRYPT`, or leave it out and "
                        "mailops keeps a generated password in the vault"),
              Field("home", str, MAIL_FILE, default=None, wrong_type="{value} is not a node name",
                    fix="name a host of the mail group, e.g. `home: mail2`, or leave it out "
                        "and mailops picks the home")))),
    Field("mailops_aliases", dict, MAIL_FILE, default={}, wrong_type="must be a mapping",
          fix="write `alias@domain: [dest@domain]`",
          each=Field("alias", (str, list), wrong_type=DESTINATIONS,
                     check=_destinations_problem, convert=_destinations,
                     fix="write `alias@domain: [user@domain, other@elsewhere]`")),
    Field("mailops_message_size_limit", int, MAIL_FILE,
          check=holds(lambda v: v >= 65536, "{value} bytes is too small"),
          fix="give the largest message in bytes, at least 65536 (headers alone can be tens "
              "of kilobytes), e.g. `mailops_message_size_limit: 26214400`"),
    Field("mailops_spam_add_header_score", (int, float), MAIL_FILE, convert=float,
          fix="give the rspamd score from which a spam header is added, below the reject "
              "score, e.g. 6"),
    Field("mailops_spam_reject_score", (int, float), MAIL_FILE, convert=float,
          fix="give the rspamd score from which mail is rejected, e.g. 15"),
    Field("mailops_tls_mode", str, MAIL_FILE, default="internal",
          wrong_type="{value} is not a TLS mode",
          check=one_of(TLS_MODES, "{value} is not a TLS mode"),
          fix=f"use one of {', '.join(TLS_MODES)}"),
    Field("mailops_mta_sts", str, MAIL_FILE, default="testing",
          wrong_type="{value} is not an MTA-STS mode",
          check=one_of(STS_MODES, "{value} is not an MTA-STS mode"),
          fix=f"use one of {', '.join(STS_MODES)}"),
    Field("mailops_auth_ban", dict, MAIL_FILE, default=AuthBan(), convert=_auth_ban,
          wrong_type="must be a mapping", fix=f"write {AUTH_BAN}",
          fields=(
              Field("failures", int, MAIL_FILE, default=AuthBan.failures,
                    check=holds(lambda v: v >= 2, "{value} failures would ban a typo"),
                    fix="give how many failed logins ban an address, at least 2, e.g. 10"),
              Field("within", (str, int), MAIL_FILE, default="10m", convert=str,
                    check=_duration_problem, fix=f"give a duration, e.g. 10m; {AUTH_BAN}"),
              Field("ban", (str, int), MAIL_FILE, default="1h", convert=str,
                    check=_duration_problem, fix=f"give a duration, e.g. 1h; {AUTH_BAN}"),
          )),
)


def load_mail_model(inventory: Inventory) -> MailModel:
    """Validate the mail model that every mail host sees."""
    check = Validator(MAIL_FIELDS, in_group_vars(inventory.defined_in))
    values = check.run(inventory.site_vars())

    # The rules across entries and fields, on the entries that passed.
    domains: list[str] = []
    for i, d in enumerate(values.get("mailops_domains") or []):
        if d in domains:
            check.add(f"mailops_domains[{i}]", f"{d} is listed twice", "list each domain once")
        elif d is not None:
            domains.append(d)
    mailboxes: list[Mailbox] = []
    nodes = [h.name for h in inventory.group("mail")]
    for i, box in enumerate(values.get("mailops_mailboxes") or []):
        if box is None:
            continue
        key = f"mailops_mailboxes[{i}].address"
        if "mailops_domains" in values and box.domain not in domains:
            check.add(key, f"{box.address}: its domain is not in mailops_domains",
                      "add the domain to mailops_domains or fix the address")
        if any(b.address == box.address for b in mailboxes):
            check.add(key, f"{box.address} is listed twice", "list each mailbox once")
        if box.home is not None and box.home not in nodes:
            check.add(f"mailops_mailboxes[{i}].home", f"{box.home!r} is not a mail node",
                      f"name one of the mail group's hosts ({', '.join(nodes)}), or leave "
                      "`home` out and mailops picks the home")
        mailboxes.append(box)
    aliases = values.get("mailops_aliases") or {}
    for source in aliases:
        key = f"mailops_aliases.{source}"
        if not _address_ok(source) or ("mailops_domains" in values
                                        and source.split("@")[1] not in domains):
            check.add(key, f"{source!r} is not an address in a served domain",
                      "aliases are for addresses in mailops_domains")
        elif any(b.address == source for b in mailboxes):
            check.add(key, f"{source} is also a mailbox", "make it either a mailbox or an alias")
    add = values.get("mailops_spam_add_header_score")
    reject = values.get("mailops_spam_reject_score")
    if add is not None and reject is not None and add >= reject:
        check.add("mailops_spam_add_header_score",
                  f"{add:g} is not below the reject score {reject:g}",
                  "mark spam (add header) at a lower score than you reject it")

    if check.errors:
        raise InventoryErrors(check.errors)
    return MailModel(
        service_name=values["mailops_service_name"], domains=tuple(domains),
        dkim_selector=values["mailops_dkim_selector"], mailboxes=tuple(mailboxes),
        aliases=aliases, message_size_limit=values["mailops_message_size_limit"],
        spam_add_header_score=add, spam_reject_score=reject,
        tls_mode=values["mailops_tls_mode"], mta_sts_mode=values["mailops_mta_sts"],
        auth_ban=values["mailops_auth_ban"],
    )


_ITEM_RE = re.compile(r"^(?P<indent>\s*)-\s+address:\s*['\"]?(?P<address>[^'\"\s#]+)")


def set_mailbox_home(inventory: Inventory, address: str, node: str) -> Path:
    """Pin a mailbox's home in the mail model (its entry's `home:`), editing
    the group_vars file that lists the mailboxes line by line so its comments
    and layout stay; returns that file."""
    file = inventory.defined_in("mailops_mailboxes", MAIL_FILE)
    key = "mailops_mailboxes"
    lines = file.read_text().splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines)
                  if (m := _ITEM_RE.match(ln)) and m["address"].lower() == address.lower()),
                 None)
    if start is None:
        raise InventoryError(file, key, f"no entry `- address: {address}` written on one line",
                             f"list {address} there (block style, `- address: {address}`), "
                             "then move it")
    indent = len(_ITEM_RE.match(lines[start])["indent"]) + 2  # the entry's keys
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or
                                len(lines[end]) - len(lines[end].lstrip()) >= indent):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # blank lines after the entry belong to what follows
    new = " " * indent + f"home: {node}\n"
    at = next((i for i in range(start + 1, end)
               if lines[i].strip().startswith("home:")), None)
    if at is None:
        lines.insert(end, new)
    else:
        lines[at] = new
    file.write_text("".join(lines))
    return file
