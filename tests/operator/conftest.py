"""Fixtures for operator tests: the SfM image, the node agent, a data volume, and operator processes.

Everything is real: the development control plane (scheduler, PV binder, garbage collector, Pod
Security admission), the `sharpml-operator` console script as a separate process, and the SfM pod run
by podman from the project's image through the node agent (tests/operator/node_agent.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from sharpml.config import IntakeLimits
from sharpml.intake import Upload, ingest
from sharpml.layout import DataDir
from sharpml.synthetic import write_dataset
from tests.conftest import (
    REPO,
    SFM_NODE_LABELS,
    SFM_NODE_NAME,
    SFM_TAINT,
    TEST_NODE_LABEL,
    ControlPlane,
    SfmNode,
    _ensure_node,
)
from tests.operator.node_agent import NodeAgent, have_podman
from tests.operator.receivers import receivers, smtp_server  # noqa: F401 (fixtures of the notification tests)

OPERATOR = Path(sys.executable).parent / "sharpml-operator"
DATA_PVC = "sharpml-data"
N_PHOTOS = 8
VERBOSE = ["--verbose"] if os.environ.get("SHARPML_TEST_OPERATOR_VERBOSE") else []


@pytest.fixture(scope="session")
def sfm_image() -> str:
    """The SfM image built by the project's script (cached: a no-op when its inputs are unchanged)."""
    if not have_podman():
        pytest.fail("podman and runc are needed for operator tests: apt-get install podman runc mmdebstrap")
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "build-images.sh")], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        pytest.fail(f"hack/build-images.sh failed:\n{proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def node_agent(
    control_plane: ControlPlane, sfm_node: SfmNode, sfm_image: str, tmp_path_factory
) -> Iterator[NodeAgent]:
    agent = NodeAgent(control_plane.kubeconfig, sfm_node.name, tmp_path_factory.mktemp("node-agent")).start()
    yield agent
    agent.stop()


@pytest.fixture
def add_sfm_node(
    control_plane: ControlPlane, sfm_node: SfmNode, sfm_image: str, tmp_path: Path
) -> Iterator[Callable[..., NodeAgent]]:
    """``add_sfm_node(name, **labels)``: one more SfM node (the SfM labels and taint, plus ``labels``), Ready,
    with its own node agent; stopped and deleted (Node and Lease) after the test."""
    agents: list[NodeAgent] = []

    def add(name: str, **labels: str) -> NodeAgent:
        node_labels = {**SFM_NODE_LABELS, "kubernetes.io/hostname": name, TEST_NODE_LABEL: "true", **labels}
        _ensure_node(control_plane, name, node_labels, [SFM_TAINT])
        agent = NodeAgent(control_plane.kubeconfig, name, tmp_path / f"node-agent-{name}").start()
        agents.append(agent)
        return agent

    yield add
    for agent in agents:
        agent.stop()
        control_plane.kubectl("delete", "node", agent.node_name, "--ignore-not-found", check=False)
        control_plane.kubectl(
            "delete", "lease", agent.node_name, "-n", "kube-node-lease", "--ignore-not-found", check=False
        )


@pytest.fixture(scope="session")
def scene_uploads(tmp_path_factory: pytest.TempPathFactory) -> list[Upload]:
    """Eight 640x480 photos of the synthetic scene: reconstructs in a few seconds."""
    out = tmp_path_factory.mktemp("op-scene")
    write_dataset(out, N_PHOTOS, 640, 480, formats=("jpg",))
    photos = sorted(p for p in out.rglob("*.jpg"))
    assert len(photos) == N_PHOTOS, photos
    return [Upload(p.name, p) for p in photos]


@pytest.fixture(scope="session")
def noise_uploads(tmp_path_factory: pytest.TempPathFactory) -> list[Upload]:
    """Photos that share no structure: SfM places none of them (the quality gate rejects the job)."""
    from tests.core.conftest import noise_photos

    return [Upload(p.name, p) for p in noise_photos(tmp_path_factory.mktemp("op-noise"), 6)]


@dataclass
class DataVolume:
    """One test's shared data volume: a local PersistentVolume that every SfM node reaches (in production a
    network volume; here one directory of this machine, where all node agents run), claimed in its
    namespace."""

    root: Path
    pv: str

    @property
    def data_dir(self) -> DataDir:
        return DataDir(self.root)

    def new_job(self, uploads: list[Upload], name: str) -> str:
        """A job directory as the API makes it (sharpml.intake.ingest), for the SharpJob ``name``: a job
        owns only ``jobs/<its name>`` (the CRD and the operator insist); returns that jobDir."""
        result = ingest(uploads, self.data_dir.ensure(), IntakeLimits())
        result.job.root.rename(self.data_dir.jobs / name)
        return f"jobs/{name}"


@pytest.fixture
def data_volume(
    control_plane: ControlPlane, namespace: str, sfm_node: SfmNode, tmp_path: Path
) -> Iterator[DataVolume]:
    root = tmp_path / "data"
    root.mkdir()
    pv = f"sharpml-data-{namespace}"[:63]
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv, "labels": {"sharpml.com/test": "true"}},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "local": {"path": str(root)},
                "claimRef": {"namespace": namespace, "name": DATA_PVC},
                "nodeAffinity": {
                    "required": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": key,
                                        "operator": "In",
                                        "values": [value],
                                    }
                                    for key, value in sfm_node.node_selector.items()
                                ]
                            }
                        ]
                    }
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": DATA_PVC, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    ]
    for m in manifests:
        control_plane.kubectl("create", "-f", "-", input=json.dumps(m))
    control_plane.kubectl(
        "wait", "--for=jsonpath={.status.phase}=Bound", f"pvc/{DATA_PVC}", "-n", namespace, "--timeout=60s"
    )
    try:
        yield DataVolume(root, pv)
    finally:
        control_plane.kubectl("delete", "pv", pv, "--wait=false", "--ignore-not-found", check=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class OperatorProcess:
    """One `sharpml-operator` process watching one namespace; kill() and start() simulate a crash."""

    control_plane: ControlPlane
    namespace: str
    env: dict[str, str]
    log_path: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    args: list[str] = field(default_factory=list)

    def start(self) -> OperatorProcess:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n=== start {self.starts}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            [str(OPERATOR), "--namespace", self.namespace, *self.args, *VERBOSE, "--", "--log-format=plain"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no clean-up handlers run, as when a node dies."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


@pytest.fixture
def start_operator(
    control_plane: ControlPlane,
    namespace: str,
    data_volume: DataVolume,
    node_agent: NodeAgent,
    sfm_image: str,
    tmp_path: Path,
    sharpjob_crd: str,
) -> Iterator[Callable[..., OperatorProcess]]:
    """Start `sharpml-operator` for the test's namespace; keyword arguments become SHARPML_* settings."""
    started: list[OperatorProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, **settings: str) -> OperatorProcess:
        port = _free_port()
        full_env = {
            **control_plane.env(),
            "SHARPML_DATA_DIR": str(data_volume.root),
            "SHARPML_SFM_IMAGE": sfm_image,
            "SHARPML_SFM_IMAGE_PULL_POLICY": "Never",
            "SHARPML_SFM_CPU_LIMIT": "2",
            "SHARPML_SFM_MEMORY_REQUEST": "512Mi",
            "SHARPML_SFM_MEMORY_LIMIT": "2Gi",
            "SHARPML_SFM_THREADS": "2",
            "SHARPML_OPERATOR_POLL_SECONDS": "0.5",
            "SHARPML_RETENTION_CHECK_SECONDS": "1",
            "SHARPML_METRICS_PORT": str(port),
            # Tests of the other stages end at the preview; the training tests name their backend.
            "SHARPML_TRAINING_BACKEND": "none",
            **{f"SHARPML_{k.upper()}": str(v) for k, v in settings.items()},
            **(env or {}),
        }
        op = OperatorProcess(
            control_plane,
            namespace,
            full_env,
            tmp_path / f"operator-{len(started)}.log",
            port,
            args=list(args),
        )
        started.append(op.start())
        return op

    yield start
    for op in started:
        op.stop()
    # Let the operators' finalizers not block namespace deletion: remove those left on SharpJobs now that no
    # operator runs (`kubectl patch` has no --all: one call per job).
    listed = control_plane.kubectl("get", "sj", "-n", namespace, "-o", "name", check=False)
    for name in listed.stdout.split() if listed.returncode == 0 else []:
        control_plane.kubectl(
            "patch",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )


def sharpjob(name: str, job_dir: str, image_count: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "sharpml.com/v1alpha1",
        "kind": "SharpJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"upload": {"jobDir": job_dir, "imageCount": image_count}},
            "owner": "acct-test",
            **spec,
        },
    }


def create(cp: ControlPlane, namespace: str, manifest: dict[str, Any]) -> None:
    cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def get_job(cp: ControlPlane, namespace: str, name: str) -> dict[str, Any]:
    return cp.get_json("sj", name, "-n", namespace)


def wait_for(
    cp: ControlPlane,
    namespace: str,
    name: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 120,
    what: str = "",
    operator: OperatorProcess | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        proc = cp.kubectl("get", "sj", name, "-n", namespace, "-o", "json", check=False)
        if proc.returncode == 0:
            job = json.loads(proc.stdout)
            if predicate(job):
                return job
        time.sleep(0.3)
    logs = f"\noperator log:\n{operator.log()}" if operator else ""
    raise AssertionError(
        f"{name}: timed out waiting for {what}; last status: {json.dumps(job.get('status'))}{logs}"
    )


def wait_phase(cp: ControlPlane, namespace: str, name: str, *phases: str, **kw: Any) -> dict[str, Any]:
    return wait_for(
        cp,
        namespace,
        name,
        lambda j: j.get("status", {}).get("phase") in phases,
        what=f"phase in {phases}",
        **kw,
    )


def sfm_pods(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    return cp.get_json("pods", "-n", namespace, "-l", "sharpml.com/stage=sfm")["items"]


def events_for(cp: ControlPlane, namespace: str, name: str) -> list[dict[str, Any]]:
    items = cp.get_json("events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
    # Events of one second share a timestamp; the etcd revision orders them.
    return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


__all__ = ["SFM_NODE_NAME"]
