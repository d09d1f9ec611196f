"""The local RunPod against the unmodified ``runpod`` SDK: its client and its worker loop.

What the SDK's client (``runpod.Endpoint`` / ``Job``, runpod 1.12.0) raises, as the operator sees it
against RunPod (https; asserted below):

- bad or missing API key (401): ``RuntimeError("401 Unauthorized | ...")`` from every call;
- unknown job or endpoint (404), a bad request (400), 429 and 5xx: ``requests.HTTPError``, the status
  in ``exc.response.status_code`` (429 carries ``Retry-After`` in ``exc.response.headers``). Over
  https the SDK does not retry: its urllib3 ``Retry(total=5, backoff_factor=1, status_forcelist=[408,
  429])`` is mounted on ``http://`` only. (Over plain http, GETs answered 429 are retried up to 5 times
  honouring Retry-After before ``requests.exceptions.RetryError``; connection failures are retried with
  0+2+4+8+16 s of back-off.)
- connection dropped mid-call or refused: ``requests.ConnectionError``; a slow answer:
  ``requests.Timeout`` (10 s for run/status, 3 s for cancel/health/purge).
- ``Job.output(timeout=N)`` on a job still running after N s: ``TimeoutError``.

``Job.status()`` caches a final status; ``Job.output()`` with no timeout returns whatever ``/status``
holds, which while IN_PROGRESS is the latest ``progress_update`` payload.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests

from tests.runpod_local.fixtures import WorkerProcess, wait_until
from tests.runpod_local.server import LocalRunPod


def status(endpoint: Any, job_id: str) -> dict[str, Any]:
    """``/status`` through the SDK's own HTTP client."""
    return endpoint.rp_client.get(f"{endpoint.endpoint_id}/status/{job_id}")


def wait_status(endpoint: Any, job_id: str, wanted: str, timeout: float = 15) -> dict[str, Any]:
    return wait_until(
        lambda: (body := status(endpoint, job_id))["status"] == wanted and body,
        timeout,
        f"job {job_id} to be {wanted}",
    )


def log_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_job_runs_with_progress_and_billing(
    runpod_server: LocalRunPod, runpod_endpoint: Any, runpod_worker: Callable[..., WorkerProcess]
) -> None:
    worker = runpod_worker()
    job = runpod_endpoint.run({"message": "hi", "progress": 3, "progress_gap": 0.4})
    assert status(runpod_endpoint, job.job_id)["status"] in ("IN_QUEUE", "IN_PROGRESS")

    # While it runs, /status shows the latest progress_update payload as its output.
    seen: list[Any] = []

    def progressed() -> bool:
        body = status(runpod_endpoint, job.job_id)
        if body["status"] == "IN_PROGRESS" and body.get("output") and body["output"] not in seen:
            seen.append(body["output"])
        return len(seen) >= 2 or body["status"] == "COMPLETED"

    wait_until(progressed, 20, "progress updates")
    assert seen and all(p["of"] == 3 for p in seen)
    assert [p["step"] for p in seen] == sorted(p["step"] for p in seen)
    health = runpod_endpoint.health()
    if status(runpod_endpoint, job.job_id)["status"] == "IN_PROGRESS":
        assert health["workers"]["running"] == 1 and health["jobs"]["inProgress"] == 1

    assert job.output(timeout=20) == {
        "echo": {"message": "hi", "progress": 3, "progress_gap": 0.4},
        "worker": worker.worker_id,
    }
    assert job.status() == "COMPLETED"
    final = status(runpod_endpoint, job.job_id)
    assert final["workerId"] == worker.worker_id
    assert final["executionTime"] >= 1100  # three 0.4 s gaps, measured by the server
    assert final["delayTime"] >= 0
    record = runpod_server.job(job.job_id)
    assert record is not None
    assert record.handed_out == 1  # billed once
    assert record.billed_ms == final["executionTime"]
    assert [p["step"] for p in record.progress] == [1, 2, 3]

    # run_sync answers with the output directly; health counts both jobs and the idle worker.
    assert runpod_endpoint.run_sync({"n": 2}, timeout=20) == {"echo": {"n": 2}, "worker": worker.worker_id}
    health = runpod_endpoint.health()
    assert health["jobs"]["completed"] == 2 and health["jobs"]["inProgress"] == 0
    assert health["workers"]["idle"] == 1 and health["workers"]["running"] == 0


def test_failed_job_carries_the_error_and_can_be_retried(
    runpod_server: LocalRunPod, runpod_endpoint: Any, runpod_worker: Callable[..., WorkerProcess]
) -> None:
    runpod_worker()
    job = runpod_endpoint.run({"error": "scene unusable"})
    body = wait_status(runpod_endpoint, job.job_id, "FAILED")
    assert body["error"] == "scene unusable"

    raised = runpod_endpoint.run({"raise": "kaboom"})
    error = json.loads(wait_status(runpod_endpoint, raised.job_id, "FAILED")["error"])
    assert error["error_message"] == "kaboom" and "RuntimeError" in error["error_type"]

    # /retry requeues the same job id with the same input; it runs (and fails) again.
    assert runpod_endpoint.rp_client.post(f"{runpod_server.endpoint_id}/retry/{job.job_id}", None) == {
        "id": job.job_id,
        "status": "IN_QUEUE",
    }
    again = wait_status(runpod_endpoint, job.job_id, "FAILED")
    assert again["retries"] == 1 and again["error"] == "scene unusable"
    record = runpod_server.job(job.job_id)
    assert record is not None and record.handed_out == 2
    assert runpod_endpoint.health()["jobs"]["retried"] == 1

    done = runpod_endpoint.run({"ok": True})
    done.output(timeout=15)
    with pytest.raises(requests.HTTPError) as info:  # only FAILED or TIMED_OUT jobs
        runpod_endpoint.rp_client.post(f"{runpod_server.endpoint_id}/retry/{done.job_id}", None)
    assert info.value.response.status_code == 400


def test_execution_timeout_ends_the_job_and_ignores_the_late_result(
    runpod_server: LocalRunPod, runpod_endpoint: Any, runpod_worker: Callable[..., WorkerProcess]
) -> None:
    worker = runpod_worker()
    job = runpod_endpoint.run({"input": {"sleep": 2.5}, "policy": {"executionTimeout": 600}})
    body = wait_status(runpod_endpoint, job.job_id, "TIMED_OUT", timeout=20)
    assert 600 <= body["executionTime"] < 2500
    # The worker hears of it on its stop channel (what it can do about it is the SDK's business).
    wait_until(lambda: (worker.worker_id, job.job_id) in runpod_server.stops_delivered, 10, "the stop")
    # The synchronous handler cannot be stopped: it finishes, and its result is recorded but ignored.
    wait_until(lambda: (r := runpod_server.job(job.job_id)) and r.late_results, 20, "the late result")
    assert status(runpod_endpoint, job.job_id)["status"] == "TIMED_OUT"
    record = runpod_server.job(job.job_id)
    assert record is not None and record.handed_out == 1
    assert record.billed_ms >= 2400  # the worker was busy with it all along: that time is billed

    # Below the minimum (RunPod's is 5 s, lowered to 100 ms here): 400. The input must not be empty:
    # the SDK wraps a request whose "input" is falsy into {"input": request}, policy and all.
    with pytest.raises(requests.HTTPError) as info:
        runpod_endpoint.run({"input": {"n": 1}, "policy": {"executionTimeout": 50}})
    assert info.value.response.status_code == 400


def test_cancel_reaches_the_worker_through_the_stop_channel(
    runpod_server: LocalRunPod,
    runpod_endpoint: Any,
    runpod_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    sync_log, async_log = tmp_path / "sync.log", tmp_path / "async.log"
    sync_worker = runpod_worker(env={"ECHO_WORKER_LOG": str(sync_log)})
    async_worker = runpod_worker(env={"ECHO_WORKER_LOG": str(async_log), "ECHO_WORKER_KIND": "async"})
    wait_until(
        lambda: {sync_worker.worker_id, async_worker.worker_id} <= set(runpod_server.workers()),
        30,
        "both workers to poll",
    )
    jobs = [runpod_endpoint.run({"sleep": 2.0}) for _ in range(2)]
    wait_until(lambda: len(log_lines(sync_log)) + len(log_lines(async_log)) == 2, 15, "both jobs to start")
    for job in jobs:
        assert job.cancel() == {"id": job.job_id, "status": "CANCELLED"}
        assert status(runpod_endpoint, job.job_id)["status"] == "CANCELLED"
    # The synchronous handler runs to its end (the SDK acts on the stop only between awaits); the
    # coroutine is stopped at its await and never finishes. Either way the job stays CANCELLED.
    wait_until(lambda: any(line.startswith("finished") for line in log_lines(sync_log)), 15, "sync end")
    wait_until(lambda: "Job stopped." in async_worker.output(), 15, "the async handler to be stopped")
    assert [line.split()[0] for line in log_lines(async_log)] == ["started"]
    for job in jobs:
        assert status(runpod_endpoint, job.job_id)["status"] == "CANCELLED"
        record = runpod_server.job(job.job_id)
        assert record is not None and record.handed_out == 1
    # Both workers are free again.
    follow = runpod_endpoint.run({"after": "cancel"})
    assert follow.output(timeout=15)["echo"] == {"after": "cancel"}


class _WebhookReceiver(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        self.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_cancel_and_purge_queued_jobs_and_ttl_expiry(
    runpod_server: LocalRunPod, runpod_endpoint: Any
) -> None:
    runpod_server.faults.hold_queue()  # no worker takes anything
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _WebhookReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        hooked = runpod_endpoint.run(
            {"input": {"n": 0}, "webhook": f"http://127.0.0.1:{receiver.server_port}/done"}
        )
        queued = [hooked] + [runpod_endpoint.run({"n": n}) for n in (1, 2)]
        assert hooked.cancel()["status"] == "CANCELLED"
        # RunPod POSTs the final status to the job's webhook.
        wait_until(lambda: _WebhookReceiver.bodies, 10, "the webhook call")
        assert _WebhookReceiver.bodies == [{"id": hooked.job_id, "status": "CANCELLED"}]
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert runpod_endpoint.health()["jobs"]["inQueue"] == 2
    assert runpod_endpoint.purge_queue() == {"removed": 2, "status": "completed"}
    assert [status(runpod_endpoint, j.job_id)["status"] for j in queued] == ["CANCELLED"] * 3
    assert runpod_endpoint.health()["jobs"]["inQueue"] == 0

    stuck = runpod_endpoint.run({"input": {"n": 9}, "policy": {"ttl": 400}})
    assert status(runpod_endpoint, stuck.job_id)["status"] == "IN_QUEUE"

    def gone() -> bool:
        try:
            status(runpod_endpoint, stuck.job_id)
        except requests.HTTPError as exc:
            return exc.response.status_code == 404
        return False

    wait_until(gone, 10, "the job to expire")
    assert stuck.job_id in runpod_server.expired
    assert runpod_server.expired[stuck.job_id].status == "IN_QUEUE"


def test_errors_the_sdk_client_raises(runpod_server: LocalRunPod, runpod_endpoint: Any) -> None:
    import runpod

    ep = runpod_server.endpoint_id
    wrong = runpod.Endpoint(ep, api_key="not-the-key")
    for call in (lambda: wrong.run({"x": 1}), wrong.health, lambda: wrong.rp_client.get(f"{ep}/status/x")):
        with pytest.raises(RuntimeError, match="401 Unauthorized"):
            call()
    with pytest.raises(RuntimeError, match="401"):  # the workers' key is not an API key
        runpod.Endpoint(ep, api_key=runpod_server.worker_key).health()

    for path in (f"{ep}/status/no-such-job", "no-such-endpoint/health"):
        with pytest.raises(requests.HTTPError) as info:
            runpod_endpoint.rp_client.get(path)
        assert info.value.response.status_code == 404

    runpod_server.faults.fail_next(1, 429, routes=["run"], retry_after=7)
    with pytest.raises(requests.HTTPError) as info:
        runpod_endpoint.run({"x": 1})
    assert info.value.response.status_code == 429
    assert info.value.response.headers["Retry-After"] == "7"

    runpod_server.faults.hold_queue()
    job = runpod_endpoint.run({"x": 1})  # the fault was used up
    for code in (429, 500, 502):  # no retry over https, GET or not
        runpod_server.faults.fail_next(1, code, routes=["status"])
        with pytest.raises(requests.HTTPError) as info:
            job.status()
        assert info.value.response.status_code == code

    runpod_server.faults.drop_next(1, routes=["status"])
    with pytest.raises(requests.ConnectionError):
        job.status()
    assert job.status() == "IN_QUEUE"
    # A run whose answer is lost may still have queued the job: a client that resubmits gets two.
    runpod_server.faults.drop_next(1, routes=["run"], after_handling=True)
    with pytest.raises(requests.ConnectionError):
        runpod_endpoint.run({"lost": "answer"})
    assert [j.input for j in runpod_server.jobs()][-1] == {"lost": "answer"}
    with pytest.raises(TimeoutError):
        job.output(timeout=1)

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    runpod.endpoint_url_base = f"https://127.0.0.1:{closed}/v2"  # restored by the fixture
    with pytest.raises(requests.ConnectionError):
        runpod.Endpoint(ep).health()
    assert ("status", 0) in runpod_server.calls and ("run", 429) in runpod_server.calls


def test_duplicate_delivery_runs_twice_and_result_faults(
    runpod_server: LocalRunPod,
    runpod_endpoint: Any,
    runpod_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    log = tmp_path / "runs.log"
    runpod_worker(env={"ECHO_WORKER_LOG": str(log)})
    runpod_server.faults.deliver_twice()
    job = runpod_endpoint.run({"sleep": 0.3})
    assert job.output(timeout=15)["echo"] == {"sleep": 0.3}
    # The worker logs "finished" before it posts the result: wait for the server to have both results.
    record = wait_until(
        lambda: (r := runpod_server.job(job.job_id)) and len(r.late_results) == 1 and r, 15, "the second run"
    )
    assert log_lines(log) == [f"{e} {job.job_id}" for e in ("started", "finished") * 2]
    assert record.handed_out == 2
    assert [d.result for d in record.deliveries] == [{"output": job.output()}] * 2
    assert record.late_results == [{"output": job.output()}]  # the first result counts
    assert record.billed_ms == sum(d.billed_ms for d in record.deliveries) >= 600
    assert status(runpod_endpoint, job.job_id)["status"] == "COMPLETED"

    runpod_server.faults.fail_results(1, error="GPU fell off the bus")
    failed = runpod_endpoint.run({"ok": 1})
    assert wait_status(runpod_endpoint, failed.job_id, "FAILED")["error"] == "GPU fell off the bus"

    runpod_server.faults.lose_results(1)
    lost = runpod_endpoint.run({"input": {"ok": 2}, "policy": {"executionTimeout": 1500}})
    wait_status(runpod_endpoint, lost.job_id, "TIMED_OUT", timeout=15)

    # A 500 on the worker's job-done is retried by the SDK (aiohttp_retry): the result still lands.
    runpod_server.faults.fail_next(1, 500, routes=["job-done"])
    assert runpod_endpoint.run({"ok": 3}).output(timeout=15)["echo"] == {"ok": 3}
    assert ("job-done", 500) in runpod_server.calls


def test_the_trainer_worker_runs_against_it(
    runpod_server: LocalRunPod, runpod_endpoint: Any, runpod_worker: Callable[..., WorkerProcess]
) -> None:
    """The trainer image's command (``python -m sharpml.train.runpod_worker``) under the real SDK loop:
    a job it refuses fails with the worker's message (no torch needed for that)."""
    runpod_worker("sharpml.train.runpod_worker")
    job = runpod_endpoint.run({"scene_url": "ftp://example.invalid/scene.tar", "upload": {}})
    body = wait_status(runpod_endpoint, job.job_id, "FAILED", timeout=30)
    assert body["error"].startswith("invalid input: scene_url: must be an https URL")


def test_a_client_process_configured_by_environment(runpod_server: LocalRunPod) -> None:
    """``RUNPOD_ENDPOINT_BASE_URL`` set before ``import runpod`` is the other supported way (the
    operator runs as its own process); the API key still has to be given to the SDK."""
    script = (
        "import json, os, runpod\n"
        "runpod.api_key = os.environ['RUNPOD_API_KEY']\n"
        "print(json.dumps(runpod.Endpoint(os.environ['RUNPOD_ENDPOINT_ID']).health()))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env.update(runpod_server.client_env())
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1])["jobs"]["inQueue"] == 0
    assert ("health", 200) in runpod_server.calls


def test_a_generator_handler_streams(
    runpod_server: LocalRunPod, runpod_endpoint: Any, runpod_worker: Callable[..., WorkerProcess]
) -> None:
    runpod_worker(env={"ECHO_WORKER_KIND": "stream"})
    chunks = [{"part": n} for n in range(4)]
    job = runpod_endpoint.run({"chunks": chunks, "progress_gap": 0.2})
    assert list(job.stream()) == chunks  # the SDK's Job.stream() reads /stream until the job is final
    body = wait_status(runpod_endpoint, job.job_id, "COMPLETED")
    assert body["output"] == chunks  # no aggregate from the worker: /status shows the streamed chunks
