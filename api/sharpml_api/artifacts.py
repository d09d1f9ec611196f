"""A job's delivered files (``splats/<id>.<format>``, :mod:`sharpml.contract.delivery`): opening them,
their ETags, the byte range a request asks for, and the URL of their S3 backup (no web framework here:
:mod:`sharpml_api.downloads` turns these into answers).

The data volume is never served as a directory: one file is opened by its server-chosen name, relative to
directory descriptors and without following a symlink anywhere (as :mod:`sharpml.layout` creates files),
and sent from that descriptor, so what was checked is what is sent. The answer carries a strong
``ETag`` (the file's SHA-256, computed once per file version and cached), honours ``If-None-Match`` (304)
and one byte range (``Range``/``If-Range``: 206, or 416 when unsatisfiable; a list of ranges or a malformed
header is answered with the whole file, as RFC 9110 allows). When the local copy is gone but the artifact
was backed up to S3, the answer is a redirect to a presigned S3 URL that never outlives the grant.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from sharpml.contract.delivery import SPLATS_DIR, Artifact
from sharpml.layout import open_dir
from sharpml.storage import Storage, StorageError
from sharpml_api.problems import ApiProblem, storage_unavailable

#: Lifetime of the presigned S3 URL a download redirects to (shorter still when the link expires sooner).
REDIRECT_SECONDS = 300
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def download_name(job_id: str, artifact: Artifact) -> str:
    """The file name a download is saved under: ``sharpml-<id>.<ext>``."""
    return f"sharpml-{job_id}.{artifact.format}"


class Fd:
    """A file descriptor closed exactly once, by whichever of the stream or the response ends first."""

    def __init__(self, fd: int) -> None:
        self.fd: int | None = fd
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def open_artifact(data_dir: Path, job_id: str, artifact: Artifact) -> tuple[Fd, os.stat_result] | None:
    """The local copy of ``artifact`` opened for reading, or None when there is none. A symlink or a
    non-regular file in its place is refused (OSError), never followed or read."""
    name = Path(artifact.local_name(job_id)).name
    try:
        with open_dir(data_dir) as root, open_dir(Path(SPLATS_DIR), dir_fd=root) as splats:
            fd = os.open(name, _FILE_FLAGS, dir_fd=splats)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{artifact.local_name(job_id)} is a symlink; refusing it") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{artifact.local_name(job_id)} is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return Fd(fd), st


class DigestCache:
    """SHA-256 of files by their identity (device, inode, size, change times): a file is hashed once per
    version, and a replaced or rewritten file gets a new digest. Bounded; thread-safe."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._items: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    def digest(self, fd: int, st: os.stat_result) -> str:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        h = hashlib.sha256()
        offset = 0
        while chunk := os.pread(fd, 1024 * 1024, offset):
            h.update(chunk)
            offset += len(chunk)
        value = h.hexdigest()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


def etag_matches(header: str, etag: str) -> bool:
    """``If-None-Match`` (weak comparison, RFC 9110 13.1.2): ``*`` or any listed tag equals ``etag``."""
    tags = [t.strip() for t in header.split(",")]
    return "*" in tags or any(t.removeprefix("W/") == etag for t in tags)


def byte_range(headers: Mapping[str, str], size: int, etag: str) -> tuple[int, int] | None:
    """The one byte range ``[start, end)`` to send, or None for the whole file. Raises 416 when a single
    range starts past the end. Several ranges, other units, malformed headers and an ``If-Range`` that does
    not name this version are answered with the whole file."""
    raw = headers.get("range")
    if raw is None:
        return None
    if_range = headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:  # a date, a weak or another tag: whole file
        return None
    m = _RANGE.fullmatch(raw.strip().replace(" ", ""))
    if m is None or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if not first:  # suffix: the last N bytes
        n = int(last)
        if n == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(0, size - n), size
    start = int(first)
    end = size if not last else int(last) + 1
    if last and end <= start:
        return None  # "5-3" is invalid syntax: ignored (RFC 9110 14.1.1)
    if start >= size:
        raise _unsatisfiable(size)
    return start, min(end, size)


def _unsatisfiable(size: int) -> ApiProblem:
    return ApiProblem(
        416,
        "range-not-satisfiable",
        "Range not satisfiable",
        f"the requested range starts beyond the artifact's {size} bytes",
        headers={"Content-Range": f"bytes */{size}"},
    )


def backup_url(
    storage: Storage, job_id: str, artifact: Artifact, not_after: int | None, check: bool
) -> str | None:
    """A presigned GET of the artifact's S3 backup, or None when there is none (``check``: ask S3 first,
    for callers that cannot tell from the job's status). The URL never outlives ``not_after``."""
    name = artifact.s3_name(job_id)
    seconds = REDIRECT_SECONDS
    if not_after is not None:
        seconds = max(1, min(seconds, not_after - int(time.time())))
    try:
        if check and not storage.exists(name):
            return None
        return storage.presign_get(name, seconds)
    except StorageError as exc:
        if exc.reason == "not-found":
            return None
        raise storage_unavailable("the artifact's backup cannot be reached; try again later") from exc
