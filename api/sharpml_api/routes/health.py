"""Liveness, readiness and metrics endpoints (unversioned: they serve the platform, not clients)."""

from __future__ import annotations

import logging
import os
import uuid

import anyio
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from sharpml.layout import create_file, open_dir
from sharpml_api.deps import State
from sharpml_api.problems import ProblemItem, responses, unavailable
from sharpml_api.state import AppState

router = APIRouter()
log = logging.getLogger(__name__)


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}


@router.get("/healthz", response_model=Health, summary="Liveness: the process serves requests")
async def healthz() -> Health:
    return Health(status="ok")


def _probe_data_dir(st: AppState) -> None:
    """Write and remove a file on the data volume: mounted, writable, not full."""
    st.data_dir.ensure()
    name = f".ready-{uuid.uuid4().hex}"
    with open_dir(st.data_dir.root) as fd:
        os.close(create_file(fd, name))
        os.unlink(name, dir_fd=fd)


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: the cluster answers and the data directory is writable",
    responses=responses(503),
)
async def readyz(st: State) -> Health:
    failed = []
    for check, fn in (("cluster", st.cluster.ready), ("data_dir", lambda: _probe_data_dir(st))):
        try:
            await anyio.to_thread.run_sync(fn)
        except Exception as exc:
            log.warning("readiness check %s failed: %s", check, exc)
            failed.append(
                ProblemItem(field=check, rule="unavailable", message=f"{check}: {type(exc).__name__}")
            )
    if failed:
        raise unavailable("not-ready", "Not ready", "; ".join(f.message for f in failed), failed)
    return Health(status="ready", checks={"cluster": "ok", "data_dir": "ok"})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Metrics"}},
)
async def metrics(st: State) -> Response:
    return Response(generate_latest(st.metrics.registry), media_type=CONTENT_TYPE_LATEST)
