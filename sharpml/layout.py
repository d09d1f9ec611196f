"""The data directory (``SHARPML_DATA_DIR``) and symlink-proof file creation inside it.

Layout (the seed's, shared by the API, the operator and the sandboxed SfM pods)::

    jobs/{uuid}/images/        normalised, metadata-free photos (0001.jpg, 0002.png, ...)
    jobs/{uuid}/intake.json    what intake kept: per-photo size and focal-length prior
    jobs/{uuid}/colmap/        everything the SfM stage writes (result.json, scene/, preview.splat)
    jobs/{uuid}/training/      what a cluster training pod writes (untrusted; checked, then moved to output/)
    jobs/{uuid}/output/        deliverables of later stages
    jobs/.incoming-{uuid}/     a set being written; renamed to jobs/{uuid} only when complete
    splats/{uuid}.splat        the delivered splat
    logs/

Every path below the root is created or opened relative to a directory file descriptor with
``O_NOFOLLOW``, so a symlink planted anywhere in the tree is refused rather than followed.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sharpml.config import default_data_dir

#: What a training run leaves in a job's ``output/``: the 3DGS PLY, the ``.splat``, the ``.spz``, the
#: metrics record.
TRAINED_PLY = "point_cloud.ply"
TRAINED_SPLAT = "scene.splat"
TRAINED_SPZ = "scene.spz"
#: The SfM stage's preview, in ``colmap/``: ``.splat``, and ``.spz`` for delivery (the operator cannot
#: encode it: its image has no numpy).
PREVIEW_SPLAT = "preview.splat"
PREVIEW_SPZ = "preview.spz"
TRAIN_RESULT = "result.json"

STAGING_PREFIX = ".incoming-"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(OSError):
    """A path inside the data directory is a symlink or otherwise not what we created."""


def parse_job_id(job_id: str) -> str:
    """Return the canonical form of a job id, or raise ``ValueError``: ids become directory names."""
    return str(uuid.UUID(str(job_id)))


@dataclass(frozen=True)
class JobDir:
    """Paths of one job. ``root`` is ``jobs/{uuid}`` (or its staging twin while being written)."""

    root: Path

    @property
    def id(self) -> str:
        return self.root.name.removeprefix(STAGING_PREFIX)

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def intake_manifest(self) -> Path:
        return self.root / "intake.json"

    @property
    def colmap(self) -> Path:
        return self.root / "colmap"

    @property
    def sfm_result(self) -> Path:
        """Machine-readable SfM summary the operator reads (see :mod:`sharpml.sfm`)."""
        return self.colmap / "result.json"

    @property
    def sfm_progress(self) -> Path:
        return self.colmap / "progress.json"

    @property
    def scene(self) -> Path:
        """Undistorted scene in the layout 3DGS trainers read: ``images/``, ``sparse/0/*.bin``."""
        return self.colmap / "scene"

    @property
    def preview_splat(self) -> Path:
        return self.colmap / PREVIEW_SPLAT

    @property
    def preview_spz(self) -> Path:
        return self.colmap / PREVIEW_SPZ

    @property
    def training(self) -> Path:
        """A cluster training pod's only writable mount; its results move into ``output/`` once checked."""
        return self.root / "training"

    @property
    def output(self) -> Path:
        return self.root / "output"

    @property
    def trained_splat(self) -> Path:
        """The trainer's outputs (``sharpml.train``; fetched there by the Training stage)."""
        return self.output / TRAINED_SPLAT

    @property
    def trained_ply(self) -> Path:
        return self.output / TRAINED_PLY

    @property
    def trained_spz(self) -> Path:
        return self.output / TRAINED_SPZ

    @property
    def train_result(self) -> Path:
        return self.output / TRAIN_RESULT


@dataclass(frozen=True)
class DataDir:
    """The root of SharpML's on-disk state."""

    root: Path

    @classmethod
    def from_env(cls) -> DataDir:
        return cls(default_data_dir())

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def splats(self) -> Path:
        return self.root / "splats"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def ensure(self) -> DataDir:
        """Create the top-level folders; refuse if any of them is a symlink."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open_dir(self.root) as fd:
            for name in ("jobs", "splats", "logs"):
                make_dir(fd, name, exist_ok=True)
        return self

    def job(self, job_id: str) -> JobDir:
        return JobDir(self.jobs / parse_job_id(job_id))

    def splat(self, job_id: str) -> Path:
        return self.splats / f"{parse_job_id(job_id)}.splat"

    def staging(self, job_id: str) -> JobDir:
        return JobDir(self.jobs / f"{STAGING_PREFIX}{parse_job_id(job_id)}")

    def publish(self, staging: JobDir) -> JobDir:
        """Atomically move a completely written staging job into place."""
        final = self.job(staging.id)
        with open_dir(self.jobs) as fd:
            try:
                os.rename(staging.root.name, final.root.name, src_dir_fd=fd, dst_dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR):
                    raise UnsafePathError(exc.errno, f"job directory {final.root} already exists") from exc
                raise
        return final

    def remove_job(self, job: JobDir) -> None:
        """Delete a job's files without following symlinks inside it."""
        if job.root.is_symlink():
            job.root.unlink()
        elif job.root.exists():
            shutil.rmtree(job.root)  # rmtree refuses symlinked roots and never follows links inside


@contextmanager
def open_dir(path: Path, dir_fd: int | None = None) -> Iterator[int]:
    """Open a directory without following a symlink at its last component."""
    try:
        fd = os.open(path, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(exc.errno, f"{path} is a symlink or not a directory; refusing it") from exc
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def make_dir(parent_fd: int, name: str, *, exist_ok: bool = False, mode: int = 0o750) -> None:
    """``mkdir`` relative to ``parent_fd``; an existing symlink of that name is an error."""
    _check_name(name)
    try:
        os.mkdir(name, mode, dir_fd=parent_fd)
    except FileExistsError:
        if not exist_ok:
            raise
        # Existing entry: must be a real directory, not a link to one.
        with open_dir(Path(name), dir_fd=parent_fd):
            pass


def create_file(dir_fd: int, name: str, mode: int = 0o640) -> int:
    """Create a new file; fails if anything (a symlink included) already has that name."""
    _check_name(name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, mode, dir_fd=dir_fd)
    except FileExistsError as exc:
        raise UnsafePathError(exc.errno, f"{name} already exists; refusing to overwrite it") from exc


def read_untrusted(path: Path, max_bytes: int) -> bytes:
    """Read a file that a sandboxed process could have written (the SfM pod's ``colmap/``).

    Never through a symlink, only a regular file (a FIFO would hang the reader), and at most
    ``max_bytes`` (``/dev/zero`` or a huge file must not exhaust the operator's memory).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError(exc.errno, f"{path} is a symlink; refusing to follow it") from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError(errno.EINVAL, f"{path} is not a regular file")
        data = os.read(fd, max_bytes + 1) if st.st_size else b""
        while len(data) <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - len(data))):
            data += chunk
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UnsafePathError(errno.EFBIG, f"{path} is larger than {max_bytes} bytes")
    return data


def _check_name(name: str) -> None:
    """Only single, server-chosen path components are ever created."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafePathError(errno.EINVAL, f"{name!r} is not a plain file name")
