"""The jobs' objects in S3, and the presigned URLs that let a GPU worker read and write them.

The training stage uploads a job's scene here and hands the RunPod worker presigned URLs (GET for the
scene, PUT for the results), so the worker never holds credentials. A thin layer over one boto3 client:
keys are relative to the configured prefix, and every failure is one :class:`StorageError` whose
``reason`` tells the caller whether trying again can help.

Every object SharpML writes asks for server-side encryption (``SHARPML_S3_SSE``): the one place is
:meth:`Storage.encryption`, which every write of this module adds to its request. Presigned PUTs (the
GPU worker's uploads) do not carry it: S3 and versitygw both enforce a signed
``x-amz-server-side-encryption`` header (a PUT without it gets 403), so the worker would have to send
it; those objects live only while their job does, under the bucket's default encryption.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import boto3
from botocore.client import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    SSLError,
)
from botocore.exceptions import ConnectionError as EndpointUnreachable

from sharpml.settings import ConfigError, value

#: The longest a SigV4 presigned URL may live (S3's own limit: 7 days).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
#: What a request through ``presign_put(..., if_none_match=True)`` must carry: the signature covers it.
IF_NONE_MATCH = {"If-None-Match": "*"}
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0
_CHUNK = 1024 * 1024

Reason = Literal["unavailable", "not-found", "refused", "too-large"]
_NOT_FOUND = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_BUSY = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable"}


@dataclass(frozen=True)
class S3Settings:
    """Where SharpML's objects live; empty fields mean AWS's defaults."""

    #: ``https://host[:port]``; empty: AWS S3 for ``region``.
    endpoint: str
    region: str
    bucket: str
    #: Prepended to every key SharpML writes; empty or ending in ``/``.
    prefix: str
    #: Both empty: boto3's default credential chain (IAM role, AWS_* variables, ...).
    access_key_id: str = field(repr=False)
    secret_access_key: str = field(repr=False)
    #: PEM bundle of the CAs trusted for ``endpoint``; None: the system's.
    ca_bundle: Path | None
    #: Server-side encryption asked for on every write: ``AES256``, ``aws:kms`` or ``none``.
    sse: str = "AES256"
    #: The KMS key of ``aws:kms`` (empty: the bucket's AWS-managed key).
    sse_kms_key_id: str = ""

    @property
    def configured(self) -> bool:
        """Whether S3 was set up for this deployment (an endpoint or credentials given), as opposed to
        the defaults alone."""
        return bool(self.endpoint or self.access_key_id)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> S3Settings:
        endpoint = value(env, "SHARPML_S3_ENDPOINT").rstrip("/")
        if endpoint:
            parts = urlsplit(endpoint)
            if parts.scheme not in ("https", "http") or not parts.hostname or parts.path or parts.query:
                raise ConfigError(f"SHARPML_S3_ENDPOINT={endpoint!r}: must be http(s)://host[:port]")
        key_id, secret = value(env, "SHARPML_S3_ACCESS_KEY_ID"), value(env, "SHARPML_S3_SECRET_ACCESS_KEY")
        if bool(key_id) != bool(secret):
            raise ConfigError(
                "SHARPML_S3_ACCESS_KEY_ID and SHARPML_S3_SECRET_ACCESS_KEY: set both, or neither "
                "(then boto3's default credential chain is used)"
            )
        prefix = value(env, "SHARPML_S3_PREFIX").strip("/")
        return cls(
            endpoint=endpoint,
            region=value(env, "SHARPML_S3_REGION"),
            bucket=value(env, "SHARPML_S3_BUCKET"),
            prefix=prefix + "/" if prefix else "",
            access_key_id=key_id,
            secret_access_key=secret,
            ca_bundle=value(env, "SHARPML_S3_CA_BUNDLE"),
            sse=value(env, "SHARPML_S3_SSE"),
            sse_kms_key_id=value(env, "SHARPML_S3_SSE_KMS_KEY_ID"),
        )


@dataclass(frozen=True)
class StoredObject:
    """One object as a listing shows it; ``name`` is relative to the configured prefix."""

    name: str
    size: int
    last_modified: datetime


class StorageError(RuntimeError):
    """An object-store operation failed. ``reason``: ``unavailable`` (connection, timeout, 5xx, throttled:
    worth retrying), ``not-found``, ``refused`` (denied, precondition failed, bad request, TLS) or
    ``too-large``. The message names the key and what went wrong."""

    def __init__(self, message: str, *, key: str, reason: Reason) -> None:
        super().__init__(message)
        self.key = key
        self.reason: Reason = reason

    @property
    def retryable(self) -> bool:
        return self.reason == "unavailable"


def _client_reason(exc: ClientError) -> tuple[Reason, str]:
    """What an S3 error reply means for the caller, and its status, code and message for humans."""
    err, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
    code, status = str(err.get("Code", "")), int(meta.get("HTTPStatusCode") or 0)
    detail = " ".join(dict.fromkeys(x for x in (str(status or ""), code) if x))  # HEAD's code is its status
    detail += f": {err['Message']}" if err.get("Message") else ""
    if status == 404 or code in _NOT_FOUND:
        return "not-found", detail
    if status >= 500 or status == 429 or code in _BUSY:
        return "unavailable", detail
    return "refused", detail


def _certificate_rejected(exc: SSLError) -> bool:
    """Whether the server's certificate failed verification (rather than the connection dropping)."""
    seen: list[BaseException] = []
    todo: list[object] = [exc.kwargs.get("error")]
    while todo:
        item = todo.pop()
        if isinstance(item, BaseException) and item not in seen:
            seen.append(item)
            todo += [*item.args, item.__cause__, item.__context__]
    return any(isinstance(e, ssl.SSLCertVerificationError) for e in seen)


def _error(exc: Exception, action: str, key: str) -> StorageError:
    """The StorageError for a botocore exception raised while doing `action` on `key`."""
    if isinstance(exc, ClientError):
        reason, detail = _client_reason(exc)
        return StorageError(f"{action} {key}: {detail}", key=key, reason=reason)
    if isinstance(exc, SSLError) and _certificate_rejected(exc):  # retrying will not fix a wrong CA bundle
        return StorageError(f"{action} {key}: TLS certificate not trusted: {exc}", key=key, reason="refused")
    # Connection refused or reset, DNS, connect or read timeouts, a body cut short.
    if isinstance(exc, EndpointUnreachable | HTTPClientError | IncompleteReadError):
        return StorageError(f"{action} {key}: storage unavailable: {exc}", key=key, reason="unavailable")
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{action} {key}: no S3 credentials found", key=key, reason="refused")
    return StorageError(f"{action} {key}: {exc}", key=key, reason="refused")


class Storage:
    """One bucket, under one key prefix, through one boto3 client (thread-safe, so one per process)."""

    def __init__(
        self, client: Any, bucket: str, prefix: str = "", *, sse: str = "AES256", sse_kms_key_id: str = ""
    ) -> None:
        if sse not in ("AES256", "aws:kms", "none"):
            raise ValueError(f"server-side encryption {sse!r}: must be AES256, aws:kms or none")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.sse = sse
        self.sse_kms_key_id = sse_kms_key_id

    @property
    def encryption(self) -> dict[str, str]:
        """The server-side encryption parameters of every PutObject this module sends."""
        if self.sse == "none":
            return {}
        params = {"ServerSideEncryption": self.sse}
        if self.sse == "aws:kms" and self.sse_kms_key_id:
            params["SSEKMSKeyId"] = self.sse_kms_key_id
        return params

    @classmethod
    def from_settings(
        cls,
        s3: S3Settings,
        *,
        max_attempts: int = 3,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
    ) -> Storage:
        """A client for ``s3``: SigV4, path-style addressing on a custom endpoint (AWS keeps its virtual-
        hosted style), bounded timeouts, and botocore's standard retries (``max_attempts`` in all)."""
        config = Config(
            region_name=s3.region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if s3.endpoint else "virtual"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"mode": "standard", "max_attempts": max_attempts},
            # botocore's default (since 1.36) streams every PutObject body aws-chunked with a trailing CRC32;
            # versitygw v1.8.0 then drops the connection on a refused request (measured: a wrong key came
            # back as a TLS error, not 403). TLS already protects the bytes in transit; checksums stay where
            # S3 requires them (DeleteObjects).
            request_checksum_calculation="when_required",
        )
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=s3.endpoint or None,
            aws_access_key_id=s3.access_key_id or None,
            aws_secret_access_key=s3.secret_access_key or None,
            verify=str(s3.ca_bundle) if s3.ca_bundle else None,
            config=config,
        )
        return cls(client, s3.bucket, s3.prefix, sse=s3.sse, sse_kms_key_id=s3.sse_kms_key_id)

    def key(self, name: str) -> str:
        """The full object key of ``name``: the prefix, then a relative path without ``.``/``..``."""
        parts = name.split("/")
        if not name or name.startswith("/") or "//" in name or any(p in (".", "..") for p in parts):
            raise ValueError(f"object key {name!r}: must be a relative path without '.', '..' or '//'")
        return self.prefix + name

    def _call(self, action: str, name: str, method: str, **params: Any) -> Any:
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **params)
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, action, name) from exc

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (and is ours)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _client_reason(exc)[0] != "not-found":
                raise _error(exc, "checking bucket", self.bucket) from exc
        except BotoCoreError as exc:
            raise _error(exc, "checking bucket", self.bucket) from exc
        region = self.client.meta.region_name
        # us-east-1 is the one region that refuses its own name as a location constraint.
        params = (
            {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
        )
        try:
            self.client.create_bucket(Bucket=self.bucket, **params)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":  # a racing replica
                raise _error(exc, "creating bucket", self.bucket) from exc
        except BotoCoreError as exc:
            raise _error(exc, "creating bucket", self.bucket) from exc

    def put_file(self, name: str, path: Path) -> None:
        """Upload a file in one PUT (S3 allows up to 5 GiB; the worker reads at most 4 GiB)."""
        with path.open("rb") as body:  # seekable: a retried attempt rewinds it
            self._put(name, body)

    def put_bytes(self, name: str, data: bytes) -> None:
        self._put(name, data)

    def _put(self, name: str, body: Any) -> None:
        self._call("uploading", name, "put_object", Key=self.key(name), Body=body, **self.encryption)

    def presign_get(self, name: str, seconds: int) -> str:
        """A URL that lets whoever holds it GET the object for ``seconds``."""
        return self._presign("get_object", name, seconds, {})

    def presign_put(self, name: str, seconds: int, *, if_none_match: bool = False) -> str:
        """A URL that lets whoever holds it PUT the object for ``seconds``.

        With ``if_none_match`` the signature covers ``If-None-Match: *`` (:data:`IF_NONE_MATCH`): the
        holder must send it, and can then only create the object, never replace it — a second PUT gets
        412 Precondition Failed. That is how a worker claims a request id exactly once.
        """
        return self._presign("put_object", name, seconds, {"IfNoneMatch": "*"} if if_none_match else {})

    def _presign(self, method: str, name: str, seconds: int, extra: dict[str, str]) -> str:
        if not 1 <= seconds <= MAX_PRESIGN_SECONDS:
            raise ValueError(f"presigned URL lifetime {seconds}s: must be 1 to {MAX_PRESIGN_SECONDS}")
        params = {"Bucket": self.bucket, "Key": self.key(name), **extra}
        try:  # signing is local: no request is made
            return self.client.generate_presigned_url(method, Params=params, ExpiresIn=seconds)
        except BotoCoreError as exc:
            raise _error(exc, "presigning", name) from exc

    def exists(self, name: str) -> bool:
        try:
            self._call("checking", name, "head_object", Key=self.key(name))
        except StorageError as exc:
            if exc.reason == "not-found":
                return False
            raise
        return True

    def get_bounded(self, name: str, dest: Path, limit: int) -> int:
        """Download the object to ``dest`` and return its size; refuse (``too-large``, leaving no file)
        one larger than ``limit`` bytes, whatever its declared length said."""
        reply = self._call("downloading", name, "get_object", Key=self.key(name))
        body = reply["Body"]
        declared = int(reply.get("ContentLength") or 0)
        too_large = StorageError(
            f"downloading {name}: larger than the {limit}-byte limit", key=name, reason="too-large"
        )
        if declared > limit:
            body.close()
            raise too_large
        part = dest.with_name(dest.name + ".part")
        size = 0
        try:
            with part.open("wb") as out:
                for chunk in body.iter_chunks(_CHUNK):
                    size += len(chunk)
                    if size > limit:
                        raise too_large
                    out.write(chunk)
            os.replace(part, dest)
        except (ClientError, BotoCoreError) as exc:  # the connection broke while reading
            raise _error(exc, "downloading", name) from exc
        finally:
            body.close()
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        return size

    def list_objects(self, prefix: str, *, page_size: int = 1000) -> Iterator[StoredObject]:
        """The objects whose key starts with ``prefix`` (relative to the configured prefix), in key order."""
        full = self.key(prefix)
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": page_size}
        )
        try:
            for page in pages:
                for o in page.get("Contents", []):
                    name = o["Key"][len(self.prefix) :]
                    yield StoredObject(name, int(o.get("Size") or 0), o["LastModified"])
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, "listing", prefix) from exc

    def delete(self, name: str) -> None:
        """Delete one object (absent already: nothing to do, as S3 itself answers)."""
        self._call("deleting", name, "delete_object", Key=self.key(name))

    def delete_prefix(self, prefix: str, *, page_size: int = 1000) -> int:
        """Delete every object whose key starts with ``prefix`` (a job's objects: the finalizer's work;
        end it with ``/`` to mean a folder). Returns how many were deleted. An empty ``prefix`` is refused:
        it would mean everything SharpML stored."""
        full = self.key(prefix)
        deleted = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": page_size}
        )  # one DeleteObjects call per page: at most 1000 keys, S3's limit
        try:
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if not keys:
                    continue
                reply = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                )
                if reply.get("Errors"):
                    first = reply["Errors"][0]
                    raise StorageError(
                        f"deleting {prefix}: {len(reply['Errors'])} object(s) not deleted, first "
                        f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip(),
                        key=prefix,
                        reason="refused",
                    )
                deleted += len(keys)
        except (ClientError, BotoCoreError) as exc:
            raise _error(exc, "deleting", prefix) from exc
        return deleted
