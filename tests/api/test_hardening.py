"""Issue 13's hardening of the API: outages are 503 on every route, rate-limit slots come back only for
outages, tokens, e-mails and Host headers are checked strictly, webhooks reach public hosts only, upload
leftovers are swept, and connections that stall are closed. Against the real control plane (or a real
kube-apiserver URL that refuses connections) and real uvicorn over sockets; nothing is mocked but the
one unexpected error of the refund test."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import socket
import time
from pathlib import Path

import httpx
import pytest
from sharpml_api import submit
from sharpml_api.settings import RateLimits

from sharpml.links import parse_keys, sign
from tests.api.conftest import LINK_KEYS, asgi_client, bearer, left_behind, make_token, multipart, sharpjobs
from tests.api.test_uploads import assert_problem
from tests.core.photos import photo_set

pytestmark = [pytest.mark.cluster, pytest.mark.anyio]

JOB = "7b0e7d7e-9f6a-4c3e-8f0e-0d8c6f1f2a3b"


def _dead_kubeconfig(settings, tmp_path: Path, port: int) -> str:
    """The control plane's kubeconfig, pointed at ``port`` on loopback instead of the apiserver."""
    dead = tmp_path / f"kubeconfig-{port}"
    text = Path(settings.kubeconfig).read_text()
    dead.write_text(re.sub(r"https://127\.0\.0\.1:\d+", f"https://127.0.0.1:{port}", text))
    return str(dead)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the block ends: connections are refused


def _requests(photos: dict) -> list[tuple[str, str, dict]]:
    """One request for every /v1 route (both kinds of caller for uploads; owner and signed link for the
    reads a share link grants, and a signed download whose file is not on the volume)."""
    keys, exp = parse_keys(LINK_KEYS), int(time.time()) + 600
    view = {"params": sign(keys, JOB, "view", exp)}
    download = {"params": sign(keys, JOB, "scene.splat", exp)}
    return [
        ("POST", "/v1/jobs", {"headers": bearer(), **photos}),
        ("POST", "/v1/jobs", photos),  # anonymous
        ("GET", "/v1/jobs", {"headers": bearer()}),
        ("GET", f"/v1/jobs/{JOB}", {"headers": bearer()}),
        ("GET", f"/v1/jobs/{JOB}/events", {"headers": bearer()}),
        ("DELETE", f"/v1/jobs/{JOB}", {"headers": bearer()}),
        ("GET", f"/v1/jobs/{JOB}", view),
        ("GET", f"/v1/jobs/{JOB}/events", view),
        ("GET", f"/v1/jobs/{JOB}/view", {"headers": bearer()}),
        ("GET", f"/v1/jobs/{JOB}/artifacts/scene.splat", {"headers": bearer()}),
        ("GET", f"/v1/jobs/{JOB}/artifacts/scene.splat", download),
    ]


def _assert_unavailable(resp: httpx.Response, kind: str = "cluster-unavailable") -> None:
    assert_problem(resp, 503, kind)
    assert int(resp.headers["retry-after"]) >= 1


async def test_every_route_answers_503_when_the_apiserver_refuses_connections(settings_for, tmp_path):
    """Connection refused (urllib3's MaxRetryError) used to escape as a 500 on every /v1 route."""
    settings = settings_for(kubeconfig=_dead_kubeconfig(settings_for(), tmp_path, _closed_port()))
    photos = multipart(photo_set(tmp_path))
    async with asgi_client(settings, raise_app_exceptions=False) as api:
        for method, path, kw in _requests(photos):
            _assert_unavailable(await api.request(method, path, **kw))
        ready = await api.get("/readyz")
        assert ready.status_code == 503 and int(ready.headers["retry-after"]) >= 1
    assert left_behind(settings) == []


def test_an_apiserver_that_never_answers_is_a_503_within_the_timeout(settings_for, serve_api, tmp_path):
    """A socket that accepts connections and never answers (a hung apiserver): each call gives up after
    SHARPML_APISERVER_TIMEOUT_SECONDS instead of holding the request forever. Through uvicorn."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # never accepted: the TLS handshake never gets an answer
        settings = settings_for(
            kubeconfig=_dead_kubeconfig(settings_for(), tmp_path, silent.getsockname()[1]),
            apiserver_timeout_seconds=1,
        )
        api = serve_api(settings)
        files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photo_set(tmp_path)]
        for method, path, kw in _requests({"files": files}):
            started = time.monotonic()
            resp = httpx.request(method, api.url + path, timeout=60, **kw)
            _assert_unavailable(resp)
            assert time.monotonic() - started < 30, (method, path)
    assert left_behind(settings) == []


async def test_only_outages_hand_the_rate_limit_slot_back(settings_for, tmp_path, monkeypatch):
    """A 503 of the data volume refunds; a refused input (422) and an unexpected error (500) keep it."""
    one = RateLimits(per_ip_per_hour=1, per_account_per_day=0, anonymous_per_ip_per_day=1000)
    photos = multipart(photo_set(tmp_path))

    # The data volume is unavailable (its directory lies under a file): 503 twice, never 429.
    (tmp_path / "a-file").write_text("")
    broken = settings_for(rate_limits=one, data_dir=tmp_path / "a-file" / "data")
    async with asgi_client(broken, client_ip="198.51.100.1") as api:
        for _ in range(2):
            _assert_unavailable(await api.post("/v1/jobs", headers=bearer(), **photos), "storage-unavailable")

    # An upload refused for its input keeps its slot.
    settings = settings_for(rate_limits=one)
    async with asgi_client(settings, client_ip="198.51.100.2") as api:
        few = multipart(photo_set(tmp_path / "few", 2))
        assert_problem(await api.post("/v1/jobs", headers=bearer(), **few), 422, "photos-rejected")
        assert_problem(await api.post("/v1/jobs", headers=bearer(), **photos), 429, "rate-limited")

    # An unexpected error (a bug a client could trigger again and again) keeps it too.
    def broken_intake(*args, **kwargs):
        raise RuntimeError("a bug in intake")

    monkeypatch.setattr(submit, "ingest", broken_intake)
    async with asgi_client(settings, client_ip="198.51.100.3", raise_app_exceptions=False) as api:
        assert_problem(await api.post("/v1/jobs", headers=bearer(), **photos), 500, "internal")
        assert_problem(await api.post("/v1/jobs", headers=bearer(), **photos), 429, "rate-limited")
    assert left_behind(settings) == []


async def test_exp_must_be_a_number(api):
    far = str(int(time.time()) + 3600)
    for claim in ("exp", "nbf", "iat"):
        extra = {"exp": far} if claim == "exp" else {claim: str(int(time.time()) - 10)}
        token = make_token("acct-1", **extra)
        resp = await api.get("/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        body = assert_problem(resp, 401, "unauthorized")
        assert f"'{claim}' claim must be a number" in body["detail"]
    assert (await api.get("/v1/jobs", headers=bearer())).status_code == 200


async def test_email_with_a_trailing_newline_is_refused_before_intake(api, settings, tmp_path):
    fields = {"email": "someone@example.com\n"}
    resp = await api.post("/v1/jobs", headers=bearer(), **multipart(photo_set(tmp_path), fields))
    body = assert_problem(resp, 422, "invalid-options")
    assert [e["field"] for e in body["errors"]] == ["email"]
    assert left_behind(settings) == []


async def test_openapi_bounds_the_number_of_photos(api, settings):
    doc = (await api.get("/openapi.json")).json()
    form = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    files = form["properties"]["files"]
    assert (files["minItems"], files["maxItems"]) == (settings.limits.min_images, settings.limits.max_images)
    for path in doc["paths"].values():
        for op in path.values():
            if "503" in op["responses"]:
                assert op["responses"]["503"]["headers"]["Retry-After"]["required"] is True


async def test_host_header_is_never_echoed_unless_allowed(settings_for, tmp_path):
    photos = multipart(photo_set(tmp_path))
    async with asgi_client(settings_for()) as api:
        evil = {"Host": "evil.example", **bearer()}
        body = assert_problem(await api.post("/v1/jobs", headers=evil, **photos), 400, "host-not-allowed")
        assert body["errors"][0]["field"] == "Host"
        assert_problem(await api.get("/v1/jobs", headers=evil), 400, "host-not-allowed")
        assert (await api.get("/healthz", headers={"Host": "10.0.0.7:8080"})).status_code == 200  # probes
    public = settings_for(public_url="https://api.sharpml.com")
    async with asgi_client(public) as api:
        resp = await api.post("/v1/jobs", headers={"Host": "evil.example", **bearer()}, **photos)
        assert resp.status_code == 201, resp.text
        assert resp.headers["location"].startswith("https://api.sharpml.com/v1/jobs/")
        assert "evil" not in resp.text


INTERNAL_WEBHOOKS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:8080/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64: the metadata address through an IPv6-only cluster's gateway
    "http://[2002:a00:1::1]/hook",  # 6to4 of 10.0.0.1
    "http://[::7f00:1]/hook",  # IPv4-compatible 127.0.0.1
    "http://localhost/hook",
    "http://kubernetes.default.svc/api",
    "http://sharpml-api/hook",
    "https://10.1.2.3/hook",
    "https://192.168.0.1/hook",
    "https://100.64.0.1/hook",
    "http://0.0.0.0/hook",
    "http://2130706433/hook",  # 127.0.0.1 as one decimal number: caught by resolving it
    "https://does-not-resolve.invalid/hook",
]


async def test_internal_webhook_urls_are_refused_at_submission(
    settings_for, control_plane, namespace, tmp_path
):
    settings = settings_for(webhook_allowed_hosts=("hooks.example.com", "203.0.113.0/24"))
    photos = photo_set(tmp_path)
    async with asgi_client(settings) as api:
        for url in INTERNAL_WEBHOOKS:
            resp = await api.post("/v1/jobs", headers=bearer(), **multipart(photos, {"webhook_url": url}))
            body = assert_problem(resp, 422, "invalid-options")
            assert [e["field"] for e in body["errors"]] == ["webhook_url"], (url, body)
            assert body["errors"][0]["rule"] in ("internal-address", "unresolvable"), (url, body)
        assert left_behind(settings) == [] and sharpjobs(control_plane, namespace) == []
        # A public address, and an internal one the allow-list names (an intranet's receiver).
        for url in ("https://93.184.215.14/hook", "http://203.0.113.9:8080/hook"):
            resp = await api.post("/v1/jobs", headers=bearer(), **multipart(photos, {"webhook_url": url}))
            assert resp.status_code == 201, (url, resp.text)
    hooks = sorted(j["spec"]["notify"]["webhookURL"] for j in sharpjobs(control_plane, namespace))
    assert hooks == ["http://203.0.113.9:8080/hook", "https://93.184.215.14/hook"]


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path, *path.iterdir()]:
        os.utime(p, (then, then), follow_symlinks=False)


def test_upload_leftovers_are_swept_when_the_api_starts(settings_for, serve_api):
    """What an API killed mid-upload or mid-intake left: old, unlocked spools and staging directories
    go at start-up; a young one, and an old one whose upload is still alive (its lock held), stay."""
    settings = settings_for(upload_timeout_seconds=60)
    root = settings.data_dir
    dead, live, young = (
        "11111111-1111-4111-8111-111111111111",
        "22222222-2222-4222-8222-222222222222",
        "33333333-3333-4333-8333-333333333333",
    )
    for name in (dead, live, young):
        (root / "uploads" / name).mkdir(parents=True)
        (root / "uploads" / name / "0001.part").write_bytes(b"x" * 1000)
        (root / "jobs" / f".incoming-{name}" / "images").mkdir(parents=True)
    (root / "jobs" / dead / "images").mkdir(parents=True)  # a published job: never the API's to sweep
    for name in (dead, live):
        _age(root / "uploads" / name, 120)
        _age(root / "jobs" / f".incoming-{name}", 120)
    _age(root / "jobs" / dead, 120)
    lock = os.open(root / "uploads" / live, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live upload in another replica holds it
        serve_api(settings)
        remaining = sorted(f"{d}/{p.name}" for d in ("uploads", "jobs") for p in (root / d).iterdir())
    finally:
        os.close(lock)
    kept = [f"uploads/{live}", f"uploads/{young}", f"jobs/.incoming-{live}", f"jobs/.incoming-{young}"]
    assert remaining == sorted([*kept, f"jobs/{dead}"])


def test_upload_leftovers_are_swept_while_the_api_runs(settings_for, serve_api):
    """A replica that keeps running sweeps at least every upload timeout, not only every 10 minutes: what
    another replica's crash left is gone about two upload timeouts later (the soak's end state)."""
    settings = settings_for(upload_timeout_seconds=2)
    root = settings.data_dir
    serve_api(settings)
    name = "44444444-4444-4444-8444-444444444444"
    (root / "uploads" / name).mkdir(parents=True)
    (root / "uploads" / name / "0001.part").write_bytes(b"x" * 1000)
    (root / "jobs" / f".incoming-{name}" / "images").mkdir(parents=True)
    deadline = time.monotonic() + 20
    while (root / "uploads" / name).exists() or (root / "jobs" / f".incoming-{name}").exists():
        assert time.monotonic() < deadline, "the leftovers were not swept while the API ran"
        time.sleep(0.2)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    return s


def _read_all(s: socket.socket) -> bytes:
    """Everything until the server closes the connection (the socket's timeout bounds the wait)."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _stalled_upload_head(boundary: str = "b0undary") -> bytes:
    """An upload's headers and the start of its body, which announces 100,000 bytes it never sends."""
    return (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {make_token('acct-1')}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\nabc'
    ).encode()


def test_stalled_connections_are_closed(settings_for, serve_api):
    """Over real sockets to uvicorn: no headers, half the headers, or a body shorter than its
    Content-Length are each ended within seconds (they used to be held for good, or 900 s)."""
    settings = settings_for(header_timeout_seconds=1, upload_idle_seconds=2)
    api = serve_api(settings)

    for sent in (b"", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "):
        with _connect(api.port) as s:
            started = time.monotonic()
            s.sendall(sent)
            assert _read_all(s) == b""  # closed, unanswered
            assert time.monotonic() - started < 10

    with _connect(api.port) as s:
        started = time.monotonic()
        s.sendall(_stalled_upload_head())  # and then nothing: the other 99,9xx bytes never come
        answer = _read_all(s)
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b"no part of the upload arrived for 2 s" in answer
        assert time.monotonic() - started < 15
    assert left_behind(settings) == []


def test_uploads_in_flight_per_address_are_capped(settings_for, serve_api, tmp_path):
    """Three uploads from one address in flight (each has its spool): a fourth is 429 at once, and
    costs no rate-limit slot; once they are gone, the address may upload again."""
    settings = settings_for(uploads_per_ip_concurrent=3, upload_idle_seconds=120)
    api = serve_api(settings)
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in photo_set(tmp_path)]
    uploads = settings.data_dir / "uploads"
    held = [_connect(api.port) for _ in range(3)]
    try:
        for s in held:
            s.sendall(_stalled_upload_head())
        deadline = time.monotonic() + 30
        while not uploads.is_dir() or len(list(uploads.iterdir())) < 3:
            assert time.monotonic() < deadline, "the three uploads did not start"
            time.sleep(0.02)
        resp = httpx.post(f"{api.url}/v1/jobs", headers=bearer(), files=files, timeout=30)
        assert_problem(resp, 429, "too-many-uploads")
        assert int(resp.headers["retry-after"]) >= 1
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 30
    while any(uploads.iterdir()):  # the server saw the clients go and removed their spools
        assert time.monotonic() < deadline, "the held uploads were never released"
        time.sleep(0.05)
    resp = httpx.post(f"{api.url}/v1/jobs", headers=bearer(), files=files, timeout=60)
    assert resp.status_code == 201, resp.text


def test_settings_defaults_bound_every_wait():
    """The defaults close stalled connections and bound apiserver calls (no unbounded wait)."""
    from sharpml_api.settings import Settings

    s = Settings()
    assert s.header_timeout_seconds <= 30 and s.upload_idle_seconds <= 120
    assert s.apiserver_timeout_seconds <= 30 and s.uploads_per_ip_concurrent >= 1
    assert "*" not in s.allowed_hosts and s.webhook_allowed_hosts == ()
    assert dataclasses.is_dataclass(s)
