"""A caller's jobs: found only by their owner, listed newest first, deleted with their files.

No web framework here (the routes and :mod:`sharpml_api.deps` call these); apiserver failures are
answered 503, and another owner's job is answered exactly like a missing one (404), so job ids
reveal nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from kubernetes.client.exceptions import ApiException

from sharpml.contract import TOKEN_ANNOTATION
from sharpml.layout import parse_job_id
from sharpml_api.auth import Principal, may_access
from sharpml_api.outages import CLUSTER_ERRORS
from sharpml_api.problems import cluster_unavailable, not_found
from sharpml_api.state import AppState

log = logging.getLogger(__name__)
#: Deletes tried when the job changes between the owner check and the delete (409).
DELETE_ATTEMPTS = 3

Job = dict[str, Any]


async def cluster_call(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` of the (synchronous) Kubernetes client off the event loop; 503 if it fails in any
    way (an error status, or no answer at all: :data:`~sharpml_api.outages.CLUSTER_ERRORS`)."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except CLUSTER_ERRORS as exc:
        log.warning("apiserver call %s failed: %r", fn.__name__, exc)
        raise cluster_unavailable("the job store is unavailable; try again later") from None


def job_name(job_id: str) -> str:
    """The canonical id (the SharpJob's name) of a path's job id; 404 when it is not one."""
    try:
        return parse_job_id(job_id)
    except ValueError:
        raise not_found(job_id) from None


async def any_job(st: AppState, job_id: str) -> Job:
    """The SharpJob ``job_id`` whoever owns it (a signed link proved the grant), or 404."""
    obj = await cluster_call(st.cluster.get_job, job_name(job_id))
    if obj is None:
        raise not_found(job_id)
    return obj


async def owned_job(st: AppState, who: Principal, job_id: str) -> Job:
    """The caller's job, or 404 (also for other owners' jobs: their existence is not revealed)."""
    obj = await any_job(st, job_id)
    digest = (obj.get("metadata", {}).get("annotations") or {}).get(TOKEN_ANNOTATION)
    if not may_access(who, obj.get("spec", {}).get("owner", ""), digest):
        raise not_found(job_id)
    return obj


def _sort_key(obj: Job) -> str:
    """Position in the newest-first listing: creation time, then name (RFC 3339 sorts as text)."""
    return f"{obj['metadata'].get('creationTimestamp') or ''}/{obj['metadata']['name']}"


async def list_owned(
    st: AppState, who: Principal, limit: int, cursor: str | None
) -> tuple[list[Job], str | None]:
    """One page of the caller's jobs, newest first, and the cursor of the next page (None: the last)."""
    objs = sorted(await cluster_call(st.cluster.list_jobs, who.account), key=_sort_key, reverse=True)
    if cursor is not None:
        # Any string is a valid position, so a stale or hand-made cursor pages on instead of failing.
        objs = [o for o in objs if _sort_key(o) < cursor]
    page = objs[:limit]
    return page, _sort_key(page[-1]) if len(objs) > limit else None


async def delete_owned(st: AppState, who: Principal, obj: Job) -> Job | None:
    """Delete the caller's job ``obj`` (the version they were checked against). None: it is gone and
    its files removed; else what remains while an operator finaliser stops it (its files are the
    operator's to remove)."""
    name = obj["metadata"]["name"]
    for attempt in range(DELETE_ATTEMPTS):
        if attempt:  # 409: changed since the owner was checked; check again
            obj = await owned_job(st, who, name)
        try:
            await anyio.to_thread.run_sync(st.cluster.delete_job, name, obj["metadata"]["resourceVersion"])
            break
        except ApiException as exc:
            if exc.status != 409:
                raise cluster_unavailable("could not delete the job") from None
        except CLUSTER_ERRORS:
            raise cluster_unavailable("could not delete the job") from None
    else:
        raise cluster_unavailable("the job kept changing; try again")
    remaining = await cluster_call(st.cluster.get_job, name)
    if remaining is None:
        await anyio.to_thread.run_sync(st.data_dir.remove_job, st.data_dir.job(name))
    return remaining
