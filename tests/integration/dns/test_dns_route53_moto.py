"""Route 53 provider against moto in server mode on 127.0.0.1."""

from __future__ import annotations

import uuid

import boto3
import pytest

from mailops.dns.plan import check_safety, make_plan
from mailops.dns.providers.base import ProviderError
from mailops.dns.providers.route53 import Route53Provider, unquote_txt
from mailops.dns.records import desired_records
from tests.unit.dns.samples import dkim_public, domain

OWNER = "itest"


@pytest.fixture
def route53(moto_url):
    # Dummy credentials and an explicit endpoint: nothing leaves 127.0.0.1.
    return boto3.client("route53", endpoint_url=moto_url, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def hosted_zone(client, zone: str) -> str:
    made = client.create_hosted_zone(Name=zone, CallerReference=str(uuid.uuid4()))
    return made["HostedZone"]["Id"]


def test_apply_then_replan_is_empty(route53):
    zone = "r53.test"
    zone_id = hosted_zone(route53, zone)
    p = Route53Provider(route53, poll_interval=0.01)
    desired = desired_records(domain(zone))
    plan = make_plan(zone, desired, p.current(zone), OWNER)
    check_safety(plan)
    result = p.apply(plan)
    assert result.complete and len(result.applied) == 2 * len(desired)
    assert result.round_trips <= 3  # one change request (+ INSYNC polls)
    # What Route 53 holds: the DKIM key as two quoted strings of <=255.
    rrsets = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    (dkim,) = [r for r in rrsets if r["Name"] == f"mail2025._domainkey.{zone}."]
    value = dkim["ResourceRecords"][0]["Value"]
    assert value.count('"') == 4 and unquote_txt(value) == dkim_public()
    again = make_plan(zone, desired, Route53Provider(route53).current(zone), OWNER)
    assert again.is_empty, again.table()
    # Rotation is one UPSERT; removal leaves foreign records (SOA, NS, www).
    route53.change_resource_record_sets(HostedZoneId=zone_id, ChangeBatch={"Changes": [{
        "Action": "CREATE", "ResourceRecordSet": {"Name": f"www.{zone}.", "Type": "A",
                                                  "TTL": 60, "ResourceRecords": [
                                                      {"Value": "192.0.2.80"}]}}]})
    rotate = make_plan(zone, desired_records(domain(zone, key=1)), p.current(zone), OWNER)
    assert [(c.action, c.record_name) for c in rotate.changes] == [
        ("update", "mail2025._domainkey")]
    p.apply(rotate)
    gone = make_plan(zone, [], p.current(zone), OWNER)
    check_safety(gone, force=True)
    p.apply(gone)
    left = {(r.name, r.type) for r in p.current(zone)}
    assert left == {("@", "NS"), ("www", "A")}


def test_missing_zone_is_a_clear_error(route53):
    with pytest.raises(ProviderError, match="no hosted zone of that name"):
        Route53Provider(route53).current("absent.test")
