"""Fixtures of the chart tests: the pinned tools (`make chart-tools` builds them) and `helm template`.

A missing tool is a failure naming the command that builds it, never a skip: the chart must not pass
untested.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sharpml"
KUBE_VERSION = "1.36.3"  # the development control plane's (hack/k8s-tools/go.mod)
TOOLS_DIR = Path(
    subprocess.run(
        [str(REPO / "hack/k8s-tools/build.sh"), "--print-dir"], capture_output=True, text=True, check=True
    ).stdout.strip()
)
MONITORING_CRDS = TOOLS_DIR / "monitoring-crds-v0.85.0"

#: Every optional object on: what kubeconform, checkov and the install test see.
EVERYTHING = [
    "api.ingress.enabled=true",
    "api.autoscaling.enabled=true",
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "secrets.api.SHARPML_JWT_SECRET=0123456789abcdef0123456789abcdef",
]


def tool(name: str) -> Path:
    path = TOOLS_DIR / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make chart-tools`", pytrace=False)
    return path


class Helm:
    def __init__(self) -> None:
        self.path = tool("helm")

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(self.path), *args], capture_output=True, text=True, env=env, timeout=120)
        if check and proc.returncode:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def template_text(self, *sets: str, namespace: str = "sharpml", release: str = "sml") -> str:
        args = ["template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
        for s in sets:  # "--set-json=..." as is (--set reads 0.5 as a string); others are --set
            args += [s] if s.startswith("--") else ["--set", s]
        return self.run(*args).stdout

    def template(self, *sets: str, namespace: str = "sharpml", release: str = "sml") -> list[dict[str, Any]]:
        return [
            d
            for d in yaml.safe_load_all(self.template_text(*sets, namespace=namespace, release=release))
            if d
        ]


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm()


@pytest.fixture(scope="session")
def rendered(helm: Helm) -> list[dict[str, Any]]:
    """The chart with its default values."""
    return helm.template()


def find(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(hits) == 1, f"{kind} *{name_suffix}: {[d['metadata']['name'] for d in hits]}"
    return hits[0]


def container_env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container.get("env", [])}


Render = Callable[..., list[dict[str, Any]]]


def dump(docs: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("\n---\n".join(json.dumps(d) for d in docs))
    return path
