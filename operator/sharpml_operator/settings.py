"""Operator configuration: the registry's ``SHARPML_*`` values (:mod:`sharpml.settings`), read once.

The defaults describe the production set-up: SfM nodes (the Mac mini, and any added beside it) labelled
and tainted for SfM, one COLMAP pod at a time on each, the shared data volume mounted by every SharpML
component.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sharpml.config import default_data_dir, job_timeout_seconds
from sharpml.links import LinkSettings
from sharpml.pricing import RUNPOD_FLEX_USD_PER_SECOND
from sharpml.settings import ConfigError, value
from sharpml.storage import S3Settings
from sharpml_operator.mail import SmtpSettings

#: Queue slots are per kind of resource; each stage names the kind it occupies.
SFM_NODE = "sfm-node"
GPU = "gpu"


def _defaults(env: Mapping[str, str] = {}) -> dict[str, Any]:
    return {
        "image": value(env, "SHARPML_SFM_IMAGE"),
        "image_pull_policy": value(env, "SHARPML_SFM_IMAGE_PULL_POLICY"),
        "node_concurrency": value(env, "SHARPML_SFM_CONCURRENCY"),
        "node_selector": dict(value(env, "SHARPML_SFM_NODE_SELECTOR")),
        "tolerations": [dict(t) for t in value(env, "SHARPML_SFM_TOLERATIONS")],
        "resources": Resources(
            cpu_request=value(env, "SHARPML_SFM_CPU_REQUEST"),
            cpu_limit=value(env, "SHARPML_SFM_CPU_LIMIT"),
            memory_request=value(env, "SHARPML_SFM_MEMORY_REQUEST"),
            memory_limit=value(env, "SHARPML_SFM_MEMORY_LIMIT"),
            ephemeral_request=value(env, "SHARPML_SFM_EPHEMERAL_REQUEST"),
            ephemeral_limit=value(env, "SHARPML_SFM_EPHEMERAL_LIMIT"),
        ),
        "data_pvc": value(env, "SHARPML_DATA_PVC"),
        "data_dir": default_data_dir(env),
        "run_as_user": value(env, "SHARPML_SFM_UID"),
        "job_timeout_seconds": job_timeout_seconds(env),
        "sfm_threads": value(env, "SHARPML_SFM_THREADS"),
        "poll_seconds": value(env, "SHARPML_OPERATOR_POLL_SECONDS"),
        "retention_check_seconds": value(env, "SHARPML_RETENTION_CHECK_SECONDS"),
        "orphan_grace_seconds": value(env, "SHARPML_ORPHAN_GRACE_SECONDS"),
        "orphan_check_seconds": value(env, "SHARPML_ORPHAN_CHECK_SECONDS"),
        "start_timeout_seconds": value(env, "SHARPML_SFM_START_TIMEOUT_SECONDS"),
        "metrics_port": value(env, "SHARPML_METRICS_PORT"),
        "training": TrainingSettings.from_env(env),
        "s3": S3Settings.from_env(env),
        "delivery": DeliverySettings.from_env(env),
        "notify": NotifySettings.from_env(env),
    }


@dataclass(frozen=True)
class DeliverySettings:
    """The Delivering stage and what is kept afterwards: the backup, the artifacts' and logs' lifetimes."""

    #: ``auto``: back up when S3 is configured (an endpoint or credentials); ``on``; ``off``.
    backup: str
    backup_timeout_seconds: int
    local_seconds: int
    retention_days: float
    log_retention_days: float

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DeliverySettings:
        return cls(
            backup=value(env, "SHARPML_ARTIFACT_BACKUP"),
            backup_timeout_seconds=value(env, "SHARPML_ARTIFACT_BACKUP_TIMEOUT_SECONDS"),
            local_seconds=value(env, "SHARPML_ARTIFACT_LOCAL_SECONDS"),
            retention_days=value(env, "SHARPML_ARTIFACT_RETENTION_DAYS"),
            log_retention_days=value(env, "SHARPML_LOG_RETENTION_DAYS"),
        )

    @property
    def retention_seconds(self) -> float:
        return self.retention_days * 86400

    def backs_up(self, s3: S3Settings) -> bool:
        return self.backup == "on" or (self.backup == "auto" and s3.configured)


@dataclass(frozen=True)
class NotifySettings:
    """Notifications of finished jobs (:mod:`sharpml_operator.notifier`): the webhook's key and guard,
    SMTP, the retry schedule, and what the links they carry need."""

    #: The webhook signing key's bytes (from ``whsec_<base64>``); None: webhooks are recorded Failed.
    webhook_key: bytes | None = field(repr=False)
    webhook_timeout_seconds: float
    allowed_hosts: tuple[str, ...]
    attempts: int
    retry_seconds: float
    smtp: SmtpSettings | None  # None: e-mails are recorded Failed
    links: LinkSettings
    public_url: str

    def backoff(self, attempt: int) -> float:
        """Seconds between failed attempt ``attempt`` (1, 2, ...) and the next: doubling each time."""
        return self.retry_seconds * 2 ** (attempt - 1)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NotifySettings:
        from sharpml_operator.webhook import parse_secret

        raw = value(env, "SHARPML_WEBHOOK_SECRET")
        try:
            key = parse_secret(raw) if raw else None
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        host = value(env, "SHARPML_SMTP_HOST")
        smtp = (
            SmtpSettings(
                host=host,
                port=value(env, "SHARPML_SMTP_PORT"),
                starttls=value(env, "SHARPML_SMTP_STARTTLS") == "required",
                username=value(env, "SHARPML_SMTP_USERNAME"),
                password=value(env, "SHARPML_SMTP_PASSWORD"),
                sender=value(env, "SHARPML_SMTP_FROM"),
                timeout=value(env, "SHARPML_SMTP_TIMEOUT_SECONDS"),
            )
            if host
            else None
        )
        return cls(
            webhook_key=key,
            webhook_timeout_seconds=value(env, "SHARPML_WEBHOOK_TIMEOUT_SECONDS"),
            allowed_hosts=tuple(h.lower() for h in value(env, "SHARPML_WEBHOOK_ALLOWED_HOSTS")),
            attempts=value(env, "SHARPML_NOTIFY_ATTEMPTS"),
            retry_seconds=value(env, "SHARPML_NOTIFY_RETRY_SECONDS"),
            smtp=smtp,
            links=LinkSettings.from_env(env),
            public_url=value(env, "SHARPML_PUBLIC_URL").rstrip("/"),
        )


@dataclass(frozen=True)
class TrainingSettings:
    """The Training stage: the default backend, the GPU queue, deadlines, RunPod and its price."""

    backend: str
    concurrency: int
    timeout_seconds: int
    retries: int
    runpod_endpoint_id: str
    runpod_api_key: str
    gpu_type: str
    #: US dollars per GPU second: the setting, else RunPod's published price of the GPU type.
    usd_per_second: Decimal
    #: The training pod of ``backend: cluster``.
    pod: TrainingPodSettings

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TrainingSettings:
        gpu_type = value(env, "SHARPML_RUNPOD_GPU_TYPE")
        price = value(env, "SHARPML_RUNPOD_PRICE_PER_SECOND")
        return cls(
            backend=value(env, "SHARPML_TRAINING_BACKEND"),
            concurrency=value(env, "SHARPML_TRAINING_CONCURRENCY"),
            timeout_seconds=value(env, "SHARPML_TRAINING_TIMEOUT_SECONDS"),
            retries=value(env, "SHARPML_TRAINING_RETRIES"),
            runpod_endpoint_id=value(env, "SHARPML_RUNPOD_ENDPOINT_ID"),
            runpod_api_key=value(env, "SHARPML_RUNPOD_API_KEY"),
            gpu_type=gpu_type,
            usd_per_second=Decimal(str(price)) if price else RUNPOD_FLEX_USD_PER_SECOND[gpu_type],
            pod=TrainingPodSettings.from_env(env),
        )


@dataclass(frozen=True)
class TrainingPodSettings:
    """Where and how a cluster training pod runs (the sandbox itself is the SfM pod's)."""

    image: str
    image_pull_policy: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]
    #: ``nvidia.com/gpu`` in the container's limits; 0 trains on the node's CPUs.
    gpus: int
    resources: Resources

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TrainingPodSettings:
        return cls(
            image=value(env, "SHARPML_TRAINING_IMAGE"),
            image_pull_policy=value(env, "SHARPML_TRAINING_IMAGE_PULL_POLICY"),
            node_selector=dict(value(env, "SHARPML_TRAINING_NODE_SELECTOR")),
            tolerations=[dict(t) for t in value(env, "SHARPML_TRAINING_TOLERATIONS")],
            gpus=value(env, "SHARPML_TRAINING_GPUS"),
            resources=Resources(
                cpu_request=value(env, "SHARPML_TRAINING_CPU_REQUEST"),
                cpu_limit=value(env, "SHARPML_TRAINING_CPU_LIMIT"),
                memory_request=value(env, "SHARPML_TRAINING_MEMORY_REQUEST"),
                memory_limit=value(env, "SHARPML_TRAINING_MEMORY_LIMIT"),
                ephemeral_request=value(env, "SHARPML_TRAINING_EPHEMERAL_REQUEST"),
                ephemeral_limit=value(env, "SHARPML_TRAINING_EPHEMERAL_LIMIT"),
            ),
        )


@dataclass(frozen=True)
class Resources:
    """Requests and limits of a sandboxed container (Kubernetes quantities)."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    ephemeral_request: str
    ephemeral_limit: str

    def as_k8s(self, gpus: int = 0) -> dict[str, dict[str, str]]:
        """The container's ``resources``; ``gpus`` adds ``nvidia.com/gpu`` (a limit: the request follows)."""
        extra = {"nvidia.com/gpu": str(gpus)} if gpus else {}
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
                **extra,
            },
        }


@dataclass(frozen=True)
class Settings:
    """What the operator runs with (``Settings.from_env({})``: the registry's defaults)."""

    image: str
    image_pull_policy: str
    #: How many SfM pods may run at once on each SfM node (the SfM queue's capacity is this times the
    #: SfM nodes that can take pods now: ``nodes.py``).
    node_concurrency: int
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]
    resources: Resources
    #: The shared data volume: its claim name in each job's namespace, and where the operator mounts it.
    data_pvc: str
    data_dir: Path
    run_as_user: int
    job_timeout_seconds: int
    sfm_threads: int
    poll_seconds: float
    retention_check_seconds: float
    #: Job directories no SharpJob owns are deleted this long after their last change (0: never).
    orphan_grace_seconds: int
    orphan_check_seconds: float
    start_timeout_seconds: int
    metrics_port: int
    training: TrainingSettings
    s3: S3Settings
    delivery: DeliverySettings
    notify: NotifySettings
    #: Label on every sandboxed pod; the deny-all NetworkPolicy selects it.
    sandbox_label: str = "sharpml.com/sandbox"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        return cls(**_defaults(os.environ if env is None else env))
