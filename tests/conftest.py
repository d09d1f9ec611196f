"""Shared fixtures. The Kubernetes ones run a real control plane (hack/devcluster.py), never a mock;
`s3_server` runs a real S3 server (hack/s3server.py).

A test that takes `namespace` (or `control_plane`) gets the development control plane: started once per
pytest session, or reused when `make cluster-up` already runs it. Each test gets its own namespace, deleted
afterwards. The SfM node (the Mac mini that runs COLMAP) is a Node object with SFM_NODE_LABELS and SFM_TAINT;
the operator pins SfM pods to it with SFM_NODE_SELECTOR and SFM_TOLERATION.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Headless Chromium (tests/browser.py) for the viewer's tests.
from tests.browser import browser, page  # noqa: F401

# The local RunPod serverless endpoint and its workers (tests/runpod_local/fixtures.py).
from tests.runpod_local.fixtures import (  # noqa: F401
    runpod_endpoint,
    runpod_server,
    runpod_tls,
    runpod_worker,
)

REPO = Path(__file__).resolve().parent.parent
CRD_FILE = REPO / "crds" / "sharpjobs.sharpml.com.yaml"

# The SfM node's identity. The operator (a later issue) pins the COLMAP pod with exactly these.
SFM_NODE_NAME = "sfm-mac-mini"
SFM_NODE_LABELS = {
    "sharpml.com/role": "sfm",
    "kubernetes.io/hostname": SFM_NODE_NAME,
    "kubernetes.io/os": "linux",
}
SFM_TAINT = {"key": "sharpml.com/sfm", "value": "true", "effect": "NoSchedule"}
SFM_NODE_SELECTOR = {"sharpml.com/role": "sfm"}
SFM_TOLERATION = {"key": "sharpml.com/sfm", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
# An ordinary node, so that "scheduled onto the SfM node and not elsewhere" has an elsewhere.
WORKER_NODE_NAME = "worker-1"
# On the further SfM nodes single tests add (tests/operator/conftest.py: add_sfm_node) and remove.
TEST_NODE_LABEL = "sharpml.com/test-node"


def _load_hack(name: str):
    """Import hack/NAME.py by path: the scripts there are not part of an installed package."""
    spec = importlib.util.spec_from_file_location(f"sharpml_{name}", REPO / "hack" / f"{name}.py")
    assert spec and spec.loader
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _load_devcluster():
    return _load_hack("devcluster")


@dataclass(frozen=True)
class ControlPlane:
    """A running development control plane, and how to talk to it."""

    server: str
    kubeconfig: Path
    kubectl_path: Path

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run the pinned kubectl against this control plane; raise with its stderr when `check` fails."""
        proc = subprocess.run(
            [str(self.kubectl_path), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def get_json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """Start the control plane once per session (or reuse a running one); stop it at the end if we started it.

    Missing binaries are a failure with the command to run, never a skip: tests that need Kubernetes
    semantics must not pass without them.
    """
    dc = _load_devcluster()
    try:
        layout = dc.default_layout()
        started = dc.up(layout)
    except dc.ControlPlaneError as e:
        pytest.fail(f"development control plane unavailable: {e}", pytrace=False)
    cp = ControlPlane(server=layout.server, kubeconfig=layout.kubeconfig, kubectl_path=layout.kubectl)
    try:
        yield cp
    finally:
        if started and not os.environ.get("SHARPML_KEEP_CLUSTER"):
            dc.down(layout, wipe=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3 server (versitygw, posix backend) over TLS on 127.0.0.1, once per session, then stopped.

    Yields hack/s3server.py's ``S3Server``: ``endpoint`` (https://127.0.0.1:PORT), ``region``,
    ``access_key_id``, ``secret_access_key``, ``ca_bundle`` (the throw-away CA's PEM file), ``data_dir``,
    ``log``, ``env()`` (the SHARPML_S3_* variables and AWS_CA_BUNDLE) and ``ssl_context()``. No bucket is
    created. A missing binary is a failure with the command to run, never a skip.
    """
    s3 = _load_hack("s3server")
    try:
        server = s3.start(tmp_path_factory.mktemp("s3"))
    except s3.S3ServerError as e:
        pytest.fail(f"S3 server unavailable: {e}", pytrace=False)
    try:
        yield server
    finally:
        s3.stop(server)


@pytest.fixture(scope="session")
def k8s_client(control_plane: ControlPlane):
    """A `kubernetes` ApiClient for the control plane (admin credentials)."""
    import kubernetes  # the 'cluster' extra; an ImportError here means: pip install -e '.[cluster]'

    return kubernetes.config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def sharpjob_crd(control_plane: ControlPlane) -> str:
    """The SharpJob CRD from crds/ (the single source), applied and Established. Returns its name."""
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/sharpjobs.sharpml.com")
    # Discovery (used by `kubectl get sj`) can lag Established by a moment.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if control_plane.kubectl("get", "sj", "-A", check=False).returncode == 0:
            break
        time.sleep(0.5)
    return "sharpjobs.sharpml.com"


def _ensure_node(cp: ControlPlane, name: str, labels: dict[str, str], taints: list[dict[str, str]]) -> None:
    """A Node object that the scheduler treats as a healthy node (there is no kubelet behind it)."""
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
    }
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(node))
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    capacity = {"cpu": "8", "memory": "16Gi", "pods": "110", "ephemeral-storage": "200Gi"}
    status = {
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "SharpMLTestNode",
                    "message": "API-only node of the development control plane",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
        }
    }
    cp.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))
    # The TaintNodesByCondition admission plugin adds node.kubernetes.io/not-ready:NoSchedule to every new
    # Node; the node lifecycle controller would lift it once Ready, but it is off (no kubelet heartbeats).
    # A merge patch replaces the whole list: exactly our taints remain.
    cp.kubectl("patch", "node", name, "--type=merge", "-p", json.dumps({"spec": {"taints": taints or None}}))


@dataclass(frozen=True)
class SfmNode:
    """The SfM node as the scheduler sees it, and what a pod needs to be pinned to it."""

    name: str
    worker_name: str
    node_selector: dict[str, str]
    toleration: dict[str, str]


@pytest.fixture(scope="session")
def sfm_node(control_plane: ControlPlane) -> SfmNode:
    """The SfM node (labels SFM_NODE_LABELS, taint SFM_TAINT) plus one ordinary worker node.

    SfM nodes a test added and could not remove (a killed run on a kept control plane) are deleted first:
    with no kubelet behind them they would stay Ready, and operators would send pods there."""
    control_plane.kubectl("delete", "nodes", "-l", TEST_NODE_LABEL, "--ignore-not-found")
    _ensure_node(control_plane, SFM_NODE_NAME, SFM_NODE_LABELS, [SFM_TAINT])
    _ensure_node(
        control_plane,
        WORKER_NODE_NAME,
        {"kubernetes.io/hostname": WORKER_NODE_NAME, "kubernetes.io/os": "linux"},
        [],
    )
    return SfmNode(SFM_NODE_NAME, WORKER_NODE_NAME, dict(SFM_NODE_SELECTOR), dict(SFM_TOLERATION))


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test (Pod Security `restricted` enforced), deleted afterwards."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:6]}"
    ns = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {
                "sharpml.com/test": "true",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    control_plane.kubectl("create", "-f", "-", input=json.dumps(ns))
    # The service account controller creates `default`; pods are refused until it exists.
    deadline = time.monotonic() + 30
    while control_plane.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode:
        if time.monotonic() > deadline:
            raise AssertionError(f"service account 'default' never appeared in namespace {name}")
        time.sleep(0.2)
    try:
        yield name
    finally:
        control_plane.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(scope="session")
def trainer_image() -> str:
    """The trainer image on the local Debian base (cached by content: a no-op when nothing changed)."""
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "build-images.sh"), "trainer"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        pytest.fail(f"hack/build-images.sh trainer failed:\n{proc.stderr[-3000:]}", pytrace=False)
    return proc.stdout.strip().splitlines()[-1]
