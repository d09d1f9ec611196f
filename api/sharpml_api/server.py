"""The HTTP server's own defences, below the app: a deadline for a request's headers.

uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but waits forever for the
headers of a request: a client that opens a connection and sends nothing, or stops half-way through
its headers, holds a socket and a file descriptor for good (slowloris). Here each request's headers
must be complete within ``SHARPML_HEADER_TIMEOUT_SECONDS`` of the connection opening, or of the
request's first byte on a kept-alive connection; otherwise the connection is closed. A body that
stops arriving is the app's to time out (``SHARPML_UPLOAD_IDLE_SECONDS``, :mod:`sharpml_api.submit`).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a deadline on every request's headers."""

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing():
                log.info("closing connection from %s: no complete headers in %s s", self.client, seconds)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._header_timer is None:
                self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol
