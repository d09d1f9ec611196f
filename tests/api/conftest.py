"""Fixtures for API tests: the real app against the real control plane, real tokens, real photos.

``api`` is the app in-process through httpx's ASGI transport; ``serve_api`` starts the
``sharpml-api`` console script under uvicorn as a separate process (what a pod runs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sharpml_api.app import create_app
from sharpml_api.settings import JwtSettings, RateLimits, Settings

from sharpml.config import MB, IntakeLimits
from sharpml.links import LinkSettings, parse_keys
from tests.conftest import ControlPlane

ISSUER = "https://auth.sharpml.test/"
AUDIENCE = "sharpml-api"
HS_SECRET = "test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
CLIENT_IP = "203.0.113.7"
#: The signed links' keys: "new" signs, "old" still verifies (a rotation in progress).
LINK_KEYS = "new:link-key-new-0123456789abcdefghijklmnop,old:link-key-old-0123456789abcdefghijklmnop"
LINK_TTL_SECONDS = 3600
#: Small limits so that tests exercise them with small photos.
TEST_LIMITS = IntakeLimits(max_file_bytes=1 * MB, max_set_bytes=3 * MB, min_images=5, max_images=8)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclasses.dataclass(frozen=True)
class Keys:
    private_pem: bytes
    public_pem: str


@pytest.fixture(scope="session")
def rsa_keys() -> Keys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return Keys(private, public.decode())


def make_token(
    account: str | None = "acct-1",
    *,
    key: str | bytes = HS_SECRET,
    algorithm: str = "HS256",
    exp_in: float = 600,
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time() + exp_in)}
    if account is not None:
        payload["sub"] = account
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=algorithm)


def bearer(account: str = "acct-1", **kw: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(account, **kw)}"}


@pytest.fixture
def settings_for(
    control_plane: ControlPlane, sharpjob_crd: str, namespace: str, tmp_path: Path, rsa_keys: Keys
) -> Callable[..., Settings]:
    """Settings for this test's namespace and data directory; keyword arguments override fields."""

    def make(**overrides: Any) -> Settings:
        base = Settings(
            data_dir=tmp_path / "data",
            limits=TEST_LIMITS,
            namespace=namespace,
            kubeconfig=str(control_plane.kubeconfig),
            jwt=JwtSettings(
                algorithms=("HS256", "RS256"),
                secret=HS_SECRET,
                public_key=rsa_keys.public_pem,
                issuer=ISSUER,
                audience=AUDIENCE,
            ),
            rate_limits=RateLimits(
                per_ip_per_hour=1000, per_account_per_day=1000, anonymous_per_ip_per_day=1000
            ),
            intake_workers=1,
            # The hosts tests call the API by: httpx's in-process client (api.test), schemathesis'
            # (testserver), raw sockets (Host: api) and uvicorn on loopback.
            allowed_hosts=("api.test", "testserver", "api", "127.0.0.1", "localhost"),
            # Webhook hosts are resolved at submission; this machine may have no DNS.
            webhook_allowed_hosts=("hooks.example.com",),
            links=LinkSettings(keys=parse_keys(LINK_KEYS), ttl_seconds=LINK_TTL_SECONDS),
        )
        return dataclasses.replace(base, **overrides)

    return make


@pytest.fixture
def settings(settings_for: Callable[..., Settings]) -> Settings:
    return settings_for()


def asgi_client(
    settings: Settings, client_ip: str = CLIENT_IP, raise_app_exceptions: bool = True
) -> httpx.AsyncClient:
    app = create_app(settings)
    transport = httpx.ASGITransport(
        app=app, client=(client_ip, 40000), raise_app_exceptions=raise_app_exceptions
    )
    return httpx.AsyncClient(transport=transport, base_url="http://api.test")


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(settings) as client:
        yield client


def multipart(
    photos: list[tuple[str, bytes]] | list[Path], fields: dict[str, str] | None = None
) -> dict[str, Any]:
    """httpx keyword arguments for an upload of ``photos`` (paths or (name, bytes)) and option fields."""
    files = []
    for p in photos:
        name, data = (p.name, p.read_bytes()) if isinstance(p, Path) else p
        files.append(("files", (name, data, "application/octet-stream")))
    return {"files": files, "data": fields or {}}


def left_behind(settings: Settings) -> list[str]:
    """Everything in the data directory's jobs/ and uploads/ (both must be empty after a rejection)."""
    found = []
    for sub in ("jobs", "uploads"):
        d = settings.data_dir / sub
        if d.exists():
            found += [f"{sub}/{p.name}" for p in d.iterdir()]
    return found


def sharpjobs(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return cp.get_json("sharpjobs", "-n", namespace)["items"]


def patch_status(cp: ControlPlane, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Write a SharpJob's status as the operator would (status subresource)."""
    cp.kubectl(
        "patch", "sharpjob", name, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip


def settings_env(settings: Settings) -> dict[str, str]:
    """The SHARPML_* environment that makes ``sharpml-api`` read ``settings`` (limits in MB)."""
    rl = settings.rate_limits
    return {
        "SHARPML_DATA_DIR": str(settings.data_dir),
        "SHARPML_NAMESPACE": settings.namespace,
        "SHARPML_KUBECONFIG": settings.kubeconfig,
        "SHARPML_MAX_FILE_MB": str(settings.limits.max_file_bytes // MB),
        "SHARPML_MAX_UPLOAD_MB": str(settings.limits.max_set_bytes // MB),
        "SHARPML_MIN_IMAGES": str(settings.limits.min_images),
        "SHARPML_MAX_IMAGES": str(settings.limits.max_images),
        "SHARPML_JWT_ALGORITHMS": ",".join(settings.jwt.algorithms),
        "SHARPML_JWT_SECRET": settings.jwt.secret,
        "SHARPML_JWT_PUBLIC_KEY": settings.jwt.public_key,
        "SHARPML_JWT_ISSUER": settings.jwt.issuer,
        "SHARPML_JWT_AUDIENCE": settings.jwt.audience,
        "SHARPML_RATE_LIMIT_IP_PER_HOUR": str(rl.per_ip_per_hour),
        "SHARPML_RATE_LIMIT_ACCOUNT_PER_DAY": str(rl.per_account_per_day),
        "SHARPML_ANONYMOUS_UPLOADS_PER_DAY": str(rl.anonymous_per_ip_per_day),
        "SHARPML_SSE_KEEPALIVE_SECONDS": str(settings.sse_keepalive_seconds),
        "SHARPML_UPLOAD_TIMEOUT_SECONDS": str(settings.upload_timeout_seconds),
        "SHARPML_INTAKE_WORKERS": str(settings.intake_workers),
        "SHARPML_ALLOWED_HOSTS": ",".join(settings.allowed_hosts),
        "SHARPML_PUBLIC_URL": settings.public_url,
        "SHARPML_APISERVER_TIMEOUT_SECONDS": str(settings.apiserver_timeout_seconds),
        "SHARPML_HEADER_TIMEOUT_SECONDS": str(settings.header_timeout_seconds),
        "SHARPML_UPLOAD_IDLE_SECONDS": str(settings.upload_idle_seconds),
        "SHARPML_UPLOADS_PER_IP_CONCURRENT": str(settings.uploads_per_ip_concurrent),
        "SHARPML_WEBHOOK_ALLOWED_HOSTS": ",".join(settings.webhook_allowed_hosts),
        "SHARPML_LINK_KEYS": ",".join(f"{k.kid}:{k.secret.decode()}" for k in settings.links.keys),
        "SHARPML_LINK_TTL_SECONDS": str(settings.links.ttl_seconds),
        "SHARPML_LOG_LEVEL": "warning",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Served:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


@pytest.fixture
def serve_api(tmp_path: Path) -> Iterator[Callable[[Settings], Served]]:
    """Start ``sharpml-api`` (uvicorn, its own process) with a settings' environment; stopped afterwards."""
    started: list[Served] = []

    def serve(settings: Settings) -> Served:
        port = _free_port()
        log = tmp_path / f"api-{port}.log"
        env = {
            **os.environ,
            **settings_env(settings),
            "SHARPML_API_HOST": "127.0.0.1",
            "SHARPML_API_PORT": str(port),
        }
        exe = Path(sys.executable).parent / "sharpml-api"
        proc = subprocess.Popen([str(exe)], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        served = Served(f"http://127.0.0.1:{port}", port, proc, log)
        started.append(served)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200:
                    return served
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sharpml-api did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    yield serve
    for s in started:
        s.proc.terminate()
        try:
            s.proc.wait(10)
        except subprocess.TimeoutExpired:
            s.proc.kill()
            s.proc.wait()
