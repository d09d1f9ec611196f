"""What outlives a SharpJob, against the real S3 server (versitygw): local artifacts removed once backed up
and older than SHARPML_ARTIFACT_LOCAL_SECONDS, every copy at expiry, the daily metadata archive without
secrets, and logs. Time is passed in (``now``), and files are dated with ``os.utime``: no sleeps."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sharpml_operator import artifacts

from sharpml.storage import Storage
from tests.storage.conftest import storage_for

pytestmark = pytest.mark.s3

DAY = 86400.0
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


@pytest.fixture
def storage(s3_server: Any) -> Storage:
    """A fresh bucket on the session's S3 server."""
    store = storage_for(s3_server)
    store.ensure_bucket()
    return store


def _file(path: Path, data: bytes, age: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (NOW.timestamp() - age, NOW.timestamp() - age))
    return path


def _sweep(
    data: Path, storage: Storage | None, jobs: list[dict[str, Any]] | None = None, now: datetime = NOW
):
    return artifacts.sweep(
        data, storage, lambda: jobs or [], now,
        local_seconds=DAY, retention_seconds=30 * DAY, log_retention_seconds=30 * DAY,
    )  # fmt: skip


def test_local_copies_go_once_backed_up_and_everything_at_expiry(tmp_path: Path, storage: Storage) -> None:
    splats = tmp_path / "splats"
    fresh = _file(splats / "fresh.splat", b"f" * 32, 3600)  # backed up, but younger than a day: kept
    backed = _file(splats / "backed.splat", b"b" * 32, 2 * DAY)  # backed up, two days old: local copy goes
    alone = _file(splats / "alone.splat", b"a" * 32, 2 * DAY)  # never backed up: stays until expiry
    differs = _file(splats / "differs.ply", b"d" * 64, 2 * DAY)  # S3 holds another size: not a backup of it
    old = _file(splats / "old.splat", b"o" * 32, 31 * DAY)  # expired: goes, backed up or not
    part = _file(splats / ".x.splat.abc.part", b"p", 2 * 3600)  # a delivery killed mid-copy
    young_part = _file(splats / ".y.splat.abc.part", b"p", 60)  # a delivery under way
    foreign = _file(splats / "notes.txt", b"n", 60 * DAY)  # not ours: left alone
    victim = _file(tmp_path / "victim.splat", b"v" * 32, 60 * DAY)
    (splats / "link.splat").symlink_to(victim)
    for name, data in (("fresh", b"f" * 32), ("backed", b"b" * 32), ("old", b"o" * 32)):
        storage.put_bytes(f"artifacts/{name}/scene.splat", data)
    storage.put_bytes("artifacts/differs/scene.ply", b"d" * 10)

    swept = _sweep(tmp_path, storage)
    assert sorted(swept.local) == ["splats/.x.splat.abc.part", "splats/backed.splat", "splats/old.splat"]
    assert fresh.exists() and alone.exists() and differs.exists() and young_part.exists() and foreign.exists()
    assert victim.exists() and (splats / "link.splat").is_symlink()  # a link is never followed nor counted
    assert not backed.exists() and not old.exists() and not part.exists()
    # S3's copies are younger than 30 days (written just now): none expired yet.
    assert swept.s3 == [] and storage.exists("artifacts/backed/scene.splat")

    # 31 days on, every S3 artifact has expired; the local ones too.
    later = datetime.now(UTC) + timedelta(days=31)
    swept = _sweep(tmp_path, storage, now=later)
    assert sorted(swept.s3) == [
        "artifacts/backed/scene.splat", "artifacts/differs/scene.ply",
        "artifacts/fresh/scene.splat", "artifacts/old/scene.splat",
    ]  # fmt: skip
    assert not list(storage.list_objects("artifacts/"))
    assert sorted(swept.local) == [
        "splats/.y.splat.abc.part", "splats/alone.splat", "splats/differs.ply", "splats/fresh.splat"
    ]  # fmt: skip
    assert sorted(os.listdir(splats)) == ["link.splat", "notes.txt"]


def test_without_s3_local_copies_stay_until_expiry(tmp_path: Path) -> None:
    kept = _file(tmp_path / "splats" / "j.splat", b"j" * 32, 29 * DAY)
    gone = _file(tmp_path / "splats" / "k.splat", b"k" * 32, 30 * DAY)
    swept = _sweep(tmp_path, None)
    assert swept.local == ["splats/k.splat"] and kept.exists() and not gone.exists() and swept.s3 == []


def test_logs_are_pruned_after_their_retention(tmp_path: Path) -> None:
    old = _file(tmp_path / "logs" / "api" / "old.log", b"x", 31 * DAY)
    new = _file(tmp_path / "logs" / "new.log", b"x", 29 * DAY)
    assert _sweep(tmp_path, None).logs == ["logs/api/old.log"]
    assert not old.exists() and new.exists()


def _sharpjob(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "sharpml.com/v1alpha1",
        "kind": "SharpJob",
        "metadata": {
            "name": name, "namespace": "ns", "uid": f"uid-{name}", "generation": 1,
            "creationTimestamp": "2026-12-01T00:00:00Z", "labels": {"sharpml.com/owner": "x"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...token...}"},
            "managedFields": [{"manager": "kubectl"}],
        },
        "spec": {"owner": "acct", **spec},
        "status": {"phase": "Complete", "outputs": {"source": "preview"}, "kopf": {"progress": {}}},
    }  # fmt: skip


def test_the_daily_archive_is_written_once_without_secrets(storage: Storage, s3_server: Any) -> None:
    jobs = [
        _sharpjob("b", notify={"webhookURL": "https://u:pw@hooks.example:8443/in?token=s3cr3t#x",
                               "email": "a@example.com"}),
        _sharpjob("a"),
    ]  # fmt: skip
    calls: list[int] = []

    def listed() -> list[dict[str, Any]]:
        calls.append(1)
        return jobs

    assert artifacts.archive_if_missing(storage, NOW.date(), listed)
    assert not artifacts.archive_if_missing(storage, NOW.date(), listed)  # today's exists: not listed again
    assert calls == [1]
    raw = (s3_server.data_dir / storage.bucket / "sharpml" / "archive" / "jobs-2026-12-02.jsonl").read_text()
    assert "s3cr3t" not in raw and "pw@" not in raw and "token" not in raw
    lines = [json.loads(line) for line in raw.splitlines()]
    assert [r["metadata"]["name"] for r in lines] == ["a", "b"]
    b = lines[1]
    assert b["spec"]["notify"] == {"webhookURL": "https://hooks.example:8443/in", "email": "a@example.com"}
    assert set(b["metadata"]) == {"name", "namespace", "uid", "generation", "creationTimestamp", "labels"}
    assert b["status"] == {"phase": "Complete", "outputs": {"source": "preview"}}  # no kopf bookkeeping
    # The sweep writes the archive of the day it runs on, at start-up and then daily.
    swept_day = NOW + timedelta(days=1)
    artifacts.sweep(
        Path("/nonexistent"), storage, lambda: jobs, swept_day,
        local_seconds=DAY, retention_seconds=30 * DAY, log_retention_seconds=30 * DAY,
    )  # fmt: skip
    assert storage.exists("archive/jobs-2026-12-03.jsonl")
