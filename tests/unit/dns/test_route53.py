"""Route 53 provider against botocore's Stubber: batch limits, retries, INSYNC.

Stubber checks every request against the Route 53 API model, and no request
leaves the process."""

from __future__ import annotations

import datetime

import boto3
import pytest
from botocore.stub import Stubber

from mailops.dns.plan import Change, Plan, make_plan
from mailops.dns.providers.base import ProviderError
from mailops.dns.providers.route53 import (
    MAX_CHARS,
    MAX_RECORDS,
    Route53Provider,
    quote_txt,
    unquote_txt,
)
from mailops.dns.records import Record, desired_records

from .samples import dkim_public, domain

ZONE = "big.test"
NOW = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)


class Recorder:
    """Passes calls to the stubbed client and keeps their arguments."""

    def __init__(self, client) -> None:
        self.client = client
        self.calls: list[tuple[str, dict]] = []

    def __getattr__(self, name):
        method = getattr(self.client, name)

        def call(**kwargs):
            self.calls.append((name, kwargs))
            return method(**kwargs)
        return call

    def batches(self) -> list[list[dict]]:
        return [kw["ChangeBatch"]["Changes"] for name, kw in self.calls
                if name == "change_resource_record_sets"]


@pytest.fixture
def stubbed():
    client = boto3.client("route53", region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    with Stubber(client) as stub:
        yield client, stub
        stub.assert_no_pending_responses()


def zone_found(stub: Stubber) -> None:
    stub.add_response("list_hosted_zones_by_name", {
        "HostedZones": [{"Id": "/hostedzone/ZBIG", "Name": f"{ZONE}.", "CallerReference": "r"}],
        "IsTruncated": False, "MaxItems": "10"})


def change_ok(stub: Stubber, n: int, status: str = "INSYNC") -> None:
    stub.add_response("change_resource_record_sets", {
        "ChangeInfo": {"Id": f"/change/C{n}", "Status": status, "SubmittedAt": NOW}})


def weighted(batch: list[dict]) -> tuple[int, int]:
    """(ResourceRecord elements, Value characters), UPSERT counted twice."""
    records = chars = 0
    for change in batch:
        w = 2 if change["Action"] == "UPSERT" else 1
        values = [r["Value"] for r in change["ResourceRecordSet"]["ResourceRecords"]]
        records += w * len(values)
        chars += w * sum(len(v) for v in values)
    return records, chars


def sent_changes(rec: Recorder) -> list[tuple[str, str, str]]:
    return [(c["Action"], c["ResourceRecordSet"]["Name"], c["ResourceRecordSet"]["Type"])
            for b in rec.batches() for c in b]


def expected_changes(plan: Plan) -> list[tuple[str, str, str]]:
    action = {"create": "CREATE", "update": "UPSERT", "delete": "DELETE"}
    return [(action[c.action], c.record.fqdn(ZONE), c.type) for c in plan.changes]


def test_more_than_1000_records_split_into_calls_within_the_limits(stubbed):
    client, stub = stubbed
    desired = [Record(f"h{i}", "A", 300, (f"10.0.{i // 250}.{i % 250}",)) for i in range(1500)]
    plan = make_plan(ZONE, desired, [], "prod")  # 1,500 records + 1,500 markers
    zone_found(stub)
    for n in range(3):
        change_ok(stub, n)
    rec = Recorder(client)
    provider = Route53Provider(rec, poll_interval=0)
    result = provider.apply(plan)
    batches = rec.batches()
    assert len(batches) == 3  # 3,000 records at 1,000 a request
    for batch in batches:
        records, chars = weighted(batch)
        assert records <= MAX_RECORDS and chars <= MAX_CHARS
    assert sent_changes(rec) == expected_changes(plan)  # all, once, in plan order
    assert result.complete and len(result.applied) == 3000
    assert result.round_trips == provider.round_trips == 4  # zone lookup + 3 batches


def test_values_near_the_character_limit_split_by_characters(stubbed):
    client, stub = stubbed
    big = "v=x; " + "k" * 2_895  # 2,900 characters; quoted it is a little longer
    changes = tuple(Change("create", f"t{i}", "TXT", None, Record(f"t{i}", "TXT", 300, (big,)))
                    for i in range(11))
    plan = Plan(ZONE, changes, 0, owner="prod")
    per_value = len(quote_txt(big))
    assert 10 * per_value <= MAX_CHARS < 11 * per_value
    zone_found(stub)
    change_ok(stub, 0)
    change_ok(stub, 1)
    rec = Recorder(client)
    Route53Provider(rec, poll_interval=0).apply(plan)
    batches = rec.batches()
    assert [len(b) for b in batches] == [10, 1]  # 11 records: far below 1,000
    assert all(weighted(b)[1] <= MAX_CHARS for b in batches)


def test_upsert_counts_twice(stubbed):
    client, stub = stubbed
    current = [Record(f"h{i}", "A", 300, ("192.0.2.1",)) for i in range(600)]
    desired = [Record(f"h{i}", "A", 300, ("192.0.2.2",)) for i in range(600)]
    owned = current + [m for m in make_plan(ZONE, current, [], "prod").changes
                       for m in [m.record] if m.type == "TXT"]
    plan = make_plan(ZONE, desired, owned, "prod")
    assert plan.count("update") == 600 and len(plan.changes) == 600
    provider = Route53Provider(Recorder(client), poll_interval=0)
    # As CREATEs 600 records would fit one request; as UPSERTs they weigh 1,200.
    assert [len(b) for b in provider.batches(plan)] == [500, 100]
    zone_found(stub)
    change_ok(stub, 0)
    change_ok(stub, 1)
    rec = provider.client
    provider.apply(plan)
    assert [weighted(b)[0] for b in rec.batches()] == [1000, 200]
    assert {c["Action"] for b in rec.batches() for c in b} == {"UPSERT"}
    # Characters too: 11 UPSERTs of 1,500 characters weigh 33,000 > 32,000.
    txt = "y" * 1_490
    ups = tuple(Change("update", f"t{i}", "TXT", Record(f"t{i}", "TXT", 300, ("old",)),
                       Record(f"t{i}", "TXT", 300, (txt,))) for i in range(11))
    creates = tuple(Change("create", c.record_name, "TXT", None, c.new) for c in ups)
    assert len(provider.batches(Plan(ZONE, creates, 0))) == 1
    assert len(provider.batches(Plan(ZONE, ups, 11))) == 2


def test_throttling_is_retried_with_backoff_then_succeeds(stubbed):
    client, stub = stubbed
    plan = make_plan(ZONE, desired_records(domain(ZONE)), [], "prod")
    zone_found(stub)
    stub.add_client_error("change_resource_record_sets", service_error_code="Throttling",
                          service_message="Rate exceeded", http_status_code=400)
    stub.add_client_error("change_resource_record_sets",
                          service_error_code="PriorRequestNotComplete", http_status_code=400)
    change_ok(stub, 0, status="PENDING")
    stub.add_response("get_change", {"ChangeInfo": {"Id": "/change/C0", "Status": "PENDING",
                                                    "SubmittedAt": NOW}})
    stub.add_response("get_change", {"ChangeInfo": {"Id": "/change/C0", "Status": "INSYNC",
                                                    "SubmittedAt": NOW}})
    slept: list[float] = []
    provider = Route53Provider(client, poll_interval=0.25, backoff=0.5, sleep=slept.append)
    result = provider.apply(plan)
    assert result.complete and len(result.applied) == len(plan.changes)
    assert slept == [0.5, 1.0, 0.25, 0.25]  # two backoffs, then two INSYNC polls
    assert result.round_trips == 1 + 3 + 2


def test_retries_are_bounded_and_failure_says_what_was_applied(stubbed):
    client, stub = stubbed
    plan = make_plan(ZONE, desired_records(domain(ZONE)), [], "prod")
    zone_found(stub)
    for _ in range(3):
        stub.add_client_error("change_resource_record_sets", service_error_code="Throttling",
                              http_status_code=400)
    provider = Route53Provider(client, poll_interval=0, max_attempts=3, sleep=lambda s: None)
    with pytest.raises(ProviderError) as err:
        provider.apply(plan)
    message = str(err.value)
    assert "Throttling" in message and "applied (0): nothing" in message
    assert f"not applied ({len(plan.changes)})" in message and "run again" in message


def test_a_refused_second_batch_reports_the_first_as_applied(stubbed):
    client, stub = stubbed
    desired = [Record(f"h{i}", "A", 300, ("192.0.2.1",)) for i in range(600)]
    plan = make_plan(ZONE, desired, [], "prod")
    zone_found(stub)
    change_ok(stub, 0)
    stub.add_client_error("change_resource_record_sets", service_error_code="InvalidChangeBatch",
                          service_message="Tried to create resource record set but it "
                          "already exists", http_status_code=400)
    with pytest.raises(ProviderError) as err:
        Route53Provider(client, poll_interval=0).apply(plan)
    assert len(err.value.applied) == 1000 and len(err.value.not_applied) == 200
    assert "request 2 of 2 refused: InvalidChangeBatch" in str(err.value)
    assert "zone change since the plan" in str(err.value)


def test_missing_hosted_zone_is_a_clear_error(stubbed):
    client, stub = stubbed
    stub.add_response("list_hosted_zones_by_name", {
        "HostedZones": [{"Id": "/hostedzone/ZX", "Name": "other.test.", "CallerReference": "r"}],
        "IsTruncated": False, "MaxItems": "10"})
    with pytest.raises(ProviderError, match="no hosted zone of that name"):
        Route53Provider(client).current(ZONE)


def test_current_reads_all_pages_and_joins_txt(stubbed):
    client, stub = stubbed
    dkim = dkim_public()
    zone_found(stub)
    stub.add_response("list_resource_record_sets", {
        "ResourceRecordSets": [
            {"Name": f"{ZONE}.", "Type": "SOA", "TTL": 900, "ResourceRecords": [
                {"Value": "ns. host. 1 7200 900 1209600 86400"}]},
            {"Name": f"s._domainkey.{ZONE}.", "Type": "TXT", "TTL": 300,
             "ResourceRecords": [{"Value": quote_txt(dkim)}]}],
        "IsTruncated": True, "NextRecordName": f"\\052.{ZONE}.", "NextRecordType": "A",
        "MaxItems": "300"})
    stub.add_response("list_resource_record_sets", {
        "ResourceRecordSets": [{"Name": f"\\052.{ZONE}.", "Type": "A", "AliasTarget": {
            "HostedZoneId": "Z2", "DNSName": "lb.example.", "EvaluateTargetHealth": False}}],
        "IsTruncated": False, "MaxItems": "300"},
        expected_params={"HostedZoneId": "ZBIG", "StartRecordName": f"\\052.{ZONE}.",
                         "StartRecordType": "A"})
    records = Route53Provider(client).current(ZONE)
    assert records == [Record("s._domainkey", "TXT", 300, (dkim,)),
                       Record("*", "A", 0, ("ALIAS lb.example.",))]


def test_txt_quoting_round_trips():
    dkim = dkim_public()
    quoted = quote_txt(dkim)
    assert quoted.count('"') == 4 and quoted.startswith('"v=DKIM1')
    assert max(len(s) for s in quoted.split('" "')) <= 256
    tricky = 'say "hi" \\ café\t'
    assert unquote_txt(quote_txt(tricky)) == tricky
    assert quote_txt(tricky) == '"say \\"hi\\" \\\\ caf\\303\\251\\011"'
    assert unquote_txt(quoted) == dkim
