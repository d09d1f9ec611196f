"""The smallest stand-in for the API routes the viewer page calls, for a narrow test of the page.

A Starlette app served by uvicorn on loopback: the built page at ``/v1/jobs/{id}/view`` and its assets
at ``/viewer/``; ``GET /v1/jobs/{id}`` answering the job as the API's own model
(:class:`sharpml_api.models.JobStatus` of a SharpJob resource) plus the delivery links; the events
stream in the API's format (:func:`sharpml_api.events.sse`), fed by the test through :meth:`push`;
and the artifacts. The grant is checked the way the API will (:func:`sharpml.links.verify`): tampered
links get 403, expired ones 410, as problem documents. The real routes are tested end to end once they
exist; this checks the page.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn
from sharpml_api.events import sse
from sharpml_api.models import JobStatus, Links
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sharpml import links
from sharpml.contract.delivery import ARTIFACTS, VIEW_SCOPE

KEYS = links.parse_keys("k1:" + "s" * 40)


def resource(job_id: str, phase: str, percent: int, stage: str, message: str, queue: int | None) -> dict:
    """A SharpJob object in ``phase``, as the operator leaves it."""
    status: dict[str, Any] = {
        "phase": phase,
        "message": message,
        "progress": {"percent": percent, "stage": stage},
    }
    if queue is not None:
        status["queuePosition"] = queue
    return {
        "metadata": {
            "name": job_id,
            "resourceVersion": str(time.monotonic_ns()),
            "creationTimestamp": "2026-12-02T23:00:00Z",
        },
        "spec": {"source": {"upload": {"imageCount": 12}}},
        "status": status,
    }


class StubApi:
    OWNER_TOKEN = "owner-token-1234"

    def __init__(self, job_id: str, page_dir: Path, artifacts: dict[str, Path]) -> None:
        self.job_id = job_id
        self.page_dir = page_dir
        self.artifacts = artifacts  # format -> file
        self.base = ""
        self.requests: list[str] = []
        self.owner_requests: list[str] = []  # API calls authorised by the owner's token
        self.last_event_ids: list[str | None] = []  # the Last-Event-ID of each connection to the stream
        self._queue: asyncio.Queue[dict | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()
        self.app = Starlette(
            routes=[
                Route("/v1/jobs/{job_id}/view", self.view),
                Route("/v1/jobs/{job_id}", self.job),
                Route("/v1/jobs/{job_id}/events", self.events),
                Route("/v1/jobs/{job_id}/artifacts/{name}", self.artifact),
                Mount("/viewer", StaticFiles(directory=page_dir)),
            ]
        )
        self.final: dict | None = None

    # ---- the test's side -------------------------------------------------------------------

    def view_url(self, expires_in: int = 3600, tamper: bool = False) -> str:
        url = links.url(self.base, self.job_id, VIEW_SCOPE, KEYS, int(time.time()) + expires_in)
        return url.replace("sig=", "sig=x") if tamper else url

    def push(
        self, phase: str, percent: int = 0, stage: str = "", message: str = "", queue: int | None = None
    ) -> None:
        """Send the job's status (as the API would on a change) to the open event stream."""
        obj = resource(self.job_id, phase, percent, stage, message, queue)
        if phase == "Complete":
            self.final = obj
        assert self._loop is not None and self._queue is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, obj)

    def drop(self) -> None:
        """End the open event stream as a lost connection would (the job not finished)."""
        self.connected.clear()
        assert self._loop is not None and self._queue is not None
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    def start(self) -> StubApi:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the stub API did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._loop is not None and self._queue is not None:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, None)
        if self._thread is not None:
            self._thread.join(10)

    # ---- the routes ---------------------------------------------------------------------------

    def _grant(self, request: Request, scope: str) -> Response | None:
        """None when the link grants ``scope`` (or the owner's bearer token is :attr:`OWNER_TOKEN`);
        else the API's problem answer (403 or 410)."""
        self.requests.append(request.url.path)
        if request.headers.get("authorization") == f"Bearer {self.OWNER_TOKEN}" and scope == VIEW_SCOPE:
            self.owner_requests.append(request.url.path)
            return None
        try:
            links.verify(KEYS, request.path_params["job_id"], scope, request.query_params)
        except links.LinkError as exc:
            kind = "link-expired" if exc.status == 410 else "link-invalid"
            body = {
                "type": f"https://sharpml.com/problems/{kind}",
                "title": str(exc).split(":")[0],
                "status": exc.status,
                "detail": str(exc),
            }
            return JSONResponse(body, status_code=exc.status, media_type="application/problem+json")
        return None

    def _status(self, obj: dict) -> dict:
        data = JobStatus.from_resource(obj, Links.of(self.base, self.job_id)).model_dump(mode="json")
        if obj["status"]["phase"] == "Complete":
            exp = int(time.time()) + 3600
            data["links"]["view"] = links.url(self.base, self.job_id, VIEW_SCOPE, KEYS, exp)
            data["links"]["artifacts"] = {
                fmt: {
                    "url": links.url(self.base, self.job_id, ARTIFACTS[fmt].filename, KEYS, exp),
                    "bytes": path.stat().st_size,
                    "mediaType": ARTIFACTS[fmt].media_type,
                }
                for fmt, path in self.artifacts.items()
            }
            data["links"]["expiresAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp))
        return data

    async def view(self, request: Request) -> Response:
        return self._grant(request, VIEW_SCOPE) or FileResponse(self.page_dir / "index.html")

    async def job(self, request: Request) -> Response:
        refused = self._grant(request, VIEW_SCOPE)
        if refused:
            return refused
        assert self.final is not None, "the page asked for the job before it was Complete"
        return JSONResponse(self._status(self.final))

    async def events(self, request: Request) -> Response:
        refused = self._grant(request, VIEW_SCOPE)
        if refused:
            return refused
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        self.last_event_ids.append(request.headers.get("last-event-id"))
        self.connected.set()

        async def stream():
            yield "retry: 3000\n\n"
            while True:
                obj = await self._queue.get()
                if obj is None:
                    return
                data = self._status(obj)
                yield sse("status", json.dumps(data), obj["metadata"]["resourceVersion"])
                if data["finished"]:
                    return

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    async def artifact(self, request: Request) -> Response:
        name = request.path_params["name"]
        refused = self._grant(request, name)
        if refused:
            return refused
        fmt = next(f for f, a in ARTIFACTS.items() if a.filename == name)
        return FileResponse(self.artifacts[fmt], media_type=ARTIFACTS[fmt].media_type)
