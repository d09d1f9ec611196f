"""The SfM queue (concurrency 1, first come first served) and operator restarts at any moment."""

from __future__ import annotations

import itertools
import json
import time

import pytest

from tests.operator.conftest import create, events_for, get_job, sfm_pods, sharpjob, wait_for, wait_phase

#: SfM pods held to half a core, so that a job is still Reconstructing while the test looks at the queue
#: behind it (unthrottled, 8 small photos can reconstruct in about 2 s on an idle machine).
SLOW_POD = {"sfm_cpu_request": "500m", "sfm_cpu_limit": "500m"}

pytestmark = [pytest.mark.cluster, pytest.mark.podman, pytest.mark.slow]


def _phase(job):
    return job.get("status", {}).get("phase")


def test_restart_during_queued_and_reconstructing(
    control_plane, namespace, data_volume, start_operator, node_agent, scene_uploads
):
    cp, ns = control_plane, namespace
    op = start_operator(sfm_concurrency="1", **SLOW_POD)
    create(cp, ns, sharpjob("first", data_volume.new_job(scene_uploads, "first"), len(scene_uploads)))
    wait_phase(cp, ns, "first", "Reconstructing", operator=op)
    create(cp, ns, sharpjob("second", data_volume.new_job(scene_uploads, "second"), len(scene_uploads)))
    wait_for(
        cp,
        ns,
        "second",
        lambda j: j.get("status", {}).get("queuePosition") == 0,
        what="queue position 0",
        operator=op,
    )
    (pod_before,) = sfm_pods(cp, ns)

    op.kill()  # SIGKILL while "first" is Reconstructing and "second" is Queued
    time.sleep(1.0)
    assert _phase(get_job(cp, ns, "first")) in ("Reconstructing",)
    assert _phase(get_job(cp, ns, "second")) == "Queued"
    op.start()

    for name in ("first", "second"):
        job = wait_phase(cp, ns, name, "Complete", "Failed", timeout=180, operator=op)
        assert _phase(job) == "Complete", job["status"]
    pods = sfm_pods(cp, ns)
    uids = {get_job(cp, ns, n)["metadata"]["uid"] for n in ("first", "second")}
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(f"sfm-{u}" for u in uids)
    first_pod = next(p for p in pods if p["metadata"]["name"] == pod_before["metadata"]["name"])
    assert first_pod["metadata"]["uid"] == pod_before["metadata"]["uid"], "the running pod was replaced"
    ran = [name for name, _, _ in node_agent.history if name.startswith(f"{ns}/")]
    assert sorted(ran) == sorted(f"{ns}/{p['metadata']['name']}" for p in pods), ran  # each ran exactly once


def test_queue_runs_five_jobs_one_at_a_time_in_creation_order(
    control_plane, namespace, data_volume, start_operator, node_agent, scene_uploads
):
    cp, ns = control_plane, namespace
    op = start_operator(sfm_concurrency="1", **SLOW_POD)
    names = [f"job-{i}" for i in range(5)]
    dirs = [data_volume.new_job(scene_uploads, name) for name in names]
    for name, d in zip(names, dirs, strict=True):
        create(cp, ns, sharpjob(name, d, len(scene_uploads)))

    # While the first runs, the other four wait with positions 0..3 in creation order.
    def positions():
        return [get_job(cp, ns, n).get("status", {}).get("queuePosition") for n in names[1:]]

    wait_phase(cp, ns, names[0], "Reconstructing", timeout=30, operator=op)
    deadline = time.monotonic() + 30
    while positions() != [0, 1, 2, 3] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert positions() == [0, 1, 2, 3], op.log()
    assert [_phase(get_job(cp, ns, n)) for n in names] == ["Reconstructing"] + ["Queued"] * 4
    assert "sharpml_sfm_queue_depth 4.0" in op.metrics()

    for name in names:
        job = wait_phase(cp, ns, name, "Complete", "Failed", timeout=240, operator=op)
        assert _phase(job) == "Complete", job["status"]

    uid_of = {n: get_job(cp, ns, n)["metadata"]["uid"] for n in names}
    runs = {name: (start, end) for name, start, end in node_agent.history if name.startswith(f"{ns}/")}
    order = [runs[f"{ns}/sfm-{uid_of[n]}"] for n in names]
    assert [s for s, _ in order] == sorted(s for s, _ in order), "not in creation order"
    for (_, end), (start, _) in itertools.pairwise(order):
        assert start >= end, "two SfM pods ran at once with concurrency 1"
    assert len(sfm_pods(cp, ns)) == 5


def test_a_pod_created_before_a_crash_is_adopted_not_duplicated(control_plane, namespace, data_volume,
                                                                start_operator, scene_uploads):  # fmt: skip
    """The operator died after creating the SfM pod but before recording it in the job's status."""
    from sharpml_operator.podspec import sfm_pod
    from sharpml_operator.settings import Settings

    from sharpml.contract import JobSpec

    cp, ns = control_plane, namespace
    op = start_operator()
    op.kill()
    job_dir = data_volume.new_job(scene_uploads, "orphan")
    create(cp, ns, sharpjob("orphan", job_dir, len(scene_uploads)))
    job = get_job(cp, ns, "orphan")
    pod = sfm_pod(
        job_name="orphan", job_uid=job["metadata"]["uid"], namespace=ns, spec=JobSpec.read(job["spec"]),
        job_dir=job_dir,
        settings=Settings.from_env(op.env),
    )  # fmt: skip
    cp.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(pod))
    (before,) = sfm_pods(cp, ns)

    op.start()
    done = wait_phase(cp, ns, "orphan", "Complete", "Failed", timeout=180, operator=op)
    assert done["status"]["phase"] == "Complete", done["status"]
    (after,) = sfm_pods(cp, ns)
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert "adopted" in " ".join(e["message"] for e in events_for(cp, ns, "orphan"))
