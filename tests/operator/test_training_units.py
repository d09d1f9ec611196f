"""The Training stage's bookkeeping, narrowly: billing counted once per RunPod run, cost from the price
table, progress inside the stage's share, backend choice. (Its behaviour against a real RunPod worker
loop and a real S3 server is in test_training.py.)"""

from __future__ import annotations

import shutil
from decimal import Decimal

import pytest
from sharpml_operator.job import Job
from sharpml_operator.settings import Settings
from sharpml_operator.stages import TrainingStage

from sharpml.contract import JobSpec, JobStatus, Phase, StatusPatch
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


def _trained_files(directory, gaussians: int = 3) -> None:
    from sharpml.contract import TrainResult

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "scene.splat").write_bytes(b"\0" * 32 * gaussians)
    (directory / "point_cloud.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nend_header\n")
    (directory / "scene.spz").write_bytes(b"\x1f\x8b")  # checked by delivery, not here
    TrainResult(ok=True, reason=None, steps=10, gaussians=gaussians, device="cpu").write(
        directory / "result.json"
    )


@pytest.fixture
def cluster_job(tmp_path, monkeypatch):
    """Makes a cluster-trained job in Training (its pod recorded): the stage, the job, its directory and
    the events it posts."""

    def make():
        settings = Settings.from_env({"SHARPML_DATA_DIR": str(tmp_path)})
        root = tmp_path / "jobs" / "chair"
        shutil.rmtree(root, ignore_errors=True)
        (root / "output").mkdir(parents=True)
        job = _job(
            {
                "source": {"upload": {"jobDir": "jobs/chair", "imageCount": 8}},
                "training": {"backend": "cluster"},
            },
            {"phase": "Training", "training": {"backend": "cluster", "pod": "train-u-1"}},
        )
        events: list[str] = []
        monkeypatch.setattr(job, "event", lambda reason, message, warning=False: events.append(reason))
        return TrainingStage(settings), job, root, events

    return make


def test_results_half_moved_by_a_killed_operator_are_accepted_whole(cluster_job):
    """SIGKILL between moving result.json and the splat into output/: the next step moves them back and
    accepts all three (it used to fail the job ResultMissing and delete the valid splat)."""
    stage, job, root, events = cluster_job()
    _trained_files(root / "training")
    (root / "training" / "result.json").rename(root / "output" / "result.json")
    stage.cluster._succeeded(job, stage.job_dir(job))
    assert job.phase is Phase.TRAINED and events == ["TrainingSucceeded"], job.patch.view()
    assert sorted(p.name for p in (root / "output").iterdir()) == [
        "point_cloud.ply",
        "result.json",
        "scene.splat",
        "scene.spz",
    ]
    assert not (root / "training").exists() and job.patch["training"]["gaussians"] == 3


def test_results_of_a_trainer_older_than_spz_are_accepted_without_it(cluster_job):
    """A training pod of an image from before SPZ: no scene.spz, and the job is trained all the same
    (delivery then goes without the .spz)."""
    stage, job, root, events = cluster_job()
    _trained_files(root / "training")
    (root / "training" / "scene.spz").unlink()
    stage.cluster._succeeded(job, stage.job_dir(job))
    assert job.phase is Phase.TRAINED and events == ["TrainingSucceeded"], job.patch.view()
    assert sorted(p.name for p in (root / "output").iterdir()) == [
        "point_cloud.ply",
        "result.json",
        "scene.splat",
    ]


@pytest.mark.s3
def test_a_runpod_run_from_before_spz_is_collected_without_it(cluster_job, s3_server):
    """A RunPod run in flight across the operator's upgrade uploaded no scene.spz: the results are fetched
    from the real S3 server without it; a missing splat still fails the job."""
    from tests.storage.conftest import storage_for

    storage = storage_for(s3_server)
    storage.ensure_bucket()
    for missing, phase in (("scene.spz", Phase.TRAINED), ("scene.splat", Phase.FAILED)):
        stage, job, root, _ = cluster_job()
        stage = TrainingStage(stage.settings, storage=storage)
        _trained_files(root / "made")
        t = {"requestId": f"r-{missing}"}
        for f in (root / "made").iterdir():
            if f.name != missing:
                storage.put_file(stage.key(job, f"{t['requestId']}/{f.name}"), f)
        stage._collect(job, t)
        assert job.phase is phase, (missing, job.patch.view())
        assert not (root / "output" / "scene.spz").exists()
        assert not list((root / "output").glob(".incoming-*"))
    assert "ResultMissing" in str(job.patch.view()["conditions"])


def test_a_vanished_training_pod_is_never_started_again(cluster_job, monkeypatch):
    """The recorded pod is gone (deleted, evicted with its node): results it finished are taken, a failure
    it recorded is the reason, otherwise the job fails PodLost; no second pod, ever."""
    from sharpml_operator import pods
    from sharpml_operator.snapshot import Snapshot

    from sharpml.contract import TrainResult

    monkeypatch.setattr(pods, "read", lambda name, namespace: None)
    monkeypatch.setattr(pods, "create", lambda *a: pytest.fail("a second training pod"))
    stage, job, root, events = cluster_job()
    stage.observe(job, Snapshot())
    assert job.phase is Phase.FAILED and events == ["PodLost"]

    stage, job, root, events = cluster_job()
    _trained_files(root / "training")
    stage.observe(job, Snapshot())
    assert job.phase is Phase.TRAINED and (root / "output" / "scene.splat").is_file()

    stage, job, root, events = cluster_job()
    (root / "training").mkdir()
    TrainResult(ok=False, reason="no photo could be trained on").write(root / "training" / "result.json")
    stage.observe(job, Snapshot())
    assert job.phase is Phase.FAILED and "no photo could be trained on" in job.patch["message"]
