"""Turn an SMTP (or IMAP/POP3) reply into its cause and remedy.

Covers every reply in MAIL-BASICS.md and the enhanced status codes (RFC 3463)
that Postfix, Dovecot and rspamd send. The most specific match wins: a known
phrase, then the enhanced code, then the class of the basic code.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Explanation:
    reply: str
    code: str  # basic code, e.g. 550
    enhanced: str | None  # e.g. 5.1.1
    permanent: bool | None
    cause: str
    remedy: str
    known: bool = True

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        kind = {True: "permanent failure (do not retry as is)",
                False: "temporary failure (the sender retries)", None: "not a failure"}
        lines = [f"reply:   {self.reply}", f"kind:    {kind[self.permanent]}",
                 f"cause:   {self.cause}", f"remedy:  {self.remedy}"]
        return "\n".join(lines)


# (pattern on the reply text, cause, remedy): checked first, most specific.
PHRASES: list[tuple[str, str, str]] = [
    (r"relay access denied",
     "the server does not relay for this destination: the recipient is not in a domain it "
     "serves, and the sender did not log in (or is not allowed to relay)",
     "check the part after @ of the recipient; users send through port 587 or 465 after "
     "logging in; other servers only deliver to domains this server serves"),
    (r"host (or domain name )?not found|host unknown|domain not found",
     "the recipient's domain does not exist or has no mail server (no MX or A record)",
     "check the part after @ for typing errors; the receiving side must publish an MX record"),
    (r"user unknown|recipient address rejected.*(unknown|not found|does not exist)"
     r"|no such user|mailbox unavailable",
     "the recipient's account does not exist on a domain this server serves",
     "check the part before @ for typing errors, or create the mailbox or alias"),
    (r"sender address rejected: not owned by user|not owned by",
     "the logged-in user tried to send with a From/envelope address that is not theirs",
     "send as your own address, or have the administrator grant that address to your login"),
    (r"gtube|spam message rejected|spam", "the message was judged to be spam (its score passed "
     "the reject threshold)", "remove what looks like spam (links, attachments, wording), "
     "check the sender's SPF/DKIM; the administrator can review the rspamd scores"),
    (r"quota exceeded|mailbox is full|over quota|mailbox full|insufficient system storage",
     "the recipient's mailbox is full (over its quota)",
     "the recipient must free mailbox space (delete or archive mail), or the administrator "
     "raises the quota"),
    (r"message (size|file too big|too large)|exceeds .*size limit|too big",
     "the message is too large: larger than the server accepts (552 Message too large)",
     "compress or remove attachments, or share large files by link"),
    (r"must issue a starttls|starttls (first|required)|encryption required",
     "the client tried to log in or send before starting TLS",
     "enable STARTTLS (or SSL/TLS on port 465/993/995) in the mail client"),
    (r"authentication (failed|credentials invalid)|auth.*failed",
     "wrong user name or password", "check the login (the full address) and the password"),
]

# Enhanced status codes (RFC 3463 and what Postfix/Dovecot use).
ENHANCED: dict[str, tuple[str, str]] = {
    "5.1.1": ("the recipient's mailbox does not exist (user unknown)",
              "check the part before @; ask the recipient for the right address"),
    "5.1.2": ("the recipient's domain does not exist or cannot receive mail (host unknown)",
              "check the part after @; the domain needs an MX or A record"),
    "5.1.8": ("the sender's domain does not exist or cannot receive replies",
              "send from an address in a domain that has working DNS"),
    "5.2.1": ("the recipient's mailbox is disabled", "ask the recipient for another address"),
    "5.2.2": ("the recipient's mailbox is full (over quota)",
              "the recipient must free mailbox space, or the administrator raises the quota"),
    "4.2.2": ("the recipient's mailbox is full for now (over quota); the sender retries",
              "the recipient must free mailbox space before the retries give up"),
    "5.2.3": ("the message exceeds the recipient's size limit",
              "compress or remove attachments"),
    "5.3.4": ("the message is larger than the server's size limit (552 Message too large)",
              "compress or remove attachments, or share large files by link"),
    "5.5.1": ("the client sent a command out of order or not recognised",
              "check the client's SMTP settings"),
    "5.5.2": ("the client sent a malformed command", "check the client's SMTP settings"),
    "5.7.0": ("a security policy refused the command (often: TLS is required first)",
              "enable STARTTLS or implicit TLS in the client, then log in"),
    "5.7.1": ("refused by policy: relaying denied, a sender address not owned by the login, "
              "or a message judged as spam",
              "read the full reply text; log in to send, send as your own address, or check "
              "the message for spam"),
    "5.7.8": ("authentication failed: wrong user name or password",
              "check the login (the full address) and the password"),
    "5.7.9": ("the authentication mechanism is too weak for this server",
              "use a TLS-protected connection and PLAIN/LOGIN over it"),
    "5.7.23": ("the sender's SPF policy does not allow this server to send for it",
               "send through the sender domain's own servers, or fix its SPF record"),
    "5.7.25": ("the sending server's address has no reverse DNS (PTR)",
               "the sending side must set a PTR record matching its name"),
    "5.7.26": ("DMARC, DKIM or SPF authentication of the sender failed",
               "the sender domain must sign with DKIM and publish matching SPF"),
    "4.4.1": ("the receiving server did not answer (connection failed); the sender retries",
              "check the receiving server is up and reachable on port 25"),
    "4.4.2": ("the connection broke during delivery; the sender retries",
              "usually transient; check the network between the servers"),
    "4.3.0": ("a temporary problem on the server (e.g. a filter or milter failed)",
              "the sender retries; the administrator checks the server's logs"),
    "4.7.1": ("temporarily refused by policy (e.g. greylisting or rate limits)",
              "the sender retries later; persistent cases: ask the receiving administrator"),
    "4.7.0": ("temporary security problem (e.g. TLS could not be started)",
              "the sender retries; check certificates and TLS settings"),
}

# The basic codes MAIL-BASICS.md names, as the article words them.
BASIC: dict[str, tuple[str, str]] = {
    "550": ("the recipient's mailbox or domain is not available (550 User/Host unknown)",
            "check the address: the part before @ (user) or after @ (host)"),
    "551": ("the recipient is not local here / access denied (551 Access denied)",
            "check the destination and the receiving side's terms"),
    "552": ("storage exceeded: the message is too large or the mailbox is full (552)",
            "compress attachments, or free mailbox space"),
    "553": ("the address is not allowed (553): the sender is not owned by the login, or "
            "the message was judged spam", "review the SMTP settings and check for spam"),
    "554": ("the transaction failed (554 Service unavailable): the server refused it for "
            "another reason (server down, policy)", "read the full reply text for the cause"),
    "421": ("the service is not available now (server shutting down or overloaded)",
            "the sender retries; check the server's state"),
    "450": ("the mailbox is not available now (temporary)", "the sender retries"),
    "451": ("a local error on the server (temporary)", "the sender retries; check server logs"),
    "452": ("insufficient storage now (temporary; often quota)", "free space; sender retries"),
    "530": ("authentication or TLS is required first", "start TLS and log in"),
    "535": ("authentication failed", "check the user name and password"),
}

REPLY_RE = re.compile(r"^\s*(?P<code>[245]\d\d)(?:[ -](?P<enh>[245]\.\d{1,3}\.\d{1,3}))?")


def explain(reply: str) -> Explanation:
    reply = " ".join(reply.split())
    m = REPLY_RE.match(reply)
    code = m["code"] if m else ""
    enhanced = m["enh"] if m and m["enh"] else None
    if not enhanced:
        found = re.search(r"\b([245]\.\d{1,3}\.\d{1,3})\b", reply)
        enhanced = found[1] if found else None
    permanent = {"5": True, "4": False, "2": None}.get(code[:1]) if code else None
    low = reply.lower()
    for pattern, cause, remedy in PHRASES:
        if re.search(pattern, low):
            return Explanation(reply, code, enhanced, permanent, cause, remedy)
    if enhanced in ENHANCED:
        cause, remedy = ENHANCED[enhanced]
        return Explanation(reply, code, enhanced, permanent, cause, remedy)
    if code in BASIC:
        cause, remedy = BASIC[code]
        return Explanation(reply, code, enhanced, permanent, cause, remedy)
    if code.startswith("2"):
        return Explanation(reply, code, enhanced, None, "success: the server accepted it",
                           "nothing to do")
    return Explanation(
        reply, code, enhanced, permanent,
        "mailops does not know this reply",
        "read the full reply text: the server's own words after the code give the cause; "
        "the server's log (journalctl -u postfix) has the details", known=False)
