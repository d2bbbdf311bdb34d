"""One mailbox synced from one mail node into another with `doveadm sync`
or `doveadm backup` over the doveadm port, the way the runbooks that copy
mailboxes between nodes (move-mailbox, rebuild) all do it: holding the
user's dsync lock and tried again, bounded, when dsync says "try again".
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Collection

from mailops.inventory import remote
from mailops.inventory.model import Host, Inventory
from mailops.site.homes import BACKEND_PORTS

TEMPFAIL = 75  # sysexits EX_TEMPFAIL: dsync's "try again"
RETRY_WAITS = (2, 4, 8, 15)  # seconds between tries
LOCK_WAIT = 30  # seconds a sync waits for the user's dsync lock (the replicator's -l)


def node_sync(inventory: Inventory, src: Host, dest: Host, address: str, verb: str = "sync",
              retry_on: Collection[int] | None = (TEMPFAIL,),
              timeout: float = 600) -> subprocess.CompletedProcess:
    """`doveadm VERB` of address, run on src into dest. -l takes the user's
    dsync lock on both ends, as the replicator's own syncs do, so a
    replication of the same mailbox waits instead of writing into the same
    copy at the same time. Exit 75 (the lock not had in time, or the
    mailbox changed during the sync) is tried again after each of
    RETRY_WAITS; retry_on=None tries again on any failure (a node that has
    just started). The last try's result is returned."""
    if verb not in ("sync", "backup"):
        raise ValueError(f"doveadm {verb}: only sync and backup copy between nodes")
    command = (f"doveadm {verb} -l {LOCK_WAIT} -u {address} "
               f"tcp:{dest.address}:{BACKEND_PORTS['doveadm']}")
    res = remote.run(inventory, src, command, timeout=timeout)
    for wait in RETRY_WAITS:
        if res.returncode == 0 or (retry_on is not None and res.returncode not in retry_on):
            break
        time.sleep(wait)
        res = remote.run(inventory, src, command, timeout=timeout)
    return res
