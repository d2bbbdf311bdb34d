"""RFC 2136 messages built offline: prerequisites, packing, the TSIG key."""

from __future__ import annotations

import dns.name
import dns.rdataclass
import dns.rdatatype
import pytest

from mailops.dns.ownership import marker_for
from mailops.dns.plan import make_plan
from mailops.dns.providers.rfc2136 import Rfc2136Provider, TsigKey
from mailops.dns.records import Record, desired_records

from .samples import domain

ZONE = "example.test"
SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I="
KEYGEN_OUTPUT = f'key "mailops-test" {{\n\talgorithm hmac-sha256;\n\tsecret "{SECRET}";\n}};\n'


def provider(**kw) -> Rfc2136Provider:
    return Rfc2136Provider("127.0.0.1", 5353, key=TsigKey.from_bind(KEYGEN_OUTPUT), **kw)


def test_tsig_key_from_tsig_keygen_output_and_secret_kept_out_of_repr():
    key = TsigKey.from_bind(KEYGEN_OUTPUT)
    assert (key.name, key.algorithm, key.secret) == ("mailops-test", "hmac-sha256", SECRET)
    assert SECRET not in repr(key) and SECRET not in repr(provider())
    with pytest.raises(ValueError, match="not base64"):
        TsigKey("k", "not base64!")
    with pytest.raises(ValueError, match="TSIG key is required"):
        Rfc2136Provider("127.0.0.1")


def test_one_domain_is_one_signed_update_message():
    plan = make_plan(ZONE, desired_records(domain(ZONE)), [], "prod")
    messages = provider()._messages(plan)
    assert len(messages) == 1
    update, changes = messages[0]
    assert list(changes) == list(plan.changes)
    assert update.had_tsig and update.keyname == dns.name.from_text("mailops-test")
    wire = update.to_wire()
    assert len(wire) < 65_535


def test_prerequisites_restate_ownership():
    mx = Record("@", "MX", 300, ("10 mail.example.test.",))
    plan = make_plan(ZONE, [mx], [], "prod")
    update, _ = provider()._messages(plan)[0]
    prereq = {(r.name.to_text(), dns.rdatatype.to_text(r.rdtype), r.rdclass)
              for r in update.prerequisite}
    # Create: marker and record must both be absent (class NONE, type given).
    assert ("_mailops-owner-mx.example.test.", "TXT", dns.rdataclass.NONE) in prereq
    assert ("example.test.", "MX", dns.rdataclass.NONE) in prereq
    # Update: our marker must still be there with our value (class IN).
    current = [mx, marker_for(mx, "prod")]
    newer = Record("@", "MX", 300, ("10 mx2.example.test.",))
    update, _ = provider()._messages(make_plan(ZONE, [newer], current, "prod"))[0]
    (pre,) = update.prerequisite
    assert pre.name.to_text() == "_mailops-owner-mx.example.test."
    assert pre.rdclass == dns.rdataclass.IN
    assert b"".join(pre[0].strings) == b"mailops owner=prod type=MX"


def test_each_prerequisite_appears_once():
    # BIND compares prerequisite RRsets whole: a repeated marker RR would
    # make the check fail (NXRRSET) and the whole update be refused.
    recs = [Record("@", "MX", 300, ("10 mail.example.test.",)),
            Record("mail", "A", 300, ("192.0.2.1",))]
    current = recs + [marker_for(r, "prod") for r in recs]
    update, _ = provider()._messages(make_plan(ZONE, [], current, "prod"))[0]
    names = [r.name.to_text() for r in update.prerequisite]
    assert sorted(names) == ["_mailops-owner-a.mail.example.test.",
                             "_mailops-owner-mx.example.test."]
    assert all(len(r) == 1 for r in update.prerequisite)


def test_a_plan_too_big_for_one_message_is_split_in_order():
    desired = [Record(f"k{i}._domainkey", "TXT", 300, ("v=DKIM1; p=" + "A" * 380,))
               for i in range(400)]
    plan = make_plan(ZONE, desired, [], "prod")
    messages = provider()._messages(plan)
    assert len(messages) > 1
    assert [c for _, cs in messages for c in cs] == list(plan.changes)
    for update, _ in messages:
        assert len(update.to_wire()) <= 65_535  # signed, as it goes out
    small = provider(max_message=4_000)._messages(plan)
    assert all(len(u.to_wire()) <= 4_000 for u, _ in small)
