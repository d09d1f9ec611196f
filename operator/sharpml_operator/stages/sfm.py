"""Structure from motion: the sandboxed COLMAP pod on the SfM node, from Queued to Reconstructed.

The pod is named after the job's uid (``sfm-<uid>``), so creating it twice answers 409 and the
existing pod is adopted: an operator killed at any point never starts a second one. What the pod
reports (``progress.json``, ``result.json``, the preview splat) is read as untrusted input.
"""

from __future__ import annotations

import json
from typing import Any

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from sharpml.contract import Phase, RecordError, SfmResult, count_gaussians, read_progress
from sharpml.contract.status import seconds_since
from sharpml.layout import JobDir
from sharpml_operator import jobfiles, metrics
from sharpml_operator.job import Job
from sharpml_operator.podspec import SFM_STAGE, deny_all_policy, pod_name, sfm_pod
from sharpml_operator.podstate import PodState, classify, is_active
from sharpml_operator.settings import SFM_NODE, Settings
from sharpml_operator.snapshot import Snapshot
from sharpml_operator.stages.base import Stage

#: Where each step of ``python -m sharpml.sfm`` sits inside this stage, from its progress reports.
STEP_SPAN = {"extract": (0.0, 0.3), "match": (0.3, 0.5), "map": (0.5, 0.85), "undistort": (0.85, 0.97)}


def api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body).get("message", exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


class SfmStage(Stage):
    name = SFM_STAGE
    title = "structure from motion"
    waiting_for = "the SfM node"
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
        self._policy_namespaces: set[str] = set()

    def started(self, job: Job, snap: Snapshot) -> bool:
        return snap.pod(self.name, job.uid) is not None

    def job_dir(self, job: Job) -> JobDir:
        return jobfiles.job_dir(self.settings.data_dir, job.spec.job_dir or "", job.name)

    def holders(self, snap: Snapshot) -> set[str]:
        return snap.active(self.name)

    # --- start --------------------------------------------------------------------------------------------

    def start(self, job: Job, snap: Snapshot) -> None:
        """Create (or adopt) the job's SfM pod and mark the job Reconstructing."""
        try:
            directory = self.job_dir(job)
            jobfiles.prepare_output(directory)
        except (jobfiles.JobDirError, OSError) as exc:
            job.fail("JobDirMissing", f"cannot prepare the job's colmap/ directory: {exc}")
            return
        self._ensure_network_policy(job.namespace)
        manifest = sfm_pod(
            job_name=job.name,
            job_uid=job.uid,
            namespace=job.namespace,
            spec=job.spec,
            job_dir=job.spec.job_dir or "",
            settings=self.settings,
        )
        try:
            kubernetes.client.CoreV1Api().create_namespaced_pod(job.namespace, manifest)
            metrics.PODS_CREATED.labels(stage=self.name).inc()
            created = True
        except ApiException as exc:
            if exc.status == 409:
                created = False  # ours already (a restart between creating it and recording it): adopt it
            elif exc.status in (400, 403, 422):
                job.fail("PodRejected", f"the SfM pod was refused: {api_message(exc)}")
                return
            else:
                raise kopf.TemporaryError(f"creating pod {pod_name(job.uid)}: {exc.reason}", delay=2) from exc
        started = job.patch.stamp(self.started_stamp)
        waited = seconds_since(job.timestamps.get("queuedAt"))
        if created and waited is not None:
            metrics.STAGE_SECONDS.labels(stage="queue").observe(max(0.0, waited))
        job.patch.progress(self.share[0], "structure from motion starting")
        verb = "created" if created else "adopted"
        if job.phase is not self.runs_in:
            job.enter(self.runs_in, "SfmStarted", f"SfM pod {pod_name(job.uid)} {verb} at {started}")

    def _ensure_network_policy(self, namespace: str) -> None:
        """The namespace's deny-all policy for sandboxed pods exists before its first SfM pod does."""
        if namespace in self._policy_namespaces:
            return
        try:
            kubernetes.client.NetworkingV1Api().create_namespaced_network_policy(
                namespace, deny_all_policy(namespace, self.settings)
            )
        except ApiException as exc:
            if exc.status != 409:
                raise kopf.TemporaryError(
                    f"creating the sandbox NetworkPolicy: {exc.reason}", delay=2
                ) from exc
        self._policy_namespaces.add(namespace)

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
        name = pod_name(job.uid)
        try:
            kubernetes.client.CoreV1Api().delete_namespaced_pod(name, job.namespace, grace_period_seconds=10)
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise kopf.TemporaryError(f"deleting pod {name}: {exc.reason}", delay=2) from exc

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
