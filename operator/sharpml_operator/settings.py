"""Operator configuration from ``SHARPML_*`` environment variables (one home, read once at start-up).

The defaults describe the production set-up: one SfM node (the Mac mini) labelled and tainted for SfM,
one COLMAP pod at a time, the shared data volume mounted by every SharpML component.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sharpml.config import (
    ConfigError,
    default_data_dir,
    env_float,
    env_int,
    job_timeout_seconds,
)

DEFAULT_NODE_SELECTOR = {"sharpml.com/role": "sfm"}
DEFAULT_TOLERATIONS = [
    {"key": "sharpml.com/sfm", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
]


def _json(env: Mapping[str, str], name: str, default: Any, kind: type) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, kind):
        raise ConfigError(f"{name}: must be a JSON {kind.__name__}")
    return value


@dataclass(frozen=True)
class Resources:
    """Requests and limits of the SfM container (Kubernetes quantities)."""

    cpu_request: str = "1"
    cpu_limit: str = "4"
    memory_request: str = "2Gi"
    memory_limit: str = "8Gi"
    ephemeral_request: str = "1Gi"
    ephemeral_limit: str = "4Gi"

    def as_k8s(self) -> dict[str, dict[str, str]]:
        return {
            "requests": {
                "cpu": self.cpu_request,
                "memory": self.memory_request,
                "ephemeral-storage": self.ephemeral_request,
            },
            "limits": {
                "cpu": self.cpu_limit,
                "memory": self.memory_limit,
                "ephemeral-storage": self.ephemeral_limit,
            },
        }


@dataclass(frozen=True)
class Settings:
    image: str = "localhost/sharpml-sfm:latest"
    image_pull_policy: str = "IfNotPresent"
    #: How many SfM pods may run at once (the SfM node's capacity).
    concurrency: int = 1
    node_selector: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_NODE_SELECTOR))
    tolerations: list[dict[str, str]] = field(default_factory=lambda: [dict(t) for t in DEFAULT_TOLERATIONS])
    resources: Resources = field(default_factory=Resources)
    #: The shared data volume: its claim name in each job's namespace, and where the operator mounts it.
    data_pvc: str = "sharpml-data"
    data_dir: Path = field(default_factory=default_data_dir)
    #: Fixed non-root UID/GID of the SfM container (the image's user).
    run_as_user: int = 10001
    #: activeDeadlineSeconds of the SfM pod (SHARPML_JOB_TIMEOUT_MS).
    job_timeout_seconds: int = 1800
    #: COLMAP worker threads in the pod (-1: all cores the container sees).
    sfm_threads: int = -1
    #: How often queued and running jobs are re-examined (the queue is level-triggered).
    poll_seconds: float = 2.0
    #: How often finished jobs are checked for expiry (spec.ttlSecondsAfterFinished).
    retention_check_seconds: float = 60.0
    #: A pod that cannot be scheduled, or whose image cannot be pulled, for this long fails its job.
    start_timeout_seconds: int = 600
    #: Prometheus metrics port (0: no metrics endpoint).
    metrics_port: int = 8080
    #: Labels on every SfM pod; the deny-all NetworkPolicy selects them.
    sandbox_label: str = "sharpml.com/sandbox"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        res = Resources(
            cpu_request=env.get("SHARPML_SFM_CPU_REQUEST") or Resources.cpu_request,
            cpu_limit=env.get("SHARPML_SFM_CPU_LIMIT") or Resources.cpu_limit,
            memory_request=env.get("SHARPML_SFM_MEMORY_REQUEST") or Resources.memory_request,
            memory_limit=env.get("SHARPML_SFM_MEMORY_LIMIT") or Resources.memory_limit,
            ephemeral_request=env.get("SHARPML_SFM_EPHEMERAL_REQUEST") or Resources.ephemeral_request,
            ephemeral_limit=env.get("SHARPML_SFM_EPHEMERAL_LIMIT") or Resources.ephemeral_limit,
        )
        pull = env.get("SHARPML_SFM_IMAGE_PULL_POLICY") or cls.image_pull_policy
        if pull not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError(
                f"SHARPML_SFM_IMAGE_PULL_POLICY={pull!r}: must be Always, IfNotPresent or Never"
            )
        return cls(
            image=env.get("SHARPML_SFM_IMAGE") or cls.image,
            image_pull_policy=pull,
            concurrency=env_int(env, "SHARPML_SFM_CONCURRENCY", 1, 1),
            node_selector=_json(env, "SHARPML_SFM_NODE_SELECTOR", dict(DEFAULT_NODE_SELECTOR), dict),
            tolerations=_json(env, "SHARPML_SFM_TOLERATIONS", [dict(t) for t in DEFAULT_TOLERATIONS], list),
            resources=res,
            data_pvc=env.get("SHARPML_DATA_PVC") or cls.data_pvc,
            data_dir=default_data_dir(env),
            run_as_user=env_int(env, "SHARPML_SFM_UID", 10001, 1),
            job_timeout_seconds=job_timeout_seconds(env),
            sfm_threads=env_int(env, "SHARPML_SFM_THREADS", -1, -1),
            poll_seconds=env_float(env, "SHARPML_OPERATOR_POLL_SECONDS", 2.0, 0.1),
            retention_check_seconds=env_float(env, "SHARPML_RETENTION_CHECK_SECONDS", 60.0, 0.1),
            start_timeout_seconds=env_int(env, "SHARPML_SFM_START_TIMEOUT_SECONDS", 600, 1),
            metrics_port=env_int(env, "SHARPML_METRICS_PORT", 8080, 0),
        )
