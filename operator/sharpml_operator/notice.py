"""What a notification says about a finished job: one :class:`Notice`, the webhook's JSON and the
e-mail's text are both made from it.

The links are the ones the API honours (:mod:`sharpml.links`): the viewer page and, for a job with
delivered artifacts (``status.outputs.artifacts``), one per file, signed with the first of
``SHARPML_LINK_KEYS`` below ``SHARPML_PUBLIC_URL``, never valid past ``status.outputs.expiresAt``. Without
keys or a public URL a notification carries no links (it still says what happened).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sharpml import links
from sharpml.contract import Phase
from sharpml.contract.delivery import ARTIFACTS, VIEW_SCOPE, artifact_by_filename

#: Standard Webhooks' ``type`` of each terminal phase's notification.
EVENT_TYPES = {
    Phase.COMPLETE: "sharpjob.completed",
    Phase.FAILED: "sharpjob.failed",
    Phase.CANCELLED: "sharpjob.cancelled",
}


@dataclass(frozen=True)
class Notice:
    job_id: str  # the SharpJob's name: the API's job id
    namespace: str
    uid: str
    phase: Phase
    reason: str
    message: str
    timestamps: dict[str, str]
    outputs: dict[str, Any]
    view_url: str | None = None
    artifact_urls: dict[str, str] = field(default_factory=dict)

    @property
    def event_type(self) -> str:
        return EVENT_TYPES[self.phase]

    def payload(self, now: str) -> bytes:
        """The webhook's body: ``{type, timestamp, data}`` as Standard Webhooks suggest, compact JSON."""
        data: dict[str, Any] = {
            "id": self.job_id,
            "namespace": self.namespace,
            "phase": str(self.phase),
            "reason": self.reason,
            "message": self.message,
            "timestamps": self.timestamps,
            "outputs": self.outputs,
            "links": {"view": self.view_url, "artifacts": self.artifact_urls} if self.view_url else None,
        }
        body = {"type": self.event_type, "timestamp": now, "data": data}
        return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def _reason(status: Mapping[str, Any], phase: Phase) -> str:
    wanted = "Ready" if phase is Phase.COMPLETE else "Failed"
    for cond in status.get("conditions") or []:
        if cond.get("type") == wanted and cond.get("reason"):
            return str(cond["reason"])
    return str(phase)


def _epoch(stamp: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def build(obj: Mapping[str, Any], link_settings: links.LinkSettings, public_url: str, now: float) -> Notice:
    """The notice of the SharpJob ``obj`` (a terminal one), its links minted now when they can be."""
    meta, status = obj["metadata"], obj.get("status") or {}
    phase = Phase.of(status)
    outputs = dict(status.get("outputs") or {})
    view_url, artifact_urls = None, {}
    if link_settings.enabled and public_url:
        not_after = _epoch(outputs["expiresAt"]) if outputs.get("expiresAt") else None
        exp = link_settings.expiry(now, not_after)
        name = meta["name"]
        view_url = links.url(public_url, name, VIEW_SCOPE, link_settings.keys, exp)
        for art in outputs.get("artifacts") or []:
            artifact = artifact_by_filename(str(art.get("file", ""))) or ARTIFACTS.get(str(art.get("format")))
            if artifact is not None:
                artifact_urls[artifact.filename] = links.url(
                    public_url, name, artifact.filename, link_settings.keys, exp
                )
    return Notice(
        job_id=meta["name"],
        namespace=meta["namespace"],
        uid=meta["uid"],
        phase=phase,
        reason=_reason(status, phase),
        message=str(status.get("message") or ""),
        timestamps=dict(status.get("timestamps") or {}),
        outputs=outputs,
        view_url=view_url,
        artifact_urls=artifact_urls,
    )
