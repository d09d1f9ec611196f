"""The Training stage's bookkeeping, narrowly: billing counted once per RunPod run, cost from the price
table, progress inside the stage's share, backend choice. (Its behaviour against a real RunPod worker
loop and a real S3 server is in test_training.py.)"""

from __future__ import annotations

from decimal import Decimal

import pytest
from sharpml_operator.job import Job
from sharpml_operator.settings import Settings
from sharpml_operator.stages import TrainingStage

from sharpml.contract import JobSpec, JobStatus, StatusPatch
from sharpml.pricing import RUNPOD_FLEX_USD_PER_SECOND


def _job(spec: dict | None = None, status: dict | None = None) -> Job:
    status = status or {"phase": "Training"}
    meta = {"uid": "u-1", "name": "chair", "namespace": "ns", "generation": 1}
    return Job(None, meta, JobSpec.read(spec or {}), JobStatus.read(status), StatusPatch(status))


def test_each_run_is_billed_once_and_priced_from_the_gpu_type():
    stage = TrainingStage(Settings.from_env({"SHARPML_RUNPOD_GPU_TYPE": "H100"}))
    job = _job()
    t = {"requestId": "u-1-1", "attempt": 1}
    record = {"status": "COMPLETED", "executionTime": 61_001, "output": {"ok": True}}
    t = stage._record_run(job, t, "rp-1", record)
    again = stage._record_run(job, t, "rp-1", {**record, "executionTime": 99_000})  # a repeated step
    assert again["runs"] == {
        "rp-1": {"requestId": "u-1-1", "status": "COMPLETED", "executionMs": 61_001, "duplicate": False}
    }
    assert again["gpuSeconds"] == 62  # rounded up to the second, as RunPod bills
    assert Decimal(again["costUSD"]) == 62 * RUNPOD_FLEX_USD_PER_SECOND["H100"]
    dup = stage._record_run(
        job, again, "rp-2", {"status": "COMPLETED", "executionTime": 400, "output": {"duplicate": True}}
    )
    assert dup["runs"]["rp-2"]["duplicate"] is True and dup["gpuSeconds"] == 63
    assert job.patch["training"] == dup


def test_a_price_setting_overrides_the_table():
    env = {"SHARPML_RUNPOD_GPU_TYPE": "L4", "SHARPML_RUNPOD_PRICE_PER_SECOND": "0.001"}
    stage = TrainingStage(Settings.from_env(env))
    t = stage._record_run(_job(), {}, "rp-1", {"status": "FAILED", "executionTime": 2000})
    assert t["costUSD"] == "0.002" and t["gpuSeconds"] == 2


@pytest.mark.parametrize(
    ("output", "percent", "stage_text"),
    [
        ({"stage": "download", "fraction": 0.0, "message": "downloading"}, 30, "training: download"),
        ({"stage": "train", "fraction": 0.5, "message": "step 50/100"}, 62, "training: train"),
        ({"stage": "train", "fraction": 7.0, "message": ""}, 88, "training: train"),  # clamped, never done
        ({"stage": "upload", "fraction": 1.0, "message": ""}, 94, "training: upload"),
    ],
)
def test_worker_progress_maps_into_the_stage_share(output, percent, stage_text):
    stage = TrainingStage(Settings.from_env({}))
    job = _job()
    stage.report_progress(job, output)
    assert job.patch["progress"] == {"percent": percent, "stage": stage_text}


@pytest.mark.parametrize("output", [None, "text", {"stage": 3}, {"stage": "train", "fraction": True}])
def test_progress_that_is_not_a_record_is_ignored(output):
    stage = TrainingStage(Settings.from_env({}))
    job = _job()
    stage.report_progress(job, output)
    assert job.patch.get("progress", {"percent": 30}).get("percent") == 30


def test_backend_comes_from_status_then_spec_then_the_operator():
    stage = TrainingStage(Settings.from_env({"SHARPML_TRAINING_BACKEND": "none"}))
    assert stage.backend(_job()) == "none" and not stage.applies(_job())
    assert stage.backend(_job({"training": {"backend": "runpod"}})) == "runpod"
    started = _job(
        {"training": {"backend": "none"}}, {"phase": "Training", "training": {"backend": "runpod"}}
    )
    assert stage.backend(started) == "runpod"  # a job keeps the backend it started with
