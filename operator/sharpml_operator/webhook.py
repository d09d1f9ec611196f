"""The webhook: a JSON POST of a finished job, signed with the Standard Webhooks scheme, sent only to
an address the SSRF guard (:mod:`sharpml.netguard`) accepted a moment before.

Signing (https://www.standardwebhooks.com): ``webhook-signature: v1,<base64 HMAC-SHA256>`` over
``<webhook-id>.<webhook-timestamp>.<body>`` with the secret's bytes (``whsec_<base64>``). The id is
the same on every attempt of one notification, so a receiver dedupes on it; the timestamp is the
attempt's, so a receiver's replay window holds for retries too. The HMAC is written here (ten lines,
no dependency in the operator's image) and tested against the ``standardwebhooks`` package's verifier.

Sending: the host is resolved once and checked; the connection goes to that address with the URL's
``Host`` and TLS server name, so a DNS answer that changes between the check and the connect (DNS
rebinding) cannot move it. Redirects are not followed (an answer is an answer), the connect and each
read have a timeout, and at most :data:`MAX_ANSWER_BYTES` of the answer are read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sharpml import netguard

SECRET_PREFIX = "whsec_"
#: The answer is read up to this size (its text goes into lastError, shortened); the rest is dropped.
MAX_ANSWER_BYTES = 64 * 1024
USER_AGENT = "SharpML-Webhooks/1"


class WebhookError(Exception):
    """One attempt failed. ``final``: retrying cannot help (the address is refused, the secret is
    missing); otherwise the next attempt may succeed."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


def parse_secret(raw: str) -> bytes:
    """``whsec_<base64>`` → the key's bytes; ``ValueError`` naming the setting and the rule."""
    if not raw.startswith(SECRET_PREFIX):
        raise ValueError("SHARPML_WEBHOOK_SECRET: must be whsec_ followed by base64")
    try:
        key = base64.b64decode(raw[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("SHARPML_WEBHOOK_SECRET: the part after whsec_ is not valid base64") from None
    if len(key) < 24:
        raise ValueError("SHARPML_WEBHOOK_SECRET: the key must be at least 24 bytes (192 bits)")
    return key


def signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256 of id.timestamp.body>``."""
    signed = msg_id.encode() + b"." + str(int(timestamp)).encode() + b"." + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(key: bytes, msg_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The request's headers for one attempt (a fresh timestamp each time, the same id)."""
    ts = int(time.time() if now is None else now)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": signature(key, msg_id, ts, body),
    }


def message_id(uid: str, phase: str) -> str:
    """The notification's ``webhook-id``: derived from the job and the terminal phase it announces, so
    every attempt, by any operator replica, after any restart, carries the same one."""
    return "msg_" + hashlib.sha256(f"{uid}/{phase}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Answer:
    status: int
    text: str  # the first bytes of the answer, for lastError


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to ``address`` (already checked), whatever the URL's host name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """The same over TLS: the certificate is checked against the URL's host name (SNI too)."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, address, timeout)
        self._context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


def post(
    url: str,
    body: bytes,
    request_headers: dict[str, str],
    allowed: Iterable[str] = (),
    timeout: float = 10.0,
    *,
    resolver: netguard.Resolver = netguard.resolve,
    context: ssl.SSLContext | None = None,
) -> Answer:
    """POST ``body`` to ``url`` once; the answer if it was 2xx, else :class:`WebhookError`. Blocking."""
    try:
        addrs = netguard.check(url, allowed, resolver)
    except netguard.Refused as exc:
        final = exc.rule != "unresolvable"  # DNS may answer on a later attempt; a refusal stays one
        raise WebhookError(f"refused: {exc}", final=final) from None
    parts = urlsplit(url)
    host, port = netguard.target(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    errors = []
    for address in addrs:  # every checked address in turn, as a browser would; never a new lookup
        if parts.scheme == "https":
            conn: _PinnedHTTPConnection = _PinnedHTTPSConnection(
                host, port, str(address), timeout, context or ssl.create_default_context()
            )
        else:
            conn = _PinnedHTTPConnection(host, port, str(address), timeout)
        try:
            try:
                conn.connect()
            except OSError as exc:
                errors.append(f"{address}: {exc}")
                continue
            conn.request(
                "POST", path, body=body, headers={**request_headers, "host": parts.netloc.rpartition("@")[2]}
            )
            resp = conn.getresponse()
            text = resp.read(MAX_ANSWER_BYTES).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            raise WebhookError(f"{address}: {type(exc).__name__}: {exc}") from None
        finally:
            conn.close()
        if 200 <= resp.status < 300:
            return Answer(resp.status, text)
        where = (
            f", redirect to {resp.getheader('location')!r} not followed" if 300 <= resp.status < 400 else ""
        )
        raise WebhookError(f"HTTP {resp.status}{where}: {text[:200].strip()}")
    raise WebhookError("could not connect: " + "; ".join(errors))
