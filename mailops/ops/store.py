"""Where backups go: a local folder or an S3 bucket, behind one small
interface (put, get, names under a prefix, delete). Names are relative
("objects/ab/abcd...", "snapshots/2026-12-02T10:00:00Z.json").

S3 through boto3 with its own credential chain (environment, shared files,
instance role): listings are paginated (a bucket holds far more than the
1,000 keys of one page), deletes go in batches of 1,000 (the API's limit),
and large objects are uploaded in parts, the upload aborted if a part fails
so no half object is left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from mailops.core.errors import MailopsError

PART_SIZE = 8 * 1024 * 1024  # S3's parts are 5 MiB at least (but the last)
MULTIPART_FROM = 2 * PART_SIZE
DELETE_BATCH = 1000


class StoreError(MailopsError):
    pass


class Store(Protocol):
    url: str

    def put(self, name: str, data: bytes) -> None: ...
    def get(self, name: str) -> bytes: ...
    def names(self, prefix: str) -> Iterator[str]: ...
    def delete(self, names: list[str]) -> None: ...


@dataclass
class LocalStore:
    root: Path

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def _path(self, name: str) -> Path:
        path = (self.root / name).resolve()
        if self.root.resolve() not in path.parents:
            raise StoreError(f"{name!r}: not a name inside {self.root}")
        return path

    def put(self, name: str, data: bytes) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # never a half-written object under its name

    def get(self, name: str) -> bytes:
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.url}/{name}: missing from the backup") from None

    def names(self, prefix: str) -> Iterator[str]:
        base = self.root / prefix
        if not base.exists():
            return
        for path in sorted(base.rglob("*")):
            if path.is_file() and not path.name.startswith(".part-"):
                yield str(path.relative_to(self.root))

    def delete(self, names: list[str]) -> None:
        for name in names:
            self._path(name).unlink(missing_ok=True)


class S3Store:
    def __init__(self, bucket: str, prefix: str, client: Any) -> None:
        self.bucket, self.prefix, self.client = bucket, prefix.strip("/"), client

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn, **kw) -> Any:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        try:
            return fn(**kw)
        except NoCredentialsError:
            raise StoreError(f"{self.url}: no AWS credentials: boto3 looks in "
                             "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws/credentials and "
                             "the instance's role; give it one of them") from None
        except EndpointConnectionError as e:
            raise StoreError(f"{self.url}: cannot reach S3 ({e}); check the inventory's "
                             "mailops_backup.endpoint_url and region") from None
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchBucket", "404") and what != "get":
                raise StoreError(f"{self.url}: the bucket {self.bucket} does not exist: create "
                                 "it, or fix mailops_backup.url in the inventory") from None
            if code in ("NoSuchKey", "404"):
                raise StoreError(f"{self.url}/{kw.get('Key', '')}: missing from the "
                                 "backup") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise StoreError(f"{self.url}: S3 refused the credentials ({code}): give them "
                                 f"s3:GetObject, PutObject, ListBucket and DeleteObject on "
                                 f"{self.bucket}") from None
            raise StoreError(f"{self.url}: {what} failed: {code or e}") from None
        except BotoCoreError as e:
            raise StoreError(f"{self.url}: {what} failed: {e}") from None

    def put(self, name: str, data: bytes) -> None:
        key = self._key(name)
        if len(data) < MULTIPART_FROM:
            self._call("put", self.client.put_object, Bucket=self.bucket, Key=key, Body=data)
            return
        upload = self._call("put", self.client.create_multipart_upload, Bucket=self.bucket,
                            Key=key)["UploadId"]
        try:
            parts = []
            for number, start in enumerate(range(0, len(data), PART_SIZE), start=1):
                res = self._call("put", self.client.upload_part, Bucket=self.bucket, Key=key,
                                 UploadId=upload, PartNumber=number,
                                 Body=data[start:start + PART_SIZE])
                parts.append({"ETag": res["ETag"], "PartNumber": number})
            self._call("put", self.client.complete_multipart_upload, Bucket=self.bucket,
                       Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
        except BaseException:
            # No half object: the parts are thrown away (and not billed).
            with contextlib.suppress(StoreError):
                self._call("abort", self.client.abort_multipart_upload, Bucket=self.bucket,
                           Key=key, UploadId=upload)
            raise

    def get(self, name: str) -> bytes:
        res = self._call("get", self.client.get_object, Bucket=self.bucket, Key=self._key(name))
        return res["Body"].read()

    def names(self, prefix: str) -> Iterator[str]:
        start = len(self.prefix) + 1 if self.prefix else 0
        token: str | None = None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
            if token:
                kw["ContinuationToken"] = token
            page = self._call("list", self.client.list_objects_v2, **kw)
            for obj in page.get("Contents", []):
                yield obj["Key"][start:]
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def delete(self, names: list[str]) -> None:
        for i in range(0, len(names), DELETE_BATCH):
            batch = names[i:i + DELETE_BATCH]
            res = self._call("delete", self.client.delete_objects, Bucket=self.bucket,
                             Delete={"Objects": [{"Key": self._key(n)} for n in batch],
                                     "Quiet": True})
            if res.get("Errors"):
                first = res["Errors"][0]
                raise StoreError(f"{self.url}: {len(res['Errors'])} object(s) not deleted, "
                                 f"e.g. {first.get('Key')}: {first.get('Code')}")


def open_store(url: str, region: str | None = None, endpoint_url: str | None = None,
               client: Any = None) -> Store:
    """A store from a URL: a folder (a path or file://...) or s3://bucket/prefix."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(parsed.path if parsed.scheme else url))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"{url}: no bucket: write s3://BUCKET/PREFIX")
        if client is None:
            import boto3

            # A session of its own: the credential chain is read now, not
            # whatever boto3's default session found earlier.
            client = boto3.session.Session().client("s3", region_name=region,
                                                    endpoint_url=endpoint_url)
        return S3Store(parsed.netloc, parsed.path, client)
    raise StoreError(f"{url}: not a backup target: use a folder (/srv/backup or "
                     "file:///srv/backup) or s3://BUCKET/PREFIX")
