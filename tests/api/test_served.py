"""Through real uvicorn (the ``sharpml-api`` console script): a whole upload, 413 while the body is
still arriving, and server-sent events following the SharpJob as the operator updates it."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from sharpml.config import MB, IntakeLimits
from tests.api.conftest import bearer, left_behind, multipart, patch_status, sharpjobs
from tests.core.photos import photo_set

pytestmark = [pytest.mark.cluster]


def test_upload_and_status_through_uvicorn(settings, serve_api, control_plane, namespace, tmp_path):
    api = serve_api(settings)
    resp = httpx.post(
        f"{api.url}/v1/jobs", headers=bearer("acct-u"), timeout=60, **multipart(photo_set(tmp_path))
    )
    assert resp.status_code == 201, resp.text
    job_id = resp.json()["id"]
    assert resp.headers["location"] == f"{api.url}/v1/jobs/{job_id}"
    assert [j["metadata"]["name"] for j in sharpjobs(control_plane, namespace)] == [job_id]
    status = httpx.get(resp.headers["location"], headers=bearer("acct-u")).json()
    assert status["phase"] == "Pending" and status["image_count"] == 5
    assert httpx.get(f"{api.url}/readyz").status_code == 200
    schema = httpx.get(f"{api.url}/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/healthz", "/readyz"} <= set(
        schema["paths"]
    )


def _send_chunked_headers(sock: socket.socket, boundary: str) -> None:
    """An upload's request line and headers, with a chunked body (no Content-Length to judge by)."""
    sock.sendall(
        (
            "POST /v1/jobs HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n"
            f"Authorization: {bearer()['Authorization']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
        ).encode()
    )


def test_oversized_upload_is_refused_while_still_arriving(settings, serve_api, control_plane, namespace):
    """Chunked body, so no Content-Length to judge by: the per-file limit must stop it mid-stream."""
    api = serve_api(settings)
    boundary = "sharpmlboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    announced = 50 * 1024 * 1024  # what the client would send: 50 MB in one photo (limit: 1 MB)
    sent = 0
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        _send_chunked_headers(sock, boundary)

        def chunk(data: bytes) -> bytes:
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        sock.sendall(chunk(head))
        response = b""
        sock.settimeout(0.05)
        block = b"\xff" * 65536
        while sent < announced:
            try:
                sock.sendall(chunk(block))
                sent += len(block)
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                response += sock.recv(65536)
                if b"\r\n\r\n" in response:
                    break
            except TimeoutError:
                pass
        sock.settimeout(10)
        while b"}" not in response:
            data = sock.recv(65536)
            if not data:
                break
            response += data
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 413"), response[:500]
    assert sent < 4 * 1024 * 1024, f"server read {sent} bytes before refusing"
    body = json.loads(rest[rest.index(b"{") :])
    assert body["errors"][0] == {
        "file": "big.jpg",
        "rule": "file-size",
        "message": "big.jpg: over the 1.0 MB per-file limit",
    }
    time.sleep(0.5)
    assert left_behind(settings) == [] and sharpjobs(control_plane, namespace) == []


def test_a_trickling_upload_times_out(settings_for, serve_api, control_plane, namespace):
    api = serve_api(settings_for(upload_timeout_seconds=2))
    boundary = "slow"
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        _send_chunked_headers(sock, boundary)
        started = time.monotonic()
        part = f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="a.jpg"\r\n\r\n'
        sock.sendall(f"{len(part):x}\r\n{part}\r\n".encode())
        sock.settimeout(0.3)
        response = b""
        while b"}" not in response and time.monotonic() - started < 15:
            try:
                sock.sendall(b"1\r\nx\r\n")  # one byte at a time
                response += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
    assert response.startswith(b"HTTP/1.1 408"), response[:300]
    assert 1.5 < time.monotonic() - started < 10
    assert b"did not arrive within 2 s" in response


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_memory_stays_flat_while_a_large_body_streams_to_disk(settings_for, serve_api, tmp_path):
    """An 80 MB photo part goes to disk chunk by chunk: the server's peak RSS grows by far less."""
    limits = IntakeLimits(max_file_bytes=100 * MB, max_set_bytes=200 * MB, min_images=5, max_images=8)
    settings = settings_for(limits=limits)
    api = serve_api(settings)
    httpx.get(f"{api.url}/readyz")  # warm up: imports, kube client, thread pool
    before = _peak_rss_mb(api.proc.pid)
    size = 80 * MB

    def body():
        yield b"\xff\xd8\xff\xe0"  # a JPEG signature, then 80 MB the decoder will refuse
        block = bytes(1024 * 1024)
        for _ in range(size // len(block)):
            yield block

    boundary = "b0undary"

    def multipart_body():
        disposition = 'Content-Disposition: form-data; name="files"; filename="big.jpg"'
        yield f"--{boundary}\r\n{disposition}\r\n\r\n".encode()
        yield from body()
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = httpx.post(
        f"{api.url}/v1/jobs",
        content=multipart_body(),
        headers={**bearer(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=120,
    )
    assert resp.status_code == 422, resp.text  # received whole, then rejected by intake (count, type)
    assert {e["rule"] for e in resp.json()["errors"]} >= {"count"}
    growth = _peak_rss_mb(api.proc.pid) - before
    assert growth < 30, f"peak RSS grew by {growth:.0f} MB while streaming an 80 MB part"
    assert left_behind(settings) == []


def _read_events(resp: httpx.Response, out: list[tuple[str, dict]], done: threading.Event) -> None:
    event, data = None, []
    for line in resp.iter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line == "" and event:
            out.append((event, json.loads("\n".join(data))))
            event, data = None, []
    done.set()


def test_events_follow_the_job_until_it_finishes(settings_for, serve_api, control_plane, namespace, tmp_path):
    import dataclasses

    api = serve_api(dataclasses.replace(settings_for(), sse_keepalive_seconds=1))
    created = httpx.post(
        f"{api.url}/v1/jobs", headers=bearer("acct-s"), timeout=60, **multipart(photo_set(tmp_path))
    )
    job_id = created.json()["id"]
    url = f"{api.url}/v1/jobs/{job_id}/events"
    assert httpx.get(url, headers=bearer("acct-other")).status_code == 404

    events: list[tuple[str, dict]] = []
    done = threading.Event()
    with httpx.stream("GET", url, headers=bearer("acct-s"), timeout=30) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        reader = threading.Thread(target=_read_events, args=(resp, events, done), daemon=True)
        reader.start()
        _wait(lambda: len(events) >= 1)
        time.sleep(2.5)  # a couple of keep-alives pass: nothing new is reported
        assert len(events) == 1
        patch_status(control_plane, namespace, job_id, {"phase": "Queued", "queuePosition": 0})
        _wait(lambda: len(events) >= 2)
        patch_status(
            control_plane,
            namespace,
            job_id,
            {"phase": "Reconstructing", "progress": {"percent": 30, "stage": "x"}},
        )
        _wait(lambda: len(events) >= 3)
        patch_status(control_plane, namespace, job_id, {"phase": "Complete", "progress": {"percent": 100}})
        assert done.wait(15), "the stream did not end after the job finished"
    phases = [(e, d["phase"]) for e, d in events]
    assert phases == [
        ("status", "Pending"),
        ("status", "Queued"),
        ("status", "Reconstructing"),
        ("status", "Complete"),
    ]
    assert events[2][1]["progress"] == {"percent": 30, "stage": "x"}
    assert events[-1][1]["finished"] is True

    # A finished job's stream is its status once; a deleted job's stream says so and ends.
    with httpx.stream("GET", url, headers=bearer("acct-s"), timeout=30) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("event:")]
    assert lines == ["event: status"]


def test_events_report_deletion(settings_for, serve_api, control_plane, namespace, tmp_path):
    import dataclasses

    api = serve_api(dataclasses.replace(settings_for(), sse_keepalive_seconds=1))
    created = httpx.post(
        f"{api.url}/v1/jobs", headers=bearer("acct-s"), timeout=60, **multipart(photo_set(tmp_path))
    )
    job_id = created.json()["id"]
    events: list[tuple[str, dict]] = []
    done = threading.Event()
    with httpx.stream(
        "GET", f"{api.url}/v1/jobs/{job_id}/events", headers=bearer("acct-s"), timeout=30
    ) as resp:
        threading.Thread(target=_read_events, args=(resp, events, done), daemon=True).start()
        _wait(lambda: len(events) >= 1)
        assert httpx.delete(f"{api.url}/v1/jobs/{job_id}", headers=bearer("acct-s")).status_code == 204
        assert done.wait(15)
    assert events[-1] == ("deleted", {"id": job_id})


def _wait(cond, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)
