"""Submitting an upload: admission → receive → intake → SharpJob, with everything undone on failure.

No web framework here: the route hands over an :class:`UploadRequest` (the caller, their address,
the headers that matter and the body as it arrives) and gets a :class:`JobCreated` back or an
:class:`ApiProblem` raised. The steps, in order, each refusing as early and as cheaply as it can:

1. **framing** — ``Content-Type`` must be multipart/form-data with a boundary (415/400), a declared
   ``Content-Length`` must fit the upload limits (413); nothing is read yet;
2. **admission** — at most ``SHARPML_UPLOADS_PER_IP_CONCURRENT`` uploads in flight per address on
   this replica (429, no slot spent); anonymous uploads must be enabled (401); the rate limits (429
   with Retry-After; 503 when their store, the apiserver, cannot be used);
3. **receive** — the body streamed into a spool directory, limits enforced as it arrives (400/408/413);
   the options checked (422), a webhook's host resolved to public addresses only (422);
4. **intake** — the core's rules, validation and metadata stripping into ``jobs/{id}/`` (422);
5. **SharpJob** — created in the cluster (422 when the apiserver refuses the options, else 503).

Rollback: the spool is removed in every case; a job directory whose SharpJob could not be created is
removed. Only an outage — the cluster or the data volume unavailable, a 503
(:mod:`sharpml_api.outages`) — hands the rate-limit slots back; a failure caused by the request (a
4xx, the client going away) and an unexpected error (a 500) keep them: every attempt cost bandwidth
and CPU, and a request that makes the server fail must not be repeatable for free. Each upload's
outcome is counted once (:func:`~sharpml_api.metrics.upload_outcome`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import anyio
from kubernetes.client.exceptions import ApiException

from sharpml.intake import IntakeRejected, IntakeResult, ingest
from sharpml_api.auth import Principal, new_job_token, unauthorized
from sharpml_api.cluster import sharpjob_manifest
from sharpml_api.metrics import upload_outcome
from sharpml_api.models import JobCreated, JobOptions, Links
from sharpml_api.outages import CLUSTER_ERRORS, outage_problem
from sharpml_api.problems import (
    ApiProblem,
    ProblemItem,
    cluster_unavailable,
    field_problem,
    intake_problem,
    storage_unavailable,
)
from sharpml_api.ratelimit import Admission, Limit, RateLimited
from sharpml_api.state import AppState
from sharpml_api.uploads import ClientGone, ParsedUpload, boundary_of, check_declared_length, receive, spool
from sharpml_api.webhooks import check_webhook_url

log = logging.getLogger(__name__)
#: ``Retry-After`` when an address already has its most uploads in flight.
CONCURRENT_RETRY_AFTER = 30
#: Longest the webhook's host may take to resolve at submission.
WEBHOOK_RESOLVE_SECONDS = 5


@dataclass(frozen=True)
class UploadRequest:
    """What the web layer hands over for one upload."""

    caller: Principal
    client_ip: str
    content_type: str | None
    content_length: str | None
    #: The body as it arrives; raises :class:`~sharpml_api.uploads.ClientGone` if the client leaves.
    chunks: AsyncIterator[bytes]
    #: Base of the URLs in the answer (the public URL, or the request's own).
    base_url: str


async def submit(st: AppState, upload: UploadRequest) -> JobCreated:
    """The whole flow; raises :class:`ApiProblem` (or an unexpected error) with nothing left behind."""
    error: BaseException | None = None
    try:
        return await _submit(st, upload)
    except BaseException as exc:
        error = exc
        raise
    finally:
        st.metrics.uploads.labels(upload_outcome(error)).inc()


async def _submit(st: AppState, upload: UploadRequest) -> JobCreated:
    boundary = boundary_of(upload.content_type)
    check_declared_length(upload.content_length, st.settings.limits)
    with _in_flight(st, upload.client_ip):
        return await _admitted(st, upload, boundary)


@contextlib.contextmanager
def _in_flight(st: AppState, ip: str) -> Iterator[None]:
    """Count the address's uploads in flight on this replica; 429 past ``SHARPML_UPLOADS_PER_IP_CONCURRENT``.

    Checked before the rate limits, so a refused extra connection costs no slot: it bounds how many
    spools, sockets and upload timeouts one address can hold open at once."""
    cap = st.settings.uploads_per_ip_concurrent
    if cap and st.uploads_in_flight[ip] >= cap:
        raise ApiProblem(
            429,
            "too-many-uploads",
            "Too many uploads at once",
            f"{cap} uploads from this address are already in progress; retry when one has finished",
            [ProblemItem(field="ip-concurrent", rule="rate-limit", message=f"at most {cap} at once")],
            headers={"Retry-After": str(CONCURRENT_RETRY_AFTER)},
        )
    st.uploads_in_flight[ip] += 1
    try:
        yield
    finally:
        st.uploads_in_flight[ip] -= 1
        if not st.uploads_in_flight[ip]:
            del st.uploads_in_flight[ip]


async def _admitted(st: AppState, upload: UploadRequest, boundary: bytes) -> JobCreated:
    admissions = await _admit(st, upload.caller, upload.client_ip)
    job_id = str(uuid.uuid4())
    st.metrics.in_progress.inc()
    refund = False
    try:
        return await _receive_and_create(st, upload, boundary, job_id)
    except ClientGone:
        # The client went away: the attempt counts.
        raise ApiProblem(
            400, "client-disconnected", "Client disconnected", "the upload was interrupted"
        ) from None
    except BaseException as exc:
        # Only an outage (the cluster or the data volume: provably our side) hands the slots back. A
        # request refused for its input, or one that met an unexpected error, keeps them: otherwise a
        # client that can trigger a failure could send full bodies without limit.
        refund = outage_problem(exc) is not None
        raise
    finally:
        st.metrics.in_progress.dec()
        if refund:
            with anyio.CancelScope(shield=True):
                await _release(st, admissions)


async def _release(st: AppState, admissions: list[Admission]) -> None:
    """Hand the slots back; if the store is down too, the upload keeps them (logged, not raised)."""
    for admission in admissions:
        try:
            await anyio.to_thread.run_sync(st.limiter.release, admission)
        except CLUSTER_ERRORS as exc:
            log.warning("could not hand back rate-limit slot %s: %r", admission.limit.scope, exc)


def rate_limits(st: AppState, who: Principal, ip: str) -> list[Limit]:
    """The limits an upload by ``who`` from ``ip`` falls under (0 in the settings: that limit is off)."""
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


async def _admit(st: AppState, who: Principal, ip: str) -> list[Admission]:
    if who.anonymous and not st.settings.rate_limits.anonymous_per_ip_per_day:
        raise unauthorized("anonymous uploads are disabled on this server; sign in")
    try:
        return await anyio.to_thread.run_sync(st.limiter.acquire_all, rate_limits(st, who, ip))
    except RateLimited as exc:
        st.metrics.rate_limited.labels(exc.limit.scope).inc()
        raise ApiProblem(
            429,
            "rate-limited",
            "Too many uploads",
            f"{exc.limit.description}: the limit of {exc.limit.limit} is reached; "
            f"retry in {exc.retry_after} s",
            [ProblemItem(field=exc.limit.scope, rule="rate-limit", message=str(exc))],
            headers={"Retry-After": str(exc.retry_after)},
        ) from None
    except CLUSTER_ERRORS as exc:
        log.warning("rate-limit store unavailable: %r", exc)
        raise cluster_unavailable("could not check the rate limits; try again later") from None


async def _receive_and_create(
    st: AppState, upload: UploadRequest, boundary: bytes, job_id: str
) -> JobCreated:
    try:
        with spool(st.data_dir, job_id) as spool_dir:
            parsed = await _receive(st, upload.chunks, boundary, spool_dir)
            options = JobOptions.from_form(parsed.fields)
            if options.webhook_url:
                await _check_webhook(st, options.webhook_url)
            result = await _intake(st, parsed, job_id)
    except OSError as exc:  # the data volume: full, read-only, or tampered with (a symlink refused)
        log.error("storing upload %s failed: %s", job_id, exc)
        raise storage_unavailable("the upload could not be stored; try again later") from None
    token, digest = new_job_token() if upload.caller.anonymous else (None, None)
    await _create_sharpjob(st, job_id, upload.caller, result, options, digest)
    st.metrics.images.inc(len(result.images))
    return JobCreated(
        id=job_id,
        image_count=len(result.images),
        links=Links.for_job(upload.base_url, {"metadata": {"name": job_id}}, st.settings.links),
        job_token=token,
    )


class _Stalled(Exception):
    """No byte of the body arrived for ``SHARPML_UPLOAD_IDLE_SECONDS``."""


async def _paced(chunks: AsyncIterator[bytes], idle: int) -> AsyncIterator[bytes]:
    """``chunks``, failing with :class:`_Stalled` when the next one takes longer than ``idle`` seconds
    (e.g. a body shorter than its Content-Length: the server would wait for the rest forever)."""
    it = aiter(chunks)
    while True:
        try:
            with anyio.fail_after(idle):
                chunk = await anext(it)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise _Stalled from None
        yield chunk


async def _receive(st: AppState, chunks: AsyncIterator[bytes], boundary: bytes, spool_dir) -> ParsedUpload:
    timeout, idle = st.settings.upload_timeout_seconds, st.settings.upload_idle_seconds
    try:
        with anyio.fail_after(timeout):
            parsed = await receive(_paced(chunks, idle), boundary, spool_dir, st.settings.limits)
    except (TimeoutError, _Stalled) as exc:
        detail = (
            f"no part of the upload arrived for {idle} s"
            if isinstance(exc, _Stalled)
            else f"the upload did not arrive within {timeout} s"
        )
        raise ApiProblem(
            408, "upload-timeout", "Upload too slow", detail, headers={"Connection": "close"}
        ) from None
    st.metrics.upload_bytes.inc(parsed.bytes_received)
    return parsed


async def _check_webhook(st: AppState, url: str) -> None:
    """422 unless the webhook reaches only public addresses (:mod:`sharpml_api.webhooks`)."""
    try:
        with anyio.fail_after(WEBHOOK_RESOLVE_SECONDS):
            await anyio.to_thread.run_sync(
                check_webhook_url, url, st.settings.webhook_allowed_hosts, abandon_on_cancel=True
            )
    except TimeoutError:
        raise field_problem(
            422,
            "invalid-options",
            "Invalid options",
            "webhook_url",
            "unresolvable",
            f"webhook_url: the host could not be resolved within {WEBHOOK_RESOLVE_SECONDS} s",
        ) from None


async def _intake(st: AppState, parsed: ParsedUpload, job_id: str) -> IntakeResult:
    started = time.monotonic()
    async with st.intake_slots:
        try:
            result = await anyio.to_thread.run_sync(
                lambda: ingest(
                    parsed.files,
                    st.data_dir,
                    st.settings.limits,
                    job_id=job_id,
                    workers=st.settings.intake_workers,
                )
            )
        except IntakeRejected as exc:
            raise intake_problem(exc.problems) from None
    st.metrics.intake_seconds.observe(time.monotonic() - started)
    return result


async def _create_sharpjob(
    st: AppState,
    job_id: str,
    owner: Principal,
    result: IntakeResult,
    options: JobOptions,
    token_digest: str | None,
) -> None:
    """The SharpJob for the ingested set; if it cannot be created, the job directory goes too."""
    created = False
    try:
        job_dir = result.job.root.relative_to(st.data_dir.root).as_posix()
        body = sharpjob_manifest(job_id, owner.account, job_dir, len(result.images), options, token_digest)
        try:
            await anyio.to_thread.run_sync(st.cluster.create_job, body)
        except ApiException as exc:
            log.warning("creating SharpJob %s failed: %s %s", job_id, exc.status, exc.reason)
            raise _apiserver_problem(exc) from None
        except CLUSTER_ERRORS as exc:
            log.warning("creating SharpJob %s failed: %r", job_id, exc)
            raise cluster_unavailable("could not create the job; try again later") from None
        created = True
    finally:
        if not created:
            st.data_dir.remove_job(result.job)


def _apiserver_problem(exc: ApiException) -> ApiProblem:
    """The apiserver refused the SharpJob: 422 or 400 (the spec, built from the request's options, is
    invalid) is the request's 422 naming the fields; anything else is the cluster's 503."""
    if exc.status in (400, 422):
        try:
            causes = json.loads(exc.body).get("details", {}).get("causes", [])
        except (TypeError, ValueError, AttributeError):
            causes = []
        items = [
            ProblemItem(field=c.get("field"), rule=c.get("reason") or "invalid", message=c.get("message", ""))
            for c in causes
        ]
        detail = "; ".join(f"{i.field}: {i.message}" for i in items) or "the job was refused by the cluster"
        return ApiProblem(422, "invalid-options", "Invalid options", detail, items)
    return cluster_unavailable("could not create the job; try again later")
