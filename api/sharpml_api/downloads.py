"""A download's answer: which grant, where the artifact is (the data volume, else its S3 backup), or why
it cannot be had. No web framework here beyond the response objects; the route is a few lines.

A signed link is the whole grant: its holder gets the local file without the SharpJob being read, so
links keep working after retention deleted the SharpJob, for as long as the artifact itself is kept.
When the local copy is gone, the SharpJob's status (if it still exists) says whether a backup was made;
without it, S3 is asked. The owner (without a link) is checked against the SharpJob, which must be
Complete and not past its expiry.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Mapping

import anyio
from starlette.background import BackgroundTask
from starlette.responses import RedirectResponse, Response, StreamingResponse

from sharpml import contract
from sharpml.contract import Phase
from sharpml.contract.delivery import Artifact
from sharpml_api import jobs
from sharpml_api.artifacts import (
    DigestCache,
    Fd,
    backup_url,
    byte_range,
    download_name,
    etag_matches,
    open_artifact,
)
from sharpml_api.auth import Principal
from sharpml_api.grants import check_link
from sharpml_api.models import epoch_of
from sharpml_api.problems import ApiProblem
from sharpml_api.state import AppState


def _gone(job_id: str, artifact: Artifact, why: str) -> ApiProblem:
    detail = f"{artifact.filename} of job {job_id} {why}"
    return ApiProblem(410, "artifact-expired", "Artifact expired", detail)


def _absent(job_id: str, artifact: Artifact, why: str) -> ApiProblem:
    detail = f"{artifact.filename} of job {job_id} {why}"
    return ApiProblem(404, "artifact-not-found", "Artifact not found", detail)


async def download(
    st: AppState,
    method: str,
    headers: Mapping[str, str],
    job_id: str,
    artifact: Artifact,
    link: Mapping[str, str] | None,
    who: Principal | None,
) -> Response:
    """The answer to a GET or HEAD of ``artifact``: the file (200/206/304/416), a redirect to its S3
    backup (302), or a problem: 403/410 for the link, 404 (not the caller's, not delivered), 410 (past its
    expiry, or removed since the link was signed)."""
    name = jobs.job_name(job_id)
    if link is not None:
        not_after = check_link(st.settings.links, name, artifact.filename, link).expires
    else:
        assert who is not None
        not_after = _deliverable(await jobs.owned_job(st, who, name), artifact)

    opened = await anyio.to_thread.run_sync(open_artifact, st.data_dir.root, name, artifact)
    if opened is not None:
        return await file_response(method, headers, name, artifact, opened, st.digests)
    backed_up = None  # unknown: S3 is asked
    obj = await jobs.cluster_call(st.cluster.get_job, name)
    if obj is not None and contract.JobStatus.of(obj).phase == Phase.COMPLETE:
        entry = _entry(obj, artifact)
        backed_up = bool(entry and entry.get("s3Key"))
    if backed_up is not False:
        url = await anyio.to_thread.run_sync(
            lambda: backup_url(st.storage(), name, artifact, not_after, backed_up is None)
        )
        if url is not None:
            return RedirectResponse(
                url, status_code=302, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
            )
    if link is not None:  # the link proves it was delivered: it has been removed since
        raise _gone(name, artifact, "is no longer stored (removed by retention)")
    raise _absent(name, artifact, "is no longer stored here nor in the backup")


_CHUNK = 256 * 1024


def _common_headers(job_id: str, artifact: Artifact, etag: str) -> dict[str, str]:
    return {
        "ETag": etag,
        "Cache-Control": "private",
        "X-Content-Type-Options": "nosniff",
        "Accept-Ranges": "bytes",
        "Referrer-Policy": "no-referrer",
        "Content-Disposition": f'attachment; filename="{download_name(job_id, artifact)}"',
    }


async def _stream(fd: Fd, start: int, end: int) -> AsyncIterator[bytes]:
    try:
        offset = start
        while offset < end and fd.fd is not None:
            chunk = await anyio.to_thread.run_sync(os.pread, fd.fd, min(_CHUNK, end - offset), offset)
            if not chunk:  # truncated while being sent: end the body short rather than pad it
                return
            offset += len(chunk)
            yield chunk
    finally:
        fd.close()


async def file_response(
    method: str,
    headers: Mapping[str, str],
    job_id: str,
    artifact: Artifact,
    opened: tuple[Fd, os.stat_result],
    digests: DigestCache,
) -> Response:
    """200, 206, 304 or 416 for the opened local copy; the descriptor is closed when the answer ends."""
    fd, st = opened
    handed_over = False
    try:
        etag = f'"{await anyio.to_thread.run_sync(digests.digest, fd.fd, st)}"'
        common = _common_headers(job_id, artifact, etag)
        inm = headers.get("if-none-match")
        if inm is not None and etag_matches(inm, etag):
            return Response(status_code=304, headers=common)
        span = byte_range(headers, st.st_size, etag)
        start, end = span or (0, st.st_size)
        out = {**common, "Content-Length": str(end - start)}
        if span is not None:
            out["Content-Range"] = f"bytes {start}-{end - 1}/{st.st_size}"
        status = 206 if span is not None else 200
        if method == "HEAD":
            return Response(status_code=status, headers=out, media_type=artifact.media_type)
        handed_over = True
        return StreamingResponse(
            _stream(fd, start, end),
            status_code=status,
            headers=out,
            media_type=artifact.media_type,
            background=BackgroundTask(fd.close),  # also when the body was never started
        )
    finally:
        if not handed_over:
            fd.close()


def _entry(obj: jobs.Job, artifact: Artifact) -> dict | None:
    """The artifact's entry in ``status.outputs.artifacts``."""
    entries = contract.JobStatus.of(obj).outputs.get("artifacts") or []
    return next((a for a in entries if isinstance(a, dict) and a.get("format") == artifact.format), None)


def _deliverable(obj: jobs.Job, artifact: Artifact) -> int | None:
    """Check that the owner's job delivered ``artifact`` and that it has not expired; its expiry."""
    name = obj["metadata"]["name"]
    status = contract.JobStatus.of(obj)
    if status.phase != Phase.COMPLETE:
        raise _absent(name, artifact, f"does not exist yet: the job is {status.phase.value}")
    expires = epoch_of(status.outputs.get("expiresAt"))
    if expires is not None and expires <= time.time():
        raise _gone(name, artifact, f"was deleted at {status.outputs['expiresAt']} (retention)")
    if _entry(obj, artifact) is None:
        raise _absent(name, artifact, "was not delivered")
    return expires
