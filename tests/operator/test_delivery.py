"""The Delivering stage on the development control plane: an operator SIGKILLed while a job is Delivering
(its backup retrying against an S3 endpoint that refuses connections) is replaced by one with the real S3
server (versitygw); the job is delivered once — one Delivering, one Complete, one artifact in splats/, no
partial file — and backed up, its metadata archived. (The whole path with training is in
test_training.py; the preview without S3 in test_end_to_end.py.)"""

from __future__ import annotations

import hashlib
import socket
from typing import Any

import pytest

from tests.operator.conftest import create, events_for, sharpjob, wait_for, wait_phase


def _refused_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.cluster
@pytest.mark.podman
@pytest.mark.slow
@pytest.mark.s3
def test_an_operator_killed_while_delivering_resumes_and_delivers_once(
    control_plane, namespace, data_volume, start_operator, scene_uploads, s3_server
):
    bucket = f"deliver-{namespace}"[:63]
    dead = {
        "SHARPML_S3_ENDPOINT": _refused_endpoint(),
        "SHARPML_S3_ACCESS_KEY_ID": "k",
        "SHARPML_S3_SECRET_ACCESS_KEY": "s",
        "SHARPML_ARTIFACT_BACKUP_TIMEOUT_SECONDS": "3600",
    }
    op = start_operator(env=dead)
    job_dir = data_volume.new_job(scene_uploads, "resumed")
    create(control_plane, namespace, sharpjob("resumed", job_dir, len(scene_uploads)))

    def backing_off(job: dict[str, Any]) -> bool:
        backup = (job.get("status", {}).get("outputs") or {}).get("backup") or {}
        return job.get("status", {}).get("phase") == "Failed" or backup.get("state") == "Pending"

    job = wait_for(control_plane, namespace, "resumed", backing_off, timeout=240, what="backup", operator=op)
    status = job["status"]
    assert status["phase"] == "Delivering", status
    recorded = status["outputs"]["artifacts"]
    assert "storage unavailable" in status["outputs"]["backup"]["lastError"]
    op.kill()

    op = start_operator(env={**s3_server.env(), "SHARPML_S3_BUCKET": bucket})
    job = wait_phase(control_plane, namespace, "resumed", "Complete", "Failed", timeout=60, operator=op)
    status = job["status"]
    assert status["phase"] == "Complete", status
    outputs = status["outputs"]
    assert outputs["backup"]["state"] == "Done" and outputs["source"] == "preview"
    # The files were not written again: the recorded delivery stands, and the backup is its bytes.
    assert [{k: v for k, v in a.items() if k != "s3Key"} for a in outputs["artifacts"]] == recorded
    for art in outputs["artifacts"]:
        local = (data_volume.root / art["path"]).read_bytes()
        backed = (s3_server.data_dir / bucket / art["s3Key"]).read_bytes()
        assert hashlib.sha256(local).hexdigest() == hashlib.sha256(backed).hexdigest() == art["sha256"]
        assert art["s3Key"] == f"sharpml/artifacts/resumed/{art['file']}"
    assert [a["file"] for a in outputs["artifacts"]] == ["scene.splat", "scene.spz"]
    assert sorted(p.name for p in (data_volume.root / "splats").iterdir()) == ["resumed.splat", "resumed.spz"]
    reasons = [e["reason"] for e in events_for(control_plane, namespace, "resumed")]
    assert reasons.count("Delivering") == 1 and reasons.count("Complete") == 1, reasons
    assert reasons.index("BackupRetry") < reasons.index("Complete"), reasons
    # The new operator also wrote today's metadata archive (at start-up), with this job in it.
    archives = list((s3_server.data_dir / bucket / "sharpml" / "archive").glob("jobs-*.jsonl"))
    assert len(archives) == 1 and '"name":"resumed"' in archives[0].read_text()
