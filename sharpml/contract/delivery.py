"""What a finished job delivers and where: the artifact formats, their places on the data volume and in
S3, and the status fields that record the delivery and the notifications.

The Delivering stage (operator) writes the artifacts and ``status.outputs``; the API serves them only
through signed links (:mod:`sharpml.links`), never as a directory; the notifiers record each send in
``status.notifications``. This module is their shared vocabulary.

``status.outputs`` once Complete::

    source: trained | preview            # which splat was delivered
    gaussians: 123456
    deliveredAt: 2026-12-02T10:00:00Z
    expiresAt: 2027-01-01T10:00:00Z      # links are never signed beyond this (artifact retention)
    artifacts:                           # one per format, in ARTIFACTS' order
      - {format: splat, file: scene.splat, bytes: 3940000, sha256: "…", path: splats/<id>.splat,
         s3Key: "sharpml/artifacts/<id>/scene.splat"}   # s3Key once backed up
    backup: {state: Pending|Done|Failed, at: …, errors: 1, retryAt: …, lastError: "…"}   # with S3 only

``status.notifications`` (one entry per channel; ``for`` is the terminal phase it announced, so each
terminal transition is announced once, across operator restarts; ``attempts`` counts claimed attempts and
``nextAttemptAt`` is the backoff, so a restarted operator continues the count; the operator's
``notifier.py`` writes it)::

    webhook: {for: Complete, state: Sent|Failed|Pending, attempts: 2, at: …, nextAttemptAt: …,
              lastError: "…", id: "msg_…"}
    email:   {for: Complete, state: Sent, attempts: 1, at: …, id: "msg_…"}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The link scope of the viewer page (and, read-only, the job's status and events).
VIEW_SCOPE = "view"
#: Directory of delivered artifacts on the data volume (beside ``jobs/``), never served as a directory.
SPLATS_DIR = "splats"
#: Key prefix (below ``SHARPML_S3_PREFIX``) of artifact backups: ``artifacts/<id>/<file>``.
S3_ARTIFACTS = "artifacts"
#: Key prefix of the daily metadata archive: ``archive/jobs-YYYY-MM-DD.jsonl``.
S3_ARCHIVE = "archive"

NotificationState = Literal["Pending", "Sent", "Failed"]
CHANNELS = ("webhook", "email")


@dataclass(frozen=True)
class Artifact:
    """One delivered format."""

    format: str  # "splat"
    filename: str  # "scene.splat": the name in links and in Content-Disposition
    media_type: str
    description: str

    def local_name(self, job_id: str) -> str:
        """Its path relative to the data directory: ``splats/<id>.<format>``."""
        return f"{SPLATS_DIR}/{job_id}.{self.format}"

    def s3_name(self, job_id: str) -> str:
        """Its key relative to ``SHARPML_S3_PREFIX``."""
        return f"{S3_ARTIFACTS}/{job_id}/{self.filename}"


#: Every format a Complete job has, in the order links and ``status.outputs.artifacts`` list them.
#: No IANA type exists for any of them; these are the ones viewers and tools use.
ARTIFACTS: dict[str, Artifact] = {
    a.format: a
    for a in (
        Artifact(
            "splat", "scene.splat", "application/octet-stream", "antimatter15 .splat, 32 bytes per Gaussian"
        ),
        Artifact("ply", "scene.ply", "application/x-ply", "3D Gaussian Splatting PLY (Inria layout)"),
        Artifact("spz", "scene.spz", "application/x-spz", "Niantic SPZ, gzip-compressed, about 10x smaller"),
    )
}


def artifact_by_filename(filename: str) -> Artifact | None:
    return next((a for a in ARTIFACTS.values() if a.filename == filename), None)
