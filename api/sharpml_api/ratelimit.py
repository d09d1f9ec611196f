"""Upload rate limits shared by every API replica, stored in the cluster as ``coordination.k8s.io`` Leases.

Why Leases: every replica already talks to the apiserver, which is a linearisable store (etcd) with
optimistic concurrency (``resourceVersion``), so the counters need no Redis to deploy, secure and
back up. Leases are the API group Kubernetes meant for small, frequently rewritten coordination
records; RBAC can grant the API them alone (not ConfigMaps or Secrets). An upload costs two to four
small apiserver writes; uploads are minutes of CPU each, so that traffic is negligible.

Each (scope, key) — e.g. ("ip-hour", "203.0.113.9") — has one Lease named by a digest of the key (no
client address is stored in the cluster), holding a sliding-window log of admission times (epoch
milliseconds) in an annotation. Admission is read-modify-write with the Lease's resourceVersion:
two replicas racing for the last slot both write, one gets 409 Conflict, re-reads and is refused.
``Retry-After`` is exact: when the oldest admission in the window expires.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import kubernetes
from kubernetes.client.exceptions import ApiException

HITS_ANNOTATION = "sharpml.com/admissions"
SCOPE_ANNOTATION = "sharpml.com/rate-limit-scope"
EXPIRES_ANNOTATION = "sharpml.com/expires-at"
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENT = "rate-limit"
HOLDER = "sharpml-api"
_MAX_ATTEMPTS = 25
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` admissions of ``key`` in any ``window`` seconds."""

    scope: str
    key: str
    limit: int
    window: int
    description: str

    @property
    def lease_name(self) -> str:
        return "sharpml-rl-" + hashlib.sha256(f"{self.scope}\0{self.key}".encode()).hexdigest()[:40]


@dataclass(frozen=True)
class Admission:
    """One admitted upload, so it can be handed back (:meth:`LeaseRateLimiter.release`)."""

    limit: Limit
    stamp: int


class RateLimited(Exception):
    def __init__(self, limit: Limit, retry_after: int) -> None:
        super().__init__(f"{limit.description}: limit of {limit.limit} reached; retry in {retry_after} s")
        self.limit = limit
        self.retry_after = retry_after


class StoreContention(RuntimeError):
    """The Lease kept changing under us; treated as a server error (the client may retry)."""


def _hits(lease: kubernetes.client.V1Lease) -> list[int]:
    raw = (lease.metadata.annotations or {}).get(HITS_ANNOTATION, "[]")
    try:
        return [int(h) for h in json.loads(raw)]
    except (ValueError, TypeError):
        return []  # a hand-edited, unreadable log starts afresh rather than locking the client out


def _expiry(limit: Limit, newest_ms: int) -> int:
    """Epoch seconds when the newest admission leaves the window: the sweep's cue.

    Kept in an annotation rather than ``spec.renewTime``: the client serialises a MicroTime with a
    zero fraction in a form the apiserver refuses.
    """
    return math.ceil(newest_ms / 1000) + limit.window


class LeaseRateLimiter:
    def __init__(
        self,
        client: kubernetes.client.ApiClient,
        namespace: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api = kubernetes.client.CoordinationV1Api(client)
        self.namespace = namespace
        self.clock = clock

    # --- one limit ------------------------------------------------------------------------------

    def _lease(self, limit: Limit, hits: list[int], now_ms: int) -> kubernetes.client.V1Lease:
        return kubernetes.client.V1Lease(
            metadata=kubernetes.client.V1ObjectMeta(
                name=limit.lease_name,
                labels={COMPONENT_LABEL: COMPONENT, "app.kubernetes.io/part-of": "sharpml"},
                annotations={
                    HITS_ANNOTATION: json.dumps(hits),
                    SCOPE_ANNOTATION: limit.scope,
                    EXPIRES_ANNOTATION: str(_expiry(limit, now_ms)),
                },
            ),
            spec=self._spec(limit),
        )

    @staticmethod
    def _spec(limit: Limit) -> kubernetes.client.V1LeaseSpec:
        return kubernetes.client.V1LeaseSpec(holder_identity=HOLDER, lease_duration_seconds=limit.window)

    def _get(self, name: str) -> kubernetes.client.V1Lease | None:
        try:
            return self.api.read_namespaced_lease(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _backoff(self, attempt: int) -> None:
        time.sleep(random.uniform(0, min(0.2, 0.01 * 2**attempt)))

    def acquire(self, limit: Limit) -> Admission:
        """Admit one upload or raise :class:`RateLimited` with the seconds until a slot frees."""
        for attempt in range(_MAX_ATTEMPTS):
            now_ms = int(self.clock() * 1000)
            lease = self._get(limit.lease_name)
            if lease is None:
                try:
                    self.api.create_namespaced_lease(self.namespace, self._lease(limit, [now_ms], now_ms))
                    return Admission(limit, now_ms)
                except ApiException as exc:
                    if exc.status != 409:
                        raise
                    self._backoff(attempt)
                    continue
            hits = sorted(h for h in _hits(lease) if h > now_ms - limit.window * 1000)
            if len(hits) >= limit.limit:
                wait = (hits[len(hits) - limit.limit] + limit.window * 1000 - now_ms) / 1000
                raise RateLimited(limit, max(1, math.ceil(wait)))
            stamp = max([now_ms, *(h + 1 for h in hits)])  # unique, so release() removes only ours
            hits.append(stamp)
            lease.metadata.annotations = {
                **(lease.metadata.annotations or {}),
                HITS_ANNOTATION: json.dumps(hits),
                EXPIRES_ANNOTATION: str(_expiry(limit, stamp)),
            }
            lease.spec = self._spec(limit)
            try:
                self.api.replace_namespaced_lease(limit.lease_name, self.namespace, lease)
                return Admission(limit, stamp)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
                self._backoff(attempt)
        raise StoreContention(f"rate-limit lease {limit.lease_name} kept changing; gave up")

    def release(self, admission: Admission) -> None:
        """Hand an admission back (the upload failed on our side, so it should not count)."""
        name = admission.limit.lease_name
        for attempt in range(_MAX_ATTEMPTS):
            lease = self._get(name)
            if lease is None:
                return
            hits = _hits(lease)
            if admission.stamp not in hits:
                return
            hits.remove(admission.stamp)
            lease.metadata.annotations[HITS_ANNOTATION] = json.dumps(hits)
            try:
                self.api.replace_namespaced_lease(name, self.namespace, lease)
                return
            except ApiException as exc:
                if exc.status == 404:
                    return
                if exc.status != 409:
                    raise
                self._backoff(attempt)
        log.warning("could not release admission %s of %s under contention", admission.stamp, name)

    # --- several limits at once --------------------------------------------------------------------

    def acquire_all(self, limits: Sequence[Limit]) -> list[Admission]:
        """Admit against every limit, or none: admissions already taken are handed back on refusal."""
        taken: list[Admission] = []
        try:
            for limit in limits:
                taken.append(self.acquire(limit))
        except BaseException:
            for admission in taken:
                self.release(admission)
            raise
        return taken

    def sweep(self) -> int:
        """Delete Leases whose every admission has left its window; returns how many were deleted."""
        now = self.clock()
        deleted = 0
        leases = self.api.list_namespaced_lease(
            self.namespace, label_selector=f"{COMPONENT_LABEL}={COMPONENT}"
        ).items
        for lease in leases:
            try:
                expires = int((lease.metadata.annotations or {})[EXPIRES_ANNOTATION])
            except (KeyError, ValueError):
                continue
            if expires > now:
                continue
            try:
                self.api.delete_namespaced_lease(
                    lease.metadata.name,
                    self.namespace,
                    body=kubernetes.client.V1DeleteOptions(
                        # Only the version we judged expired: a concurrent admission wins.
                        preconditions=kubernetes.client.V1Preconditions(
                            resource_version=lease.metadata.resource_version
                        )
                    ),
                )
                deleted += 1
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
        return deleted
