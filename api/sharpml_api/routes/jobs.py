"""``/v1/jobs``: uploads that become SharpJobs, and their owners' view of them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse, StreamingResponse

from sharpml_api import events, jobs
from sharpml_api.auth import unauthorized
from sharpml_api.deps import BaseUrl, Caller, OwnedJob, State, Upload, ViewableJob
from sharpml_api.models import EVENT_SCHEMA, UPLOAD_REQUEST_BODY, JobCreated, JobList, JobStatus, Links
from sharpml_api.problems import responses
from sharpml_api.submit import submit

router = APIRouter(prefix="/v1")


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobCreated,
    summary="Upload photos; creates a job",
    responses=responses(400, 401, 408, 413, 415, 422, 429, 503),
    openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
)
async def create_job(st: State, upload: Upload) -> JSONResponse:
    """Streams the photos to disk (413 as soon as a limit is passed), runs intake (validation and
    metadata stripping, all or nothing), then creates the SharpJob. On any failure nothing is left
    on disk or in the cluster."""
    created = await submit(st, upload)
    return JSONResponse(
        created.model_dump(mode="json", exclude_none=True),
        status_code=201,
        headers={"Location": created.links.status},
    )


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="A job's status",
    responses=responses(400, 401, 403, 404, 410, 503),
)
async def get_job(st: State, seen: ViewableJob, base: BaseUrl) -> JobStatus:
    """For its owner, or read-only with a share link of the job (`links.view`'s exp, kid and sig)."""
    links = Links.for_job(base, seen.job, st.settings.links, seen.grant.expires)
    return JobStatus.from_resource(seen.job, links)


@router.get(
    "/jobs",
    response_model=JobList,
    summary="The caller's jobs, newest first",
    responses=responses(400, 401, 503),
)
async def list_jobs(
    st: State,
    who: Caller,
    base: BaseUrl,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    cursor: Annotated[str | None, Query(max_length=1024, description="From the previous page.")] = None,
) -> JobList:
    if who.anonymous:
        raise unauthorized(
            "listing jobs needs an account; anonymous jobs are read one by one with X-Job-Token"
        )
    page, next_cursor = await jobs.list_owned(st, who, limit, cursor)
    items = [JobStatus.from_resource(o, Links.for_job(base, o, st.settings.links)) for o in page]
    return JobList(items=items, next_cursor=next_cursor)


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    summary="Cancel and delete a job",
    responses={
        202: {"model": JobStatus, "description": "Deletion started; the operator is stopping the job"},
        **responses(400, 401, 404, 503),
    },
)
async def delete_job(st: State, who: Caller, job: OwnedJob, base: BaseUrl) -> Response:
    """Deletes the SharpJob. If it is gone at once (no operator finaliser holds it), its files are
    removed too (204); otherwise the operator stops its work and removes them (202)."""
    remaining = await jobs.delete_owned(st, who, job)
    if remaining is None:
        return Response(status_code=204)
    status = JobStatus.from_resource(remaining, Links.of(base, remaining["metadata"]["name"]))
    return JSONResponse(status.model_dump(mode="json"), status_code=202)


@router.get(
    "/jobs/{job_id}/events",
    summary="Server-sent events of a job's status changes",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": EVENT_SCHEMA}},
            "description": "`event: status` with a JobStatus as data on every change; "
            "`event: deleted` when the job is gone. Ends once the job has finished.",
        },
        **responses(400, 401, 403, 404, 410, 503),
    },
)
async def job_events(st: State, seen: ViewableJob, base: BaseUrl) -> StreamingResponse:
    """For its owner, or read-only with a share link of the job. The links in the events all expire when
    those minted as the stream opened do (never past the share link's own expiry), so an event is sent
    only when the job changed, not because a signature did. A share link's stream ends when it expires."""
    keys = st.settings.links
    grant = seen.grant.expires
    not_after = keys.expiry() if grant is None else min(grant, keys.expiry())

    def view(obj: dict) -> JobStatus:
        return JobStatus.from_resource(obj, Links.for_job(base, obj, keys, not_after))

    stream = events.status_stream(st.cluster, seen.job, view, st.settings.sse_keepalive_seconds, grant)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
