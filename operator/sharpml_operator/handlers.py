"""The kopf handlers: thin. Each builds the job's view and hands it to the pipeline or the clean-up.

Every step is idempotent and driven by what the cluster says now (level-triggered): the SharpJob's
status is the job's state, stage pods are named after the job's uid, and the queues are recomputed
from kopf indexes of SharpJobs, stage pods and SfM nodes. An operator killed at any moment resumes where
it was.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import kopf

from sharpml.contract import (
    FINALIZER,
    GROUP,
    JOB_UID_LABEL,
    MANAGED_BY,
    PLURAL,
    STAGE_LABEL,
    TERMINAL,
    VERSION,
    JobSpec,
    Phase,
)
from sharpml.storage import Storage
from sharpml_operator import artifacts, cleanup, metrics, notifier, orphans, scope
from sharpml_operator.job import Job
from sharpml_operator.nodes import NodeView, matches_selector, problem
from sharpml_operator.pipeline import Pipeline
from sharpml_operator.settings import Settings
from sharpml_operator.slots import QueuedJob
from sharpml_operator.snapshot import Snapshot

RESOURCE = (GROUP, VERSION, PLURAL)
CFG = Settings.from_env()
PIPELINE = Pipeline(CFG)
log = logging.getLogger("sharpml.operator")
_TASKS: set[asyncio.Task[None]] = set()  # background tasks, referenced so they are not collected


# --- start-up -----------------------------------------------------------------------------------------


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings,
    finished_jobs: kopf.Index,
    notifying_jobs: kopf.Index,
    sfm_nodes: kopf.Index,
    **_: Any,
) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.posting.loggers = False  # events are the job's story, posted explicitly (Job.enter)
    settings.posting.reporting_component = MANAGED_BY  # the "From" column of kubectl describe
    # kopf logs every timer run ("Timer 'reconcile' succeeded"); transitions are logged instead.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    # A job deleted while its reconcile timer runs keeps its finalizer until kopf sees the timer gone:
    # check every second, not kopf's default minute (see cleanup.py).
    settings.background.cancellation_polling = 1.0

    def nodes_ready() -> int:
        views = [v for store in list(sfm_nodes.values()) for v in store]
        return sum(problem(v, CFG.tolerations) is None for v in views)

    metrics.SFM_NODES_READY.set_function(nodes_ready)
    metrics.SFM_CAPACITY.set_function(lambda: nodes_ready() * CFG.node_concurrency)
    metrics.serve(CFG.metrics_port, CFG.data_dir)
    _TASKS.add(asyncio.get_running_loop().create_task(_retention(finished_jobs), name="sharpml-retention"))
    _TASKS.add(asyncio.get_running_loop().create_task(_orphans(), name="sharpml-orphans"))
    _TASKS.add(asyncio.get_running_loop().create_task(_artifacts(), name="sharpml-artifacts"))
    _TASKS.add(
        asyncio.get_running_loop().create_task(
            notifier.run(notifying_jobs, CFG.notify, CFG.poll_seconds), name="sharpml-notifier"
        )
    )
    log.info(
        "sharpml-operator: image=%s concurrency per SfM node=%d data=%s node selector=%s",
        CFG.image,
        CFG.node_concurrency,
        CFG.data_dir,
        CFG.node_selector,
    )


# --- indexes: the pipeline's view of the cluster -------------------------------------------------------


#: The smallest resourceVersion this process has seen per job uid. The first event of a new object carries
#: the etcd revision that created it, so this orders jobs created within the same second (creation
#: timestamps have one-second resolution). Persisted as status.queueSequence when the job is queued.
_FIRST_REVISION: dict[str, int] = {}


def _revision(meta: Any) -> int:
    try:
        return int(meta.get("resourceVersion") or 0)
    except ValueError:  # resourceVersion is opaque by contract; etcd-backed apiservers use revisions
        return 0


@kopf.index(*RESOURCE)
def sharpjob_queue(uid: str, namespace: str, name: str, meta: Any, status: Any, **_: Any) -> dict[None, Any]:
    first = _FIRST_REVISION.setdefault(uid, _revision(meta))
    job = QueuedJob(
        uid=uid,
        namespace=namespace,
        name=name,
        phase=Phase.of(status),
        created=meta.get("creationTimestamp") or "",
        sequence=int(status.get("queueSequence") or first),
    )
    return {None: job}


@kopf.index("pods", labels={STAGE_LABEL: kopf.PRESENT, "app.kubernetes.io/managed-by": MANAGED_BY})
def stage_pods(labels: Any, body: Any, **_: Any) -> dict[tuple[str, str], Any]:
    uid = labels.get(JOB_UID_LABEL)
    return {(labels[STAGE_LABEL], uid): dict(body)} if uid else {}


@kopf.index(*RESOURCE, when=lambda status, **_: Phase.of(status) in TERMINAL)
def finished_jobs(
    uid: str, namespace: str, name: str, meta: Any, spec: Any, status: Any, **_: Any
) -> dict[str, Any]:
    return {
        uid: cleanup.Finished(
            namespace=namespace,
            name=name,
            uid=uid,
            finished_at=(status.get("timestamps") or {}).get("finishedAt"),
            ttl_seconds=JobSpec.read(spec).ttl_seconds_after_finished,
            deleting=bool(meta.get("deletionTimestamp")),
        )
    }


@kopf.index(*RESOURCE, when=lambda status, **_: Phase.of(status) in TERMINAL)
def notifying_jobs(body: Any, **_: Any) -> dict[str, Any]:
    """Finished jobs with a notification still to send (notifier.py works on them)."""
    return notifier.index_entry(body)


@kopf.index("nodes")
def sfm_nodes(name: str, labels: Any, spec: Any, status: Any, **_: Any) -> dict[str, NodeView]:
    """The nodes the SfM node selector matches, ready or not (a job waiting for one says why none is)."""
    if not matches_selector(labels, CFG.node_selector):
        return {}
    return {name: NodeView.read(name, spec, status)}


def _snapshot(sharpjob_queue: kopf.Index, stage_pods: kopf.Index, sfm_nodes: kopf.Index) -> Snapshot:
    return Snapshot(list(sharpjob_queue.get(None, [])), stage_pods, sfm_nodes)


# --- create / resume: admission -----------------------------------------------------------------------------


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
def admit(
    body: Any,
    spec: Any,
    status: Any,
    meta: Any,
    patch: kopf.Patch,
    sharpjob_queue: kopf.Index,
    stage_pods: kopf.Index,
    sfm_nodes: kopf.Index,
    **_: Any,
) -> None:
    """A new job is checked and queued; an existing one (operator restart) is left to the timer."""
    metrics.JOBS_BY_PHASE.observe(meta["uid"], Phase.of(status))
    if status.get("phase"):
        return
    job = Job.from_kopf(body, spec, status, meta)
    sequence = _FIRST_REVISION.get(job.uid) or _revision(meta)
    try:
        PIPELINE.admit(job, _snapshot(sharpjob_queue, stage_pods, sfm_nodes), sequence)
    finally:
        patch.status.update(job.patch)


# --- every active job: one timer -------------------------------------------------------------------------


def _is_active(status: Any, **_: Any) -> bool:
    return bool(status.get("phase")) and Phase.of(status) not in TERMINAL


@kopf.timer(*RESOURCE, interval=CFG.poll_seconds, when=_is_active)
def reconcile(
    body: Any,
    spec: Any,
    status: Any,
    meta: Any,
    patch: kopf.Patch,
    sharpjob_queue: kopf.Index,
    stage_pods: kopf.Index,
    sfm_nodes: kopf.Index,
    **_: Any,
) -> None:
    """The level-triggered step of an active job (pipeline.Pipeline.step)."""
    job = Job.from_kopf(body, spec, status, meta)
    try:
        PIPELINE.step(job, _snapshot(sharpjob_queue, stage_pods, sfm_nodes))
    finally:
        patch.status.update(job.patch)


# --- delete: the finalizer ---------------------------------------------------------------------------------


@kopf.on.delete(*RESOURCE)
def finalize(
    body: Any,
    spec: Any,
    status: Any,
    meta: Any,
    sharpjob_queue: kopf.Index,
    stage_pods: kopf.Index,
    sfm_nodes: kopf.Index,
    **_: Any,
) -> None:
    """Stop what runs for the job, wait until it is gone, then delete its working files."""
    job = Job.from_kopf(body, spec, status, meta)
    try:
        cleanup.finalize(job, _snapshot(sharpjob_queue, stage_pods, sfm_nodes), PIPELINE, CFG)
    except cleanup.StillRunning as exc:
        raise kopf.TemporaryError(str(exc), delay=1) from None
    metrics.JOBS_BY_PHASE.observe(job.uid, None)
    _FIRST_REVISION.pop(job.uid, None)


# --- retention: one loop for every finished job ------------------------------------------------------------


async def _retention(finished_jobs: kopf.Index) -> None:
    """Every SHARPML_RETENTION_CHECK_SECONDS, delete the finished jobs whose TTL has passed. A job this
    loop deleted is not deleted again while the index has not yet seen its deletionTimestamp."""
    deleted: set[str] = set()
    while True:
        await asyncio.sleep(CFG.retention_check_seconds)
        known = {uid: f for uid, store in list(finished_jobs.items()) for f in store}
        deleted &= set(known)  # forget jobs that are gone
        due = [f for uid, f in known.items() if uid not in deleted and not f.deleting and f.expired()]
        if due:
            try:
                deleted |= set(await asyncio.to_thread(cleanup.expire, due))
            except Exception:  # an apiserver outage must not end retention for good
                log.exception("retention check failed")


# --- job directories without a SharpJob: at start-up, then periodically ------------------------------------


async def _orphans() -> None:
    """Sweep job directories no SharpJob owns (:mod:`sharpml_operator.orphans`) now and every
    SHARPML_ORPHAN_CHECK_SECONDS; an apiserver or volume failure skips one round, never the loop."""
    while True:
        try:
            await asyncio.to_thread(
                orphans.sweep,
                CFG.data_dir,
                CFG.orphan_grace_seconds,
                lambda: orphans.list_sharpjobs(scope.NAMESPACES),
            )
        except Exception:
            log.exception("sweep of job directories without a SharpJob failed")
        await asyncio.sleep(CFG.orphan_check_seconds)


# --- what outlives a job: artifacts, the metadata archive, logs --------------------------------------------


async def _artifacts() -> None:
    """At start-up and every SHARPML_RETENTION_CHECK_SECONDS: today's metadata archive if missing, and the
    artifact and log retention (:mod:`sharpml_operator.artifacts`); a failure skips one round."""
    storage: Storage | None = None
    while True:
        try:
            if storage is None and CFG.delivery.backs_up(CFG.s3):
                bucket = Storage.from_settings(CFG.s3)
                await asyncio.to_thread(bucket.ensure_bucket)
                storage = bucket
            d = CFG.delivery
            await asyncio.to_thread(
                artifacts.sweep,
                CFG.data_dir,
                storage,
                lambda: orphans.list_sharpjobs(scope.NAMESPACES),
                datetime.now(UTC),
                local_seconds=d.local_seconds,
                retention_seconds=d.retention_seconds,
                log_retention_seconds=d.log_retention_days * 86400,
            )
        except Exception:
            log.exception("artifact retention failed")
        await asyncio.sleep(CFG.retention_check_seconds)


# --- metrics mirror ---


@kopf.on.event(*RESOURCE)
def observe_phase(type: str, uid: str, status: Any, **_: Any) -> None:
    metrics.JOBS_BY_PHASE.observe(uid, None if type == "DELETED" else Phase.of(status))
    if type == "DELETED":
        metrics.RUN_LEDGER.forget(uid)
    else:
        metrics.RUN_LEDGER.observe(uid, dict(status.get("training") or {}), CFG.training.usd_per_second)
