"""The chart's images (images/api, images/operator) as hack/build-images.sh builds them (cached by content):
the fixed non-root UID, no pip or compiler in the final stage, and only that component's dependencies."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.chart.conftest import REPO

pytestmark = pytest.mark.podman
ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "hack/containers.conf")}


@pytest.fixture(scope="module")
def images() -> dict[str, str]:
    if not (shutil.which("podman") and shutil.which("runc")):
        pytest.fail("podman and runc are needed: apt-get install podman runc mmdebstrap", pytrace=False)
    proc = subprocess.run(
        ["bash", str(REPO / "hack/build-images.sh"), "api", "operator"],
        capture_output=True,
        text=True,
        timeout=1800,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    api, operator = proc.stdout.split()
    return {"api": api, "operator": operator}


PROBE = """
import importlib.util, os, shutil
mods = [
    "kopf", "kubernetes", "prometheus_client", "fastapi", "PIL", "magic", "numpy", "pycolmap", "torch",
    "runpod", "boto3",
]
print(os.getuid(), os.getgid(), *(m for m in mods if importlib.util.find_spec(m)), sep=",")
print(",".join(t for t in ("pip", "pip3", "gcc", "cc", "make") if shutil.which(t)))
"""


def probe(image: str) -> tuple[list[str], list[str]]:
    proc = subprocess.run(
        [
            "podman",
            "run",
            "--rm",
            "--read-only",
            "--network=none",
            "--cap-drop=ALL",
            image,
            "python",
            "-c",
            PROBE,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )
    assert proc.returncode == 0, proc.stderr
    found, tools = proc.stdout.splitlines()
    return found.split(","), [t for t in tools.split(",") if t]


@pytest.mark.parametrize(
    "component, wanted, unwanted",
    [
        (
            "api",
            # boto3: presigned URLs of the artifacts' S3 backup (downloads redirect to them).
            {"fastapi", "kubernetes", "PIL", "magic", "prometheus_client", "boto3"},
            {"kopf", "numpy", "pycolmap", "torch"},
        ),
        (
            "operator",
            # The runpod SDK (the Training stage's client) brings fastapi with it; nothing of ours uses it.
            {"kopf", "kubernetes", "prometheus_client", "runpod", "boto3"},
            {"PIL", "numpy", "pycolmap", "torch"},
        ),
    ],
)
def test_image_holds_only_its_component(images, component, wanted, unwanted) -> None:
    found, tools = probe(images[component])
    uid, gid, *modules = found
    assert (uid, gid) == ("10001", "10001")
    assert wanted <= set(modules) and not unwanted & set(modules), modules
    assert tools == [], f"build tools in the final stage: {tools}"


def run(image: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["podman", "run", "--rm", "--read-only", "--network=none", image, *command],
        capture_output=True,
        text=True,
        timeout=120,
        env=ENV,
    )


def test_entry_points_start_read_only(images) -> None:
    operator = run(images["operator"], "sharpml-operator", "--help")
    assert operator.returncode == 0 and "--leader-election" in operator.stdout, operator.stderr
    # The API gets past its imports and settings to the cluster: outside a pod it has no service account.
    api = run(images["api"], "sharpml-api")
    assert api.returncode != 0 and "Service host/port is not set" in api.stderr, api.stderr


def test_trainer_image_runs_both_entry_points_read_only(trainer_image) -> None:
    """The trainer image (CPU base here): the non-root UID, torch/gsplat/pycolmap/runpod and none of the
    cluster's clients, no pip or compiler; the training pod's command and the RunPod worker both start."""
    found, tools = probe(trainer_image)
    uid, gid, *modules = found
    assert (uid, gid) == ("10001", "10001")
    assert {"torch", "runpod", "pycolmap", "numpy"} <= set(modules), modules
    assert not {"kopf", "kubernetes", "prometheus_client"} & set(modules), modules
    assert tools == [], f"build tools in the final image: {tools}"
    pod = run(trainer_image, "python", "-m", "sharpml.train", "--help")
    assert pod.returncode == 0 and "--max-gaussians" in pod.stdout, pod.stderr
    # The worker's handler module imports (torch, gsplat and the SDK) without a writable root.
    worker = run(
        trainer_image, "python", "-c", "import sharpml.train.runpod_worker as w, gsplat; print(w.handler)"
    )
    assert worker.returncode == 0 and "function handler" in worker.stdout, worker.stderr
