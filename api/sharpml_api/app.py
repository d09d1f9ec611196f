"""The FastAPI application assembled: state, routes, error handlers, CORS, metrics, the sweepers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
import kubernetes
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sharpml.layout import DataDir
from sharpml_api import API_VERSION, errors, models, problems, viewer
from sharpml_api.auth import JOB_TOKEN_HEADER
from sharpml_api.cluster import Cluster, api_client
from sharpml_api.metrics import Metrics, MetricsMiddleware
from sharpml_api.ratelimit import LeaseRateLimiter
from sharpml_api.routes import delivery, health, jobs
from sharpml_api.settings import Settings
from sharpml_api.state import AppState
from sharpml_api.sweep import sweep_leftovers

log = logging.getLogger(__name__)
#: Longest interval of the sweeps; leftovers are swept at least every upload timeout, so what a killed
#: process left lives at most about twice that.
SWEEP_SECONDS = 600


def sweep_interval(settings: Settings) -> float:
    """Seconds between sweeps: an abandoned spool becomes sweepable one upload timeout after its last
    change, so sweeping less often than that would only let it linger."""
    return min(SWEEP_SECONDS, settings.upload_timeout_seconds)


DESCRIPTION = """Upload 5-100 photos of a place or an object; SharpML reconstructs the cameras and
trains a 3D Gaussian splat. Authenticate with a bearer JWT; without one, uploads fall under the
anonymous free tier and each job is reached with the `X-Job-Token` its upload returned. Errors are
RFC 9457 problem details naming the file or field and the rule."""


def _sweep_leftovers(st: AppState) -> None:
    """Abandoned spools and staging directories (:mod:`sharpml_api.sweep`): never fails the caller."""
    try:
        sweep_leftovers(st.data_dir, st.settings.upload_timeout_seconds)
    except OSError as exc:
        log.warning("sweeping upload leftovers failed: %s", exc)


async def _sweeper(st: AppState) -> None:
    """Every :func:`sweep_interval`: rate-limit Leases whose windows have passed (any replica may;
    deletes are conditional) and upload leftovers older than the upload timeout."""
    while True:
        await asyncio.sleep(sweep_interval(st.settings))
        await anyio.to_thread.run_sync(_sweep_leftovers, st)
        try:
            n = await anyio.to_thread.run_sync(st.limiter.sweep)
            if n:
                log.info("deleted %d expired rate-limit leases", n)
        except Exception as exc:
            log.warning("rate-limit sweep failed: %s", exc)


def create_app(
    settings: Settings | None = None, client: kubernetes.client.ApiClient | None = None
) -> FastAPI:
    settings = settings or Settings.from_env()
    client = client or api_client(settings)
    state = AppState(
        settings=settings,
        cluster=Cluster(client, settings.namespace),
        limiter=LeaseRateLimiter(client, settings.namespace),
        data_dir=DataDir(settings.data_dir),
        metrics=Metrics(),
        intake_slots=asyncio.Semaphore(settings.intake_concurrency),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.data_dir.ensure()
        await anyio.to_thread.run_sync(_sweep_leftovers, state)  # what a killed process left
        sweeper = asyncio.create_task(_sweeper(state))
        try:
            yield
        finally:
            sweeper.cancel()

    app = FastAPI(
        title="SharpML API",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.sharpml = state
    errors.install(app)
    app.include_router(jobs.router)
    app.include_router(delivery.router)
    app.include_router(health.router)
    app.mount(viewer.ASSETS_PATH, viewer.ViewerAssets(settings.s3), name="viewer")
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "HEAD", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type", "Range", "If-None-Match", JOB_TOKEN_HEADER],
        expose_headers=["Location", "Retry-After", "ETag", "Content-Range", "Content-Disposition"],
        max_age=600,
    )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = models.document_upload_limits(
                problems.document(FastAPI.openapi(app)),
                settings.limits.min_images,
                settings.limits.max_images,
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
