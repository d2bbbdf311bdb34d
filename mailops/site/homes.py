"""Every mailbox's home: the pair of mail nodes that stores it and, within
the pair, the node that takes its deliveries (the other is the fallback
while the home node is down). Dovecot 2.3's replication expects a user on
one replica at a time; with one writer per mailbox, two-way dsync never
stores a message twice.

A home is derived from the inventory alone, so every run and every node
agrees: the pair by rendezvous hashing of the address over the pairs (adding
a pair moves only the mailboxes the new pair wins, about 1/n of them), the
node within the pair by the address's hash. A mailbox entry's `home: NODE`
overrides both (for moving a user by hand, or pinning a test account).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from mailops.inventory.model import Inventory
from mailops.site.derived import replication_pairs
from mailops.site.mailmodel import MailModel

# Where a node takes what its peers hand it for the mailboxes homed there:
# logins proxied by Dovecot (plain IMAP and POP3, no PROXY header), LMTP
# deliveries and dsync (replication, moves). Private network only: none of
# them asks for TLS.
BACKEND_PORTS = {"imap": 10143, "pop3": 10110, "lmtp": 24, "doveadm": 12345}


@dataclass(frozen=True)
class Home:
    address: str
    node: str  # takes the mailbox's deliveries and sessions
    fallback: str | None  # the pair's other node; None on a lone node
    pinned: bool = False  # set by the mailbox's `home:` entry

    @property
    def nodes(self) -> tuple[str, ...]:
        """Home node first, then the fallback: the order deliveries try."""
        return (self.node,) if self.fallback is None else (self.node, self.fallback)


def _score(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def pairs_of(inventory: Inventory) -> list[tuple[str, ...]]:
    """The replicating pairs; a lone mail node is a pair of one."""
    pairs: list[tuple[str, ...]] = list(replication_pairs(inventory))
    nodes = [h.name for h in inventory.group("mail")]
    return pairs or [tuple(nodes[:1])]


def home_of(address: str, pairs: list[tuple[str, ...]], pinned: str | None = None) -> Home:
    """The home of one address over the given pairs (inventory order)."""
    address = address.lower()
    if pinned is not None:
        pair = next(p for p in pairs if pinned in p)
        node = pinned
    else:
        # The pair is named by its first node: pairs keep their names when
        # more are added after them.
        pair = max(pairs, key=lambda p: _score(p[0], address))
        node = pair[_score(address) % len(pair)]
    other = [n for n in pair if n != node]
    return Home(address, node, other[0] if other else None, pinned is not None)


def homes(inventory: Inventory, model: MailModel) -> dict[str, Home]:
    """Every mailbox's home, by lowercased address, in mail model order."""
    pairs = pairs_of(inventory)
    return {box.address.lower(): home_of(box.address, pairs, box.home)
            for box in model.mailboxes}


def moves(before: Mapping[str, str], after: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(address, old home node, new home node) for every mailbox whose home
    node changes between two address -> home node maps, e.g. when nodes are
    added."""
    return [(a, before[a], node) for a, node in after.items()
            if a in before and before[a] != node]
