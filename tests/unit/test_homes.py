"""Mailbox homes: stable, spread over pairs and nodes, few moves when pairs
are added, pinned by the mail model; bad input refused with file and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mailops.core.errors import InventoryErrors
from mailops.inventory.model import load_inventory
from mailops.site import ansible_vars
from mailops.site.homes import home_of, homes, moves
from mailops.site.mailmodel import load_mail_model
from tests.conftest import lab_inventory_copy

ADDRESSES = [f"user{i}@example.test" for i in range(2000)]
TWO_PAIRS = [("mail1", "mail2"), ("mail3", "mail4")]


def _inventory(tmp_path: Path, nodes: int, mailboxes: list | None = None) -> Path:
    inv = lab_inventory_copy(tmp_path / "inv", "thomes", "198.19.9")
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())
    hosts["all"]["children"]["mail"]["hosts"] = {
        f"mail{i}": {"ansible_host": f"198.19.9.{30 + i}"} for i in range(1, nodes + 1)}
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts, sort_keys=False))
    if mailboxes is not None:
        mail = inv / "group_vars" / "all" / "mail.yml"
        data = yaml.safe_load(mail.read_text())
        data["mailops_mailboxes"] = mailboxes
        mail.write_text(yaml.safe_dump(data))
    return inv


def test_every_mailbox_has_a_home_node_and_its_pair_partner_as_fallback():
    for address in ADDRESSES[:200]:
        home = home_of(address, TWO_PAIRS)
        pair = next(p for p in TWO_PAIRS if home.node in p)
        assert home.fallback in pair and home.fallback != home.node
        assert home.nodes == (home.node, home.fallback)
        assert home_of(address.upper(), TWO_PAIRS) == home  # stable, case-blind


def test_homes_spread_evenly_over_pairs_and_nodes():
    count = {n: 0 for p in TWO_PAIRS for n in p}
    for address in ADDRESSES:
        count[home_of(address, TWO_PAIRS).node] += 1
    share = {n: c / len(ADDRESSES) for n, c in count.items()}
    assert all(0.20 < s < 0.30 for s in share.values()), share


def test_adding_a_pair_moves_only_the_mailboxes_the_new_pair_takes():
    three = [*TWO_PAIRS, ("mail5", "mail6")]
    before = {a: home_of(a, TWO_PAIRS).node for a in ADDRESSES}
    after = {a: home_of(a, three).node for a in ADDRESSES}
    moved = moves(before, after)
    assert moved and all(new in ("mail5", "mail6") for _, _, new in moved)
    # About a third (rendezvous hashing), not most of them (a plain modulo).
    assert 0.28 < len(moved) / len(ADDRESSES) < 0.39, len(moved)


def test_a_lone_node_is_every_mailbox_home_with_no_fallback():
    home = home_of("alice@example.test", [("mail1",)])
    assert home.node == "mail1" and home.fallback is None and home.nodes == ("mail1",)


def test_a_pinned_home_wins_and_reaches_ansible_with_addresses(tmp_path):
    auto = home_of("alice@example.test", TWO_PAIRS)
    pin = next(n for p in TWO_PAIRS for n in p if n != auto.node)
    inv = load_inventory(_inventory(tmp_path, 4, [
        {"address": "alice@example.test", "quota": "1G", "home": pin},
        {"address": "bob@example.test", "quota": "1G"}]))
    model = load_mail_model(inv)
    got = homes(inv, model)
    assert got["alice@example.test"].node == pin and got["alice@example.test"].pinned
    assert got["bob@example.test"] == home_of("bob@example.test", TWO_PAIRS)
    site = ansible_vars.site_vars(inv, model)
    addr = {h.name: str(h.address) for h in inv.hosts}
    alice = next(h for h in site["homes"] if h["address"] == "alice@example.test")
    assert alice["node"] == pin
    assert alice["nodes"] == [addr[pin], addr[got["alice@example.test"].fallback]]


def test_a_home_that_is_not_a_mail_node_is_refused(tmp_path):
    inv = load_inventory(_inventory(tmp_path, 2, [
        {"address": "alice@example.test", "quota": "1G", "home": "ns1"}]))
    with pytest.raises(InventoryErrors) as info:
        load_mail_model(inv)
    err = next(e for e in info.value.errors if e.key == "mailops_mailboxes[0].home")
    assert "'ns1' is not a mail node" in err.problem and "mail1, mail2" in err.fix
    assert err.file.endswith("group_vars/all/mail.yml")


def test_an_odd_number_of_mail_nodes_is_refused(tmp_path):
    with pytest.raises(InventoryErrors) as info:
        load_inventory(_inventory(tmp_path, 3))
    err = next(e for e in info.value.errors if "no pair" in e.problem)
    assert "mail3 has no pair" in err.problem and "mail3" in err.fix
    assert str(err.file).endswith("hosts.yml") and err.key.endswith("mail")


def test_plan_reads_home_moves_from_the_home_table_diff(tmp_path):
    from mailops.workflows.plan import HOMES_FILE, home_moves

    inv = load_inventory(_inventory(tmp_path, 4))
    before = ("# Managed by mailops\n"
              "alice@example.test lmtp:[198.19.9.31]:24, [198.19.9.32]:24\n"
              "bob@example.test lmtp:[198.19.9.33]:24, [198.19.9.34]:24\n")
    after = before.replace("[198.19.9.31]:24, [198.19.9.32]",
                           "[198.19.9.32]:24, [198.19.9.31]")
    tasks = [{"host": "mail1", "task": "x", "handler": False, "changed": True,
              "diff": [{"before_header": "/etc/postfix/main.cf", "before": "a", "after": "b"},
                       {"before_header": HOMES_FILE, "after_header": HOMES_FILE,
                        "before": before, "after": after}]}]
    assert home_moves(tasks, inv) == [("alice@example.test", "mail1", "mail2")]
    assert home_moves(tasks[:0], inv) == []


def test_each_node_trusts_its_peers_and_stores_only_its_pairs_mailboxes(tmp_path):
    inv = load_inventory(_inventory(tmp_path, 4, [
        {"address": f"user{i}@example.test", "quota": "1G"} for i in range(40)]))
    model = load_mail_model(inv)
    site = ansible_vars.site_vars(inv, model)
    addr = {h.name: str(h.address) for h in inv.hosts}
    assert site["mail_peers"]["mail1"] == [addr["mail2"], addr["mail3"], addr["mail4"]]
    got = homes(inv, model)
    for node in ("mail1", "mail2", "mail3", "mail4"):
        pair = next(p for p in TWO_PAIRS if node in p)
        want = [a for a, h in got.items() if h.node in pair]
        assert site["pair_mailboxes"][node] == want and want
    # Both pairs together store every mailbox once.
    assert sorted(site["pair_mailboxes"]["mail1"] + site["pair_mailboxes"]["mail3"]) == \
        sorted(got)


def test_pinning_a_home_edits_only_that_entry_and_keeps_the_comments(tmp_path):
    from mailops.site.mailmodel import set_mailbox_home

    inv_path = _inventory(tmp_path, 4)
    mail = inv_path / "group_vars" / "all" / "mail.yml"
    text = mail.read_text()
    (inv_path / "group_vars" / "all" / "mail.yml").write_text(
        "# the lab's mailboxes\n" + text)
    file = set_mailbox_home(load_inventory(inv_path), "Bob@example.test", "mail3")
    assert file == mail
    edited = mail.read_text()
    assert edited.startswith("# the lab's mailboxes\n")
    model = load_mail_model(load_inventory(inv_path))
    assert model.mailbox("bob@example.test").home == "mail3"
    assert all(b.home is None for b in model.mailboxes if b.address != "bob@example.test")
    # Again, to another node: the line is replaced, not added.
    set_mailbox_home(load_inventory(inv_path), "bob@example.test", "mail4")
    assert mail.read_text().count("home:") == 1
    assert load_mail_model(load_inventory(inv_path)).mailbox("bob@example.test").home == "mail4"


def test_pinning_an_unknown_mailbox_names_the_file_and_the_fix(tmp_path):
    from mailops.core.errors import InventoryError
    from mailops.site.mailmodel import set_mailbox_home

    inv = load_inventory(_inventory(tmp_path, 2))
    with pytest.raises(InventoryError) as info:
        set_mailbox_home(inv, "nobody@example.test", "mail2")
    assert info.value.key == "mailops_mailboxes"
    assert info.value.file.endswith("group_vars/all/mail.yml")
    assert "nobody@example.test" in info.value.fix


def test_move_mailbox_refuses_bad_input_before_touching_any_host(tmp_path):
    from mailops.core.errors import InventoryError, MailopsError
    from mailops.ops.move import move_mailbox

    inv = load_inventory(_inventory(tmp_path, 2))
    with pytest.raises(MailopsError) as info:
        move_mailbox(inv, "alice@example.test", "ns1")  # no SSH is tried: no lab is up
    assert "--to ns1: not a mail node" in str(info.value) and "mail1, mail2" in str(info.value)
    with pytest.raises(InventoryError) as info:
        move_mailbox(inv, "nobody@example.test", "mail2")
    assert info.value.file.endswith("group_vars/all/mail.yml")
    assert "nobody@example.test is not a mailbox" in info.value.problem
    home = homes(inv, load_mail_model(inv))["alice@example.test"].node
    result = move_mailbox(inv, "Alice@example.test", home)
    assert not result.moved and result.steps == [] and "nothing to do" in result.text()
