"""The operator's storage against a real S3 server (versitygw over TLS): what the GPU worker's presigned URLs
allow and refuse, conditional writes, bounded downloads, deletion, and errors a caller can act on."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from sharpml.settings import REGISTRY
from sharpml.storage import IF_NONE_MATCH, Storage, StorageError
from tests.storage.conftest import http, s3server, storage_for

pytestmark = [pytest.mark.s3, pytest.mark.usefixtures("worker_trust")]


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit(parts._replace(query=urlencode({**query, **changes})))


def test_presigned_put_then_get_round_trips_the_bytes(storage: Storage, s3_server: Any) -> None:
    data = os.urandom(300_000)
    put = storage.presign_put("jobs/j1/scene.tar", 60)
    assert put.startswith(f"{s3_server.endpoint}/{storage.bucket}/sharpml/jobs/j1/scene.tar?")  # path style
    assert http("PUT", put, data)[0] == 200
    assert storage.exists("jobs/j1/scene.tar")
    status, body = http("GET", storage.presign_get("jobs/j1/scene.tar", 60))
    assert (status, body) == (200, data)
    # The object is where the prefix says, on the server's disk.
    assert (
        s3_server.data_dir / storage.bucket / "sharpml" / "jobs" / "j1" / "scene.tar"
    ).read_bytes() == data


def test_an_unsigned_request_is_refused(storage: Storage, s3_server: Any) -> None:
    storage.put_bytes("a", b"secret")
    assert http("GET", f"{s3_server.endpoint}/{storage.bucket}/sharpml/a")[0] == 403


@pytest.mark.parametrize("change", ["signature", "key", "expiry"])
def test_a_tampered_get_url_is_refused(storage: Storage, change: str) -> None:
    storage.put_bytes("mine", b"mine")
    storage.put_bytes("other", b"someone else's")
    url = storage.presign_get("mine", 60)
    assert http("GET", url) == (200, b"mine")  # the untouched URL works: the change is what is refused
    sig = dict(parse_qsl(urlsplit(url).query))["X-Amz-Signature"]
    if change == "signature":
        tampered = _with_query(url, **{"X-Amz-Signature": sig[:-1] + ("0" if sig[-1] != "0" else "1")})
    elif change == "key":
        tampered = url.replace("/sharpml/mine?", "/sharpml/other?")
    else:
        tampered = _with_query(url, **{"X-Amz-Expires": "604800"})
    assert tampered != url
    assert http("GET", tampered)[0] == 403


def test_a_put_url_cannot_write_another_key(storage: Storage) -> None:
    url = storage.presign_put("results/splat", 60)
    tampered = url.replace("/sharpml/results/splat?", "/sharpml/results/other?")
    assert http("PUT", tampered, b"x")[0] == 403
    assert not storage.exists("results/other")
    assert http("PUT", url, b"x")[0] == 200


def test_an_expired_url_is_refused(storage: Storage) -> None:
    storage.put_bytes("scene", b"scene")
    short, long = storage.presign_get("scene", 1), storage.presign_get("scene", 600)
    signed_at = int(time.time())  # X-Amz-Date has whole seconds: this or the second before
    time.sleep(max(0.0, signed_at + 2.5 - time.time()))  # time passing, past the 1 s lifetime
    assert http("GET", long) == (200, b"scene")  # same key, same moment: only the lifetime differs
    assert http("GET", short)[0] == 403


def test_a_conditional_put_creates_once_then_412(storage: Storage) -> None:
    url = storage.presign_put("claims/req-1", 60, if_none_match=True)
    assert http("PUT", url, b"first", IF_NONE_MATCH)[0] == 200
    assert http("PUT", url, b"second", IF_NONE_MATCH)[0] == 412
    assert http("GET", storage.presign_get("claims/req-1", 60)) == (200, b"first")


def test_a_conditional_put_url_without_its_header_is_refused(storage: Storage) -> None:
    url = storage.presign_put("claims/req-2", 60, if_none_match=True)
    assert "if-none-match" in dict(parse_qsl(urlsplit(url).query))["X-Amz-SignedHeaders"].split(";")
    assert http("PUT", url, b"overwrite?")[0] == 403  # the signature covers the header
    assert not storage.exists("claims/req-2")
    # And an unconditional URL does overwrite: the difference is the header, not the server.
    plain = storage.presign_put("claims/req-3", 60)
    assert http("PUT", plain, b"1")[0] == 200 and http("PUT", plain, b"2")[0] == 200


def test_racing_claims_have_exactly_one_winner(storage: Storage) -> None:
    url = storage.presign_put("claims/race", 60, if_none_match=True)
    results: list[int] = []
    start = threading.Barrier(8)

    def claim(i: int) -> None:
        start.wait()
        results.append(http("PUT", url, f"worker-{i}".encode(), IF_NONE_MATCH)[0])

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [412] * 7
    status, body = http("GET", storage.presign_get("claims/race", 60))
    assert status == 200 and body.startswith(b"worker-")


def test_get_bounded(storage: Storage, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1000))
    storage.put_file("out/model.ply", src)
    dest = tmp_path / "model.ply"
    assert storage.get_bounded("out/model.ply", dest, 1000) == 1000
    assert dest.read_bytes() == src.read_bytes()

    over = tmp_path / "over.ply"
    with pytest.raises(StorageError, match=r"out/model\.ply: larger than the 999-byte limit") as err:
        storage.get_bounded("out/model.ply", over, 999)
    assert err.value.reason == "too-large" and not err.value.retryable
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ply", "src.bin"]  # no file, no .part

    with pytest.raises(StorageError, match=r"downloading out/missing\.ply: 404 NoSuchKey") as err:
        storage.get_bounded("out/missing.ply", tmp_path / "missing.ply", 1000)
    assert err.value.reason == "not-found" and err.value.key == "out/missing.ply"
    assert not (tmp_path / "missing.ply").exists()


def test_delete_prefix(s3_server: Any) -> None:
    storage = storage_for(s3_server)
    storage.ensure_bucket()
    storage.ensure_bucket()  # again: a second replica, or a restart
    keys = ["jobs/a/scene.tar", "jobs/a/out/1", "jobs/a/out/2", "jobs/ab/scene.tar", "jobs/b/scene.tar"]
    for key in keys:
        storage.put_bytes(key, key.encode())
    assert storage.delete_prefix("jobs/a/", page_size=2) == 3  # several pages of listing
    assert [storage.exists(k) for k in keys] == [False, False, False, True, True]
    assert storage.delete_prefix("jobs/a/") == 0
    with pytest.raises(ValueError):
        storage.delete_prefix("")


def test_a_stopped_server_is_unavailable_and_retryable(tmp_path: Path) -> None:
    server = s3server.start(tmp_path / "s3")
    try:
        storage = storage_for(server, max_attempts=2, connect_timeout=2)
        storage.ensure_bucket()
        storage.put_bytes("jobs/x/scene.tar", b"x")
    finally:
        s3server.stop(server)
    assert not s3server.is_running(server)
    for call in (
        lambda: storage.put_bytes("jobs/x/scene.tar", b"y"),
        lambda: storage.exists("jobs/x/scene.tar"),  # unknown is not "absent"
        lambda: storage.get_bounded("jobs/x/scene.tar", tmp_path / "scene.tar", 10),
    ):
        with pytest.raises(StorageError, match=r"jobs/x/scene\.tar: storage unavailable") as err:
            call()
        assert err.value.reason == "unavailable" and err.value.retryable


def test_wrong_credentials_and_an_untrusted_certificate_are_refused(s3_server: Any, storage: Storage) -> None:
    wrong_key = storage_for(s3_server, bucket=storage.bucket, env={"SHARPML_S3_SECRET_ACCESS_KEY": "not-it"})
    with pytest.raises(StorageError, match=r"uploading k: 403 SignatureDoesNotMatch") as err:
        wrong_key.put_bytes("k", b"k")
    assert err.value.reason == "refused" and not err.value.retryable

    untrusted = storage_for(s3_server, bucket=storage.bucket, env={"SHARPML_S3_CA_BUNDLE": ""})
    with pytest.raises(StorageError, match="uploading k: TLS certificate not trusted") as err:
        untrusted.put_bytes("k", b"k")
    assert err.value.reason == "refused"


def test_keys_and_lifetimes_are_checked_before_any_request(storage: Storage) -> None:
    for bad in ("", "/abs", "a/../b", "a//b", "./a"):
        with pytest.raises(ValueError, match="object key"):
            storage.presign_get(bad, 60)
    for seconds in (0, 7 * 24 * 3600 + 1):
        with pytest.raises(ValueError, match="lifetime"):
            storage.presign_put("k", seconds)


def test_the_server_env_names_registered_settings(s3_server: Any) -> None:
    assert set(s3_server.env()) - set(REGISTRY) == {"AWS_CA_BUNDLE"}
    assert s3_server.secret_access_key not in repr(s3_server)
