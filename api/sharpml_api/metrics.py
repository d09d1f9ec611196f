"""Prometheus metrics: request rates and latencies by route, and what happened to each upload.

Each app has its own registry (tests build many apps in one process); each replica is scraped on
its own ``/metrics``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from sharpml_api.problems import ApiProblem

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: The ``outcome`` label of an upload that ended with a problem: by its kind, else by its status.
_OUTCOME_BY_KIND = {"client-disconnected": "disconnected"}
_OUTCOME_BY_STATUS = {
    400: "malformed",
    401: "unauthorized",
    408: "timeout",
    413: "too_large",
    415: "malformed",
    422: "rejected",
    429: "rate_limited",
}
UPLOAD_OUTCOMES = ("created", "error", *sorted({*_OUTCOME_BY_KIND.values(), *_OUTCOME_BY_STATUS.values()}))


def upload_outcome(error: BaseException | None) -> str:
    """How an upload ended, as the ``sharpml_api_uploads`` label: ``created`` without an error, the
    problem's kind or status, ``error`` for anything else (a failure of ours)."""
    if error is None:
        return "created"
    if isinstance(error, ApiProblem):
        return _OUTCOME_BY_KIND.get(error.kind) or _OUTCOME_BY_STATUS.get(error.status, "error")
    return "error"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Resident memory and CPU of this process (the chart's memory alert); the default registry has them,
        # this per-app one needs its own.
        ProcessCollector(registry=r)
        self.requests = Counter(
            "sharpml_api_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "sharpml_api_request_seconds",
            "Time to the response's first byte, by route",
            ["method", "route"],
            buckets=(0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.uploads = Counter(
            "sharpml_api_uploads",
            f"Upload outcomes ({', '.join(UPLOAD_OUTCOMES)})",
            ["outcome"],
            registry=r,
        )
        self.upload_bytes = Counter("sharpml_api_upload_bytes", "Request body bytes received", registry=r)
        self.images = Counter("sharpml_api_images_accepted", "Photos accepted into jobs", registry=r)
        self.intake_seconds = Histogram(
            "sharpml_api_intake_seconds",
            "Intake (validation + sanitisation) time per accepted upload",
            buckets=(0.1, 0.5, 1, 2, 5, 10, 20, 40, 80, 160),
            registry=r,
        )
        self.in_progress = Gauge(
            "sharpml_api_uploads_in_progress", "Uploads being received or ingested", registry=r
        )
        self.rate_limited = Counter(
            "sharpml_api_rate_limited", "Uploads refused by a rate limit", ["scope"], registry=r
        )


class MetricsMiddleware:
    """Counts every request by its route template (never the raw path: ids would explode cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = _route(scope)
                self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(scope["method"], _route(scope), str(status)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
