"""Unit tests of the operator's pure parts: queue decisions, pod status interpretation, the pod spec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sharpml_operator import slots
from sharpml_operator.podspec import cpu_threads, deny_all_policy, sfm_pod, training_pod
from sharpml_operator.podstate import TRAINING_POD, classify
from sharpml_operator.settings import Settings
from sharpml_operator.slots import QueuedJob
from sharpml_operator.stages import SfmStage

from sharpml.config import ConfigError
from sharpml.contract import JobSpec, Phase


def _job(name: str, phase: str = "Queued", created: str = "2026-01-01T00:00:00Z", seq: int = 0) -> QueuedJob:
    return QueuedJob(uid=name, namespace="ns", name=name, phase=Phase.of({"phase": phase}), created=created,
                     sequence=seq)  # fmt: skip


def decide(uid, jobs, holders, capacity):
    """The SfM stage's queue: jobs wait in Queued (or not yet seen), run in Reconstructing."""
    stage = SfmStage(Settings.from_env({}))
    return slots.decide(uid, jobs, holders, capacity, running=stage.runs_in, waits_in=stage.waits_in)


def test_queue_is_first_come_first_served_with_n_slots():
    jobs = [
        _job("c", seq=30),
        _job("a", seq=10),
        _job("b", seq=20),
        _job("d", created="2026-01-01T00:00:01Z"),
    ]
    assert decide("a", jobs, set(), 1).admit
    assert not decide("b", jobs, set(), 1).admit and decide("b", jobs, set(), 1).position == 0
    assert decide("d", jobs, set(), 1).position == 2
    assert [decide(n, jobs, set(), 2).admit for n in "abcd"] == [True, True, False, False]


def test_running_pods_and_unprocessed_jobs_hold_their_place():
    jobs = [_job("run", phase="Reconstructing"), _job("new", phase="", seq=1), _job("q", seq=2)]
    assert decide("q", jobs, set(), 2).admit is False  # one slot left, and "new" came first
    assert decide("q", jobs, set(), 2).position == 0
    # A pod still stopping (job already Cancelled) keeps its slot until it is gone.
    jobs = [_job("gone", phase="Cancelled"), _job("q")]
    assert not decide("q", jobs, {"gone"}, 1).admit
    assert decide("q", jobs, set(), 1).admit


#: The clock of the pod-status tests: ages are fixed at collection, so "now" must be too (with the real
#: clock, a pod of age 5 s was over the 600 s start timeout when the suite reached it 10 minutes later).
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _pod(phase: str, age: float = 0, **status) -> dict:
    created = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "metadata": {"creationTimestamp": created},
        "spec": {"activeDeadlineSeconds": 1800, "containers": [{"resources": {"limits": {"memory": "8Gi"}}}]},
        "status": {"phase": phase, **status},
    }


def _terminated(code: int, reason: str) -> dict:
    return {"containerStatuses": [{"state": {"terminated": {"exitCode": code, "reason": reason}}}]}


@pytest.mark.parametrize(
    ("pod", "state", "reason"),
    [
        (_pod("Succeeded", **_terminated(0, "Completed")), "succeeded", "Succeeded"),
        (_pod("Failed", reason="DeadlineExceeded", **_terminated(137, "Error")), "failed", "Timeout"),
        (_pod("Failed", **_terminated(137, "OOMKilled")), "failed", "OutOfMemory"),
        (_pod("Failed", **_terminated(4, "Error")), "failed", "QualityGate"),
        (_pod("Failed", **_terminated(1, "Error")), "failed", "SfmFailed"),
        (_pod("Failed", reason="Evicted", message="low on disk"), "failed", "Evicted"),
        (_pod("Running"), "running", "Running"),
        (_pod("Pending", containerStatuses=[{"state": {"waiting": {"reason": "ErrImageNeverPull"}}}]),
         "failed", "ImagePullFailed"),
        (_pod("Pending", age=5, containerStatuses=[{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]),
         "starting", "ImagePullBackOff"),
        (_pod("Pending", age=900, containerStatuses=[{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]),
         "failed", "ImagePullFailed"),
        (_pod("Pending", age=5, conditions=[{"type": "PodScheduled", "status": "False", "message": "t"}]),
         "starting", "Unschedulable"),
        (_pod("Pending", age=900, conditions=[{"type": "PodScheduled", "status": "False", "message": "x"}]),
         "failed", "Unschedulable"),
    ],
)  # fmt: skip
def test_pod_status_becomes_a_precise_reason(pod, state, reason):
    got = classify(pod, start_timeout=600, now=NOW)
    assert (got.state, got.reason) == (state, reason), got


def test_pod_spec_is_restricted_pinned_and_mounts_only_the_job():
    cfg = Settings.from_env({"SHARPML_JOB_TIMEOUT_MS": "60000", "SHARPML_SFM_MEMORY_LIMIT": "3Gi"})
    spec = {
        "source": {"upload": {"jobDir": "jobs/abc", "imageCount": 8}},
        "processing": {"matcher": "sequential"},
    }
    pod = sfm_pod(
        job_name="j", job_uid="u-1", namespace="ns", spec=JobSpec.read(spec), job_dir="jobs/abc", settings=cfg
    )
    ps, c = pod["spec"], pod["spec"]["containers"][0]
    assert pod["metadata"]["name"] == "sfm-u-1"
    assert (
        pod["metadata"]["ownerReferences"][0] | {"uid": "u-1", "controller": True}
        == pod["metadata"]["ownerReferences"][0]
    )
    assert ps["restartPolicy"] == "Never" and ps["activeDeadlineSeconds"] == 60
    assert ps["automountServiceAccountToken"] is False and ps["enableServiceLinks"] is False
    assert ps["nodeSelector"] == {"sharpml.com/role": "sfm"}
    assert ps["tolerations"] == [
        {"key": "sharpml.com/sfm", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
    ]
    assert ps["securityContext"]["runAsNonRoot"] and ps["securityContext"]["runAsUser"] == 10001
    assert ps["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["command"] == ["python", "-m", "sharpml.sfm"] and c["args"][:3] == [
        "/job",
        "--matcher",
        "sequential",
    ]
    assert c["resources"]["limits"]["memory"] == "3Gi"
    assert c["volumeMounts"] == [
        {"name": "data", "mountPath": "/job", "subPath": "jobs/abc", "readOnly": True},
        {"name": "data", "mountPath": "/job/colmap", "subPath": "jobs/abc/colmap"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    assert {v["name"] for v in ps["volumes"]} == {"data", "tmp"}
    pol = deny_all_policy("ns", cfg)
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()


def test_training_pod_is_the_sfm_sandbox_on_the_training_node():
    """backend: cluster — the same restricted, token-less, network-less pod; it reads colmap/ only and
    writes training/ only (never the photos, never output/), asks for its GPUs, trains what the spec says."""
    spec = JobSpec.read(
        {
            "source": {"upload": {"jobDir": "jobs/abc", "imageCount": 8}},
            "training": {"backend": "cluster", "steps": 300, "maxGaussians": 5000, "maxImageSize": 320},
        }
    )
    env = {"SHARPML_TRAINING_TIMEOUT_SECONDS": "900", "SHARPML_TRAINING_MEMORY_LIMIT": "12Gi"}
    where = {"job_name": "j", "job_uid": "u-1", "namespace": "ns", "spec": spec, "job_dir": "jobs/abc"}
    gpu = training_pod(**where, settings=Settings.from_env(env))
    sfm = sfm_pod(**where, settings=Settings.from_env(env))
    ps, c = gpu["spec"], gpu["spec"]["containers"][0]
    assert gpu["metadata"]["name"] == "train-u-1"
    assert gpu["metadata"]["labels"]["sharpml.com/stage"] == "train"
    assert gpu["metadata"]["ownerReferences"] == sfm["metadata"]["ownerReferences"]
    for same in ("securityContext", "automountServiceAccountToken", "enableServiceLinks", "restartPolicy"):
        assert ps[same] == sfm["spec"][same], same
    assert c["securityContext"] == sfm["spec"]["containers"][0]["securityContext"]
    pol = deny_all_policy("ns", Settings.from_env({}))
    assert pol["spec"]["podSelector"]["matchLabels"].items() <= gpu["metadata"]["labels"].items()
    assert ps["activeDeadlineSeconds"] == 900
    assert ps["nodeSelector"] == {"sharpml.com/role": "train"}
    assert ps["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert c["image"] == "localhost/sharpml-trainer:latest"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1" and c["resources"]["limits"]["memory"] == "12Gi"
    assert c["command"] == ["python", "-m", "sharpml.train"]
    assert c["args"] == [
        "/job/colmap/scene", "/job/training", "--steps", "300", "--max-gaussians", "5000",
        "--max-image-size", "320", "--device", "cuda",
    ]  # fmt: skip
    assert c["volumeMounts"] == [
        {"name": "data", "mountPath": "/job/colmap", "subPath": "jobs/abc/colmap", "readOnly": True},
        {"name": "data", "mountPath": "/job/training", "subPath": "jobs/abc/training"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    cpu = training_pod(
        job_name="j",
        job_uid="u-1",
        namespace="ns",
        spec=spec,
        job_dir="jobs/abc",
        settings=Settings.from_env(
            {"SHARPML_TRAINING_GPUS": "0", "SHARPML_TRAINING_CPU_LIMIT": "1500m",
             "SHARPML_TRAINING_NODE_SELECTOR": '{"kubernetes.io/hostname": "box"}'}
        ),
    )  # fmt: skip
    c = cpu["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in c["resources"]["limits"]
    assert c["args"][-4:] == ["--device", "cpu", "--threads", "2"]  # PyTorch is told the pod's cores
    assert cpu["spec"]["nodeSelector"] == {"kubernetes.io/hostname": "box"}
    assert [cpu_threads(q) for q in ("500m", "2", "2.5", "1k")] == [1, 2, 3, 0]


@pytest.mark.parametrize(
    "pod, reason, words",
    [
        (_pod("Failed", **_terminated(6, "Error")), "TrainingFailed", "could not be trained"),
        (_pod("Failed", containerStatuses=[{"state": {"terminated": {"exitCode": 1, "message": "boom"}}}]),
         "TrainingFailed", "training failed (exit code 1): boom"),
        (_pod("Failed", reason="DeadlineExceeded"), "Timeout", "SHARPML_TRAINING_TIMEOUT_SECONDS"),
        (_pod("Failed", **_terminated(137, "OOMKilled")), "OutOfMemory", "SHARPML_TRAINING_MEMORY_LIMIT"),
        (_pod("Pending", age=5, conditions=[{"type": "PodScheduled", "status": "False", "message": "no"}]),
         "Unschedulable", "waiting for the training node: no"),
    ],
)  # fmt: skip
def test_training_pod_status_speaks_of_training(pod, reason, words):
    got = classify(pod, start_timeout=600, now=NOW, kind=TRAINING_POD)
    assert got.reason == reason and words in got.message, got


def test_settings_name_the_variable_and_rule():
    with pytest.raises(ConfigError, match="SHARPML_SFM_CONCURRENCY='0': must be at least 1"):
        Settings.from_env({"SHARPML_SFM_CONCURRENCY": "0"})
    with pytest.raises(ConfigError, match="SHARPML_SFM_NODE_SELECTOR: must be a JSON object"):
        Settings.from_env({"SHARPML_SFM_NODE_SELECTOR": "[1]"})
    cfg = Settings.from_env({"SHARPML_SFM_NODE_SELECTOR": '{"role": "mac"}', "SHARPML_SFM_CONCURRENCY": "3"})
    assert cfg.node_selector == {"role": "mac"} and cfg.concurrency == 3


@pytest.mark.parametrize(
    "rel", ["jobs", "splats/x", "jobs/a/b", "jobs/.incoming-x", "jobs/..", "/jobs/x", ""]
)
def test_job_dir_names_one_jobs_own_directory_only(tmp_path, rel: str) -> None:
    """The finalizer deletes what jobDir names: a parent or another folder would wipe other jobs."""
    from sharpml_operator.jobfiles import JobDirError, job_dir

    with pytest.raises(JobDirError):
        job_dir(tmp_path, rel, "x")
    own = "3f2c9a4e-5b1d-4c2a-9e7f-0a1b2c3d4e5f"
    assert job_dir(tmp_path, f"jobs/{own}", own).root == tmp_path / "jobs" / own


def test_a_job_owns_only_the_directory_named_after_it(tmp_path) -> None:
    """Another job's directory is refused (JobDirNotOwned): the finalizer would delete its photos."""
    from sharpml_operator.jobfiles import JobDirNotOwned, job_dir

    with pytest.raises(JobDirNotOwned, match="owns only jobs/<its own name>"):
        job_dir(tmp_path, "jobs/other-job", "this-job")


def test_data_volume_gauges_read_statvfs_at_scrape_time(tmp_path):
    """sharpml_data_volume_free_bytes (the chart's disk alert) follows the volume; NaN when it is gone."""
    import math
    import os

    from prometheus_client import REGISTRY
    from sharpml_operator import metrics

    metrics.watch_data_volume(tmp_path)
    st = os.statvfs(tmp_path)
    free = REGISTRY.get_sample_value("sharpml_data_volume_free_bytes")
    assert abs(free - st.f_bavail * st.f_frsize) < 64 * 2**20  # other writers on the disk meanwhile
    assert REGISTRY.get_sample_value("sharpml_data_volume_size_bytes") == st.f_blocks * st.f_frsize
    metrics.watch_data_volume(tmp_path / "absent")
    assert math.isnan(REGISTRY.get_sample_value("sharpml_data_volume_free_bytes"))
