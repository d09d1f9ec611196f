"""Structure from motion: the sandboxed COLMAP pod on an SfM node, from Queued to Reconstructed.

The pod is named after the job's uid (``sfm-<uid>``), so creating it twice answers 409 and the
existing pod is adopted: an operator killed at any point never starts a second one. What the pod
reports (``progress.json``, ``result.json``, the preview splat) is read as untrusted input.

Slots are per SfM node (``nodes.py``): each new pod is pinned to the least loaded node with a free slot.
Between creating a pod and seeing it in the pod index, the chosen node is *reserved* here (what the
scheduler's cache calls an assumed pod), and choosing and reserving happen under one lock, so two jobs
started at the same moment by kopf's worker threads never take the same last slot of a node. A restarted
operator has no reservations and needs none: kopf fills the pod index before any handler runs.
"""

from __future__ import annotations

import threading
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from sharpml.contract import Phase, RecordError, SfmResult, count_gaussians, read_progress
from sharpml.contract.status import seconds_since
from sharpml.layout import JobDir
from sharpml_operator import jobfiles, metrics, pods
from sharpml_operator.job import Job
from sharpml_operator.nodes import Placement, placement, pod_node
from sharpml_operator.podspec import SFM_STAGE, pod_name, sfm_pod
from sharpml_operator.podstate import PodState, classify, is_active
from sharpml_operator.settings import SFM_NODE, Settings
from sharpml_operator.slots import occupied
from sharpml_operator.snapshot import Snapshot
from sharpml_operator.stages.base import Stage

#: Where each step of ``python -m sharpml.sfm`` sits inside this stage, from its progress reports.
#: ("retry": the fallback ladder's later attempts, reported as one step.)
STEP_SPAN = {
    "extract": (0.0, 0.3),
    "match": (0.3, 0.5),
    "map": (0.5, 0.85),
    "retry": (0.5, 0.85),
    "undistort": (0.85, 0.97),
}


class SfmStage(Stage):
    name = SFM_STAGE
    title = "structure from motion"
    waiting_for = "an SfM node"
    result = "the preview splat (colmap/preview.splat)"
    slot = SFM_NODE
    #: A job the operator has not looked at yet (Pending) keeps its place: a burst of new jobs can never
    #: take more than the free slots.
    waits_in = (Phase.QUEUED, Phase.PENDING)
    runs_in = Phase.RECONSTRUCTING
    done = Phase.RECONSTRUCTED
    share = (0, 30)
    started_stamp = "reconstructionStartedAt"
    done_stamp = "reconstructedAt"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: Job uid -> the node chosen for its pod, until the pod index shows the pod (see the module's doc).
        self._reserved: dict[str, str] = {}
        self._lock = threading.Lock()

    def started(self, job: Job, snap: Snapshot) -> bool:
        return snap.pod(self.name, job.uid) is not None

    def job_dir(self, job: Job) -> JobDir:
        return jobfiles.job_dir(self.settings.data_dir, job.spec.job_dir or "", job.name)

    # --- slots per SfM node -------------------------------------------------------------------------------

    def _prune(self, snap: Snapshot) -> None:
        """Forget reservations the pod index now shows (the pod's own node counts) or whose job left SfM."""
        here = {*self.waits_in, self.runs_in}
        phase = {j.uid: j.phase for j in snap.jobs}
        for uid in list(self._reserved):
            if snap.pod(self.name, uid) is not None or (uid in phase and phase[uid] not in here):
                del self._reserved[uid]

    def _placement(self, busy: set[str], snap: Snapshot) -> Placement:
        """Called with the lock held."""
        node_of: dict[str, str | None] = dict(self._reserved)
        for (stage, uid), store in list(snap.pods.items()):  # kopf's event loop updates the index meanwhile
            pod = next(iter(store), None)
            if stage == self.name and pod is not None:
                node_of[uid] = pod_node(pod)
        return placement(
            snap.sfm_nodes(), self.settings.tolerations, self.settings.node_concurrency, busy, node_of
        )

    def holders(self, snap: Snapshot) -> set[str]:
        with self._lock:
            self._prune(snap)
            return snap.active(self.name) | set(self._reserved)

    def free_slots(self, busy: set[str], snap: Snapshot) -> int:
        with self._lock:
            return self._placement(busy, snap).free

    def waiting_message(self, position: int, snap: Snapshot) -> str:
        with self._lock:
            busy = occupied(snap.jobs, snap.active(self.name) | set(self._reserved), self.runs_in)
            place = self._placement(busy, snap)
        if place.capacity == 0:
            return f"waiting: {place.why_none(self.settings.node_selector)}; position {position} in the queue"
        return (
            f"waiting for an SfM node: position {position} in the queue "
            f"({place.capacity} slot(s) on {len(place.load)} SfM node(s))"
        )

    def _reserve(self, job: Job, snap: Snapshot) -> str | None:
        """Choose the job's node and hold its slot (None: no node has one free now)."""
        with self._lock:
            self._prune(snap)
            if (node := self._reserved.get(job.uid)) is not None:
                return node  # created there already, not yet in the index (a 409 will adopt it)
            busy = occupied(snap.jobs, snap.active(self.name) | set(self._reserved), self.runs_in)
            place = self._placement(busy - {job.uid}, snap)
            node = place.choose()
            if node is not None:
                self._reserved[job.uid] = node
            else:
                job.patch.message(f"waiting: {place.why_none(self.settings.node_selector)}")
            return node

    def _release(self, uid: str) -> None:
        with self._lock:
            self._reserved.pop(uid, None)

    # --- start --------------------------------------------------------------------------------------------

    def start(self, job: Job, snap: Snapshot) -> None:
        """Create (or adopt) the job's SfM pod on a node with a free slot and mark the job Reconstructing.

        With no free slot on any node (the nodes changed since the queue admitted the job), the job waits.
        """
        try:
            directory = self.job_dir(job)
            jobfiles.prepare_output(directory)
        except (jobfiles.JobDirError, OSError) as exc:
            job.fail("JobDirMissing", f"cannot prepare the job's colmap/ directory: {exc}")
            return
        existing = snap.pod(self.name, job.uid)
        if existing is not None:
            created, node = False, pod_node(existing)  # ours already (a restart): adopt it where it is
        else:
            node = self._reserve(job, snap)
            if node is None:
                return
            try:
                created, node = self._create(job, node)
            except BaseException:
                self._release(job.uid)
                raise
            if created is None:
                return
        started = job.patch.stamp(self.started_stamp)
        waited = seconds_since(job.timestamps.get("queuedAt"))
        if created and waited is not None:
            metrics.STAGE_SECONDS.labels(stage="queue").observe(max(0.0, waited))
        job.patch.progress(self.share[0], "structure from motion starting")
        verb = "created" if created else "adopted"
        where = f" on node {node}" if node else ""
        if job.phase is not self.runs_in:
            job.enter(self.runs_in, "SfmStarted", f"SfM pod {pod_name(job.uid)} {verb}{where} at {started}")

    def _create(self, job: Job, node: str) -> tuple[bool | None, str | None]:
        """Create the pod pinned to ``node``: (True, node); adopted after a 409: (False, its node); refused
        (the job failed): (None, None)."""
        pods.ensure_network_policy(job.namespace, self.settings)
        manifest = sfm_pod(
            job_name=job.name,
            job_uid=job.uid,
            namespace=job.namespace,
            spec=job.spec,
            job_dir=job.spec.job_dir or "",
            settings=self.settings,
            node=node,
        )
        created = pods.create(job, manifest, "SfM pod")
        if created is None:
            self._release(job.uid)
            return None, None
        if created:
            return True, node
        # Ours already (a restart between creating it and recording it, the index not there yet): adopt it,
        # and count it on the node it really has.
        core = kubernetes.client.CoreV1Api()
        try:
            pod = core.read_namespaced_pod(pod_name(job.uid), job.namespace)
            there = pod_node(core.api_client.sanitize_for_serialization(pod))
        except ApiException:
            there = None
        with self._lock:
            if there is None:
                self._reserved.pop(job.uid, None)
            else:
                self._reserved[job.uid] = there
        return False, there

    # --- observe -----------------------------------------------------------------------------------------

    def observe(self, job: Job, snap: Snapshot) -> None:
        pod = snap.pod(self.name, job.uid)
        if pod is None:
            # Deleted by someone else, or not in the index yet: (re)create it; 409 means it is there.
            self.start(job, snap)
            return
        state = classify(pod, start_timeout=self.settings.start_timeout_seconds)
        directory = self.job_dir(job)
        if not state.finished:
            self._report_progress(job, directory, state)
            return
        sfm_seconds = seconds_since(job.timestamps.get(self.started_stamp))
        if sfm_seconds is not None:
            metrics.STAGE_SECONDS.labels(stage=self.name).observe(max(0.0, sfm_seconds))
        if state.state == "succeeded":
            self._succeeded(job, directory)
            return
        if is_active(pod):
            # Failed before it finished (unschedulable, image pull, start timeout): left alone, the pod would
            # hold the SfM node's queue slot until retention, and might still start for a failed job.
            self.stop(job, snap)
        self._failed(job, directory, state)

    def _report_progress(self, job: Job, directory: JobDir, state: PodState) -> None:
        if state.state == "starting":
            message, stage, percent = state.message, "structure from motion starting", self.share[0]
        else:
            rec = read_progress(directory.sfm_progress) or {}
            lo, hi = STEP_SPAN.get(rec.get("stage", ""), (0.0, 0.0))
            percent = self.percent(lo + (hi - lo) * float(rec.get("fraction", 0.0)))
            stage = f"structure from motion: {rec.get('stage', 'starting')}"
            message = rec.get("message") or state.message
        job.patch.progress(percent, stage)
        job.patch.message(message)

    def _succeeded(self, job: Job, directory: JobDir) -> None:
        try:
            result = SfmResult.read(directory.sfm_result)
        except (OSError, ValueError) as exc:
            job.fail("ResultMissing", f"the SfM pod succeeded but {directory.sfm_result}: {exc}")
            return
        job.patch["sfm"] = _summary(result)
        if not result.ok:  # exit 0 always means ok; guard against a result from another run
            job.fail("QualityGate", result.reason or "rejected by the quality gate")
            return
        try:
            splats = count_gaussians(directory.preview_splat)
        except (OSError, RecordError) as exc:
            job.fail("ResultMissing", f"preview splat {directory.preview_splat}: {exc}")
            return
        job.patch.stamp(self.done_stamp)
        job.patch.progress(self.share[1], "reconstructed")
        job.enter(
            self.done,
            "SfmSucceeded",
            f"{result.registered}/{result.total} photos placed, {result.points} points, "
            f"mean reprojection error {result.mean_reprojection_error} px; "
            f"preview splat of {splats} splats ready",
        )

    def _failed(self, job: Job, directory: JobDir, state: PodState) -> None:
        message = state.message
        try:
            result = SfmResult.read(directory.sfm_result)
        except (OSError, ValueError):
            result = None
        if result is not None and state.reason in ("QualityGate", "SfmFailed"):
            job.patch["sfm"] = _summary(result)
            if result.reason:
                message = result.reason if state.reason == "QualityGate" else f"{message}; {result.reason}"
        job.fail(state.reason, message)

    # --- stop --------------------------------------------------------------------------------------------

    def stop(self, job: Job, snap: Snapshot) -> bool:
        self._release(job.uid)
        return pods.delete(pod_name(job.uid), job.namespace)

    def stopped(self, job: Job, snap: Snapshot) -> bool:
        pod = snap.pod(self.name, job.uid)
        if pod is None:
            return True
        if not (pod.get("metadata") or {}).get("deletionTimestamp"):
            self.stop(job, snap)
        return False


def _summary(result: SfmResult) -> dict[str, Any]:
    sfm: dict[str, Any] = {
        "registeredImages": result.registered,
        "totalImages": result.total,
        "points": result.points,
    }
    if result.mean_reprojection_error is not None:
        sfm["meanReprojectionError"] = result.mean_reprojection_error
    return sfm
