"""Notifications of finished jobs on the development control plane: the operator process sends a signed
webhook to a real HTTP receiver on loopback (allowed through SHARPML_WEBHOOK_ALLOWED_HOSTS, verified with
the standardwebhooks package) and an e-mail to a real aiosmtpd server, once per terminal transition,
also across an operator killed between an attempt and its outcome."""

from __future__ import annotations

import re
import time
from email import message_from_bytes, policy
from typing import Any

import pytest

from sharpml import links
from tests.operator.conftest import create, events_for, get_job, sharpjob, unique_name, wait_for, wait_phase
from tests.operator.receivers import LINK_KEYS, PUBLIC_URL, SECRET


def _settings(**extra: str) -> dict[str, str]:
    return {
        "webhook_secret": SECRET,
        "webhook_allowed_hosts": "127.0.0.1",
        "notify_retry_seconds": "0.5",
        "link_keys": LINK_KEYS,
        "public_url": PUBLIC_URL,
        **extra,
    }


def _notification(job: dict[str, Any], channel: str) -> dict[str, Any]:
    return (job.get("status", {}).get("notifications") or {}).get(channel) or {}


def _settled(channel: str):
    return lambda j: _notification(j, channel).get("state") in ("Sent", "Failed")


def _verified_view_link(url: str, name: str) -> bool:
    """A signed view link of job ``name`` below the public URL that the API would honour now."""
    assert url.startswith(f"{PUBLIC_URL}/v1/jobs/{name}/view?"), url
    params = dict(p.split("=", 1) for p in url.split("?", 1)[1].split("&"))
    return links.verify(links.parse_keys(LINK_KEYS), name, "view", params) > time.time()


def _events(cp, namespace: str, name: str) -> list[tuple[str, str]]:
    return [(e["type"], e["reason"]) for e in events_for(cp, namespace, name)]


@pytest.mark.cluster
@pytest.mark.podman
@pytest.mark.slow
def test_complete_job_is_announced_once_by_webhook_after_retries_and_by_email(
    control_plane, namespace, data_volume, start_operator, scene_uploads, receivers, smtp_server
):
    smtp_port, inbox = smtp_server
    hook = receivers(fail_first=2)
    op = start_operator(**_settings(smtp_host="127.0.0.1", smtp_port=str(smtp_port), smtp_starttls="off"))
    name = unique_name("notify")
    job_dir = data_volume.new_job(scene_uploads, name)
    notify = {"webhookURL": hook.url, "email": "someone@example.com"}
    create(control_plane, namespace, sharpjob(name, job_dir, len(scene_uploads), notify=notify))

    job = wait_phase(control_plane, namespace, name, "Complete", "Failed", timeout=240, operator=op)
    assert job["status"]["phase"] == "Complete", job["status"]
    job = wait_for(control_plane, namespace, name, lambda j: _settled("webhook")(j) and _settled("email")(j),
                   timeout=60, what="both notifications settled", operator=op)  # fmt: skip

    webhook = _notification(job, "webhook")
    assert webhook["state"] == "Sent" and webhook["attempts"] == 3 and webhook["for"] == "Complete", webhook
    assert "lastError" not in webhook and webhook["id"].startswith("msg_")  # cleared once delivered
    # Three requests, every one signed and carrying the same id; one delivery.
    assert len(hook.requests) == 3 and all(r["verified"] for r in hook.requests)
    assert {r["headers"]["webhook-id"] for r in hook.requests} == {webhook["id"]}
    assert list(hook.delivered) == [webhook["id"]]
    payload = hook.delivered[webhook["id"]]
    assert payload["type"] == "sharpjob.completed"
    data = payload["data"]
    assert data["id"] == name and data["phase"] == "Complete" and data["timestamps"]["finishedAt"]
    view = data["links"]["view"]
    assert view.startswith(f"{PUBLIC_URL}/v1/jobs/{name}/view?")
    assert _verified_view_link(view, name)

    email = _notification(job, "email")
    assert email["state"] == "Sent" and email["attempts"] == 1, email
    ((rcpts, raw),) = inbox.messages
    assert rcpts == ["someone@example.com"]
    msg = message_from_bytes(raw, policy=policy.default)
    assert msg["Subject"] == "Your SharpML scene is ready"
    # Links are minted at each attempt: the e-mail's is another one, as valid.
    (mailed,) = re.findall(r"https://\S+/view\?\S+", msg.get_body(("plain",)).get_content())
    assert _verified_view_link(mailed, name)
    assert name in msg.get_body(("html",)).get_content()

    # Shown in `kubectl describe`: two Warnings for the failed attempts, then the deliveries.
    events = _events(control_plane, namespace, name)
    assert events.count(("Warning", "WebhookRetry")) == 2, events
    assert ("Normal", "WebhookSent") in events and ("Normal", "EmailSent") in events
    metrics = op.metrics()
    assert 'sharpml_notifications_total{channel="webhook",result="sent"} 1.0' in metrics
    assert 'sharpml_notifications_total{channel="email",result="sent"} 1.0' in metrics

    # Nothing more is sent later, and the job is as it was.
    time.sleep(2)
    assert len(hook.requests) == 3 and len(inbox.messages) == 1
    assert get_job(control_plane, namespace, name)["status"]["phase"] == "Complete"


@pytest.mark.cluster
@pytest.mark.podman
@pytest.mark.slow
def test_operator_killed_during_an_attempt_continues_the_count(
    control_plane, namespace, data_volume, start_operator, scene_uploads, receivers
):
    """The receiver takes the first request but the operator dies before the answer: the attempt was
    claimed, so the new operator makes attempt 2 (same webhook-id), and the receiver delivers once."""
    hook = receivers(hold_first=True)
    op = start_operator(**_settings(notify_retry_seconds="2"))
    name = unique_name("restart")
    job_dir = data_volume.new_job(scene_uploads, name)
    create(
        control_plane, namespace, sharpjob(name, job_dir, len(scene_uploads), notify={"webhookURL": hook.url})
    )

    wait_phase(control_plane, namespace, name, "Complete", timeout=240, operator=op)
    deadline = time.monotonic() + 30
    while not hook.requests and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(hook.requests) == 1, op.log()
    op.kill()
    claimed = _notification(get_job(control_plane, namespace, name), "webhook")
    assert claimed["state"] == "Pending" and claimed["attempts"] == 1, claimed
    hook.hold.clear()

    op.start()
    job = wait_for(control_plane, namespace, name, _settled("webhook"), timeout=60, what="webhook settled",
                   operator=op)  # fmt: skip
    webhook = _notification(job, "webhook")
    assert webhook["state"] == "Sent" and webhook["attempts"] == 2, webhook
    assert [r["headers"]["webhook-id"] for r in hook.requests] == [webhook["id"]] * 2
    assert len(hook.delivered) == 1
    assert ("Normal", "WebhookSent") in _events(control_plane, namespace, name)


@pytest.mark.cluster
def test_failed_job_is_announced_and_internal_address_refused_at_send_time(
    control_plane, namespace, data_volume, start_operator, scene_uploads, receivers
):
    hook = receivers()
    op = start_operator(**_settings())
    # Both fail at admission (the image count does not match the directory): fast, and a real Failed job.
    ok, internal = unique_name("failed"), unique_name("internal")
    for name, url in ((ok, hook.url), (internal, "http://10.255.255.1:9/hook")):
        job_dir = data_volume.new_job(scene_uploads, name)
        create(
            control_plane,
            namespace,
            sharpjob(name, job_dir, len(scene_uploads) + 1, notify={"webhookURL": url}),
        )

    job = wait_for(control_plane, namespace, ok, _settled("webhook"), timeout=60, what="webhook", operator=op)
    assert job["status"]["phase"] == "Failed"
    assert _notification(job, "webhook")["state"] == "Sent"
    ((payload),) = hook.delivered.values()
    assert payload["type"] == "sharpjob.failed"
    assert payload["data"]["phase"] == "Failed" and payload["data"]["reason"] == "ImageCountMismatch"

    job = wait_for(control_plane, namespace, internal, _settled("webhook"), timeout=60, what="refusal",
                   operator=op)  # fmt: skip
    refused = _notification(job, "webhook")
    assert refused["state"] == "Failed" and refused["attempts"] == 1, refused
    assert "refused" in refused["lastError"] and "10.255.255.1" in refused["lastError"]
    # The job is unaffected: still Failed for its own reason.
    conds = {c["type"]: c for c in job["status"]["conditions"]}
    assert job["status"]["phase"] == "Failed" and conds["Failed"]["reason"] == "ImageCountMismatch"
    assert ("Warning", "WebhookFailed") in _events(control_plane, namespace, internal)
    assert 'sharpml_notifications_total{channel="webhook",result="failed"} 1.0' in op.metrics()
    assert len(hook.requests) == 1
