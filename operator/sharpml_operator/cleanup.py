"""End of life: the finalizer (stop what runs, then delete the job's files) and retention.

Retention is one operator-wide loop over an index of finished jobs, not a kopf timer per job. A timer
is a daemon of its object, and kopf releases an object's finalizer only once all its daemons have
exited. A retention timer deleted its own SharpJob from inside its handler, so the deletion event was
often processed while that handler was still returning in its worker thread: kopf found the timer
"still exiting" and re-checked only after ``settings.background.cancellation_polling`` (60 s by
default), holding the job and its files for a minute (seen in the operator's log as "Timer
'retention' is still exiting. The next check is in 60 seconds", and as a test timing out at 30 s).
Deleting from outside the object's handlers makes retention what ``kubectl delete`` is. A user's delete
can still meet the job's reconcile timer mid-run; for that the polling is one second (handlers.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import kubernetes
from kubernetes.client.exceptions import ApiException

from sharpml.contract import API_VERSION, GROUP, KIND, MANAGED_BY, PLURAL, VERSION
from sharpml.contract.status import seconds_since
from sharpml_operator import jobfiles, metrics
from sharpml_operator.job import Job
from sharpml_operator.pipeline import Pipeline
from sharpml_operator.settings import Settings
from sharpml_operator.snapshot import Snapshot

log = logging.getLogger("sharpml.operator")


class StillRunning(Exception):
    """The finalizer must wait: work of the job is still stopping."""


def finalize(job: Job, snap: Snapshot, pipeline: Pipeline, settings: Settings) -> None:
    """Stop every stage's work, wait until it is gone, then delete the job's working files."""
    if not pipeline.stopped(job, snap):
        raise StillRunning(f"waiting for the work of {job.namespace}/{job.name} to stop")
    if job.spec.job_dir is None:
        return
    try:
        directory = jobfiles.job_dir(settings.data_dir, job.spec.job_dir, job.name)
    except jobfiles.JobDirError:
        return  # not jobs/<this job's name>: never a directory this job owns, nothing of ours to delete
    if jobfiles.remove(settings.data_dir, directory):
        job.event("FilesDeleted", f"deleted working files {directory.root}")
        log.info("%s/%s: deleted %s", job.namespace, job.name, directory.root)


@dataclass(frozen=True)
class Finished:
    """A finished SharpJob as retention sees it (from the ``finished_jobs`` index)."""

    namespace: str
    name: str
    uid: str
    finished_at: str | None
    ttl_seconds: int
    #: Deletion already started (metadata.deletionTimestamp): the finalizer is at work, do not delete again.
    deleting: bool = False

    def expired(self) -> bool:
        age = seconds_since(self.finished_at)
        return age is not None and age >= self.ttl_seconds


class JobRef(Protocol):
    namespace: str
    name: str
    uid: str


def post_event(job: JobRef, reason: str, message: str, *, warning: bool = False) -> None:
    """An event on a SharpJob from outside its kopf handlers (kopf.event needs a handler's context)."""
    now = datetime.now(UTC)
    kubernetes.client.CoreV1Api().create_namespaced_event(
        job.namespace,
        {
            "metadata": {"generateName": f"{job.name}.", "namespace": job.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "name": job.name,
                "namespace": job.namespace,
                "uid": job.uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": MANAGED_BY},
            "reportingComponent": MANAGED_BY,
            "reportingInstance": MANAGED_BY,
            "firstTimestamp": now.isoformat(),
            "lastTimestamp": now.isoformat(),
            "count": 1,
        },
    )


def expire(jobs: Iterable[Finished], event: Callable[[Finished, str, str], None] = post_event) -> list[str]:
    """Delete every expired job (its files go through the finalizer); returns the uids deleted.

    The delete is conditional on the uid, so a job re-created under the same name is never hit. The
    event is posted before the delete: the finalizer's ``FilesDeleted`` can only follow it (posted after,
    the two raced, and a loaded machine showed the files deleted before the retention that caused it).
    The counter moves once the delete has succeeded."""
    deleted = []
    api = kubernetes.client.CustomObjectsApi()
    for job in jobs:
        if job.deleting or not job.expired():
            continue
        message = (
            f"retention: finished at {job.finished_at}, ttlSecondsAfterFinished={job.ttl_seconds}; "
            "deleting the job and its files"
        )
        event(job, "RetentionExpired", message)
        try:
            api.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                job.namespace,
                PLURAL,
                job.name,
                body=kubernetes.client.V1DeleteOptions(preconditions={"uid": job.uid}),
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("retention of %s/%s failed: %s", job.namespace, job.name, exc.reason)
            continue
        metrics.RETENTION_DELETIONS.inc()
        deleted.append(job.uid)
        log.info("%s/%s: %s", job.namespace, job.name, message)
    return deleted
