"""Leftovers of uploads that never finished: swept at start-up and periodically.

An API killed mid-upload leaves its spool ``uploads/{id}/``; one killed during intake also leaves
``jobs/.incoming-{id}/``. Nothing else would ever remove them. A live upload holds an exclusive
``flock`` on its spool directory (:func:`sharpml_api.uploads.spool`) from the first byte until its
intake has published or dropped the job, and a crash releases it; so an entry is removed only when
no process holds that lock **and** nothing in it has changed for longer than the upload timeout.
``jobs/{id}/`` themselves are the operator's (a job directory without a SharpJob is its sweep's).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sharpml.layout import STAGING_PREFIX, DataDir
from sharpml_api.uploads import UPLOADS

log = logging.getLogger(__name__)


def _newest_change(path: Path) -> float:
    """The latest mtime of ``path`` and its direct entries (parts and photos are written there)."""
    newest = path.lstat().st_mtime
    with contextlib.suppress(OSError), os.scandir(path) as it:
        for entry in it:
            with contextlib.suppress(OSError):
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    return newest


@contextlib.contextmanager
def _unlocked(spool: Path) -> Iterator[bool]:
    """True (holding the lock meanwhile) when no live upload holds ``spool``'s lock or it is gone."""
    try:
        fd = os.open(spool, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        yield exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def sweep_leftovers(data_dir: DataDir, max_age: float, clock: Callable[[], float] = time.time) -> list[str]:
    """Remove abandoned spools and staging directories; returns what was removed (relative paths)."""
    now = clock()
    removed: list[str] = []
    candidates: list[tuple[Path, Path]] = []  # (entry, the spool whose lock guards it)
    uploads = data_dir.root / UPLOADS
    if uploads.is_dir():
        candidates += [(p, p) for p in uploads.iterdir()]
    if data_dir.jobs.is_dir():
        candidates += [
            (p, uploads / p.name[len(STAGING_PREFIX) :])
            for p in data_dir.jobs.iterdir()
            if p.name.startswith(STAGING_PREFIX)
        ]
    for entry, spool in candidates:
        try:
            if now - _newest_change(entry) <= max_age:
                continue
            with _unlocked(spool) as free:
                if not free:
                    continue
                _remove(entry)
        except FileNotFoundError:
            continue  # finished (and removed) meanwhile
        except OSError as exc:
            log.warning("could not sweep %s: %s", entry, exc)
            continue
        rel = entry.relative_to(data_dir.root).as_posix()
        removed.append(rel)
        log.info("swept abandoned upload leftover %s", rel)
    return removed
