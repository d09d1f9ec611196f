"""What passes between the operator and the pods it starts: exit codes and the files they write.

The pods run sandboxed and untrusted, so every record is read bounded, never through a symlink, and
type-checked before anything uses it (:func:`sharpml.layout.read_untrusted`).
"""

from __future__ import annotations

import json
import os
import stat
import struct
import zlib
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
#: Niantic SPZ (version 2, :mod:`sharpml.spz` writes it): a gzip stream of a 16-byte header (magic "NGSP",
#: version, point count, SH degree, fractional bits, flags, a zero byte), then per gaussian 9 bytes of
#: position, 1 alpha, 3 colour, 3 scale, 3 rotation and 3 per higher SH coefficient.
SPZ_MAGIC = 0x5053474E
SPZ_VERSION = 2
SPZ_HEADER = struct.Struct("<IIIBBBB")
#: Number of SH coefficients per colour channel beyond DC, by degree.
SPZ_SH_DIM = {0: 0, 1: 3, 2: 8, 3: 15}
SPZ_POINT_BYTES = 9 + 1 + 3 + 3 + 3


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
    #: What the final adjustment did with the principal points (``sharpml.sfm_intrinsics``):
    #: refined or not and why, each camera's offset from the centre.
    intrinsics: dict[str, Any] = field(default_factory=dict)

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
            or not isinstance(result.intrinsics, dict)
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


def spz_max_bytes(count: int) -> int:
    """The largest SPZ file of ``count`` gaussians may be: uncompressed at SH degree 3, plus deflate's
    worst case for incompressible data (5 bytes per stored block of up to 64 KiB) and gzip's framing."""
    raw = SPZ_HEADER.size + count * (SPZ_POINT_BYTES + 3 * SPZ_SH_DIM[3])
    return raw + raw // 1000 + 1024


class SpzCheck:
    """The gaussian count of an SPZ file fed in chunks, once its whole stream is checked: one gzip
    member, a version-2 header and exactly the bytes its count and SH degree need. Decompresses a
    bounded amount at a time and keeps nothing; a header counting more than ``max_count`` gaussians is
    refused at once, so a gzip bomb inflates at most what ``max_count`` honest gaussians would. Needs
    no numpy (the operator checks what untrusted pods wrote with it)."""

    _STEP = 1 << 20

    def __init__(self, name: str, max_count: int | None = None) -> None:
        self.name = name
        self.max_count = max_count
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._head = b""
        self._expected: int | None = None
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        try:
            while chunk:
                if self._z.eof:
                    raise SplatFormatError(f"{self.name}: data after the end of the SPZ stream")
                out = self._z.decompress(chunk, self._STEP)
                chunk = self._z.unconsumed_tail
                self._take(out)
                if self._z.eof and self._z.unused_data:
                    raise SplatFormatError(f"{self.name}: data after the end of the SPZ stream")
        except zlib.error as exc:
            raise SplatFormatError(f"{self.name}: not a valid gzip stream ({exc})") from None

    def _take(self, out: bytes) -> None:
        self._size += len(out)
        if self._expected is None:
            self._head += out[: SPZ_HEADER.size - len(self._head)]
            if len(self._head) == SPZ_HEADER.size:
                self._expected = self._parse_header(self._head)
        if self._expected is not None and self._size > self._expected:
            raise SplatFormatError(f"{self.name}: longer than the {self._expected} bytes its header needs")

    def _parse_header(self, head: bytes) -> int:
        magic, version, count, degree, _bits, _flags, reserved = SPZ_HEADER.unpack(head)
        if magic != SPZ_MAGIC:
            raise SplatFormatError(f"{self.name}: not an SPZ file (magic {magic:#010x})")
        if version != SPZ_VERSION:
            raise SplatFormatError(f"{self.name}: SPZ version {version}; version {SPZ_VERSION} is expected")
        if degree not in SPZ_SH_DIM or reserved:
            raise SplatFormatError(f"{self.name}: SPZ header with SH degree {degree}, reserved {reserved}")
        if count == 0:
            raise SplatFormatError(f"{self.name}: no gaussians")
        if self.max_count is not None and count > self.max_count:
            raise SplatFormatError(f"{self.name}: {count} gaussians, more than the {self.max_count} expected")
        return SPZ_HEADER.size + count * (SPZ_POINT_BYTES + 3 * SPZ_SH_DIM[degree])

    def count(self) -> int:
        """The number of gaussians; a :class:`SplatFormatError` unless the stream was whole."""
        if self._z.eof and not self._z.unused_data and self._size == self._expected:
            return SPZ_HEADER.unpack(self._head)[2]
        raise SplatFormatError(
            f"{self.name}: an SPZ stream of {self._size} bytes"
            + (f", not the {self._expected} its header needs" if self._expected is not None else "")
            + ("" if self._z.eof else ", cut short")
        )


def count_spz(path: Path, limit: int, max_count: int | None = None) -> int:
    """Number of gaussians (at most ``max_count``) in an SPZ file of at most ``limit`` bytes, refusing
    symlinks and anything that is not a regular file holding one whole, consistent SPZ stream."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    name = Path(path).name
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise SplatFormatError(f"{name}: not a regular file of at most {limit} bytes")
        check = SpzCheck(name, max_count)
        while chunk := fh.read(1 << 20):
            check.feed(chunk)
    return check.count()
