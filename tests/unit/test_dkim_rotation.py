"""DKIM selectors per domain and a rollover's state (mailops.site.dkim),
and what the DNS plan publishes at each step: the signing selector, the
next one once made, a retired one until its grace period ends."""

from __future__ import annotations

import time

import pytest

from mailops.dns.desired import desired_for
from mailops.inventory.model import load_inventory
from mailops.secrets import pki
from mailops.secrets.vault import Secrets
from mailops.site import dkim
from mailops.site.ansible_vars import site_vars
from mailops.site.mailmodel import load_mail_model
from tests.conftest import lab_inventory_copy

pytestmark = pytest.mark.unit


def _dkim_names(records) -> set[str]:
    return {r.name for r in records if r.name.endswith("._domainkey")}


def test_a_rollover_publishes_next_then_retires_the_old_selector(tmp_path):
    path = lab_inventory_copy(tmp_path / "lab", "tdkim", "198.19.9")
    inv = load_inventory(path)
    model = load_mail_model(inv)
    base = model.dkim_selector
    keys = {d: pki.generate_dkim_key(1024) for d in model.domains}
    new = dkim.new_selector(base, now=0)
    assert new == f"{base}-19700101000000" and len(dkim.new_selector("x" * 63)) <= 63
    rotated = {"example.test": {new: pki.generate_dkim_key(1024)}}
    secrets = Secrets(None, None, keys, "", dkim_rotated=rotated)

    # Never rotated: the model's selector, everywhere.
    assert dkim.selectors(inv, model)["example.test"] == dkim.Selectors(base)
    assert _dkim_names(desired_for(inv, model, secrets)["example.test"]) == {
        f"{base}._domainkey"}
    assert site_vars(inv, model)["dkim_selectors"] == {d: base for d in model.domains}

    # Next made: both published, signing unchanged.
    dkim.save(inv, {"example.test": dkim.Selectors(base, new)})
    inv = load_inventory(path)
    records = desired_for(inv, model, secrets)["example.test"]
    assert _dkim_names(records) == {f"{base}._domainkey", f"{new}._domainkey"}
    txt = {r.name: r.values[0] for r in records if r.type == "TXT"}
    assert txt[f"{new}._domainkey"] == pki.dkim_public_record(rotated["example.test"][new])
    assert site_vars(inv, model)["dkim_selectors"]["example.test"] == base

    # Switched: the new one signs; the old stays published until its time.
    until = time.time() + 3600
    dkim.save(inv, {"example.test": dkim.Selectors(new, None, {base: until})})
    inv = load_inventory(path)
    assert site_vars(inv, model)["dkim_selectors"] == {"example.test": new,
                                                       "example.net": base}
    assert _dkim_names(desired_for(inv, model, secrets)["example.test"]) == {
        f"{base}._domainkey", f"{new}._domainkey"}
    # The other domain was left alone.
    assert _dkim_names(desired_for(inv, model, secrets)["example.net"]) == {
        f"{base}._domainkey"}

    # After the grace period the plan leaves the old selector out (deletes it).
    dkim.save(inv, {"example.test": dkim.Selectors(new, None, {base: time.time() - 1})})
    inv = load_inventory(path)
    assert _dkim_names(desired_for(inv, model, secrets)["example.test"]) == {
        f"{new}._domainkey"}


def test_a_selector_without_its_key_names_the_vault_entry(tmp_path):
    from mailops.core.errors import MailopsError

    path = lab_inventory_copy(tmp_path / "lab", "tdkim", "198.19.9")
    inv = load_inventory(path)
    model = load_mail_model(inv)
    keys = {d: pki.generate_dkim_key(1024) for d in model.domains}
    dkim.save(inv, {"example.net": dkim.Selectors(model.dkim_selector, "next1")})
    inv = load_inventory(path)
    with pytest.raises(MailopsError, match=r"vault_dkim_selector_keys\.example\.net\.next1: "
                                           r"missing(.|\n)*dkim rotate"):
        desired_for(inv, model, Secrets(None, None, keys, ""))


def test_a_hand_broken_state_counts_as_never_rotated(tmp_path):
    path = lab_inventory_copy(tmp_path / "lab", "tdkim", "198.19.9")
    (path / "group_vars" / "all" / dkim.STATE_FILE).write_text(
        "mailops_dkim_rotation:\n  example.test: {signing: 'Not A Label'}\n"
        "  example.net: [1, 2]\n")
    inv = load_inventory(path)
    model = load_mail_model(inv)
    assert {d: s.signing for d, s in dkim.selectors(inv, model).items()} == {
        d: model.dkim_selector for d in model.domains}
