"""The operator needs only its own extra: it imports and runs its control logic without numpy,
pycolmap, scipy or Pillow (the operator's image carries no COLMAP).

A virtualenv with exactly the `operator` extra's requirements (hack/requirements.py; cached under
~/.cache/sharpml/venvs, keyed by those requirements) runs the operator's code from this checkout. The
script below drives the real Pipeline: a Reconstructing job whose SfM pod succeeded is read back from
the files the pod wrote and moved to Reconstructed, then delivered (Delivering, the preview in splats/)
and Complete; a queued job gets its position; the storage module presigns a conditional PUT.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))
from requirements import requirements  # noqa: E402

# tqdm is not on the list: the runpod SDK (the training stage's RunPod client) requires it through
# tqdm-loggable.
FORBIDDEN = ("numpy", "pycolmap", "scipy", "PIL", "pillow_heif", "magic", "plyfile")

SCRIPT = r"""
import json, sys, tempfile
from pathlib import Path
import importlib.util

for name in FORBIDDEN:
    assert importlib.util.find_spec(name) is None, f"{name} is installed: the environment is not minimal"

import sharpml_operator.handlers  # registers the kopf handlers, reads the settings
from sharpml.contract import Phase, SfmResult
from sharpml_operator.job import Job
from sharpml_operator.nodes import NodeView
from sharpml_operator.pipeline import Pipeline
from sharpml_operator.settings import Settings
from sharpml_operator.slots import QueuedJob
from sharpml_operator.snapshot import Snapshot

class Recorded(Job):
    events = []
    def event(self, reason, message, *, warning=False):
        self.events.append(reason)

data = Path(tempfile.mkdtemp())
colmap = data / "jobs" / "j1" / "colmap"
colmap.mkdir(parents=True)
SfmResult(ok=True, reason=None, total=8, registered=8, points=900, mean_reprojection_error=0.5).write(
    colmap / "result.json")
(colmap / "preview.splat").write_bytes(bytes(32 * 900))
settings = Settings.from_env({"SHARPML_DATA_DIR": str(data), "SHARPML_TRAINING_BACKEND": "none",
                              "SHARPML_S3_ENDPOINT": "https://s3.example:9000",
                              "SHARPML_S3_ACCESS_KEY_ID": "id", "SHARPML_S3_SECRET_ACCESS_KEY": "secret",
                              "SHARPML_ARTIFACT_BACKUP": "off"})
pipeline = Pipeline(settings)

# The object store's client (boto3) comes with the extra; presigning is local, so no server is needed.
from sharpml.storage import IF_NONE_MATCH, Storage
claim = Storage.from_settings(settings.s3).presign_put("claims/r1", 60, if_none_match=True)
assert claim.startswith("https://s3.example:9000/sharpml/sharpml/claims/r1?"), claim
assert "if-none-match" in claim and IF_NONE_MATCH == {"If-None-Match": "*"}, claim

def job(name, phase, **status):
    meta = {"uid": name, "name": name, "namespace": "ns", "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z"}
    spec = {"owner": "a", "source": {"upload": {"jobDir": f"jobs/{name}", "imageCount": 8}}}
    return Recorded.from_kopf({}, spec, {"phase": phase, **status}, meta)

pod = {"metadata": {"name": "sfm-j1"}, "status": {"phase": "Succeeded", "containerStatuses": [
    {"state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]}}
jobs = [QueuedJob("j1", "ns", "j1", Phase.RECONSTRUCTING, "2026-01-01T00:00:00Z", 1),
        QueuedJob("j2", "ns", "j2", Phase.QUEUED, "2026-01-01T00:00:01Z", 2),
        QueuedJob("j3", "ns", "j3", Phase.QUEUED, "2026-01-01T00:00:02Z", 3)]
snap = Snapshot(jobs, {("sfm", "j1"): [pod]})

j1 = job("j1", "Reconstructing", timestamps={"reconstructionStartedAt": "2026-01-01T00:00:05Z"})
pipeline.step(j1, snap)
assert j1.phase is Phase.RECONSTRUCTED, j1.patch
assert j1.patch["sfm"] == {"registeredImages": 8, "totalImages": 8, "points": 900,
                           "meanReprojectionError": 0.5}
j1 = job("j1", "Reconstructed")
pipeline.step(j1, snap)
assert j1.phase is Phase.DELIVERING, j1.patch
j1 = job("j1", "Delivering", **{k: v for k, v in j1.patch.items() if k != "phase"})
pipeline.step(j1, snap)
assert j1.phase is Phase.COMPLETE and "finishedAt" in j1.patch["timestamps"], j1.patch
assert (data / "splats" / "j1.splat").read_bytes() == (colmap / "preview.splat").read_bytes()

# j1's pod has finished, so the SfM node's one slot is free for j2; j3 waits behind it.
j3 = job("j3", "Queued")
pipeline.step(j3, Snapshot(jobs[1:], {}, {"mini": [NodeView("mini")]}))
assert j3.patch["queuePosition"] == 0, j3.patch
print(json.dumps({"events": Recorded.events, "modules": sorted(sys.modules)}))
"""


def _operator_venv(cache: Path) -> Path:
    reqs = requirements(["operator"])
    key = hashlib.sha256(f"{sys.version}\n{chr(10).join(reqs)}".encode()).hexdigest()[:16]
    env_dir = cache / f"operator-{key}"
    python = env_dir / "bin" / "python"
    if not (env_dir / ".complete").exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *reqs], check=True, timeout=600)
        (env_dir / ".complete").touch()
    return python


def test_operator_runs_with_only_its_extra_installed(tmp_path: Path) -> None:
    cache = Path(os.environ.get("SHARPML_CACHE", Path.home() / ".cache" / "sharpml")) / "venvs"
    python = _operator_venv(cache)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "operator")]),
        "SHARPML_METRICS_PORT": "0",
    }
    script = f"FORBIDDEN = {FORBIDDEN!r}\n{SCRIPT}"
    proc = subprocess.run([str(python), "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["events"] == ["SfmSucceeded", "Delivering", "Complete"]
    assert not {m.split(".")[0] for m in out["modules"]} & set(FORBIDDEN)
    assert "kopf" in out["modules"] and "sharpml_operator.stages.sfm" in out["modules"]
    assert "boto3" in out["modules"] and "sharpml.storage" in out["modules"]
