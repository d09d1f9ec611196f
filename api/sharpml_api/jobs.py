"""``/v1/jobs``: uploads that become SharpJobs, and their owners' view of them."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from kubernetes.client.exceptions import ApiException
from starlette.requests import ClientDisconnect

from sharpml.intake import IntakeRejected, ingest
from sharpml.layout import parse_job_id
from sharpml_api import events
from sharpml_api.auth import Principal, may_access, new_job_token, principal, unauthorized
from sharpml_api.client_ip import request_ip
from sharpml_api.cluster import TOKEN_ANNOTATION, sharpjob_manifest
from sharpml_api.models import UPLOAD_REQUEST_BODY, JobCreated, JobList, JobOptions, JobStatus, Links
from sharpml_api.problems import ApiProblem, ProblemItem, cluster_unavailable, intake_problem, responses
from sharpml_api.ratelimit import Limit, RateLimited, StoreContention
from sharpml_api.state import AppState
from sharpml_api.uploads import boundary_of, check_declared_length, receive, spool

router = APIRouter(prefix="/v1")
log = logging.getLogger(__name__)
Caller = Annotated[Principal, Depends(principal)]


def _state(request: Request) -> AppState:
    return request.app.state.sharpml


def _links(request: Request, job_id: str) -> Links:
    st = _state(request)
    base = st.settings.public_url or str(request.base_url).rstrip("/")
    return Links(status=f"{base}/v1/jobs/{job_id}", events=f"{base}/v1/jobs/{job_id}/events")


def _not_found(job_id: str) -> ApiProblem:
    return ApiProblem(404, "not-found", "Not found", f"no job {job_id!r} for this caller")


def _rate_limits(st: AppState, who: Principal, ip: str) -> list[Limit]:
    rl = st.settings.rate_limits
    limits = []
    if rl.per_ip_per_hour:
        limits.append(Limit("ip-hour", ip, rl.per_ip_per_hour, 3600, "uploads per hour from this address"))
    if who.anonymous:
        limits.append(
            Limit(
                "anon-ip-day", ip, rl.anonymous_per_ip_per_day, 86400, "anonymous uploads per day (free tier)"
            )
        )
    elif rl.per_account_per_day:
        limits.append(
            Limit(
                "account-day", who.account, rl.per_account_per_day, 86400, "uploads per day for this account"
            )
        )
    return limits


def _apiserver_problem(exc: ApiException) -> ApiProblem:
    """The apiserver refused the SharpJob: 422 (invalid spec) names the fields; anything else is 503."""
    if exc.status == 422:
        try:
            causes = json.loads(exc.body).get("details", {}).get("causes", [])
        except (TypeError, ValueError):
            causes = []
        items = [
            ProblemItem(field=c.get("field"), rule=c.get("reason") or "invalid", message=c.get("message", ""))
            for c in causes
        ]
        detail = "; ".join(f"{i.field}: {i.message}" for i in items) or "the job was refused by the cluster"
        return ApiProblem(422, "invalid-options", "Invalid options", detail, items)
    return cluster_unavailable("could not create the job; try again later")


@router.post(
    "/jobs",
    status_code=201,
    response_model=JobCreated,
    summary="Upload photos; creates a job",
    responses=responses(400, 401, 408, 413, 415, 422, 429, 503),
    openapi_extra={"requestBody": UPLOAD_REQUEST_BODY},
)
async def create_job(request: Request, who: Caller) -> JSONResponse:
    """Streams the photos to disk (413 as soon as a limit is passed), runs intake (validation and
    metadata stripping, all or nothing), then creates the SharpJob. On any failure nothing is left
    on disk or in the cluster."""
    st = _state(request)
    s = st.settings
    content_type = request.headers.get("content-type")
    try:
        boundary = boundary_of(content_type)
    except ApiProblem:
        st.metrics.uploads.labels("malformed").inc()
        raise
    try:
        check_declared_length(request.headers.get("content-length"), s.limits)
    except ApiProblem:
        st.metrics.uploads.labels("too_large").inc()
        raise
    if who.anonymous and not s.rate_limits.anonymous_per_ip_per_day:
        st.metrics.uploads.labels("unauthorized").inc()
        raise unauthorized("anonymous uploads are disabled on this server; sign in")

    try:
        admissions = await anyio.to_thread.run_sync(
            st.limiter.acquire_all, _rate_limits(st, who, request_ip(request))
        )
    except RateLimited as exc:
        st.metrics.rate_limited.labels(exc.limit.scope).inc()
        st.metrics.uploads.labels("rate_limited").inc()
        raise ApiProblem(
            429,
            "rate-limited",
            "Too many uploads",
            f"{exc.limit.description}: the limit of {exc.limit.limit} is reached; "
            f"retry in {exc.retry_after} s",
            [ProblemItem(field=exc.limit.scope, rule="rate-limit", message=str(exc))],
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    except (ApiException, StoreContention) as exc:
        log.warning("rate-limit store unavailable: %s", exc)
        st.metrics.uploads.labels("error").inc()
        raise cluster_unavailable("could not check the rate limits; try again later") from None

    job_id = str(uuid.uuid4())
    st.metrics.in_progress.inc()
    ours_failed = True
    try:
        response = await _receive_and_create(request, st, who, job_id, boundary)
        ours_failed = False
        return response
    except ApiProblem as problem:
        ours_failed = problem.status >= 500
        st.metrics.uploads.labels(_outcome(problem.status)).inc()
        raise
    except ClientDisconnect:
        ours_failed = False  # the client went away: the attempt counts
        st.metrics.uploads.labels("disconnected").inc()
        raise ApiProblem(
            400, "client-disconnected", "Client disconnected", "the upload was interrupted"
        ) from None
    except BaseException:
        st.metrics.uploads.labels("error").inc()
        raise
    finally:
        st.metrics.in_progress.dec()
        if ours_failed:
            # A failure on our side does not use up the caller's quota.
            with anyio.CancelScope(shield=True):
                for admission in admissions:
                    await anyio.to_thread.run_sync(st.limiter.release, admission)


def _outcome(status: int) -> str:
    outcomes = {400: "malformed", 408: "timeout", 413: "too_large", 415: "malformed", 422: "rejected"}
    return outcomes.get(status, "error")


async def _receive_and_create(
    request: Request, st: AppState, who: Principal, job_id: str, boundary: bytes
) -> JSONResponse:
    s = st.settings
    try:
        with spool(st.data_dir) as spool_dir:
            try:
                with anyio.fail_after(s.upload_timeout_seconds):
                    parsed = await receive(request.stream(), boundary, spool_dir, s.limits)
            except TimeoutError:
                raise ApiProblem(
                    408,
                    "upload-timeout",
                    "Upload too slow",
                    f"the upload did not arrive within {s.upload_timeout_seconds} s",
                    headers={"Connection": "close"},
                ) from None
            st.metrics.upload_bytes.inc(parsed.bytes_received)
            options = JobOptions.from_form(parsed.fields)
            started = time.monotonic()
            async with st.intake_slots:
                try:
                    result = await anyio.to_thread.run_sync(
                        lambda: ingest(
                            parsed.files, st.data_dir, s.limits, job_id=job_id, workers=s.intake_workers
                        )
                    )
                except IntakeRejected as exc:
                    raise intake_problem(exc.problems) from None
            st.metrics.intake_seconds.observe(time.monotonic() - started)
    except OSError as exc:  # the data volume: full, read-only, or tampered with (a symlink refused)
        log.error("storing upload %s failed: %s", job_id, exc)
        raise ApiProblem(
            503,
            "storage-unavailable",
            "Storage unavailable",
            "the upload could not be stored; try again later",
        ) from None
    created = False
    try:
        token, digest = new_job_token() if who.anonymous else (None, None)
        job_dir = result.job.root.relative_to(st.data_dir.root).as_posix()
        body = sharpjob_manifest(job_id, who.account, job_dir, len(result.images), options, digest)
        try:
            await anyio.to_thread.run_sync(st.cluster.create_job, body)
        except ApiException as exc:
            log.warning("creating SharpJob %s failed: %s %s", job_id, exc.status, exc.reason)
            raise _apiserver_problem(exc) from None
        created = True
    finally:
        if not created:
            st.data_dir.remove_job(result.job)
    st.metrics.uploads.labels("created").inc()
    st.metrics.images.inc(len(result.images))
    links = _links(request, job_id)
    created_body = JobCreated(id=job_id, image_count=len(result.images), links=links, job_token=token)
    return JSONResponse(
        created_body.model_dump(exclude_none=True), status_code=201, headers={"Location": links.status}
    )


async def _owned_job(request: Request, who: Principal, job_id: str) -> dict[str, Any]:
    """The caller's job, or 404 (also for other owners' jobs: their existence is not revealed)."""
    try:
        name = parse_job_id(job_id)
    except ValueError:
        raise _not_found(job_id) from None
    st = _state(request)
    obj = await _cluster_call(st.cluster.get_job, name)
    if obj is None:
        raise _not_found(job_id)
    meta = obj.get("metadata", {})
    digest = (meta.get("annotations") or {}).get(TOKEN_ANNOTATION)
    if not may_access(who, obj.get("spec", {}).get("owner", ""), digest):
        raise _not_found(job_id)
    return obj


async def _cluster_call(fn, *args):
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except ApiException as exc:
        log.warning("apiserver call %s failed: %s %s", fn.__name__, exc.status, exc.reason)
        raise cluster_unavailable("the job store is unavailable; try again later") from None


@router.get(
    "/jobs/{job_id}",
    response_model=JobStatus,
    summary="A job's status",
    responses=responses(401, 404, 503),
)
async def get_job(request: Request, job_id: str, who: Caller) -> JobStatus:
    obj = await _owned_job(request, who, job_id)
    return JobStatus.from_resource(obj, _links(request, obj["metadata"]["name"]))


def _sort_key(obj: dict[str, Any]) -> str:
    """Position in the newest-first listing: creation time, then name (RFC 3339 sorts as text)."""
    return f"{obj['metadata'].get('creationTimestamp') or ''}/{obj['metadata']['name']}"


@router.get(
    "/jobs",
    response_model=JobList,
    summary="The caller's jobs, newest first",
    responses=responses(401, 503),
)
async def list_jobs(
    request: Request,
    who: Caller,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page.")] = 20,
    cursor: Annotated[str | None, Query(max_length=1024, description="From the previous page.")] = None,
) -> JobList:
    if who.anonymous:
        raise unauthorized(
            "listing jobs needs an account; anonymous jobs are read one by one with X-Job-Token"
        )
    st = _state(request)
    objs = sorted(await _cluster_call(st.cluster.list_jobs, who.account), key=_sort_key, reverse=True)
    if cursor is not None:
        # Any string is a valid position, so a stale or hand-made cursor pages on instead of failing.
        objs = [o for o in objs if _sort_key(o) < cursor]
    page = objs[:limit]
    items = [JobStatus.from_resource(o, _links(request, o["metadata"]["name"])) for o in page]
    more = len(objs) > limit
    return JobList(items=items, next_cursor=_sort_key(page[-1]) if more else None)


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    summary="Cancel and delete a job",
    responses={
        202: {"model": JobStatus, "description": "Deletion started; the operator is stopping the job"},
        **responses(401, 404, 503),
    },
)
async def delete_job(request: Request, job_id: str, who: Caller) -> Response:
    """Deletes the SharpJob. If it is gone at once (no operator finaliser holds it), its files are
    removed too (204); otherwise the operator stops its work and removes them (202)."""
    st = _state(request)
    for _ in range(3):
        obj = await _owned_job(request, who, job_id)
        name = obj["metadata"]["name"]
        try:
            await anyio.to_thread.run_sync(st.cluster.delete_job, name, obj["metadata"]["resourceVersion"])
            break
        except ApiException as exc:
            if exc.status != 409:  # 409: changed since we checked the owner; check again
                raise cluster_unavailable("could not delete the job") from None
    else:
        raise cluster_unavailable("the job kept changing; try again")
    remaining = await _cluster_call(st.cluster.get_job, name)
    if remaining is None:
        await anyio.to_thread.run_sync(st.data_dir.remove_job, st.data_dir.job(name))
        return Response(status_code=204)
    status = JobStatus.from_resource(remaining, _links(request, name))
    return JSONResponse(status.model_dump(), status_code=202)


@router.get(
    "/jobs/{job_id}/events",
    summary="Server-sent events of a job's status changes",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "`event: status` with a JobStatus as data on every change; "
            "`event: deleted` when the job is gone. Ends once the job has finished.",
        },
        **responses(401, 404, 503),
    },
)
async def job_events(request: Request, job_id: str, who: Caller) -> StreamingResponse:
    obj = await _owned_job(request, who, job_id)
    st = _state(request)
    name = obj["metadata"]["name"]
    links = _links(request, name)
    stream = events.status_stream(
        st.cluster, obj, lambda o: JobStatus.from_resource(o, links), st.settings.sse_keepalive_seconds
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
