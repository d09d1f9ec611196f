"""The API's settings, every one from a ``SHARPML_*`` environment variable (the Helm chart sets them).

Intake limits and the data directory come from :mod:`sharpml.config`, so the API enforces exactly
the limits the CLI and the operator assume.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sharpml.config import ConfigError, IntakeLimits, default_data_dir, env_int

#: Algorithms a token may be signed with. ``none`` is never accepted, whatever is configured.
SYMMETRIC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"})
_SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _get(env: Mapping[str, str], name: str, default: str = "") -> str:
    value = env.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _list(env: Mapping[str, str], name: str, default: str = "") -> tuple[str, ...]:
    return tuple(item.strip() for item in _get(env, name, default).split(",") if item.strip())


def _default_namespace() -> str:
    """In a pod, the service account's namespace; elsewhere ``sharpml``."""
    try:
        return _SA_NAMESPACE_FILE.read_text().strip() or "sharpml"
    except OSError:
        return "sharpml"


@dataclass(frozen=True)
class JwtSettings:
    """How bearer tokens are verified. No key configured means only anonymous access."""

    algorithms: tuple[str, ...] = ()
    secret: str = ""
    public_key: str = ""
    issuer: str = ""
    audience: str = "sharpml-api"
    leeway_seconds: int = 30
    account_claim: str = "sub"

    @property
    def enabled(self) -> bool:
        return bool(self.algorithms)


@dataclass(frozen=True)
class RateLimits:
    """Uploads admitted per window. 0 switches a limit off (anonymous: 0 refuses anonymous uploads)."""

    per_ip_per_hour: int = 10
    per_account_per_day: int = 50
    anonymous_per_ip_per_day: int = 3


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=default_data_dir)
    limits: IntakeLimits = field(default_factory=IntakeLimits)
    namespace: str = "sharpml"
    kubeconfig: str = ""
    jwt: JwtSettings = field(default_factory=JwtSettings)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    anonymous_account: str = "anonymous"
    cors_origins: tuple[str, ...] = ("https://sharpml.com",)
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: Uploads whose intake (decode + re-encode) runs at once; bounds CPU and memory per replica.
    intake_concurrency: int = 2
    intake_workers: int = 2
    #: Seconds between SSE keep-alive comments (proxies drop idle connections).
    sse_keepalive_seconds: int = 15
    #: Longest an upload's body may take to arrive: a trickling client must not hold a slot forever.
    upload_timeout_seconds: int = 900
    public_url: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        algorithms = tuple(a.upper() for a in _list(env, "SHARPML_JWT_ALGORITHMS"))
        secret = _get(env, "SHARPML_JWT_SECRET")
        public_key = _get(env, "SHARPML_JWT_PUBLIC_KEY")
        key_file = _get(env, "SHARPML_JWT_PUBLIC_KEY_FILE")
        if key_file:
            try:
                public_key = Path(key_file).read_text()
            except OSError as exc:
                raise ConfigError(f"SHARPML_JWT_PUBLIC_KEY_FILE={key_file!r}: {exc.strerror}") from None
        if not algorithms:
            algorithms = (("HS256",) if secret else ()) + (("RS256",) if public_key else ())
        jwt = JwtSettings(
            algorithms=algorithms,
            secret=secret,
            public_key=public_key,
            issuer=_get(env, "SHARPML_JWT_ISSUER"),
            audience=_get(env, "SHARPML_JWT_AUDIENCE", "sharpml-api"),
            leeway_seconds=env_int(env, "SHARPML_JWT_LEEWAY_SECONDS", 30),
            account_claim=_get(env, "SHARPML_JWT_ACCOUNT_CLAIM", "sub"),
        )
        proxies = []
        for item in _list(env, "SHARPML_TRUSTED_PROXIES"):
            try:
                proxies.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ConfigError(f"SHARPML_TRUSTED_PROXIES: {item!r} is not an IP address or CIDR") from None
        settings = cls(
            host=_get(env, "SHARPML_API_HOST", "127.0.0.1"),
            port=env_int(env, "SHARPML_API_PORT", 8080, 0),
            data_dir=default_data_dir(env),
            limits=IntakeLimits.from_env(env),
            namespace=_get(env, "SHARPML_NAMESPACE") or _default_namespace(),
            kubeconfig=_get(env, "SHARPML_KUBECONFIG") or _get(env, "KUBECONFIG"),
            jwt=jwt,
            rate_limits=RateLimits(
                per_ip_per_hour=env_int(env, "SHARPML_RATE_LIMIT_IP_PER_HOUR", 10),
                per_account_per_day=env_int(env, "SHARPML_RATE_LIMIT_ACCOUNT_PER_DAY", 50),
                anonymous_per_ip_per_day=env_int(env, "SHARPML_ANONYMOUS_UPLOADS_PER_DAY", 3),
            ),
            anonymous_account=_get(env, "SHARPML_ANONYMOUS_ACCOUNT", "anonymous"),
            cors_origins=_list(env, "SHARPML_CORS_ORIGINS", "https://sharpml.com"),
            trusted_proxies=tuple(proxies),
            intake_concurrency=env_int(env, "SHARPML_INTAKE_CONCURRENCY", 2, 1),
            intake_workers=env_int(env, "SHARPML_INTAKE_WORKERS", 2, 1),
            sse_keepalive_seconds=env_int(env, "SHARPML_SSE_KEEPALIVE_SECONDS", 15, 1),
            upload_timeout_seconds=env_int(env, "SHARPML_UPLOAD_TIMEOUT_SECONDS", 900, 1),
            public_url=_get(env, "SHARPML_PUBLIC_URL").rstrip("/"),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Refuse configurations that would silently weaken authentication."""
        jwt = self.jwt
        allowed = SYMMETRIC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
        for alg in jwt.algorithms:
            if alg not in allowed:
                raise ConfigError(
                    f"SHARPML_JWT_ALGORITHMS: {alg!r} is not allowed; use one of {', '.join(sorted(allowed))}"
                )
        if any(a in SYMMETRIC_ALGORITHMS for a in jwt.algorithms) and not jwt.secret:
            raise ConfigError("SHARPML_JWT_ALGORITHMS names an HS* algorithm but SHARPML_JWT_SECRET is empty")
        if jwt.secret and len(jwt.secret.encode()) < 32:
            raise ConfigError("SHARPML_JWT_SECRET must be at least 32 bytes (HS256 needs a 256-bit key)")
        if any(a in ASYMMETRIC_ALGORITHMS for a in jwt.algorithms) and not jwt.public_key:
            raise ConfigError(
                "SHARPML_JWT_ALGORITHMS names a public-key algorithm but neither SHARPML_JWT_PUBLIC_KEY "
                "nor SHARPML_JWT_PUBLIC_KEY_FILE is set"
            )
        if jwt.enabled and not jwt.issuer:
            raise ConfigError("SHARPML_JWT_ISSUER is required when tokens are verified")
