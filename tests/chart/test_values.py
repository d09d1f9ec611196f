"""The chart's values against the settings registry (both ways), its schema's refusals, and what the
templates render: each container's env, Pod Security "restricted", least-privilege RBAC, the CRD."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from typing import Any

import pytest
import yaml

from sharpml.settings import COMPONENTS, REGISTRY, SETTINGS
from tests.chart.conftest import CHART, REPO, Helm, container_env, find


def _chart_settings_module():
    spec = importlib.util.spec_from_file_location("chart_settings", REPO / "hack" / "chart_settings.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


cs = _chart_settings_module()
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())


def test_generated_parts_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "hack/chart_settings.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_values_and_schema_hold_every_setting_and_nothing_else() -> None:
    expected = {s.env for s in SETTINGS} - set(cs.MANAGED)
    in_values = {k for c in COMPONENTS for k in VALUES["settings"][c]} | {
        k for c in COMPONENTS for k in VALUES["secrets"][c]
    }
    props = SCHEMA["properties"]
    in_schema = {k for c in COMPONENTS for k in props["settings"]["properties"][c]["properties"]} | {
        k for c in COMPONENTS for k in props["secrets"]["properties"][c]["properties"]
    }
    assert in_values == expected
    assert in_schema == expected
    for c in COMPONENTS:  # each under its own component, secrets only under secrets
        for k in VALUES["settings"][c]:
            assert REGISTRY[k].component == c and REGISTRY[k].kind != "secret", k
        for k in VALUES["secrets"][c]:
            assert REGISTRY[k].component == c and REGISTRY[k].kind == "secret", k
    assert set(cs.MANAGED) <= set(REGISTRY), "a managed setting left the registry"
    # every component's settings reach some container
    assert {c for comps in cs.CONTAINERS.values() for c in comps} == set(COMPONENTS)


@pytest.mark.parametrize("container, components", sorted(cs.CONTAINERS.items()))
def test_container_env_is_the_registry(rendered: list[dict[str, Any]], container: str, components) -> None:
    """Every setting of the container's components is in its env with the value the registry reads as the
    chart's default; no other component's setting is; secrets come only from the Secret."""
    env = container_env(find(rendered, "Deployment", f"-{container}"))
    names = {n for n in env if n.startswith("SHARPML_")}
    mine = {s.env for s in SETTINGS if s.component in components}
    assert names <= mine, f"settings of other components: {names - mine}"
    for s in SETTINGS:
        if s.component not in components or s.env in ("SHARPML_KUBECONFIG",):
            continue
        default = cs.chart_default(s)
        if s.kind == "secret":
            ref = env[s.env]["valueFrom"]["secretKeyRef"]
            assert ref["key"] == s.env and ref["optional"] is True
        elif s.env in cs.MANAGED:
            assert s.env in env or s.env == "SHARPML_DATA_PVC", s.env  # the API needs no claim name
        elif default == "":
            assert s.env not in env, f"{s.env}: empty must leave the program's default"
        else:
            assert "value" in env[s.env], s.env
            assert s.parse(env[s.env]["value"]) == s.parse(
                json.dumps(default) if isinstance(default, dict | list) else str(default)
            ), s.env


def test_values_render_exactly(helm: Helm) -> None:
    """Whole numbers keep every digit (Helm reads values as floats), objects go as JSON, "" unsets."""
    docs = helm.template(
        "settings.trainer.SHARPML_TRAIN_MAX_GAUSSIANS=2000000",
        "settings.core.SHARPML_JOB_TIMEOUT_MS=3600000",
        "--set-json=settings.operator.SHARPML_OPERATOR_POLL_SECONDS=0.5",
        "settings.operator.SHARPML_SFM_NODE_SELECTOR.pool=sfm",
        "settings.api.SHARPML_CORS_ORIGINS=",
        "settings.core.SHARPML_S3_SSE=aws:kms",
        "settings.core.SHARPML_S3_SSE_KMS_KEY_ID=alias/sharpml",
        "settings.operator.SHARPML_ARTIFACT_LOCAL_SECONDS=3600",
        "settings.operator.SHARPML_ARTIFACT_RETENTION_DAYS=7",
        "settings.operator.SHARPML_LOG_RETENTION_DAYS=14",
    )
    op = container_env(find(docs, "Deployment", "-operator"))
    # The delivery's settings reach the operator as the registry reads them.
    assert op["SHARPML_S3_SSE"]["value"] == "aws:kms"
    assert op["SHARPML_S3_SSE_KMS_KEY_ID"]["value"] == "alias/sharpml"
    assert op["SHARPML_ARTIFACT_LOCAL_SECONDS"]["value"] == "3600"
    assert (
        REGISTRY["SHARPML_ARTIFACT_RETENTION_DAYS"].parse(op["SHARPML_ARTIFACT_RETENTION_DAYS"]["value"]) == 7
    )
    assert REGISTRY["SHARPML_LOG_RETENTION_DAYS"].parse(op["SHARPML_LOG_RETENTION_DAYS"]["value"]) == 14
    assert op["SHARPML_TRAIN_MAX_GAUSSIANS"]["value"] == "2000000"
    assert op["SHARPML_JOB_TIMEOUT_MS"]["value"] == "3600000"
    assert op["SHARPML_OPERATOR_POLL_SECONDS"]["value"] == "0.5"
    selector = REGISTRY["SHARPML_SFM_NODE_SELECTOR"].parse(op["SHARPML_SFM_NODE_SELECTOR"]["value"])
    assert selector == {"sharpml.com/role": "sfm", "pool": "sfm"}
    assert "SHARPML_CORS_ORIGINS" not in container_env(find(docs, "Deployment", "-api"))


@pytest.mark.parametrize(
    "value, message",
    [
        ("settings.api.SHARPML_API_PORT=70000", "SHARPML_API_PORT"),
        ("settings.api.SHARPML_LOG_LEVEL=verbose", "SHARPML_LOG_LEVEL"),
        ("settings.core.SHARPML_S3_SSE=aws:kms:dsse", "SHARPML_S3_SSE"),
        ("settings.operator.SHARPML_ARTIFACT_RETENTION_DAYS=0", "SHARPML_ARTIFACT_RETENTION_DAYS"),
        ("settings.operator.SHARPML_SFM_MEMORY_LIMIT=lots", "SHARPML_SFM_MEMORY_LIMIT"),
        ("settings.api.SHARPML_NO_SUCH_SETTING=1", "SHARPML_NO_SUCH_SETTING"),
        ("settings.operator.SHARPML_DATA_DIR=/elsewhere", "SHARPML_DATA_DIR"),  # managed by the chart
        ("podSecurity.uid=0", "uid"),
        ("persistence.accessModes[0]=ReadWriteSometimes", "accessModes"),
    ],
)
def test_schema_refuses_a_wrong_value_with_a_message(helm: Helm, value: str, message: str) -> None:
    proc = helm.run("template", "x", str(CHART), "--kube-version", "1.36.3", "--set", value, check=False)
    assert proc.returncode != 0, f"{value} was accepted"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_lint_strict(helm: Helm) -> None:
    proc = helm.run("lint", "--strict", str(CHART), "--kube-version", "1.36.3")
    assert "0 chart(s) failed" in proc.stdout, proc.stdout


def test_crd_is_the_repository_file(helm: Helm, rendered: list[dict[str, Any]]) -> None:
    source = yaml.safe_load((REPO / "crds/sharpjobs.sharpml.com.yaml").read_text())
    crd = find(rendered, "CustomResourceDefinition")
    assert crd["spec"] == source["spec"]
    assert crd["metadata"]["name"] == source["metadata"]["name"]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    unkept = find(helm.template("crds.keep=false"), "CustomResourceDefinition")
    assert "annotations" not in unkept["metadata"]
    assert not [d for d in helm.template("crds.enabled=false") if d["kind"] == "CustomResourceDefinition"]


def _pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]


def test_every_pod_meets_restricted(rendered: list[dict[str, Any]]) -> None:
    specs = _pod_specs(rendered)
    assert len(specs) == 2
    for spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["runAsUser"] != 0
            assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]
        assert not any("hostPath" in v for v in spec["volumes"])


def _rules(docs: list[dict[str, Any]], kind: str, suffix: str) -> list[dict[str, Any]]:
    return find(docs, kind, suffix)["rules"]


def test_rbac_is_least_privilege(helm: Helm, rendered: list[dict[str, Any]]) -> None:
    roles = [d for d in rendered if d["kind"] in ("Role", "ClusterRole")]
    for role in roles:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"], role["metadata"]["name"]
            assert "secrets" not in rule["resources"], "nothing in SharpML reads Secrets through the API"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
    # Namespaced by default: the only cluster-wide grant is reading CRDs and namespaces (kopf's discovery)
    # and nodes (the SfM nodes' slots).
    (cluster_role,) = [r for r in roles if r["kind"] == "ClusterRole"]
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        },
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    ]
    api = _rules(rendered, "Role", "-api")
    assert {(r["apiGroups"][0], r["resources"][0]): set(r["verbs"]) for r in api} == {
        ("sharpml.com", "sharpjobs"): {"create", "get", "list", "watch", "delete"},
        ("coordination.k8s.io", "leases"): {"get", "list", "create", "update", "delete"},
    }
    operator = {
        (r["apiGroups"][0], r["resources"][0]): set(r["verbs"]) for r in _rules(rendered, "Role", "-operator")
    }
    assert ("", "pods") in operator and "create" in operator[("", "pods")]
    assert operator[("networking.k8s.io", "networkpolicies")] == {"create"}
    # Namespaced mode: the operator watches the release namespace (and watchNamespaces), nothing else.
    docs = helm.template("operator.watchNamespaces={team-a}")
    (container,) = find(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"]
    assert [a for a in container["args"] if a.startswith("--namespace")] == [
        "--namespace=sharpml",
        "--namespace=team-a",
    ]
    assert {
        d["metadata"]["namespace"]
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"].endswith("-operator")
    } == {"sharpml", "team-a"}
    wide = helm.template("rbac.clusterWide=true")
    (container,) = find(wide, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"]
    assert not [a for a in container["args"] if a.startswith("--namespace")]
    assert [d for d in wide if d["kind"] == "ClusterRole" and d["metadata"]["name"].endswith("-operator")]


def test_link_keys_and_s3_reach_both_containers(helm: Helm) -> None:
    """The API verifies the links the operator's notifications carry, and redirects to the backups the
    operator makes: one Secret key and one setting each, in both containers."""
    docs = helm.template(
        "secrets.core.SHARPML_LINK_KEYS=k1:" + "x" * 32, "settings.core.SHARPML_S3_BUCKET=scenes"
    )
    assert set(find(docs, "Secret")["data"]) == {"SHARPML_LINK_KEYS"}
    for name in ("-api", "-operator"):
        env = container_env(find(docs, "Deployment", name))
        assert env["SHARPML_LINK_KEYS"]["valueFrom"]["secretKeyRef"]["key"] == "SHARPML_LINK_KEYS", name
        assert env["SHARPML_S3_BUCKET"]["value"] == "scenes", name
        assert "SHARPML_S3_SECRET_ACCESS_KEY" in env and "SHARPML_LINK_TTL_SECONDS" in env, name


def test_secrets_from_values_or_an_existing_secret(helm: Helm) -> None:
    docs = helm.template("secrets.api.SHARPML_JWT_SECRET=s3cr3t-s3cr3t-s3cr3t-s3cr3t-s3cr3t")
    secret = find(docs, "Secret")
    assert set(secret["data"]) == {"SHARPML_JWT_SECRET"}
    docs = helm.template("secrets.existingSecret=mine")
    assert not [d for d in docs if d["kind"] == "Secret"]
    env = container_env(find(docs, "Deployment", "-api"))
    assert env["SHARPML_JWT_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "mine"


def test_network_policies(rendered: list[dict[str, Any]]) -> None:
    api = find(rendered, "NetworkPolicy", "-api")["spec"]
    assert api["policyTypes"] == ["Ingress", "Egress"]
    assert api["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    # S3 (downloads of backed-up artifacts), besides DNS and the apiserver.
    assert {p["port"] for rule in api["egress"] for p in rule["ports"]} == {53, 443, 6443}
    operator = find(rendered, "NetworkPolicy", "-operator")["spec"]
    assert operator["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
    ports = {p["port"] for rule in operator["egress"] for p in rule["ports"]}
    assert {53, 443, 6443, 587} <= ports


def test_images_default_to_the_project_version(helm: Helm, rendered: list[dict[str, Any]]) -> None:
    """hack/build-images.sh tags images with pyproject's version; the chart's appVersion is that version."""
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"] == version
    for component in ("api", "operator"):
        (c,) = find(rendered, "Deployment", f"-{component}")["spec"]["template"]["spec"]["containers"]
        assert c["image"] == f"localhost/sharpml-{component}:{version}"
    digest = "sha256:" + "0" * 64
    (c,) = find(helm.template(f"image.api.digest={digest}"), "Deployment", "-api")["spec"]["template"][
        "spec"
    ]["containers"]
    assert c["image"] == f"localhost/sharpml-api@{digest}"


def test_packaged_chart_carries_the_crd(helm: Helm, tmp_path) -> None:
    """`helm package` follows files/ to crds/: the archive renders the same CRD."""
    helm.run("package", str(CHART), "--destination", str(tmp_path))
    (archive,) = tmp_path.glob("sharpml-*.tgz")
    out = helm.run("template", "sml", str(archive), "--namespace", "sharpml").stdout
    crd = find([d for d in yaml.safe_load_all(out) if d], "CustomResourceDefinition")
    assert crd["spec"] == yaml.safe_load((REPO / "crds/sharpjobs.sharpml.com.yaml").read_text())["spec"]
