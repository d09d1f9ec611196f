"""The rendered chart against the development control plane: kubeconform on schemas from its own OpenAPI
document (SharpJob and the Prometheus Operator's CRDs included), then `helm install` and `helm upgrade`
into a namespace that enforces Pod Security "restricted", every object accepted and every pod admitted."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import schemas
from tests.chart.conftest import CHART, EVERYTHING, KUBE_VERSION, MONITORING_CRDS, REPO, Helm, dump, tool

pytestmark = pytest.mark.cluster
CRD = "sharpjobs.sharpml.com"


@pytest.fixture(scope="session")
def crds(control_plane, sharpjob_crd) -> None:
    """The SharpJob CRD (tests/conftest.py) and the ServiceMonitor / PrometheusRule CRDs, Established."""
    if not MONITORING_CRDS.exists():
        pytest.fail(f"{MONITORING_CRDS} is missing: run `make chart-tools`", pytrace=False)
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(MONITORING_CRDS))
    for name in ("servicemonitors", "prometheusrules"):
        control_plane.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}.monitoring.coreos.com"
        )


@pytest.fixture(scope="session")
def schema_dir(control_plane, crds, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("schemas")
    # The aggregated OpenAPI document can lag a new CRD by a moment.
    for _ in range(60):
        doc = json.loads(control_plane.kubectl("get", "--raw", "/openapi/v2", timeout=120).stdout)
        names = {
            g["kind"]
            for d in doc["definitions"].values()
            for g in d.get("x-kubernetes-group-version-kind", [])
        }
        if {"SharpJob", "ServiceMonitor", "PrometheusRule"} <= names:
            break
        time.sleep(1)
    kinds = {d["kind"] for d in Helm().template(*EVERYTHING)} | {
        "ClusterRole",
        "ClusterRoleBinding",
        "SharpJob",
        "PersistentVolume",
    }
    written = schemas.write(doc, out, kinds)
    assert len(written) >= len(kinds), (sorted(kinds), written)
    return out


def kubeconform(schema_dir: Path, manifests: Path) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run(
        [
            str(tool("kubeconform")),
            "-strict",
            "-summary",
            "-output=json",
            f"-kubernetes-version={KUBE_VERSION}",
            f"-schema-location={schema_dir}/{schemas.LOCATION}",
            str(manifests),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.parametrize(
    "variant",
    [[], EVERYTHING, [*EVERYTHING, "rbac.clusterWide=true"]],
    ids=["defaults", "everything", "cluster-wide"],
)
def test_kubeconform(helm: Helm, schema_dir: Path, tmp_path: Path, variant: list[str]) -> None:
    docs = helm.template(*variant)
    rc, report = kubeconform(schema_dir, dump(docs, tmp_path / "chart.yaml"))
    summary = report["summary"]
    problems = [r for r in report["resources"] if r["status"] != "statusValid"]
    assert rc == 0 and summary["invalid"] == summary["errors"] == summary["skipped"] == 0, problems
    assert summary["valid"] == len(docs)


def test_kubeconform_checks_the_examples_and_refuses_a_misspelt_field(
    schema_dir: Path, tmp_path: Path
) -> None:
    """examples/ (SharpJobs, kind's data volume) are valid; a misspelt SharpJob field is refused."""
    docs = [
        d for p in sorted((REPO / "examples").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d
    ]
    rc, report = kubeconform(schema_dir, dump(docs, tmp_path / "ok.yaml"))
    assert rc == 0 and report["summary"]["valid"] == len(docs), report
    assert {d["kind"] for d in docs} >= {"SharpJob", "PersistentVolume"}
    wrong = yaml.safe_load((REPO / "examples/sharpjob-minimal.yaml").read_text())
    wrong["spec"]["processing"] = {"matchr": "sequential"}
    rc, report = kubeconform(schema_dir, dump([wrong], tmp_path / "wrong.yaml"))
    assert rc == 1 and report["summary"]["invalid"] == 1
    assert "matchr" in json.dumps(report["resources"])


def _adopt_crd(control_plane, release: str, namespace: str) -> None:
    """An existing SharpJob CRD (applied by other tests) is adopted by the release, as Helm documents."""
    control_plane.kubectl("label", "crd", CRD, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    control_plane.kubectl(
        "annotate",
        "crd",
        CRD,
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
        "--overwrite",
    )


def _wait_pods(control_plane, namespace: str, component: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        pods = control_plane.get_json(
            "pods", "-n", namespace, "-l", f"app.kubernetes.io/component={component}"
        )["items"]
        if len(pods) >= count or time.monotonic() > deadline:
            return pods
        time.sleep(0.5)


def test_install_then_upgrade(control_plane, crds, namespace: str, helm: Helm) -> None:
    env = control_plane.env()
    release = "sml"
    _adopt_crd(control_plane, release, namespace)
    sets = [*EVERYTHING, "api.autoscaling.enabled=false"]
    args = [str(CHART), "-n", namespace]
    install = helm.run("install", release, *args, *[f"--set={s}" for s in sets], env=env)
    assert "PodSecurity" not in install.stderr, install.stderr  # no "would violate PodSecurity" warnings
    # NOTES.txt: how to reach the API, submit a SharpJob and watch it.
    for hint in (
        "-F files=@IMG_0005.jpg http://api.sharpml.example/v1/jobs",  # through the Ingress (enabled here)
        f"kubectl -n {namespace} apply -f examples/sharpjob-minimal.yaml",
        f"kubectl -n {namespace} get sharpjobs -w",
    ):
        assert hint in install.stdout, install.stdout
    manifest = [
        d
        for d in yaml.safe_load_all(helm.run("get", "manifest", release, "-n", namespace, env=env).stdout)
        if d
    ]
    for d in manifest:  # every object is there
        where = (
            ["-n", d["metadata"].get("namespace", namespace)]
            if d["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition")
            else []
        )
        control_plane.kubectl("get", d["kind"], d["metadata"]["name"], *where)
    assert {d["kind"] for d in manifest} >= {
        "Deployment",
        "Role",
        "NetworkPolicy",
        "PrometheusRule",
        "ServiceMonitor",
        "Ingress",
        "CustomResourceDefinition",
    }
    # The controllers created every replica: Pod Security "restricted" admitted them (no kubelet runs them).
    for component, replicas in (("api", 2), ("operator", 2)):
        pods = _wait_pods(control_plane, namespace, component, replicas)
        assert len(pods) == replicas, control_plane.kubectl("get", "events", "-n", namespace).stdout

    upgrade = helm.run(
        "upgrade",
        release,
        *args,
        *[f"--set={s}" for s in sets],
        "--set=settings.api.SHARPML_RATE_LIMIT_IP_PER_HOUR=20",
        "--set=operator.replicas=1",
        env=env,
    )
    assert "PodSecurity" not in upgrade.stderr, upgrade.stderr
    deploy = control_plane.get_json("deployment", f"{release}-sharpml-api", "-n", namespace)
    env_vars = {e["name"]: e.get("value") for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env_vars["SHARPML_RATE_LIMIT_IP_PER_HOUR"] == "20"
    assert (
        control_plane.get_json("deployment", f"{release}-sharpml-operator", "-n", namespace)["spec"][
            "replicas"
        ]
        == 1
    )
    status = json.loads(helm.run("status", release, "-n", namespace, "-o", "json", env=env).stdout)
    assert status["version"] == 2 and status["info"]["status"] == "deployed"

    # A wrong value is refused before anything reaches the cluster, with the schema's message.
    wrong = helm.run(
        "upgrade", release, *args, "--set=settings.operator.SHARPML_SFM_CONCURRENCY=0", env=env, check=False
    )
    assert wrong.returncode != 0 and "SHARPML_SFM_CONCURRENCY" in wrong.stderr and "minimum" in wrong.stderr
    helm.run("uninstall", release, "-n", namespace, "--wait", env=env)
    # keep: the CRD (and every SharpJob) and the data claim outlive the release.
    control_plane.kubectl("get", "crd", CRD)
    control_plane.kubectl("get", "pvc", f"{release}-sharpml-data", "-n", namespace)
