"""What one API process holds: settings, the cluster and rate-limit clients, the data directory, the S3
client of the artifacts' backup (made on first use) and the artifacts' digests."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from sharpml.layout import DataDir
from sharpml.storage import Storage
from sharpml_api.artifacts import DigestCache
from sharpml_api.cluster import Cluster
from sharpml_api.metrics import Metrics
from sharpml_api.ratelimit import LeaseRateLimiter
from sharpml_api.settings import Settings


@dataclass
class AppState:
    settings: Settings
    cluster: Cluster
    limiter: LeaseRateLimiter
    data_dir: DataDir
    metrics: Metrics
    #: Intake decodes and re-encodes every pixel: a few at a time per replica bounds CPU and memory.
    intake_slots: asyncio.Semaphore
    #: Uploads in flight on this replica, per client address (SHARPML_UPLOADS_PER_IP_CONCURRENT).
    uploads_in_flight: Counter[str] = field(default_factory=Counter)
    #: SHA-256 of delivered files (their strong ETags), computed once per file version.
    digests: DigestCache = field(default_factory=DigestCache)
    _storage: Storage | None = None

    def storage(self) -> Storage:
        """The S3 client of the artifacts' backup, made on first use (most replicas never need it)."""
        if self._storage is None:
            self._storage = Storage.from_settings(self.settings.s3, max_attempts=2, read_timeout=10)
        return self._storage
