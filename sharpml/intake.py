"""Upload validation and sanitisation, shared by the API and the CLI.

A set of uploaded files is accepted whole or rejected whole, with one clear problem per offending
file (``IMG_0042.jpg: content is PNG but extension says JPEG``). Rules (the seed's "Input
Validation"): JPEG, PNG or HEIC only, the type read from the bytes and agreeing with the extension;
per-file and per-set size limits; 5-100 photos; dimensions checked from the header before any pixel
is decoded; a full decode to prove integrity. Accepted photos are stored under server-chosen names
with the EXIF orientation applied to the pixels and every piece of metadata dropped; the focal
length and GPS position, which structure-from-motion can use, are kept in the job's ``intake.json``
instead (never in the stored photos).

A set is written into a staging directory and renamed into place only when every file is stored,
so a rejected or interrupted set leaves nothing behind.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import re
import stat
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import magic
import pillow_heif
from PIL import Image, ImageCms, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin

from sharpml.config import FULL_FRAME_DIAGONAL_MM, MB, IntakeLimits
from sharpml.layout import DataDir, JobDir, create_file, make_dir, open_dir
from sharpml.progress import ProgressHook, no_progress

pillow_heif.register_heif_opener()

#: Accepted kinds: the decoder class that may read each (no other decoder is ever tried), the
#: extensions that may name it, and the format it is stored in (COLMAP cannot read HEIC).
_KINDS: dict[str, tuple[type[ImageFile.ImageFile], tuple[str, ...], str]] = {
    "JPEG": (JpegImagePlugin.JpegImageFile, (".jpg", ".jpeg"), "JPEG"),
    "PNG": (PngImagePlugin.PngImageFile, (".png",), "PNG"),
    "HEIC": (pillow_heif.HeifImageFile, (".heic", ".heif"), "JPEG"),
}
_MIME_KIND = {"image/jpeg": "JPEG", "image/png": "PNG", "image/heic": "HEIC", "image/heif": "HEIC"}
_EXT_KIND = {ext: kind for kind, (_, exts, _) in _KINDS.items() for ext in exts}
_STORED_EXT = {"JPEG": ".jpg", "PNG": ".png"}
_HEAD_BYTES = 8192
_EXIF_IFD = 0x8769
_FOCAL_LENGTH = 0x920A
_FOCAL_LENGTH_35MM = 0xA405
_PIXEL_X_DIMENSION = 0xA002
_FOCAL_PLANE_X_RESOLUTION = 0xA20E
_FOCAL_PLANE_RESOLUTION_UNIT = 0xA210
#: Millimetres per FocalPlaneResolutionUnit (EXIF: 2 inch, the default; 3 cm; 4 mm; 5 micrometre).
_FOCAL_PLANE_UNIT_MM = {1: 25.4, 2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}
#: Plausible sensor widths (mm): a phone's smallest to medium format; outside, the tags are wrong.
_SENSOR_WIDTH_MM = (1.0, 60.0)
_GPS_IFD = 0x8825
_SRGB = ImageCms.createProfile("sRGB")


@dataclass(frozen=True)
class Upload:
    """One file offered for intake: the client's name (used only in messages) and its bytes on disk."""

    name: str
    path: Path


@dataclass(frozen=True)
class Problem:
    """Why a file (or, with ``file=None``, the whole set) is rejected. ``rule`` is machine-readable."""

    file: str | None
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}" if self.file is not None else self.message


class IntakeRejected(Exception):
    """The set was rejected; nothing was stored. ``problems`` has one entry per offending file."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class StoredImage:
    """An accepted photo as stored, and what intake kept of its metadata."""

    name: str
    source_name: str
    source_format: str
    format: str
    width: int
    height: int
    bytes: int
    focal_length_mm: float | None = None
    focal_length_35mm: float | None = None
    #: Focal length in pixels: a prior for SfM, from ``focal_source``.
    focal_px: float | None = None
    #: Where ``focal_px`` came from: "35mm" (the 35 mm equivalent) or "focal-plane" (focal length
    #: in mm and the sensor's pixels per mm from EXIF focal-plane resolution); None without a prior.
    focal_source: str | None = None
    #: GPS position [latitude, longitude, altitude or None] from EXIF: a prior for checking SfM's
    #: cameras. Kept here only; the stored photo carries no metadata.
    gps: list[float | None] | None = None


@dataclass
class IntakeResult:
    """An accepted, stored set."""

    job: JobDir
    images: list[StoredImage]
    bytes_in: int
    seconds: float
    created: float = field(default_factory=time.time)

    def manifest(self) -> dict:
        return {
            "job_id": self.job.id,
            "created": self.created,
            "bytes_in": self.bytes_in,
            "images": [asdict(img) for img in self.images],
        }


def load_manifest(job: JobDir) -> list[StoredImage]:
    """The images intake stored for ``job``, as recorded in its ``intake.json``."""
    data = json.loads(job.intake_manifest.read_text())
    return [StoredImage(**img) for img in data["images"]]


def display_name(name: str) -> str:
    """A client file name made safe to print: control characters escaped, never used as a path."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name) or "(unnamed)"


def _natural_key(name: str) -> list[object]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


# --- checks -------------------------------------------------------------------------------------


@dataclass
class _Inspected:
    """What the cheap, header-only pass learned about one upload."""

    upload: Upload
    kind: str = ""
    size: int = 0
    width: int = 0
    height: int = 0
    problem: Problem | None = None


def _human_mb(n: int) -> str:
    return f"{n / MB:.1f} MB"


def _open_upload(upload: Upload) -> io.BufferedReader:
    """Open the upload's bytes, refusing symlinks and anything that is not a regular file (opened
    non-blocking, so a FIFO named like a photo is refused instead of waiting for a writer forever)."""
    fd = os.open(upload.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IsADirectoryError(errno.EISDIR, "not a regular file", str(upload.path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _inspect(upload: Upload, limits: IntakeLimits) -> _Inspected:
    """Size, type and dimensions from the file header; no pixel is decoded here."""
    name = display_name(upload.name)
    result = _Inspected(upload)

    def fail(rule: str, message: str) -> _Inspected:
        result.problem = Problem(name, rule, message)
        return result

    try:
        fh = _open_upload(upload)
    except OSError as exc:
        if os.path.islink(upload.path):
            return fail("symlink", "is a symbolic link; upload the photo itself")
        return fail("unreadable", f"cannot be read ({exc.strerror or exc})")
    with fh:
        result.size = os.fstat(fh.fileno()).st_size
        ext = os.path.splitext(upload.name)[1].lower()
        ext_kind = _EXT_KIND.get(ext)
        if ext_kind is None:
            shown = f"extension {ext!r}" if ext else "no extension"
            return fail("extension", f"has {shown}; only .jpg, .jpeg, .png, .heic and .heif are accepted")
        if result.size == 0:
            return fail("empty", "is empty")
        if result.size > limits.max_file_bytes:
            return fail(
                "file-size",
                f"is {_human_mb(result.size)}, over the {_human_mb(limits.max_file_bytes)} per-file limit",
            )
        head = fh.read(_HEAD_BYTES)
        mime = magic.from_buffer(head, mime=True)
        kind = _MIME_KIND.get(mime)
        if kind is None:
            what = mime.split("/")[-1].upper() if mime.startswith("image/") else f"not an image ({mime})"
            return fail("type", f"content is {what}; only JPEG, PNG and HEIC photos are accepted")
        if kind != ext_kind:
            return fail("type-mismatch", f"content is {kind} but extension says {ext_kind}")
        result.kind = kind
        fh.seek(0)
        decoder = _KINDS[kind][0]
        try:
            # The decoder class itself parses only the header: no pixels, bounded memory.
            with decoder(fh) as img:
                result.width, result.height = img.size
        except Exception as exc:  # Pillow raises many types for malformed headers
            return fail("corrupt", f"has a malformed {kind} header ({_reason(exc)})")
    d = limits.max_dimension
    if result.width > d or result.height > d:
        return fail("dimensions", f"{result.width}x{result.height} exceeds the {d}x{d} limit")
    return result


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def _check_set(inspected: Sequence[_Inspected], limits: IntakeLimits) -> list[Problem]:
    """Set-level rules, then each file's first problem."""
    problems: list[Problem] = []
    n = len(inspected)
    if n < limits.min_images:
        problems.append(
            Problem(None, "count", f"{n} photos uploaded; at least {limits.min_images} are needed")
        )
    elif n > limits.max_images:
        problems.append(
            Problem(None, "count", f"{n} photos uploaded; at most {limits.max_images} are accepted")
        )
    total = sum(i.size for i in inspected)
    if total > limits.max_set_bytes:
        problems.append(
            Problem(
                None,
                "set-size",
                f"the photos total {_human_mb(total)}, over the {_human_mb(limits.max_set_bytes)} limit",
            )
        )
    seen: set[str] = set()
    for i in inspected:
        if i.problem is None and i.upload.name in seen:
            i.problem = Problem(display_name(i.upload.name), "duplicate", "appears more than once in the set")
        seen.add(i.upload.name)
    problems.extend(i.problem for i in inspected if i.problem is not None)
    return problems


# --- decoding and normalising ---------------------------------------------------------------------


def _focal_prior(
    exif: Image.Exif, width: int, height: int, raw_width: int | None = None
) -> tuple[float | None, float | None, float | None, str | None]:
    """(focal mm, 35 mm equivalent, focal in pixels, its source) from EXIF, ignoring implausible
    values. ``raw_width`` is the decoded width before the EXIF rotation (the sensor's x axis).

    The 35 mm equivalent is preferred; without it (most cameras before ~2010, some HEIC), the focal
    length in mm times the focal plane's pixels per mm gives the focal length in pixels, scaled from
    the size the camera recorded (PixelXDimension) to the stored one."""
    sub = exif.get_ifd(_EXIF_IFD)

    def number(tag: int) -> float | None:
        try:
            value = float(sub.get(tag))
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        return value if value > 0 and math.isfinite(value) else None

    mm = number(_FOCAL_LENGTH)
    f35 = number(_FOCAL_LENGTH_35MM)
    if f35 is not None and not 8 <= f35 <= 600:
        f35 = None
    if f35:
        # Equivalent focal lengths scale with the diagonal, so 4:3 phone photos are not off by 4 %.
        return mm, f35, f35 / FULL_FRAME_DIAGONAL_MM * math.hypot(width, height), "35mm"
    raw_width = raw_width or width
    xres = number(_FOCAL_PLANE_X_RESOLUTION)
    unit_mm = _FOCAL_PLANE_UNIT_MM.get(int(number(_FOCAL_PLANE_RESOLUTION_UNIT) or 2))
    recorded_width = number(_PIXEL_X_DIMENSION) or raw_width
    if mm is None or xres is None or unit_mm is None:
        return mm, None, None, None
    px_per_mm = xres / unit_mm
    sensor_width = recorded_width / px_per_mm
    if not _SENSOR_WIDTH_MM[0] <= sensor_width <= _SENSOR_WIDTH_MM[1] or not 1 <= mm <= 1000:
        return mm, None, None, None
    f_px = mm * px_per_mm * raw_width / recorded_width
    return mm, None, f_px, "focal-plane"


def _gps_prior(exif: Image.Exif) -> list[float | None] | None:
    """[latitude, longitude, altitude or None] in degrees and metres from EXIF GPS, or None."""
    gps = exif.get_ifd(_GPS_IFD)

    def degrees(value: object, ref: object, negative: str) -> float | None:
        try:
            d, m, sec = (float(x) for x in value)  # type: ignore[union-attr]
        except (TypeError, ValueError, ZeroDivisionError):
            return None
        deg = d + m / 60 + sec / 3600
        return -deg if str(ref).strip().upper() == negative else deg

    lat = degrees(gps.get(2), gps.get(1), "S")
    lon = degrees(gps.get(4), gps.get(3), "W")
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat, lon) == (0, 0):
        return None
    try:
        alt: float | None = float(gps.get(6))
        if gps.get(5) in (1, b"\x01"):
            alt = -alt
        if not math.isfinite(alt):
            alt = None
    except (TypeError, ValueError, ZeroDivisionError):
        alt = None
    return [round(lat, 8), round(lon, 8), None if alt is None else round(alt, 2)]


def _decode_normalised(insp: _Inspected) -> tuple[Image.Image, Image.Exif, int]:
    """Decode every pixel (proving integrity), apply EXIF orientation, convert to 8-bit sRGB RGB.
    Also returns the EXIF and the width as decoded, before the rotation (the sensor's x axis)."""
    with _open_upload(insp.upload) as fh:
        img = _KINDS[insp.kind][0](fh)
        img.load()
        exif = img.getexif()
        raw_width = img.width
        icc = img.info.get("icc_profile")
        upright = ImageOps.exif_transpose(img, in_place=True) or img
    if icc:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            upright = ImageCms.profileToProfile(upright.convert("RGB"), src, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile is dropped like the rest of the metadata
    if upright.mode != "RGB":
        if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
            upright = upright.point(lambda v: v / 256).convert("L")
        upright = upright.convert("RGB")
    upright.info = {}  # nothing of the original's metadata may travel to the stored file
    return upright, exif, raw_width


def _store_one(
    insp: _Inspected, index: int, images_fd: int | None
) -> tuple[StoredImage | None, Problem | None]:
    name = display_name(insp.upload.name)
    try:
        img, exif, raw_width = _decode_normalised(insp)
    except Exception as exc:  # any decoder failure means a damaged file
        return None, Problem(
            name, "corrupt", f"could not be decoded ({_reason(exc)}); it is truncated or corrupt"
        )
    stored_format = _KINDS[insp.kind][2]
    stored_name = f"{index:04d}{_STORED_EXT[stored_format]}"
    mm, f35, f_px, focal_source = _focal_prior(exif, *img.size, raw_width)
    size = 0
    if images_fd is not None:
        fd = create_file(images_fd, stored_name)
        with os.fdopen(fd, "wb") as out:
            if stored_format == "JPEG":
                img.save(out, "JPEG", quality=95)
            else:
                img.save(out, "PNG", compress_level=3)
            size = out.tell()
    stored = StoredImage(
        name=stored_name,
        source_name=name,
        source_format=insp.kind,
        format=stored_format,
        width=img.width,
        height=img.height,
        bytes=size,
        focal_length_mm=mm,
        focal_length_35mm=f35,
        focal_px=f_px,
        focal_source=focal_source,
        gps=_gps_prior(exif),
    )
    return stored, None


def _process(
    uploads: Sequence[Upload],
    limits: IntakeLimits,
    images_fd: int | None,
    progress: ProgressHook,
    workers: int,
) -> tuple[list[StoredImage], list[Problem]]:
    """Inspect, check the set, then decode (and store, given a directory) in natural name order."""
    inspected = [_inspect(u, limits) for u in uploads]
    problems = _check_set(inspected, limits)
    if problems:
        return [], problems
    ordered = sorted(inspected, key=lambda i: _natural_key(i.upload.name))
    results: list[tuple[StoredImage | None, Problem | None]] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_store_one, insp, i + 1, images_fd) for i, insp in enumerate(ordered)]
        for n, fut in enumerate(futures, start=1):
            results.append(fut.result())
            progress("intake", n / len(futures), f"{n}/{len(futures)} photos checked")
    stored = [s for s, _ in results if s is not None]
    problems = [p for _, p in results if p is not None]
    return stored, problems


def _default_workers() -> int:
    return min(4, os.cpu_count() or 1)


def validate(
    uploads: Sequence[Upload],
    limits: IntakeLimits | None = None,
    *,
    progress: ProgressHook = no_progress,
    workers: int | None = None,
) -> list[Problem]:
    """Apply every intake rule without storing anything; returns the problems (empty if accepted)."""
    limits = limits or IntakeLimits.from_env()
    _, problems = _process(uploads, limits, None, progress, workers or _default_workers())
    return problems


def ingest(
    uploads: Sequence[Upload],
    data_dir: DataDir,
    limits: IntakeLimits | None = None,
    *,
    job_id: str | None = None,
    progress: ProgressHook = no_progress,
    workers: int | None = None,
) -> IntakeResult:
    """Validate and store a set as a new job; raises :class:`IntakeRejected` with nothing stored."""
    limits = limits or IntakeLimits.from_env()
    started = time.monotonic()
    data_dir.ensure()
    staging = data_dir.staging(job_id or str(uuid.uuid4()))
    with open_dir(data_dir.jobs) as jobs_fd:
        make_dir(jobs_fd, staging.root.name)
    try:
        with open_dir(staging.root) as job_fd:
            for sub in ("images", "colmap", "output"):
                make_dir(job_fd, sub)
            with open_dir(staging.images) as images_fd:
                stored, problems = _process(
                    uploads, limits, images_fd, progress, workers or _default_workers()
                )
            if problems:
                raise IntakeRejected(problems)
            result = IntakeResult(
                staging, stored, sum(os.stat(u.path).st_size for u in uploads), time.monotonic() - started
            )
            fd = create_file(job_fd, "intake.json")
            with os.fdopen(fd, "w") as fh:
                json.dump(result.manifest(), fh, indent=1)
        result.job = data_dir.publish(staging)
        return result
    except BaseException:
        data_dir.remove_job(staging)
        raise


#: The extensions intake accepts (lower case; a name's extension is compared case-insensitively).
PHOTO_EXTENSIONS: tuple[str, ...] = tuple(_EXT_KIND)


@dataclass(frozen=True)
class Skipped:
    """An entry of a folder argument that was not offered to intake, and why (for messages only)."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class Selection:
    """What local paths offer to intake: the uploads, and the folder entries passed over."""

    uploads: list[Upload]
    skipped: list[Skipped]


def select_uploads(paths: Sequence[Path]) -> Selection:
    """Uploads for local paths (the CLI). A file argument is one upload, whatever it is; a folder
    argument stands for the photos directly inside it.

    Why: a real photo folder rarely holds only photos. Published data sets ship a ``README.txt`` or
    camera intrinsics (``K.txt``); phone exports and macOS leave ``.DS_Store`` and ``._IMG_0001.jpg``
    resource forks (hidden, yet named like photos). Offering all of that to intake would reject the
    whole set, so a folder is read as "the photos in it" and everything else is named as skipped:

    * a name ending in one of :data:`PHOTO_EXTENSIONS` (any case) is offered to intake, which still
      applies every rule to it: a ``.jpg`` holding PNG bytes, a symbolic link or a FIFO named like a
      photo is rejected by name, exactly as in an upload;
    * hidden entries (names starting with ``.``) are skipped;
    * other symbolic links are skipped, never followed;
    * sub-folders are skipped, not searched: a set is one folder's photos, and data sets keep other
      sets beside them (``images_2/`` with the same photos downscaled would be taken twice);
    * anything else (other extensions, no extension) is skipped.

    File arguments are never filtered: naming a file is asking for it, so ``README.txt`` given by
    name is offered to intake and rejected as an upload would be. A folder argument that is itself a
    symbolic link is offered as a file too, and intake refuses it as a link.
    """
    uploads: list[Upload] = []
    skipped: list[Skipped] = []
    for p in map(Path, paths):
        if not (p.is_dir() and not p.is_symlink()):
            uploads.append(Upload(p.name, p))
            continue
        with os.scandir(p) as it:
            entries = sorted(it, key=lambda e: _natural_key(e.name))
        for entry in entries:
            shown = display_name(str(p / entry.name))
            ext = os.path.splitext(entry.name)[1]
            if entry.name.startswith("."):
                skipped.append(Skipped(shown, "hidden (the name starts with a dot)"))
            elif entry.is_dir(follow_symlinks=False):
                skipped.append(Skipped(shown, "a folder (folders inside a folder are not searched)"))
            elif ext.lower() in PHOTO_EXTENSIONS:
                uploads.append(Upload(entry.name, Path(entry.path)))
            elif entry.is_symlink():
                skipped.append(Skipped(shown, "a symbolic link (not followed)"))
            else:
                skipped.append(Skipped(shown, f"not a photo ({ext or 'no extension'})"))
    return Selection(uploads, skipped)
