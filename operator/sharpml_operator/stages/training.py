"""Training: Reconstructed → Training → Trained, on RunPod serverless exactly once, or in a cluster pod.

``spec.training.backend: cluster`` runs the trainer as a sandboxed pod on a node of one's own
(:mod:`sharpml_operator.stages.training_pod`); both backends' results go through :meth:`TrainingStage.accept`.
What follows is the RunPod backend.

The operator has network; the sandboxed SfM pod has none. So the operator packages the SfM scene from
the shared volume, uploads it to S3, and submits the RunPod job with presigned URLs only (GET for the
scene and the preview, PUT for the results and the claim): the worker holds no storage credentials.

**Exactly once.** RunPod has no idempotency key, may start a job twice, and an operator killed between
``/run`` and writing the RunPod id into the status cannot know whether its request arrived. So:

1. Entering Training writes ``status.training.requestId`` (``<job uid>-<attempt>``) before anything is
   submitted (the step ends there; kopf persists the status).
2. A later step submits ``/run`` when no RunPod id is recorded, and records the id it gets. After a
   crash in between it submits again, with the same request id.
3. The worker's first act is a conditional write of the request's claim object (``If-None-Match: *``):
   S3 lets exactly one writer win. The loser does no work and answers ``duplicate`` with the RunPod id
   of the winner, which the operator then follows.
4. Results are written under the request id's prefix only by the winner, and read from there.
5. Each RunPod run that ended is recorded once, by its RunPod id, in ``status.training.runs`` with
   the execution time RunPod reported: GPU seconds and cost are sums over that map, so a step repeated
   after a crash can never bill a run twice.

Failures: ``FAILED`` runs are retried (a new attempt, a new request id) up to SHARPML_TRAINING_RETRIES
times, then the job fails with the worker's error; ``TIMED_OUT`` and the stage's own deadline fail it;
429/5xx/connection errors from RunPod or S3 back off (persisted in the status) and never fail a job
before its deadline; a job RunPod no longer knows is looked for in S3, else retried.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import stat
import tarfile
import tempfile
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from sharpml.contract import Phase, RecordError, TrainResult, count_gaussians
from sharpml.contract.records import spz_max_bytes
from sharpml.contract.status import now_rfc3339, seconds_since
from sharpml.layout import TRAIN_RESULT, TRAINED_PLY, TRAINED_SPLAT, TRAINED_SPZ, JobDir
from sharpml.storage import Storage, StorageError
from sharpml_operator import jobfiles, metrics
from sharpml_operator.job import Job
from sharpml_operator.podspec import TRAINING_STAGE
from sharpml_operator.runpod_api import RunPod, RunPodRefused, RunPodUnavailable
from sharpml_operator.settings import GPU, Settings
from sharpml_operator.snapshot import Snapshot
from sharpml_operator.stages.base import Stage
from sharpml_operator.stages.training_pod import ClusterTraining

log = logging.getLogger("sharpml.operator")

#: Where each step the worker reports sits inside this stage (its progress_update records).
STEP_SPAN = {
    "download": (0.0, 0.05),
    "load": (0.05, 0.08),
    "train": (0.08, 0.9),
    "evaluate": (0.9, 0.95),
    "done": (0.95, 0.96),
    "upload": (0.96, 0.99),
}
#: Results are untrusted: the metrics record is small, the files are bounded by the gaussian cap.
MAX_RESULT_BYTES = 1024 * 1024
PLY_BYTES_PER_GAUSSIAN = 62 * 4  # 3DGS PLY: 62 float32 properties per gaussian
PLY_HEADER_BYTES = 64 * 1024
#: Backoff after an error talking to RunPod or S3: doubling from 2 s, at most a minute.
BACKOFF_SECONDS = (2, 4, 8, 16, 32, 60)
#: Presigned URLs outlive the attempt's deadline by this much (a worker uploading at the last second).
URL_GRACE_SECONDS = 600


class TrainingStage(Stage):
    name = TRAINING_STAGE
    title = "training"
    waiting_for = "a training slot"
    result = "the trained splat (output/scene.splat)"
    slot = GPU
    waits_in = (Phase.RECONSTRUCTED,)
    runs_in = Phase.TRAINING
    done = Phase.TRAINED
    share = (30, 95)
    started_stamp = "trainingStartedAt"
    done_stamp = "trainedAt"

    def __init__(self, settings: Settings, *, runpod: RunPod | None = None, storage: Storage | None = None):
        self.settings = settings
        self._runpod = runpod
        self._storage = storage
        self.cluster = ClusterTraining(self, settings)

    # --- which jobs, and the clients -------------------------------------------------------------------

    def backend(self, job: Job) -> str:
        """The job's backend: recorded when training started, else its spec, else the operator's default."""
        return (
            job.status.training.get("backend") or job.spec.training_backend or self.settings.training.backend
        )

    def applies(self, job: Job) -> bool:
        return self.backend(job) != "none"

    @property
    def runpod(self) -> RunPod:
        if self._runpod is None:
            t = self.settings.training
            self._runpod = RunPod(t.runpod_endpoint_id, t.runpod_api_key)
        return self._runpod

    @property
    def storage(self) -> Storage:
        """The bucket, created on first use (a failure leaves it to the next step)."""
        if self._storage is None:
            storage = Storage.from_settings(self.settings.s3)
            storage.ensure_bucket()
            self._storage = storage
        return self._storage

    def holders(self, snap: Snapshot) -> set[str]:
        # Training pods not finished (a cancelled one still stopping keeps its slot); RunPod runs hold no
        # resource of ours: a job holds its slot while it is Training.
        return snap.active(self.name)

    def started(self, job: Job, snap: Snapshot) -> bool:
        return self.cluster.started(job, snap)

    def free_slots(self, busy: set[str], snap: Snapshot) -> int:
        return max(0, self.settings.training.concurrency - len(busy))

    def job_dir(self, job: Job) -> JobDir:
        return jobfiles.job_dir(self.settings.data_dir, job.spec.job_dir or "", job.name)

    def key(self, job: Job, name: str) -> str:
        """The job's objects in S3: ``jobs/<uid>/scene.tar.gz``, ``jobs/<uid>/<request id>/...``."""
        return f"jobs/{job.uid}/{name}"

    # --- start ---------------------------------------------------------------------------------------

    def start(self, job: Job, snap: Snapshot) -> None:
        """Take a training slot: record the backend and the first request id, and stop there (the id
        must be in the status before anything is submitted)."""
        backend = self.backend(job)
        if backend == "cluster":
            self.cluster.start(job, snap)
            return
        if not (self.settings.training.runpod_endpoint_id and self.settings.training.runpod_api_key):
            job.fail(
                "BackendUnavailable",
                "training on RunPod is not configured (SHARPML_RUNPOD_ENDPOINT_ID, SHARPML_RUNPOD_API_KEY); "
                "set spec.training.backend: none to receive the preview splat",
            )
            return
        training = {
            "backend": backend,
            "attempt": 1,
            "requestId": f"{job.uid}-1",
            "gpuType": self.settings.training.gpu_type,
        }
        job.patch["training"] = {**job.status.training, **training}
        started = job.patch.stamp(self.started_stamp)
        job.patch.progress(self.share[0], "training: requested")
        if job.phase is not self.runs_in:
            job.enter(
                self.runs_in,
                "TrainingRequested",
                f"training on RunPod requested at {started}: request {training['requestId']}, "
                f"{job.spec.training_steps} steps, at most {job.spec.max_gaussians} gaussians",
            )

    # --- observe -------------------------------------------------------------------------------------

    def observe(self, job: Job, snap: Snapshot) -> None:
        if self.backend(job) == "cluster":
            self.cluster.observe(job, snap)
            return
        t = dict(job.patch.view().get("training") or {})
        retry_at = t.get("retryAt")
        if retry_at and (seconds_since(retry_at) or 0) < 0:
            return  # backing off after an error
        if self._past_deadline(job, t):
            return
        try:
            if not t.get("runpodJobId"):
                self._submit(job, t)
            else:
                self._follow(job, t)
        except (RunPodUnavailable, StorageError) as exc:
            if isinstance(exc, StorageError) and not exc.retryable:
                job.fail("StorageFailed", f"training storage refused a request: {exc}")
                return
            self._back_off(job, t, str(exc))
            return
        except RunPodRefused as exc:
            job.fail("BackendRefused", f"RunPod refused the training request: {exc}")
            return
        if t.get("errors") and job.phase is self.runs_in:
            t = dict(job.patch.view().get("training") or {})
            t.update(errors=0, retryAt=None)
            job.patch["training"] = t

    def _past_deadline(self, job: Job, t: dict[str, Any]) -> bool:
        """The attempt's deadline (SHARPML_TRAINING_TIMEOUT_SECONDS from its request) has passed."""
        started = t.get("attemptStartedAt") or job.timestamps.get(self.started_stamp)
        elapsed = seconds_since(started)
        limit = self.settings.training.timeout_seconds
        if elapsed is None or elapsed <= limit + 30:  # RunPod's own timeout should come first
            return False
        self.stop(job, Snapshot())
        job.fail("Timeout", f"training did not finish within {limit} s (SHARPML_TRAINING_TIMEOUT_SECONDS)")
        return True

    def _back_off(self, job: Job, t: dict[str, Any], why: str) -> None:
        errors = int(t.get("errors") or 0) + 1
        delay = BACKOFF_SECONDS[min(errors, len(BACKOFF_SECONDS)) - 1]
        retry_at = (datetime.now(UTC) + timedelta(seconds=delay)).strftime("%Y-%m-%dT%H:%M:%SZ")
        job.patch["training"] = {**t, "errors": errors, "retryAt": retry_at}
        job.patch.message(f"{why}; trying again in {delay} s")
        if errors == 1:
            job.event("BackendUnavailable", f"{why}; retrying with backoff", warning=True)
        log.warning("%s/%s: %s (error %d, next try in %d s)", job.namespace, job.name, why, errors, delay)

    # --- submit --------------------------------------------------------------------------------------

    def _submit(self, job: Job, t: dict[str, Any]) -> None:
        """Upload the scene (once per job) and submit the attempt's request; record the RunPod id."""
        request_id = t["requestId"]
        directory = self.job_dir(job)
        scene_key, preview_key = self.key(job, "scene.tar.gz"), self.key(job, "preview.splat")
        if not self.storage.exists(scene_key):
            self._upload_scene(directory, scene_key)
        if not self.storage.exists(preview_key) and directory.preview_splat.is_file():
            self.storage.put_file(preview_key, directory.preview_splat)
        remaining = self._remaining_seconds(job, t)
        ttl = remaining + URL_GRACE_SECONDS
        prefix = f"{request_id}/"
        job_input: dict[str, Any] = {
            "scene_url": self.storage.presign_get(scene_key, ttl),
            "upload": {
                "splat": self.storage.presign_put(self.key(job, prefix + TRAINED_SPLAT), ttl),
                "ply": self.storage.presign_put(self.key(job, prefix + TRAINED_PLY), ttl),
                "spz": self.storage.presign_put(self.key(job, prefix + TRAINED_SPZ), ttl),
                "result": self.storage.presign_put(self.key(job, prefix + TRAIN_RESULT), ttl),
            },
            "claim": {
                "request_id": request_id,
                "put": self.storage.presign_put(
                    self.key(job, prefix + "claim.json"), ttl, if_none_match=True
                ),
                "get": self.storage.presign_get(self.key(job, prefix + "claim.json"), ttl),
            },
            "options": {
                "steps": job.spec.training_steps,
                "max_gaussians": job.spec.max_gaussians,
                "max_image_size": job.spec.train_image_size,
            },
        }
        if self.storage.exists(preview_key):
            job_input["preview_url"] = self.storage.presign_get(preview_key, ttl)
        # ttl covers the queue, the run and then reading its status (RunPod forgets a job whose ttl has
        # passed, and its execution time with it): the stage's own deadline cancels a run that waits too long.
        runpod_id = self.runpod.run(job_input, execution_timeout_ms=remaining * 1000, ttl_ms=ttl * 1000)
        job.patch["training"] = {**t, "runpodJobId": runpod_id, "submittedAt": now_rfc3339()}
        job.patch.message(f"training request {request_id} submitted to RunPod as job {runpod_id}")
        job.event(
            "TrainingSubmitted", f"RunPod job {runpod_id} for request {request_id} (attempt {t['attempt']})"
        )
        log.info("%s/%s: RunPod job %s for request %s", job.namespace, job.name, runpod_id, request_id)

    def _remaining_seconds(self, job: Job, t: dict[str, Any]) -> int:
        started = t.get("attemptStartedAt") or job.timestamps.get(self.started_stamp)
        elapsed = seconds_since(started) or 0.0
        return max(10, int(self.settings.training.timeout_seconds - elapsed))

    def _upload_scene(self, directory: JobDir, key: str) -> None:
        """``images/`` and ``sparse/0/`` of the SfM scene as one tar.gz: what the worker unpacks."""
        scene = directory.scene
        if not (scene / "sparse" / "0").is_dir() or not (scene / "images").is_dir():
            raise StorageError(f"{scene}: no undistorted scene to train on", key=key, reason="not-found")
        with tempfile.TemporaryDirectory(prefix="sharpml-scene-") as tmp:
            archive = Path(tmp) / "scene.tar.gz"
            with tarfile.open(archive, "w:gz", compresslevel=1) as tar:  # JPEGs: gzip gains little
                for top in ("images", "sparse"):
                    tar.add(scene / top, arcname=top, filter=_plain_files)
            self.storage.put_file(key, archive)

    # --- follow --------------------------------------------------------------------------------------

    def _follow(self, job: Job, t: dict[str, Any]) -> None:
        runpod_id = t["runpodJobId"]
        record = self.runpod.status(runpod_id)
        if record is None:
            self._lost(job, t, runpod_id)
            return
        state = record["status"]
        if state == "IN_QUEUE":
            job.patch.progress(self.share[0], "training: waiting for a RunPod worker")
            job.patch.message(f"RunPod job {runpod_id} is waiting for a GPU worker")
            return
        if state == "IN_PROGRESS":
            self.report_progress(job, record.get("output"))
            return
        t = self._record_run(job, t, runpod_id, record)
        output = record.get("output")
        if state == "COMPLETED" and isinstance(output, dict) and output.get("duplicate"):
            self._duplicate(job, t, runpod_id, output)
        elif state == "COMPLETED":
            self._collect(job, t)
        elif state == "FAILED":
            self._failed(job, t, _error_text(record))
        elif state == "TIMED_OUT":
            job.fail("Timeout", f"RunPod stopped training job {runpod_id} at its execution timeout")
        else:  # CANCELLED, not by us (a cancelled SharpJob is not followed any more)
            job.fail("TrainingCancelled", f"RunPod job {runpod_id} was cancelled outside SharpML")

    def report_progress(self, job: Job, output: Any) -> None:
        """A worker's ``{stage, fraction, message}`` record (untrusted) as the job's progress."""
        if not isinstance(output, dict):
            job.patch.progress(self.share[0], "training: starting")
            return
        stage, fraction, message = output.get("stage"), output.get("fraction"), output.get("message")
        if not isinstance(stage, str) or isinstance(fraction, bool) or not isinstance(fraction, int | float):
            return
        lo, hi = STEP_SPAN.get(stage, (0.0, 0.0))
        job.patch.progress(
            self.percent(lo + (hi - lo) * max(0.0, min(1.0, float(fraction)))), f"training: {stage}"[:64]
        )
        if isinstance(message, str) and message:
            job.patch.message(message[:256])

    def _record_run(
        self, job: Job, t: dict[str, Any], runpod_id: str, record: dict[str, Any]
    ) -> dict[str, Any]:
        """Add a finished run to the billing record once; GPU seconds and cost are recomputed from it."""
        runs = dict(t.get("runs") or {})
        if runpod_id not in runs:
            ms = record.get("executionTime")
            output = record.get("output")
            runs[runpod_id] = {
                "requestId": t.get("requestId"),
                "status": str(record["status"]),
                "executionMs": int(ms)
                if isinstance(ms, int | float) and not isinstance(ms, bool) and ms >= 0
                else 0,
                "duplicate": bool(isinstance(output, dict) and output.get("duplicate")),
            }
        seconds = sum(math.ceil(r.get("executionMs", 0) / 1000) for r in runs.values())
        cost = (Decimal(seconds) * self.settings.training.usd_per_second).quantize(Decimal("0.000001"))
        t = {**t, "runs": runs, "gpuSeconds": seconds, "costUSD": _decimal_text(cost)}
        job.patch["training"] = t
        return t

    def _duplicate(self, job: Job, t: dict[str, Any], runpod_id: str, output: dict[str, Any]) -> None:
        """The run found the request claimed: follow the run that holds the claim, or wait for its
        results when that is this very job (RunPod ran it twice)."""
        holder = output.get("claimed_by")
        if (
            isinstance(holder, str)
            and 0 < len(holder) <= 128
            and holder != runpod_id
            and holder not in t["runs"]
        ):
            job.patch["training"] = {**t, "runpodJobId": holder}
            job.event(
                "DuplicateRun",
                f"RunPod job {runpod_id} found request {t['requestId']} already claimed by job {holder}; "
                "following that one (no work was done twice)",
            )
            return
        if self.storage.exists(self.key(job, f"{t['requestId']}/{TRAIN_RESULT}")):
            self._collect(job, t)
        else:
            job.patch.message(
                f"waiting for the run that claimed request {t['requestId']} to upload its results"
            )

    def _lost(self, job: Job, t: dict[str, Any], runpod_id: str) -> None:
        """RunPod no longer knows the job (its ttl passed, the queue was purged)."""
        if self.storage.exists(self.key(job, f"{t['requestId']}/{TRAIN_RESULT}")):
            self._collect(job, t)
            return
        self._failed(job, t, f"RunPod no longer knows job {runpod_id} (expired or purged)")

    def _failed(self, job: Job, t: dict[str, Any], error: str) -> None:
        attempt = int(t.get("attempt") or 1)
        if attempt > self.settings.training.retries:
            job.fail("TrainingFailed", f"training failed after {attempt} attempt(s): {error}")
            return
        nxt = attempt + 1
        request_id = f"{job.uid}-{nxt}"
        job.patch["training"] = {
            **t,
            "attempt": nxt,
            "requestId": request_id,
            "runpodJobId": None,
            "attemptStartedAt": now_rfc3339(),
        }
        job.patch.message(f"training attempt {attempt} failed ({error}); retrying as request {request_id}")
        job.event("TrainingRetry", f"attempt {attempt} failed: {error}; attempt {nxt} follows", warning=True)

    def _collect(self, job: Job, t: dict[str, Any]) -> None:
        """Fetch the results (bounded) into a staging folder beside output/, then :meth:`accept` them."""
        directory = self.job_dir(job)
        prefix = f"{t['requestId']}/"
        directory.output.mkdir(mode=0o750, exist_ok=True)
        staging = directory.output / f".incoming-{t['requestId']}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o750)
        try:
            try:
                for name, limit in result_limits(job.spec.max_gaussians).items():
                    try:
                        self.storage.get_bounded(self.key(job, prefix + name), staging / name, limit)
                    except StorageError as exc:
                        if not (name in OPTIONAL_RESULTS and exc.reason == "not-found"):
                            raise
            except StorageError as exc:
                if exc.retryable:
                    raise
                reason = "ResultMalformed" if exc.reason == "too-large" else "ResultMissing"
                job.fail(reason, f"the training run finished but its results could not be read: {exc}")
                return
            self.accept(job, t, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def accept(self, job: Job, t: dict[str, Any], source: Path) -> None:
        """Check the results in ``source`` as untrusted (regular files, bounded, a valid record whose
        gaussian count is the splat's and within the cap), move them into output/ and enter Trained;
        else fail the job, leaving nothing of them in output/."""
        directory = self.job_dir(job)
        cap = job.spec.max_gaussians
        limits = result_limits(cap)
        present = [n for n in limits if n not in OPTIONAL_RESULTS or os.path.lexists(source / n)]
        try:
            for name in present:
                limit = limits[name]
                st = os.lstat(source / name)
                if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                    raise ValueError(f"{name}: not a regular file of at most {limit} bytes")
            result = TrainResult.read(source / TRAIN_RESULT)
            gaussians = count_gaussians(source / TRAINED_SPLAT)
        except FileNotFoundError as exc:
            job.fail("ResultMissing", f"the training run finished without its results: {exc.filename}")
            return
        except (OSError, ValueError, RecordError) as exc:
            job.fail("ResultMalformed", f"the training results are not valid: {exc}")
            return
        if not result.ok or gaussians > cap or gaussians != result.gaussians:
            job.fail(
                "ResultMalformed",
                f"the training results are not valid: ok={result.ok}, {gaussians} gaussians in the "
                f"splat, {result.gaussians} in the record, cap {cap}",
            )
            return
        directory.output.mkdir(mode=0o750, exist_ok=True)
        for name in present:
            os.replace(source / name, directory.output / name)
        t = {
            **t,
            "steps": result.steps,
            "gaussians": gaussians,
            "seconds": round(result.seconds, 1),
            **({"psnr": round(result.psnr, 2)} if result.psnr is not None else {}),
            **({"ssim": round(result.ssim, 4)} if result.ssim is not None else {}),
            **({"previewPsnr": round(result.preview_psnr, 2)} if result.preview_psnr is not None else {}),
            "retryAt": None,
        }
        job.patch["training"] = t
        job.patch.stamp(self.done_stamp)
        job.patch.progress(self.share[1], "trained")
        metrics.STAGE_SECONDS.labels(stage=self.name).observe(
            max(0.0, seconds_since(job.timestamps.get(self.started_stamp)) or 0.0)
        )
        quality = (
            f"held-out PSNR {t['psnr']} dB (preview {t.get('previewPsnr', 'n/a')} dB)"
            if "psnr" in t
            else "no held-out photos"
        )
        if "costUSD" in t:  # RunPod: what it cost
            metrics.JOB_TRAINING_COST_USD.observe(float(t["costUSD"]))
            where = f"{t['gpuSeconds']} GPU s, ${t['costUSD']} ({len(t['runs'])} RunPod run(s))"
        else:
            where = f"in the cluster on {result.device or 'an unknown device'} in {t['seconds']} s"
        job.enter(
            self.done, "TrainingSucceeded", f"{result.steps} steps, {gaussians} gaussians, {quality}; {where}"
        )

    # --- stop ----------------------------------------------------------------------------------------

    def stop(self, job: Job, snap: Snapshot) -> bool:
        """Cancel the run being followed, and remove the scene so that a run whose id was lost in a
        crash cannot start working on it (the cluster backend: delete the pod)."""
        if self.backend(job) == "cluster":
            return self.cluster.stop(job)
        t = job.status.training
        if self.backend(job) != "runpod" or not t.get("requestId"):
            return False
        asked = False
        runpod_id = t.get("runpodJobId")
        if runpod_id and runpod_id not in (t.get("runs") or {}):
            try:
                self.runpod.cancel(runpod_id)
                asked = True
                job.event("TrainingCancelled", f"RunPod job {runpod_id} cancelled")
            except (RunPodUnavailable, RunPodRefused) as exc:
                log.warning("%s/%s: cancelling RunPod job %s: %s", job.namespace, job.name, runpod_id, exc)
        try:
            self.storage.delete_prefix(self.key(job, ""))
        except StorageError as exc:
            log.warning("%s/%s: deleting its training objects: %s", job.namespace, job.name, exc)
        return asked

    def stopped(self, job: Job, snap: Snapshot) -> bool:
        """RunPod runs cannot be waited for (stop() has cancelled them and removed their inputs); a
        training pod can."""
        if self.backend(job) == "cluster":
            return self.cluster.stopped(job, snap)
        self.stop(job, snap)
        return True


#: Results a trainer from before SPZ does not write (a RunPod run in flight across the operator's upgrade,
#: a training pod of an older image): their absence is no failure, and delivery goes without them.
OPTIONAL_RESULTS = frozenset({TRAINED_SPZ})


def result_limits(cap: int) -> dict[str, int]:
    """The largest each result file may be for a job capped at ``cap`` gaussians."""
    return {
        TRAIN_RESULT: MAX_RESULT_BYTES,
        TRAINED_SPLAT: cap * 32,
        TRAINED_PLY: cap * PLY_BYTES_PER_GAUSSIAN + PLY_HEADER_BYTES,
        TRAINED_SPZ: spz_max_bytes(cap),
    }


def _plain_files(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Only files and folders go into the archive (the worker refuses anything else)."""
    if not (info.isfile() or info.isdir()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _error_text(record: dict[str, Any]) -> str:
    error = record.get("error")
    output = record.get("output")
    if not error and isinstance(output, dict):
        error = output.get("error")
    return str(error or "the worker reported a failure without a message")[:512]


def _decimal_text(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"
