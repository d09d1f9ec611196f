"""Each way an SfM pod can fail ends the job Failed with its own reason, never a bare "pod failed"."""

from __future__ import annotations

import time

import pytest

from tests.operator.conftest import create, events_for, sfm_pods, sharpjob, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.podman]


def _failed(cp, ns, name, op):
    job = wait_phase(cp, ns, name, "Failed", "Complete", timeout=180, operator=op)
    status = job["status"]
    assert status["phase"] == "Failed", status
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Failed"]["status"] == "True"
    assert "finishedAt" in status["timestamps"]
    warnings = [e for e in events_for(cp, ns, name) if e["type"] == "Warning"]
    assert warnings and warnings[-1]["reason"] == conds["Failed"]["reason"]
    return status, conds["Failed"]


def test_deadline_exceeded(control_plane, namespace, data_volume, start_operator, scene_uploads):
    # SHARPML_JOB_TIMEOUT_MS=2000 against an SfM pod held to a tenth of a core: importing pycolmap alone
    # takes longer than that there. (At full speed 8 small photos reconstruct in about 2 s, so an
    # unthrottled pod sometimes finished in time and the job completed.)
    op = start_operator(job_timeout_ms="2000", sfm_cpu_request="100m", sfm_cpu_limit="100m")
    create(
        control_plane,
        namespace,
        sharpjob("slow", data_volume.new_job(scene_uploads, "slow"), len(scene_uploads)),
    )
    status, cond = _failed(control_plane, namespace, "slow", op)
    assert cond["reason"] == "Timeout" and "timeout of 2 s" in status["message"]
    (pod,) = sfm_pods(control_plane, namespace)
    assert pod["spec"]["activeDeadlineSeconds"] == 2
    assert pod["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "100m"
    assert pod["status"]["reason"] == "DeadlineExceeded"
    metrics = op.metrics()
    assert 'sharpml_job_failures_total{reason="Timeout"} 1.0' in metrics
    assert 'sharpml_jobs_finished_total{phase="Failed"} 1.0' in metrics  # the failure-rate alert's input


def test_out_of_memory(control_plane, namespace, data_volume, start_operator, scene_uploads):
    op = start_operator(sfm_memory_request="48Mi", sfm_memory_limit="48Mi")
    create(
        control_plane,
        namespace,
        sharpjob("big", data_volume.new_job(scene_uploads, "big"), len(scene_uploads)),
    )
    status, cond = _failed(control_plane, namespace, "big", op)
    assert cond["reason"] == "OutOfMemory" and "48Mi" in status["message"]
    (pod,) = sfm_pods(control_plane, namespace)
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"


@pytest.mark.slow
def test_too_few_registered_photos(control_plane, namespace, data_volume, start_operator, noise_uploads):
    op = start_operator()
    create(
        control_plane,
        namespace,
        sharpjob("noise", data_volume.new_job(noise_uploads, "noise"), len(noise_uploads)),
    )
    status, cond = _failed(control_plane, namespace, "noise", op)
    assert cond["reason"] == "QualityGate"
    assert "could be placed" in status["message"], status["message"]
    assert status["sfm"]["totalImages"] == len(noise_uploads)
    assert status["sfm"]["registeredImages"] < 0.7 * len(noise_uploads)


def test_missing_image_fails_with_pull_reason(
    control_plane, namespace, data_volume, start_operator, scene_uploads
):
    op = start_operator(sfm_image="localhost/sharpml-sfm:does-not-exist")
    create(
        control_plane,
        namespace,
        sharpjob("noimg", data_volume.new_job(scene_uploads, "noimg"), len(scene_uploads)),
    )
    status, cond = _failed(control_plane, namespace, "noimg", op)
    assert cond["reason"] == "ImagePullFailed" and "ErrImageNeverPull" in status["message"]
    # The pod that never started is removed: it must not hold the SfM node's slot or start later.
    deadline = time.monotonic() + 60
    while sfm_pods(control_plane, namespace) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert sfm_pods(control_plane, namespace) == []


def test_missing_job_directory(control_plane, namespace, data_volume, start_operator):
    op = start_operator()
    create(control_plane, namespace, sharpjob("ghost", "jobs/ghost", 8))
    status, cond = _failed(control_plane, namespace, "ghost", op)
    assert cond["reason"] == "JobDirMissing" and "does not exist" in status["message"]
    assert sfm_pods(control_plane, namespace) == []
