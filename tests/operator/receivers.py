"""A webhook receiver (a real HTTP server on loopback that verifies Standard Webhooks signatures) and a
real SMTP server (aiosmtpd), for the tests of notifications: shared by test_notifications.py and the
product path in test_training.py."""

from __future__ import annotations

import base64
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import standardwebhooks
from aiosmtpd.controller import Controller

SECRET = "whsec_" + base64.b64encode(b"notification-test-key-32-bytes!!").decode()
LINK_KEYS = "t1:" + "l" * 32
PUBLIC_URL = "https://api.sharpml.test"


class Receiver:
    """A webhook receiver: verifies every request's signature, answers 503 to the first ``fail_first``,
    holds the answer to the first one while ``hold`` is set, and dedupes deliveries by ``webhook-id``."""

    def __init__(self, fail_first: int = 0, hold_first: bool = False) -> None:
        self.fail_first = fail_first
        self.hold = threading.Event()
        if hold_first:
            self.hold.set()
        self.requests: list[dict[str, Any]] = []
        self.delivered: dict[str, Any] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    payload = standardwebhooks.Webhook(SECRET).verify(body, headers)
                    verified = True
                except standardwebhooks.webhooks.WebhookVerificationError:
                    payload, verified = None, False
                with receiver.lock:
                    n = len(receiver.requests) + 1
                    receiver.requests.append({"headers": headers, "payload": payload, "verified": verified})
                    failing = n <= receiver.fail_first
                    if verified and not failing:
                        receiver.delivered.setdefault(headers["webhook-id"], payload)
                if n == 1 and receiver.hold.is_set():
                    deadline = time.monotonic() + 60
                    while receiver.hold.is_set() and time.monotonic() < deadline:
                        time.sleep(0.05)
                status = 400 if not verified else 503 if failing else 204
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/sharpml"

    def close(self) -> None:
        self.hold.clear()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(**kw: Any) -> Receiver:
        made.append(Receiver(**kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Inbox]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()
