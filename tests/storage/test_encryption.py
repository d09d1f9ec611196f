"""Every object SharpML writes asks for server-side encryption (SHARPML_S3_SSE), checked on the wire: a
botocore hook records the headers of each request the real S3 server (versitygw) accepted. versitygw accepts
the header and does not echo it (HeadObject has no ServerSideEncryption), so the request is what is
checked, not the reply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sharpml.settings import ConfigError
from sharpml.storage import S3Settings, Storage
from tests.storage.conftest import http, storage_for

pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("worker_trust")]


def _recorded(storage: Storage) -> list[tuple[str, dict[str, str]]]:
    """(operation, headers) of every request the client sends from now on."""
    seen: list[tuple[str, dict[str, str]]] = []

    def hook(request: Any, event_name: str, **_: Any) -> None:
        seen.append((event_name.split(".")[-1], {k.lower(): v for k, v in request.headers.items()}))

    storage.client.meta.events.register("before-send.s3", hook)
    return seen


def _puts(seen: list[tuple[str, dict[str, str]]]) -> list[dict[str, str]]:
    return [headers for op, headers in seen if op == "PutObject"]


def _headers(headers: dict[str, str]) -> dict[str, str]:
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in headers.items()}


def test_every_write_asks_for_sse_s3_by_default(s3_server: Any, tmp_path: Path) -> None:
    storage = storage_for(s3_server)
    storage.ensure_bucket()
    seen = _recorded(storage)
    (tmp_path / "f").write_bytes(b"file")
    storage.put_file("a/file", tmp_path / "f")
    storage.put_bytes("a/bytes", b"bytes")
    puts = [_headers(h) for h in _puts(seen)]
    assert len(puts) == 2
    assert all(h["x-amz-server-side-encryption"] == "AES256" for h in puts), puts
    assert not any("x-amz-server-side-encryption-aws-kms-key-id" in h for h in puts)
    # The server accepted them: the objects are there.
    assert storage.exists("a/file") and storage.exists("a/bytes")


def test_kms_asks_for_its_key(s3_server: Any) -> None:
    storage = storage_for(
        s3_server, env={"SHARPML_S3_SSE": "aws:kms", "SHARPML_S3_SSE_KMS_KEY_ID": "alias/sml"}
    )
    storage.ensure_bucket()
    seen = _recorded(storage)
    storage.put_bytes("k", b"kms")
    (h,) = [_headers(h) for h in _puts(seen)]
    assert h["x-amz-server-side-encryption"] == "aws:kms"
    assert h["x-amz-server-side-encryption-aws-kms-key-id"] == "alias/sml"
    assert storage.exists("k")


def test_none_sends_no_encryption_header(s3_server: Any) -> None:
    storage = storage_for(s3_server, env={"SHARPML_S3_SSE": "none"})
    storage.ensure_bucket()
    seen = _recorded(storage)
    storage.put_bytes("plain", b"x")
    (h,) = _puts(seen)
    assert not any(k.startswith("x-amz-server-side-encryption") for k in h)


def test_a_wrong_sse_setting_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"SHARPML_S3_SSE=.DSSE.: must be one of AES256, aws:kms, none"):
        S3Settings.from_env({"SHARPML_S3_SSE": "DSSE"})


def test_a_presigned_put_signed_with_sse_needs_its_header(storage: Storage) -> None:
    """Why presigned PUTs (the GPU worker's) carry no SSE: S3 enforces a signed header, so the worker would
    have to send it. This is that enforcement on the real server."""
    url = storage.client.generate_presigned_url(
        "put_object",
        Params={"Bucket": storage.bucket, "Key": storage.key("w"), **storage.encryption},
        ExpiresIn=60,
    )
    assert http("PUT", url, b"w")[0] == 403
    assert http("PUT", url, b"w", {"x-amz-server-side-encryption": "AES256"})[0] == 200


def test_list_and_delete(storage: Storage) -> None:
    for name in ("artifacts/j1/scene.splat", "artifacts/j1/scene.ply", "artifacts/j2/scene.splat", "other/x"):
        storage.put_bytes(name, name.encode())
    listed = {o.name: o.size for o in storage.list_objects("artifacts/", page_size=2)}  # pages of two
    assert listed == {
        n: len(n) for n in ("artifacts/j1/scene.splat", "artifacts/j1/scene.ply", "artifacts/j2/scene.splat")
    }
    storage.delete("artifacts/j1/scene.ply")
    storage.delete("artifacts/j1/scene.ply")  # absent already: nothing to do
    assert not storage.exists("artifacts/j1/scene.ply") and storage.exists("artifacts/j1/scene.splat")
