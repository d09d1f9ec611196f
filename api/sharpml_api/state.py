"""What one API process holds: settings, the cluster and rate-limit clients, the data directory."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

from sharpml.layout import DataDir
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
