"""``spec.training.backend: cluster`` against real components: the development control plane, the operator
process, and the node agent running both the SfM pod and the training pod in podman — the training pod
from the real trainer image (``hack/build-images.sh trainer``, CPU), training on CPU.

The training node here is the test's SfM node (its labels and taint are given as the training node's),
since it is the node that has a kubelet stand-in; production points SHARPML_TRAINING_NODE_SELECTOR at a
GPU node.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sharpml.contract import TrainResult, count_gaussians, count_spz
from tests.operator.conftest import (
    create,
    events_for,
    get_job,
    sharpjob,
    wait_for,
    wait_phase,
)

pytestmark = [pytest.mark.cluster, pytest.mark.podman, pytest.mark.slow]

QUICK = {"backend": "cluster", "steps": 20, "maxGaussians": 2000, "maxImageSize": 64}


@pytest.fixture
def cluster_training(start_operator, trainer_image, sfm_node):
    """Start the operator with the cluster backend on the node agent's node, CPU only."""

    def start(**settings: str):
        return start_operator(
            env={
                "SHARPML_TRAINING_BACKEND": "cluster",
                "SHARPML_TRAINING_IMAGE": trainer_image,
                "SHARPML_TRAINING_IMAGE_PULL_POLICY": "Never",
                "SHARPML_TRAINING_GPUS": "0",
                "SHARPML_TRAINING_NODE_SELECTOR": json.dumps(sfm_node.node_selector),
                "SHARPML_TRAINING_TOLERATIONS": json.dumps([sfm_node.toleration]),
                "SHARPML_TRAINING_CPU_REQUEST": "500m",
                "SHARPML_TRAINING_CPU_LIMIT": "2",
                "SHARPML_TRAINING_MEMORY_REQUEST": "1Gi",
                "SHARPML_TRAINING_MEMORY_LIMIT": "4Gi",
                **settings,
            }
        )

    return start


def _training_pod(cp, namespace: str, name: str) -> dict[str, Any] | None:
    pods = cp.get_json("pods", "-n", namespace, "-l", "sharpml.com/stage=train")["items"]
    uid = get_job(cp, namespace, name)["metadata"]["uid"]
    return next((p for p in pods if p["metadata"]["labels"].get("sharpml.com/job-uid") == uid), None)


def _containers_of(node_agent, namespace: str, pod_name: str) -> list[list[str]]:
    """The podman command lines the node ran for that pod (one per container start)."""
    return [cmd[1:] for cmd in node_agent.launched if cmd[0] == f"{namespace}/{pod_name}"]


def test_cluster_training_pod_trains_once_through_an_operator_restart(
    cluster_training, control_plane, namespace, data_volume, node_agent, scene_uploads
):
    """SfM pod → training pod (sandboxed, CPU) → Trained → Complete, better than the preview on held-out
    photos. The operator is killed while the pod trains: the new one adopts that pod, never starts another."""
    op = cluster_training()
    job_dir = data_volume.new_job(scene_uploads, "pod-train")
    # Training is repeatable bit for bit on CPU, so the quality bar is met on every run or on none.
    training = {**QUICK, "steps": 120, "maxGaussians": 20000, "maxImageSize": 96}
    create(control_plane, namespace, sharpjob("pod-train", job_dir, len(scene_uploads), training=training))
    seen: list[str] = []

    def running(job: dict[str, Any]) -> bool:
        stage = (job.get("status", {}).get("progress") or {}).get("stage", "")
        seen.append(stage)
        pod = _training_pod(control_plane, namespace, "pod-train")
        return pod is not None and pod.get("status", {}).get("phase") == "Running"

    wait_for(
        control_plane,
        namespace,
        "pod-train",
        running,
        timeout=300,
        what="a running training pod",
        operator=op,
    )
    pod = _training_pod(control_plane, namespace, "pod-train")
    op.kill()
    op.start()

    def progress(job: dict[str, Any]) -> bool:
        seen.append((job.get("status", {}).get("progress") or {}).get("stage", ""))
        return job.get("status", {}).get("phase") in ("Complete", "Failed")

    job = wait_for(control_plane, namespace, "pod-train", progress, timeout=420, what="Complete", operator=op)
    status = job["status"]
    assert status["phase"] == "Complete", status
    assert any(s.startswith("training: train") for s in seen), "the pod's progress never reached the status"
    t = status["training"]
    assert (
        t["backend"] == "cluster" and t["pod"] == pod["metadata"]["name"] == f"train-{job['metadata']['uid']}"
    )
    assert t["steps"] == 120 and t["psnr"] > t["previewPsnr"] + 1.0, t
    assert "costUSD" not in t and "runs" not in t  # nothing billed: one's own node
    # Results checked and moved into output/; the pod's own directory is gone.
    root = data_volume.root / job_dir
    record = TrainResult.read(root / "output" / "result.json")
    assert (
        record.ok
        and record.device.startswith("cpu")
        and count_gaussians(root / "output" / "scene.splat") == t["gaussians"]
    )
    assert (root / "output" / "point_cloud.ply").read_bytes().startswith(b"ply\n")
    assert count_spz(root / "output" / "scene.spz", 10**8) == t["gaussians"]
    assert not (root / "training").exists()
    # One pod, one container run: the restarted operator adopted it.
    (same,) = [p for p in [_training_pod(control_plane, namespace, "pod-train")] if p]
    assert same["metadata"]["uid"] == pod["metadata"]["uid"]
    (launch,) = _containers_of(node_agent, namespace, pod["metadata"]["name"])
    # The SfM pod's sandbox: no network, read-only root, no capabilities, its limits.
    for flag in ("--network=none", "--read-only", "--cap-drop=ALL", "--memory=4294967296b", "--cpus=2"):
        assert flag in launch, (flag, launch)
    assert 'sharpml_pods_created_total{stage="train"}' not in op.metrics()  # the new process created none
    reasons = [e["reason"] for e in events_for(control_plane, namespace, "pod-train")]
    assert reasons == [
        "Queued",
        "SfmStarted",
        "SfmSucceeded",
        "TrainingStarted",
        "TrainingSucceeded",
        "Delivering",
        "Complete",
    ]


def test_training_pod_out_of_memory_fails_the_job_saying_which_setting(
    cluster_training, control_plane, namespace, data_volume, scene_uploads
):
    op = cluster_training(SHARPML_TRAINING_MEMORY_REQUEST="32Mi", SHARPML_TRAINING_MEMORY_LIMIT="48Mi")
    job_dir = data_volume.new_job(scene_uploads, "pod-oom")
    create(control_plane, namespace, sharpjob("pod-oom", job_dir, len(scene_uploads), training=QUICK))
    job = wait_phase(control_plane, namespace, "pod-oom", "Failed", "Complete", timeout=300, operator=op)
    status = job["status"]
    conds = {c["type"]: c for c in status["conditions"]}
    assert status["phase"] == "Failed" and conds["Failed"]["reason"] == "OutOfMemory", status
    assert "SHARPML_TRAINING_MEMORY_LIMIT" in status["message"] and "training" in status["message"]
    assert not (data_volume.root / job_dir / "output" / "scene.splat").exists()


def test_cancel_during_cluster_training_stops_the_pod(
    cluster_training, control_plane, namespace, data_volume, scene_uploads
):
    op = cluster_training()
    job_dir = data_volume.new_job(scene_uploads, "pod-cancel")
    training = {**QUICK, "steps": 100000}  # would run for hours
    create(control_plane, namespace, sharpjob("pod-cancel", job_dir, len(scene_uploads), training=training))
    wait_for(
        control_plane,
        namespace,
        "pod-cancel",
        lambda j: (
            (_training_pod(control_plane, namespace, "pod-cancel") or {}).get("status", {}).get("phase")
            == "Running"
        ),
        timeout=300,
        what="a running training pod",
        operator=op,
    )
    control_plane.kubectl(
        "patch", "sj", "pod-cancel", "-n", namespace, "--type=merge", "-p", '{"spec":{"cancel":true}}'
    )
    job = wait_phase(control_plane, namespace, "pod-cancel", "Cancelled", timeout=60, operator=op)
    assert "training" in job["status"]["message"], job["status"]
    wait_for(
        control_plane,
        namespace,
        "pod-cancel",
        lambda j: _training_pod(control_plane, namespace, "pod-cancel") is None,
        timeout=60,
        what="the training pod to be deleted",
        operator=op,
    )
    assert not (Path(data_volume.root) / job_dir / "output" / "scene.splat").exists()
