"""Issue 13: a job owns only its own directory, claims only the photos it has, and directories whose
SharpJob is gone are swept — never one whose SharpJob exists. Against the development control plane,
the real `sharpml-operator` process and real directories."""

from __future__ import annotations

import json
import os
import time
import uuid

import kubernetes
import pytest
from sharpml_operator import orphans

from tests.operator.conftest import create, sharpjob
from tests.operator.test_failures import _failed

pytestmark = [pytest.mark.cluster, pytest.mark.podman]


def test_image_count_must_match_what_intake_stored(
    control_plane, namespace, data_volume, start_operator, scene_uploads
):
    """imageCount may not claim 100 photos for an 8-photo directory: Failed with the reason, no pod."""
    op = start_operator()
    job_dir = data_volume.new_job(scene_uploads, "liar")
    create(control_plane, namespace, sharpjob("liar", job_dir, 100))
    status, cond = _failed(control_plane, namespace, "liar", op)
    assert cond["reason"] == "ImageCountMismatch", status
    assert f"imageCount is 100, but intake.json records {len(scene_uploads)} photos" in status["message"]


def test_another_jobs_directory_is_refused_by_the_apiserver(
    control_plane, namespace, data_volume, sharpjob_crd
):
    """The CEL rule: jobDir must be jobs/<metadata.name>, so deleting one SharpJob can never delete
    another's photos (the operator checks the same for SharpJobs from before the rule)."""
    victim = str(uuid.uuid4())
    out = control_plane.kubectl(
        "create", "-n", namespace, "-f", "-",
        input=json.dumps(sharpjob("thief", f"jobs/{victim}", 8)), check=False,
    )  # fmt: skip
    assert out.returncode != 0 and "must be jobs/<metadata.name>" in out.stderr, out.stderr
    create(control_plane, namespace, sharpjob(victim, f"jobs/{victim}", 8))  # its own: accepted


def _aged(path, seconds: float) -> None:
    then = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then), follow_symlinks=False)


def test_job_directories_without_a_sharpjob_are_swept_at_start_up(
    control_plane, namespace, data_volume, start_operator, scene_uploads
):
    """Deleted while no operator ran: its directory goes once the grace period has passed; one whose
    SharpJob exists stays, however old, and so do a young one, staging and non-job directories."""
    jobs = data_volume.root / "jobs"
    orphan, owned, young = (str(uuid.uuid4()) for _ in range(3))
    for name in (orphan, owned, young):
        data_volume.new_job(scene_uploads, name)
    (jobs / ".incoming-x").mkdir()
    (jobs / "not-a-job").mkdir()
    # `owned` has a SharpJob (cancelled, so it rests in Cancelled and keeps its directory).
    create(control_plane, namespace, sharpjob(owned, f"jobs/{owned}", len(scene_uploads), cancel=True))
    for name in (orphan, owned, ".incoming-x", "not-a-job"):
        _aged(jobs / name, 7200)

    op = start_operator(orphan_grace_seconds="3600")
    deadline = time.monotonic() + 60
    while (jobs / orphan).exists():
        assert time.monotonic() < deadline, f"the orphaned directory was not swept:\n{op.log()}"
        time.sleep(0.2)
    assert sorted(p.name for p in jobs.iterdir()) == sorted([owned, young, ".incoming-x", "not-a-job"])
    assert "no SharpJob has owned it" in op.log()


def test_sweep_keeps_everything_when_sharpjobs_cannot_be_listed(
    control_plane, namespace, data_volume, tmp_path
):
    """The sweep lists SharpJobs from the real apiserver after choosing candidates; if that fails it
    removes nothing. A SharpJob in the namespace keeps its directory even though it is old."""
    kubernetes.config.load_kube_config(config_file=str(control_plane.kubeconfig))
    jobs = data_volume.root / "jobs"
    kept, gone = str(uuid.uuid4()), str(uuid.uuid4())
    for name in (kept, gone):
        (jobs / name / "images").mkdir(parents=True)
        _aged(jobs / name, 7200)
    create(control_plane, namespace, sharpjob(kept, f"jobs/{kept}", 8))

    def failing() -> list:
        raise kubernetes.client.exceptions.ApiException(status=503, reason="apiserver unavailable")

    with pytest.raises(kubernetes.client.exceptions.ApiException):
        orphans.sweep(data_volume.root, 3600, failing)
    assert sorted(p.name for p in jobs.iterdir()) == sorted([kept, gone])

    removed = orphans.sweep(data_volume.root, 3600, lambda: orphans.list_sharpjobs([namespace]))
    assert removed == [gone] and sorted(p.name for p in jobs.iterdir()) == [kept]
