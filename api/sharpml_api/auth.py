"""Who is calling: a verified JWT's account, or an anonymous caller (free tier).

Tokens are checked with pyjwt against an algorithm allow-list (never ``none``): signature, ``exp``,
``iss`` and ``aud`` are required. The key is chosen by the algorithm's family, so a public key can
never be used as an HMAC secret (the classic algorithm-confusion attack). The account id must be a
valid ``spec.owner`` of a SharpJob and may not be the reserved anonymous identity.

Anonymous jobs all have the anonymous owner, so they are reached with the per-job access token the
upload returned (``X-Job-Token``), never by owner alone. The request side (headers to
:class:`Principal`) is the :func:`sharpml_api.deps.caller` dependency.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import jwt

from sharpml_api.problems import ApiProblem
from sharpml_api.settings import SYMMETRIC_ALGORITHMS, Settings

_ACCOUNT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # the CRD's spec.owner pattern and length
JOB_TOKEN_HEADER = "X-Job-Token"
#: Claims RFC 7519 defines as a NumericDate (a JSON number of seconds).
_NUMERIC_DATES = ("exp", "nbf", "iat")


@dataclass(frozen=True)
class Principal:
    """The caller. ``account`` is the SharpJob owner they act as."""

    account: str
    anonymous: bool
    job_token: str | None = None


def unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(
        401,
        "unauthorized",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


def verify_token(token: str, settings: Settings) -> str:
    """The account id in a valid token; :class:`ApiProblem` 401 otherwise."""
    cfg = settings.jwt
    if not cfg.enabled:
        raise unauthorized("this server does not accept bearer tokens; call without Authorization")
    try:
        alg = jwt.get_unverified_header(token).get("alg")
    except jwt.InvalidTokenError as exc:
        raise unauthorized(f"malformed token ({exc})") from None
    if alg not in cfg.algorithms:
        raise unauthorized(f"token algorithm {alg!r} is not accepted; allowed: {', '.join(cfg.algorithms)}")
    key = cfg.secret if alg in SYMMETRIC_ALGORITHMS else cfg.public_key
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=cfg.audience,
            issuer=cfg.issuer,
            leeway=cfg.leeway_seconds,
            options={"require": ["exp", "iss", "aud", cfg.account_claim]},
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise unauthorized(f"invalid token ({exc})") from None
    for claim in _NUMERIC_DATES:
        # pyjwt reads these with int(), so "exp": "9999999999" (a string) would pass; RFC 7519 says
        # NumericDate, a JSON number.
        if claim in claims and (
            isinstance(claims[claim], bool) or not isinstance(claims[claim], int | float)
        ):
            raise unauthorized(f"invalid token (the {claim!r} claim must be a number)")
    account = claims.get(cfg.account_claim)
    if not isinstance(account, str) or not _ACCOUNT.fullmatch(account):
        raise unauthorized(
            f"claim {cfg.account_claim!r} must be an account id (letters, digits, '.', '_', '-'; at most 128)"
        )
    if account == settings.anonymous_account:
        raise unauthorized(f"account id {account!r} is reserved")
    return account


def new_job_token() -> tuple[str, str]:
    """A fresh access token for an anonymous job and the SHA-256 digest stored with the job."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def may_access(who: Principal, owner: str, stored_digest: str | None) -> bool:
    """Owner-only access; anonymous jobs additionally need their own job token."""
    if owner != who.account:
        return False
    if not who.anonymous:
        return True
    if not who.job_token or not stored_digest:
        return False
    return hmac.compare_digest(token_digest(who.job_token), stored_digest)
