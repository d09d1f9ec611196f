"""Notifications of finished jobs, each sent once per terminal transition, across operator restarts.

Level-triggered, like retention: one operator-wide loop (started with kopf, so only in the replica
holding the leader Lease) over the ``notifying_jobs`` index — terminal SharpJobs with a channel
configured whose ``status.notifications`` entry for this phase is not yet ``Sent`` or ``Failed``. Terminal
jobs have no reconcile timer; the index and this loop are how work on them is done.

``status.notifications.<channel>`` (:mod:`sharpml.contract.delivery`) is the whole state::

    {for: Complete, state: Pending|Sent|Failed, attempts: 2, at: …, nextAttemptAt: …, lastError: …, id: msg_…}

An attempt is *claimed* before it is made: ``attempts`` + 1, ``at`` and ``nextAttemptAt`` are written with
the resourceVersion the decision was taken on as a precondition, so a stale view (the index not yet
showing our last write, a second replica during a Lease hand-over) gets 409 and does nothing. Then the
request is made (in a worker thread: the event loop never waits on a receiver) and its outcome written.
An operator killed between the two finds a claimed attempt and goes on from it after
``nextAttemptAt``: the count continues, never restarts. Such a retry may deliver a second time what
the lost attempt had delivered; the webhook's ``webhook-id`` (the same on every attempt) and the
e-mail's ``Message-ID`` let the receiver drop it.

Which phases: the webhook announces Complete, Failed and Cancelled (a system receiving it tracks every
job to its end); the e-mail Complete and Failed only (a person who cancelled a job knows). A failure
is recorded (``state: Failed``, ``lastError``), shown (a Warning event on the SharpJob) and counted,
and never changes the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from sharpml.contract import GROUP, PLURAL, TERMINAL, VERSION, Phase
from sharpml.contract.status import now_rfc3339
from sharpml_operator import mail, metrics, notice, webhook
from sharpml_operator.cleanup import post_event
from sharpml_operator.settings import NotifySettings

log = logging.getLogger("sharpml.operator")

WEBHOOK, EMAIL = "webhook", "email"
#: The terminal phases each channel announces.
ANNOUNCES = {
    WEBHOOK: frozenset({Phase.COMPLETE, Phase.FAILED, Phase.CANCELLED}),
    EMAIL: frozenset({Phase.COMPLETE, Phase.FAILED}),
}
EVENT_NAMES = {WEBHOOK: "Webhook", EMAIL: "Email"}
#: Requests in flight at once (each in a worker thread).
MAX_IN_FLIGHT = 8


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(stamp: Any) -> float:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def target(spec: Mapping[str, Any], channel: str) -> str | None:
    """Where ``channel`` goes for this job (``spec.notify``), or None."""
    notify = spec.get("notify") or {}
    return notify.get("webhookURL") if channel == WEBHOOK else notify.get("email")


def pending_channels(obj: Mapping[str, Any]) -> list[str]:
    """The channels of a SharpJob that still have to announce its terminal phase (none: not terminal)."""
    status = obj.get("status") or {}
    phase = Phase.of(status)
    if not status.get("phase") or phase not in TERMINAL:
        return []
    done = status.get("notifications") or {}
    out = []
    for channel in (WEBHOOK, EMAIL):
        entry = done.get(channel) or {}
        if phase not in ANNOUNCES[channel] or not target(obj.get("spec") or {}, channel):
            continue
        if entry.get("for") == str(phase) and entry.get("state") in ("Sent", "Failed"):
            continue
        out.append(channel)
    return out


@dataclass(frozen=True)
class Decision:
    """What to do now for one channel: ``send`` attempt ``attempt``, ``wait`` until ``at``, ``give_up``
    (the claimed last attempt's outcome was lost), or ``done``."""

    action: str
    attempt: int = 0
    at: float = 0.0


def decide(entry: Mapping[str, Any] | None, phase: Phase, now: float, max_attempts: int) -> Decision:
    """The next step for a channel whose status entry is ``entry``, the job being in ``phase``."""
    entry = entry or {}
    if entry.get("for") != str(phase):  # nothing yet for this transition
        return Decision("send", 1)
    if entry.get("state") in ("Sent", "Failed"):
        return Decision("done")
    attempts = int(entry.get("attempts") or 0)
    due = _epoch(entry.get("nextAttemptAt")) if entry.get("nextAttemptAt") else 0.0
    if now < due:
        return Decision("wait", attempts, due)
    if attempts >= max_attempts:
        return Decision("give_up", attempts)
    return Decision("send", attempts + 1)


class Stale(Exception):
    """The job changed since it was looked at (409) or is gone (404): look again next round."""


def _patch(obj: Mapping[str, Any], channel: str, entry: dict[str, Any], *, expect_version: bool) -> None:
    meta = obj["metadata"]
    body: dict[str, Any] = {"status": {"notifications": {channel: entry}}}
    if expect_version:
        body["metadata"] = {"resourceVersion": meta["resourceVersion"]}
    try:
        kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
            GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body
        )
    except ApiException as exc:
        if exc.status in (404, 409):
            raise Stale(f"{meta['namespace']}/{meta['name']}: {exc.status}") from None
        raise


@dataclass
class _Ref:
    """What an event needs to name the SharpJob."""

    namespace: str
    name: str
    uid: str


class Notifier:
    """Sends what :func:`pending_channels` finds, one request per (job, channel) at a time."""

    def __init__(self, settings: NotifySettings) -> None:
        self.settings = settings
        self._in_flight: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_IN_FLIGHT)

    def round(self, objs: list[Mapping[str, Any]]) -> None:
        """Start work on every (job, channel) that is due and not already being worked on."""
        now = time.time()
        for obj in objs:
            phase = Phase.of(obj.get("status"))
            for channel in pending_channels(obj):
                key = (obj["metadata"]["uid"], channel)
                if key in self._in_flight:
                    continue
                entry = (obj["status"].get("notifications") or {}).get(channel)
                if decide(entry, phase, now, self.settings.attempts).action == "wait":
                    continue
                self._in_flight.add(key)
                task = asyncio.get_running_loop().create_task(self._work(obj, channel, key))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _work(self, obj: Mapping[str, Any], channel: str, key: tuple[str, str]) -> None:
        try:
            async with self._slots:
                await asyncio.to_thread(self.step, obj, channel)
        except Stale as exc:
            log.debug("notification %s: %s; next round", channel, exc)
        except Exception:  # an apiserver outage must not end notifications for good
            log.exception("notification %s of %s failed", channel, obj["metadata"].get("name"))
        finally:
            self._in_flight.discard(key)

    def step(self, obj: Mapping[str, Any], channel: str, now: float | None = None) -> str:
        """One step for one channel of one job (blocking): claim, attempt, record. Returns the action."""
        now = time.time() if now is None else now
        meta, status = obj["metadata"], obj.get("status") or {}
        phase = Phase.of(status)
        entry = dict((status.get("notifications") or {}).get(channel) or {})
        decision = decide(entry, phase, now, self.settings.attempts)
        msg_id = webhook.message_id(meta["uid"], str(phase))
        if decision.action in ("done", "wait"):
            return decision.action
        if decision.action == "give_up":
            error = "the outcome of the last attempt was lost (operator restart)"
            result = {"state": "Failed", "nextAttemptAt": None, "lastError": entry.get("lastError") or error}
            _patch(obj, channel, result, expect_version=True)
            self._finished(obj, channel, False, decision.attempt, result["lastError"])
            return "give_up"
        claim = {
            "for": str(phase),
            "state": "Pending",
            "attempts": decision.attempt,
            "at": _stamp(now),
            "nextAttemptAt": _stamp(now + self.settings.backoff(decision.attempt)),
            "id": msg_id,
        }
        _patch(obj, channel, claim, expect_version=True)  # Stale: someone else acted, or our view is old
        try:
            self._send(obj, channel, msg_id, now)
        except (webhook.WebhookError, mail.MailError) as exc:
            error = str(exc)[:1000]
            last = exc.final or decision.attempt >= self.settings.attempts
            if last:
                result = {"state": "Failed", "nextAttemptAt": None, "lastError": error}
            else:
                result = {"lastError": error}  # the claim's nextAttemptAt is the backoff
            _patch(obj, channel, result, expect_version=False)
            if last:
                self._finished(obj, channel, False, decision.attempt, error)
            else:
                post_event(
                    _ref(meta),
                    f"{EVENT_NAMES[channel]}Retry",
                    f"{channel} attempt {decision.attempt} of {self.settings.attempts} failed: {error}; "
                    f"next attempt at {claim['nextAttemptAt']}",
                    warning=True,
                )
                log.info("%s/%s: %s attempt %d failed: %s", meta["namespace"], meta["name"], channel,
                         decision.attempt, error)  # fmt: skip
            return "failed"
        result = {"state": "Sent", "at": _stamp(time.time()), "nextAttemptAt": None, "lastError": None}
        _patch(obj, channel, result, expect_version=False)
        self._finished(obj, channel, True, decision.attempt, "")
        return "sent"

    def _send(self, obj: Mapping[str, Any], channel: str, msg_id: str, now: float) -> None:
        s = self.settings
        the_notice = notice.build(obj, s.links, s.public_url, now)
        to = target(obj.get("spec") or {}, channel) or ""
        if channel == WEBHOOK:
            if s.webhook_key is None:
                raise webhook.WebhookError(
                    "SHARPML_WEBHOOK_SECRET is not set: webhooks cannot be signed", final=True
                )
            body = the_notice.payload(now_rfc3339())
            webhook.post(
                to,
                body,
                webhook.headers(s.webhook_key, msg_id, body),
                s.allowed_hosts,
                s.webhook_timeout_seconds,
            )
        else:
            if s.smtp is None:
                raise mail.MailError("SHARPML_SMTP_HOST is not set: e-mails cannot be sent", final=True)
            mail.send(mail.build(the_notice, s.smtp.sender, to, msg_id), s.smtp)

    def _finished(self, obj: Mapping[str, Any], channel: str, sent: bool, attempts: int, error: str) -> None:
        meta = obj["metadata"]
        metrics.NOTIFICATIONS.labels(channel=channel, result="sent" if sent else "failed").inc()
        name = EVENT_NAMES[channel]
        phase = Phase.of(obj.get("status"))
        if sent:
            message = f"{channel} announcing {phase} delivered (attempt {attempts})"
        else:
            message = f"{channel} announcing {phase} failed after {attempts} attempt(s): {error}"
        post_event(_ref(meta), f"{name}{'Sent' if sent else 'Failed'}", message, warning=not sent)
        log.info("%s/%s: %s", meta["namespace"], meta["name"], message)


def _ref(meta: Mapping[str, Any]) -> _Ref:
    return _Ref(meta["namespace"], meta["name"], meta["uid"])


def index_entry(body: Mapping[str, Any]) -> dict[str, Any]:
    """The ``notifying_jobs`` index's value of a SharpJob: a plain copy of what :class:`Notifier` reads,
    only while it has something to send."""
    if not pending_channels(body):
        return {}
    meta = body["metadata"]
    obj = {
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")},
        "spec": {"notify": dict((body.get("spec") or {}).get("notify") or {})},
        "status": dict(body.get("status") or {}),
    }
    return {meta["uid"]: obj}


async def run(index: kopf.Index, settings: NotifySettings, interval: float) -> None:
    """Every ``interval`` seconds, start what is due (:meth:`Notifier.round`)."""
    notifier = Notifier(settings)
    while True:
        await asyncio.sleep(interval)
        try:
            notifier.round([obj for store in list(index.values()) for obj in store])
        except Exception:
            log.exception("notification round failed")
