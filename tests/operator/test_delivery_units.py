"""The Delivering stage without a cluster: the artifact checks, the atomic symlink-proof copy, the step
sequence (and a step repeated after a crash), the backup to the real S3 server (versitygw) and its failures.
The same stage on the development control plane is in test_delivery.py."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import pytest
from sharpml_operator.job import Job
from sharpml_operator.pipeline import Pipeline
from sharpml_operator.settings import Settings
from sharpml_operator.snapshot import Snapshot
from sharpml_operator.stages import DeliveryStage
from sharpml_operator.stages.delivery import (
    DeliveryError,
    artifact_sources,
    expires_at,
    ply_gaussians,
    write_artifact,
)

from sharpml.contract import JobSpec, JobStatus, Phase, StatusPatch
from sharpml.contract.delivery import ARTIFACTS
from sharpml.layout import JobDir
from sharpml.storage import S3Settings, Storage
from tests.storage.conftest import storage_for


class Recorded(Job):
    """A job whose events are kept (kopf.event needs a handler's context)."""

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.body.append((reason, warning))


def _job(data: Path, status: dict[str, Any], events: list, **spec: Any) -> Recorded:
    meta = {"uid": "u-1", "name": "chair", "namespace": "ns", "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z"}  # fmt: skip
    full = {"owner": "a", "source": {"upload": {"jobDir": "jobs/chair", "imageCount": 5}}, **spec}
    return Recorded(events, meta, JobSpec.read(full), JobStatus.read(status), StatusPatch(status))


def _ply(n: int, props: int = 14) -> bytes:
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n"
    header += "".join(f"property float p{i}\n" for i in range(props)) + "end_header\n"
    return header.encode() + struct.pack(f"<{n * props}f", *range(n * props))


def _spz(n: int) -> bytes:
    """An SPZ file of ``n`` gaussians, SH degree 0 (the layout :mod:`sharpml.spz` writes)."""
    return gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, 2, n, 0, 12, 0, 0) + os.urandom(19 * n))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    job = JobDir(tmp_path / "jobs" / "chair")
    job.colmap.mkdir(parents=True)
    job.output.mkdir()
    job.preview_splat.write_bytes(os.urandom(32 * 50))
    job.trained_splat.write_bytes(os.urandom(32 * 40))
    job.trained_ply.write_bytes(_ply(40))
    job.preview_spz.write_bytes(_spz(50))
    job.trained_spz.write_bytes(_spz(40))
    return tmp_path


def _settings(data: Path, **env: str) -> Settings:
    return Settings.from_env({"SHARPML_DATA_DIR": str(data), "SHARPML_TRAINING_BACKEND": "none", **env})


# --- pure functions ---------------------------------------------------------------------------------------


def test_ply_gaussians_reads_the_header_and_checks_the_size() -> None:
    ply = _ply(7)
    assert ply_gaussians(ply, len(ply)) == 7
    with pytest.raises(DeliveryError, match="need 392 bytes, not 388"):
        ply_gaussians(ply, len(ply) - 4)
    with pytest.raises(DeliveryError, match="only float properties"):
        ply_gaussians(ply.replace(b"property float p3", b"property uchar p3"), len(ply))
    with pytest.raises(DeliveryError, match="binary little-endian"):
        ply_gaussians(ply.replace(b"binary_little_endian", b"ascii"), len(ply))
    with pytest.raises(DeliveryError, match="no end_header"):
        ply_gaussians(b"ply\n", 4)


def test_the_preview_has_no_ply_and_a_trained_job_delivers_every_format(data: Path) -> None:
    job = JobDir(data / "jobs" / "chair")
    assert list(artifact_sources(job, "preview")) == ["splat", "spz"]
    assert list(artifact_sources(job, "trained")) == ["splat", "ply", "spz"]  # ARTIFACTS' order
    assert expires_at("2026-12-02T10:00:00Z", 30 * 86400) == "2027-01-01T10:00:00Z"


def test_a_job_from_pods_older_than_spz_is_delivered_without_it(data: Path) -> None:
    job = JobDir(data / "jobs" / "chair")
    job.preview_spz.unlink()
    job.trained_spz.unlink()
    assert list(artifact_sources(job, "preview")) == ["splat"]
    assert list(artifact_sources(job, "trained")) == ["splat", "ply"]
    job.trained_spz.symlink_to(data / "elsewhere.spz")  # dangling, yet there: offered, then refused
    assert artifact_sources(job, "trained")["spz"] == job.trained_spz
    with pytest.raises(DeliveryError, match="symlink"):
        write_artifact(data, "chair", ARTIFACTS["spz"], job.trained_spz, 10**6)


@pytest.mark.parametrize(
    ("mangle", "error"),
    [
        (lambda b: b[:-9], "cut short"),
        (lambda b: b + b"junk", "data after the end"),
        (lambda b: b + gzip.compress(b"more"), "data after the end"),
        (lambda b: gzip.compress(gzip.decompress(b)[:-1]), "not the 776 its header needs"),
        (lambda b: gzip.compress(gzip.decompress(b) + b"x"), "longer than the 776 bytes"),
        (lambda b: gzip.compress(b"GNSP" + gzip.decompress(b)[4:]), "not an SPZ file"),
        (lambda b: gzip.compress(gzip.decompress(b)[:4] + b"\3" + gzip.decompress(b)[5:]), "SPZ version 3"),
        (lambda b: b"\x1f\x8b" + b"\0" * 40, "not a valid gzip stream"),
        (lambda b: b"PK" + b, "not a valid gzip stream"),
    ],
)
def test_a_malformed_spz_is_refused_and_leaves_nothing(data: Path, mangle: Any, error: str) -> None:
    src = data / "jobs/chair/output/scene.spz"
    src.write_bytes(mangle(_spz(40)))
    with pytest.raises(DeliveryError, match=error):
        write_artifact(data, "chair", ARTIFACTS["spz"], src, 10**6)
    assert os.listdir(data / "splats") == []


def test_an_spz_counting_more_than_the_splat_is_refused_at_its_header(data: Path) -> None:
    """The header's count bounds the inflation, so it is held to what the .splat holds (or the cap)
    before anything is inflated: a 4-billion-gaussian header fails at once, not after hours."""
    import zlib

    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = z.compress(struct.pack("<IIIBBBB", 0x5053474E, 2, 2**32 - 1, 3, 12, 0, 0))
    bomb += b"".join(z.compress(bytes(1 << 20)) for _ in range(64)) + z.flush()
    src = data / "jobs/chair/output/scene.spz"
    src.write_bytes(bomb)
    with pytest.raises(DeliveryError, match="4294967295 gaussians, more than the 40 expected"):
        write_artifact(data, "chair", ARTIFACTS["spz"], src, 10**7, max_gaussians=40)
    src.write_bytes(_spz(41))
    stage = DeliveryStage(_settings(data))
    job = _job(data, {"phase": "Delivering", "outputs": {"source": "trained"}}, [])
    stage.observe(job, Snapshot())
    assert job.phase is Phase.FAILED and "41 gaussians, more than the 40 expected" in job.patch["message"]
    assert os.listdir(data / "splats") == []  # the splat and PLY written before it are not kept either


def test_an_spz_bomb_is_refused_without_inflating_it(data: Path) -> None:
    """A small file whose header promises 40 gaussians and inflates to 1 GiB: refused once the stream
    passes the 776 bytes the header allows, having inflated at most a step beyond."""
    import zlib

    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = z.compress(struct.pack("<IIIBBBB", 0x5053474E, 2, 40, 0, 12, 0, 0))
    zeros = bytes(1 << 20)
    bomb += b"".join(z.compress(zeros) for _ in range(1024)) + z.flush()
    assert len(bomb) < 2 * 1024**2
    src = data / "jobs/chair/output/scene.spz"
    src.write_bytes(bomb)
    with pytest.raises(DeliveryError, match="longer than the 776 bytes"):
        write_artifact(data, "chair", ARTIFACTS["spz"], src, 10**7)


def test_write_artifact_is_atomic_hashed_and_symlink_proof(data: Path, tmp_path: Path) -> None:
    src = data / "jobs/chair/output/scene.splat"
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    (data / "splats").mkdir()
    (data / "splats" / "chair.splat").symlink_to(victim)  # planted where the artifact goes
    d = write_artifact(data, "chair", ARTIFACTS["splat"], src, 10**6)
    out = data / "splats" / "chair.splat"
    assert not out.is_symlink() and out.read_bytes() == src.read_bytes()
    assert victim.read_bytes() == b"not yours"  # the link was replaced, never followed
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert d.record() == {
        "format": "splat",
        "file": "scene.splat",
        "bytes": 1280,
        "sha256": digest,
        "path": "splats/chair.splat",
    }
    assert d.gaussians == 40
    assert os.listdir(data / "splats") == ["chair.splat"]  # no .part left behind


def test_write_artifact_refuses_bad_sources_and_leaves_nothing(data: Path) -> None:
    bad = data / "jobs/chair/colmap/preview.splat"
    bad.write_bytes(b"x" * 33)  # not whole 32-byte records
    with pytest.raises(DeliveryError, match="not a whole number"):
        write_artifact(data, "chair", ARTIFACTS["splat"], bad, 10**6)
    link = data / "jobs/chair/colmap/link.splat"
    link.symlink_to(data / "jobs/chair/output/scene.splat")
    with pytest.raises(DeliveryError, match="symlink"):
        write_artifact(data, "chair", ARTIFACTS["splat"], link, 10**6)
    with pytest.raises(DeliveryError, match="at most 100 bytes"):
        write_artifact(data, "chair", ARTIFACTS["splat"], data / "jobs/chair/output/scene.splat", 100)
    assert os.listdir(data / "splats") == []


# --- the stage in the pipeline ---------------------------------------------------------------------------


def test_a_preview_job_is_delivered_then_complete_once_even_when_a_step_repeats(data: Path) -> None:
    pipeline = Pipeline(_settings(data))
    events: list = []
    job = _job(
        data, {"phase": "Reconstructed", "timestamps": {"reconstructedAt": "2026-01-01T00:01:00Z"}}, events
    )
    pipeline.step(job, Snapshot())
    assert job.phase is Phase.DELIVERING and job.patch["outputs"] == {"source": "preview"}
    entered = dict(job.patch)

    # The next step's status was lost (the operator was killed): the step runs again from Delivering twice.
    for _ in range(2):
        job = _job(data, {**entered}, events)
        pipeline.step(job, Snapshot())
    status = job.patch.view()
    assert status["phase"] == "Complete" and status["progress"] == {"percent": 100, "stage": "complete"}
    outputs = status["outputs"]
    assert outputs["source"] == "preview" and outputs["gaussians"] == 50 and "backup" not in outputs
    art, spz = outputs["artifacts"]
    assert spz["format"] == "spz" and spz["file"] == "scene.spz"
    local = data / art["path"]
    assert art["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest() and art["bytes"] == 1600
    assert local.read_bytes() == (data / "jobs/chair/colmap/preview.splat").read_bytes()
    assert expires_at(outputs["deliveredAt"], 30 * 86400) == outputs["expiresAt"]
    assert abs(local.stat().st_mtime - _epoch(outputs["deliveredAt"])) < 1  # the sweep's clock
    conds = {c["type"]: c["status"] for c in status["conditions"]}
    assert conds["Ready"] == "True" and conds["Delivered"] == "True"
    assert "finishedAt" in status["timestamps"]
    # Delivering once, Complete once per run of the step (two runs here, as after a crash; kopf persisted
    # neither, so the job's own record has exactly one Complete).
    assert [r for r, _ in events] == ["Delivering", "Complete", "Complete"]
    assert sorted(os.listdir(data / "splats")) == ["chair.splat", "chair.spz"]


def test_a_trained_job_delivers_splat_ply_and_spz(data: Path) -> None:
    pipeline = Pipeline(_settings(data))
    events: list = []
    status = {
        "phase": "Trained",
        "timestamps": {"trainedAt": "2026-01-01T00:01:00Z"},
        "training": {"gaussians": 40},
    }
    job = _job(data, status, events, training={"backend": "runpod"})
    pipeline.step(job, Snapshot())
    job = _job(data, job.patch.view(), events, training={"backend": "runpod"})
    pipeline.step(job, Snapshot())
    out = job.patch.view()["outputs"]
    assert job.phase is Phase.COMPLETE and out["source"] == "trained" and out["gaussians"] == 40
    assert [a["format"] for a in out["artifacts"]] == ["splat", "ply", "spz"]
    for fmt, name in (("ply", "point_cloud.ply"), ("spz", "scene.spz")):
        assert (data / f"splats/chair.{fmt}").read_bytes() == (
            data / f"jobs/chair/output/{name}"
        ).read_bytes()


@pytest.mark.parametrize("artifact", ["point_cloud.ply", "scene.spz"])
def test_a_malformed_result_fails_the_job(data: Path, artifact: str) -> None:
    bad = _ply(39) if artifact.endswith(".ply") else _spz(39)  # disagrees with the splat's 40
    (data / "jobs/chair/output" / artifact).write_bytes(bad)
    stage = DeliveryStage(_settings(data))
    job = _job(data, {"phase": "Delivering", "outputs": {"source": "trained"}}, [])
    stage.observe(job, Snapshot())
    assert job.phase is Phase.FAILED and "disagree on the number of gaussians" in job.patch["message"]


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


# --- backup on the real S3 server -----------------------------------------------------------------------


@pytest.mark.s3
def test_backup_before_complete_records_each_key(data: Path, s3_server: Any) -> None:
    storage = storage_for(s3_server)
    stage = DeliveryStage(_settings(data), storage=storage)
    storage.ensure_bucket()
    job = _job(
        data, {"phase": "Delivering", "outputs": {"source": "trained"}, "training": {"gaussians": 40}}, []
    )
    stage.observe(job, Snapshot())
    out = job.patch.view()["outputs"]
    assert job.phase is Phase.COMPLETE and out["backup"]["state"] == "Done"
    for a in out["artifacts"]:
        assert a["s3Key"] == f"sharpml/artifacts/chair/{a['file']}"
        got = s3_server.data_dir / storage.bucket / a["s3Key"]
        assert hashlib.sha256(got.read_bytes()).hexdigest() == a["sha256"]
    assert "backed up to S3" in job.patch["message"]


@pytest.mark.s3
def test_an_unreachable_s3_backs_off_then_is_given_up_never_failing_the_job(data: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: connection refused, a transient failure
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"SHARPML_S3_ENDPOINT": f"http://127.0.0.1:{port}", "SHARPML_S3_ACCESS_KEY_ID": "k",
           "SHARPML_S3_SECRET_ACCESS_KEY": "s"}  # fmt: skip
    dead = Storage.from_settings(S3Settings.from_env(env), max_attempts=1, connect_timeout=1)
    stage = DeliveryStage(_settings(data, SHARPML_ARTIFACT_BACKUP_TIMEOUT_SECONDS="3600"), storage=dead)
    events: list = []
    job = _job(data, {"phase": "Delivering", "outputs": {"source": "preview"},
                      "timestamps": {"deliveryStartedAt": "2026-01-01T00:00:00Z"}}, events)  # fmt: skip
    job.patch.current["timestamps"] = {"deliveryStartedAt": _now()}
    stage.observe(job, Snapshot())
    out = job.patch.view()["outputs"]
    assert (
        job.phase is Phase.DELIVERING and out["backup"]["state"] == "Pending" and out["backup"]["errors"] == 1
    )
    assert "storage unavailable" in out["backup"]["lastError"] and out["artifacts"][0].get("s3Key") is None
    assert events == [("BackupRetry", True)]
    # Backing off: a step before retryAt does nothing.
    again = _job(data, job.patch.view(), events)
    stage.observe(again, Snapshot())
    assert dict(again.patch) == {}
    # Past the backup deadline: given up, the job completes with its local copy.
    stage = DeliveryStage(_settings(data, SHARPML_ARTIFACT_BACKUP_TIMEOUT_SECONDS="0"), storage=dead)
    late = {**job.patch.view(), "outputs": {**out, "backup": {**out["backup"], "retryAt": None}}}
    job = _job(data, late, events)
    stage.observe(job, Snapshot())
    out = job.patch.view()["outputs"]
    assert job.phase is Phase.COMPLETE and out["backup"]["state"] == "Failed"
    assert [r for r, _ in events] == ["BackupRetry", "BackupFailed", "Complete"]
    assert (data / "splats/chair.splat").is_file()


def _now() -> str:
    from sharpml.contract.status import now_rfc3339

    return now_rfc3339()
