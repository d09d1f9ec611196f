"""``spec.training.backend: cluster``: the trainer as a sandboxed pod on a node of one's own.

For people with their own GPU (or a CPU node and patience): no RunPod, no object storage. The pod is
the SfM pod's sandbox (no network, no service account token, Pod Security ``restricted``, read-only
root) on the training node (SHARPML_TRAINING_NODE_SELECTOR / _TOLERATIONS / _GPUS and resources). It
reads the SfM stage's ``colmap/`` read-only and writes only the job's ``training/`` directory; what it
wrote is untrusted and goes through the same checks as a RunPod worker's results before it is moved
into ``output/``.

Its name is ``train-<job uid>``: an operator killed at any point adopts the pod it created instead of
starting another, so a job is trained once. A failed pod fails the job (the trainer's exit code 6
carries its reason in ``result.json``); nothing is retried, since a crash on one's own node is rarely
cured by running the same thing again.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import TYPE_CHECKING

from sharpml.contract import RecordError, TrainResult, read_progress
from sharpml.layout import TRAIN_RESULT, TRAINED_PLY, TRAINED_SPLAT, TRAINED_SPZ, JobDir, make_dir, open_dir
from sharpml_operator import pods
from sharpml_operator.job import Job
from sharpml_operator.podspec import TRAINING_STAGE, training_pod, training_pod_name
from sharpml_operator.podstate import TRAINING_POD, classify, is_active
from sharpml_operator.settings import Settings
from sharpml_operator.snapshot import Snapshot

if TYPE_CHECKING:
    from sharpml_operator.stages.training import TrainingStage

log = logging.getLogger("sharpml.operator")
PROGRESS = "progress.json"
RESULT_FILES = (TRAIN_RESULT, TRAINED_SPLAT, TRAINED_PLY, TRAINED_SPZ)


class ClusterTraining:
    """The cluster backend of :class:`~sharpml_operator.stages.training.TrainingStage`."""

    def __init__(self, stage: TrainingStage, settings: Settings) -> None:
        self.stage = stage
        self.settings = settings

    def started(self, job: Job, snap: Snapshot) -> bool:
        return snap.pod(TRAINING_STAGE, job.uid) is not None

    def start(self, job: Job, snap: Snapshot) -> None:
        """Create (or adopt) the job's training pod and enter Training."""
        directory = self.stage.job_dir(job)
        try:
            with open_dir(
                directory.root
            ) as fd:  # the pod's only writable mount; a planted symlink is refused
                make_dir(fd, directory.training.name, exist_ok=True, mode=0o770)
        except OSError as exc:
            job.fail("JobDirMissing", f"cannot prepare the job's training/ directory: {exc}")
            return
        pods.ensure_network_policy(job.namespace, self.settings)
        manifest = training_pod(
            job_name=job.name,
            job_uid=job.uid,
            namespace=job.namespace,
            spec=job.spec,
            job_dir=job.spec.job_dir or "",
            settings=self.settings,
        )
        created = pods.create(job, manifest, "training pod")
        if created is None:
            return
        name = training_pod_name(job.uid)
        job.patch["training"] = {**job.status.training, "backend": "cluster", "attempt": 1, "pod": name}
        started = job.patch.stamp(self.stage.started_stamp)
        job.patch.progress(self.stage.share[0], "training: starting")
        if job.phase is not self.stage.runs_in:
            device = f"{self.settings.training.pod.gpus} GPU(s)" if self.settings.training.pod.gpus else "CPU"
            job.enter(
                self.stage.runs_in,
                "TrainingStarted",
                f"training pod {name} {'created' if created else 'adopted'} at {started} ({device}): "
                f"{job.spec.training_steps} steps, at most {job.spec.max_gaussians} gaussians",
            )

    def observe(self, job: Job, snap: Snapshot) -> None:
        directory = self.stage.job_dir(job)
        pod = snap.pod(TRAINING_STAGE, job.uid)
        if pod is None:
            if not job.status.training.get("pod"):
                self.start(job, snap)  # a crash before the pod was recorded: 409 adopts it if it is there
                return
            pod = pods.read(training_pod_name(job.uid), job.namespace)  # the index may lag behind
            if pod is None:
                self._lost(job, directory)
                return
        state = classify(pod, start_timeout=self.settings.start_timeout_seconds, kind=TRAINING_POD)
        if not state.finished:
            self._report_progress(job, directory, state.state == "running", state.message)
            return
        if state.state == "succeeded":
            self._succeeded(job, directory)
            return
        if is_active(pod):  # failed before it ran (unschedulable, no image): it must not hold the slot
            pods.delete(training_pod_name(job.uid), job.namespace)
        message = state.message
        if state.reason == "TrainingFailed":
            try:
                reason = TrainResult.read(directory.training / TRAIN_RESULT).reason
            except (OSError, ValueError, RecordError):
                reason = None
            message = f"{message}: {reason}" if reason else message
        job.fail(state.reason, message)

    def _succeeded(self, job: Job, directory: JobDir) -> None:
        """Accept the results in training/. An operator killed while moving them into output/ left some
        there: they are moved back first, so the job is accepted whole or not at all, never lost."""
        try:
            with open_dir(directory.root) as fd:
                make_dir(fd, directory.training.name, exist_ok=True, mode=0o770)
            for name in RESULT_FILES:
                if not (directory.training / name).exists() and (directory.output / name).is_file():
                    os.replace(directory.output / name, directory.training / name)
        except OSError as exc:
            job.fail("ResultMissing", f"the training pod finished but its results could not be read: {exc}")
            return
        t = dict(job.patch.view().get("training") or {})
        self.stage.accept(job, t, directory.training)
        shutil.rmtree(directory.training, ignore_errors=True)  # accepted (moved) or refused: nothing kept

    def _lost(self, job: Job, directory: JobDir) -> None:
        """The recorded pod is gone (deleted, evicted with its node, garbage-collected). Training is never
        started again behind the user's back: results it left are taken, else the job fails."""
        try:
            result = TrainResult.read(directory.training / TRAIN_RESULT)
        except (OSError, ValueError, RecordError):
            result = None
        if result is not None and result.ok:
            self._succeeded(job, directory)
        elif result is not None:
            job.fail("TrainingFailed", f"training failed: {result.reason}")
        else:
            job.fail(
                "PodLost",
                f"the training pod {training_pod_name(job.uid)} disappeared before it finished (deleted, or "
                "evicted with its node); training is not restarted: create the SharpJob again",
            )

    def _report_progress(self, job: Job, directory: JobDir, running: bool, message: str) -> None:
        """The trainer's progress.json is the record a RunPod worker reports: one reading for both."""
        rec = read_progress(directory.training / PROGRESS) if running else None
        self.stage.report_progress(job, rec)
        if rec is None or not rec.get("message"):
            job.patch.message(message)

    def stop(self, job: Job) -> bool:
        return pods.delete(training_pod_name(job.uid), job.namespace)

    def stopped(self, job: Job, snap: Snapshot) -> bool:
        pod = snap.pod(TRAINING_STAGE, job.uid)
        if pod is None:
            return True
        if not (pod.get("metadata") or {}).get("deletionTimestamp"):
            self.stop(job)
        return False
