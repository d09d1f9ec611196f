"""Prometheus metrics: request rates and latencies by route, and what happened to each upload.

Each app has its own registry (tests build many apps in one process); each replica is scraped on
its own ``/metrics``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
            "Upload outcomes (created, rejected, too_large, malformed, rate_limited, unauthorized, error)",
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
