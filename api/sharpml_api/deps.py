"""The FastAPI dependencies routes share: the process state, the caller, their address, the base of
the URLs in answers, the caller's job named in the path, a signed link's parameters, and an upload as
the submit service takes it. ``job: OwnedJob`` is a job the caller owns, ``job: ViewableJob`` one the
caller owns or holds a share link of (:mod:`sharpml_api.grants`); otherwise the request has already
been answered (404, or 403/410 for a bad link).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request
from starlette.requests import ClientDisconnect

from sharpml.contract.delivery import VIEW_SCOPE
from sharpml_api import jobs
from sharpml_api.auth import JOB_TOKEN_HEADER, Principal, unauthorized, verify_token
from sharpml_api.client_ip import client_ip
from sharpml_api.grants import OWNER, Grant, check_link, link_params
from sharpml_api.problems import field_problem
from sharpml_api.state import AppState
from sharpml_api.submit import UploadRequest
from sharpml_api.uploads import ClientGone


def app_state(request: Request) -> AppState:
    return request.app.state.sharpml


State = Annotated[AppState, Depends(app_state)]


async def caller(request: Request, st: State) -> Principal:
    """The caller, or 401 for a bad token. No token means anonymous (with the job token, if sent)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthorized("Authorization must be 'Bearer <token>'")
        return Principal(verify_token(token.strip(), st.settings), anonymous=False)
    return Principal(
        st.settings.anonymous_account, anonymous=True, job_token=request.headers.get(JOB_TOKEN_HEADER)
    )


Caller = Annotated[Principal, Depends(caller)]


def client_address(request: Request, st: State) -> str:
    """The address rate limits count against (X-Forwarded-For only from trusted proxies)."""
    peer = request.client.host if request.client else "unknown"
    return client_ip(peer, request.headers.getlist("x-forwarded-for"), st.settings.trusted_proxies)


ClientAddress = Annotated[str, Depends(client_address)]


def base_url(request: Request, st: State) -> str:
    """Base of the URLs in answers: ``SHARPML_PUBLIC_URL``, else the request's own — only when its
    ``Host`` is one of ``SHARPML_ALLOWED_HOSTS``: a client-chosen Host must never become a link we
    hand out (``Location``, the status and events URLs)."""
    if st.settings.public_url:
        return st.settings.public_url
    allowed = st.settings.allowed_hosts
    host = (request.url.hostname or "").lower().strip("[]")
    if "*" not in allowed and host not in allowed:
        raise field_problem(
            400,
            "host-not-allowed",
            "Host not allowed",
            "Host",
            "allowed-hosts",
            f"Host {host[:100]!r} is not one this server answers for; "
            "set SHARPML_PUBLIC_URL or add it to SHARPML_ALLOWED_HOSTS",
        )
    return str(request.base_url).rstrip("/")


BaseUrl = Annotated[str, Depends(base_url)]


async def owned_job(job_id: str, who: Caller, st: State) -> jobs.Job:
    """The SharpJob ``job_id`` of the path if the caller owns it (anonymous: with its job token),
    else 404."""
    return await jobs.owned_job(st, who, job_id)


OwnedJob = Annotated[jobs.Job, Depends(owned_job)]


def signed_link(
    exp: Annotated[str | None, Query(description="Signed link: expiry (Unix seconds).")] = None,
    kid: Annotated[str | None, Query(description="Signed link: id of the key that signed it.")] = None,
    sig: Annotated[str | None, Query(description="Signed link: signature.")] = None,
) -> dict[str, str] | None:
    """The parameters of a signed link in the query (documented on the routes that accept one), or None."""
    return link_params({k: v for k, v in (("exp", exp), ("kid", kid), ("sig", sig)) if v is not None})


SignedLink = Annotated[dict[str, str] | None, Depends(signed_link)]


@dataclass(frozen=True)
class Viewable:
    """A job the request may read, and on what grant (its owner's, or a share link's until its expiry)."""

    job: jobs.Job
    grant: Grant


async def viewable_job(job_id: str, request: Request, st: State, link: SignedLink) -> Viewable:
    """The path's job read by its owner or through a ``view`` link of that job (read-only). A request
    carrying a link is judged by it alone: 403/410 when it is not good, whatever else it carries."""
    if link is not None:
        grant = check_link(st.settings.links, jobs.job_name(job_id), VIEW_SCOPE, link)
        return Viewable(await jobs.any_job(st, job_id), grant)
    return Viewable(await jobs.owned_job(st, await caller(request, st), job_id), OWNER)


ViewableJob = Annotated[Viewable, Depends(viewable_job)]


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ClientGone from None


def upload_request(request: Request, who: Caller, ip: ClientAddress, base: BaseUrl) -> UploadRequest:
    """An upload for :func:`sharpml_api.submit.submit`: the body is handed over unread, as a stream."""
    return UploadRequest(
        caller=who,
        client_ip=ip,
        content_type=request.headers.get("content-type"),
        content_length=request.headers.get("content-length"),
        chunks=_chunks(request),
        base_url=base,
    )


Upload = Annotated[UploadRequest, Depends(upload_request)]
