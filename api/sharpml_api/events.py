"""Server-sent events of one SharpJob's status, fed by a Kubernetes watch on that object.

The official client's watch is a blocking generator, so it runs in a daemon thread that hands events
to the response's async generator through a queue. The watch is re-opened every keep-alive period
(the server ends it with ``timeoutSeconds``), so a client that went away releases its thread within
one period; a 410 Gone (history compacted) is answered by re-reading the object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from kubernetes import watch
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel

from sharpml.contract import JobStatus
from sharpml_api.cluster import Cluster

log = logging.getLogger(__name__)


def sse(event: str, data: str, event_id: str | None = None) -> str:
    lines = [f"id: {event_id}"] if event_id else []
    lines.append(f"event: {event}")
    lines.extend(f"data: {line}" for line in data.splitlines() or [""])
    return "\n".join(lines) + "\n\n"


def _finished(obj: dict[str, Any]) -> bool:
    """The contract's terminal phases (Complete, Failed, Cancelled) end a stream."""
    return JobStatus.of(obj).finished


def _pump(
    cluster: Cluster,
    name: str,
    resource_version: str,
    period: int,
    stop: threading.Event,
    emit: Callable[[tuple[str, dict[str, Any]]], None],
) -> None:
    """Watch one SharpJob until ``stop`` is set or it is deleted; ``emit`` each (type, object)."""
    rv = resource_version
    while not stop.is_set():
        w = watch.Watch()
        try:
            for ev in cluster.watch_job(w, name, rv, period):
                kind, obj = ev["type"], ev["object"]
                if kind == "ERROR":
                    raise ApiException(status=(obj or {}).get("code", 500), reason=(obj or {}).get("message"))
                rv = obj["metadata"]["resourceVersion"]
                emit((kind, obj))
                if kind == "DELETED" or stop.is_set():
                    w.stop()
                    return
        except ApiException as exc:
            if exc.status != 410:
                emit(("ERROR", {"message": f"watch failed ({exc.status})"}))
                return
            current = cluster.get_job(name)  # history compacted: resync from the object itself
            if current is None:
                emit(("DELETED", {"metadata": {"name": name}}))
                return
            rv = current["metadata"]["resourceVersion"]
            emit(("MODIFIED", current))
        except Exception as exc:  # connection dropped: the client gets an error event and reconnects
            log.warning("watch on SharpJob %s ended: %s", name, exc)
            emit(("ERROR", {"message": "watch interrupted"}))
            return
        finally:
            w.stop()


async def status_stream(
    cluster: Cluster,
    obj: dict[str, Any],
    view: Callable[[dict[str, Any]], BaseModel],
    keepalive: int,
    until: float | None = None,
) -> AsyncIterator[str]:
    """``status`` now, then on every change; ``deleted`` when gone. Ends once the job has finished, or
    at ``until`` (Unix seconds: when the share link it was opened with expires)."""
    name = obj["metadata"]["name"]
    yield "retry: 3000\n\n" + sse("status", view(obj).model_dump_json(), obj["metadata"]["resourceVersion"])
    if _finished(obj):
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    stop = threading.Event()

    def emit(item: tuple[str, dict[str, Any]]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens any more
            loop.call_soon_threadsafe(queue.put_nowait, item)

    thread = threading.Thread(
        target=_pump,
        args=(cluster, name, obj["metadata"]["resourceVersion"], keepalive, stop, emit),
        name=f"sse-watch-{name}",
        daemon=True,
    )
    thread.start()
    last = view(obj).model_dump_json()
    try:
        while until is None or time.time() < until:
            wait = keepalive if until is None else min(keepalive, until - time.time())
            try:
                kind, current = await asyncio.wait_for(queue.get(), max(wait, 0.01))
            except TimeoutError:
                yield ": keep-alive\n\n"  # also how a vanished client is noticed (the write fails)
                continue
            if kind == "DELETED":
                yield sse("deleted", json.dumps({"id": name}))
                return
            if kind == "ERROR":
                yield sse("error", json.dumps(current))
                return
            data = view(current).model_dump_json()
            if data != last:  # metadata-only updates (e.g. kopf annotations) are not news to a client
                last = data
                yield sse("status", data, current["metadata"]["resourceVersion"])
            if _finished(current):
                return
    finally:
        stop.set()
