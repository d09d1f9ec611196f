"""The chart's RBAC proven by use: the real `sharpml-operator` and `sharpml-api` processes run with the
tokens of the chart's ServiceAccounts (not admin) through whole jobs — upload, SfM pod, completion,
events, deletion through the API, retention — with no forbidden call; then calls a broader Role would
allow are refused."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.chart.conftest import CHART, Helm
from tests.operator.conftest import DATA_PVC, OperatorProcess, _free_port, events_for, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.podman, pytest.mark.slow]
RELEASE = "sml"


def token_kubeconfig(cp, namespace: str, service_account: str, path: Path) -> Path:
    """A kubeconfig holding only a token of ``service_account`` (the admin's server and CA)."""
    admin = yaml.safe_load(Path(cp.kubeconfig).read_text())
    token = cp.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    cluster = admin["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:  # inline the CA: the file path is relative to the admin's config
        ca = Path(cluster.pop("certificate-authority"))
        ca = ca if ca.is_absolute() else Path(cp.kubeconfig).parent / ca
        cluster["certificate-authority-data"] = base64.b64encode(ca.read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "dev", "cluster": cluster}],
        "users": [{"name": service_account, "user": {"token": token}}],
        "contexts": [
            {"name": "sa", "context": {"cluster": "dev", "user": service_account, "namespace": namespace}}
        ],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def forbidden_lines(log: str) -> list[str]:
    """Lines reporting an HTTP 403 or a Forbidden answer. A whole-word match: a job's random UUID may
    hold "403" (edd4da61-dfa6-403a-..., which failed this test once), never as a word of its own."""
    return [line for line in log.splitlines() if re.search(r"\b403\b", line) or "orbidden" in line]


def as_sa(cp, kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    return subprocess.run([str(cp.kubectl_path), *args], capture_output=True, text=True, env=env, timeout=60)


def test_a_whole_job_with_the_charts_service_accounts(
    control_plane, namespace, data_volume, node_agent, sfm_image, sharpjob_crd, scene_uploads, tmp_path
) -> None:
    cp, ns = control_plane, namespace
    helm = Helm()
    # The chart's ServiceAccounts, Roles and bindings; Deployments at 0 replicas (these processes run here).
    helm.run(
        "install", RELEASE, str(CHART), "-n", ns, "--set=crds.enabled=false", "--set=api.replicas=0",
        "--set=operator.replicas=0", f"--set=persistence.existingClaim={DATA_PVC}", env=cp.env(),
    )  # fmt: skip
    api_kc = token_kubeconfig(cp, ns, f"{RELEASE}-sharpml-api", tmp_path / "api.kubeconfig")
    op_kc = token_kubeconfig(cp, ns, f"{RELEASE}-sharpml-operator", tmp_path / "operator.kubeconfig")

    # The operator, as the chart runs it (leader election in its namespace, watching only it).
    op_env = {
        **os.environ,
        "KUBECONFIG": str(op_kc),
        "POD_NAMESPACE": ns,
        "SHARPML_DATA_DIR": str(data_volume.root),
        "SHARPML_DATA_PVC": DATA_PVC,
        "SHARPML_SFM_IMAGE": sfm_image,
        "SHARPML_SFM_IMAGE_PULL_POLICY": "Never",
        "SHARPML_SFM_CPU_LIMIT": "2",
        "SHARPML_SFM_MEMORY_REQUEST": "512Mi",
        "SHARPML_SFM_MEMORY_LIMIT": "2Gi",
        "SHARPML_SFM_THREADS": "2",
        "SHARPML_OPERATOR_POLL_SECONDS": "0.5",
        "SHARPML_RETENTION_CHECK_SECONDS": "1",
        # Training talks to RunPod and S3, not to the apiserver: these jobs end at the preview.
        "SHARPML_TRAINING_BACKEND": "none",
        "SHARPML_METRICS_PORT": str(_free_port()),
    }
    op = OperatorProcess(
        cp, ns, op_env, tmp_path / "operator.log", int(op_env["SHARPML_METRICS_PORT"]),
        args=["--leader-election", f"--lease-namespace={ns}"],
    ).start()  # fmt: skip
    # The API, with the settings the chart gives it.
    port = _free_port()
    api_log = tmp_path / "api.log"
    api_env = {
        **os.environ,
        "SHARPML_KUBECONFIG": str(api_kc),
        "SHARPML_NAMESPACE": ns,
        "SHARPML_DATA_DIR": str(data_volume.root),
        "SHARPML_API_HOST": "127.0.0.1",
        "SHARPML_API_PORT": str(port),
        "SHARPML_LOG_LEVEL": "info",
    }
    api = subprocess.Popen(
        [str(Path(sys.executable).parent / "sharpml-api")], env=api_env, stdout=api_log.open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:  # lists SharpJobs: RBAC works
                    break
            except httpx.HTTPError:
                pass
            assert api.poll() is None and time.monotonic() < deadline, api_log.read_text()[-3000:]
            time.sleep(0.2)

        def upload(**fields: str) -> dict[str, Any]:
            files = [("files", (u.name, u.path.read_bytes(), "image/jpeg")) for u in scene_uploads]
            r = httpx.post(f"{url}/v1/jobs", files=files, data=fields, timeout=120)
            assert r.status_code == 201, r.text  # anonymous: the rate-limit Leases are written
            return r.json()

        # Job 1: through SfM to Complete, watched through the API's event stream, then deleted by retention.
        first = upload(ttl_seconds_after_finished="2")
        headers = {"X-Job-Token": first["job_token"]}
        phases = []
        with httpx.stream(
            "GET", f"{url}/v1/jobs/{first['id']}/events", headers=headers, timeout=300
        ) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    phases.append(json.loads(line[5:])["phase"])
        assert phases[-1] == "Complete", (phases, op.log())
        assert {"Queued", "Reconstructing"} & set(phases) or phases == ["Complete"]
        reasons = [e["reason"] for e in events_for(cp, ns, first["id"])]
        assert reasons[:5] == ["Queued", "SfmStarted", "SfmSucceeded", "Delivering", "Complete"], reasons
        job_dir = data_volume.root / "jobs" / first["id"]
        deadline = time.monotonic() + 60
        while cp.kubectl("get", "sj", first["id"], "-n", ns, check=False).returncode == 0 or job_dir.exists():
            assert time.monotonic() < deadline, f"retention did not delete the job\n{op.log()}"
            time.sleep(0.5)

        # Job 2: deleted through the API while it runs or waits: the operator's finalizer stops its pod.
        second = upload()
        wait_phase(cp, ns, second["id"], "Queued", "Reconstructing", "Complete", operator=op)
        r = httpx.delete(
            f"{url}/v1/jobs/{second['id']}", headers={"X-Job-Token": second["job_token"]}, timeout=60
        )
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + 60
        while cp.kubectl("get", "sj", second["id"], "-n", ns, check=False).returncode == 0:
            assert time.monotonic() < deadline, f"the job was not deleted\n{op.log()}"
            time.sleep(0.5)
        assert not (data_volume.root / "jobs" / second["id"]).exists()
        assert cp.get_json("pods", "-n", ns, "-l", "sharpml.com/stage=sfm")["items"] == []
        # The operator led through the Lease (its Role allows only that one by name).
        lease = cp.get_json("lease", "sharpml-operator", "-n", ns)
        assert lease["spec"]["holderIdentity"]
    finally:
        api.terminate()
        api.wait(15)
        op.stop()

    # No call of either process was refused.
    assert forbidden_lines(op.log_path.read_text(errors="replace")) == [], op.log()
    assert forbidden_lines(api_log.read_text(errors="replace")) == [], api_log.read_text()[-3000:]

    # What a broader Role would have allowed is refused.
    refused = [
        (api_kc, ["create", "deployment", "x", "--image=busybox", "-n", ns]),
        (api_kc, ["run", "x", "--image=busybox", "-n", ns]),  # the API cannot create pods
        (api_kc, ["get", "secrets", "-n", ns]),
        (api_kc, ["get", "sharpjobs", "-n", "default"]),  # another namespace
        (op_kc, ["get", "secrets", "-n", ns]),  # the operator reads no Secret
        (op_kc, ["get", "sharpjobs", "-n", "default"]),
        (op_kc, ["delete", "networkpolicy", "sharpml-sandbox-deny-all", "-n", ns]),  # creates, never deletes
        (op_kc, ["create", "namespace", "x"]),
    ]
    for kubeconfig, args in refused:
        proc = as_sa(cp, kubeconfig, *args)
        assert proc.returncode != 0 and "forbidden" in proc.stderr.lower(), (args, proc.stdout, proc.stderr)
    # ... while the sandbox policy the operator created is there.
    cp.kubectl("get", "networkpolicy", "sharpml-sandbox-deny-all", "-n", ns)
