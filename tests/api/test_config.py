"""Narrow tests without a cluster: settings from the environment, client addresses, and the options
mirror of the CRD staying equal to the CRD."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sharpml_api.client_ip import client_ip
from sharpml_api.models import JobOptions
from sharpml_api.settings import Settings

from sharpml.config import ConfigError
from tests.conftest import CRD_FILE

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")]


@pytest.mark.parametrize(
    ("peer", "xff", "expected"),
    [
        ("203.0.113.5", ["198.51.100.1"], "203.0.113.5"),  # not a proxy: header ignored
        ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # spoofed left part ignored
        ("10.0.0.2", ["198.51.100.1, 10.0.0.9"], "198.51.100.1"),  # chain of proxies
        ("10.0.0.2", ["198.51.100.1", "10.0.0.9"], "198.51.100.1"),  # repeated headers
        ("10.0.0.2", ["10.0.0.7, 10.0.0.9"], "10.0.0.7"),  # all proxies: the farthest one
        ("10.0.0.2", ["not-an-ip, 198.51.100.1"], "198.51.100.1"),
        ("10.0.0.2", ["198.51.100.1, garbage"], "10.0.0.2"),  # garbage: stop believing the chain
        ("10.0.0.2", [], "10.0.0.2"),
        ("fd00::1", ["[2001:db8::5]:443"], "2001:db8::5"),
        ("10.0.0.2", ["198.51.100.1:5555"], "198.51.100.1"),
        ("testclient", ["198.51.100.1"], "testclient"),
    ],
)
def test_client_ip(peer, xff, expected):
    assert client_ip(peer, xff, PROXIES) == expected


def test_settings_from_env_and_refusals(tmp_path: Path):
    env = {
        "SHARPML_DATA_DIR": str(tmp_path),
        "SHARPML_NAMESPACE": "prod",
        "SHARPML_JWT_SECRET": "x" * 32,
        "SHARPML_JWT_ISSUER": "https://auth/",
        "SHARPML_RATE_LIMIT_IP_PER_HOUR": "7",
        "SHARPML_ANONYMOUS_UPLOADS_PER_DAY": "0",
        "SHARPML_CORS_ORIGINS": "https://a.example, https://b.example",
        "SHARPML_TRUSTED_PROXIES": "10.0.0.0/8,192.168.1.1",
        "SHARPML_MAX_IMAGES": "50",
        "SHARPML_API_PORT": "9000",
    }
    s = Settings.from_env(env)
    assert s.data_dir == tmp_path and s.namespace == "prod" and s.port == 9000
    assert s.jwt.algorithms == ("HS256",) and s.jwt.audience == "sharpml-api"
    assert s.rate_limits.per_ip_per_hour == 7 and s.rate_limits.anonymous_per_ip_per_day == 0
    assert s.rate_limits.per_account_per_day == 50
    assert s.cors_origins == ("https://a.example", "https://b.example")
    assert [str(p) for p in s.trusted_proxies] == ["10.0.0.0/8", "192.168.1.1/32"]
    assert s.limits.max_images == 50
    assert Settings.from_env({}).cors_origins == ("https://sharpml.com",)

    refused = {
        "SHARPML_JWT_ALGORITHMS=none": {**env, "SHARPML_JWT_ALGORITHMS": "none"},
        "short secret": {**env, "SHARPML_JWT_SECRET": "short"},
        "no issuer": {k: v for k, v in env.items() if k != "SHARPML_JWT_ISSUER"},
        "RS256 without key": {**env, "SHARPML_JWT_ALGORITHMS": "RS256"},
        "bad proxy": {**env, "SHARPML_TRUSTED_PROXIES": "proxy.local"},
        "bad number": {**env, "SHARPML_RATE_LIMIT_IP_PER_HOUR": "ten"},
    }
    for case, bad in refused.items():
        with pytest.raises(ConfigError):
            Settings.from_env(bad)
            pytest.fail(case)


def test_console_script_refuses_bad_configuration():
    exe = Path(sys.executable).parent / "sharpml-api"
    proc = subprocess.run(
        [str(exe)], env={"SHARPML_JWT_ALGORITHMS": "none", "PATH": "/usr/bin"}, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "SHARPML_JWT_ALGORITHMS: 'NONE' is not allowed" in proc.stderr


def test_options_mirror_the_crd():
    crd = yaml.safe_load(CRD_FILE.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    processing = spec["processing"]["properties"]
    fields = JobOptions.model_json_schema()["properties"]

    def allowed(name: str) -> dict:
        (branch,) = [b for b in fields[name]["anyOf"] if b.get("type") != "null"]
        return branch

    training = spec["training"]["properties"]
    for api_name, prop in [
        ("matcher", processing["matcher"]),
        ("mapper", processing["mapper"]),
        ("training", training["backend"]),
    ]:
        assert allowed(api_name)["enum"] == prop["enum"], api_name
    for api_name, prop in [
        ("max_image_size", processing["maxImageSize"]),
        ("training_steps", training["steps"]),
        ("max_gaussians", training["maxGaussians"]),
        ("train_image_size", training["maxImageSize"]),
        ("ttl_seconds_after_finished", spec["ttlSecondsAfterFinished"]),
    ]:
        assert (allowed(api_name)["minimum"], allowed(api_name)["maximum"]) == (
            prop["minimum"],
            prop["maximum"],
        )
    notify = spec["notify"]["properties"]
    assert allowed("webhook_url")["maxLength"] == notify["webhookURL"]["maxLength"]
    assert allowed("email")["maxLength"] == notify["email"]["maxLength"]
    options = JobOptions.from_form(
        {"matcher": "sequential", "ttl_seconds_after_finished": "0", "email": "a@b.co"}
    )
    assert options.spec() == {
        "processing": {"matcher": "sequential"},
        "training": {},
        "notify": {"email": "a@b.co"},
        "ttlSecondsAfterFinished": 0,
    }


def test_defaults_are_the_registrys(tmp_path: Path, monkeypatch):
    """A field's default and the value read from an empty environment are one and the same."""
    from sharpml.settings import REGISTRY

    # Settings() reads the process environment for the data directory's default, as the API does at
    # start-up; `make test` exports SHARPML_DATA_DIR, so the comparison must not depend on it.
    monkeypatch.delenv("SHARPML_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert Settings() == Settings.from_env({"XDG_DATA_HOME": str(tmp_path)})
    assert Settings().jwt.audience == REGISTRY["SHARPML_JWT_AUDIENCE"].default
    s = Settings.from_env({"SHARPML_JWT_SECRET": " " + "k" * 32 + "\n", "SHARPML_JWT_ISSUER": "i"})
    assert s.jwt.secret == "k" * 32  # a trailing newline from a mounted file is not key material
    assert Settings.from_env({"SHARPML_PUBLIC_URL": "https://x.example/"}).public_url == "https://x.example"
    with pytest.raises(ConfigError, match="SHARPML_LOG_LEVEL='loud': must be one of debug, info"):
        Settings.from_env({"SHARPML_LOG_LEVEL": "loud"})
    assert Settings.from_env({"SHARPML_LOG_LEVEL": "INFO"}).log_level == "info"  # any case


def test_services_do_not_import_the_web_framework():
    """The submit flow and the job services run without FastAPI or Starlette (routes and deps are
    the only web layer)."""
    code = (
        "import sys, sharpml_api.submit, sharpml_api.jobs, sharpml_api.events; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
