"""A download's answer: which grant, where the artifact is (the data volume, else its S3 backup), or why
it cannot be had. No web framework here beyond the response objects; the route is a few lines.

A signed link is the whole grant: its holder gets the local file without the SharpJob being read, so
links keep working after retention deleted the SharpJob, for as long as the artifact itself is kept.
When the local copy is gone, the SharpJob's status (if it still exists) says whether a backup was made;
without it, S3 is asked. The owner (without a link) is checked against the SharpJob, which must be
Complete and not past its expiry.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import anyio
from starlette.responses import Response

from sharpml import contract
from sharpml.contract import Phase
from sharpml.contract.delivery import Artifact
from sharpml_api import jobs
from sharpml_api.artifacts import file_response, open_artifact, redirect_to_backup
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
        redirect = await anyio.to_thread.run_sync(
            lambda: redirect_to_backup(st.storage(), name, artifact, not_after, backed_up is None)
        )
        if redirect is not None:
            return redirect
    if link is not None:  # the link proves it was delivered: it has been removed since
        raise _gone(name, artifact, "is no longer stored (removed by retention)")
    raise _absent(name, artifact, "is no longer stored here nor in the backup")


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
