"""A SharpJob over synthetic photos goes through SfM and delivery to Complete: real apiserver, scheduler,
operator process, and COLMAP run by podman from the project's SfM image, in the sandbox the pod spec
describes; training is off (``backend: none``), so the preview splat is what is delivered."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from sharpml.contract import SfmResult, count_spz
from sharpml.splat import read_splat
from tests.operator.conftest import create, events_for, sfm_pods, sharpjob, wait_phase


@pytest.mark.cluster
@pytest.mark.podman
@pytest.mark.slow
def test_sharpjob_is_reconstructed_then_complete(
    control_plane, namespace, data_volume, start_operator, node_agent, scene_uploads, sfm_node
):
    op = start_operator()
    job_dir = data_volume.new_job(scene_uploads, "chair")
    create(control_plane, namespace, sharpjob("chair", job_dir, len(scene_uploads)))

    job = wait_phase(control_plane, namespace, "chair", "Complete", "Failed", timeout=240, operator=op)
    status = job["status"]
    assert status["phase"] == "Complete", status
    assert status["observedGeneration"] == job["metadata"]["generation"]
    assert status["sfm"]["totalImages"] == len(scene_uploads)
    assert status["sfm"]["registeredImages"] == len(scene_uploads)
    assert status["sfm"]["points"] >= 300
    assert 0 <= status["sfm"]["meanReprojectionError"] < 2.0
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Reconstructed"]["status"] == "True" and conds["Reconstructed"]["reason"] == "SfmSucceeded"
    # Reconstructed is a resting phase; with training off the preview is delivered and is the result.
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] == "Complete"
    assert conds["Delivered"]["status"] == "True" and conds["Delivered"]["reason"] == "Complete"
    assert "Failed" not in conds and "Trained" not in conds
    ts = status["timestamps"]
    assert (
        ts["queuedAt"] <= ts["reconstructionStartedAt"]
        and ts["reconstructionStartedAt"][:19]
        <= ts["reconstructedAt"]
        <= ts["deliveryStartedAt"]
        <= ts["finishedAt"]
    )
    assert status["progress"] == {"percent": 100, "stage": "complete"} and "queuePosition" not in status

    # The story, as `kubectl describe sj` tells it.
    reasons = [e["reason"] for e in events_for(control_plane, namespace, "chair")]
    assert reasons[:5] == ["Queued", "SfmStarted", "SfmSucceeded", "Delivering", "Complete"], reasons
    assert reasons.count("Complete") == 1

    # Delivered: the preview (no PLY) in splats/<id>.splat and .spz, exactly as status.outputs records
    # them; no S3.
    outputs = status["outputs"]
    assert outputs["source"] == "preview" and "backup" not in outputs
    art, spz = outputs["artifacts"]
    delivered = (data_volume.root / "splats" / "chair.splat").read_bytes()
    assert art == {
        "format": "splat",
        "file": "scene.splat",
        "bytes": len(delivered),
        "sha256": hashlib.sha256(delivered).hexdigest(),
        "path": "splats/chair.splat",
    }
    assert outputs["gaussians"] == len(delivered) // 32 == status["sfm"]["points"]
    assert outputs["deliveredAt"] <= ts["finishedAt"] and outputs["expiresAt"] > outputs["deliveredAt"]
    assert sorted(p.name for p in (data_volume.root / "splats").iterdir()) == ["chair.splat", "chair.spz"]
    assert spz["path"] == "splats/chair.spz" and spz["file"] == "scene.spz"
    assert count_spz(data_volume.root / spz["path"], 10**8) == outputs["gaussians"]

    # The result the operator reported is the one COLMAP wrote, and the preview splat is valid.
    job_root = data_volume.root / job_dir
    result = SfmResult.read(job_root / "colmap" / "result.json")
    assert result.ok and result.registered == status["sfm"]["registeredImages"]
    assert len(read_splat(job_root / "colmap" / "preview.splat")) == result.points
    assert (job_root / "colmap" / "preview.splat").read_bytes() == delivered
    assert (job_root / "colmap" / "scene" / "sparse" / "0" / "cameras.bin").is_file()

    # Exactly one pod, on the SfM node, owned by the job, and it ran in the sandbox.
    (pod,) = sfm_pods(control_plane, namespace)
    assert pod["spec"]["nodeName"] == sfm_node.name
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert pod["metadata"]["name"] == f"sfm-{job['metadata']['uid']}"
    (launched,) = [a[1:] for a in node_agent.launched if a[0] == f"{namespace}/{pod['metadata']['name']}"]
    for flag in (
        "--network=none",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--user=10001:10001",
        "--memory=2147483648b",
        "--cpus=2",
    ):
        assert flag in launched, (flag, launched)
    assert '--entrypoint=["python", "-m", "sharpml.sfm"]' in launched
    image_at = launched.index(pod["spec"]["containers"][0]["image"])
    assert launched[image_at + 1 :] == [
        "/job",
        "--matcher",
        "auto",
        "--mapper",
        "auto",
        "--max-image-size",
        "1600",  # the measured default of the core (sharpml.contract.PROCESSING_DEFAULTS), via the CRD
        "--scene-image-size",
        "1600",  # spec.training.maxImageSize's default (TRAINING_DEFAULTS), via the CRD
        "--threads",
        "2",
        "--time-budget",  # the fallback ladder's retries fit in the pod's deadline (SHARPML_JOB_TIMEOUT_MS)
        "1800",
    ]
    scratch = node_agent.state_dir / "pods" / pod["metadata"]["uid"] / "volumes" / "tmp"
    mounts = [a for a in launched if a.startswith("--mount=")]
    assert mounts == [
        f"--mount=type=bind,src={job_root},dst=/job,ro=true",
        f"--mount=type=bind,src={job_root / 'colmap'},dst=/job/colmap",
        f"--mount=type=bind,src={scratch},dst=/tmp",
    ]

    # The deny-all NetworkPolicy selects the pod.
    pol = control_plane.get_json("networkpolicy", "sharpml-sandbox-deny-all", "-n", namespace)
    assert set(pol["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert not pol["spec"].get("ingress") and not pol["spec"].get("egress")
    for k, v in pol["spec"]["podSelector"]["matchLabels"].items():
        assert pod["metadata"]["labels"][k] == v

    metrics = op.metrics()
    assert 'sharpml_jobs{phase="Complete"} 1.0' in metrics
    assert 'sharpml_stage_duration_seconds_count{stage="sfm"} 1.0' in metrics
    # What the chart's alerts read: finished jobs by phase, and the data volume's free bytes.
    assert 'sharpml_jobs_finished_total{phase="Complete"} 1.0' in metrics
    free = re.search(r"^sharpml_data_volume_free_bytes (\S+)$", metrics, re.M)
    assert free and float(free.group(1)) > 0, metrics


@pytest.mark.cluster
def test_namespace_enforces_restricted_pod_security(control_plane, namespace):
    """The control for the sandbox tests: this namespace really refuses a pod that is not "restricted"."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "plain"},
        "spec": {"containers": [{"name": "c", "image": "localhost/sharpml-sfm:latest"}]},
    }
    proc = control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert proc.returncode != 0 and "violates PodSecurity" in proc.stderr and "restricted" in proc.stderr
