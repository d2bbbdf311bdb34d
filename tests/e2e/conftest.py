"""Fixtures for the end-to-end tests (the shared session lab is in tests/conftest.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from tests.conftest import ROOT, TIMINGS

DNS_PLAYBOOK = ROOT / "mailops" / "converge" / "playbooks" / "dns.yml"


@dataclass(frozen=True)
class DnsLab:
    lab: object  # mailops.lab.lab.Lab
    inventory: object  # mailops.inventory.model.Inventory, re-read after the vault was completed
    key: object  # mailops.dns.providers.rfc2136.TsigKey
    server: str  # the dns host's address

    def converge_dns(self):
        from mailops.converge.run import run_playbook

        t0 = time.monotonic()
        result = run_playbook(self.inventory, playbook=DNS_PLAYBOOK)
        TIMINGS.append(("dns playbook", time.monotonic() - t0))
        return result


@pytest.fixture(scope="session")
def dns_lab(lab, lab_inventory) -> DnsLab:
    """The session lab with its name server up (the bind role) and every host
    resolving through it; its zones hold only what the role wrote."""
    from mailops.dns.deploy import ensure_tsig
    from mailops.inventory.model import load_inventory

    inventory = load_inventory(lab_inventory)
    key = ensure_tsig(inventory)  # the vault, TSIG key included, before the play reads it
    inventory = load_inventory(lab_inventory)
    dns = DnsLab(lab, inventory, key, str(inventory.group("dns")[0].address))
    result = dns.converge_dns()
    assert not result.failed, result.table()
    return dns
