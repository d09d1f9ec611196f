"""The sandboxed pods (SfM, and cluster training) and the deny-all NetworkPolicy that isolates them.

Everything that makes the sandbox is here, in one place: pinned to its node (the node selector and
tolerations; an SfM pod also by a required affinity to the one SfM node the operator chose for it:
``nodes.py``), no service account
token, no service links, no network (the policy), Pod Security "restricted" (fixed non-root UID, no
privilege escalation, no capabilities, RuntimeDefault seccomp, read-only root with an emptyDir for
/tmp), a deadline, and exactly two mounts of the shared data volume. The SfM pod: the job directory
read-only at /job and its colmap/ writable at /job/colmap. The training pod: colmap/ read-only at
/job/colmap and the job's training/ writable at /job/training.
"""

from __future__ import annotations

import math
from typing import Any

from sharpml.contract import (
    API_VERSION,
    JOB_NAME_LABEL,
    JOB_UID_LABEL,
    KIND,
    MANAGED_BY,
    STAGE_LABEL,
    JobSpec,
)
from sharpml_operator.nodes import pin_to
from sharpml_operator.settings import Settings

SFM_STAGE = "sfm"
TRAINING_STAGE = "train"
JOB_MOUNT = "/job"
#: The training pod's only writable mount (the job's ``training/``).
TRAINING_MOUNT = "/job/training"
NETWORK_POLICY_NAME = "sharpml-sandbox-deny-all"
#: What the pod runs: the core SfM stage as a module (sharpml/sfm.py), reading /job, writing /job/colmap.
SFM_COMMAND = ["python", "-m", "sharpml.sfm"]
#: What a cluster training pod runs: the trainer's pod entry point (sharpml/train/__main__.py).
TRAINING_COMMAND = ["python", "-m", "sharpml.train"]


def pod_name(job_uid: str) -> str:
    """Deterministic: one SfM pod per SharpJob object (a re-created job of the same name gets a new one)."""
    return f"sfm-{job_uid}"


def training_pod_name(job_uid: str) -> str:
    """Deterministic like the SfM pod's: a restarted operator adopts the pod instead of starting another."""
    return f"train-{job_uid}"


def pod_labels(job_name: str, job_uid: str, settings: Settings, stage: str = SFM_STAGE) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": f"sharpml-{stage}",
        "app.kubernetes.io/component": stage,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        STAGE_LABEL: stage,
        JOB_UID_LABEL: job_uid,
        settings.sandbox_label: "true",
    }
    if len(job_name) <= 63:  # label values are limited to 63 characters; the uid label always identifies
        labels[JOB_NAME_LABEL] = job_name
    return labels


def sfm_args(spec: JobSpec, settings: Settings) -> list[str]:
    """The SfM stage's arguments from spec.processing (defaults: the contract's, which the CRD holds)."""
    return [
        JOB_MOUNT,
        "--matcher",
        spec.matcher,
        "--mapper",
        spec.mapper,
        "--max-image-size",
        str(spec.max_image_size),
        # The scene is undistorted at the size the job trains at, not the photos' (12 MP) size.
        "--scene-image-size",
        str(spec.train_image_size),
        "--threads",
        str(settings.sfm_threads),
        # The fallback ladder's retries must fit in the pod's deadline.
        "--time-budget",
        str(settings.job_timeout_seconds),
    ]


def training_args(spec: JobSpec, gpus: int, cpu_limit: str) -> list[str]:
    """``python -m sharpml.train`` on the SfM scene (read-only) into the pod's own directory. On CPU,
    PyTorch would start a thread per core of the node, not per core of the pod's limit: it is told."""
    args = [
        f"{JOB_MOUNT}/colmap/scene",
        TRAINING_MOUNT,
        "--steps",
        str(spec.training_steps),
        "--max-gaussians",
        str(spec.max_gaussians),
        "--max-image-size",
        str(spec.train_image_size),
        "--device",
        "cuda" if gpus else "cpu",
    ]
    if not gpus:
        args += ["--threads", str(cpu_threads(cpu_limit))]
    return args


def cpu_threads(quantity: str) -> int:
    """Whole cores in a CPU quantity (``500m`` -> 1, ``2`` -> 2, ``2.5`` -> 3); 0 (PyTorch's default)
    for a quantity no CPU limit is written in (``1k``)."""
    try:
        cores = float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)
    except ValueError:
        return 0
    return max(1, math.ceil(cores))


def sfm_pod(
    *,
    job_name: str,
    job_uid: str,
    namespace: str,
    spec: JobSpec,
    job_dir: str,
    settings: Settings,
    node: str | None = None,
) -> dict[str, Any]:
    """The pod manifest for one SharpJob's SfM stage. ``job_dir`` is relative to the data volume root;
    ``node``: the SfM node it must run on (required node affinity), else any node the selector matches."""
    job_dir = job_dir.strip("/")
    pod = _sandboxed_pod(
        name=pod_name(job_uid),
        stage=SFM_STAGE,
        job_name=job_name,
        job_uid=job_uid,
        namespace=namespace,
        job_dir=job_dir,
        settings=settings,
        image=settings.image,
        image_pull_policy=settings.image_pull_policy,
        command=SFM_COMMAND,
        args=sfm_args(spec, settings),
        deadline=settings.job_timeout_seconds,
        node_selector=settings.node_selector,
        tolerations=settings.tolerations,
        resources=settings.resources.as_k8s(),
        ephemeral_limit=settings.resources.ephemeral_limit,
        mounts=[
            {"name": "data", "mountPath": JOB_MOUNT, "subPath": job_dir, "readOnly": True},
            {"name": "data", "mountPath": f"{JOB_MOUNT}/colmap", "subPath": f"{job_dir}/colmap"},
        ],
    )
    if node is not None:
        pod["spec"]["affinity"] = pin_to(node)
    return pod


def training_pod(
    *, job_name: str, job_uid: str, namespace: str, spec: JobSpec, job_dir: str, settings: Settings
) -> dict[str, Any]:
    """The pod manifest of ``spec.training.backend: cluster``: the SfM pod's sandbox on the training node.

    It sees only the SfM stage's ``colmap/`` (read-only: the scene and the preview splat) and writes only
    its own ``training/`` directory, which the operator reads as untrusted before anything reaches
    ``output/``.
    """
    job_dir = job_dir.strip("/")
    pod = settings.training.pod
    return _sandboxed_pod(
        name=training_pod_name(job_uid),
        stage=TRAINING_STAGE,
        job_name=job_name,
        job_uid=job_uid,
        namespace=namespace,
        job_dir=job_dir,
        settings=settings,
        image=pod.image,
        image_pull_policy=pod.image_pull_policy,
        command=TRAINING_COMMAND,
        args=training_args(spec, pod.gpus, pod.resources.cpu_limit),
        deadline=settings.training.timeout_seconds,
        node_selector=pod.node_selector,
        tolerations=pod.tolerations,
        resources=pod.resources.as_k8s(gpus=pod.gpus),
        ephemeral_limit=pod.resources.ephemeral_limit,
        mounts=[
            {
                "name": "data",
                "mountPath": f"{JOB_MOUNT}/colmap",
                "subPath": f"{job_dir}/colmap",
                "readOnly": True,
            },
            {"name": "data", "mountPath": TRAINING_MOUNT, "subPath": f"{job_dir}/training"},
        ],
    )


def _sandboxed_pod(
    *,
    name: str,
    stage: str,
    job_name: str,
    job_uid: str,
    namespace: str,
    job_dir: str,
    settings: Settings,
    image: str,
    image_pull_policy: str,
    command: list[str],
    args: list[str],
    deadline: int,
    node_selector: dict[str, str],
    tolerations: list[dict[str, str]],
    resources: dict[str, dict[str, str]],
    ephemeral_limit: str,
    mounts: list[dict[str, Any]],
) -> dict[str, Any]:
    """Every sandboxed pod of a job: what differs between stages is in the arguments, the sandbox is not."""
    uid = settings.run_as_user
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": pod_labels(job_name, job_uid, settings, stage),
            "annotations": {"sharpml.com/job-dir": job_dir},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "name": job_name,
                    "uid": job_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": deadline,
            "nodeSelector": dict(node_selector),
            "tolerations": [dict(t) for t in tolerations],
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 10,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": uid,
                "runAsGroup": uid,
                "fsGroup": uid,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [
                {
                    "name": stage,
                    "image": image,
                    "imagePullPolicy": image_pull_policy,
                    "command": list(command),
                    "args": args,
                    "env": [
                        {"name": "HOME", "value": "/tmp"},
                        {"name": "TMPDIR", "value": "/tmp"},
                        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                        {"name": "PYTHONUNBUFFERED", "value": "1"},
                    ],
                    "resources": resources,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": uid,
                        "runAsGroup": uid,
                        "allowPrivilegeEscalation": False,
                        "privileged": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumeMounts": [*mounts, {"name": "tmp", "mountPath": "/tmp"}],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": settings.data_pvc}},
                {"name": "tmp", "emptyDir": {"sizeLimit": ephemeral_limit}},
            ],
        },
    }


def deny_all_policy(namespace: str, settings: Settings) -> dict[str, Any]:
    """No ingress and no egress (DNS included) for every sandboxed pod of the namespace.

    Owned by the operator, one per namespace that runs SfM pods, so the sandbox never depends on a
    chart value being set; it carries no owner reference and outlives individual jobs.
    """
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": NETWORK_POLICY_NAME,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
        },
        "spec": {
            "podSelector": {"matchLabels": {settings.sandbox_label: "true"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [],
            "egress": [],
        },
    }
