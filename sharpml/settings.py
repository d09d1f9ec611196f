"""The settings registry: every ``SHARPML_*`` variable of the core, the trainer, the API and the operator,
declared once.

Each :class:`Setting` has its environment name, type, default, bounds and a one-line doc. The
components read their values through it (``sharpml.config``, ``sharpml_api.settings``,
``sharpml_operator.settings``), the README's configuration tables are generated from it
(``python -m sharpml.settings --write README.md``; a test fails when they drift) and so will the Helm
chart's values be. Pure Python: no third-party import.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sharpml.pricing import GPU_TYPES

COMPONENTS = ("core", "trainer", "api", "operator")
KINDS = ("int", "float", "str", "secret", "path", "list", "object", "array", "choice", "quantity")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


class ConfigError(ValueError):
    """A ``SHARPML_*`` variable holds a value that cannot be used; the message names it and the rule."""


@dataclass(frozen=True)
class Setting:
    env: str
    kind: str
    default: Any
    doc: str
    component: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    #: How the README shows a default that is computed at start-up (a path, the pod's namespace).
    shown: str | None = None

    def __post_init__(self) -> None:
        assert self.kind in KINDS and self.component in COMPONENTS, self

    def read(self, env: Mapping[str, str]) -> Any:
        """The value from ``env`` (unset or blank: the default), parsed and checked."""
        raw = env.get(self.env)
        if raw is None or raw.strip() == "":
            return self.default
        raw = raw.strip() if self.kind != "secret" else raw
        return self.parse(raw)

    def parse(self, raw: str) -> Any:
        name = f"{self.env}={raw!r}" if self.kind != "secret" else self.env
        if self.kind in ("int", "float"):
            try:
                value: Any = int(raw) if self.kind == "int" else float(raw)
            except ValueError:
                what = "a whole number" if self.kind == "int" else "a number"
                raise ConfigError(f"{name}: must be {what}") from None
            if self.minimum is not None and value < self.minimum:
                raise ConfigError(f"{name}: must be at least {_num(self.minimum)}")
            if self.maximum is not None and value > self.maximum:
                raise ConfigError(f"{name}: must be at most {_num(self.maximum)}")
            return value
        if self.kind == "choice":  # any case: INFO and info are one log level
            match = next((c for c in self.choices if c.lower() == raw.lower()), None)
            if match is None:
                raise ConfigError(f"{name}: must be one of {', '.join(self.choices)}")
            return match
        if self.kind == "quantity":
            if not _QUANTITY.match(raw):
                raise ConfigError(f"{name}: must be a Kubernetes quantity such as 500m, 2, 512Mi or 8Gi")
            return raw
        if self.kind == "list":
            return tuple(item.strip() for item in raw.split(",") if item.strip())
        if self.kind in ("object", "array"):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{self.env}: not valid JSON ({exc.msg})") from None
            wanted = dict if self.kind == "object" else list
            if not isinstance(value, wanted):
                raise ConfigError(f"{self.env}: must be a JSON {self.kind}")
            return value
        if self.kind == "path":
            return Path(raw).expanduser()
        return raw

    @property
    def default_text(self) -> str:
        if self.shown is not None:
            return self.shown
        if self.default in ("", (), None):
            return "—"
        if isinstance(self.default, tuple):
            return "`" + ",".join(self.default) + "`"
        if isinstance(self.default, dict | list):
            return "`" + json.dumps(self.default, separators=(",", ":")) + "`"
        return f"`{_num(self.default) if isinstance(self.default, float) else self.default}`"

    @property
    def accepts(self) -> str:
        """What a value may be, for the README tables (and the Helm chart's schema later)."""
        if self.kind == "choice":
            return ", ".join(f"`{c}`" for c in self.choices)
        words = {
            "int": "integer",
            "float": "number",
            "str": "text",
            "secret": "secret text",
            "path": "path",
            "list": "comma-separated list",
            "object": "JSON object",
            "array": "JSON array",
            "quantity": "Kubernetes quantity",
        }
        lo, hi = self.minimum, self.maximum
        if lo is not None and hi is not None:
            return f"{words[self.kind]} {_num(lo)} to {_num(hi)}"
        if lo is not None:
            return f"{words[self.kind]} ≥ {_num(lo)}"
        return words[self.kind]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_TRAINING_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
_SFM_TOLERATIONS = [{"key": "sharpml.com/sfm", "operator": "Equal", "value": "true", "effect": "NoSchedule"}]

SETTINGS: tuple[Setting, ...] = (
    # --- core: the CLI, the API and the operator alike --------------------------------------------------
    Setting(
        "SHARPML_DATA_DIR",
        "path",
        None,
        "the data directory (jobs, uploads, splats)",
        "core",
        shown="`~/.local/share/sharpml` (`.data/` under `make`)",
    ),
    Setting("SHARPML_MAX_FILE_MB", "int", 20, "largest accepted photo, in MB", "core", 1),
    Setting("SHARPML_MAX_UPLOAD_MB", "int", 500, "largest accepted set of photos, in MB", "core", 1),
    Setting("SHARPML_MIN_IMAGES", "int", 5, "fewest photos in a set", "core", 1),
    Setting("SHARPML_MAX_IMAGES", "int", 100, "most photos in a set", "core", 1),
    Setting(
        "SHARPML_MAX_IMAGE_DIMENSION",
        "int",
        8000,
        "longest accepted side in pixels, checked from the header before decoding",
        "core",
        16,
    ),
    Setting(
        "SHARPML_JOB_TIMEOUT_MS",
        "int",
        1_800_000,
        "processing deadline of a job's SfM stage, in milliseconds",
        "core",
        1000,
    ),
    # --- the trainer (sharpml.train: the training pod, the RunPod worker, `sharpml process --train`) -----
    Setting(
        "SHARPML_TRAIN_STEPS",
        "int",
        7000,
        "training steps (one photo each; gsplat's 7k recipe)",
        "trainer",
        1,
        100_000,
    ),
    Setting(
        "SHARPML_TRAIN_MAX_GAUSSIANS",
        "int",
        1_000_000,
        "cap on the number of gaussians (MCMC densification): bounds memory, time and file size",
        "trainer",
        100,
        10_000_000,
    ),
    Setting(
        "SHARPML_TRAIN_MAX_IMAGE_SIZE",
        "int",
        1600,
        "photos are downscaled to this longest side for training (never upscaled)",
        "trainer",
        32,
        8000,
    ),
    Setting(
        "SHARPML_TRAIN_DEVICE",
        "choice",
        "auto",
        "where to train (`auto`: CUDA when available, else CPU)",
        "trainer",
        choices=("auto", "cpu", "cuda"),
    ),
    Setting(
        "SHARPML_TRAIN_THREADS",
        "int",
        0,
        "CPU threads PyTorch may use (0: its default, one per core)",
        "trainer",
        0,
        1024,
    ),
    # --- the REST API -----------------------------------------------------------------------------------
    Setting("SHARPML_API_HOST", "str", "127.0.0.1", "listen address (0.0.0.0 in a pod)", "api"),
    Setting("SHARPML_API_PORT", "int", 8080, "listen port", "api", 0, 65535),
    Setting(
        "SHARPML_NAMESPACE",
        "str",
        "",
        "where SharpJobs and rate-limit Leases live",
        "api",
        shown="the pod's namespace, else `sharpml`",
    ),
    Setting(
        "SHARPML_KUBECONFIG",
        "str",
        "",
        "kubeconfig file (or `KUBECONFIG`)",
        "api",
        shown="in-cluster service account",
    ),
    Setting(
        "SHARPML_JWT_ALGORITHMS",
        "list",
        (),
        "accepted token algorithms (comma-separated)",
        "api",
        shown="HS256 if a secret is set, RS256 if a public key is",
    ),
    Setting("SHARPML_JWT_SECRET", "secret", "", "HMAC key for HS* tokens, at least 32 bytes", "api"),
    Setting("SHARPML_JWT_PUBLIC_KEY", "secret", "", "PEM public key for RS/PS/ES tokens", "api"),
    Setting("SHARPML_JWT_PUBLIC_KEY_FILE", "str", "", "file holding that PEM public key", "api"),
    Setting("SHARPML_JWT_ISSUER", "str", "", "required `iss` claim (required when a key is set)", "api"),
    Setting("SHARPML_JWT_AUDIENCE", "str", "sharpml-api", "required `aud` claim", "api"),
    Setting("SHARPML_JWT_ACCOUNT_CLAIM", "str", "sub", "claim holding the account id", "api"),
    Setting("SHARPML_JWT_LEEWAY_SECONDS", "int", 30, "clock skew allowed on `exp`/`nbf`", "api", 0, 300),
    Setting(
        "SHARPML_RATE_LIMIT_IP_PER_HOUR", "int", 10, "uploads per client address per hour (0: off)", "api", 0
    ),
    Setting(
        "SHARPML_RATE_LIMIT_ACCOUNT_PER_DAY", "int", 50, "uploads per account per day (0: off)", "api", 0
    ),
    Setting(
        "SHARPML_ANONYMOUS_UPLOADS_PER_DAY",
        "int",
        3,
        "free tier: anonymous uploads per address per day (0: refused)",
        "api",
        0,
    ),
    Setting(
        "SHARPML_ANONYMOUS_ACCOUNT",
        "str",
        "anonymous",
        "owner of anonymous jobs; tokens naming it are refused",
        "api",
    ),
    Setting("SHARPML_CORS_ORIGINS", "list", ("https://sharpml.com",), "origins allowed by CORS", "api"),
    Setting(
        "SHARPML_TRUSTED_PROXIES", "list", (), "addresses/CIDRs whose `X-Forwarded-For` is believed", "api"
    ),
    Setting("SHARPML_INTAKE_CONCURRENCY", "int", 2, "uploads ingested at once per replica", "api", 1),
    Setting("SHARPML_INTAKE_WORKERS", "int", 2, "decode threads per upload", "api", 1),
    Setting(
        "SHARPML_SSE_KEEPALIVE_SECONDS", "int", 15, "keep-alive comment interval of event streams", "api", 1
    ),
    Setting(
        "SHARPML_UPLOAD_TIMEOUT_SECONDS",
        "int",
        900,
        "longest an upload's body may take to arrive (then 408)",
        "api",
        1,
    ),
    Setting(
        "SHARPML_PUBLIC_URL",
        "str",
        "",
        "public base URL of the API: of the URLs in its responses (behind a proxy) and of the links "
        "notifications carry",
        "core",
        shown="the request's base URL",
    ),
    Setting(
        "SHARPML_ALLOWED_HOSTS",
        "list",
        ("localhost", "127.0.0.1", "::1"),
        "with `SHARPML_PUBLIC_URL` unset: `Host` names whose URLs answers may carry (others: 400; `*`: any)",
        "api",
    ),
    Setting(
        "SHARPML_APISERVER_TIMEOUT_SECONDS",
        "int",
        10,
        "longest an apiserver call may wait to connect, and then for an answer (then 503)",
        "api",
        1,
        300,
    ),
    Setting(
        "SHARPML_HEADER_TIMEOUT_SECONDS",
        "int",
        10,
        "longest a request's headers may take to arrive (then the connection is closed)",
        "api",
        1,
        300,
    ),
    Setting(
        "SHARPML_UPLOAD_IDLE_SECONDS",
        "int",
        60,
        "longest an upload's body may pause between two chunks (then 408)",
        "api",
        1,
    ),
    Setting(
        "SHARPML_UPLOADS_PER_IP_CONCURRENT",
        "int",
        4,
        "uploads one client address may have in flight at once, per replica (0: no cap; then 429)",
        "api",
        0,
    ),
    Setting(
        "SHARPML_WEBHOOK_ALLOWED_HOSTS",
        "list",
        (),
        "webhook hosts and CIDRs accepted although internal (tests, intranets), at submission and at sending",
        "core",
    ),
    # Signed links (sharpml.links): the API verifies them and mints them in answers, the operator mints the
    # ones its notifications carry; both need the same keys (core: the chart gives them to both containers).
    Setting(
        "SHARPML_LINK_KEYS",
        "secret",
        "",
        "`kid:secret,...` HMAC keys of signed links, 32+ bytes each; the first signs, all verify (rotation)",
        "core",
        shown="none: no links are issued",
    ),
    Setting(
        "SHARPML_LINK_TTL_SECONDS",
        "int",
        7 * 24 * 3600,
        "how long a signed download or share link works (never past the artifact's expiry)",
        "core",
        60,
        90 * 24 * 3600,
    ),
    Setting(
        "SHARPML_LOG_LEVEL",
        "choice",
        "info",
        "log level",
        "api",
        choices=("debug", "info", "warning", "error"),
    ),
    # --- the operator -----------------------------------------------------------------------------------
    Setting("SHARPML_SFM_IMAGE", "str", "localhost/sharpml-sfm:latest", "the SfM image", "operator"),
    Setting(
        "SHARPML_SFM_IMAGE_PULL_POLICY",
        "choice",
        "IfNotPresent",
        "its pull policy",
        "operator",
        choices=("Always", "IfNotPresent", "Never"),
    ),
    Setting(
        "SHARPML_SFM_CONCURRENCY",
        "int",
        1,
        "SfM pods at once on each SfM node (the queue's slots: this times the ready SfM nodes)",
        "operator",
        1,
    ),
    Setting(
        "SHARPML_SFM_NODE_SELECTOR",
        "object",
        {"sharpml.com/role": "sfm"},
        "nodeSelector of the SfM nodes: every node it matches shares the SfM queue (JSON)",
        "operator",
    ),
    Setting(
        "SHARPML_SFM_TOLERATIONS",
        "array",
        _SFM_TOLERATIONS,
        "tolerations of SfM pods (JSON)",
        "operator",
        shown="toleration of `sharpml.com/sfm=true:NoSchedule`",
    ),
    Setting("SHARPML_SFM_CPU_REQUEST", "quantity", "1", "SfM container CPU request", "operator"),
    Setting("SHARPML_SFM_CPU_LIMIT", "quantity", "4", "SfM container CPU limit", "operator"),
    Setting("SHARPML_SFM_MEMORY_REQUEST", "quantity", "2Gi", "SfM container memory request", "operator"),
    Setting(
        "SHARPML_SFM_MEMORY_LIMIT",
        "quantity",
        "8Gi",
        "SfM container memory limit (exceeded: `OutOfMemory`)",
        "operator",
    ),
    Setting("SHARPML_SFM_EPHEMERAL_REQUEST", "quantity", "1Gi", "SfM ephemeral storage request", "operator"),
    Setting(
        "SHARPML_SFM_EPHEMERAL_LIMIT",
        "quantity",
        "4Gi",
        "SfM ephemeral storage limit, also the `/tmp` emptyDir's size",
        "operator",
    ),
    Setting("SHARPML_SFM_UID", "int", 10001, "the SfM image's fixed non-root UID/GID", "operator", 1),
    Setting("SHARPML_SFM_THREADS", "int", -1, "COLMAP threads in the pod (-1: all it sees)", "operator", -1),
    Setting("SHARPML_DATA_PVC", "str", "sharpml-data", "claim name of the shared data volume", "operator"),
    Setting("SHARPML_OPERATOR_POLL_SECONDS", "float", 2.0, "queue and pod check interval", "operator", 0.1),
    Setting("SHARPML_RETENTION_CHECK_SECONDS", "float", 60.0, "retention check interval", "operator", 0.1),
    # Notifications of finished jobs (operator/sharpml_operator/notifier.py): a signed webhook, an e-mail.
    Setting(
        "SHARPML_WEBHOOK_SECRET",
        "secret",
        "",
        "`whsec_<base64>` key that signs webhooks (Standard Webhooks); unset: webhooks are recorded Failed",
        "operator",
    ),
    Setting(
        "SHARPML_WEBHOOK_TIMEOUT_SECONDS",
        "float",
        10.0,
        "longest a webhook may take to connect, and then for each read of its answer",
        "operator",
        0.1,
        120,
    ),
    Setting(
        "SHARPML_NOTIFY_ATTEMPTS",
        "int",
        5,
        "attempts per notification before it is recorded Failed",
        "operator",
        1,
        20,
    ),
    Setting(
        "SHARPML_NOTIFY_RETRY_SECONDS",
        "float",
        30.0,
        "wait before the second attempt; doubled before each further one",
        "operator",
        0.1,
        3600,
    ),
    Setting(
        "SHARPML_SMTP_HOST",
        "str",
        "",
        "SMTP server of e-mail notifications (unset: e-mails are recorded Failed)",
        "operator",
    ),
    Setting("SHARPML_SMTP_PORT", "int", 587, "its port", "operator", 1, 65535),
    Setting(
        "SHARPML_SMTP_STARTTLS",
        "choice",
        "required",
        "`required`: STARTTLS or no mail; `off`: plain SMTP (a relay on a trusted network only)",
        "operator",
        choices=("required", "off"),
    ),
    Setting("SHARPML_SMTP_USERNAME", "str", "", "SMTP AUTH user (unset: no AUTH)", "operator"),
    Setting("SHARPML_SMTP_PASSWORD", "secret", "", "SMTP AUTH password", "operator"),
    Setting(
        "SHARPML_SMTP_FROM",
        "str",
        "SharpML <noreply@sharpml.com>",
        "`From` of e-mail notifications",
        "operator",
    ),
    Setting(
        "SHARPML_SMTP_TIMEOUT_SECONDS", "float", 30.0, "SMTP connect and command timeout", "operator", 1, 300
    ),
    Setting(
        "SHARPML_ORPHAN_GRACE_SECONDS",
        "int",
        3600,
        "a job directory no SharpJob owns is deleted this long after its last change (0: never)",
        "operator",
        0,
    ),
    Setting(
        "SHARPML_ORPHAN_CHECK_SECONDS",
        "float",
        600.0,
        "interval of the sweep for job directories without a SharpJob (also run at start-up)",
        "operator",
        0.1,
    ),
    Setting(
        "SHARPML_SFM_START_TIMEOUT_SECONDS",
        "int",
        600,
        "an SfM or training pod unschedulable or not pulled this long fails its job",
        "operator",
        1,
    ),
    Setting("SHARPML_METRICS_PORT", "int", 8080, "Prometheus endpoint port (0: off)", "operator", 0, 65535),
    # --- the operator's Training stage -------------------------------------------------------------------
    Setting(
        "SHARPML_TRAINING_BACKEND",
        "choice",
        "runpod",
        "where jobs that do not say (spec.training.backend) are trained",
        "operator",
        choices=("runpod", "cluster", "none"),
    ),
    Setting(
        "SHARPML_TRAINING_CONCURRENCY",
        "int",
        4,
        "jobs training at once (the GPU queue's slots)",
        "operator",
        1,
    ),
    Setting(
        "SHARPML_TRAINING_TIMEOUT_SECONDS",
        "int",
        3600,
        "deadline of one training attempt, queue included (RunPod's executionTimeout and ttl follow it)",
        "operator",
        60,
        86400,
    ),
    Setting(
        "SHARPML_TRAINING_RETRIES",
        "int",
        1,
        "failed training runs retried before the job fails",
        "operator",
        0,
        10,
    ),
    # spec.training.backend: cluster — a sandboxed training pod on a node of one's own (GPU or CPU).
    Setting(
        "SHARPML_TRAINING_IMAGE",
        "str",
        "localhost/sharpml-trainer:latest",
        "the trainer image of cluster training pods",
        "operator",
    ),
    Setting(
        "SHARPML_TRAINING_IMAGE_PULL_POLICY",
        "choice",
        "IfNotPresent",
        "its pull policy",
        "operator",
        choices=("Always", "IfNotPresent", "Never"),
    ),
    Setting(
        "SHARPML_TRAINING_NODE_SELECTOR",
        "object",
        {"sharpml.com/role": "train"},
        "nodeSelector pinning training pods (JSON)",
        "operator",
    ),
    Setting(
        "SHARPML_TRAINING_TOLERATIONS",
        "array",
        _TRAINING_TOLERATIONS,
        "tolerations of training pods (JSON)",
        "operator",
        shown="toleration of `nvidia.com/gpu:NoSchedule` (any value)",
    ),
    Setting(
        "SHARPML_TRAINING_GPUS",
        "int",
        1,
        "`nvidia.com/gpu` a training pod asks for (0: train on the node's CPUs)",
        "operator",
        0,
        8,
    ),
    Setting("SHARPML_TRAINING_CPU_REQUEST", "quantity", "2", "training container CPU request", "operator"),
    Setting("SHARPML_TRAINING_CPU_LIMIT", "quantity", "8", "training container CPU limit", "operator"),
    Setting(
        "SHARPML_TRAINING_MEMORY_REQUEST", "quantity", "8Gi", "training container memory request", "operator"
    ),
    Setting(
        "SHARPML_TRAINING_MEMORY_LIMIT",
        "quantity",
        "32Gi",
        "training container memory limit (exceeded: `OutOfMemory`)",
        "operator",
    ),
    Setting(
        "SHARPML_TRAINING_EPHEMERAL_REQUEST",
        "quantity",
        "1Gi",
        "training ephemeral storage request",
        "operator",
    ),
    Setting(
        "SHARPML_TRAINING_EPHEMERAL_LIMIT",
        "quantity",
        "8Gi",
        "training ephemeral storage limit, also the `/tmp` emptyDir's size",
        "operator",
    ),
    Setting(
        "SHARPML_RUNPOD_ENDPOINT_ID",
        "str",
        "",
        "the RunPod serverless endpoint running the trainer",
        "operator",
    ),
    Setting(
        "SHARPML_RUNPOD_API_KEY",
        "secret",
        "",
        "RunPod API key (`RUNPOD_ENDPOINT_BASE_URL` moves the API)",
        "operator",
    ),
    Setting(
        "SHARPML_RUNPOD_GPU_TYPE",
        "choice",
        "4090",
        "the endpoint's GPU type: its published per-second price costs each job",
        "operator",
        choices=GPU_TYPES,
    ),
    Setting(
        "SHARPML_RUNPOD_PRICE_PER_SECOND",
        "float",
        0.0,
        "US dollars per GPU second (0: RunPod's published price of the GPU type)",
        "operator",
        0,
    ),
    # The object store (sharpml.storage): between the operator and the GPU worker (scenes go up, results
    # come back, through presigned URLs so that the worker holds no credentials), and the artifacts' backup
    # that the API serves through redirects to presigned URLs: core, so both containers get them.
    Setting(
        "SHARPML_S3_ENDPOINT",
        "str",
        "",
        "S3 endpoint URL (`https://...`; a MinIO, versitygw, R2 ...)",
        "core",
        shown="AWS S3",
    ),
    Setting("SHARPML_S3_REGION", "str", "us-east-1", "S3 region (signs requests and URLs)", "core"),
    Setting("SHARPML_S3_BUCKET", "str", "sharpml", "bucket of the jobs' objects", "core"),
    Setting("SHARPML_S3_PREFIX", "str", "sharpml/", "key prefix of every object SharpML writes", "core"),
    Setting(
        "SHARPML_S3_ACCESS_KEY_ID",
        "secret",
        "",
        "S3 access key id",
        "core",
        shown="boto3's credential chain",
    ),
    Setting(
        "SHARPML_S3_SECRET_ACCESS_KEY",
        "secret",
        "",
        "S3 secret access key (set with the key id, or neither)",
        "core",
        shown="boto3's credential chain",
    ),
    Setting(
        "SHARPML_S3_CA_BUNDLE",
        "path",
        None,
        "PEM file of the CAs trusted for the endpoint",
        "core",
        shown="the system's",
    ),
    Setting(
        "SHARPML_S3_SSE",
        "choice",
        "AES256",
        "server-side encryption every object SharpML writes asks for (`AES256`: SSE-S3, `aws:kms`: SSE-KMS)",
        "core",
        choices=("AES256", "aws:kms", "none"),
    ),
    Setting(
        "SHARPML_S3_SSE_KMS_KEY_ID",
        "str",
        "",
        "KMS key of `aws:kms` (empty: the bucket's AWS-managed key)",
        "core",
    ),
    # --- the operator's Delivering stage and what it keeps (sharpml.contract.delivery) ---------------------
    Setting(
        "SHARPML_ARTIFACT_BACKUP",
        "choice",
        "auto",
        "back delivered artifacts up to S3 (`auto`: when SHARPML_S3_ENDPOINT or an access key is set)",
        "operator",
        choices=("auto", "on", "off"),
    ),
    Setting(
        "SHARPML_ARTIFACT_BACKUP_TIMEOUT_SECONDS",
        "int",
        600,
        "an S3 backup still failing this long after delivery began is given up (the local copy is kept)",
        "operator",
        0,
    ),
    Setting(
        "SHARPML_ARTIFACT_LOCAL_SECONDS",
        "int",
        86400,
        "a delivered artifact's local copy (`splats/`) is removed this long after delivery, once backed up",
        "operator",
        0,
    ),
    Setting(
        "SHARPML_ARTIFACT_RETENTION_DAYS",
        "float",
        30.0,
        "delivered artifacts (local and S3) are deleted this long after delivery (`outputs.expiresAt`)",
        "operator",
        0.0001,
        3650,
    ),
    Setting(
        "SHARPML_LOG_RETENTION_DAYS",
        "float",
        30.0,
        "files under `logs/` in the data directory are deleted this long after their last change",
        "operator",
        0.0001,
        3650,
    ),
)
REGISTRY: dict[str, Setting] = {s.env: s for s in SETTINGS}
assert len(REGISTRY) == len(SETTINGS), "a setting is declared twice"


def value(env: Mapping[str, str], name: str) -> Any:
    """The value of setting ``name`` in ``env``."""
    return REGISTRY[name].read(env)


def defaults(component: str) -> dict[str, Any]:
    return {s.env: s.default for s in SETTINGS if s.component == component}


def markdown_table(component: str) -> str:
    rows = ["| variable | default | accepts | meaning |", "|---|---|---|---|"]
    rows += [
        f"| `{s.env}` | {s.default_text} | {s.accepts} | {s.doc} |"
        for s in SETTINGS
        if s.component == component
    ]
    return "\n".join(rows) + "\n"


def _blocks(text: str) -> Iterable[tuple[str, int, int]]:
    for m in re.finditer(r"<!-- settings:(\w+) -->\n(.*?)<!-- /settings -->", text, re.S):
        yield m.group(1), m.start(2), m.end(2)


def render(text: str) -> str:
    """``text`` (the README) with every ``<!-- settings:COMPONENT -->`` block regenerated."""
    out, last = [], 0
    for component, start, end in _blocks(text):
        out += [text[last:start], markdown_table(component)]
        last = end
    return "".join(out) + text[last:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sharpml.settings", description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, help="regenerate the settings tables in this Markdown file")
    parser.add_argument("--check", type=Path, help="exit 1 if this file's settings tables are stale")
    args = parser.parse_args(argv)
    target = args.write or args.check
    if target is None:
        for component in COMPONENTS:
            print(f"### {component}\n\n{markdown_table(component)}")
        return 0
    text = target.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{target}: settings tables are stale; run python -m sharpml.settings --write {target}")
            return 1
        return 0
    target.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
