"""The API's Kubernetes access: SharpJobs (created, read, listed, deleted, watched) and rate-limit Leases.

The resource's identity, labels and annotations are the contract's (:mod:`sharpml.contract`). The
official client is synchronous; callers run it in worker threads (``anyio.to_thread``) so the
event loop keeps streaming uploads while the apiserver answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import kubernetes
import kubernetes.client.rest
import kubernetes.watch
from kubernetes.client.exceptions import ApiException

from sharpml.contract import (
    API_VERSION,
    CREATED_BY_LABEL,
    GROUP,
    KIND,
    OWNER_LABEL,
    PLURAL,
    TOKEN_ANNOTATION,
    VERSION,
    owner_label,
)
from sharpml_api.settings import Settings

if TYPE_CHECKING:
    from sharpml_api.models import JobOptions

#: ``app.kubernetes.io/created-by`` of the SharpJobs this API creates.
CREATED_BY = "sharpml-api"


class _BoundedRest(kubernetes.client.rest.RESTClientObject):
    """The client's HTTP layer with a default deadline: it passes ``timeout=None`` (wait forever) to
    urllib3 for every call that names no ``_request_timeout`` of its own."""

    def __init__(self, config: kubernetes.client.Configuration, seconds: float) -> None:
        super().__init__(config)
        self.default_timeout = (seconds, seconds)

    def request(self, *args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return super().request(*args, _request_timeout=_request_timeout or self.default_timeout, **kwargs)


def api_client(settings: Settings) -> kubernetes.client.ApiClient:
    """A client from SHARPML_KUBECONFIG / KUBECONFIG, else the pod's service account.

    Every call is bounded by ``SHARPML_APISERVER_TIMEOUT_SECONDS`` (to connect, then for each read; a
    call that passes its own ``_request_timeout``, such as a watch, keeps it): the official client
    waits forever by default, so an apiserver that accepts connections and never answers would hold
    each request, and its worker thread, for good instead of answering 503."""
    config = kubernetes.client.Configuration()
    if settings.kubeconfig:
        kubernetes.config.load_kube_config(config_file=settings.kubeconfig, client_configuration=config)
    else:
        kubernetes.config.load_incluster_config(client_configuration=config)
    client = kubernetes.client.ApiClient(config)
    client.rest_client = _BoundedRest(config, settings.apiserver_timeout_seconds)
    return client


class Cluster:
    """SharpJobs in one namespace."""

    def __init__(self, client: kubernetes.client.ApiClient, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.coordination = kubernetes.client.CoordinationV1Api(client)

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get_job(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_jobs(self, owner: str) -> list[dict[str, Any]]:
        """Every job of one owner (bounded by the per-account rate limit and the jobs' retention)."""
        items: list[dict[str, Any]] = []
        token = None
        while True:
            page = self.custom.list_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                label_selector=f"{OWNER_LABEL}={owner_label(owner)}",
                limit=500,
                _continue=token,
            )
            items.extend(i for i in page["items"] if i.get("spec", {}).get("owner") == owner)
            token = page.get("metadata", {}).get("continue")
            if not token:
                return items

    def delete_job(self, name: str, resource_version: str) -> bool:
        """Delete one job (only the version the caller checked); False when it was already gone."""
        try:
            self.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                name,
                body=kubernetes.client.V1DeleteOptions(
                    propagation_policy="Background",
                    preconditions=kubernetes.client.V1Preconditions(resource_version=resource_version),
                ),
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def watch_job(
        self, w: kubernetes.watch.Watch, name: str, resource_version: str, seconds: int
    ) -> Iterator[dict[str, Any]]:
        """Events of one SharpJob after ``resource_version``; the server ends the watch after ``seconds``."""
        return w.stream(
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            self.namespace,
            PLURAL,
            field_selector=f"metadata.name={name}",
            resource_version=resource_version,
            timeout_seconds=seconds,
            _request_timeout=seconds + 10,
        )

    def ready(self) -> None:
        """Raise unless SharpJobs in our namespace can be listed (apiserver up, CRD installed, RBAC)."""
        self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, limit=1, _request_timeout=5
        )


def sharpjob_manifest(
    job_id: str, owner: str, job_dir: str, images: int, options: JobOptions, digest: str | None
) -> dict:
    """The SharpJob for an accepted upload: named by the job id, labelled with its owner's digest."""
    meta: dict[str, Any] = {
        "name": job_id,
        "labels": {OWNER_LABEL: owner_label(owner), CREATED_BY_LABEL: CREATED_BY},
    }
    if digest:
        meta["annotations"] = {TOKEN_ANNOTATION: digest}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": meta,
        "spec": {
            "owner": owner,
            "source": {"upload": {"jobDir": job_dir, "imageCount": images}},
            **options.spec(),
        },
    }
