"""Prometheus metrics of the operator (served on SHARPML_METRICS_PORT, path /metrics)."""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

PHASES = (
    "Pending",
    "Queued",
    "Reconstructing",
    "Reconstructed",
    "Training",
    "Delivering",
    "Complete",
    "Failed",
    "Cancelled",
)

QUEUE_DEPTH = Gauge(
    "sharpml_sfm_queue_depth", "SharpJobs waiting in the SfM queue (phase Queued, no pod yet)."
)
SFM_RUNNING = Gauge("sharpml_sfm_running_pods", "SfM pods that occupy a slot on the SfM node.")
PODS_CREATED = Counter("sharpml_sfm_pods_created_total", "SfM pods created by this operator process.")
STAGE_SECONDS = Histogram(
    "sharpml_stage_duration_seconds",
    "Duration of job stages: queue (queued -> SfM pod) and sfm (pod start -> result).",
    ["stage"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600, 86400),
)
FAILURES = Counter("sharpml_job_failures_total", "SharpJobs that ended Failed, by reason.", ["reason"])
RETENTION_DELETIONS = Counter(
    "sharpml_retention_deletions_total", "Finished SharpJobs deleted with their files after their TTL."
)


class _PhaseCollector(Collector):
    """sharpml_jobs{phase}: computed at scrape time from the operator's view of every SharpJob."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phases: dict[str, str] = {}

    def observe(self, uid: str, phase: str | None) -> None:
        with self._lock:
            if phase is None:
                self._phases.pop(uid, None)
            else:
                self._phases[uid] = phase

    def collect(self):  # type: ignore[no-untyped-def]
        with self._lock:
            counts = dict.fromkeys(PHASES, 0)
            for phase in self._phases.values():
                counts[phase] = counts.get(phase, 0) + 1
        family = GaugeMetricFamily("sharpml_jobs", "SharpJobs by phase.", labels=["phase"])
        for phase, n in counts.items():
            family.add_metric([phase], n)
        yield family


JOBS_BY_PHASE = _PhaseCollector()
REGISTRY.register(JOBS_BY_PHASE)


def serve(port: int) -> None:
    """Start the /metrics endpoint (a daemon thread); port 0 turns it off."""
    if port:
        start_http_server(port)
