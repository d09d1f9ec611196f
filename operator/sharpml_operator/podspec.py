"""The sandboxed SfM pod and the deny-all NetworkPolicy that isolates it.

Everything that makes the sandbox is here, in one place: pinned to the SfM node, no service account
token, no service links, no network (the policy), Pod Security "restricted" (fixed non-root UID, no
privilege escalation, no capabilities, RuntimeDefault seccomp, read-only root with an emptyDir for
/tmp), a deadline, and exactly two mounts of the shared data volume: the job directory read-only at
/job and its colmap/ output directory writable at /job/colmap.
"""

from __future__ import annotations

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
from sharpml_operator.settings import Settings

SFM_STAGE = "sfm"
CONTAINER = "sfm"
JOB_MOUNT = "/job"
NETWORK_POLICY_NAME = "sharpml-sandbox-deny-all"
#: What the pod runs: the core SfM stage as a module (sharpml/sfm.py), reading /job, writing /job/colmap.
SFM_COMMAND = ["python", "-m", "sharpml.sfm"]


def pod_name(job_uid: str) -> str:
    """Deterministic: one SfM pod per SharpJob object (a re-created job of the same name gets a new one)."""
    return f"sfm-{job_uid}"


def pod_labels(job_name: str, job_uid: str, settings: Settings) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/name": "sharpml-sfm",
        "app.kubernetes.io/component": SFM_STAGE,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        STAGE_LABEL: SFM_STAGE,
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
        "--threads",
        str(settings.sfm_threads),
    ]


def sfm_pod(
    *, job_name: str, job_uid: str, namespace: str, spec: JobSpec, job_dir: str, settings: Settings
) -> dict[str, Any]:
    """The pod manifest for one SharpJob's SfM stage. ``job_dir`` is relative to the data volume root."""
    uid = settings.run_as_user
    job_dir = job_dir.strip("/")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod_name(job_uid),
            "namespace": namespace,
            "labels": pod_labels(job_name, job_uid, settings),
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
            "activeDeadlineSeconds": settings.job_timeout_seconds,
            "nodeSelector": dict(settings.node_selector),
            "tolerations": [dict(t) for t in settings.tolerations],
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
                    "name": CONTAINER,
                    "image": settings.image,
                    "imagePullPolicy": settings.image_pull_policy,
                    "command": list(SFM_COMMAND),
                    "args": sfm_args(spec, settings),
                    "env": [
                        {"name": "HOME", "value": "/tmp"},
                        {"name": "TMPDIR", "value": "/tmp"},
                        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
                        {"name": "PYTHONUNBUFFERED", "value": "1"},
                    ],
                    "resources": settings.resources.as_k8s(),
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
                    "volumeMounts": [
                        {"name": "data", "mountPath": JOB_MOUNT, "subPath": job_dir, "readOnly": True},
                        {"name": "data", "mountPath": f"{JOB_MOUNT}/colmap", "subPath": f"{job_dir}/colmap"},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": settings.data_pvc}},
                {"name": "tmp", "emptyDir": {"sizeLimit": settings.resources.ephemeral_limit}},
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
