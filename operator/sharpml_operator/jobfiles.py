"""The job's directory on the shared data volume, as the operator sees it (SHARPML_DATA_DIR)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

from sharpml.layout import DataDir, JobDir, make_dir, open_dir, read_untrusted


class JobDirError(ValueError):
    """spec.source.upload.jobDir does not name a usable job directory."""

    reason = "JobDirMissing"


class JobDirNotOwned(JobDirError):
    """spec.source.upload.jobDir names a directory other than the SharpJob's own, ``jobs/<its name>``."""

    reason = "JobDirNotOwned"


class ImageCountMismatch(JobDirError):
    """spec.source.upload.imageCount is not the number of photos intake stored."""

    reason = "ImageCountMismatch"


#: intake.json is small (a few hundred bytes a photo); anything much larger is not intake's.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


def job_dir(data_root: Path, rel: str, owner: str) -> JobDir:
    """``rel`` (spec.source.upload.jobDir) resolved below the data root; never escapes it, and is the
    directory of the SharpJob named ``owner``: ``jobs/<owner>`` (the API names each SharpJob after
    its job id; the CRD refuses any other jobDir too). So no job ever reads, writes or — through the
    finalizer — deletes another job's files."""
    parts = PurePosixPath(rel).parts
    if not rel or PurePosixPath(rel).is_absolute() or any(p in ("..", ".") for p in parts):
        raise JobDirError(
            f"spec.source.upload.jobDir={rel!r}: must be a relative path inside the data volume"
        )
    # Exactly one job's own directory: the finalizer deletes it, so `jobs`, `splats` or a staging
    # directory must never be accepted (the CRD refuses them too).
    if len(parts) != 2 or parts[0] != "jobs" or parts[1].startswith("."):
        raise JobDirError(f"spec.source.upload.jobDir={rel!r}: must be jobs/<id>, one job's own directory")
    if parts[1] != owner:
        raise JobDirNotOwned(
            f"spec.source.upload.jobDir={rel!r}: a SharpJob owns only jobs/<its own name>, here jobs/{owner}"
        )
    return JobDir(data_root.joinpath(*parts))


def check_ready(job: JobDir) -> None:
    """The job directory holds what the SfM stage reads (images/ and intake.json from intake)."""
    if not job.root.is_dir() or job.root.is_symlink():
        raise JobDirError(f"job directory {job.root} does not exist")
    if not job.intake_manifest.is_file() or not job.images.is_dir():
        raise JobDirError(f"job directory {job.root} has no intake.json/images: intake did not complete")


def check_image_count(job: JobDir, claimed: int | None) -> None:
    """``spec.source.upload.imageCount`` must be what intake stored: its intake.json and images/."""
    try:
        manifest = json.loads(read_untrusted(job.intake_manifest, MAX_MANIFEST_BYTES))
        recorded = len(manifest["images"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JobDirError(f"job directory {job.root}: intake.json is unreadable ({exc})") from None
    stored = sum(1 for p in job.images.iterdir() if p.is_file() and not p.is_symlink())
    if claimed != recorded or stored != recorded:
        raise ImageCountMismatch(
            f"spec.source.upload.imageCount is {claimed}, but intake.json records {recorded} photos "
            f"and images/ holds {stored}"
        )


def prepare_output(job: JobDir) -> None:
    """Create colmap/ (the pod's only writable mount), refusing a symlink planted in its place."""
    with open_dir(job.root) as fd:
        make_dir(fd, "colmap", exist_ok=True, mode=0o770)


def remove(data_root: Path, job: JobDir) -> bool:
    """Delete the job's files; True when something was removed."""
    existed = job.root.exists() or job.root.is_symlink()
    DataDir(data_root).remove_job(job)
    return existed
