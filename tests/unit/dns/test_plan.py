"""Plans: creates/updates/deletes, ownership markers, the safety threshold."""

from __future__ import annotations

import json

import pytest

from mailops.dns.ownership import marker_for, marker_name, parse_marker
from mailops.dns.plan import Plan, UnsafePlanError, check_safety, make_plan
from mailops.dns.records import Record, desired_records

from .samples import dkim_public, domain

ZONE = "example.test"
OWNER = "prod"


def applied(plan: Plan, current: list[Record] | None = None) -> list[Record]:
    """The zone after a perfect apply of plan on current."""
    zone = {r.key: r for r in current or []}
    for c in plan.changes:
        if c.action == "delete":
            zone.pop(c.record.key)
        else:
            zone[c.record.key] = c.record
    return list(zone.values())


def published(*domains) -> list[Record]:
    desired = [r for d in domains for r in desired_records(d)]
    return applied(make_plan(ZONE, desired, [], OWNER))


def test_plan_on_an_empty_zone_is_all_creates_each_with_its_marker():
    desired = desired_records(domain())
    plan = make_plan(ZONE, desired, [], OWNER)
    assert {c.action for c in plan.changes} == {"create"}
    records = [c for c in plan.changes if not c.is_marker]
    markers = [c for c in plan.changes if c.is_marker]
    assert sorted(c.record.key for c in records) == sorted(r.key for r in desired)
    assert sorted(c.record_name for c in markers) == sorted(
        marker_name(r.name, r.type) for r in desired)
    for m in markers:
        claim = parse_marker(m.record)
        assert claim is not None and claim.owner == OWNER
    assert plan.existing_count == 0
    check_safety(plan)  # a first publish is always allowed


def test_markers_are_created_before_and_deleted_after_their_records():
    plan = make_plan(ZONE, desired_records(domain()), [], OWNER)
    kinds = [c.is_marker for c in plan.changes]
    assert kinds == sorted(kinds, reverse=True)  # all markers first
    gone = make_plan(ZONE, [], published(domain()), OWNER)
    kinds = [c.is_marker for c in gone.changes]
    assert kinds == sorted(kinds)  # all markers last


def test_plan_after_apply_is_empty_even_in_another_spelling():
    current = published(domain())
    assert make_plan(ZONE, desired_records(domain()), current, OWNER).is_empty
    # A server hands records back in its own spelling: case, order, IPv6 form.
    respelled = []
    for r in current:
        values = tuple(reversed(r.values))
        if r.type in ("MX", "SRV"):
            values = tuple(v.upper() for v in values)
        if r.type == "AAAA":
            values = ("2001:0db8:0000:0000:0000:0000:0000:0025",)
        respelled.append(Record(r.name.upper(), r.type.lower(), r.ttl, values))
    plan = make_plan(ZONE, desired_records(domain()), respelled, OWNER)
    assert plan.is_empty, plan.table()
    assert plan.existing_count == len(desired_records(domain()))


def test_rotating_the_dkim_key_is_exactly_one_update():
    current = published(domain(key=0))
    plan = make_plan(ZONE, desired_records(domain(key=1)), current, OWNER)
    assert len(plan.changes) == 1, plan.table()
    (change,) = plan.changes
    assert (change.action, change.record_name, change.type) == (
        "update", "mail2025._domainkey", "TXT")
    assert change.old is not None and change.old.values == (dkim_public(0),)
    assert change.new is not None and change.new.values == (dkim_public(1),)
    check_safety(plan)


def test_a_ttl_change_is_an_update_of_that_record_only():
    current = published(domain())
    plan = make_plan(ZONE, desired_records(domain(ttl=3600)), current, OWNER)
    assert {c.action for c in plan.changes} == {"update"}
    assert not any(c.is_marker for c in plan.changes)  # marker TTL is fixed


def test_adding_a_domain_creates_exactly_that_domains_records():
    first = domain()
    second = domain("shop.example.test", zone=ZONE, key=1)
    current = published(first)
    plan = make_plan(ZONE, desired_records(first) + desired_records(second), current, OWNER)
    assert {c.action for c in plan.changes} == {"create"}
    new_keys = {r.key for r in desired_records(second)} - {r.key for r in desired_records(first)}
    assert {c.record.key for c in plan.changes if not c.is_marker} == new_keys
    # The shared service name (mail A/AAAA) is not created twice.
    assert ("mail", "A") not in new_keys and ("shop", "MX") in new_keys
    assert len([c for c in plan.changes if c.is_marker]) == len(new_keys)


def test_conflicting_desired_records_are_an_error():
    a = Record("mail", "A", 300, ("192.0.2.1",))
    b = Record("mail", "A", 300, ("192.0.2.2",))
    with pytest.raises(ValueError, match="two different desired A records for mail"):
        make_plan(ZONE, [a, b], [], OWNER)
    with pytest.raises(ValueError, match="reserved for owner markers"):
        make_plan(ZONE, [Record("_mailops-owner-a.x", "TXT", 300, ("x",))], [], OWNER)


FOREIGN = [
    Record("www", "A", 3600, ("192.0.2.80",)),
    Record("@", "TXT", 3600, ("google-site-verification=abc",)),  # where our SPF goes
    Record("legacy._domainkey", "TXT", 3600, ("v=DKIM1; p=old",)),
    Record("@", "NS", 3600, ("ns1.example.test.",)),
]


def test_a_foreign_record_survives_and_is_never_in_the_plan():
    foreign_keys = {r.key for r in FOREIGN}
    plan = make_plan(ZONE, desired_records(domain()), FOREIGN, OWNER)
    assert not [c for c in plan.changes if c.record.key in foreign_keys]
    # Our SPF would replace the foreign apex TXT: reported, not done.
    assert [(k.record_name, k.type) for k in plan.conflicts] == [("@", "TXT")]
    assert "without a mailops owner marker" in plan.table()
    zone = applied(plan, FOREIGN)
    # Removing every mail domain deletes only what is ours.
    gone = make_plan(ZONE, [], zone, OWNER)
    assert gone.changes and not [c for c in gone.changes if c.record.key in foreign_keys]
    assert {r.key for r in applied(gone, zone)} == foreign_keys


def test_records_of_another_owner_id_are_left_alone():
    theirs = published(domain())
    relabelled = [marker_for(parse_record(r), "staging") if parse_marker(r) else r
                  for r in theirs]
    plan = make_plan(ZONE, desired_records(domain(key=1)), relabelled, OWNER)
    assert plan.is_empty
    assert plan.conflicts and all("claimed by owner id 'staging'" in k.reason
                                  for k in plan.conflicts)
    assert make_plan(ZONE, [], relabelled, OWNER).is_empty


def parse_record(marker: Record) -> Record:
    claim = parse_marker(marker)
    assert claim is not None
    return Record(claim.name, claim.type, 300, ("x",))


def test_a_hand_edited_marker_blocks_its_record():
    current = [Record("_mailops-owner-mx", "TXT", 300, ("mine, not mailops",))]
    plan = make_plan(ZONE, [Record("@", "MX", 300, ("10 mail.example.test.",))], current,
                     OWNER)
    assert plan.is_empty and plan.conflicts[0].reason == "claimed by owner id '<unreadable>'"


def test_identical_unowned_record_is_left_alone_or_adopted_on_request():
    mx = Record("@", "MX", 300, ("10 mail.example.test.",))
    assert make_plan(ZONE, [mx], [mx], OWNER).is_empty
    adopt = make_plan(ZONE, [mx], [mx], OWNER, adopt=True)
    assert [(c.action, c.record_name) for c in adopt.changes] == [
        ("create", "_mailops-owner-mx")]
    old = Record("@", "MX", 300, ("10 old.example.test.",))
    adopt = make_plan(ZONE, [mx], [old], OWNER, adopt=True)
    assert [(c.action, c.record_name) for c in adopt.changes] == [
        ("create", "_mailops-owner-mx"), ("update", "@")]


def test_half_applied_run_is_completed_by_the_next_plan():
    mx = Record("@", "MX", 300, ("10 mail.example.test.",))
    marker = marker_for(mx, OWNER)
    # Marker written, record not (the run stopped between two requests).
    plan = make_plan(ZONE, [mx], [marker], OWNER)
    assert [(c.action, c.record_name) for c in plan.changes] == [("create", "@")]
    # Record deleted, marker not: the marker goes too.
    plan = make_plan(ZONE, [], [marker], OWNER)
    assert [(c.action, c.record_name) for c in plan.changes] == [
        ("delete", "_mailops-owner-mx")]


def test_a_plan_deleting_most_of_the_zone_is_refused_without_force():
    current = published(domain())
    plan = make_plan(ZONE, desired_records(domain())[:2], current, OWNER)
    assert plan.count("delete") == 14 and plan.existing_count == 16
    with pytest.raises(UnsafePlanError) as err:
        check_safety(plan)
    message = str(err.value)
    assert "delete 14 of the 16 records" in message and "--force" in message
    assert "Nothing was applied" in message
    check_safety(plan, force=True)  # allowed when forced
    check_safety(plan, max_share=0.9)  # or under a looser threshold


def test_safety_counts_updates_and_spares_small_zones():
    current = published(domain())
    many = make_plan(ZONE, desired_records(domain(key=1, ttl=60)), current, OWNER)
    assert many.count("update") == 16
    with pytest.raises(UnsafePlanError, match="update 16 and delete 0"):
        check_safety(many)
    small = [Record(n, "A", 300, ("192.0.2.1",)) for n in ("a", "b", "c")]
    small_zone = applied(make_plan(ZONE, small, [], OWNER))
    gone = make_plan(ZONE, [], small_zone, OWNER)
    assert gone.existing_count == 3 and gone.count("delete") == 3
    check_safety(gone)  # fewer than 4 owned records: nothing to protect yet


def test_plan_prints_as_table_and_json():
    current = published(domain())
    plan = make_plan(ZONE, desired_records(domain(key=1)) + FOREIGN[:1], current, OWNER)
    table = plan.table(width=40)
    lines = table.splitlines()
    assert lines[0].startswith("zone example.test: 1 to create, 1 to update, 0 to delete")
    header = lines[1].split()
    assert header == ["ACTION", "NAME", "TYPE", "TTL", "OLD", "NEW"]
    dkim_row = next(line for line in lines if "_domainkey" in line)
    assert "..." in dkim_row and len(dkim_row) < 140  # the 410-char key is shortened
    # Columns are aligned: every row puts TYPE at the same offset.
    col = lines[1].index("TYPE")
    assert all(line[col:col + 4].strip() in ("TXT", "A", "TYPE") for line in lines[1:4])
    assert "owner-marker" in table
    data = json.loads(plan.to_json())
    assert data["zone"] == ZONE and data["summary"] == {"create": 1, "update": 1, "delete": 0}
    full = next(c for c in data["changes"] if c["type"] == "TXT" and not c["marker"])
    assert full["new"]["values"] == [dkim_public(1)]  # JSON keeps whole values
    empty = make_plan(ZONE, desired_records(domain()), current, OWNER)
    assert empty.table() == "zone example.test: no changes (16 records owned)"
