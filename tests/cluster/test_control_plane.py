"""The development control plane behaves like a real cluster where the operator depends on it.

RBAC and Pod Security are enforced, the controller manager garbage-collects and finalizes namespaces, the
scheduler honours the SfM node's taint and label, and each test's namespace is its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]

RESTRICTED_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def _pod(name: str, node_selector: dict | None = None, tolerations: list | None = None) -> dict:
    """A pod that passes Pod Security `restricted`; it never runs (no kubelet), it only gets scheduled."""
    spec: dict = {
        "containers": [
            {"name": "main", "image": "registry.invalid/sfm:dev", "securityContext": RESTRICTED_SECURITY}
        ],
        "terminationGracePeriodSeconds": 0,
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    if tolerations:
        spec["tolerations"] = tolerations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def _wait_for(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_kubectl_matches_apiserver_minor(control_plane):
    """kubectl and the apiserver come from one pin, so there is no version skew warning."""
    v = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert v["clientVersion"]["gitVersion"] == v["serverVersion"]["gitVersion"]
    assert v["serverVersion"]["gitVersion"].startswith("v1.")


def test_rbac_is_enforced(control_plane, namespace):
    """Authorization is RBAC (+Node), not AlwaysAllow: an unknown user may do nothing until bound."""
    cp = control_plane
    assert (
        cp.kubectl("auth", "can-i", "list", "pods", "-n", namespace, "--as=alice", check=False).stdout.strip()
        == "no"
    )
    cp.kubectl("create", "rolebinding", "alice-view", "--clusterrole=view", "--user=alice", "-n", namespace)
    assert _wait_for(
        lambda: (
            cp.kubectl(
                "auth", "can-i", "list", "pods", "-n", namespace, "--as=alice", check=False
            ).stdout.strip()
            == "yes"
        ),
        what="rolebinding to take effect",
    )
    assert (
        cp.kubectl(
            "auth", "can-i", "delete", "pods", "-n", namespace, "--as=alice", check=False
        ).stdout.strip()
        == "no"
    )


def test_pod_security_admission_rejects_privileged_pod(control_plane, namespace):
    """The PodSecurity admission plugin is on: a privileged pod in a `restricted` namespace is refused."""
    pod = _pod("privileged")
    pod["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    out = control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert out.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in out.stderr
    assert "privileged" in out.stderr


def test_scheduler_pins_sfm_pod_to_sfm_node(control_plane, sfm_node, namespace):
    """nodeSelector + toleration lands on the SfM node; a pod without the toleration never does."""
    cp = control_plane
    # Exactly the SfM taint: nothing left over from node creation that would keep every pod off it.
    assert cp.get_json("node", sfm_node.name)["spec"]["taints"] == [
        {"key": "sharpml.com/sfm", "value": "true", "effect": "NoSchedule"}
    ]
    assert "taints" not in cp.get_json("node", sfm_node.worker_name)["spec"]
    pinned = _pod("colmap", node_selector=sfm_node.node_selector, tolerations=[sfm_node.toleration])
    ordinary = _pod("ordinary")
    selector_only = _pod("selector-only", node_selector=sfm_node.node_selector)
    for pod in (pinned, ordinary, selector_only):
        cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))

    def node_of(name: str) -> str | None:
        return cp.get_json("pod", name, "-n", namespace)["spec"].get("nodeName")

    assert _wait_for(lambda: node_of("colmap"), what="colmap pod to be bound") == sfm_node.name
    assert _wait_for(lambda: node_of("ordinary"), what="ordinary pod to be bound") == sfm_node.worker_name

    # Selector without toleration: the only matching node is tainted, so the scheduler must refuse it.
    def unschedulable() -> dict | None:
        conds = cp.get_json("pod", "selector-only", "-n", namespace)["status"].get("conditions", [])
        return next((c for c in conds if c["type"] == "PodScheduled" and c["status"] == "False"), None)

    cond = _wait_for(unschedulable, what="selector-only pod to be reported unschedulable")
    assert cond["reason"] == "Unschedulable"
    assert "untolerated taint" in cond["message"]
    assert node_of("selector-only") is None


def test_garbage_collector_deletes_dependents(control_plane, namespace):
    """The controller manager's garbage collector removes objects whose owner is gone (ownerReferences)."""
    cp = control_plane
    cp.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cp.get_json("configmap", "owner", "-n", namespace)["metadata"]["uid"]
    dependent = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "dependent",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(dependent))
    cp.kubectl("delete", "configmap", "owner", "-n", namespace)
    _wait_for(
        lambda: cp.kubectl("get", "configmap", "dependent", "-n", namespace, check=False).returncode != 0,
        what="garbage collection of the dependent",
    )


def test_namespace_controller_finalizes_deletion(control_plane):
    """Deleting a namespace empties and removes it (the namespace controller runs)."""
    cp = control_plane
    name = f"t-ns-delete-{time.monotonic_ns() % 100000}"
    cp.kubectl("create", "namespace", name)
    cp.kubectl("create", "configmap", "x", "-n", name)
    cp.kubectl("delete", "namespace", name, "--timeout=60s")
    assert cp.kubectl("get", "namespace", name, check=False).returncode != 0


@pytest.mark.parametrize("attempt", ["first", "second"])
def test_namespace_fixture_isolates_tests(control_plane, namespace, attempt):
    """Each test gets a fresh, labelled namespace: both runs create the same name without a clash."""
    cp = control_plane
    ns = cp.get_json("namespace", namespace)
    assert ns["metadata"]["labels"]["sharpml.com/test"] == "true"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    names = {i["metadata"]["name"] for i in cp.get_json("configmaps", "-n", namespace)["items"]}
    assert names <= {"kube-root-ca.crt"}, f"namespace {namespace} is not fresh: {names}"
    cp.kubectl(
        "create", "configmap", "same-name-in-every-test", f"--from-literal=attempt={attempt}", "-n", namespace
    )


def test_cluster_up_is_idempotent(control_plane):
    """A second `up` reuses the running control plane instead of failing on busy ports."""
    out = subprocess.run(
        [sys.executable, str(REPO / "hack" / "devcluster.py"), "up"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "already running" in out.stderr
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
