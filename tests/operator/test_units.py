"""Unit tests of the operator's pure parts: queue decisions, pod status interpretation, the pod spec."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sharpml_operator import nodes, slots
from sharpml_operator.podspec import cpu_threads, deny_all_policy, sfm_pod, training_pod
from sharpml_operator.podstate import TRAINING_POD, classify
from sharpml_operator.settings import Settings
from sharpml_operator.slots import QueuedJob
from sharpml_operator.snapshot import Snapshot
from sharpml_operator.stages import SfmStage

from sharpml.config import ConfigError
from sharpml.contract import JobSpec, Phase


def _job(name: str, phase: str = "Queued", created: str = "2026-01-01T00:00:00Z", seq: int = 0) -> QueuedJob:
    return QueuedJob(uid=name, namespace="ns", name=name, phase=Phase.of({"phase": phase}), created=created,
                     sequence=seq)  # fmt: skip


def decide(uid, jobs, holders, capacity):
    """The SfM stage's queue: jobs wait in Queued (or not yet seen), run in Reconstructing."""
    stage = SfmStage(Settings.from_env({}))
    busy = slots.occupied(jobs, holders, stage.runs_in)
    return slots.decide(uid, jobs, busy, max(0, capacity - len(busy)), waits_in=stage.waits_in)


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
    assert c["args"][-2:] == ["--time-budget", "60"]  # SfM's retries fit in the pod's deadline
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
    assert "affinity" not in ps  # no node chosen: the selector alone
    pinned = sfm_pod(
        job_name="j",
        job_uid="u-1",
        namespace="ns",
        spec=JobSpec.read(spec),
        job_dir="jobs/abc",
        settings=cfg,
        node="sfm-b",
    )
    assert pinned["spec"]["nodeSelector"] == ps["nodeSelector"]
    assert pinned["spec"]["affinity"] == {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["sfm-b"]}]}
                ]
            }
        }
    }
    assert nodes.pod_node(pinned) == "sfm-b"
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
    assert cfg.node_selector == {"role": "mac"} and cfg.node_concurrency == 3


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


# --- several SfM nodes: capacity per node, placement --------------------------------------------------------

SFM_TOLERATIONS = Settings.from_env({}).tolerations
SFM_TAINT = {"key": "sharpml.com/sfm", "value": "true", "effect": "NoSchedule"}


def _node(name: str, ready: bool = True, cordoned: bool = False, taints=(SFM_TAINT,)) -> nodes.NodeView:
    spec = {"taints": list(taints), "unschedulable": cordoned}
    status = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    return nodes.NodeView.read(name, spec, status)


def _on(node: str | None, phase: str = "Running") -> dict:
    return {"spec": {"nodeName": node} if node else {}, "status": {"phase": phase}}


def test_capacity_is_per_node_over_the_nodes_that_can_take_sfm_pods():
    cluster = [
        _node("a"),
        _node("b"),
        _node("c", ready=False),
        _node("d", cordoned=True),
        _node("e", taints=[SFM_TAINT, {"key": "gpu", "value": "x", "effect": "NoExecute"}]),
        _node("f", taints=[SFM_TAINT, {"key": "soft", "effect": "PreferNoSchedule"}]),
    ]
    node_of = {"j1": "a", "j2": "a", "j3": "b", "j4": "c", "j5": None}
    place = nodes.placement(cluster, SFM_TOLERATIONS, 2, {"j1", "j2", "j3", "j4", "j5"}, node_of)
    assert place.load == {"a": 2, "b": 1, "f": 0}  # j4's node is NotReady: it holds nothing of a, b, f
    assert place.unavailable == {
        "c": "not Ready",
        "d": "cordoned",
        "e": "taint gpu=x:NoExecute not tolerated",
    }
    assert place.capacity == 6
    assert place.unplaced == 1 and place.free == 2  # 0 + 1 + 2 free slots, one kept for j5's pod
    assert place.choose() == "f"  # the least loaded


def test_placement_fills_the_least_loaded_node_first_and_never_overfills():
    place = nodes.placement([_node("b"), _node("a")], SFM_TOLERATIONS, 1, set(), {})
    chosen = []
    while (node := place.choose()) is not None:
        chosen.append(node)
        place = place.with_pod(node)
    assert chosen == ["a", "b"] and place.free == 0 and place.load == {"a": 1, "b": 1}
    # Two slots each, "a" holding one already: b, then a and b in turn (ties go by name).
    place = nodes.placement([_node("b"), _node("a")], SFM_TOLERATIONS, 2, {"x"}, {"x": "a"})
    chosen = []
    while (node := place.choose()) is not None:
        chosen.append(node)
        place = place.with_pod(node)
    assert chosen == ["b", "a", "b"]
    # A busy job whose node is unknown will need a slot: nothing is chosen over it.
    place = nodes.placement([_node("a")], SFM_TOLERATIONS, 1, {"lost"}, {})
    assert place.free == 0 and place.choose() is None


def test_no_ready_sfm_node_means_no_slots_and_says_why():
    selector = {"sharpml.com/role": "sfm"}
    empty = nodes.placement([], SFM_TOLERATIONS, 1, set(), {})
    assert empty.capacity == 0 and empty.choose() is None
    assert empty.why_none(selector) == "no SfM node is ready: no node matches sharpml.com/role=sfm"
    down = nodes.placement(
        [_node("mini", ready=False), _node("b", cordoned=True)], SFM_TOLERATIONS, 1, set(), {}
    )
    assert down.why_none(selector) == "no SfM node is ready (b cordoned; mini not Ready)"
    # The node agent's fresh Node still carries the admission's not-ready taint: not a node to use.
    fresh = _node("n", taints=[SFM_TAINT, {"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}])
    assert (
        nodes.problem(fresh, SFM_TOLERATIONS) == "taint node.kubernetes.io/not-ready:NoSchedule not tolerated"
    )


def test_tolerations_follow_kubernetes_rules():
    taint = {"key": "k", "value": "v", "effect": "NoSchedule"}
    assert nodes.tolerates({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, taint)
    assert nodes.tolerates({"key": "k", "value": "v"}, taint)  # Equal by default, any effect
    assert nodes.tolerates({"key": "k", "operator": "Exists"}, taint)
    assert nodes.tolerates({"operator": "Exists"}, taint)  # empty key + Exists: everything
    assert not nodes.tolerates({"key": "k", "value": "w"}, taint)
    assert not nodes.tolerates({"key": "k", "value": "v", "effect": "NoExecute"}, taint)
    assert not nodes.tolerates({"key": "other", "operator": "Exists"}, taint)


def test_a_pods_node_is_its_binding_else_its_pinned_node():
    assert nodes.pod_node(_on("a")) == "a"
    assert nodes.pod_node({"spec": {"affinity": nodes.pin_to("b")}}) == "b"
    assert nodes.pod_node({"spec": {"nodeName": "a", "affinity": nodes.pin_to("b")}}) == "a"
    assert nodes.pod_node({"spec": {"nodeSelector": {"sharpml.com/role": "sfm"}}}) is None


def _kopf_job(name: str, phase: str):
    from sharpml_operator.job import Job

    meta = {
        "uid": name,
        "name": name,
        "namespace": "ns",
        "generation": 1,
        "creationTimestamp": "2026-01-01T00:00:00Z",
    }
    spec = {"owner": "a", "source": {"upload": {"jobDir": f"jobs/{name}", "imageCount": 8}}}
    return Job.from_kopf({}, spec, {"phase": phase}, meta)


def test_sfm_stage_reserves_a_slot_per_node_under_concurrent_starts():
    """kopf runs handlers of different jobs in threads: however they interleave, no node gets more pods
    than its slots, and a reservation gives way to the pod once the index shows it."""
    import threading

    stage = SfmStage(Settings.from_env({"SHARPML_SFM_CONCURRENCY": "2"}))
    names = [f"j{i}" for i in range(8)]
    snap = Snapshot([_job(n, seq=i) for i, n in enumerate(names)], {}, {"a": [_node("a")], "b": [_node("b")]})
    barrier, chosen = threading.Barrier(len(names)), {}

    def start(name):
        barrier.wait()
        chosen[name] = stage._reserve(_kopf_job(name, "Queued"), snap)

    threads = [threading.Thread(target=start, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    placed = [node for node in chosen.values() if node]
    assert sorted(placed) == ["a", "a", "b", "b"], chosen
    assert stage.holders(snap) == {n for n, node in chosen.items() if node}
    assert stage.free_slots(slots.occupied(snap.jobs, stage.holders(snap), stage.runs_in), snap) == 0
    waiting = _kopf_job("late", "Queued")
    assert stage._reserve(waiting, snap) is None
    assert waiting.patch["message"] == "waiting: all 2 SfM node(s) busy"
    # The index shows one reserved job's pod, finished: the reservation is gone and its slot is free again.
    done = next(n for n, node in chosen.items() if node == "a")
    snap = Snapshot(snap.jobs, {("sfm", done): [_on("a", "Succeeded")]}, snap.nodes)
    assert done not in stage.holders(snap)
    assert stage._reserve(_kopf_job("late", "Queued"), snap) == "a"


def test_jobs_wait_with_a_reason_while_no_sfm_node_is_ready():
    from sharpml_operator.pipeline import Pipeline

    pipeline = Pipeline(Settings.from_env({"SHARPML_TRAINING_BACKEND": "none"}))
    job = _kopf_job("q", "Queued")
    pipeline.step(job, Snapshot([_job("q")], {}, {"mini": [_node("mini", ready=False)]}))
    assert job.phase is Phase.QUEUED and job.patch["queuePosition"] == 0
    assert job.patch["message"] == "waiting: no SfM node is ready (mini not Ready); position 0 in the queue"
