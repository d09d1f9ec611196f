"""Unit tests of the notifications: Standard Webhooks signing (checked by the standardwebhooks package's
verifier), the webhook request (a real HTTP server on loopback), the retry schedule, the e-mail (built,
then delivered to a real aiosmtpd server, with STARTTLS and AUTH)."""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import threading
import time
from collections.abc import Iterator
from email import message_from_bytes, policy
from pathlib import Path
from typing import ClassVar

import pytest
import standardwebhooks
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from sharpml_operator import mail, notice, notifier, webhook
from sharpml_operator.settings import Settings

from sharpml import links
from sharpml.contract import Phase
from tests.conftest import _load_hack

SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()
KEYS = links.parse_keys("k1:" + "s" * 32)


# --- signing -------------------------------------------------------------------------------------------


def test_signature_verifies_with_the_standardwebhooks_package() -> None:
    key = webhook.parse_secret(SECRET)
    body = b'{"type":"sharpjob.completed","data":{"id":"x"}}'
    hdrs = webhook.headers(key, "msg_1", body)
    verifier = standardwebhooks.Webhook(SECRET)
    assert verifier.verify(body, hdrs) == json.loads(body)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verifier.verify(body.replace(b"x", b"y"), hdrs)  # the body was changed
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verifier.verify(body, {**hdrs, "webhook-id": "msg_2"})  # the id is signed too
    other = "whsec_" + base64.b64encode(b"o" * 32).decode()
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(other).verify(body, hdrs)
    old = webhook.headers(key, "msg_1", body, now=time.time() - 600)  # outside the replay window
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verifier.verify(body, old)


@pytest.mark.parametrize(
    "raw, rule",
    [("k" * 40, "whsec_"), ("whsec_%%%", "base64"), ("whsec_" + base64.b64encode(b"x").decode(), "24")],
)
def test_bad_secrets_are_refused_naming_the_setting(raw: str, rule: str) -> None:
    with pytest.raises(ValueError, match=f"SHARPML_WEBHOOK_SECRET.*{rule}"):
        webhook.parse_secret(raw)


def test_message_id_is_stable_per_transition() -> None:
    assert webhook.message_id("u1", "Complete") == webhook.message_id("u1", "Complete")
    assert webhook.message_id("u1", "Complete") != webhook.message_id("u1", "Failed")
    assert len(webhook.message_id("u1", "Complete")) <= 64  # the CRD's maxLength


# --- the retry schedule --------------------------------------------------------------------------------


def test_backoff_doubles_and_attempts_are_capped() -> None:
    s = Settings.from_env({"SHARPML_NOTIFY_RETRY_SECONDS": "30"}).notify
    assert [s.backoff(n) for n in range(1, 5)] == [30, 60, 120, 240]
    decide = notifier.decide
    now = 1000.0
    assert decide(None, Phase.COMPLETE, now, 5) == notifier.Decision("send", 1)
    # A new terminal phase starts over (the entry announced another one).
    assert decide({"for": "Failed", "state": "Sent"}, Phase.COMPLETE, now, 5).action == "send"
    pending = {"for": "Complete", "state": "Pending", "attempts": 2, "nextAttemptAt": "1970-01-01T00:16:50Z"}
    assert decide(pending, Phase.COMPLETE, now, 5) == notifier.Decision("wait", 2, 1010.0)
    assert decide(pending, Phase.COMPLETE, 1010.0, 5) == notifier.Decision("send", 3)  # the count continues
    assert decide({**pending, "attempts": 5}, Phase.COMPLETE, 1010.0, 5).action == "give_up"
    for state in ("Sent", "Failed"):
        assert decide({"for": "Complete", "state": state}, Phase.COMPLETE, now, 5).action == "done"


def _job(phase: str = "Complete", **notify: str) -> dict:
    return {
        "metadata": {"name": "0b0e5a43-0000-4000-8000-000000000001", "namespace": "ns", "uid": "u1",
                     "resourceVersion": "7"},
        "spec": {"notify": notify},
        "status": {
            "phase": phase,
            "message": "done",
            "timestamps": {"finishedAt": "2026-12-02T10:00:00Z"},
            "conditions": [{"type": "Failed", "status": "True", "reason": "QualityGate"}],
            "outputs": {"expiresAt": "2099-01-01T00:00:00Z",
                        "artifacts": [{"format": "splat", "file": "scene.splat"}]},
        },
    }  # fmt: skip


def test_which_channels_announce_which_phases() -> None:
    both = {"webhookURL": "https://hooks.example.com/h", "email": "a@example.com"}
    assert notifier.pending_channels(_job("Complete", **both)) == ["webhook", "email"]
    assert notifier.pending_channels(_job("Cancelled", **both)) == ["webhook"]
    assert notifier.pending_channels(_job("Reconstructing", **both)) == []
    done = _job("Complete", **both)
    done["status"]["notifications"] = {"webhook": {"for": "Complete", "state": "Sent"}}
    assert notifier.pending_channels(done) == ["email"]
    assert notifier.index_entry(_job("Complete")) == {}


def test_the_notice_carries_signed_links_never_past_the_artifacts_expiry() -> None:
    ls = links.LinkSettings(keys=KEYS, ttl_seconds=3600)
    n = notice.build(_job(), ls, "https://api.sharpml.com", now=time.time())
    body = json.loads(n.payload("2026-12-02T10:00:01Z"))
    assert body["type"] == "sharpjob.completed" and body["data"]["id"] == n.job_id
    view = body["data"]["links"]["view"]
    assert view.startswith(f"https://api.sharpml.com/v1/jobs/{n.job_id}/view?")
    params = dict(p.split("=", 1) for p in view.split("?", 1)[1].split("&"))
    assert links.verify(KEYS, n.job_id, "view", params) <= time.time() + 3600
    assert set(body["data"]["links"]["artifacts"]) == {"scene.splat"}
    # No keys or no public URL: no links, the rest is said.
    assert (
        json.loads(notice.build(_job(), links.LinkSettings((), 60), "", 0).payload("t"))["data"]["links"]
        is None
    )


# --- the webhook request ----------------------------------------------------------------------------------


class _Receiver(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []
    answer: ClassVar[tuple[int, dict[str, str], bytes]] = (204, {}, b"")

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status, hdrs, text = type(self).answer
        self.send_response(status)
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[int, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"seen": [], "answer": (204, {}, b"")})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def test_post_connects_to_the_checked_address_with_the_urls_host(receiver) -> None:
    port, handler = receiver
    calls: list[str] = []

    def resolver(host: str, p: int) -> list[str]:  # resolves once; a second lookup would rebind
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["10.0.0.1"]

    url = f"http://hooks.example.com:{port}/in?x=1"
    answer = webhook.post(url, b"{}", {"webhook-id": "m"}, ("127.0.0.0/8",), 5, resolver=resolver)
    assert answer.status == 204 and calls == ["hooks.example.com"]
    path, hdrs, body = handler.seen[0]
    assert path == "/in?x=1" and hdrs["host"] == f"hooks.example.com:{port}" and body == b"{}"


def test_post_refuses_internal_addresses_without_connecting(receiver) -> None:
    port, handler = receiver
    with pytest.raises(webhook.WebhookError, match="refused") as info:
        webhook.post(f"http://127.0.0.1:{port}/h", b"{}", {}, (), 5)
    assert info.value.final and handler.seen == []
    with pytest.raises(webhook.WebhookError) as info:  # DNS may come back: not final
        webhook.post("http://nowhere.example.com/h", b"{}", {}, (), 5, resolver=lambda h, p: [])
    assert not info.value.final


def test_redirects_are_not_followed_and_answers_are_capped(receiver) -> None:
    port, handler = receiver
    handler.answer = (307, {"location": "http://169.254.169.254/"}, b"")
    with pytest.raises(webhook.WebhookError, match=r"HTTP 307.*not followed") as info:
        webhook.post(f"http://127.0.0.1:{port}/h", b"{}", {}, ("127.0.0.1",), 5)
    assert not info.value.final and len(handler.seen) == 1
    handler.answer = (200, {}, b"x" * (webhook.MAX_ANSWER_BYTES * 4))
    assert (
        len(webhook.post(f"http://127.0.0.1:{port}/h", b"{}", {}, ("127.0.0.1",), 5).text)
        == webhook.MAX_ANSWER_BYTES
    )
    handler.answer = (500, {}, b"oops")
    with pytest.raises(webhook.WebhookError, match="HTTP 500: oops"):
        webhook.post(f"http://127.0.0.1:{port}/h", b"{}", {}, ("127.0.0.1",), 5)


def test_a_receiver_that_does_not_answer_times_out() -> None:
    import socket

    with socket.socket() as s:  # accepts connections (the backlog), never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        start = time.monotonic()
        with pytest.raises(webhook.WebhookError, match="timed out"):
            webhook.post(f"http://127.0.0.1:{s.getsockname()[1]}/h", b"{}", {}, ("127.0.0.1",), 0.5)
        assert time.monotonic() - start < 3


# --- e-mail ----------------------------------------------------------------------------------------------


HOSTILE_NAME = "x\r\nBcc: victim@evil.example\r\n<script>alert(1)</script>"


def test_the_message_has_text_and_html_and_no_injected_headers() -> None:
    job = _job("Failed")
    job["metadata"]["name"] = HOSTILE_NAME
    job["status"]["message"] = "<img src=x onerror=alert(1)>\r\nBcc: victim@evil.example"
    n = notice.build(job, links.LinkSettings(KEYS, 3600), "https://api.sharpml.com", time.time())
    msg = mail.build(n, "SharpML <noreply@sharpml.com>", "user@example.com", "msg_1")
    parsed = message_from_bytes(msg.as_bytes(), policy=policy.default)
    assert parsed["Subject"] == "Your SharpML job failed" and parsed["To"] == "user@example.com"
    assert parsed["Bcc"] is None and parsed["Message-ID"] == "<msg_1@sharpml.com>"
    text = parsed.get_body(("plain",)).get_content()
    html = parsed.get_body(("html",)).get_content()
    assert "QualityGate" in text and "/view?" in text
    assert "<script>" not in html and "&lt;script&gt;" in html and "<img" not in html
    assert "/view?" in html


@pytest.mark.parametrize(
    "address",
    [
        "victim@evil.example\r\nBcc: other@evil.example",
        "a@b.example, c@d.example",
        "Name <a@b.example>",
        "no-at-sign",
        "a@b\n.example",
        "a..b@example.com",
        '"quoted"@example.com',
    ],
)
def test_hostile_addresses_are_refused(address: str) -> None:
    n = notice.build(_job(), links.LinkSettings((), 60), "", time.time())
    with pytest.raises(mail.MailError, match=r"spec\.notify\.email") as info:
        mail.build(n, "noreply@sharpml.com", address, "msg_1")
    assert info.value.final


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 OK"


def _auth(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"sharpml" and auth_data.password == b"s3cret"
    return AuthResult(success=ok, handled=False)


def test_delivered_over_starttls_with_auth(tmp_path: Path) -> None:
    ca = _load_hack("s3server").write_pki(tmp_path / "pki")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "pki/server.crt", tmp_path / "pki/server.key")
    inbox = _Inbox()
    controller = Controller(
        inbox, hostname="127.0.0.1", port=_free_port(), tls_context=server_ctx, require_starttls=True,
        auth_required=True, authenticator=_auth, server_hostname="127.0.0.1",
    )  # fmt: skip
    controller.start()
    try:
        port = controller.port
        smtp = mail.SmtpSettings("127.0.0.1", port, True, "sharpml", "s3cret", "noreply@sharpml.com", 10)
        n = notice.build(_job(), links.LinkSettings(KEYS, 3600), "https://api.sharpml.com", time.time())
        msg = mail.build(n, smtp.sender, "user@example.com", "msg_1")
        client_ctx = ssl.create_default_context(cafile=str(ca))
        mail.send(msg, smtp, client_ctx)
        with pytest.raises(mail.MailError, match="login refused") as info:
            mail.send(
                msg,
                mail.SmtpSettings("127.0.0.1", port, True, "sharpml", "wrong", smtp.sender, 10),
                client_ctx,
            )
        assert info.value.final
        with pytest.raises(mail.MailError):  # without STARTTLS the server refuses (530), no password sent
            mail.send(msg, mail.SmtpSettings("127.0.0.1", port, False, "", "", smtp.sender, 10))
    finally:
        controller.stop()
    assert len(inbox.messages) == 1
    sender, rcpts, raw = inbox.messages[0]
    assert sender == "noreply@sharpml.com" and rcpts == ["user@example.com"]
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Subject"] == "Your SharpML scene is ready"
    assert "/view?" in parsed.get_body(("plain",)).get_content()
