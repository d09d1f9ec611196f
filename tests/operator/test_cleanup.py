"""Deletion (finalizer), cancellation and retention clean up pods and the job's files."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from tests.operator.conftest import create, events_for, get_job, sfm_pods, sharpjob, wait_for, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.podman]

#: The SfM pod held to a quarter of a core: it is still running when the test stops it (unthrottled, 8
#: small photos can reconstruct in about 2 s, and the job would complete before the cancel or delete).
SLOW_POD = {"sfm_cpu_request": "250m", "sfm_cpu_limit": "250m"}


def _seconds_since(stamp: str) -> float:
    return (datetime.now(UTC) - datetime.fromisoformat(stamp.replace("Z", "+00:00"))).total_seconds()


def _wait(predicate, timeout=60, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_deleting_a_running_job_stops_its_pod_and_deletes_its_files(
    control_plane, namespace, data_volume, start_operator, node_agent, scene_uploads
):
    cp, ns = control_plane, namespace
    op = start_operator(**SLOW_POD)
    job_dir = data_volume.new_job(scene_uploads, "gone")
    create(cp, ns, sharpjob("gone", job_dir, len(scene_uploads)))
    wait_for(cp, ns, "gone", lambda j: j.get("status", {}).get("phase") == "Reconstructing", operator=op)
    _wait(
        lambda: any(p.get("status", {}).get("phase") == "Running" for p in sfm_pods(cp, ns)),
        what="pod running",
    )
    job = get_job(cp, ns, "gone")
    assert "sharpml.com/cleanup" in job["metadata"]["finalizers"]

    cp.kubectl("delete", "sj", "gone", "-n", ns, "--timeout=60s")
    assert cp.kubectl("get", "sj", "gone", "-n", ns, check=False).returncode != 0
    assert sfm_pods(cp, ns) == []
    assert not (data_volume.root / job_dir).exists()
    assert not [p for p in node_agent.running.values() if p.uid == job["metadata"]["uid"]]
    assert "FilesDeleted" in [e["reason"] for e in events_for(cp, ns, "gone")]


def test_cancel_then_retention_deletes_job_and_files(
    control_plane, namespace, data_volume, start_operator, scene_uploads
):
    cp, ns = control_plane, namespace
    op = start_operator(**SLOW_POD)
    job_dir = data_volume.new_job(scene_uploads, "stop")
    # A TTL that cannot expire during the first half, however slowly the pod stops on a loaded machine.
    create(cp, ns, sharpjob("stop", job_dir, len(scene_uploads), ttlSecondsAfterFinished=3600))
    wait_phase(cp, ns, "stop", "Reconstructing", operator=op)
    cp.kubectl("patch", "sj", "stop", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"cancel": True}}))
    job = wait_phase(cp, ns, "stop", "Cancelled", operator=op)
    assert "finishedAt" in job["status"]["timestamps"]
    _wait(lambda: sfm_pods(cp, ns) == [], what="the cancelled pod to go")
    assert (data_volume.root / job_dir).exists(), "files are kept until retention"
    undo = cp.kubectl(
        "patch", "sj", "stop", "-n", ns, "--type=merge", "-p", '{"spec":{"cancel":false}}', check=False
    )
    assert undo.returncode != 0 and "cannot be undone" in undo.stderr
    assert cp.kubectl("get", "sj", "stop", "-n", ns, check=False).returncode == 0
    assert "sharpml_retention_deletions_total 0.0" in op.metrics()

    # The TTL may change after the job finished; shortened to 2 s, it has expired already (the job
    # finished more than 2 s ago): the job and its files are gone within about a check interval (1 s
    # here), and the deletion is on record. A retention that raced kopf's finalizer took a minute.
    _wait(lambda: _seconds_since(job["status"]["timestamps"]["finishedAt"]) > 2.5, what="2.5 s")
    shortened = datetime.now(UTC)
    cp.kubectl(
        "patch", "sj", "stop", "-n", ns, "--type=merge", "-p", '{"spec":{"ttlSecondsAfterFinished":2}}'
    )
    _wait(
        lambda: cp.kubectl("get", "sj", "stop", "-n", ns, check=False).returncode != 0,
        timeout=30,
        what="retention to delete the job",
    )
    took = (datetime.now(UTC) - shortened).total_seconds()
    assert took < 10, f"deleted {took:.1f} s after its TTL was shortened to an expired one"
    assert not (data_volume.root / job_dir).exists()
    reasons = [e["reason"] for e in events_for(cp, ns, "stop")]
    assert reasons.index("RetentionExpired") < reasons.index("FilesDeleted"), reasons
    # Counted once the delete call returned, which the finalizer's work does not wait for.
    _wait(lambda: "sharpml_retention_deletions_total 1.0" in op.metrics(), what="the deletion counted")


def test_retention_survives_an_operator_restart(
    control_plane, namespace, data_volume, start_operator, scene_uploads
):
    cp, ns = control_plane, namespace
    op = start_operator()
    job_dir = data_volume.new_job(scene_uploads, "later")
    create(cp, ns, sharpjob("later", job_dir, len(scene_uploads), ttlSecondsAfterFinished=6, cancel=True))
    wait_phase(cp, ns, "later", "Cancelled", operator=op)
    op.kill()
    time.sleep(7)  # the TTL passes while no operator runs
    assert cp.kubectl("get", "sj", "later", "-n", ns, check=False).returncode == 0
    op.start()
    _wait(
        lambda: cp.kubectl("get", "sj", "later", "-n", ns, check=False).returncode != 0,
        timeout=30,
        what="retention after restart",
    )
    assert not (data_volume.root / job_dir).exists()
