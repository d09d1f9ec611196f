"""The node agent enforces what a pod spec says, so operator tests cannot pass with a wrong spec."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = [pytest.mark.cluster, pytest.mark.podman]


def _pod(name: str, image: str, node: str, command: list[str], security: dict | None = None) -> dict:
    restricted = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "c",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": command,
                    "securityContext": {**restricted, **(security or {})},
                    "resources": {"limits": {"memory": "256Mi", "cpu": "1"}},
                }
            ],
        },
    }


def _wait_status(cp, ns, name, predicate, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pod = cp.get_json("pod", name, "-n", ns)
        if predicate(pod.get("status", {})):
            return pod["status"]
        time.sleep(0.3)
    raise AssertionError(f"{name}: status never matched; last {json.dumps(pod.get('status'))}")


def test_sandboxed_pod_has_no_network_and_a_read_only_root(control_plane, namespace, node_agent, sfm_image):
    probe = (
        "import os, socket\n"
        "try:\n    socket.create_connection(('10.96.0.1', 443), timeout=2); print('net: yes')\n"
        "except OSError as e:\n    print('net: no', e.errno)\n"
        "try:\n    open('/usr/x', 'w'); print('rootfs: writable')\n"
        "except OSError:\n    print('rootfs: read-only')\n"
        "print('uid', os.getuid(), 'groups', sorted(os.getgroups()))\n"
        "raise SystemExit(3)\n"
    )
    pod = _pod("probe", sfm_image, node_agent.node_name, ["python", "-c", probe],
               {"runAsUser": 10001, "runAsGroup": 10001, "readOnlyRootFilesystem": True})  # fmt: skip
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))
    status = _wait_status(control_plane, namespace, "probe", lambda s: s.get("phase") == "Failed")
    term = status["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3 and term["reason"] == "Error"
    log = (node_agent.state_dir / f"{namespace}_probe.log").read_text()
    assert "net: no" in log and "rootfs: read-only" in log and "uid 10001" in log, log


def test_run_as_non_root_refuses_an_image_that_runs_as_root(control_plane, namespace, node_agent, sfm_image):
    # The SfM image's base (the mmdebstrap one or python slim) runs as root; no runAsUser in the spec.
    bases = ("localhost/sharpml-base:bookworm", "docker.io/library/python:3.11-slim-bookworm")
    base = next(b for b in bases if node_agent._podman("image", "exists", b, check=False).returncode == 0)
    pod = _pod("rooty", base, node_agent.node_name, ["true"])
    control_plane.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))
    status = _wait_status(
        control_plane, namespace, "rooty",
        lambda s: "waiting" in (s.get("containerStatuses") or [{}])[0].get("state", {}),
    )  # fmt: skip
    waiting = status["containerStatuses"][0]["state"]["waiting"]
    assert (
        waiting["reason"] == "CreateContainerConfigError" and "image will run as root" in waiting["message"]
    )
