"""Leader election for operator replicas with a coordination.k8s.io Lease (as client-go does it).

Why not kopf peering: replicas of equal priority all freeze under it, so it cannot keep one of N
identical replicas active. Here a replica starts kopf only once it holds the Lease, renews it in a
background thread, and exits (to be restarted by its Deployment) the moment it cannot renew, so two
replicas never act at once: a new leader can only take over after leaseDurationSeconds without renewal.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime

import kubernetes
from kubernetes.client.exceptions import ApiException

LEASE_NAME = "sharpml-operator"
log = logging.getLogger("sharpml.operator.leader")


def _now() -> datetime:
    return datetime.now(UTC)


def _micro(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseLock:
    def __init__(self, namespace: str, identity: str, duration: int = 15, name: str = LEASE_NAME) -> None:
        self.api = kubernetes.client.CoordinationV1Api()
        self.namespace, self.identity, self.duration, self.name = namespace, identity, duration, name

    def try_acquire(self) -> bool:
        """One attempt: create the Lease, renew ours, or take over one that expired. Optimistic locking
        (resourceVersion) makes concurrent attempts safe: only one replace can win."""
        now = _now()
        spec = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration,
            "renewTime": _micro(now),
        }
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"metadata": {"name": self.name}, "spec": {**spec, "acquireTime": _micro(now)}}
            try:
                self.api.create_namespaced_lease(self.namespace, body)
                return True
            except ApiException as exc2:
                if exc2.status == 409:
                    return False
                raise
        holder = lease.spec.holder_identity
        renewed = lease.spec.renew_time
        duration = lease.spec.lease_duration_seconds or self.duration
        expired = renewed is None or (now - renewed).total_seconds() > duration
        if holder != self.identity and not expired:
            return False
        lease.spec.holder_identity = self.identity
        lease.spec.lease_duration_seconds = self.duration
        lease.spec.renew_time = now
        if holder != self.identity:
            lease.spec.acquire_time = now
            lease.spec.lease_transitions = (lease.spec.lease_transitions or 0) + 1
        try:
            self.api.replace_namespaced_lease(self.name, self.namespace, lease)
            return True
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote it first
                return False
            raise


def acquire_then_keep(namespace: str, identity: str | None = None, duration: int = 15) -> LeaseLock:
    """Block until this process leads, then renew in a daemon thread; exit the process if renewal fails."""
    identity = identity or f"{socket.gethostname()}-{os.getpid()}"
    lock = LeaseLock(namespace, identity, duration)
    log.info("waiting to lead (Lease %s/%s) as %s", namespace, lock.name, identity)
    while not lock.try_acquire():
        time.sleep(duration / 3)
    log.info("leading as %s", identity)

    def renew() -> None:
        last_ok = time.monotonic()
        while True:
            time.sleep(duration / 3)
            try:
                if lock.try_acquire():
                    last_ok = time.monotonic()
                    continue
                log.error("lost the Lease to another replica; exiting")
            except Exception:
                log.exception("renewing the Lease failed")
                if time.monotonic() - last_ok < duration * 2 / 3:
                    continue  # transient: retry while the Lease is still surely ours
            os._exit(3)  # stop acting at once; the Deployment restarts this replica as a standby

    threading.Thread(target=renew, name="lease-renewal", daemon=True).start()
    return lock
