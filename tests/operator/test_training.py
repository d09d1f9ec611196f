"""The Training stage against real components: the development control plane, the operator process, the
SfM pod in podman, a real S3 server (versitygw: signatures and expiry checked) and the local RunPod
with the unmodified ``runpod`` SDK on both sides — the operator's client and the trainer's worker loop
(``python -m sharpml.train.runpod_worker``) training on CPU.

What is asserted is what the issue asks of the stage: a job reaches Trained with the PLY, the
``.splat`` and the metrics, better than the preview on held-out photos; killed operators, duplicate
deliveries and failures never train twice, lose a job or bill a run twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sharpml.contract import TrainResult, count_gaussians, count_spz
from sharpml.pricing import RUNPOD_FLEX_USD_PER_SECOND
from tests.operator.conftest import (
    DataVolume,
    OperatorProcess,
    _free_port,
    create,
    events_for,
    get_job,
    sharpjob,
    wait_for,
    wait_phase,
)
from tests.runpod_local.fixtures import wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.podman, pytest.mark.s3, pytest.mark.slow]

WORKER = "sharpml.train.runpod_worker"
#: Small and quick: enough to show the whole chain; the quality test trains longer.
#: The training size is the job's (spec.training.maxImageSize, sent to the worker in its options).
QUICK = {"backend": "runpod", "steps": 20, "maxGaussians": 2000, "maxImageSize": 64}
QUICK_WORKER_ENV = {
    "SHARPML_TRAIN_DEVICE": "cpu",
    "SHARPML_TRAIN_THREADS": "1",
}


@dataclass
class Training:
    """Everything a training test runs against."""

    runpod: Any  # tests.runpod_local.server.LocalRunPod
    s3: Any  # hack/s3server.py's S3Server
    bucket: str
    ca_bundle: Path
    start_worker_process: Any
    volume: DataVolume

    def operator_env(self) -> dict[str, str]:
        client = self.runpod.client_env()
        return {
            **self.s3.env(),
            "SHARPML_S3_BUCKET": self.bucket,
            "SHARPML_RUNPOD_ENDPOINT_ID": self.runpod.endpoint_id,
            "SHARPML_RUNPOD_API_KEY": self.runpod.api_key,
            "SHARPML_TRAINING_BACKEND": "runpod",
            "SHARPML_RUNPOD_GPU_TYPE": "L4",
            "RUNPOD_ENDPOINT_BASE_URL": client["RUNPOD_ENDPOINT_BASE_URL"],
            "REQUESTS_CA_BUNDLE": client["REQUESTS_CA_BUNDLE"],
        }

    def start_worker(self, **env: str) -> Any:
        """The trainer's RunPod worker under the SDK's real polling loop; it trusts both servers."""
        return self.start_worker_process(
            WORKER, env={**QUICK_WORKER_ENV, **env, "SSL_CERT_FILE": str(self.ca_bundle)}
        )

    def objects(self, prefix: str = "") -> list[str]:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.s3.endpoint,
            region_name=self.s3.region,
            aws_access_key_id=self.s3.access_key_id,
            aws_secret_access_key=self.s3.secret_access_key,
            verify=str(self.s3.ca_bundle),
        )
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def claims(self) -> dict[str, dict[str, Any]]:
        """Every claim object written, by key: who won each request id."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.s3.endpoint,
            region_name=self.s3.region,
            aws_access_key_id=self.s3.access_key_id,
            aws_secret_access_key=self.s3.secret_access_key,
            verify=str(self.s3.ca_bundle),
        )
        return {
            k: json.loads(client.get_object(Bucket=self.bucket, Key=k)["Body"].read())
            for k in self.objects()
            if k.endswith("/claim.json")
        }


@pytest.fixture
def training(s3_server, runpod_server, runpod_worker, data_volume, tmp_path) -> Training:
    bundle = tmp_path / "ca-bundle.pem"
    bundle.write_bytes(Path(s3_server.ca_bundle).read_bytes() + Path(runpod_server.tls[0]).read_bytes())
    return Training(
        runpod=runpod_server,
        s3=s3_server,
        bucket=f"sj-{uuid.uuid4().hex[:12]}",
        ca_bundle=bundle,
        start_worker_process=runpod_worker,
        volume=data_volume,
    )


def _submit(training: Training, cp, namespace: str, scene_uploads, name: str, **spec_training: Any) -> None:
    job_dir = training.volume.new_job(scene_uploads, name)
    create(cp, namespace, sharpjob(name, job_dir, len(scene_uploads), training={**QUICK, **spec_training}))


def _wait_submitted(cp, namespace: str, name: str, op: OperatorProcess) -> dict[str, Any]:
    """Until the job's status records the RunPod job it submitted."""
    return wait_for(
        cp,
        namespace,
        name,
        lambda j: bool((j.get("status", {}).get("training") or {}).get("runpodJobId")),
        timeout=180,
        what="a RunPod job recorded in status.training",
        operator=op,
    )


def _billed_seconds(server: Any, runpod_ids: list[str]) -> int:
    """The execution time RunPod reports for those runs, rounded up per run as it bills."""
    return sum(math.ceil((server.job(rid).execution_ms or 0) / 1000) for rid in runpod_ids)


def _assert_trained_once(training: Training, job: dict[str, Any], job_root: Path) -> None:
    """Trained (then Complete), the outputs in place and valid, one run did the work, billed once."""
    status = job["status"]
    t = status["training"]
    assert status["phase"] == "Complete", status
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Trained"]["status"] == "True" and conds["Trained"]["reason"] == "TrainingSucceeded"
    out = job_root / "output"
    record = TrainResult.read(out / "result.json")
    assert record.ok and record.steps == t["steps"] and count_gaussians(out / "scene.splat") == t["gaussians"]
    assert (out / "point_cloud.ply").read_bytes().startswith(b"ply\n")
    assert count_spz(out / "scene.spz", 10**8) == t["gaussians"]
    # Exactly one run trained: the request has one claim, its holder is a run of this job, and every
    # other run of the job found the claim taken and did no work.
    runs = {rid: r for rid, r in t["runs"].items() if r["requestId"] == t["requestId"]}
    claims = [c for k, c in training.claims().items() if f"/{t['requestId']}/" in k]
    assert len(claims) == 1, claims
    holder = claims[0]["runpod_job_id"]
    assert holder in runs and all(r["duplicate"] for rid, r in runs.items() if rid != holder), runs
    # Billed once: the status' GPU seconds are RunPod's figures for exactly these runs.
    assert t["gpuSeconds"] == _billed_seconds(training.runpod, list(t["runs"])) > 0
    assert Decimal(t["costUSD"]) == t["gpuSeconds"] * RUNPOD_FLEX_USD_PER_SECOND["L4"]
    # Delivered: the trained splat, PLY and SPZ in splats/, as the status records them, and backed up to S3
    # (the operator has S3) before Complete.
    outputs = status["outputs"]
    assert outputs["source"] == "trained" and outputs["gaussians"] == t["gaussians"]
    assert outputs["backup"]["state"] == "Done", outputs
    data_dir = job_root.parents[1]
    for a, src in zip(outputs["artifacts"], ("scene.splat", "point_cloud.ply", "scene.spz"), strict=True):
        delivered = (data_dir / a["path"]).read_bytes()
        assert delivered == (out / src).read_bytes()
        assert hashlib.sha256(delivered).hexdigest() == a["sha256"] and a["bytes"] == len(delivered)
        assert a["s3Key"] == f"sharpml/artifacts/{job['metadata']['name']}/{a['file']}"
        assert a["s3Key"] in training.objects("sharpml/artifacts/")


# --- the product path -----------------------------------------------------------------------------------


def test_product_path_upload_to_download_viewer_and_notifications(
    training, control_plane, namespace, start_operator, scene_uploads, receivers, smtp_server, page, tmp_path
):
    """The whole product on the development control plane (issue 11's "done when"): photos uploaded to the
    running ``sharpml-api`` → SfM pod → training by the RunPod worker on CPU (local RunPod) with the
    held-out PSNR above the preview's → Complete → the signed download is the stored splat's bytes, a
    tampered link is refused (403) and an expired one is gone (410) → the viewer page, opened from the
    upload's share link while the job runs, shows live progress and then draws the splat in headless
    Chromium → the webhook arrives signed (verified by the standardwebhooks package) → the e-mail arrives
    (aiosmtpd) with the same kind of link. Screenshots go to the test artifacts' ``product/``."""
    from email import message_from_bytes, policy

    import httpx

    from sharpml import links
    from tests.api.conftest import bearer, multipart
    from tests.browser import artifacts_dir, assert_no_console_errors
    from tests.operator.receivers import LINK_KEYS, SECRET
    from tests.operator.soak import ApiProcess, api_env
    from tests.viewer.test_page import BACKGROUND, TIMEOUT_MS

    shots = artifacts_dir("product")
    smtp_port, inbox = smtp_server
    hook = receivers()
    port = _free_port()
    api = ApiProcess(
        {
            **api_env(control_plane, namespace, training.volume.root, port),
            "SHARPML_LINK_KEYS": LINK_KEYS,
            "SHARPML_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "SHARPML_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",  # the receiver is on loopback
        },
        port,
        tmp_path / "api.log",
    ).start()
    op = start_operator(
        env={
            **training.operator_env(),
            "SHARPML_LINK_KEYS": LINK_KEYS,
            "SHARPML_PUBLIC_URL": api.url,
            "SHARPML_WEBHOOK_SECRET": SECRET,
            "SHARPML_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
            "SHARPML_SMTP_HOST": "127.0.0.1",
            "SHARPML_SMTP_PORT": str(smtp_port),
            "SHARPML_SMTP_STARTTLS": "off",
        }
    )
    worker = training.start_worker(SHARPML_TRAIN_THREADS="2")
    try:
        fields = {
            "training": "runpod",
            "training_steps": "200",
            "max_gaussians": "20000",
            "train_image_size": "120",
            "webhook_url": hook.url,
            "email": "someone@example.com",
        }
        photos = [u.path for u in scene_uploads]
        resp = httpx.post(
            f"{api.url}/v1/jobs", headers=bearer("acct-train"), timeout=120, **multipart(photos, fields)
        )
        assert resp.status_code == 201, resp.text
        name, share = resp.json()["id"], resp.json()["links"]["view"]

        # The share link, opened by someone without an account while the job runs: live progress.
        page.goto(share)
        page.wait_for_selector("#overall-text:text-matches('[1-9][0-9]?%')", timeout=TIMEOUT_MS)
        phase = page.locator("#phase").inner_text()
        assert phase in ("Queued", "Reconstructing", "Reconstructed", "Training"), phase
        page.screenshot(path=str(shots / "progress.png"))

        seen: list[str] = []

        def training_progress(job: dict[str, Any]) -> bool:
            stage = (job.get("status", {}).get("progress") or {}).get("stage", "")
            if stage.startswith("training: train"):
                seen.append(stage)
            return job.get("status", {}).get("phase") in ("Complete", "Failed")

        job = wait_for(
            control_plane, namespace, name, training_progress, timeout=420, what="Complete", operator=op
        )
        assert seen, "the worker's progress never reached status.progress"
        job_root = training.volume.root / job["spec"]["source"]["upload"]["jobDir"]
        _assert_trained_once(training, job, job_root)
        t = job["status"]["training"]
        assert t["steps"] == 200 and t["psnr"] > t["previewPsnr"] + 1.0, t
        assert len(t["runs"]) == 1 and t["attempt"] == 1 and t["backend"] == "runpod"
        metrics = op.metrics()
        assert 'sharpml_training_runs_total{duplicate="false",status="COMPLETED"} 1.0' in metrics
        assert f"sharpml_training_gpu_seconds_total {float(t['gpuSeconds'])}" in metrics
        # The worker got presigned URLs only: its environment holds no storage credentials.
        (record,) = training.runpod.jobs()
        assert training.s3.secret_access_key not in worker.output()
        assert (
            record.input["scene_url"].startswith(training.s3.endpoint)
            and "X-Amz-Signature" in record.input["scene_url"]
        )

        # The owner's view: the training figures and the signed links a user gets.
        view = httpx.get(f"{api.url}/v1/jobs/{name}", headers=bearer("acct-train"), timeout=30).json()
        assert view["training"]["backend"] == "runpod" and view["training"]["cost_usd"] == t["costUSD"]
        assert view["training"]["psnr"] == t["psnr"] and view["phase"] == "Complete"
        artifacts = view["links"]["artifacts"]
        assert set(artifacts) == {"splat", "ply", "spz"}
        stored = training.volume.root / "splats" / f"{name}.splat"
        for fmt, link in artifacts.items():
            got = httpx.get(link["url"], timeout=60, follow_redirects=True)  # no credentials: the link is all
            assert got.status_code == 200, (fmt, got.status_code, got.text[:300])
            assert hashlib.sha256(got.content).hexdigest() == link["sha256"]
            assert len(got.content) == link["bytes"]
        splat = httpx.get(artifacts["splat"]["url"], timeout=60).content
        assert splat == stored.read_bytes() == (job_root / "output" / "scene.splat").read_bytes()

        # A link altered in any way is refused; one past its expiry is gone, and the answer says so.
        url = artifacts["splat"]["url"]
        exp = int(url.split("exp=", 1)[1].split("&", 1)[0])
        tampered = httpx.get(url.replace(f"exp={exp}", f"exp={exp + 3600}"), timeout=30)
        assert tampered.status_code == 403 and tampered.headers["content-type"] == "application/problem+json"
        keys = links.parse_keys(LINK_KEYS)
        expired_url = links.url(api.url, name, "scene.splat", keys, int(time.time()) - 1)
        expired = httpx.get(expired_url, timeout=30)
        assert expired.status_code == 410 and "expired" in expired.json()["detail"], expired.text

        # The page that showed the progress now draws the splat.
        page.wait_for_selector("body[data-state=viewing]", timeout=TIMEOUT_MS)
        page.locator("#scene").screenshot(path=str(shots / "complete-canvas.png"))
        page.screenshot(path=str(shots / "complete.png"))
        pixels = np.asarray(Image.open(shots / "complete-canvas.png").convert("RGB")).astype(np.int16)
        drawn = (np.abs(pixels - BACKGROUND).max(axis=2) > 24).mean()
        assert drawn > 0.05, f"the canvas is blank: {drawn:.1%} of it differs from the background"
        assert sorted(page.locator("#downloads a").all_inner_texts()) == [".ply", ".splat", ".spz"]
        assert_no_console_errors(page)

        # The webhook and the e-mail, each once.
        job = wait_for(
            control_plane,
            namespace,
            name,
            lambda j: all(
                ((j["status"].get("notifications") or {}).get(c) or {}).get("state") in ("Sent", "Failed")
                for c in ("webhook", "email")
            ),
            timeout=60,
            what="both notifications settled",
            operator=op,
        )
        assert {c: n["state"] for c, n in job["status"]["notifications"].items()} == {
            "webhook": "Sent",
            "email": "Sent",
        }
        (payload,) = hook.delivered.values()
        assert all(r["verified"] for r in hook.requests)
        assert payload["type"] == "sharpjob.completed" and payload["data"]["id"] == name
        hooked = payload["data"]["links"]
        assert hooked["view"].startswith(f"{api.url}/v1/jobs/{name}/view?")
        assert httpx.get(hooked["artifacts"]["scene.splat"], timeout=60).content == splat
        ((rcpts, raw),) = inbox.messages
        msg = message_from_bytes(raw, policy=policy.default)
        assert rcpts == ["someone@example.com"] and msg["Subject"] == "Your SharpML scene is ready"
        assert f"{api.url}/v1/jobs/{name}/view?" in msg.get_body(("plain",)).get_content()

        reasons = [e["reason"] for e in events_for(control_plane, namespace, name)]
        story = [r for r in reasons if r not in ("WebhookSent", "EmailSent")]
        assert story == [
            "Queued",
            "SfmStarted",
            "SfmSucceeded",
            "TrainingRequested",
            "TrainingSubmitted",
            "TrainingSucceeded",
            "Delivering",
            "Complete",
        ], reasons
        assert reasons.count("WebhookSent") == 1 and reasons.count("EmailSent") == 1, reasons
    finally:
        api.stop()


# --- exactly once ----------------------------------------------------------------------------------------


def test_operator_killed_between_run_and_recording_the_id_trains_once(
    training, control_plane, namespace, start_operator, scene_uploads
):
    """SIGKILL while /run is answered: the restarted operator submits the same request id again; the
    worker that runs second finds the claim and does no work; the operator follows the one that did."""
    op = start_operator(env=training.operator_env())
    training.start_worker()
    training.runpod.faults.delay_next(seconds=30, routes=("run",))  # /run queues the job, answers late
    _submit(training, control_plane, namespace, scene_uploads, "killed-at-run")
    first = wait_until(lambda: training.runpod.jobs(), 180, "the first /run")[0]
    op.kill()
    assert "runpodJobId" not in get_job(control_plane, namespace, "killed-at-run")["status"].get(
        "training", {}
    )
    op.start()
    job = wait_phase(
        control_plane, namespace, "killed-at-run", "Complete", "Failed", timeout=240, operator=op
    )
    _assert_trained_once(training, job, training.volume.root / job["spec"]["source"]["upload"]["jobDir"])
    jobs = training.runpod.jobs()
    assert len(jobs) == 2 and {j.input["claim"]["request_id"] for j in jobs} == {
        job["status"]["training"]["requestId"]
    }
    assert job["status"]["training"]["runs"][first.id]["duplicate"] is False  # the first one trained
    reasons = [e["reason"] for e in events_for(control_plane, namespace, "killed-at-run")]
    assert reasons.count("TrainingSucceeded") == 1 and "DuplicateRun" in reasons


def test_operator_killed_while_polling_resumes_the_same_run(
    training, control_plane, namespace, start_operator, scene_uploads
):
    op = start_operator(env=training.operator_env())
    training.start_worker()
    _submit(training, control_plane, namespace, scene_uploads, "killed-polling", steps=60)
    _wait_submitted(control_plane, namespace, "killed-polling", op)
    op.kill()
    op.start()
    job = wait_phase(
        control_plane, namespace, "killed-polling", "Complete", "Failed", timeout=240, operator=op
    )
    _assert_trained_once(training, job, training.volume.root / job["spec"]["source"]["upload"]["jobDir"])
    assert len(training.runpod.jobs()) == 1 and len(job["status"]["training"]["runs"]) == 1


def test_a_job_runpod_delivers_twice_trains_once(
    training, control_plane, namespace, start_operator, scene_uploads
):
    start_operator(env=training.operator_env())
    workers = [training.start_worker(), training.start_worker()]
    training.runpod.faults.deliver_twice()
    _submit(training, control_plane, namespace, scene_uploads, "twice")
    job = wait_phase(control_plane, namespace, "twice", "Complete", "Failed", timeout=300)
    _assert_trained_once(training, job, training.volume.root / job["spec"]["source"]["upload"]["jobDir"])
    (job_record,) = training.runpod.jobs()

    # Both deliveries end. Which one answers first is a race: RunPod's record is COMPLETED with the first
    # answer and the job-stop channel stops the other delivery, which then reports nothing (its SDK loop
    # cancels the job's task). When the duplicate answered first, the stopped delivery's thread still
    # finishes training and uploads the results the operator collects. So a delivery may end without a
    # result; what never happens is a second training result (one claim: _assert_trained_once).
    def both_ended() -> Any:
        record = training.runpod.job(job_record.id)
        return record if all(d.closed_at is not None for d in record.deliveries) else None

    try:
        record = wait_until(both_ended, 60, "both deliveries to end")
    except AssertionError as exc:  # say which delivery went silent, to whom, and what the workers logged
        record = training.runpod.job(job_record.id)
        deliveries = [(d.worker_id, d.closed_at, d.result) for d in record.deliveries]
        logs = [w.output()[-3000:] for w in workers]
        raise AssertionError(f"{exc}: deliveries {deliveries}; worker logs {logs}") from None
    assert record.handed_out == 2
    outputs = [d.result.get("output") for d in record.deliveries if d.result is not None]
    assert outputs and all(isinstance(o, dict) and "error" not in o for o in outputs), outputs
    assert sum(not o.get("duplicate") for o in outputs) <= 1, outputs


# --- failures ----------------------------------------------------------------------------------------------


def test_a_failed_run_is_retried_as_a_new_request(
    training, control_plane, namespace, start_operator, scene_uploads
):
    start_operator(env=training.operator_env())
    training.start_worker()
    training.runpod.faults.fail_results(1, error="CUDA error: an illegal memory access was encountered")
    _submit(training, control_plane, namespace, scene_uploads, "retried")
    job = wait_phase(control_plane, namespace, "retried", "Complete", "Failed", timeout=300)
    _assert_trained_once(training, job, training.volume.root / job["spec"]["source"]["upload"]["jobDir"])
    t = job["status"]["training"]
    assert t["attempt"] == 2 and t["requestId"].endswith("-2")
    assert sorted(r["status"] for r in t["runs"].values()) == ["COMPLETED", "FAILED"]
    events = {e["reason"]: e for e in events_for(control_plane, namespace, "retried")}
    assert "illegal memory access" in events["TrainingRetry"]["message"]


def test_retries_spent_fail_the_job_with_the_workers_error(
    training, control_plane, namespace, start_operator, scene_uploads
):
    start_operator(env=training.operator_env(), training_retries="0")
    training.start_worker()
    training.runpod.faults.fail_results(1, error="CUDA out of memory")
    _submit(training, control_plane, namespace, scene_uploads, "failing")
    job = wait_phase(control_plane, namespace, "failing", "Complete", "Failed", timeout=300)
    status = job["status"]
    assert status["phase"] == "Failed" and "CUDA out of memory" in status["message"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Failed"]["reason"] == "TrainingFailed" and conds["Trained"]["status"] == "False"
    assert status["training"]["gpuSeconds"] == _billed_seconds(
        training.runpod, list(status["training"]["runs"])
    )


def test_runpod_errors_back_off_and_never_lose_the_job(
    training, control_plane, namespace, start_operator, scene_uploads
):
    """429s, 502s and dropped connections on /run and /status: backoff (an event, a message), then done."""
    op = start_operator(env=training.operator_env())
    training.start_worker()
    training.runpod.faults.fail_next(3, status=429, routes=("run",))
    training.runpod.faults.fail_next(2, status=502, routes=("status",))
    training.runpod.faults.drop_next(2, routes=("status",))
    _submit(training, control_plane, namespace, scene_uploads, "flaky")
    job = wait_phase(control_plane, namespace, "flaky", "Complete", "Failed", timeout=300, operator=op)
    _assert_trained_once(training, job, training.volume.root / job["spec"]["source"]["upload"]["jobDir"])
    assert len(training.runpod.jobs()) == 1  # a refused /run queued nothing; the answered one is followed
    reasons = [e["reason"] for e in events_for(control_plane, namespace, "flaky")]
    assert "BackendUnavailable" in reasons


def test_a_run_past_its_execution_timeout_fails_the_job(
    training, control_plane, namespace, start_operator, scene_uploads
):
    start_operator(env=training.operator_env(), training_timeout_seconds="60")
    training.runpod.faults.lose_results(1)  # the worker's result never arrives: RunPod times the job out
    training.start_worker()
    _submit(training, control_plane, namespace, scene_uploads, "timeout")
    job = wait_phase(control_plane, namespace, "timeout", "Complete", "Failed", timeout=300)
    status = job["status"]
    assert (
        status["phase"] == "Failed"
        and {c["type"]: c for c in status["conditions"]}["Failed"]["reason"] == "Timeout"
    )
    (record,) = training.runpod.jobs()
    assert record.status == "TIMED_OUT"


def test_cancel_during_training_stops_the_run_and_removes_its_objects(
    training, control_plane, namespace, start_operator, scene_uploads
):
    op = start_operator(env=training.operator_env())
    training.runpod.faults.hold_queue()  # no worker takes it: the run waits IN_QUEUE
    _submit(training, control_plane, namespace, scene_uploads, "cancelled")
    _wait_submitted(control_plane, namespace, "cancelled", op)
    uid = get_job(control_plane, namespace, "cancelled")["metadata"]["uid"]
    assert training.objects(f"sharpml/jobs/{uid}/")
    control_plane.kubectl(
        "patch", "sj", "cancelled", "-n", namespace, "--type=merge", "-p", '{"spec":{"cancel":true}}'
    )
    job = wait_phase(
        control_plane, namespace, "cancelled", "Cancelled", "Failed", "Complete", timeout=60, operator=op
    )
    assert job["status"]["phase"] == "Cancelled"
    (record,) = training.runpod.jobs()
    assert record.status == "CANCELLED"
    assert training.objects(f"sharpml/jobs/{uid}/") == []


@pytest.mark.parametrize("hostile", ["truncated", "oversized"])
def test_malformed_results_fail_the_job_and_are_not_kept(
    hostile, training, control_plane, namespace, start_operator, scene_uploads
):
    """Results are untrusted: a splat of partial records, or one over the job's gaussian cap, fails the
    job ResultMalformed, and nothing of it is left in the job's output."""
    op = start_operator(env=training.operator_env())
    training.start_worker_process(
        "tests.operator.hostile_worker",
        env={"SHARPML_HOSTILE": hostile, "SSL_CERT_FILE": str(training.ca_bundle)},
    )
    _submit(training, control_plane, namespace, scene_uploads, "hostile")
    job = wait_phase(control_plane, namespace, "hostile", "Complete", "Failed", timeout=240, operator=op)
    status = job["status"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Failed" and conds["Failed"]["reason"] == "ResultMalformed", status
    assert ("whole number" if hostile == "truncated" else "limit") in status["message"], status["message"]
    output = training.volume.root / job["spec"]["source"]["upload"]["jobDir"] / "output"
    assert not (output / "scene.splat").exists()
