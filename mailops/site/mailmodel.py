"""The mail model: domains, mailboxes, aliases, limits, from the inventory's
group_vars, validated into typed data with errors naming file, key and fix."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mailops.core.errors import InventoryError, InventoryErrors
from mailops.inventory.model import Inventory

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

    @property
    def domain(self) -> str:
        return self.address.split("@", 1)[1]


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


def load_mail_model(inventory: Inventory) -> MailModel:
    """Validate the mail model that every mail host sees."""
    hv = inventory.site_vars()
    errors: list[InventoryError] = []

    def err(key: str, problem: str, fix: str) -> None:
        errors.append(InventoryError(
            inventory.defined_in(key.split(".")[0].split("[")[0], "mail.yml"), key, problem, fix))

    def need(key: str, kind: type | tuple[type, ...], fix: str) -> Any:
        if key not in hv:
            err(key, "missing (required)", fix)
            return None
        value = hv[key]
        if isinstance(value, bool) or not isinstance(value, kind):
            err(key, f"has the wrong type ({type(value).__name__})", fix)
            return None
        return value

    service = need("mailops_service_name", str, "give the mail service's DNS name, e.g. "
                   "`mailops_service_name: mail.example.com`")
    if service is not None and not DNS_NAME_RE.match(service):
        err("mailops_service_name", f"{service!r} is not a DNS name",
            "use a lowercase fully qualified name like mail.example.com")

    domains: list[str] = []
    raw_domains = need("mailops_domains", list, "list the mail domains: "
                       "`mailops_domains: [example.com]`")
    for i, d in enumerate(raw_domains or []):
        if not isinstance(d, str) or not DNS_NAME_RE.match(d):
            err(f"mailops_domains[{i}]", f"{d!r} is not a domain name",
                "write a lowercase domain like example.com")
        elif d in domains:
            err(f"mailops_domains[{i}]", f"{d} is listed twice", "list each domain once")
        else:
            domains.append(d)
    if raw_domains is not None and not raw_domains:
        err("mailops_domains", "is empty", "list at least one mail domain")

    selector = need("mailops_dkim_selector", str, "name the DKIM selector, e.g. "
                    "`mailops_dkim_selector: mail2026`")
    if selector is not None and not SELECTOR_RE.match(selector):
        err("mailops_dkim_selector", f"{selector!r} is not a DNS label",
            "use lowercase letters, digits and '-'")

    mailboxes: list[Mailbox] = []
    seen: set[str] = set()
    for i, entry in enumerate(need("mailops_mailboxes", list, "list mailboxes as "
                                   "`- {address: user@example.com, quota: 1G}`") or []):
        key = f"mailops_mailboxes[{i}]"
        if not isinstance(entry, dict):
            err(key, "must be a mapping", "write `- {address: user@example.com, quota: 1G}`")
            continue
        unknown = set(entry) - {"address", "quota", "password_hash"}
        for k in sorted(unknown):
            err(f"{key}.{k}", "unknown key", "a mailbox takes address, quota, password_hash")
        address = entry.get("address")
        if not _address_ok(address):
            err(f"{key}.address", f"{address!r} is not a mail address",
                "write a lowercase address like user@example.com")
            continue
        if address.split("@")[1] not in domains:
            err(f"{key}.address", f"{address}: its domain is not in mailops_domains",
                "add the domain to mailops_domains or fix the address")
        if address in seen:
            err(f"{key}.address", f"{address} is listed twice", "list each mailbox once")
        seen.add(address)
        quota = str(entry.get("quota", ""))
        match = QUOTA_RE.match(quota)
        if not match:
            err(f"{key}.quota", f"{entry.get('quota')!r} is not a quota",
                "write a size like 500M or 2G (K, M, G, T)")
            continue
        phash = entry.get("password_hash")
        if phash is not None and (not isinstance(phash, str) or not phash.startswith("{")):
            err(f"{key}.password_hash", "is not a Dovecot password hash",
                "generate one with `doveadm pw -s SHA512-CRYPT`, or leave it out and "
                "mailops keeps a generated password in the vault")
        mailboxes.append(Mailbox(address, quota, int(match[1]) * _UNITS[match[2]], phash))

    aliases: dict[str, tuple[str, ...]] = {}
    raw_aliases = hv.get("mailops_aliases", {})
    if not isinstance(raw_aliases, dict):
        err("mailops_aliases", "must be a mapping", "write `alias@domain: [dest@domain]`")
        raw_aliases = {}
    for source, dests in raw_aliases.items():
        key = f"mailops_aliases.{source}"
        if not _address_ok(source) or source.split("@")[1] not in domains:
            err(key, f"{source!r} is not an address in a served domain",
                "aliases are for addresses in mailops_domains")
            continue
        if source in seen:
            err(key, f"{source} is also a mailbox", "make it either a mailbox or an alias")
        if isinstance(dests, str):
            dests = [dests]
        if not isinstance(dests, list) or not dests or not all(_address_ok(d) for d in dests):
            err(key, "destinations must be a list of mail addresses",
                "write `alias@domain: [user@domain, other@elsewhere]`")
            continue
        aliases[source] = tuple(dests)

    size = need("mailops_message_size_limit", int, "give the largest message in bytes, "
                "e.g. `mailops_message_size_limit: 26214400`")
    if size is not None and size < 65536:
        err("mailops_message_size_limit", f"{size} bytes is too small",
            "use at least 65536 (headers alone can be tens of kilobytes)")
    add = need("mailops_spam_add_header_score", (int, float), "e.g. 6")
    reject = need("mailops_spam_reject_score", (int, float), "e.g. 15")
    if add is not None and reject is not None and add >= reject:
        err("mailops_spam_add_header_score", f"{add} is not below the reject score {reject}",
            "mark spam (add header) at a lower score than you reject it")
    tls_mode = hv.get("mailops_tls_mode", "internal")
    if tls_mode not in TLS_MODES:
        err("mailops_tls_mode", f"{tls_mode!r} is not a TLS mode",
            f"use one of {', '.join(TLS_MODES)}")
    from mailops.site.mtasts import MODES as STS_MODES

    mta_sts = hv.get("mailops_mta_sts", "testing")
    if mta_sts not in STS_MODES:
        err("mailops_mta_sts", f"{mta_sts!r} is not an MTA-STS mode",
            f"use one of {', '.join(STS_MODES)}")

    if errors:
        raise InventoryErrors(errors)
    return MailModel(
        service_name=service, domains=tuple(domains), dkim_selector=selector,
        mailboxes=tuple(mailboxes), aliases=aliases, message_size_limit=size,
        spam_add_header_score=float(add), spam_reject_score=float(reject), tls_mode=tls_mode,
        mta_sts_mode=mta_sts,
    )
