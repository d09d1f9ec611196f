"""Job directories whose SharpJob is gone: swept at start-up and every SHARPML_ORPHAN_CHECK_SECONDS.

A SharpJob deleted while no operator ran (before its finalizer was added) or a job directory whose
SharpJob was never created (the API killed between intake and the create call) leaves ``jobs/{id}/``
on the data volume for good. A directory is removed only when all of these hold:

- its name is a job id (a UUID): staging directories and anything else are not the operator's;
- nothing in it has changed for ``SHARPML_ORPHAN_GRACE_SECONDS`` (the API publishes a job directory
  a moment before it creates the SharpJob; 0 switches the sweep off);
- no SharpJob in the operator's namespaces is named after it or names it in ``spec.source.upload.jobDir``,
  read from the apiserver *after* the candidates were chosen, so a SharpJob created meanwhile is seen.
  If the SharpJobs cannot be listed, nothing is removed.

A deployment whose data volume is shared by operators of other namespaces must switch it off there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes

from sharpml.contract import GROUP, PLURAL, VERSION
from sharpml.layout import DataDir, JobDir, parse_job_id

log = logging.getLogger("sharpml.operator")


def _newest_change(path: Path) -> float:
    newest = path.lstat().st_mtime
    with contextlib.suppress(OSError), os.scandir(path) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


def _is_job_id(name: str) -> bool:
    try:
        return parse_job_id(name) == name
    except ValueError:
        return False


def list_sharpjobs(namespaces: Iterable[str]) -> list[dict[str, Any]]:
    """Every SharpJob in ``namespaces`` (empty: in all of them), read from the apiserver now."""
    api = kubernetes.client.CustomObjectsApi()
    namespaces = list(namespaces)
    if not namespaces:
        return api.list_cluster_custom_object(GROUP, VERSION, PLURAL)["items"]
    items: list[dict[str, Any]] = []
    for ns in namespaces:
        items += api.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]
    return items


def claimed(jobs: Iterable[dict[str, Any]]) -> set[str]:
    """The job directory names SharpJobs own: their names and their jobDirs' last segments."""
    names: set[str] = set()
    for job in jobs:
        names.add(job["metadata"]["name"])
        rel = ((job.get("spec") or {}).get("source") or {}).get("upload", {}).get("jobDir")
        if isinstance(rel, str) and rel:
            names.add(PurePosixPath(rel).name)
    return names


def sweep(
    data_root: Path,
    grace_seconds: float,
    list_jobs: Callable[[], list[dict[str, Any]]],
    clock: Callable[[], float] = time.time,
) -> list[str]:
    """Remove job directories without a SharpJob; returns their names."""
    if grace_seconds <= 0:
        return []
    data = DataDir(data_root)
    if not data.jobs.is_dir():
        return []
    now = clock()
    candidates = []
    for path in data.jobs.iterdir():
        try:
            if _is_job_id(path.name) and now - _newest_change(path) > grace_seconds:
                candidates.append(path)
        except OSError:
            continue
    if not candidates:
        return []
    owned = claimed(list_jobs())  # after choosing: a SharpJob created since is seen
    removed = []
    for path in candidates:
        if path.name in owned:
            continue
        try:
            data.remove_job(JobDir(path))
        except OSError as exc:
            log.warning("could not remove orphaned job directory %s: %s", path, exc)
            continue
        log.info("removed job directory %s: no SharpJob has owned it for %s s", path, grace_seconds)
        removed.append(path.name)
    return removed
