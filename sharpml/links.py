"""Signed, time-limited links to a job's deliverables and its viewer page (the seed's "Signed URLs").

A link grants one *scope* of one job until a moment: ``view`` (the viewer page, the job's status and
its event stream, read-only) or one artifact's file name (``scene.splat``, ``scene.ply``,
``scene.spz``). It carries three query parameters, ``exp`` (Unix seconds), ``kid`` (which key signed
it) and ``sig``: HMAC-SHA256 over the job id, the scope, ``exp`` and ``kid``, base64url without
padding. Keys rotate: every key in ``SHARPML_LINK_KEYS`` verifies, the first one signs, so a new key
is put first and the old one removed once the links it signed have expired.

The API verifies links and mints fresh ones in every status answer; the operator mints the links it
sends in notifications. Both read the same keys. No third-party import.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from sharpml.contract.delivery import ARTIFACTS, VIEW_SCOPE

#: The query parameters of a signed link, in the order they are written.
PARAMS = ("exp", "kid", "sig")
_KID = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
#: A key shorter than this is refused: HMAC-SHA256 wants at least 256 bits of secret.
MIN_SECRET_BYTES = 32
SCOPES = frozenset({VIEW_SCOPE, *(a.filename for a in ARTIFACTS.values())})


class LinkError(ValueError):
    """A link cannot be honoured. ``status``: 403 (missing, malformed, unknown key, tampered) or 410
    (it was genuine and has expired); the message says which, never why a signature differs."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class LinkKey:
    kid: str
    secret: bytes = field(repr=False)


def parse_keys(raw: str) -> tuple[LinkKey, ...]:
    """``kid:secret,kid2:secret2`` (the first signs) → keys; raises ``ValueError`` naming the rule."""
    keys: list[LinkKey] = []
    for part in (p.strip() for p in raw.split(",")):
        if not part:
            continue
        kid, sep, secret = part.partition(":")
        if not sep or not _KID.match(kid):
            raise ValueError("SHARPML_LINK_KEYS: each entry is kid:secret, kid of 1-32 of [A-Za-z0-9_.-]")
        if len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"SHARPML_LINK_KEYS: the secret of key {kid!r} is shorter than {MIN_SECRET_BYTES} bytes"
            )
        if any(k.kid == kid for k in keys):
            raise ValueError(f"SHARPML_LINK_KEYS: key id {kid!r} appears twice")
        keys.append(LinkKey(kid, secret.encode()))
    return tuple(keys)


def _signature(key: LinkKey, job_id: str, scope: str, exp: int) -> str:
    message = f"sharpml-link-v1\n{job_id}\n{scope}\n{exp}\n{key.kid}".encode()
    digest = hmac.new(key.secret, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(keys: tuple[LinkKey, ...], job_id: str, scope: str, expires: int) -> dict[str, str]:
    """The query parameters granting ``scope`` of ``job_id`` until ``expires`` (Unix seconds)."""
    if not keys:
        raise ValueError("no link key configured (SHARPML_LINK_KEYS)")
    if scope not in SCOPES:
        raise ValueError(f"unknown link scope {scope!r}")
    key = keys[0]
    return {"exp": str(int(expires)), "kid": key.kid, "sig": _signature(key, job_id, scope, int(expires))}


def verify(
    keys: tuple[LinkKey, ...], job_id: str, scope: str, params: Mapping[str, str], now: float | None = None
) -> int:
    """Check a link's parameters; return its expiry, or raise :class:`LinkError` (403 or 410).

    The signature is checked before the expiry, so an expired link says 410 only when it was genuine.
    """
    exp_raw, kid, sig = (params.get(p) for p in PARAMS)
    if not exp_raw or not kid or not sig:
        raise LinkError("this link is incomplete: it needs exp, kid and sig", 403)
    if not exp_raw.isascii() or not exp_raw.isdigit() or len(exp_raw) > 12:
        raise LinkError("this link is not valid: exp must be Unix seconds", 403)
    key = next((k for k in keys if hmac.compare_digest(k.kid.encode(), kid.encode())), None)
    if key is None or scope not in SCOPES:
        raise LinkError("this link is not valid (signed with a key no longer in use, or altered)", 403)
    exp = int(exp_raw)
    if not hmac.compare_digest(_signature(key, job_id, scope, exp).encode(), sig.encode()):
        raise LinkError("this link is not valid: it was altered or does not belong to this job", 403)
    if (time.time() if now is None else now) >= exp:
        raise LinkError(f"this link expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(exp))}", 410)
    return exp


def url(base: str, job_id: str, scope: str, keys: tuple[LinkKey, ...], expires: int) -> str:
    """An absolute signed URL below ``base`` (the public URL, no trailing slash)."""
    path = f"/v1/jobs/{job_id}/view" if scope == VIEW_SCOPE else f"/v1/jobs/{job_id}/artifacts/{scope}"
    return f"{base.rstrip('/')}{path}?{urlencode(sign(keys, job_id, scope, expires))}"


@dataclass(frozen=True)
class LinkSettings:
    """The link keys and lifetime, read the same way by the API and the operator."""

    keys: tuple[LinkKey, ...] = field(repr=False)
    ttl_seconds: int

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> LinkSettings:
        from sharpml.settings import ConfigError, value

        try:
            keys = parse_keys(value(env, "SHARPML_LINK_KEYS"))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return cls(keys=keys, ttl_seconds=value(env, "SHARPML_LINK_TTL_SECONDS"))

    def expiry(self, now: float | None = None, not_after: float | None = None) -> int:
        """When a link minted now expires: the TTL, never past ``not_after`` (the artifact's expiry)."""
        exp = int(time.time() if now is None else now) + self.ttl_seconds
        return exp if not_after is None else min(exp, int(not_after))
