"""Which backups to keep: the newest of each of the last `daily` days that
have one, and the newest of each of the last `weekly` ISO weeks that have
one; the newest backup of all is always kept. Pure: the caller lists the
snapshots and deletes the rest (and then the objects no kept snapshot
names)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime


def keep(snapshots: Iterable[datetime], daily: int, weekly: int) -> set[datetime]:
    newest_first = sorted(set(snapshots), reverse=True)
    kept: set[datetime] = set(newest_first[:1])
    days: dict[object, datetime] = {}
    weeks: dict[object, datetime] = {}
    for when in newest_first:
        days.setdefault(when.date(), when)
        weeks.setdefault(when.isocalendar()[:2], when)
    kept |= set(list(days.values())[:daily])
    kept |= set(list(weeks.values())[:weekly])
    return kept
