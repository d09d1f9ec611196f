"""What one API process holds: settings, the cluster and rate-limit clients, the data directory."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

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
