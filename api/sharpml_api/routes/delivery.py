"""``/v1/jobs/{id}/artifacts/{file}`` (signed downloads) and ``/v1/jobs/{id}/view`` (the viewer page)."""

from __future__ import annotations

import enum
from typing import Annotated

from fastapi import APIRouter, Header, Path, Request
from starlette.responses import Response

from sharpml.contract.delivery import ARTIFACTS, VIEW_SCOPE, artifact_by_filename
from sharpml_api import downloads, jobs, viewer
from sharpml_api.deps import SignedLink, State, caller
from sharpml_api.grants import check_link
from sharpml_api.problems import responses

router = APIRouter(prefix="/v1")

#: The artifacts' file names (``scene.splat``, ...), as the path parameter's enumeration.
ArtifactFile = enum.StrEnum("ArtifactFile", {a.format: a.filename for a in ARTIFACTS.values()})

_FILE_CONTENT = {a.media_type: {"schema": {"type": "string", "format": "binary"}} for a in ARTIFACTS.values()}
_DOWNLOAD_HEADERS = {
    name: {"description": doc, "schema": {"type": "string"}}
    for name, doc in (
        ("ETag", "Strong entity tag: the file's SHA-256."),
        ("Content-Disposition", 'attachment; filename="sharpml-<id>.<format>"'),
        ("X-Content-Type-Options", "nosniff"),
    )
}


@router.get(
    "/jobs/{job_id}/artifacts/{file}",
    summary="Download a delivered artifact (signed link, or its owner)",
    response_class=Response,
    responses={
        200: {"content": _FILE_CONTENT, "description": "The file", "headers": _DOWNLOAD_HEADERS},
        206: {"content": _FILE_CONTENT, "description": "One byte range of the file (Range)"},
        302: {
            "description": "The local copy is gone; the artifact's S3 backup, through a short-lived "
            "presigned URL (Location)",
            "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
        },
        304: {"description": "Not modified (If-None-Match)"},
        **responses(400, 401, 403, 404, 410, 416, 503),
    },
)
@router.head("/jobs/{job_id}/artifacts/{file}", include_in_schema=False)
async def get_artifact(
    st: State,
    request: Request,
    job_id: str,
    file: Annotated[ArtifactFile, Path(description="The artifact's file name.")],
    link: SignedLink,
    # Read from the request as sent; declared so that the document (and the fuzzer) knows them.
    range_: Annotated[str | None, Header(alias="Range", description="One byte range: bytes=0-1023")] = None,
    if_none_match: Annotated[str | None, Header(alias="If-None-Match", description="ETags held")] = None,
    if_range: Annotated[str | None, Header(alias="If-Range", description="The ETag a range is of")] = None,
) -> Response:
    """With a signed link (`links.artifacts.<format>.url`) no other credential is needed, and it works
    until it expires even if the job was deleted meanwhile; without one, the job's owner may download.
    Supports `Range` (one range), `If-None-Match` and `If-Range`."""
    artifact = artifact_by_filename(file.value)
    assert artifact is not None
    who = None if link is not None else await caller(request, st)
    return await downloads.download(st, request.method, request.headers, job_id, artifact, link, who)


@router.get(
    "/jobs/{job_id}/view",
    summary="The viewer page of a job (share link, or its owner)",
    response_class=Response,
    responses={
        200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "The viewer page"},
        **responses(400, 401, 403, 404, 410, 503),
    },
)
async def view_job(st: State, request: Request, job_id: str, link: SignedLink) -> Response:
    """Live progress while the job runs, then the splat in the browser. Reached through the job's share
    link (`links.view`), which needs no account; the page reads the status and the splat with the same
    link. Served with a strict Content-Security-Policy."""
    if link is not None:
        check_link(st.settings.links, jobs.job_name(job_id), VIEW_SCOPE, link)
    else:
        await jobs.owned_job(st, await caller(request, st), job_id)
    return viewer.page(st.settings.s3)
