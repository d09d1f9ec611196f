"""What passes between the operator and the pods it starts: exit codes and the files they write.

The pods run sandboxed and untrusted, so every record is read bounded, never through a symlink, and
type-checked before anything uses it (:func:`sharpml.layout.read_untrusted`).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sharpml.layout import read_untrusted

# Exit codes of the ``sharpml`` CLI and of the stage entry points (``python -m sharpml.sfm``).
EXIT_OK = 0
EXIT_ERROR = 1  # unexpected error
EXIT_USAGE = 2
EXIT_REJECTED = 3  # photos rejected by intake
EXIT_QUALITY_GATE = 4  # reconstruction rejected by the quality gate
EXIT_COLMAP_FAILED = 5
EXIT_TRAINING_FAILED = 6  # the scene cannot be trained on, or training diverged (``python -m sharpml.train``)

RESULT_VERSION = 2  # 2: features, attempts, attempt, failure
TRAIN_RESULT_VERSION = 2  # 2: features, attempts, attempt, failure
#: Upper bounds for reading what a pod wrote.
MAX_RESULT_BYTES = 1024 * 1024
MAX_PROGRESS_BYTES = 64 * 1024
#: One gaussian in a ``.splat`` file (position, scale, colour, rotation: 3*4 + 3*4 + 4 + 4 bytes).
SPLAT_RECORD_BYTES = 32


_R = TypeVar("_R")


class RecordError(ValueError):
    """A record a pod wrote is missing its shape: wrong type, unknown keys, impossible values."""


class SplatFormatError(RecordError):
    """A ``.splat`` file that is not a whole number of records (or not a regular file)."""


def _write_atomically(path: Path, record: dict[str, Any]) -> None:
    """Write a record as JSON so that a reader never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def _construct(cls: type[_R], data: Any, where: str) -> _R:
    """A record dataclass from untrusted JSON: an object with exactly its fields, else RecordError.
    (Field types are each record's own check.)"""
    if not isinstance(data, dict):
        raise RecordError(f"{where}: not a JSON object")
    try:
        return cls(**data)
    except TypeError as exc:  # unknown or missing keys
        raise RecordError(f"{where}: {exc}") from None


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class SfmResult:
    """``colmap/result.json``: the SfM stage's summary. ``ok`` is the quality gate's verdict."""

    ok: bool
    reason: str | None
    total: int
    registered: int = 0
    points: int = 0
    mean_reprojection_error: float | None = None
    mean_track_length: float | None = None
    cameras: int = 0
    models: int = 0
    matcher: str = ""
    mapper: str = ""
    unregistered: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    scene: str | None = None
    preview_splat: str | None = None
    version: int = RESULT_VERSION
    colmap_version: str = ""
    #: The first attempt's SIFT settings and why (``sharpml.sfm_features.FeaturePlan``).
    features: dict[str, Any] = field(default_factory=dict)
    #: Every attempt of the fallback ladder in order: name, options, counts, error, seconds, outcome.
    attempts: list[dict[str, Any]] = field(default_factory=list)
    #: The attempt whose model this is.
    attempt: str = ""
    #: Whose fix a rejection is: "photos" (they do not overlap / lack texture) or "reconstruction"
    #: (the photos match; SharpML failed). None when ok.
    failure: str | None = None

    @property
    def registered_fraction(self) -> float:
        return self.registered / self.total if self.total else 0.0

    def write(self, path: Path) -> None:
        _write_atomically(path, asdict(self))

    @classmethod
    def read(cls, path: Path) -> SfmResult:
        """Read ``result.json`` as untrusted: bounded, no symlink, every field type-checked."""
        result = _construct(cls, json.loads(read_untrusted(Path(path), MAX_RESULT_BYTES)), str(path))
        error = result.mean_reprojection_error
        if (
            not isinstance(result.ok, bool)
            or not all(_count(n) for n in (result.total, result.registered, result.points))
            or not (result.reason is None or isinstance(result.reason, str))
            or not (error is None or (isinstance(error, int | float) and not isinstance(error, bool)))
            or not isinstance(result.features, dict)
            or not (isinstance(result.attempts, list) and all(isinstance(a, dict) for a in result.attempts))
            or not isinstance(result.attempt, str)
            or result.failure not in (None, "photos", "reconstruction")
        ):
            raise RecordError(f"{path}: fields of the wrong type")
        return result


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class TrainResult:
    """The trainer's metrics record (``result.json`` in its output directory, and what the RunPod
    worker returns). ``psnr``/``ssim`` are means over the held-out photos (every 8th, never trained
    on); ``preview_psnr``/``preview_ssim`` score the untrained preview splat on the same views, rendered
    the same way, so the two say what training added."""

    ok: bool
    reason: str | None
    steps: int = 0
    gaussians: int = 0
    seconds: float = 0.0
    device: str = ""
    psnr: float | None = None
    ssim: float | None = None
    preview_psnr: float | None = None
    preview_ssim: float | None = None
    train_views: int = 0
    test_views: int = 0
    width: int = 0
    height: int = 0
    steps_per_second: float = 0.0
    ply: str | None = None
    splat: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    version: int = TRAIN_RESULT_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: Path) -> None:
        _write_atomically(path, asdict(self))

    @classmethod
    def from_json(cls, data: Any, where: str = "training result") -> TrainResult:
        """Type-checked: a record from a pod or a remote worker is untrusted."""
        result = _construct(cls, data, where)
        optional = (result.psnr, result.ssim, result.preview_psnr, result.preview_ssim)
        if (
            not isinstance(result.ok, bool)
            or not (result.reason is None or isinstance(result.reason, str))
            or not all(
                _count(n) for n in (result.steps, result.gaussians, result.train_views, result.test_views)
            )
            or not all(_count(n) for n in (result.width, result.height))
            or not all(_number(x) and x >= 0 for x in (result.seconds, result.steps_per_second))
            or not all(x is None or _number(x) for x in optional)
            or not isinstance(result.device, str)
            or not all(x is None or isinstance(x, str) for x in (result.ply, result.splat))
            or not all(isinstance(x, dict) for x in (result.timings, result.options, result.versions))
        ):
            raise RecordError(f"{where}: fields of the wrong type")
        return result

    @classmethod
    def read(cls, path: Path) -> TrainResult:
        """Read ``result.json`` as untrusted: bounded, no symlink, every field type-checked."""
        return cls.from_json(json.loads(read_untrusted(Path(path), MAX_RESULT_BYTES)), str(path))


def read_progress(path: Path) -> dict[str, Any] | None:
    """The last ``progress.json`` record (``stage``, ``fraction`` in [0, 1], ``message``), or ``None``
    when there is none yet or it is not one. Written by :class:`sharpml.progress.ProgressFile`."""
    try:
        record = json.loads(read_untrusted(Path(path), MAX_PROGRESS_BYTES))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    stage, fraction, message = record.get("stage"), record.get("fraction"), record.get("message", "")
    if not isinstance(stage, str) or not isinstance(message, str):
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
        return None
    return record


def count_gaussians(path: Path) -> int:
    """Number of gaussians in a ``.splat`` file, from its size alone (no read of a possibly huge
    file), refusing symlinks and anything that is not a regular file of whole records."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    name = Path(path).name
    if not stat.S_ISREG(st.st_mode):
        raise SplatFormatError(f"{name}: not a regular file")
    check_splat_size(name, st.st_size)
    return st.st_size // SPLAT_RECORD_BYTES


def check_splat_size(name: str, size: int) -> None:
    if size == 0 or size % SPLAT_RECORD_BYTES:
        raise SplatFormatError(
            f"{name}: {size} bytes is not a whole number of {SPLAT_RECORD_BYTES}-byte gaussians"
        )
