"""A tiny RunPod worker for tests: ``python -m tests.runpod_local.echo_worker`` runs the real SDK loop.

Its handler returns ``{"echo": input, "worker": RUNPOD_POD_ID}`` and obeys the input: ``progress``
(N ``progress_update`` calls, ``progress_gap`` s apart), ``sleep`` (seconds, after the progress),
``error`` (returns ``{"error": ...}``), ``raise`` (raises). ``ECHO_WORKER_KIND`` picks the handler:
``sync`` (default: a plain function, like the trainer's), ``async`` (a coroutine: the SDK can stop it
at an ``await``) or ``stream`` (a generator yielding ``input["chunks"]``). Each run appends
``started <job id>`` and ``finished <job id>`` to ``ECHO_WORKER_LOG`` when set, so a test can see what
ran in the worker.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import runpod


def _log(event: str, job: dict[str, Any]) -> None:
    path = os.environ.get("ECHO_WORKER_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{event} {job['id']}\n")


def _result(job: dict[str, Any]) -> dict[str, Any]:
    job_input = job["input"]
    if "raise" in job_input:
        raise RuntimeError(job_input["raise"])
    if "error" in job_input:
        return {"error": job_input["error"]}
    return {"echo": job_input, "worker": os.environ.get("RUNPOD_POD_ID")}


def handler(job: dict[str, Any]) -> dict[str, Any]:
    """The synchronous handler (the trainer's kind: it blocks the SDK's event loop while it runs)."""
    _log("started", job)
    job_input = job["input"]
    for step in range(int(job_input.get("progress", 0))):
        runpod.serverless.progress_update(job, {"step": step + 1, "of": job_input["progress"]})
        time.sleep(float(job_input.get("progress_gap", 0.3)))
    time.sleep(float(job_input.get("sleep", 0)))
    try:
        return _result(job)
    finally:
        _log("finished", job)


async def async_handler(job: dict[str, Any]) -> dict[str, Any]:
    """The same as a coroutine: the SDK can stop it at an ``await``."""
    _log("started", job)
    job_input = job["input"]
    for step in range(int(job_input.get("progress", 0))):
        runpod.serverless.progress_update(job, {"step": step + 1, "of": job_input["progress"]})
        await asyncio.sleep(float(job_input.get("progress_gap", 0.3)))
    await asyncio.sleep(float(job_input.get("sleep", 0)))
    try:
        return _result(job)
    finally:
        _log("finished", job)


def stream_handler(job: dict[str, Any]) -> Iterator[Any]:
    """A generator handler: yields each of ``input["chunks"]``, ``progress_gap`` s apart."""
    _log("started", job)
    for chunk in job["input"].get("chunks", []):
        yield chunk
        time.sleep(float(job["input"].get("progress_gap", 0.3)))
    _log("finished", job)


if __name__ == "__main__":
    kind = os.environ.get("ECHO_WORKER_KIND", "sync")
    chosen = {"sync": handler, "async": async_handler, "stream": stream_handler}[kind]
    runpod.serverless.start({"handler": chosen})
