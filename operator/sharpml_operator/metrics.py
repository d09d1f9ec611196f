"""Prometheus metrics of the operator (served on SHARPML_METRICS_PORT, path /metrics)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

from sharpml.contract import Phase

PHASES = tuple(str(p) for p in Phase)

PODS_CREATED = Counter(
    "sharpml_pods_created_total",
    "Sandboxed stage pods created by this operator process, by stage.",
    ["stage"],
)
STAGE_SECONDS = Histogram(
    "sharpml_stage_duration_seconds",
    "Duration of job stages: queue (queued -> stage pod) and each stage (sfm: pod start -> result).",
    ["stage"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 21600, 86400),
)
FAILURES = Counter("sharpml_job_failures_total", "SharpJobs that ended Failed, by reason.", ["reason"])
TRAINING_RUNS = Counter(
    "sharpml_training_runs_total",
    "RunPod training runs that ended, by final status; duplicate=true: the run found its request claimed "
    "and did no training.",
    ["status", "duplicate"],
)
TRAINING_GPU_SECONDS = Counter(
    "sharpml_training_gpu_seconds_total", "GPU seconds of training runs (each rounded up to a second)."
)
TRAINING_COST_USD = Counter("sharpml_training_cost_usd_total", "Cost of training runs, in US dollars.")
JOB_TRAINING_COST_USD = Histogram(
    "sharpml_job_training_cost_usd",
    "Training cost of each trained job, in US dollars (every run of the job, retries included).",
    buckets=(0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
)
# The denominator of the failure-rate alert (the chart's PrometheusRule): every job that finished.
FINISHED = Counter(
    "sharpml_jobs_finished_total",
    "SharpJobs that reached a terminal phase (Complete, Failed, Cancelled).",
    ["phase"],
)
RETENTION_DELETIONS = Counter(
    "sharpml_retention_deletions_total", "Finished SharpJobs deleted with their files after their TTL."
)
NOTIFICATIONS = Counter(
    "sharpml_notifications_total",
    "Notifications of finished jobs by channel (webhook, email) and result: sent, or failed for good "
    "(every attempt failed, or one that retrying cannot help).",
    ["channel", "result"],
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

    def count(self, phase: str) -> int:
        with self._lock:
            return sum(p == phase for p in self._phases.values())

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
# Computed at scrape time, so they can never be left stale by the last job that changed them.
QUEUE_DEPTH = Gauge("sharpml_sfm_queue_depth", "SharpJobs waiting in the SfM queue (phase Queued).")
QUEUE_DEPTH.set_function(lambda: JOBS_BY_PHASE.count("Queued"))
SFM_RUNNING = Gauge("sharpml_sfm_running", "SharpJobs whose SfM pod runs (phase Reconstructing).")
SFM_RUNNING.set_function(lambda: JOBS_BY_PHASE.count("Reconstructing"))
# Computed at scrape time from the operator's index of SfM nodes (handlers.configure sets the functions).
SFM_NODES_READY = Gauge(
    "sharpml_sfm_nodes_ready", "SfM nodes that can take SfM pods now (Ready, schedulable, taints tolerated)."
)
SFM_CAPACITY = Gauge(
    "sharpml_sfm_capacity",
    "SfM pods that may run at once: SHARPML_SFM_CONCURRENCY times the ready SfM nodes.",
)


class _RunLedger:
    """Counts each RunPod run once, from the statuses the apiserver holds (what was billed is what
    was persisted). Runs already recorded when this process first sees a job were counted by the
    process before it, so they are not counted again after a restart."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = {}

    def observe(self, uid: str, training: dict, price_per_second: object) -> None:
        runs = training.get("runs") or {}
        with self._lock:
            first = uid not in self._seen
            counted = self._seen.setdefault(uid, set())
            new = [rid for rid in runs if rid not in counted]
            counted.update(new)
        if first:
            return
        for rid in new:
            run = runs[rid] or {}
            seconds = -(-int(run.get("executionMs") or 0) // 1000)
            TRAINING_RUNS.labels(
                status=str(run.get("status")), duplicate=str(bool(run.get("duplicate"))).lower()
            ).inc()
            TRAINING_GPU_SECONDS.inc(seconds)
            TRAINING_COST_USD.inc(float(seconds * price_per_second))  # type: ignore[operator]

    def forget(self, uid: str) -> None:
        with self._lock:
            self._seen.pop(uid, None)


RUN_LEDGER = _RunLedger()


DATA_FREE = Gauge(
    "sharpml_data_volume_free_bytes", "Bytes available to unprivileged writers on the shared data volume."
)
DATA_SIZE = Gauge("sharpml_data_volume_size_bytes", "Size of the shared data volume in bytes.")


def watch_data_volume(data_dir: Path) -> None:
    """Read the data volume's free and total bytes at scrape time (statvfs of ``data_dir``); NaN while it is
    not there, so an absent volume reads as missing data rather than as a full disk."""

    def stat(free: bool) -> float:
        try:
            st = os.statvfs(data_dir)
        except OSError:
            return float("nan")
        return float(st.f_bavail * st.f_frsize if free else st.f_blocks * st.f_frsize)

    DATA_FREE.set_function(lambda: stat(True))
    DATA_SIZE.set_function(lambda: stat(False))


def serve(port: int, data_dir: Path | None = None) -> None:
    """Start the /metrics endpoint (a daemon thread); port 0 turns it off."""
    if data_dir is not None:
        watch_data_volume(data_dir)
    if port:
        start_http_server(port)
