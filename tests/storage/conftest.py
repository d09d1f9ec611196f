"""Fixtures for the storage tests: a fresh bucket on the session's real S3 server, and the worker's HTTP.

Presigned URLs are exercised with urllib exactly as the RunPod worker does (sharpml/train/runpod_worker.py):
plain `urlopen`, the CA trusted through SSL_CERT_FILE, `Content-Type: application/octet-stream` on PUT.
"""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from sharpml.storage import S3Settings, Storage
from tests.conftest import _load_hack

s3server = _load_hack("s3server")


def storage_for(
    server: Any, *, bucket: str | None = None, env: dict[str, str] | None = None, **client: Any
) -> Storage:
    """A Storage on `server` through the operator's own settings path (SHARPML_S3_* -> S3Settings);
    `env` overrides variables, `client` goes to Storage.from_settings."""
    full = {**server.env(), "SHARPML_S3_BUCKET": bucket or f"t-{uuid.uuid4().hex[:12]}", **(env or {})}
    return Storage.from_settings(S3Settings.from_env(full), **client)


@pytest.fixture
def storage(s3_server: Any) -> Storage:
    """A Storage on its own new bucket (prefix `sharpml/`), so tests never see each other's objects."""
    store = storage_for(s3_server)
    store.ensure_bucket()
    return store


@pytest.fixture
def worker_trust(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Let plain urllib (the worker's HTTP) trust the server's CA, as SSL_CERT_FILE does in its container."""
    monkeypatch.setenv("SSL_CERT_FILE", str(s3_server.ca_bundle))


def http(
    method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One request as the worker makes it; (status, body) whether it succeeded or not."""
    sent = dict(headers or {})
    if data is not None:
        sent.setdefault("Content-Type", "application/octet-stream")
        sent["Content-Length"] = str(len(data))
    request = urllib.request.Request(url, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
