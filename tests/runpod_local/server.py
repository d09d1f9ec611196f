"""A local RunPod serverless endpoint: the public job API and the worker API, on loopback.

The operator talks to it through the unmodified ``runpod`` SDK client (``runpod.Endpoint``) and GPU
workers run the unmodified SDK worker loop (``runpod.serverless.start``) against it, so both sides are
tested against the calls the SDK really makes (checked against runpod 1.12.0):

Public API (``/v2/{endpoint}/...``, ``Authorization: Bearer KEY`` or the bare key, as RunPod accepts):
``run``, ``runsync``, ``status/{id}``, ``stream/{id}``, ``cancel/{id}``, ``retry/{id}``,
``purge-queue``, ``health``.

Worker API, the URLs RunPod gives a worker in ``RUNPOD_WEBHOOK_*`` (see :meth:`LocalRunPod.worker_env`),
authenticated with the worker's own key (``RUNPOD_AI_API_KEY``, sent bare):

- ``GET job-take/{worker}?...&job_in_progress=0|1`` (``job-take-batch/...&batch_size=N``): a job
  ``{"id", "input"}`` (a list for batches) or 204 after a short long-poll; ``job_in_progress=0`` also
  tells the server the worker holds nothing any more, which ends the billing of what it held;
- ``POST job-done/{worker}/{job}?...&isStream=false``: the handler's result (``{"output"}`` or
  ``{"error"}``), and also every ``progress_update`` (``{"status": "IN_PROGRESS", "output": ...}``);
  the body is JSON sent as ``application/x-www-form-urlencoded``, as the SDK sends it;
- ``POST job-stream/{worker}/{job}``: generator handlers' chunks;
- ``GET job-stop/{worker}``: the SDK's stop channel (long-polled; ``{"jobsToStop": [...]}`` or 204),
  where cancelled, timed-out and expired jobs are announced to the worker that holds them;
- ``GET ping/{worker}?job_id=a,b&runpod_version=...`` (and ``status=unhealthy`` from failed fitness
  checks): the heartbeat; its answer is ignored by the SDK.

Where it differs from RunPod (also in the README): no scaling (workers are whatever processes a test
starts), no payload size limits or rate limiting except injected faults, ``purge-queue`` marks the
purged jobs CANCELLED (RunPod does not document what their status becomes), ``policy.ttl`` counts from
submission and removes a job that has not finished by then (``/status`` answers 404, as for any job
RunPod no longer knows), and a job's billing (``billed_ms``) is the time workers held it, measured
here. Timing minimums (executionTimeout > 5 s, ttl >= 10 s) are RunPod's by default; tests lower them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hmac
import json
import secrets
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

PUBLIC_ROUTES = ("run", "runsync", "status", "stream", "cancel", "retry", "purge-queue", "health")
WORKER_ROUTES = ("job-take", "job-take-batch", "job-done", "job-stream", "job-stop", "ping")
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
POLL_S = 0.02
#: RunPod's documented bounds and defaults of a request's ``policy`` (milliseconds).
DEFAULT_EXECUTION_TIMEOUT_MS = 600_000
DEFAULT_TTL_MS = 86_400_000
MAX_TTL_MS = 7 * 86_400_000


def _now() -> float:
    return time.monotonic()


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


@dataclass
class Delivery:
    """One hand-out of a job to a worker; open until the worker reports it or stops holding it."""

    worker_id: str
    taken_at: float
    closed_at: float | None = None
    result: dict[str, Any] | None = None  # the final body the worker posted, if any
    counted: bool = False  # this delivery's result decided the job's status

    @property
    def billed_ms(self) -> int:
        end = self.closed_at if self.closed_at is not None else _now()
        return _ms(end - self.taken_at)


@dataclass
class JobRecord:
    """A job as the server keeps it; :meth:`LocalRunPod.job` hands out copies."""

    id: str
    input: Any
    webhook: str | None
    execution_timeout_ms: int
    ttl_ms: int
    sync: bool
    submitted_at: float
    status: str = "IN_QUEUE"
    queued_at: float = 0.0
    started_at: float | None = None  # first hand-out of the current attempt
    finished_at: float | None = None
    delay_ms: int | None = None
    execution_ms: int | None = None
    worker_id: str | None = None
    output: Any = None
    error: Any = None
    retries: int = 0
    deliveries: list[Delivery] = field(default_factory=list)
    progress: list[Any] = field(default_factory=list)  # every progress_update payload, in order
    stream: list[Any] = field(default_factory=list)  # every streamed chunk, in order
    stream_read: int = 0
    late_results: list[dict[str, Any]] = field(default_factory=list)  # results that came too late
    webhook_calls: list[int] = field(default_factory=list)  # HTTP status (0: no answer) per attempt

    @property
    def handed_out(self) -> int:
        """How many times the job was handed to a worker (duplicates and retries included)."""
        return len(self.deliveries)

    @property
    def billed_ms(self) -> int:
        """Worker time spent on this job over every delivery: what RunPod bills."""
        return sum(d.billed_ms for d in self.deliveries)

    def status_body(self) -> dict[str, Any]:
        """The job as ``/status`` shows it."""
        body: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.delay_ms is not None:
            body["delayTime"] = self.delay_ms
        if self.execution_ms is not None:
            body["executionTime"] = self.execution_ms
        if self.worker_id is not None:
            body["workerId"] = self.worker_id
        if self.output is not None:
            body["output"] = self.output
        if self.error is not None:
            body["error"] = self.error
        if self.retries:
            body["retries"] = self.retries
        return body


@dataclass
class _HttpFault:
    kind: str  # "status", "drop", "drop-after" or "delay"
    routes: frozenset[str]
    remaining: int
    status: int = 0
    retry_after: int | None = None
    seconds: float = 0.0


class Faults:
    """Faults a test injects; each counts down as it fires. Thread-safe (tests call from their thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http: list[_HttpFault] = []
        self._twice = 0
        self._fail_results: list[str] = []
        self._lose_results = 0
        self.queue_held = False
        self.fired: list[tuple[str, str]] = []  # (fault, route or job id), in order

    def fail_next(
        self,
        count: int = 1,
        status: int = 429,
        routes: Iterable[str] = PUBLIC_ROUTES,
        retry_after: int | None = 1,
    ) -> None:
        """The next ``count`` calls to ``routes`` answer ``status`` (429 with ``Retry-After``)."""
        routes = frozenset(routes)
        if unknown := routes - set(PUBLIC_ROUTES) - set(WORKER_ROUTES):
            raise ValueError(f"unknown route(s) {sorted(unknown)}")
        with self._lock:
            self._http.append(_HttpFault("status", routes, count, status, retry_after))

    def drop_next(
        self, count: int = 1, routes: Iterable[str] = ("status",), after_handling: bool = False
    ) -> None:
        """The next ``count`` calls to ``routes`` get their connection closed without an answer; with
        ``after_handling`` the call takes effect first (a ``run`` whose answer is lost still queues
        its job)."""
        with self._lock:
            kind = "drop-after" if after_handling else "drop"
            self._http.append(_HttpFault(kind, frozenset(routes), count))

    def delay_next(self, seconds: float, count: int = 1, routes: Iterable[str] = ("run",)) -> None:
        """The next ``count`` calls to ``routes`` take effect at once and are answered ``seconds`` later:
        a window in which a test can kill the caller after its request arrived but before it learns the
        answer (an operator killed between ``/run`` and recording the job id)."""
        with self._lock:
            self._http.append(_HttpFault("delay", frozenset(routes), count, seconds=seconds))

    def deliver_twice(self, count: int = 1) -> None:
        """The next ``count`` jobs handed out are handed out once more (same id and input) to the next
        job-take, whichever worker makes it: RunPod's at-least-once delivery."""
        with self._lock:
            self._twice += count

    def fail_results(self, count: int = 1, error: str = "injected failure") -> None:
        """The next ``count`` results workers report become FAILED with ``error``."""
        with self._lock:
            self._fail_results.extend([error] * count)

    def lose_results(self, count: int = 1) -> None:
        """The next ``count`` results workers report are lost (answered 200, never recorded): the job
        stays IN_PROGRESS until its executionTimeout."""
        with self._lock:
            self._lose_results += count

    def hold_queue(self, held: bool = True) -> None:
        """While held, no worker gets a job: everything submitted stays IN_QUEUE."""
        self.queue_held = held

    def clear(self) -> None:
        """Forget every pending fault."""
        with self._lock:
            self._http.clear()
            self._twice, self._lose_results = 0, 0
            self._fail_results.clear()
        self.queue_held = False

    # The server's side.
    def _http_fault(self, route: str) -> _HttpFault | None:
        with self._lock:
            for fault in self._http:
                if route in fault.routes and fault.remaining > 0:
                    fault.remaining -= 1
                    self.fired.append((f"http-{fault.kind}", route))
                    return fault
            return None

    def _take_twice(self, job_id: str) -> bool:
        with self._lock:
            if self._twice > 0:
                self._twice -= 1
                self.fired.append(("deliver-twice", job_id))
                return True
            return False

    def _take_result_fault(self, job_id: str) -> tuple[str, str | None] | None:
        with self._lock:
            if self._lose_results > 0:
                self._lose_results -= 1
                self.fired.append(("lose-result", job_id))
                return ("lose", None)
            if self._fail_results:
                self.fired.append(("fail-result", job_id))
                return ("fail", self._fail_results.pop(0))
            return None


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (openssl): RunPod is only reachable over
    https, and the SDK client retries differently over http (it mounts its urllib3 retries on http://
    only), so tests use https to see what production sees."""
    cert, key = directory / "runpod-local.pem", directory / "runpod-local-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


class LocalRunPod:
    """One RunPod serverless endpoint served on loopback from a background thread.

    ``start()`` returns once it listens; ``base_url`` (``https://127.0.0.1:PORT``) and ``api_url``
    (``base_url + "/v2"``, what ``RUNPOD_ENDPOINT_BASE_URL`` / ``runpod.endpoint_url_base`` take) then
    say where. ``faults`` injects faults; ``job(id)`` returns a copy of a job's record (how often it was
    handed out, billed time, every progress payload, results that came too late)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        worker_key: str | None = None,
        endpoint_id: str = "local-endpoint",
        host: str = "127.0.0.1",
        port: int = 0,
        tls: tuple[Path, Path] | None = None,
        job_take_hold_s: float = 1.0,
        stop_poll_hold_s: float = 1.0,
        runsync_wait_s: float = 90.0,
        default_execution_timeout_ms: int = DEFAULT_EXECUTION_TIMEOUT_MS,
        default_ttl_ms: int = DEFAULT_TTL_MS,
        min_execution_timeout_ms: int = 5000,
        min_ttl_ms: int = 10_000,
        run_retention_s: float = 1800.0,
        runsync_retention_s: float = 60.0,
        worker_seen_s: float = 15.0,
        webhook_retry_delay_s: float = 10.0,
    ) -> None:
        self.api_key = api_key or "rp-local-" + secrets.token_hex(16)
        self.worker_key = worker_key or "rp-worker-" + secrets.token_hex(16)
        self.endpoint_id = endpoint_id
        self.host, self.port, self.tls = host, port, tls
        self.job_take_hold_s, self.stop_poll_hold_s = job_take_hold_s, stop_poll_hold_s
        self.runsync_wait_s = runsync_wait_s
        self.default_execution_timeout_ms, self.default_ttl_ms = default_execution_timeout_ms, default_ttl_ms
        self.min_execution_timeout_ms, self.min_ttl_ms = min_execution_timeout_ms, min_ttl_ms
        self.run_retention_s, self.runsync_retention_s = run_retention_s, runsync_retention_s
        self.worker_seen_s = worker_seen_s
        self.webhook_retry_delay_s = webhook_retry_delay_s
        self.faults = Faults()
        self.calls: list[tuple[str, int]] = []  # (route, HTTP status) of every call, in order
        self.unhealthy: dict[str, dict[str, str]] = {}  # worker id -> failed fitness check report
        self.expired: dict[str, JobRecord] = {}  # job id -> record, for jobs removed by ttl or retention
        self.stops_delivered: list[tuple[str, str]] = []  # (worker id, job id) handed out on job-stop
        self._lock = threading.Lock()
        self._jobs: dict[str, JobRecord] = {}
        self._queue: list[str] = []
        self._redeliver: list[str] = []
        self._stops: dict[str, list[str]] = {}  # worker id -> job ids it should stop
        self._workers: dict[str, float] = {}  # worker id -> last seen
        self._retried = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v2"

    def start(self, timeout: float = 10.0) -> LocalRunPod:
        """Serve from a background thread; returns once the port is bound."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._shutdown())
            loop.close()

        self._thread = threading.Thread(target=run, name="runpod-local", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the local RunPod did not start")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread = None

    async def _serve(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        context = None
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=context)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        self._spawn(self._sweeper())

    async def _shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def app(self) -> web.Application:
        """The aiohttp application (``__main__`` serves it directly)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=32 * 1024**2)
        v2 = "/v2/{endpoint}"
        public: list[tuple[str, str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("POST", "/run", "run", self._run),
            ("POST", "/runsync", "runsync", self._runsync),
            ("GET", "/status/{job}", "status", self._status),
            ("POST", "/status/{job}", "status", self._status),
            ("GET", "/stream/{job}", "stream", self._stream),
            ("POST", "/cancel/{job}", "cancel", self._cancel),
            ("POST", "/retry/{job}", "retry", self._retry),
            ("POST", "/purge-queue", "purge-queue", self._purge),
            ("GET", "/health", "health", self._health),
            ("GET", "/job-take/{worker}", "job-take", self._job_take),
            ("GET", "/job-take-batch/{worker}", "job-take-batch", self._job_take),
            ("POST", "/job-done/{worker}/{job}", "job-done", self._job_done),
            ("POST", "/job-stream/{worker}/{job}", "job-stream", self._job_stream),
            ("GET", "/job-stop/{worker}", "job-stop", self._job_stop),
            ("GET", "/ping/{worker}", "ping", self._ping),
        ]
        for method, path, name, handler in public:
            app.router.add_route(method, v2 + path, handler, name=f"{name}.{method.lower()}")
        return app

    # ------------------------------------------------------------------ test-side reads
    def job(self, job_id: str) -> JobRecord | None:
        """A copy of the job's record (also of a job removed by ttl: see ``expired``)."""
        with self._lock:
            record = self._jobs.get(job_id) or self.expired.get(job_id)
            return copy.deepcopy(record) if record is not None else None

    def jobs(self) -> list[JobRecord]:
        """Copies of every job the endpoint still knows, in submission order."""
        with self._lock:
            return copy.deepcopy(list(self._jobs.values()))

    def workers(self) -> dict[str, float]:
        """Worker id -> seconds since it last polled or pinged."""
        now = _now()
        with self._lock:
            return {w: now - seen for w, seen in self._workers.items()}

    def client_env(self) -> dict[str, str]:
        """What a client process (the operator) needs to reach this endpoint with the SDK: the base URL
        (read by ``import runpod``), the API key, the endpoint id and, over https, the certificate."""
        env = {
            "RUNPOD_ENDPOINT_BASE_URL": self.api_url,
            "RUNPOD_API_KEY": self.api_key,
            "RUNPOD_ENDPOINT_ID": self.endpoint_id,
        }
        if self.tls:
            env["REQUESTS_CA_BUNDLE"] = str(self.tls[0])
        return env

    def worker_env(self, worker_id: str | None = None) -> dict[str, str]:
        """The environment RunPod gives a worker container, pointing here."""
        ep = f"{self.api_url}/{self.endpoint_id}"
        env = {
            "RUNPOD_WEBHOOK_GET_JOB": f"{ep}/job-take/$ID?gpu=LOCAL",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{ep}/job-done/$RUNPOD_POD_ID/$ID?gpu=LOCAL",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{ep}/job-stream/$RUNPOD_POD_ID/$ID?gpu=LOCAL",
            "RUNPOD_WEBHOOK_PING": f"{ep}/ping/$RUNPOD_POD_ID?gpu=LOCAL",
            "RUNPOD_AI_API_KEY": self.worker_key,
            "RUNPOD_POD_ID": worker_id or "local-" + uuid.uuid4().hex[:12],
            "RUNPOD_ENDPOINT_ID": self.endpoint_id,
            "RUNPOD_PING_INTERVAL": "1000",
        }
        if self.tls:
            env["SSL_CERT_FILE"] = env["REQUESTS_CA_BUNDLE"] = str(self.tls[0])
        return env

    # ------------------------------------------------------------------ plumbing
    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        route_name = request.match_info.route.name or ""
        route = route_name.split(".", 1)[0]
        if not route:  # no route matched: aiohttp's 404/405
            response = await handler(request)
            self.calls.append(("?", response.status))
            return response
        if request.match_info.get("endpoint") != self.endpoint_id:
            return self._answer(route, 404, {"error": "endpoint not found"})
        worker_side = route in WORKER_ROUTES
        if not self._authorised(request.headers.get("Authorization", ""), worker_side):
            return self._answer(route, 401, {"error": "Unauthorized"})
        fault = self.faults._http_fault(route)
        if fault is not None and fault.kind in ("drop", "drop-after"):
            if fault.kind == "drop-after":
                await handler(request)
            self.calls.append((route, 0))
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the request without answering
        if fault is not None and fault.kind == "delay":
            response = await handler(request)
            await asyncio.sleep(fault.seconds)
            self.calls.append((route, response.status))
            return response
        if fault is not None:
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return self._answer(route, fault.status, {"error": f"injected {fault.status}"}, headers)
        response = await handler(request)
        self.calls.append((route, response.status))
        return response

    def _answer(
        self, route: str, status: int, body: Any, headers: dict[str, str] | None = None
    ) -> web.Response:
        self.calls.append((route, status))
        return web.json_response(body, status=status, headers=headers)

    def _authorised(self, header: str, worker_side: bool) -> bool:
        if worker_side:
            return hmac.compare_digest(header.encode(), self.worker_key.encode())
        token = header[7:] if header[:7].lower() == "bearer " else header
        return hmac.compare_digest(token.encode(), self.api_key.encode())

    def _job_or_404(self, request: web.Request) -> JobRecord | web.Response:
        job = self._jobs.get(request.match_info["job"])
        if job is None:
            return web.json_response({"error": "request does not exist"}, status=404)
        return job

    # ------------------------------------------------------------------ public API
    async def _submit(self, request: web.Request, sync: bool) -> JobRecord | web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return web.json_response({"error": "body is not JSON"}, status=400)
        if not isinstance(body, dict) or "input" not in body:
            return web.json_response({"error": "body must be an object with 'input'"}, status=400)
        policy = body.get("policy") or {}
        if not isinstance(policy, dict):
            return web.json_response({"error": "policy must be an object"}, status=400)
        timeout = policy.get("executionTimeout", self.default_execution_timeout_ms)
        ttl = policy.get("ttl", self.default_ttl_ms)
        for name, value, low, high in (
            ("executionTimeout", timeout, self.min_execution_timeout_ms, None),
            ("ttl", ttl, self.min_ttl_ms, MAX_TTL_MS),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                return web.json_response({"error": f"policy.{name} must be >= {low} ms"}, status=400)
            if high is not None and value > high:
                return web.json_response({"error": f"policy.{name} must be <= {high} ms"}, status=400)
        webhook = body.get("webhook")
        if webhook is not None and not isinstance(webhook, str):
            return web.json_response({"error": "webhook must be a URL"}, status=400)
        now = _now()
        job = JobRecord(
            id=str(uuid.uuid4()) + ("-sync" if sync else "-u1"),
            input=body["input"],
            webhook=webhook,
            execution_timeout_ms=timeout,
            ttl_ms=ttl,
            sync=sync,
            submitted_at=now,
            queued_at=now,
        )
        with self._lock:
            self._jobs[job.id] = job
            self._queue.append(job.id)
        return job

    async def _run(self, request: web.Request) -> web.Response:
        job = await self._submit(request, sync=False)
        if isinstance(job, web.Response):
            return job
        return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    async def _runsync(self, request: web.Request) -> web.Response:
        job = await self._submit(request, sync=True)
        if isinstance(job, web.Response):
            return job
        deadline = _now() + self.runsync_wait_s
        while job.status not in FINAL_STATES and job.id in self._jobs and _now() < deadline:
            await asyncio.sleep(POLL_S)
        with self._lock:
            return web.json_response(job.status_body())

    async def _status(self, request: web.Request) -> web.Response:
        with self._lock:
            job = self._job_or_404(request)
            return job if isinstance(job, web.Response) else web.json_response(job.status_body())

    async def _stream(self, request: web.Request) -> web.Response:
        with self._lock:
            job = self._job_or_404(request)
            if isinstance(job, web.Response):
                return job
            chunks = job.stream[job.stream_read :]
            job.stream_read = len(job.stream)
            body = {"id": job.id, "status": job.status, "stream": [{"output": c} for c in chunks]}
            return web.json_response(body)

    async def _cancel(self, request: web.Request) -> web.Response:
        with self._lock:
            job = self._job_or_404(request)
            if isinstance(job, web.Response):
                return job
            if job.status not in FINAL_STATES:
                self._finish(job, "CANCELLED")
            return web.json_response({"id": job.id, "status": job.status})

    async def _retry(self, request: web.Request) -> web.Response:
        with self._lock:
            job = self._job_or_404(request)
            if isinstance(job, web.Response):
                return job
            if job.status not in ("FAILED", "TIMED_OUT"):
                return web.json_response(
                    {"error": f"only FAILED or TIMED_OUT jobs can be retried; this one is {job.status}"},
                    status=400,
                )
            job.status, job.retries, job.queued_at = "IN_QUEUE", job.retries + 1, _now()
            job.output = job.error = job.worker_id = job.delay_ms = job.execution_ms = None
            job.started_at = job.finished_at = None
            job.progress.clear()
            self._queue.append(job.id)
            self._retried += 1
            return web.json_response({"id": job.id, "status": "IN_QUEUE"})

    async def _purge(self, request: web.Request) -> web.Response:
        with self._lock:
            removed = 0
            for job_id in self._queue:
                job = self._jobs.get(job_id)
                if job is not None and job.status == "IN_QUEUE":
                    self._finish(job, "CANCELLED")
                    removed += 1
            self._queue.clear()
            return web.json_response({"removed": removed, "status": "completed"})

    async def _health(self, request: web.Request) -> web.Response:
        now = _now()
        with self._lock:
            counts = {s: 0 for s in ("COMPLETED", "FAILED", "IN_PROGRESS", "IN_QUEUE")}
            for job in self._jobs.values():
                if job.status in counts:
                    counts[job.status] += 1
            busy = {
                d.worker_id
                for job in self._jobs.values()
                for d in job.deliveries
                if d.closed_at is None  # a worker still running a timed-out job is busy too
            }
            alive = {w for w, seen in self._workers.items() if now - seen <= self.worker_seen_s}
            idle = len(alive - busy - set(self.unhealthy))
            body = {
                "jobs": {
                    "completed": counts["COMPLETED"],
                    "failed": counts["FAILED"],
                    "inProgress": counts["IN_PROGRESS"],
                    "inQueue": counts["IN_QUEUE"],
                    "retried": self._retried,
                },
                "workers": {
                    "idle": idle,
                    "initializing": 0,
                    "ready": idle,
                    "running": len(busy),
                    "throttled": 0,
                    "unhealthy": len(self.unhealthy),
                },
            }
            return web.json_response(body)

    # ------------------------------------------------------------------ worker API
    def _seen(self, worker_id: str) -> None:
        self._workers[worker_id] = _now()

    async def _job_take(self, request: web.Request) -> web.Response:
        worker_id = request.match_info["worker"]
        batch = request.match_info.route.name.startswith("job-take-batch")
        try:
            wanted = int(request.query.get("batch_size", "1")) if batch else 1
        except ValueError:
            return web.json_response({"error": "batch_size must be a number"}, status=400)
        with self._lock:
            self._seen(worker_id)
            if request.query.get("job_in_progress") == "0":
                self._release(worker_id)  # the worker holds nothing: whatever it held is over
        deadline = _now() + self.job_take_hold_s
        while True:
            with self._lock:
                taken = self._take(worker_id, max(1, wanted))
            if taken:
                return web.json_response(taken if batch else taken[0])
            if _now() >= deadline:
                return web.Response(status=204)
            await asyncio.sleep(POLL_S)

    def _take(self, worker_id: str, wanted: int) -> list[dict[str, Any]]:
        if self.faults.queue_held:
            return []
        now, out = _now(), []
        while len(out) < wanted and (self._redeliver or self._queue):
            job_id = (self._redeliver or self._queue).pop(0)
            job = self._jobs.get(job_id)
            if job is None or job.status == "CANCELLED":
                continue
            if job.status == "IN_QUEUE":  # a duplicate delivery leaves status and workerId alone
                job.status, job.started_at, job.worker_id = "IN_PROGRESS", now, worker_id
                job.delay_ms = _ms(now - job.queued_at)
            job.deliveries.append(Delivery(worker_id, now))
            if self.faults._take_twice(job.id):
                self._redeliver.append(job.id)
            item: dict[str, Any] = {"id": job.id, "input": copy.deepcopy(job.input)}
            if job.webhook:
                item["webhook"] = job.webhook
            out.append(item)
        return out

    def _release(self, worker_id: str) -> None:
        now = _now()
        for job in self._jobs.values():
            for d in job.deliveries:
                if d.worker_id == worker_id and d.closed_at is None:
                    d.closed_at = now

    def _open_delivery(self, job: JobRecord, worker_id: str) -> Delivery | None:
        for d in reversed(job.deliveries):
            if d.worker_id == worker_id and d.closed_at is None:
                return d
        return None

    async def _job_done(self, request: web.Request) -> web.Response:
        worker_id, job_id = request.match_info["worker"], request.match_info["job"]
        try:
            body = json.loads(await request.text())
        except json.JSONDecodeError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be an object"}, status=400)
        with self._lock:
            self._seen(worker_id)
            job = self._jobs.get(job_id)
            delivery = self._open_delivery(job, worker_id) if job is not None else None
            if job is None or delivery is None:
                return web.json_response({"accepted": False, "reason": "the worker does not hold this job"})
            if body.get("status") == "IN_PROGRESS":  # a progress_update
                if job.status == "IN_PROGRESS":
                    job.progress.append(body.get("output"))
                    job.output = body.get("output")
                return web.json_response({"accepted": job.status == "IN_PROGRESS"})
            fault = self.faults._take_result_fault(job_id)
            if fault is not None and fault[0] == "lose":
                return web.json_response({"accepted": True})
            delivery.closed_at, delivery.result = _now(), body
            if job.status != "IN_PROGRESS":
                job.late_results.append(body)
                return web.json_response({"accepted": False, "reason": f"the job is {job.status}"})
            delivery.counted = True
            output = body.get("output")
            if request.query.get("isStream") == "true" and not output:
                output = list(job.stream)
            if fault is not None:
                self._finish(job, "FAILED", error=fault[1], ended_by=delivery)
            elif "error" in body:
                self._finish(job, "FAILED", error=body["error"], output=output, ended_by=delivery)
            else:
                self._finish(job, "COMPLETED", output=output, ended_by=delivery)
            return web.json_response({"accepted": True})

    async def _job_stream(self, request: web.Request) -> web.Response:
        worker_id, job_id = request.match_info["worker"], request.match_info["job"]
        body = json.loads(await request.text())
        with self._lock:
            self._seen(worker_id)
            job = self._jobs.get(job_id)
            if job is None or self._open_delivery(job, worker_id) is None or job.status != "IN_PROGRESS":
                return web.json_response({"accepted": False})
            job.stream.append(body.get("output") if isinstance(body, dict) else body)
            return web.json_response({"accepted": True})

    async def _job_stop(self, request: web.Request) -> web.Response:
        worker_id = request.match_info["worker"]
        deadline = _now() + self.stop_poll_hold_s
        while True:
            with self._lock:
                self._seen(worker_id)
                stops = self._stops.pop(worker_id, [])
                self.stops_delivered.extend((worker_id, job_id) for job_id in stops)
            if stops:
                return web.json_response({"jobsToStop": stops})
            if _now() >= deadline:
                return web.Response(status=204)
            await asyncio.sleep(POLL_S)

    async def _ping(self, request: web.Request) -> web.Response:
        worker_id = request.match_info["worker"]
        with self._lock:
            self._seen(worker_id)
            if request.query.get("status") == "unhealthy":
                self.unhealthy[worker_id] = dict(request.query)
        return web.json_response({"ok": True})

    # ------------------------------------------------------------------ state changes
    def _finish(
        self,
        job: JobRecord,
        status: str,
        *,
        output: Any = None,
        error: Any = None,
        ended_by: Delivery | None = None,
    ) -> None:
        """Move a job to a final state (under the lock); workers still holding it are told to stop."""
        now = _now()
        job.status, job.finished_at = status, now
        job.output, job.error = output, error
        if ended_by is not None and ended_by.closed_at is not None:  # the worker's result: its own time
            job.finished_at = ended_by.closed_at
            job.execution_ms = ended_by.billed_ms
        elif job.started_at is not None:
            job.execution_ms = _ms(now - job.started_at)
        for d in job.deliveries:
            if d.closed_at is None and d is not ended_by:
                self._stops.setdefault(d.worker_id, []).append(job.id)
        if job.webhook:
            self._spawn_threadsafe(self._call_webhook(job.webhook, job.status_body(), job))

    def _spawn_threadsafe(self, coro: Awaitable[Any]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._spawn, coro)

    async def _call_webhook(self, url: str, body: dict[str, Any], job: JobRecord) -> None:
        """RunPod POSTs the final status to the webhook; on failure it tries twice more."""
        async with aiohttp.ClientSession() as session:
            for attempt in range(3):
                status = 0
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                    async with session.post(url, json=body, timeout=aiohttp.ClientTimeout(10)) as response:
                        status = response.status
                job.webhook_calls.append(status)
                if 200 <= status < 300 or attempt == 2:
                    return
                await asyncio.sleep(self.webhook_retry_delay_s)

    async def _sweeper(self) -> None:
        """Enforce executionTimeout, ttl and result retention."""
        while True:
            await asyncio.sleep(POLL_S)
            now = _now()
            with self._lock:
                for job in list(self._jobs.values()):
                    if (
                        job.status == "IN_PROGRESS"
                        and job.started_at is not None
                        and now - job.started_at > job.execution_timeout_ms / 1000
                    ):
                        self._finish(job, "TIMED_OUT")
                    if job.status not in FINAL_STATES and now - job.submitted_at > job.ttl_ms / 1000:
                        self._expire(job)
                    elif job.finished_at is not None:
                        keep = self.runsync_retention_s if job.sync else self.run_retention_s
                        if now - job.finished_at > keep:
                            self._remove(job)

    def _expire(self, job: JobRecord) -> None:
        """ttl ran out before the job finished: RunPod forgets it; a worker holding it is told to stop."""
        for d in job.deliveries:
            if d.closed_at is None:
                self._stops.setdefault(d.worker_id, []).append(job.id)
        self._remove(job)

    def _remove(self, job: JobRecord) -> None:
        self._jobs.pop(job.id, None)
        with contextlib.suppress(ValueError):
            self._queue.remove(job.id)
        self.expired[job.id] = job
