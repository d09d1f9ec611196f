"""Structure from motion on rendered scenes with known cameras: accuracy is asserted, not assumed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pycolmap
import pytest
from PIL import Image

from sharpml.contract import EXIT_QUALITY_GATE, SfmResult, count_spz, read_progress
from sharpml.evaluation import evaluate_job
from sharpml.intake import Upload, ingest, select_uploads
from sharpml.layout import DataDir, JobDir
from sharpml.sfm import SfmOptions, _undistort, reconstruct
from sharpml.splat import read_splat
from sharpml.synthetic import Dataset

from .conftest import N_PHOTOS, noise_photos

pytestmark = pytest.mark.slow


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, str]] = []

    def __call__(self, stage: str, fraction: float, message: str = "") -> None:
        self.calls.append((stage, fraction, message))


@pytest.fixture(scope="module")
def reconstructed(
    scene_photos: Dataset, tmp_path_factory: pytest.TempPathFactory
) -> tuple[JobDir, SfmResult, Recorder]:
    store = DataDir(tmp_path_factory.mktemp("data"))
    job = ingest(select_uploads([scene_photos.photos_dir]).uploads, store).job
    progress = Recorder()
    return job, reconstruct(job, SfmOptions(), progress), progress


def test_every_photo_is_placed_accurately(reconstructed, scene_photos: Dataset) -> None:
    job, result, _ = reconstructed
    assert result.ok, result.reason
    assert result.registered >= 0.9 * N_PHOTOS
    accuracy = evaluate_job(job, scene_photos.ground_truth)
    assert accuracy.matched == result.registered
    assert accuracy.mean_error < 0.01, accuracy.summary()
    assert accuracy.max_error < 0.02, accuracy.summary()
    assert accuracy.mean_rotation_error_deg < 0.5, accuracy.summary()


def test_result_summary_is_written_for_the_operator(reconstructed) -> None:
    job, result, _ = reconstructed
    on_disk = json.loads(job.sfm_result.read_text())
    assert on_disk["ok"] is True and on_disk["reason"] is None
    assert on_disk["registered"] == result.registered and on_disk["total"] == N_PHOTOS
    assert on_disk["points"] > 300 and 0 < on_disk["mean_reprojection_error"] < 1.0
    assert on_disk["matcher"] == "exhaustive" and on_disk["mapper"] == "incremental"
    assert set(on_disk["timings"]) >= {"extract", "match", "map", "undistort", "preview", "total"}
    # 640x480 photos: features from COLMAP's 2x upsampling, placed at the first attempt.
    assert on_disk["features"]["first_octave"] == -1 and on_disk["features"]["extraction_side"] == 640
    assert [(a["name"], a["outcome"]) for a in on_disk["attempts"]] == [("planned", "accepted")]
    assert on_disk["attempt"] == "planned" and on_disk["failure"] is None
    # The true principal point is the centre: freeing it gains nothing, so the centre is kept.
    assert on_disk["intrinsics"]["refined"] is False, on_disk["intrinsics"]
    assert "refine" in on_disk["timings"]
    assert SfmResult.read(job.sfm_result) == result


def test_scene_is_in_the_layout_trainers_read(reconstructed) -> None:
    job, result, _ = reconstructed
    sparse0 = job.scene / "sparse" / "0"
    assert {"cameras.bin", "images.bin", "points3D.bin"} <= {p.name for p in sparse0.iterdir()}
    assert len(list((job.scene / "images").iterdir())) == result.registered
    assert not (job.scene / "stereo").exists()
    rec = pycolmap.Reconstruction(sparse0)
    assert {cam.model.name for cam in rec.cameras.values()} == {"PINHOLE"}
    assert rec.num_points3D() == result.points


def test_scene_is_undistorted_at_the_training_size(reconstructed, tmp_path: Path) -> None:
    """Trainers downscale to their own size: the scene is written that large (plus the few pixels
    undistortion trims), its cameras scaled to match, so a trainer reads the same pinhole geometry at
    fewer pixels and still gets exactly the size it asked for."""
    job, _, _ = reconstructed
    copy = JobDir(tmp_path / "job")
    copy.root.mkdir()
    (copy.root / "images").symlink_to(job.images)
    copy.colmap.mkdir()
    _undistort(copy, job.colmap / "sparse" / "0", SfmOptions(scene_image_size=320))
    small = pycolmap.Reconstruction(copy.scene / "sparse" / "0")
    full = pycolmap.Reconstruction(job.scene / "sparse" / "0")
    for cam_id, cam in small.cameras.items():
        big = full.cameras[cam_id]
        scale = cam.width / big.width
        assert 320 <= max(cam.width, cam.height) <= 324 and max(big.width, big.height) > 324
        assert cam.params[0] == pytest.approx(big.params[0] * scale, rel=0.01)  # focal scaled with the size
    for img in (copy.scene / "images").iterdir():
        with Image.open(img) as im:
            assert 320 <= max(im.size) <= 324, (img.name, im.size)
    assert len(list((copy.scene / "images").iterdir())) == len(list((job.scene / "images").iterdir()))
    assert not (copy.colmap / ".undistort-input").exists()  # the resized copies are gone


def test_exif_focal_length_is_used_as_a_prior(reconstructed, scene_photos: Dataset) -> None:
    job, _, _ = reconstructed
    with pycolmap.Database.open(job.colmap / "database.db") as db:
        cameras = db.read_all_cameras()
    # JPEG and HEIC photos carry a focal length and share one camera; PNGs carry none.
    with_prior = [c for c in cameras if c.has_prior_focal_length]
    assert len(cameras) == 2 and len(with_prior) == 1
    exif_focal = 26 / 43.2666 * 800  # FocalLengthIn35mmFilm 26 (rounded by the "phone"), 640x480 diagonal
    assert with_prior[0].params[0] == pytest.approx(exif_focal, rel=1e-3)
    rec = pycolmap.Reconstruction(job.colmap / "sparse" / "0")
    true_focal = scene_photos.cameras[0].focal_px
    for cam in rec.cameras.values():
        assert cam.params[0] == pytest.approx(true_focal, rel=0.02)


def test_preview_splat_has_one_gaussian_per_point(reconstructed) -> None:
    job, result, _ = reconstructed
    records = read_splat(job.preview_splat)
    assert len(records) == result.points
    assert (records["scale"] > 0).all()
    # and its SPZ, which delivery serves (the operator only checks it: its image has no numpy)
    assert count_spz(job.preview_spz, 10**8) == result.points


def test_progress_moves_through_the_stages(reconstructed) -> None:
    *_, progress = reconstructed
    stages = [s for s, _, _ in progress.calls]
    order = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
    assert order == ["extract", "match", "map", "undistort", "done"]
    extract = [f for s, f, _ in progress.calls if s == "extract"]
    assert len(extract) >= 3 and extract == sorted(extract) and extract[-1] == 1.0
    assert any(m.startswith("placed ") for s, _, m in progress.calls if s == "map")


@pytest.mark.parametrize(
    ("matcher", "mapper"),
    [("sequential", "incremental"), ("retrieval", "incremental"), ("exhaustive", "global")],
)
def test_other_matchers_and_mappers(scene_photos: Dataset, tmp_path: Path, matcher: str, mapper: str) -> None:
    job = ingest(select_uploads([scene_photos.photos_dir]).uploads, DataDir(tmp_path)).job
    # One thread: with several, COLMAP's global mapper is not reproducible even with a fixed seed, and
    # 1 run in 12 here converged to a self-consistent but wrong solution (see README, SfM choices).
    result = reconstruct(job, SfmOptions(matcher=matcher, mapper=mapper, num_threads=1))
    assert result.ok, result.reason
    assert (result.matcher, result.mapper) == (matcher, mapper)
    accuracy = evaluate_job(job, scene_photos.ground_truth)
    assert accuracy.matched >= 0.9 * N_PHOTOS
    assert accuracy.mean_error < 0.02, accuracy.summary()


def test_quality_gate_names_the_photos_it_could_not_place(scene_photos: Dataset, tmp_path: Path) -> None:
    scene = sorted(scene_photos.photos_dir.iterdir())[:7]
    noise = noise_photos(tmp_path / "noise", 4)
    job = ingest([Upload(p.name, p) for p in [*scene, *noise]], DataDir(tmp_path / "data")).job
    # The pod entry point: exit code 4 and the reason in result.json.
    proc = subprocess.run(
        [sys.executable, "-m", "sharpml.sfm", str(job.root)], capture_output=True, text=True
    )
    assert proc.returncode == EXIT_QUALITY_GATE, proc.stderr
    result = SfmResult.read(job.sfm_result)
    assert not result.ok
    # The noise photos match nothing, so this is the user's fix, and the message names them.
    names = ", ".join(p.name for p in noise)
    assert result.reason == (
        f"only 7 of 11 photos could be placed: {names} share no features with the others; "
        "take more overlapping photos of the same subject"
    )
    assert result.failure == "photos"
    assert sorted(result.unregistered) == [p.name for p in noise]
    # The ladder was climbed before the verdict, and every attempt is on record: richer features
    # were tried; mapping again was not, since the photos left out match no other photo.
    outcomes = {a["name"]: a["outcome"] for a in result.attempts}
    assert list(outcomes) == ["planned", "relaxed-init", "more-features", "global"]
    assert outcomes["planned"].startswith("rejected: ") and outcomes["more-features"].startswith("rejected: ")
    assert outcomes["relaxed-init"].startswith("skipped (no use): the photos not placed match no other")
    assert outcomes["global"].startswith("skipped (no use): ")
    assert not job.preview_splat.exists() and not job.scene.exists()
    assert read_progress(job.sfm_progress)["stage"] == "done"


def test_nothing_placeable_is_a_clear_failure(tmp_path: Path) -> None:
    noise = noise_photos(tmp_path / "noise", 5, seed=5)
    job = ingest([Upload(p.name, p) for p in noise], DataDir(tmp_path / "data")).job
    result = reconstruct(job, SfmOptions(num_threads=2))
    assert not result.ok
    assert result.reason.startswith("none of the 5 photos could be placed together")
    assert result.failure == "photos"
    assert result.registered == 0
