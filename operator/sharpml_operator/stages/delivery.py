"""Delivering: Trained (or Reconstructed, when training does not apply) → Delivering → Complete.

The stage copies the job's result out of its working directory (which retention deletes after
``ttlSecondsAfterFinished``) into ``splats/<id>.<format>`` on the data volume, checks the copies, records
them in ``status.outputs`` (the shape is :mod:`sharpml.contract.delivery`'s), backs them up to S3 when
that is configured, and completes the job.

- **What is delivered.** A trained job: ``output/scene.splat``, ``output/point_cloud.ply`` and
  ``output/scene.spz`` (source ``trained``). A job whose training does not apply (``backend: none``): the
  SfM stage's ``colmap/preview.splat`` and ``colmap/preview.spz`` (source ``preview``): the preview is made
  from the sparse points and has no 3DGS PLY, and none is made up. The SPZ files are written by the pods
  that have numpy (the trainer, the SfM pod); the operator only checks them, without numpy
  (:class:`sharpml.contract.SpzCheck`: one whole gzip stream whose length matches its header). A job
  trained or reconstructed before the pods wrote SPZ is delivered without it.
- **Atomic and symlink-proof.** Each file is written to a hidden ``.<id>.<format>.<random>.part`` in
  ``splats/`` (created with ``O_EXCL|O_NOFOLLOW`` relative to the opened directory, like
  :mod:`sharpml.layout`), checked, flushed and renamed over the final name; the rename replaces whatever
  had that name, a symlink included, without following it. So a reader sees a whole artifact or none; an
  operator killed mid-copy leaves only a ``.part`` file, which the artifact sweep removes
  (:mod:`sharpml_operator.artifacts`).
- **Level-triggered.** Entering Delivering is one step; the next writes the artifacts, records them,
  backs them up and completes. Repeated after a crash it rewrites identical bytes (or finds them
  recorded) and uploads to the same keys, so nothing is ever delivered twice: ``Complete`` and its event
  happen once, when the phase moves.
- **Backup before Complete.** When S3 backup is on, ``Complete`` waits for it, so that a Complete job's
  status says where every copy is (``s3Key``). A transient S3 failure backs off (persisted in
  ``status.outputs.backup``, as the training stage does) and is tried again; S3 refusing, or failing for
  longer than SHARPML_ARTIFACT_BACKUP_TIMEOUT_SECONDS, gives the backup up (a ``BackupFailed`` warning):
  the job completes with its local copy, which then stays until the artifact expires. A finished job
  never fails for its backup.

The work is file copying and hashing: kopf runs this synchronous handler in a worker thread, off the
event loop, as it does every step.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sharpml.contract import Phase
from sharpml.contract.delivery import ARTIFACTS, SPLATS_DIR, Artifact
from sharpml.contract.records import (
    SPLAT_RECORD_BYTES,
    SplatFormatError,
    SpzCheck,
    check_splat_size,
    spz_max_bytes,
)
from sharpml.contract.status import now_rfc3339, seconds_since
from sharpml.layout import (
    TRAINED_PLY,
    TRAINED_SPLAT,
    TRAINED_SPZ,
    DataDir,
    JobDir,
    UnsafePathError,
    create_file,
    open_dir,
)
from sharpml.storage import Storage, StorageError
from sharpml_operator import jobfiles
from sharpml_operator.job import Job
from sharpml_operator.settings import Settings
from sharpml_operator.snapshot import Snapshot
from sharpml_operator.stages.base import Stage
from sharpml_operator.stages.training import result_limits

log = logging.getLogger("sharpml.operator")

DELIVERY = "delivery"
#: Backoff after a transient S3 failure: doubling from 2 s, at most a minute (the training stage's).
BACKOFF_SECONDS = (2, 4, 8, 16, 32, 60)
#: Temporary files of an artifact being written: ``.<id>.<format>.<random>.part``.
PART_SUFFIX = ".part"
#: A PLY header larger than this is not a 3DGS PLY.
MAX_PLY_HEADER = 64 * 1024
_CHUNK = 1024 * 1024


class DeliveryError(ValueError):
    """An artifact that must not be delivered (malformed, missing, not a regular file)."""


@dataclass(frozen=True)
class Delivered:
    """One artifact written to ``splats/``: what ``status.outputs.artifacts`` records."""

    artifact: Artifact
    path: str  # relative to the data directory
    size: int
    sha256: str
    gaussians: int

    def record(self) -> dict[str, Any]:
        a = self.artifact
        return {
            "format": a.format,
            "file": a.filename,
            "bytes": self.size,
            "sha256": self.sha256,
            "path": self.path,
        }


def artifact_sources(directory: JobDir, source: str) -> dict[str, Path]:
    """The files a job delivers, by format, in :data:`ARTIFACTS`' order."""
    if source == "trained":
        found = {"splat": directory.trained_splat, "ply": directory.trained_ply, "spz": directory.trained_spz}
    else:
        found = {"splat": directory.preview_splat, "spz": directory.preview_spz}
    if not os.path.lexists(found["spz"]):  # from a pod older than SPZ (a symlink is there, and refused)
        del found["spz"]
    return {fmt: found[fmt] for fmt in ARTIFACTS if fmt in found}


def ply_gaussians(header: bytes, size: int) -> int:
    """The vertex count of a binary little-endian PLY of float properties, checked against its size."""
    end = header.find(b"end_header\n")
    if end < 0:
        raise DeliveryError(f"PLY: no end_header in the first {MAX_PLY_HEADER} bytes")
    lines = header[:end].decode("ascii", "replace").splitlines()
    if not lines or lines[0] != "ply" or "format binary_little_endian 1.0" not in lines:
        raise DeliveryError("PLY: not a binary little-endian PLY")
    count, props = None, 0
    for line in lines:
        words = line.split()
        if words[:2] == ["element", "vertex"] and len(words) == 3 and words[2].isdigit():
            count = int(words[2])
        elif words[:1] == ["element"]:
            raise DeliveryError(f"PLY: unexpected element {words[1:2]}")
        elif words[:2] == ["property", "float"]:
            props += 1
        elif words[:1] == ["property"]:
            raise DeliveryError(f"PLY: property {' '.join(words[1:])}: only float properties are expected")
    if not count or not props:
        raise DeliveryError("PLY: no vertices")
    body = size - (end + len(b"end_header\n"))
    if body != count * props * 4:
        raise DeliveryError(
            f"PLY: {count} vertices of {props} floats need {count * props * 4} bytes, not {body}"
        )
    return count


def gaussians_in(fmt: str, head: bytes, size: int) -> int:
    """How many gaussians an artifact holds, from its size (splat) or header (PLY); malformed: an error.
    (SPZ is checked as it streams past: :class:`SpzCheck`.)"""
    if fmt == "splat":
        try:
            check_splat_size("splat", size)
        except SplatFormatError as exc:
            raise DeliveryError(str(exc)) from None
        return size // SPLAT_RECORD_BYTES
    if fmt == "ply":
        return ply_gaussians(head, size)
    raise DeliveryError(f"no check for the {fmt} format")


def write_artifact(
    data_dir: Path,
    job_id: str,
    artifact: Artifact,
    source: Path,
    max_bytes: int,
    max_gaussians: int | None = None,
) -> Delivered:
    """Copy ``source`` (never through a symlink, a regular file of at most ``max_bytes``) to
    ``splats/<id>.<format>`` atomically, hashing and checking it on the way (an SPZ whose header counts
    more than ``max_gaussians`` is refused before it is inflated)."""
    final = artifact.local_name(job_id)
    name = final.rsplit("/", 1)[1]
    if "/" in job_id or job_id.startswith(".") or not job_id:
        raise DeliveryError(f"job id {job_id!r}: not a plain file name")
    try:
        src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DeliveryError(f"{source.name}: a symlink; refusing it") from None
        if exc.errno == errno.ENOENT:
            raise DeliveryError(f"{source.name}: missing") from None
        raise
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            raise DeliveryError(f"{source.name}: not a regular file of at most {max_bytes} bytes")
        DataDir(data_dir).ensure()
        with open_dir(data_dir / SPLATS_DIR) as dir_fd:
            part = f".{name}.{secrets.token_hex(6)}{PART_SUFFIX}"
            out = create_file(dir_fd, part, 0o640)
            spz = SpzCheck(source.name, max_gaussians) if artifact.format == "spz" else None
            try:
                digest, size, head = hashlib.sha256(), 0, b""
                with os.fdopen(out, "wb", closefd=True) as fh:
                    while chunk := os.read(src, _CHUNK):
                        size += len(chunk)
                        if size > max_bytes:
                            raise DeliveryError(f"{source.name}: larger than {max_bytes} bytes")
                        if len(head) < MAX_PLY_HEADER:
                            head += chunk[: MAX_PLY_HEADER - len(head)]
                        digest.update(chunk)
                        if spz is not None:
                            spz.feed(chunk)
                        fh.write(chunk)
                    fh.flush()
                    os.fsync(fh.fileno())
                gaussians = spz.count() if spz is not None else gaussians_in(artifact.format, head, size)
                os.rename(part, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException as exc:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part, dir_fd=dir_fd)
                if isinstance(exc, SplatFormatError):
                    raise DeliveryError(str(exc)) from None
                raise
            os.fsync(dir_fd)
    finally:
        os.close(src)
    return Delivered(artifact, final, size, digest.hexdigest(), gaussians)


def expires_at(delivered_at: str, retention_seconds: float) -> str:
    then = datetime.fromisoformat(delivered_at.replace("Z", "+00:00"))
    return (then + timedelta(seconds=retention_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


class DeliveryStage(Stage):
    name = DELIVERY
    title = "delivery"
    waiting_for = "delivery"
    result = "the delivered artifacts (splats/)"
    slot = DELIVERY
    waits_in = (Phase.TRAINED, Phase.RECONSTRUCTED)
    runs_in = Phase.DELIVERING
    done = Phase.COMPLETE
    share = (95, 100)
    started_stamp = "deliveryStartedAt"
    done_stamp = "finishedAt"

    def __init__(self, settings: Settings, *, storage: Storage | None = None) -> None:
        self.settings = settings
        self._storage = storage

    @property
    def storage(self) -> Storage:
        """The bucket, created on first use (a failure is a backup failure of this step)."""
        if self._storage is None:
            storage = Storage.from_settings(self.settings.s3)
            storage.ensure_bucket()
            self._storage = storage
        return self._storage

    @property
    def backs_up(self) -> bool:
        return self._storage is not None or self.settings.delivery.backs_up(self.settings.s3)

    # --- the queue: delivery is cheap, every job is admitted at once ------------------------------------

    def holders(self, snap: Snapshot) -> set[str]:
        return set()

    def free_slots(self, busy: set[str], snap: Snapshot) -> int:
        return max(1, len(snap.jobs))

    def started(self, job: Job, snap: Snapshot) -> bool:
        """Delivery holds no resource: a job waiting for it never waits in a queue (nor for the index of
        SharpJobs to show its new phase)."""
        return True

    def stop(self, job: Job, snap: Snapshot) -> bool:
        return False  # nothing runs outside the step itself

    def stopped(self, job: Job, snap: Snapshot) -> bool:
        return True

    # --- start and observe -----------------------------------------------------------------------------

    def source(self, job: Job) -> str:
        """``trained`` for a job that went through training, else ``preview``."""
        phase = Phase.of(job.patch.current)
        return "trained" if phase is Phase.TRAINED or job.status.timestamps.get("trainedAt") else "preview"

    def start(self, job: Job, snap: Snapshot) -> None:
        source = self.source(job)
        job.patch["outputs"] = {"source": source}
        job.patch.stamp(self.started_stamp)
        job.patch.progress(self.share[0], "delivering")
        job.enter(self.runs_in, "Delivering", f"delivering the {source} splat")

    def observe(self, job: Job, snap: Snapshot) -> None:
        outputs = dict(job.patch.view().get("outputs") or {})
        backup = dict(outputs.get("backup") or {})
        if backup.get("retryAt") and (seconds_since(backup["retryAt"]) or 0) < 0:
            return  # backing off after an S3 error
        if not self._recorded(outputs):
            try:
                outputs = self.deliver(job, outputs.get("source") or self.source(job))
            except (DeliveryError, UnsafePathError) as exc:
                job.fail("DeliveryFailed", f"the result could not be delivered: {exc}")
                return
            job.patch["outputs"] = outputs
        if self.backs_up and not _backed_up(outputs):
            outputs = self.back_up(job, outputs)
            job.patch["outputs"] = outputs
            if (outputs.get("backup") or {}).get("state") == "Pending":
                return
        self.complete(job, outputs)

    def _recorded(self, outputs: dict[str, Any]) -> bool:
        """Artifacts recorded and still on the volume (a step repeated after a crash skips the copy)."""
        arts = outputs.get("artifacts") or []
        data = self.settings.data_dir
        return bool(arts) and all((data / a["path"]).is_file() or a.get("s3Key") for a in arts)

    def deliver(self, job: Job, source: str) -> dict[str, Any]:
        """Write the artifacts to ``splats/`` and return ``status.outputs`` describing them."""
        directory = jobfiles.job_dir(self.settings.data_dir, job.spec.job_dir or "", job.name)
        cap = job.spec.max_gaussians if source == "trained" else None
        delivered: list[Delivered] = []
        try:
            for fmt, path in artifact_sources(directory, source).items():
                limit, count = _max_bytes(fmt, cap), cap
                if fmt == "spz" and delivered:  # the .splat comes first (ARTIFACTS' order): SPZ matches it
                    count = delivered[0].gaussians
                    limit = min(limit, spz_max_bytes(count))
                art = write_artifact(self.settings.data_dir, job.name, ARTIFACTS[fmt], path, limit, count)
                delivered.append(art)
            counts = {d.gaussians for d in delivered}
            if len(counts) != 1:
                raise DeliveryError(f"the artifacts disagree on the number of gaussians: {sorted(counts)}")
            (gaussians,) = counts
            trained = job.status.training.get("gaussians")
            if source == "trained" and trained is not None and trained != gaussians:
                raise DeliveryError(f"{gaussians} gaussians delivered, {trained} recorded by training")
        except (DeliveryError, UnsafePathError):
            for d in delivered:  # a failed job keeps no half of a delivery
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.settings.data_dir / d.path)
            raise
        delivered_at = now_rfc3339()
        outputs = {
            "source": source,
            "gaussians": gaussians,
            "deliveredAt": delivered_at,
            "expiresAt": expires_at(delivered_at, self.settings.delivery.retention_seconds),
            "artifacts": [d.record() for d in delivered],
        }
        for d in delivered:  # the sweep reads the delivery time from the file: it agrees with the status
            stamp = datetime.fromisoformat(delivered_at.replace("Z", "+00:00")).timestamp()
            os.utime(self.settings.data_dir / d.path, (stamp, stamp), follow_symlinks=False)
        job.patch.progress(self.percent(0.5), "delivering: stored")
        log.info("%s/%s: delivered %s (%d gaussians)", job.namespace, job.name, source, gaussians)
        return outputs

    def back_up(self, job: Job, outputs: dict[str, Any]) -> dict[str, Any]:
        """Upload every artifact without an ``s3Key``; on failure back off, or give the backup up."""
        arts = [dict(a) for a in outputs["artifacts"]]
        backup = dict(outputs.get("backup") or {})
        try:
            for a in arts:
                if not a.get("s3Key"):
                    name = ARTIFACTS[a["format"]].s3_name(job.name)
                    self.storage.put_file(name, self.settings.data_dir / a["path"])
                    a["s3Key"] = self.storage.key(name)
        except StorageError as exc:
            waited = seconds_since(job.timestamps.get(self.started_stamp)) or 0.0
            if exc.retryable and waited < self.settings.delivery.backup_timeout_seconds:
                return {**outputs, "artifacts": arts, "backup": _back_off(job, backup, str(exc))}
            job.event(
                "BackupFailed", f"the S3 backup was given up ({exc}); the local copy is kept", warning=True
            )
            log.warning("%s/%s: backup given up: %s", job.namespace, job.name, exc)
            return {**outputs, "artifacts": arts, "backup": {"state": "Failed", "lastError": str(exc)[:512]}}
        return {**outputs, "artifacts": arts, "backup": {"state": "Done", "at": now_rfc3339()}}

    def complete(self, job: Job, outputs: dict[str, Any]) -> None:
        formats = ", ".join(a["format"] for a in outputs["artifacts"])
        where = " and backed up to S3" if (outputs.get("backup") or {}).get("state") == "Done" else ""
        job.patch.progress(100, "complete")
        job.enter(
            Phase.COMPLETE,
            "Complete",
            f"the {outputs['source']} splat is delivered ({formats}; {outputs['gaussians']} gaussians)"
            f"{where}; available until {outputs['expiresAt']}",
        )


def _backed_up(outputs: dict[str, Any]) -> bool:
    state = (outputs.get("backup") or {}).get("state")
    return state in ("Done", "Failed") or all(a.get("s3Key") for a in outputs.get("artifacts") or [])


def _back_off(job: Job, backup: dict[str, Any], why: str) -> dict[str, Any]:
    errors = int(backup.get("errors") or 0) + 1
    delay = BACKOFF_SECONDS[min(errors, len(BACKOFF_SECONDS)) - 1]
    retry_at = (datetime.now(UTC) + timedelta(seconds=delay)).strftime("%Y-%m-%dT%H:%M:%SZ")
    job.patch.message(f"backing the artifacts up to S3: {why}; trying again in {delay} s"[:1024])
    if errors == 1:
        job.event("BackupRetry", f"{why}; retrying with backoff", warning=True)
    log.warning("%s/%s: backup: %s (error %d, next try in %d s)", job.namespace, job.name, why, errors, delay)
    return {"state": "Pending", "errors": errors, "retryAt": retry_at, "lastError": why[:512]}


def _max_bytes(fmt: str, cap: int | None) -> int:
    """The largest artifact accepted: the training cap's bound for a trained job, else 4 GiB."""
    if cap is None:
        return 4 * 1024**3
    limits = result_limits(cap)
    return {"splat": limits[TRAINED_SPLAT], "ply": limits[TRAINED_PLY], "spz": limits[TRAINED_SPZ]}.get(
        fmt, 4 * 1024**3
    )
