"""The backup store on S3: moto in server mode (real HTTP on 127.0.0.1) for
what S3 does, botocore's Stubber for the API's limits that are slow to
reach for real (a listing past 1,000 keys, a part failing mid-upload)."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from botocore.stub import ANY, Stubber

from mailops.ops.store import DELETE_BATCH, PART_SIZE, S3Store, StoreError, open_store
from tests.integration.dns import loopback

VENV_BIN = Path(__file__).resolve().parents[3] / ".venv" / "bin"
FAKE = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true"}  # never ask 169.254.169.254


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = loopback.which(str(VENV_BIN / "moto_server"))
    proc, url = loopback.start_moto(server, tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield url
    finally:
        loopback.stop(proc)


@pytest.fixture
def client(moto, monkeypatch):
    for k, v in FAKE.items():
        monkeypatch.setenv(k, v)
    return boto3.client("s3", region_name="us-east-1", endpoint_url=moto)


@pytest.fixture
def bucket(client, request):
    name = "mo-" + request.node.name.replace("_", "-")[:50].lower()
    client.create_bucket(Bucket=name)
    return name


def test_objects_round_trip_and_listings_go_past_one_page(client, bucket, moto):
    store = open_store(f"s3://{bucket}/backups/site", endpoint_url=moto, client=client)
    assert isinstance(store, S3Store) and store.url == f"s3://{bucket}/backups/site"
    names = [f"objects/{i % 256:02x}/{i:05d}" for i in range(1500)]
    for name in names:
        store.put(name, name.encode())
    store.put("snapshots/one.json", b"{}")
    assert sorted(store.names("objects/")) == sorted(names)  # 1,000 a page: two pages
    assert store.get(names[1234]) == names[1234].encode()
    store.delete(names)  # two batches of at most 1,000
    assert list(store.names("objects/")) == []
    assert list(store.names("snapshots/")) == ["snapshots/one.json"]


def test_a_large_object_goes_up_in_parts_and_comes_back_whole(client, bucket, moto):
    store = open_store(f"s3://{bucket}/p", endpoint_url=moto, client=client)
    data = os.urandom(2 * PART_SIZE + 12345)
    store.put("objects/big", data)
    assert store.get("objects/big") == data
    head = client.head_object(Bucket=bucket, Key="p/objects/big")
    assert head["ETag"].strip('"').endswith("-3")  # S3's mark of a 3-part upload


def test_a_missing_bucket_a_missing_object_and_no_credentials_are_named(client, moto,
                                                                       monkeypatch, tmp_path):
    store = open_store("s3://no-such-bucket/x", endpoint_url=moto, client=client)
    with pytest.raises(StoreError, match="the bucket no-such-bucket does not exist"):
        store.put("objects/a", b"a")
    client.create_bucket(Bucket="mo-missing-object")
    with pytest.raises(StoreError, match="missing from the backup"):
        open_store("s3://mo-missing-object/x", client=client).get("snapshots/none.json")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    bare = open_store("s3://mo-missing-object/x", region="us-east-1", endpoint_url=moto)
    with pytest.raises(StoreError, match="no AWS credentials"):
        bare.put("objects/a", b"a")


def _stubbed() -> tuple[S3Store, Stubber]:
    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    return S3Store("bkt", "pre", client), Stubber(client)


def test_a_listing_follows_the_continuation_token_past_1000_keys():
    store, stub = _stubbed()
    first = [{"Key": f"pre/objects/{i:05d}"} for i in range(1000)]
    second = [{"Key": f"pre/objects/{i:05d}"} for i in range(1000, 1700)]
    stub.add_response("list_objects_v2", {"Contents": first, "IsTruncated": True,
                                          "NextContinuationToken": "t1"},
                      {"Bucket": "bkt", "Prefix": "pre/objects/"})
    stub.add_response("list_objects_v2", {"Contents": second, "IsTruncated": False},
                      {"Bucket": "bkt", "Prefix": "pre/objects/", "ContinuationToken": "t1"})
    with stub:
        got = list(store.names("objects/"))
    stub.assert_no_pending_responses()
    assert len(got) == 1700 and got[0] == "objects/00000" and got[-1] == "objects/01699"


def test_deletes_go_in_batches_of_1000():
    store, stub = _stubbed()
    names = [f"objects/{i:05d}" for i in range(2500)]
    for start, end in ((0, 1000), (1000, 2000), (2000, 2500)):
        batch = [{"Key": f"pre/{n}"} for n in names[start:end]]
        stub.add_response("delete_objects", {"Deleted": []},
                          {"Bucket": "bkt", "Delete": {"Objects": batch, "Quiet": True}})
    with stub:
        store.delete(names)
    stub.assert_no_pending_responses()
    assert DELETE_BATCH == 1000


def test_a_part_that_fails_aborts_the_upload():
    store, stub = _stubbed()
    stub.add_response("create_multipart_upload", {"UploadId": "u1"},
                      {"Bucket": "bkt", "Key": "pre/objects/big"})
    stub.add_response("upload_part", {"ETag": '"e1"'},
                      {"Bucket": "bkt", "Key": "pre/objects/big", "UploadId": "u1",
                       "PartNumber": 1, "Body": ANY})
    stub.add_client_error("upload_part", service_error_code="InternalError",
                          http_status_code=500)
    stub.add_response("abort_multipart_upload", {},
                      {"Bucket": "bkt", "Key": "pre/objects/big", "UploadId": "u1"})
    with stub, pytest.raises(StoreError, match="put failed: InternalError"):
        store.put("objects/big", b"x" * (2 * PART_SIZE + 1))
    stub.assert_no_pending_responses()  # the abort was sent
