"""What outlives a SharpJob: delivered artifacts, the daily job metadata archive, and logs.

A SharpJob is deleted ``ttlSecondsAfterFinished`` after it finished (:mod:`sharpml_operator.cleanup`),
while its artifacts live ``SHARPML_ARTIFACT_RETENTION_DAYS``. So these sweeps never start from SharpJobs:
they read the ``splats/`` directory and the S3 listing, and date an artifact by its own time — the file's
modification time, which the Delivering stage sets to ``status.outputs.deliveredAt``, and the object's
LastModified (the upload, seconds later). ``expiresAt`` is ``deliveredAt`` plus the retention, so both
copies go at (or seconds after) the expiry the status promised; links are never signed beyond it.

- ``splats/<id>.<format>``: removed ``SHARPML_ARTIFACT_LOCAL_SECONDS`` after delivery once the same
  object (same size) is in S3, and at expiry in any case. Without S3 it stays until expiry.
  ``.<name>.part`` files (a delivery killed mid-copy) are removed after an hour; anything else in
  ``splats/`` is not ours and is left alone.
- S3 ``artifacts/<id>/<file>``: deleted at expiry.
- ``archive/jobs-YYYY-MM-DD.jsonl`` in S3: one JSON line per SharpJob (:func:`archive_record`), written
  once a day and at start-up when that day's is missing. The archive keeps what a job was (spec,
  status) and drops what could be a secret or is only bookkeeping: ``metadata.annotations`` (kubectl's and
  kopf's copies of the spec live there), ``managedFields``, ``status.kopf``, and the query, fragment and
  user-info of ``spec.notify.webhookURL`` (where receivers put tokens). The e-mail address is kept: it is
  what the job was sent to.
- ``logs/``: every file under it is removed ``SHARPML_LOG_RETENTION_DAYS`` after its last change.

All pure functions of a directory, a :class:`~sharpml.storage.Storage` and ``now``: the handlers' loop
(:mod:`sharpml_operator.handlers`) calls them in a thread.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sharpml.contract.delivery import ARTIFACTS, S3_ARCHIVE, S3_ARTIFACTS, SPLATS_DIR
from sharpml.layout import UnsafePathError, open_dir
from sharpml.storage import Storage, StoredObject

log = logging.getLogger("sharpml.operator")

#: A ``.part`` file this old belongs to no delivery in progress (one takes seconds).
PART_GRACE_SECONDS = 3600


@dataclass
class Swept:
    """What one sweep removed (names relative to the data directory, or object names)."""

    local: list[str] = field(default_factory=list)
    s3: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


def _artifact_name(entry: str) -> tuple[str, str] | None:
    """``(job id, format)`` of ``<id>.<format>``, or None for a name that is not an artifact."""
    stem, dot, fmt = entry.rpartition(".")
    if not dot or not stem or stem.startswith(".") or fmt not in ARTIFACTS:
        return None
    return stem, fmt


def backed_up(objects: Iterable[StoredObject]) -> dict[str, int]:
    """The artifact objects in S3: name → size."""
    return {o.name: o.size for o in objects if o.name.startswith(f"{S3_ARTIFACTS}/")}


def sweep_local(
    data_dir: Path,
    now: datetime,
    *,
    local_seconds: float,
    retention_seconds: float,
    in_s3: dict[str, int] | None,
) -> list[str]:
    """Remove local artifacts that expired, or that are backed up (``in_s3``: name → size; None: no S3)
    and older than ``local_seconds``; and stale ``.part`` files. Returns what was removed."""
    removed: list[str] = []
    root = data_dir / SPLATS_DIR
    if not root.is_dir():
        return removed
    with open_dir(root) as fd:
        for entry in sorted(os.listdir(fd)):
            try:
                st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            age = now.timestamp() - st.st_mtime
            parsed = _artifact_name(entry)
            if entry.startswith(".") and entry.endswith(".part"):
                due = age >= PART_GRACE_SECONDS
            elif parsed is None:
                continue
            else:
                job_id, fmt = parsed
                s3_name = ARTIFACTS[fmt].s3_name(job_id)
                copied = in_s3 is not None and in_s3.get(s3_name) == st.st_size
                due = age >= retention_seconds or (copied and age >= local_seconds)
            if due:
                try:
                    os.unlink(entry, dir_fd=fd)
                except FileNotFoundError:
                    continue
                removed.append(f"{SPLATS_DIR}/{entry}")
    return removed


def sweep_s3(
    storage: Storage, objects: Iterable[StoredObject], now: datetime, retention_seconds: float
) -> list[str]:
    """Delete the artifact objects older than the retention; returns their names."""
    deleted = []
    for o in objects:
        if (
            o.name.startswith(f"{S3_ARTIFACTS}/")
            and (now - o.last_modified).total_seconds() >= retention_seconds
        ):
            storage.delete(o.name)
            deleted.append(o.name)
    return deleted


def sweep_logs(data_dir: Path, now: datetime, retention_seconds: float) -> list[str]:
    """Remove the files under ``logs/`` unchanged for ``retention_seconds`` (links are removed, never
    followed); empty folders stay."""
    removed: list[str] = []
    root = data_dir / "logs"
    try:
        with open_dir(root):
            pass
    except (FileNotFoundError, UnsafePathError):
        return removed
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder, name)
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if now.timestamp() - st.st_mtime >= retention_seconds:
                path.unlink(missing_ok=True)
                removed.append(str(path.relative_to(data_dir)))
    return removed


# --- the job metadata archive -----------------------------------------------------------------------------


def archive_name(day: date) -> str:
    return f"{S3_ARCHIVE}/jobs-{day.isoformat()}.jsonl"


def _public_url(url: Any) -> Any:
    """A webhook URL without what may carry a token: user-info, query and fragment."""
    if not isinstance(url, str):
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def archive_record(obj: dict[str, Any]) -> dict[str, Any]:
    """One SharpJob as the archive keeps it (see the module's docstring for what is dropped)."""
    meta = obj.get("metadata") or {}
    spec = json.loads(json.dumps(obj.get("spec") or {}))
    notify = spec.get("notify")
    if isinstance(notify, dict) and "webhookURL" in notify:
        notify["webhookURL"] = _public_url(notify["webhookURL"])
    status = {k: v for k, v in (obj.get("status") or {}).items() if k != "kopf"}
    kept = ("name", "namespace", "uid", "creationTimestamp", "generation", "labels", "deletionTimestamp")
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {k: meta[k] for k in kept if k in meta},
        "spec": spec,
        "status": status,
    }


def archive_lines(jobs: Iterable[dict[str, Any]]) -> bytes:
    records = sorted(
        (archive_record(j) for j in jobs),
        key=lambda r: (r["metadata"].get("namespace", ""), r["metadata"].get("name", "")),
    )
    return b"".join(json.dumps(r, sort_keys=True, separators=(",", ":")).encode() + b"\n" for r in records)


def archive_if_missing(storage: Storage, day: date, jobs: Any) -> bool:
    """Write ``day``'s archive unless it exists; ``jobs`` is called only then. True when written."""
    name = archive_name(day)
    if storage.exists(name):
        return False
    storage.put_bytes(name, archive_lines(jobs()))
    log.info("archived the SharpJobs' metadata to %s", storage.key(name))
    return True


def today(now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(UTC).date()


def sweep(
    data_dir: Path,
    storage: Storage | None,
    list_jobs: Any,
    now: datetime,
    *,
    local_seconds: float,
    retention_seconds: float,
    log_retention_seconds: float,
) -> Swept:
    """One round: today's archive if missing, expired S3 artifacts, local artifacts, logs. An S3 failure
    skips the S3 parts (local copies are then only removed at expiry) and never the rest."""
    swept = Swept()
    in_s3: dict[str, int] | None = None
    if storage is not None:
        try:
            archive_if_missing(storage, today(now), list_jobs)
        except Exception:
            log.exception("the job metadata archive could not be written; trying again next round")
        try:
            objects = list(storage.list_objects(f"{S3_ARTIFACTS}/"))
            swept.s3 = sweep_s3(storage, objects, now, retention_seconds)
            in_s3 = backed_up(o for o in objects if o.name not in swept.s3)
        except Exception:
            log.exception("the S3 artifact sweep failed; local copies are kept until they expire")
    swept.local = sweep_local(
        data_dir, now, local_seconds=local_seconds, retention_seconds=retention_seconds, in_s3=in_s3
    )
    swept.logs = sweep_logs(data_dir, now, log_retention_seconds)
    for what, names in (("local artifact", swept.local), ("S3 artifact", swept.s3), ("log", swept.logs)):
        for name in names:
            log.info("retention: deleted %s %s", what, name)
    return swept
