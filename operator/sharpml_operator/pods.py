"""Creating and deleting a stage's sandboxed pod, and the namespace's deny-all policy: the API calls
every pod-running stage makes, with one answer to each Kubernetes error.

Pods have deterministic names, so creating one twice answers 409 and the existing pod is adopted: an
operator killed between creating a pod and recording it never starts a second one.
"""

from __future__ import annotations

import json

import kopf
import kubernetes
from kubernetes.client.exceptions import ApiException

from sharpml_operator import metrics
from sharpml_operator.job import Job
from sharpml_operator.podspec import deny_all_policy
from sharpml_operator.settings import Settings

_policy_namespaces: set[str] = set()


def api_message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body).get("message", exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason)


def create(job: Job, manifest: dict, what: str) -> bool | None:
    """Create the pod: True when created, False when it existed (adopted), None when the apiserver
    refused it (the job has failed with the reason)."""
    name = manifest["metadata"]["name"]
    try:
        kubernetes.client.CoreV1Api().create_namespaced_pod(job.namespace, manifest)
    except ApiException as exc:
        if exc.status == 409:
            return False
        message = api_message(exc)
        if exc.status == 403 and "exceeded quota" in message:  # a full ResourceQuota frees up: wait
            raise kopf.TemporaryError(f"creating pod {name}: {message}", delay=10) from exc
        if exc.status in (400, 403, 422):
            job.fail("PodRejected", f"the {what} was refused: {message}")
            return None
        raise kopf.TemporaryError(f"creating pod {name}: {exc.reason}", delay=2) from exc
    metrics.PODS_CREATED.labels(stage=manifest["metadata"]["labels"]["app.kubernetes.io/component"]).inc()
    return True


def read(name: str, namespace: str) -> dict | None:
    """The pod as JSON straight from the apiserver (when an index may lag behind), or None if absent."""
    core = kubernetes.client.CoreV1Api()
    try:
        return core.api_client.sanitize_for_serialization(core.read_namespaced_pod(name, namespace))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise kopf.TemporaryError(f"reading pod {name}: {exc.reason}", delay=2) from exc


def delete(name: str, namespace: str) -> bool:
    """Ask the pod to stop (10 s grace); False when there is no such pod."""
    try:
        kubernetes.client.CoreV1Api().delete_namespaced_pod(name, namespace, grace_period_seconds=10)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise kopf.TemporaryError(f"deleting pod {name}: {exc.reason}", delay=2) from exc


def ensure_network_policy(namespace: str, settings: Settings) -> None:
    """The namespace's deny-all policy for sandboxed pods exists before its first such pod does."""
    if namespace in _policy_namespaces:
        return
    try:
        kubernetes.client.NetworkingV1Api().create_namespaced_network_policy(
            namespace, deny_all_policy(namespace, settings)
        )
    except ApiException as exc:
        if exc.status != 409:
            raise kopf.TemporaryError(f"creating the sandbox NetworkPolicy: {exc.reason}", delay=2) from exc
    _policy_namespaces.add(namespace)
