"""The API's settings, every one from a ``SHARPML_*`` environment variable (the Helm chart sets them).

Each variable is declared once, with its type, default and bounds, in the registry
(:mod:`sharpml.settings`). A field here names its variable with :func:`setting`; its default is the
registry's (what an empty environment gives), and :meth:`Settings.from_env` reads every such field
through the registry, so neither a name's default nor its parsing is written twice. What is derived
from several variables (the token algorithms, the public key file, the namespace and kubeconfig
fallbacks) and the rules that span settings (:meth:`Settings.check`) stay here.

Intake limits and the data directory come from :mod:`sharpml.config`, so the API enforces exactly
the limits the CLI and the operator assume.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sharpml.config import ConfigError, IntakeLimits, default_data_dir
from sharpml.links import LinkSettings
from sharpml.settings import value
from sharpml.storage import S3Settings

#: Algorithms a token may be signed with. ``none`` is never accepted, whatever is configured.
SYMMETRIC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"})
FALLBACK_NAMESPACE = "sharpml"
_SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def setting(env_name: str, convert: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field read from the registry's ``env_name``: its default is the registry's default
    (passed through ``convert`` as a read value is), :func:`read_fields` reads it from an environment."""
    conv = convert or (lambda v: v)
    return field(
        default_factory=lambda: conv(value({}, env_name)), metadata={"env": env_name, "convert": conv}
    )


def read_fields(cls: type, env: Mapping[str, str]) -> dict[str, Any]:
    """Every :func:`setting` field of dataclass ``cls``, read from ``env`` through the registry."""
    return {
        f.name: f.metadata["convert"](value(env, f.metadata["env"]))
        for f in fields(cls)
        if "env" in f.metadata
    }


def _namespace(configured: str) -> str:
    """``SHARPML_NAMESPACE``; unset: in a pod, the service account's namespace; elsewhere ``sharpml``."""
    if configured:
        return configured
    try:
        return _SA_NAMESPACE_FILE.read_text().strip() or FALLBACK_NAMESPACE
    except OSError:
        return FALLBACK_NAMESPACE


def _networks(items: tuple[str, ...]) -> tuple[Network, ...]:
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"SHARPML_TRUSTED_PROXIES: {item!r} is not an IP address or CIDR") from None
    return tuple(out)


def _upper(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(a.upper() for a in items)


def _lower(items: tuple[str, ...]) -> tuple[str, ...]:
    """Host names compare without case; ``[::1]`` and ``::1`` are one host."""
    return tuple(a.lower().strip("[]") for a in items)


def _key(text: str) -> str:
    """Key material without surrounding whitespace (a trailing newline from a mounted file is not key)."""
    return text.strip()


@dataclass(frozen=True)
class JwtSettings:
    """How bearer tokens are verified. No key configured means only anonymous access."""

    algorithms: tuple[str, ...] = setting("SHARPML_JWT_ALGORITHMS", _upper)
    secret: str = setting("SHARPML_JWT_SECRET", _key)
    public_key: str = setting("SHARPML_JWT_PUBLIC_KEY", _key)
    issuer: str = setting("SHARPML_JWT_ISSUER")
    audience: str = setting("SHARPML_JWT_AUDIENCE")
    leeway_seconds: int = setting("SHARPML_JWT_LEEWAY_SECONDS")
    account_claim: str = setting("SHARPML_JWT_ACCOUNT_CLAIM")

    @property
    def enabled(self) -> bool:
        return bool(self.algorithms)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> JwtSettings:
        read = read_fields(cls, env)
        key_file = value(env, "SHARPML_JWT_PUBLIC_KEY_FILE")
        if key_file:
            try:
                read["public_key"] = _key(Path(key_file).read_text())
            except OSError as exc:
                raise ConfigError(f"SHARPML_JWT_PUBLIC_KEY_FILE={key_file!r}: {exc.strerror}") from None
        if not read["algorithms"]:
            read["algorithms"] = (("HS256",) if read["secret"] else ()) + (
                ("RS256",) if read["public_key"] else ()
            )
        return cls(**read)


@dataclass(frozen=True)
class RateLimits:
    """Uploads admitted per window. 0 switches a limit off (anonymous: 0 refuses anonymous uploads)."""

    per_ip_per_hour: int = setting("SHARPML_RATE_LIMIT_IP_PER_HOUR")
    per_account_per_day: int = setting("SHARPML_RATE_LIMIT_ACCOUNT_PER_DAY")
    anonymous_per_ip_per_day: int = setting("SHARPML_ANONYMOUS_UPLOADS_PER_DAY")


@dataclass(frozen=True)
class Settings:
    host: str = setting("SHARPML_API_HOST")
    port: int = setting("SHARPML_API_PORT")
    data_dir: Path = field(default_factory=default_data_dir)
    limits: IntakeLimits = field(default_factory=IntakeLimits)
    namespace: str = setting("SHARPML_NAMESPACE", _namespace)
    #: ``SHARPML_KUBECONFIG``, else ``KUBECONFIG``; empty: the pod's service account.
    kubeconfig: str = setting("SHARPML_KUBECONFIG")
    jwt: JwtSettings = field(default_factory=JwtSettings)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    anonymous_account: str = setting("SHARPML_ANONYMOUS_ACCOUNT")
    cors_origins: tuple[str, ...] = setting("SHARPML_CORS_ORIGINS")
    trusted_proxies: tuple[Network, ...] = setting("SHARPML_TRUSTED_PROXIES", _networks)
    #: Uploads whose intake (decode + re-encode) runs at once; bounds CPU and memory per replica.
    intake_concurrency: int = setting("SHARPML_INTAKE_CONCURRENCY")
    intake_workers: int = setting("SHARPML_INTAKE_WORKERS")
    #: Seconds between SSE keep-alive comments (proxies drop idle connections).
    sse_keepalive_seconds: int = setting("SHARPML_SSE_KEEPALIVE_SECONDS")
    #: Longest an upload's body may take to arrive: a trickling client must not hold a slot forever.
    upload_timeout_seconds: int = setting("SHARPML_UPLOAD_TIMEOUT_SECONDS")
    public_url: str = setting("SHARPML_PUBLIC_URL", lambda url: url.rstrip("/"))
    #: With no public URL: the Host names the request's own base URL may be built from.
    allowed_hosts: tuple[str, ...] = setting("SHARPML_ALLOWED_HOSTS", _lower)
    apiserver_timeout_seconds: int = setting("SHARPML_APISERVER_TIMEOUT_SECONDS")
    header_timeout_seconds: int = setting("SHARPML_HEADER_TIMEOUT_SECONDS")
    upload_idle_seconds: int = setting("SHARPML_UPLOAD_IDLE_SECONDS")
    uploads_per_ip_concurrent: int = setting("SHARPML_UPLOADS_PER_IP_CONCURRENT")
    webhook_allowed_hosts: tuple[str, ...] = setting("SHARPML_WEBHOOK_ALLOWED_HOSTS", _lower)
    #: Signed links (downloads, share links): the same keys as the operator's; none: no links issued.
    links: LinkSettings = field(default_factory=lambda: LinkSettings.from_env({}))
    #: Where artifacts are backed up; a download whose local copy is gone redirects there.
    s3: S3Settings = field(default_factory=lambda: S3Settings.from_env({}))
    log_level: str = setting("SHARPML_LOG_LEVEL")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        read = read_fields(cls, env)
        read["kubeconfig"] = read["kubeconfig"] or (env.get("KUBECONFIG") or "").strip()
        settings = cls(
            **read,
            data_dir=default_data_dir(env),
            limits=IntakeLimits.from_env(env),
            jwt=JwtSettings.from_env(env),
            rate_limits=RateLimits(**read_fields(RateLimits, env)),
            links=LinkSettings.from_env(env),
            s3=S3Settings.from_env(env),
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
