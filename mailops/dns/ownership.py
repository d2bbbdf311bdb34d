"""Which records mailops owns: one owner marker TXT per owned name and type.

Scheme (octoDNS-style TXT registry):

    record  <name>            <TYPE>   ...
    marker  _mailops-owner-<type>.<name>   TXT  "mailops owner=<owner-id> type=<TYPE>"

e.g. the apex MX of example.com is owned when
``_mailops-owner-mx.example.com TXT "mailops owner=prod type=MX"`` exists, and
``_dmarc.example.com TXT`` when ``_mailops-owner-txt._dmarc.example.com`` does.

Why this shape: the type sits in the first label, so every marker lives
directly below a name mailops itself publishes. A scheme like
``_owner.<type>.<name>`` would create empty non-terminals such as
``mx.example.com`` that hide a wildcard from that name; ours creates none
outside our own names. The leading underscore (RFC 8552) keeps markers out
of the host-name space.

Rules: a record is mailops's only when its marker holds exactly one value
naming this owner id and the same type. Anything else (no marker, another
owner id, a marker edited by hand) is foreign and never updated or deleted.
A marker is created before its record and deleted after it, so a run that
stops half way leaves at worst a marker without a record, which the next
run completes or removes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailops.dns.records import Record

MARKER_PREFIX = "_mailops-owner-"
MARKER_TTL = 300  # fixed, so a TTL change of a record updates one RRset, not two
_OWNER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_VALUE = re.compile(r"^mailops owner=(\S+) type=(\S+)$")


@dataclass(frozen=True)
class Marker:
    name: str  # the owned record's name ("@" for the apex)
    type: str  # the owned record's type
    owner: str


def check_owner_id(owner: str) -> str:
    if not _OWNER_ID.match(owner):
        raise ValueError(f"owner id {owner!r}: use 1-63 letters, digits, '.', '_' or '-'")
    return owner


def marker_name(name: str, rtype: str) -> str:
    label = MARKER_PREFIX + rtype.lower()
    return label if name == "@" else f"{label}.{name}"


def marker_value(owner: str, rtype: str) -> str:
    return f"mailops owner={owner} type={rtype.upper()}"


def marker_for(record: Record, owner: str) -> Record:
    return Record(marker_name(record.name, record.type), "TXT", MARKER_TTL,
                  (marker_value(owner, record.type),))


def is_marker_name(name: str) -> bool:
    return name.lower().startswith(MARKER_PREFIX)


def marker_target(name: str) -> tuple[str, str]:
    """(name, TYPE) of the record a marker name stands for."""
    first, _, rest = name.lower().partition(".")
    return (rest or "@", first[len(MARKER_PREFIX):].upper())


def parse_marker(record: Record) -> Marker | None:
    """The claim a marker record makes, or None if it is not a valid marker."""
    if record.type != "TXT" or not is_marker_name(record.name) or len(record.values) != 1:
        return None
    name, rtype = marker_target(record.name)
    m = _VALUE.match(record.values[0])
    if not m or m.group(2).upper() != rtype:
        return None
    return Marker(name, rtype, m.group(1))
