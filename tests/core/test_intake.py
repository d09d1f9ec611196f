"""Intake: every rule of the seed's "Input Validation", on generated files."""

from __future__ import annotations

import json
import math
import os
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sharpml.config import MB, IntakeLimits
from sharpml.intake import IntakeRejected, Upload, ingest, validate
from sharpml.layout import DataDir, UnsafePathError

from .photos import (
    GPS_LAT,
    LEAKS,
    full_exif,
    heic_bytes,
    jpeg_bytes,
    jpeg_claiming,
    photo_set,
    png_bytes,
    png_header_only,
    upright_pattern,
    write,
)


@pytest.fixture
def store(tmp_path: Path) -> DataDir:
    return DataDir(tmp_path / "data")


@pytest.fixture
def good(tmp_path: Path) -> list[Path]:
    return photo_set(tmp_path / "in", 5)


def rejected(uploads: list[Upload], store: DataDir, limits: IntakeLimits | None = None) -> list[str]:
    """Ingest expecting rejection; checks nothing was left behind and returns the messages."""
    with pytest.raises(IntakeRejected) as info:
        ingest(uploads, store, limits or IntakeLimits())
    assert list(store.jobs.iterdir()) == [], "a rejected set must leave nothing in jobs/"
    # validate() applies exactly the same rules.
    assert [str(p) for p in validate(uploads, limits or IntakeLimits())] == [
        str(p) for p in info.value.problems
    ]
    return [str(p) for p in info.value.problems]


def ups(paths: list[Path]) -> list[Upload]:
    return [Upload(p.name, p) for p in paths]


def test_accepts_a_valid_set_under_server_chosen_names(good: list[Path], store: DataDir) -> None:
    result = ingest(ups(good), store)
    assert result.job.root.parent == store.jobs
    stored = sorted(p.name for p in result.job.images.iterdir())
    assert stored == ["0001.jpg", "0002.jpg", "0003.jpg", "0004.jpg", "0005.jpg"]
    manifest = json.loads(result.job.intake_manifest.read_text())
    assert [i["source_name"] for i in manifest["images"]] == [p.name for p in good]
    assert {p.name for p in result.job.root.iterdir()} == {"images", "colmap", "output", "intake.json"}
    assert not any(p.name.startswith(".incoming") for p in store.jobs.iterdir())


def test_photos_are_ordered_by_natural_name_order(tmp_path: Path, store: DataDir) -> None:
    paths = photo_set(tmp_path / "in", 5)
    names = ["IMG_10.jpg", "IMG_9.jpg", "IMG_100.jpg", "img_2.jpg", "IMG_1.jpg"]
    renamed = [p.rename(p.with_name(n)) for p, n in zip(paths, names, strict=True)]
    result = ingest(ups(renamed), store)
    assert [i.source_name for i in result.images] == [
        "IMG_1.jpg",
        "img_2.jpg",
        "IMG_9.jpg",
        "IMG_10.jpg",
        "IMG_100.jpg",
    ]


def test_all_metadata_is_stripped_and_focal_length_kept(
    tmp_path: Path, good: list[Path], store: DataDir
) -> None:
    img = upright_pattern()
    leaky = write(tmp_path / "in" / "IMG_0000.jpg", jpeg_bytes(img, exif=full_exif(), leaky=True))
    raw = leaky.read_bytes()
    assert all(marker in raw for marker in LEAKS)  # the fixture really carries them
    heic = write(tmp_path / "in" / "IMG_0001.heic", heic_bytes(img, exif=full_exif()))
    result = ingest(ups([leaky, heic, *good[2:]]), store)
    for image in result.images[:2]:
        path = result.job.images / image.name
        data = path.read_bytes()
        for marker in [*LEAKS, b"Exif\x00\x00", b"http://ns.adobe.com/xap", b"ICC_PROFILE", b"8BIM"]:
            assert marker not in data, f"{image.source_name}: {marker!r} survived intake"
        with Image.open(path) as out:
            assert len(out.getexif()) == 0
            assert not set(out.info) & {"exif", "xmp", "icc_profile", "comment", "photoshop"}
        assert image.focal_length_35mm == 28
        assert image.focal_length_mm == pytest.approx(5.7)
        assert image.focal_px == pytest.approx(28 / 43.2666 * math.hypot(120, 80))  # 35 mm eq. is diagonal
    assert result.images[1].source_format == "HEIC" and result.images[1].format == "JPEG"
    assert result.images[1].name.endswith(".jpg")
    assert result.images[2].focal_px is None  # no EXIF, no prior


@pytest.mark.parametrize("fmt", ["jpg", "png"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_to_pixels(
    tmp_path: Path, orientation: int, fmt: str, store: DataDir
) -> None:
    upright = upright_pattern()
    # What a camera stores for each orientation: the inverse of the transform a viewer applies.
    inverse = {
        1: None,
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    sensor = upright if inverse is None else upright.transpose(inverse)
    photos = photo_set(tmp_path / "in", 4)
    exif = full_exif(orientation)
    data = (
        jpeg_bytes(sensor, exif=exif, quality=95) if fmt == "jpg" else png_bytes(sensor, exif=exif.tobytes())
    )
    rotated = write(tmp_path / "in" / f"rotated.{fmt}", data)
    result = ingest(ups([rotated, *photos]), store)
    stored = next(i for i in result.images if i.source_name == rotated.name)
    with Image.open(result.job.images / stored.name) as out:
        assert out.size == upright.size
        assert len(out.getexif()) == 0
        diff = np.abs(np.asarray(out, np.int16) - np.asarray(upright, np.int16)).mean()
    assert diff < (3.0 if fmt == "jpg" else 0.5)


def test_content_must_match_extension(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    fake = write(tmp_path / "IMG_0042.jpg", png_bytes(upright_pattern()))
    assert rejected(ups([fake, *good[1:]]), store) == ["IMG_0042.jpg: content is PNG but extension says JPEG"]


def test_heic_named_jpeg_is_a_mismatch(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    fake = write(tmp_path / "IMG_0043.JPG", heic_bytes(upright_pattern()))
    assert rejected(ups([fake, *good[1:]]), store) == [
        "IMG_0043.JPG: content is HEIC but extension says JPEG"
    ]


def test_only_jpeg_png_heic_content(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    gif = tmp_path / "anim.png"
    upright_pattern().save(gif, "GIF")
    text = write(tmp_path / "notes.jpg", b"just some text and not a photo\n" * 10)
    problems = rejected(ups([gif, text, *good[2:]]), store)
    assert problems == [
        "anim.png: content is GIF; only JPEG, PNG and HEIC photos are accepted",
        "notes.jpg: content is not an image (text/plain); only JPEG, PNG and HEIC photos are accepted",
    ]


def test_extension_allow_list(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    tiff = tmp_path / "scan.tiff"
    upright_pattern().save(tiff, "TIFF")
    bare = write(tmp_path / "README", jpeg_bytes(upright_pattern()))
    problems = rejected(ups([tiff, bare, *good[2:]]), store)
    assert (
        problems[0]
        == "scan.tiff: has extension '.tiff'; only .jpg, .jpeg, .png, .heic and .heif are accepted"
    )
    assert problems[1].startswith("README: has no extension")


def test_per_file_and_per_set_size_limits(tmp_path: Path, store: DataDir) -> None:
    rng = np.random.default_rng(1)
    big = [
        write(
            tmp_path / f"big{i}.png",
            png_bytes(Image.fromarray(rng.integers(0, 255, (700, 700, 3), np.uint8))),
        )
        for i in range(6)
    ]
    size = big[0].stat().st_size  # about 1.4 MB of incompressible pixels
    assert size > 1 * MB
    problems = rejected(ups(big), store, IntakeLimits(max_file_bytes=1 * MB, max_set_bytes=100 * MB))
    assert len(problems) == 6
    assert problems[0] == f"big0.png: is {size / MB:.1f} MB, over the 1.0 MB per-file limit"
    problems = rejected(ups(big), store, IntakeLimits(max_file_bytes=20 * MB, max_set_bytes=5 * MB))
    assert problems == [
        f"the photos total {sum(p.stat().st_size for p in big) / MB:.1f} MB, over the 5.0 MB limit"
    ]


def test_image_count_limits(tmp_path: Path, store: DataDir) -> None:
    four = photo_set(tmp_path / "four", 4)
    assert rejected(ups(four), store) == ["4 photos uploaded; at least 5 are needed"]
    seven = photo_set(tmp_path / "seven", 7)
    assert rejected(ups(seven), store, IntakeLimits(max_images=6)) == [
        "7 photos uploaded; at most 6 are accepted"
    ]


def test_dimensions_checked_from_header_in_bounded_memory(
    tmp_path: Path, good: list[Path], store: DataDir
) -> None:
    pano = write(tmp_path / "pano.jpg", jpeg_claiming(12000, 9000))
    bomb = write(tmp_path / "bomb.png", png_header_only(60000, 60000))
    assert bomb.stat().st_size < 200
    tracemalloc.start()
    try:
        problems = rejected(ups([pano, bomb, *good[2:]]), store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problems == [
        "pano.jpg: 12000x9000 exceeds the 8000x8000 limit",
        "bomb.png: 60000x60000 exceeds the 8000x8000 limit",
    ]
    assert peak < 20 * MB, f"rejecting by header used {peak / MB:.0f} MB"


def test_heic_over_the_dimension_limit(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    wide = write(tmp_path / "pano.heic", heic_bytes(upright_pattern(700, 40)))
    problems = rejected(ups([wide, *good[1:]]), store, IntakeLimits(max_dimension=640))
    assert problems == ["pano.heic: 700x40 exceeds the 640x640 limit"]


@pytest.mark.parametrize("kind", ["jpg", "png", "heic"])
def test_truncated_files_are_rejected_by_name(
    tmp_path: Path, good: list[Path], store: DataDir, kind: str
) -> None:
    rng = np.random.default_rng(3)
    img = Image.fromarray(rng.integers(0, 255, (200, 300, 3), np.uint8))
    data = {"jpg": jpeg_bytes, "png": png_bytes, "heic": heic_bytes}[kind](img)
    cut = write(tmp_path / f"IMG_cut.{kind}", data[: len(data) * 2 // 3])
    problems = rejected(ups([cut, *good[1:]]), store)
    assert len(problems) == 1
    assert problems[0].startswith(f"IMG_cut.{kind}: ")
    assert "truncated or corrupt" in problems[0] or "malformed" in problems[0]


def test_corrupt_png_checksum(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    data = bytearray(png_bytes(upright_pattern()))
    i = data.index(b"IDAT") + 20
    data[i] ^= 0xFF
    broken = write(tmp_path / "broken.png", bytes(data))
    problems = rejected(ups([broken, *good[1:]]), store)
    assert problems[0].startswith("broken.png: ")


def test_every_offending_file_is_named(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    a = write(tmp_path / "a.jpg", png_bytes(upright_pattern()))
    b = write(tmp_path / "b.png", b"")
    c = write(tmp_path / "c.gif", b"GIF89a")
    problems = rejected(ups([a, b, c, *good]), store)
    assert [p.split(":")[0] for p in problems] == ["a.jpg", "b.png", "c.gif"]


def test_decode_failure_after_others_were_stored_leaves_nothing(
    tmp_path: Path, good: list[Path], store: DataDir
) -> None:
    data = jpeg_bytes(Image.fromarray(np.random.default_rng(4).integers(0, 255, (300, 300, 3), np.uint8)))
    last = write(tmp_path / "zzz_last.jpg", data[: len(data) // 2])  # sorts last: others are stored first
    rejected(ups([*good, last]), store)


def test_client_paths_never_reach_the_filesystem(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    evil = [Upload(f"../../../etc/evil{i}\n.jpg", p) for i, p in enumerate(good)]
    result = ingest(evil, store)
    assert sorted(p.name for p in result.job.images.iterdir())[0] == "0001.jpg"
    assert not (tmp_path / "etc").exists()
    assert result.images[0].source_name == "../../../etc/evil0\\n.jpg"  # escaped for display


def test_duplicate_names_are_rejected(good: list[Path], store: DataDir) -> None:
    dup = [*ups(good), Upload(good[0].name, good[1])]
    assert rejected(dup, store) == [f"{good[0].name}: appears more than once in the set"]


def test_symlinked_upload_is_refused(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    link = tmp_path / "link.jpg"
    link.symlink_to(good[0])
    assert rejected(ups([link, *good[1:]]), store) == [
        "link.jpg: is a symbolic link; upload the photo itself"
    ]


def test_a_fifo_named_like_a_photo_is_refused_without_waiting(tmp_path: Path, good: list[Path]) -> None:
    fifo = tmp_path / "IMG_0100.jpg"
    os.mkfifo(fifo)
    found: list[object] = []
    worker = threading.Thread(target=lambda: found.extend(validate(ups([*good, fifo]))))
    worker.start()
    worker.join(30)
    if worker.is_alive():  # unblock the reader so the test run can end, then fail
        with open(fifo, "wb"):
            pass
        worker.join()
        pytest.fail("intake waited on a FIFO for a writer")
    assert [str(p) for p in found] == ["IMG_0100.jpg: cannot be read (not a regular file)"]


def test_symlink_planted_in_the_data_dir_is_not_followed(tmp_path: Path, good: list[Path]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "data"
    root.mkdir()
    (root / "jobs").symlink_to(elsewhere)
    with pytest.raises(UnsafePathError):
        ingest(ups(good), DataDir(root))
    assert list(elsewhere.iterdir()) == []


def test_symlink_at_the_staging_name_is_not_followed(
    tmp_path: Path, good: list[Path], store: DataDir
) -> None:
    store.ensure()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job_id = "3f1c1b8e-7a8f-4a63-9a44-6b0f0b6a7c21"
    store.staging(job_id).root.symlink_to(elsewhere)
    with pytest.raises(FileExistsError):
        ingest(ups(good), store, job_id=job_id)
    assert list(elsewhere.iterdir()) == []


def test_modes_are_normalised_to_rgb(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    grey16 = Image.fromarray((np.arange(80 * 120, dtype=np.uint16).reshape(80, 120) * 7).astype(np.uint16))
    rgba = upright_pattern().convert("RGBA")
    paths = [write(tmp_path / "g16.png", png_bytes(grey16)), write(tmp_path / "rgba.png", png_bytes(rgba))]
    result = ingest(ups([*paths, *good[2:]]), store)
    for image in result.images:
        with Image.open(result.job.images / image.name) as out:
            assert out.mode == "RGB"


def test_limits_come_from_the_environment() -> None:
    env = {"SHARPML_MAX_FILE_MB": "7", "SHARPML_MAX_UPLOAD_MB": "70", "SHARPML_MAX_IMAGES": "30"}
    limits = IntakeLimits.from_env(env)
    assert (limits.max_file_bytes, limits.max_set_bytes, limits.max_images) == (7 * MB, 70 * MB, 30)
    with pytest.raises(ValueError, match="SHARPML_MAX_IMAGES='lots': must be a whole number"):
        IntakeLimits.from_env({"SHARPML_MAX_IMAGES": "lots"})


def test_stored_files_are_not_world_readable(good: list[Path], store: DataDir) -> None:
    result = ingest(ups(good), store)
    mode = os.stat(result.job.images / "0001.jpg").st_mode & 0o777
    assert mode & 0o007 == 0


def _classic_exif(orientation: int, recorded_width: int) -> Image.Exif:
    """A pre-2010 camera's EXIF: focal length in mm and focal-plane resolution, no 35 mm equivalent."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    sub = exif.get_ifd(0x8769)
    sub[0x920A] = 5.4  # FocalLength, mm
    sub[0xA002] = recorded_width  # PixelXDimension: the size the camera recorded
    sub[0xA20E] = recorded_width / 5.0 * 25.4  # FocalPlaneXResolution (pixels per inch): a 5 mm sensor
    sub[0xA210] = 2  # FocalPlaneResolutionUnit: inch
    return exif


@pytest.mark.parametrize(
    ("orientation", "recorded_width"),
    [(1, 120), (6, 120), (1, 240)],  # as recorded; rotated 90 degrees; recorded at 2x, stored downscaled
)
def test_focal_prior_from_focal_plane_resolution(
    tmp_path: Path, good: list[Path], store: DataDir, orientation: int, recorded_width: int
) -> None:
    img = upright_pattern(120, 80)
    exif = _classic_exif(orientation, recorded_width)
    photo = write(tmp_path / "in" / "IMG_0000.jpg", jpeg_bytes(img, exif=exif))
    stored = ingest(ups([photo, *good[1:]]), store).images[0]
    # 5.4 mm on a 5 mm wide sensor whose x axis has 120 px here (stored size, before the rotation).
    assert stored.focal_source == "focal-plane" and stored.focal_length_35mm is None
    assert stored.focal_px == pytest.approx(5.4 / 5.0 * 120)
    assert (stored.width, stored.height) == ((80, 120) if orientation == 6 else (120, 80))


def test_implausible_focal_plane_gives_no_prior(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    exif = _classic_exif(1, 120)
    exif.get_ifd(0x8769)[0xA20E] = 3.0  # a 1 m wide "sensor": the tags are wrong
    photo = write(tmp_path / "in" / "IMG_0000.jpg", jpeg_bytes(upright_pattern(), exif=exif))
    stored = ingest(ups([photo, *good[1:]]), store).images[0]
    assert stored.focal_px is None and stored.focal_source is None and stored.focal_length_mm == 5.4


def test_gps_is_kept_in_intake_json_only(tmp_path: Path, good: list[Path], store: DataDir) -> None:
    exif = full_exif()
    gps = exif.get_ifd(0x8825)
    gps[5], gps[6] = 0, 12.5  # altitude above sea level
    photo = write(tmp_path / "in" / "IMG_0000.jpg", jpeg_bytes(upright_pattern(), exif=exif))
    result = ingest(ups([photo, *good[1:]]), store)
    lat = GPS_LAT[0] + GPS_LAT[1] / 60 + GPS_LAT[2] / 3600
    recorded = json.loads(result.job.intake_manifest.read_text())["images"]
    assert recorded[0]["gps"] == [pytest.approx(lat), pytest.approx(4 + 53 / 60 + 41.2 / 3600), 12.5]
    assert recorded[1]["gps"] is None  # no EXIF, no position
    with Image.open(result.job.images / result.images[0].name) as out:
        assert len(out.getexif()) == 0
