"""kopf handlers: SharpJob -> Queued -> sandboxed SfM pod -> Reconstructed (or Failed / Cancelled).

Every step is idempotent and driven by what the cluster says now (level-triggered): the SharpJob's
status is the job's state, the SfM pod's name is derived from the job's uid, and the queue is
recomputed from kopf indexes of SharpJobs and SfM pods. An operator killed at any moment resumes
where it was: a pod that exists is adopted (creating it again answers 409), a job never gets a
second pod, and nothing is lost.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from sharpml.progress import read_progress
from sharpml.sfm import SfmResult
from sharpml.splat import count_gaussians
from sharpml_operator import GROUP, PLURAL, VERSION, jobfiles, metrics
from sharpml_operator.conditions import FINISHED_PHASES, now_rfc3339, phase_conditions
from sharpml_operator.podspec import (
    JOB_UID_LABEL,
    MANAGED_BY,
    SFM_STAGE,
    STAGE_LABEL,
    deny_all_policy,
    pod_name,
    sfm_pod,
)
from sharpml_operator.podstate import PodState, classify, is_active
from sharpml_operator.queue import QueuedJob, decide
from sharpml_operator.settings import Settings

RESOURCE = (GROUP, VERSION, PLURAL)
FINALIZER = "sharpml.com/cleanup"
CFG = Settings.from_env()
#: Share of the whole job's progress (percent) that structure from motion accounts for.
SFM_SHARE = 30
#: Where each SfM stage sits inside the SfM share (start, end), from sharpml.sfm's progress reports.
STAGE_SPAN = {"extract": (0.0, 0.3), "match": (0.3, 0.5), "map": (0.5, 0.85), "undistort": (0.85, 0.97)}
SFM_POD_LABELS = {STAGE_LABEL: SFM_STAGE, "app.kubernetes.io/managed-by": MANAGED_BY}
log = logging.getLogger("sharpml.operator")


# --- start-up -----------------------------------------------------------------------------------------


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="sharpml.com", key="last-handled-configuration"
    )
    settings.posting.loggers = False  # events are the job's story, posted explicitly below
    settings.posting.reporting_component = "sharpml-operator"  # the "From" column of kubectl describe
    # kopf logs every timer run ("Timer 'reconcile' succeeded"); transitions are logged below instead.
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.batching.error_delays = [1, 2, 5, 10, 30, 60]
    metrics.serve(CFG.metrics_port)
    log.info(
        "sharpml-operator: image=%s concurrency=%d data=%s node selector=%s",
        CFG.image,
        CFG.concurrency,
        CFG.data_dir,
        CFG.node_selector,
    )


def _core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api()


# --- indexes: the queue's view of the cluster ------------------------------------------------------------


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
    return {
        None: QueuedJob(
            uid=uid,
            namespace=namespace,
            name=name,
            phase=status.get("phase") or "",
            created=meta.get("creationTimestamp") or "",
            sequence=int(status.get("queueSequence") or first),
        )
    }


@kopf.index("pods", labels=SFM_POD_LABELS)
def sfm_pods(labels: Any, body: Any, **_: Any) -> dict[str, Any]:
    uid = labels.get(JOB_UID_LABEL)
    return {uid: dict(body)} if uid else {}


def _pod_of(uid: str, pods: kopf.Index) -> dict[str, Any] | None:
    return next(iter(pods.get(uid, [])), None)


def _active_pod_uids(pods: kopf.Index) -> set[str]:
    return {uid for uid, store in pods.items() if any(is_active(p) for p in store)}


# --- status helpers ----------------------------------------------------------------------------------------


def _transition(
    body: Any,
    patch: kopf.Patch,
    status: Any,
    meta: Any,
    phase: str,
    reason: str,
    message: str,
    *,
    warning: bool = False,
) -> None:
    """Move the job to ``phase``: phase, message, conditions, observedGeneration, and an event."""
    generation = meta.get("generation")
    patch.status["phase"] = phase
    patch.status["message"] = message[:1024]
    patch.status["observedGeneration"] = generation
    patch.status["conditions"] = phase_conditions(
        status.get("conditions"), phase, reason, message, generation
    )
    if phase != "Queued":
        patch.status["queuePosition"] = None
    if phase in FINISHED_PHASES:
        _stamp(patch, status, "finishedAt")
    kopf.event(body, type="Warning" if warning else "Normal", reason=reason, message=message[:1024])
    metrics.JOBS_BY_PHASE.observe(meta["uid"], phase)
    log.info("%s/%s: %s (%s) %s", meta["namespace"], meta["name"], phase, reason, message)


def _stamp(patch: kopf.Patch, status: Any, key: str) -> str:
    ts = dict(patch.status.get("timestamps") or status.get("timestamps") or {})
    ts.setdefault(key, now_rfc3339())
    patch.status["timestamps"] = ts
    return ts[key]


def _seconds_since(stamp: str | None) -> float | None:
    if not stamp:
        return None
    return (datetime.now(UTC) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def _fail(body: Any, patch: kopf.Patch, status: Any, meta: Any, reason: str, message: str) -> None:
    _transition(body, patch, status, meta, "Failed", reason, message, warning=True)
    metrics.FAILURES.labels(reason=reason).inc()


# --- create / resume: validate and queue -------------------------------------------------------------------


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
def enqueue(
    body: Any,
    spec: Any,
    status: Any,
    meta: Any,
    patch: kopf.Patch,
    sharpjob_queue: kopf.Index,
    sfm_pods: kopf.Index,
    **_: Any,
) -> None:
    """A new job is checked and queued; an existing one (operator restart) is left to the timers."""
    metrics.JOBS_BY_PHASE.observe(meta["uid"], status.get("phase") or "Pending")
    if status.get("phase"):
        return
    upload = (spec.get("source") or {}).get("upload")
    if not upload:
        _fail(
            body,
            patch,
            status,
            meta,
            "UnsupportedSource",
            "only uploaded photos (spec.source.upload) can be processed by this release",
        )
        return
    try:
        job = jobfiles.job_dir(CFG.data_dir, upload["jobDir"])
        jobfiles.check_ready(job)
    except (jobfiles.JobDirError, OSError) as exc:
        _fail(body, patch, status, meta, "JobDirMissing", str(exc))
        return
    _stamp(patch, status, "queuedAt")
    sequence = _FIRST_REVISION.get(meta["uid"]) or _revision(meta)
    patch.status["queueSequence"] = sequence
    if spec.get("cancel"):
        _transition(body, patch, status, meta, "Cancelled", "Cancelled", "cancelled before it started")
        return
    me = QueuedJob(
        meta["uid"], meta["namespace"], meta["name"], "Queued", meta["creationTimestamp"], sequence
    )
    jobs = [j for j in sharpjob_queue.get(None, []) if j.uid != me.uid] + [me]
    _transition(body, patch, status, meta, "Queued", "Queued", "waiting for the SfM node")
    _advance_queued(body, spec, {**status, **patch.status}, meta, patch, jobs, sfm_pods)


# --- the queue and the running pod: one timer per active job ----------------------------------------------


def _is_active_phase(status: Any, **_: Any) -> bool:
    return status.get("phase") in ("Queued", "Reconstructing")


@kopf.timer(*RESOURCE, interval=CFG.poll_seconds, when=_is_active_phase)
def reconcile(
    body: Any,
    spec: Any,
    status: Any,
    meta: Any,
    patch: kopf.Patch,
    sharpjob_queue: kopf.Index,
    sfm_pods: kopf.Index,
    **_: Any,
) -> None:
    """Level-triggered step of an active job: cancel it, admit it, watch its pod, or finish it.

    Cancellation is handled here rather than in a field handler so that only one task ever moves a
    job's phase (kopf runs timers concurrently with event handlers)."""
    if spec.get("cancel"):
        _cancel(body, status, meta, patch, sfm_pods)
        return
    if status.get("phase") == "Queued":
        _advance_queued(body, spec, status, meta, patch, list(sharpjob_queue.get(None, [])), sfm_pods)
    else:
        _watch_pod(body, spec, status, meta, patch, sfm_pods)


def _advance_queued(
    body: Any, spec: Any, status: Any, meta: Any, patch: kopf.Patch, jobs: list[QueuedJob], pods: kopf.Index
) -> None:
    uid = meta["uid"]
    active = _active_pod_uids(pods)
    decision = decide(uid, jobs, active, CFG.concurrency)
    if _pod_of(uid, pods) is not None or decision.admit:
        _start_sfm(body, spec, status, meta, patch)
        return
    if decision.position is not None and status.get("queuePosition") != decision.position:
        patch.status["queuePosition"] = decision.position
        patch.status["message"] = f"waiting for the SfM node: position {decision.position} in the queue"
        patch.status["progress"] = {"percent": 0, "stage": f"queued (position {decision.position})"}


def _start_sfm(body: Any, spec: Any, status: Any, meta: Any, patch: kopf.Patch) -> None:
    """Create (or adopt) the job's SfM pod and mark the job Reconstructing."""
    ns, uid = meta["namespace"], meta["uid"]
    job = jobfiles.job_dir(CFG.data_dir, spec["source"]["upload"]["jobDir"])
    try:
        jobfiles.prepare_output(job)
    except OSError as exc:
        _fail(body, patch, status, meta, "JobDirMissing", f"cannot prepare {job.colmap}: {exc}")
        return
    _ensure_network_policy(ns)
    manifest = sfm_pod(
        job_name=meta["name"],
        job_uid=uid,
        namespace=ns,
        spec=dict(spec),
        job_dir=spec["source"]["upload"]["jobDir"],
        settings=CFG,
    )
    try:
        _core().create_namespaced_pod(ns, manifest)
        metrics.PODS_CREATED.inc()
        created = True
    except ApiException as exc:
        if exc.status == 409:
            created = False  # ours already (a restart between creating it and recording it): adopt it
        elif exc.status in (400, 403, 422):
            _fail(body, patch, status, meta, "PodRejected", f"the SfM pod was refused: {_api_message(exc)}")
            return
        else:
            name = manifest["metadata"]["name"]
            raise kopf.TemporaryError(f"creating pod {name}: {exc.reason}", delay=2) from exc
    started = _stamp(patch, status, "reconstructionStartedAt")
    waited = _seconds_since((status.get("timestamps") or {}).get("queuedAt"))
    if created and waited is not None:
        metrics.STAGE_SECONDS.labels(stage="queue").observe(max(0.0, waited))
    patch.status["progress"] = {"percent": 0, "stage": "structure from motion starting"}
    verb = "created" if created else "adopted"
    _transition(
        body,
        patch,
        status,
        meta,
        "Reconstructing",
        "SfmStarted",
        f"SfM pod {manifest['metadata']['name']} {verb} at {started}",
    )


def _api_message(exc: ApiException) -> str:
    import json

    try:
        return json.loads(exc.body).get("message", exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)


_POLICY_NAMESPACES: set[str] = set()


def _ensure_network_policy(namespace: str) -> None:
    """The namespace's deny-all policy for sandboxed pods exists before the first SfM pod does."""
    if namespace in _POLICY_NAMESPACES:
        return
    try:
        kubernetes.client.NetworkingV1Api().create_namespaced_network_policy(
            namespace, deny_all_policy(namespace, CFG)
        )
    except ApiException as exc:
        if exc.status != 409:
            raise kopf.TemporaryError(f"creating the sandbox NetworkPolicy: {exc.reason}", delay=2) from exc
    _POLICY_NAMESPACES.add(namespace)


def _watch_pod(body: Any, spec: Any, status: Any, meta: Any, patch: kopf.Patch, pods: kopf.Index) -> None:
    uid = meta["uid"]
    pod = _pod_of(uid, pods)
    if pod is None:
        # Deleted by someone else, or not in the index yet: (re)create it; 409 means it is there.
        _start_sfm(body, spec, status, meta, patch)
        return
    state = classify(pod, start_timeout=CFG.start_timeout_seconds)
    job = jobfiles.job_dir(CFG.data_dir, spec["source"]["upload"]["jobDir"])
    if not state.finished:
        _report_progress(status, patch, job, state)
        return
    sfm_seconds = _seconds_since((status.get("timestamps") or {}).get("reconstructionStartedAt"))
    if sfm_seconds is not None:
        metrics.STAGE_SECONDS.labels(stage="sfm").observe(max(0.0, sfm_seconds))
    if state.state == "succeeded":
        _finish_success(body, status, meta, patch, job)
        return
    if is_active(pod):
        # Failed before it finished (unschedulable, image pull, start timeout): left alone, the pod would
        # hold the SfM node's queue slot until retention, and might still start for a failed job.
        _delete_pod(meta["namespace"], uid, pods)
    _finish_failure(body, status, meta, patch, job, state)


def _report_progress(status: Any, patch: kopf.Patch, job: Any, state: PodState) -> None:
    if state.state == "starting":
        message, stage, percent = state.message, "structure from motion starting", 0
    else:
        rec = read_progress(job.sfm_progress) or {}
        lo, hi = STAGE_SPAN.get(rec.get("stage", ""), (0.0, 0.0))
        fraction = lo + (hi - lo) * float(rec.get("fraction", 0.0))
        percent = min(SFM_SHARE - 1, round(SFM_SHARE * fraction))
        stage = f"structure from motion: {rec.get('stage', 'starting')}"
        message = rec.get("message") or state.message
    progress = {"percent": percent, "stage": stage[:256]}
    if status.get("progress") != progress:
        patch.status["progress"] = progress
    if status.get("message") != message:
        patch.status["message"] = message[:1024]


def _finish_success(body: Any, status: Any, meta: Any, patch: kopf.Patch, job: Any) -> None:
    try:
        result = SfmResult.read(job.sfm_result)
    except (OSError, ValueError, TypeError) as exc:
        _fail(
            body, patch, status, meta, "ResultMissing", f"the SfM pod succeeded but {job.sfm_result}: {exc}"
        )
        return
    _record_sfm(patch, result)
    if not result.ok:  # exit 0 always means ok; guard against a result from another run
        _fail(body, patch, status, meta, "QualityGate", result.reason or "rejected by the quality gate")
        return
    try:
        splats = count_gaussians(job.preview_splat)
    except (OSError, ValueError) as exc:
        _fail(body, patch, status, meta, "ResultMissing", f"preview splat {job.preview_splat}: {exc}")
        return
    _stamp(patch, status, "reconstructedAt")
    patch.status["progress"] = {"percent": SFM_SHARE, "stage": "reconstructed"}
    _transition(
        body,
        patch,
        status,
        meta,
        "Reconstructed",
        "SfmSucceeded",
        f"{result.registered}/{result.total} photos placed, {result.points} points, "
        f"mean reprojection error {result.mean_reprojection_error} px; "
        f"preview splat of {splats} splats ready",
    )


def _record_sfm(patch: kopf.Patch, result: SfmResult) -> None:
    sfm: dict[str, Any] = {
        "registeredImages": result.registered,
        "totalImages": result.total,
        "points": result.points,
    }
    if result.mean_reprojection_error is not None:
        sfm["meanReprojectionError"] = result.mean_reprojection_error
    patch.status["sfm"] = sfm


def _finish_failure(body: Any, status: Any, meta: Any, patch: kopf.Patch, job: Any, state: PodState) -> None:
    message = state.message
    try:
        result = SfmResult.read(job.sfm_result)
    except (OSError, ValueError, TypeError):
        result = None
    if result is not None and state.reason in ("QualityGate", "SfmFailed"):
        _record_sfm(patch, result)
        if result.reason:
            message = result.reason if state.reason == "QualityGate" else f"{message}; {result.reason}"
    _fail(body, patch, status, meta, state.reason, message)


# --- cancel and delete ----------------------------------------------------------------------------------


def _cancel(body: Any, status: Any, meta: Any, patch: kopf.Patch, pods: kopf.Index) -> None:
    stopped = _delete_pod(meta["namespace"], meta["uid"], pods)
    what = "its SfM pod is being stopped" if stopped else "before its SfM pod started"
    _transition(body, patch, status, meta, "Cancelled", "Cancelled", f"cancelled (spec.cancel); {what}")


def _delete_pod(namespace: str, uid: str, pods: kopf.Index | None) -> bool:
    try:
        _core().delete_namespaced_pod(pod_name(uid), namespace, grace_period_seconds=10)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise kopf.TemporaryError(f"deleting pod {pod_name(uid)}: {exc.reason}", delay=2) from exc


@kopf.on.delete(*RESOURCE)
def cleanup(body: Any, spec: Any, meta: Any, sfm_pods: kopf.Index, **_: Any) -> None:
    """Finalizer: stop the SfM pod, wait until it is gone, then delete the job's working files."""
    ns, uid = meta["namespace"], meta["uid"]
    pod = _pod_of(uid, sfm_pods)
    if pod is not None:
        if not pod.get("metadata", {}).get("deletionTimestamp"):
            _delete_pod(ns, uid, sfm_pods)
        raise kopf.TemporaryError(f"waiting for SfM pod {pod_name(uid)} to stop", delay=1)
    upload = (spec.get("source") or {}).get("upload")
    if upload:
        try:
            job = jobfiles.job_dir(CFG.data_dir, upload["jobDir"])
        except jobfiles.JobDirError:
            job = None
        if job is not None and jobfiles.remove(CFG.data_dir, job):
            kopf.event(
                body, type="Normal", reason="FilesDeleted", message=f"deleted working files {job.root}"
            )
            log.info("%s/%s: deleted %s", ns, meta["name"], job.root)
    metrics.JOBS_BY_PHASE.observe(uid, None)
    _FIRST_REVISION.pop(uid, None)


# --- retention -----------------------------------------------------------------------------------------


def _is_finished(status: Any, **_: Any) -> bool:
    return status.get("phase") in FINISHED_PHASES


# initial_delay: after a restart, let kopf's resume cycle for the object finish first. Deleting while it
# still patches the object can make kopf's finalizer removal (a resourceVersion-tested JSON patch) fail with
# no later event to retry on, which leaves the job stuck with its finalizer.
@kopf.timer(
    *RESOURCE,
    interval=CFG.retention_check_seconds,
    initial_delay=max(5.0, CFG.retention_check_seconds),
    when=_is_finished,
)
def retention(body: Any, spec: Any, status: Any, meta: Any, **_: Any) -> None:
    """Delete a finished job (and through the finalizer its files) spec.ttlSecondsAfterFinished after
    status.timestamps.finishedAt. State is only in the status, so restarts change nothing."""
    finished = (status.get("timestamps") or {}).get("finishedAt")
    ttl = spec.get("ttlSecondsAfterFinished", 86400)
    age = _seconds_since(finished)
    if age is None or age < ttl:
        return
    message = (
        f"retention: finished at {finished}, ttlSecondsAfterFinished={ttl}; deleting the job and its files"
    )
    kopf.event(body, type="Normal", reason="RetentionExpired", message=message)
    log.info("%s/%s: %s", meta["namespace"], meta["name"], message)
    try:
        kubernetes.client.CustomObjectsApi().delete_namespaced_custom_object(
            GROUP,
            VERSION,
            meta["namespace"],
            PLURAL,
            meta["name"],
            body=kubernetes.client.V1DeleteOptions(preconditions={"uid": meta["uid"]}),
        )
    except ApiException as exc:
        if exc.status not in (404, 409):
            raise
        return
    metrics.RETENTION_DELETIONS.inc()


# --- metrics mirror --------------------------------------------------------------------------------------


@kopf.on.event(*RESOURCE)
def observe_phase(type: str, uid: str, status: Any, **_: Any) -> None:
    metrics.JOBS_BY_PHASE.observe(uid, None if type == "DELETED" else (status.get("phase") or "Pending"))
