"""kind-config.yaml must describe the SfM node exactly as the operator pins pods to it."""

from __future__ import annotations

from pathlib import Path

import yaml
from sharpml_operator.settings import Settings

DEFAULTS = Settings.from_env({})
DEFAULT_NODE_SELECTOR, DEFAULT_TOLERATIONS = DEFAULTS.node_selector, DEFAULTS.tolerations

KIND_CONFIG = Path(__file__).resolve().parents[2] / "kind-config.yaml"


def test_sfm_worker_carries_the_operators_label_and_taint() -> None:
    config = yaml.safe_load(KIND_CONFIG.read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    sfm = [n for n in config["nodes"] if n.get("labels", {}).items() >= DEFAULT_NODE_SELECTOR.items()]
    assert len(sfm) == 1 and sfm[0]["role"] == "worker"
    patch = yaml.safe_load(sfm[0]["kubeadmConfigPatches"][0])
    assert patch["kind"] == "JoinConfiguration"
    taints = patch["nodeRegistration"]["taints"]
    assert taints == [{k: t[k] for k in ("key", "value", "effect")} for t in DEFAULT_TOLERATIONS]
    # Every worker mounts the shared data folder: SfM pods and the API/operator see the same files.
    workers = [n for n in config["nodes"] if n["role"] == "worker"]
    assert len(workers) == 2
    assert all(n["extraMounts"][0]["containerPath"] == "/var/lib/sharpml" for n in workers)
