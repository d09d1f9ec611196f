"""Structure from motion with pycolmap (COLMAP 4.x, CPU): stored photos -> posed, undistorted scene.

Reads ``jobs/{id}/images`` and ``intake.json``, writes only below ``jobs/{id}/colmap``:
``database.db``, ``sparse/``, ``scene/`` (undistorted PINHOLE images and ``sparse/0/*.bin``, the
layout 3D Gaussian splatting trainers read), ``preview.splat``, ``progress.json`` and
``result.json`` — the machine-readable summary (quality gate verdict, counts, error, timings) that
the operator reads. Runs with no network: SIFT features and exhaustive or sequential matching
need no vocabulary tree or model download.

Also the SfM pod's entry point: ``python -m sharpml.sfm JOB_DIR``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pycolmap

from sharpml.contract import EXIT_ERROR, EXIT_OK, EXIT_QUALITY_GATE, PROCESSING_DEFAULTS, SfmResult
from sharpml.contract.spec import MAPPERS, MATCHERS
from sharpml.intake import StoredImage, load_manifest
from sharpml.layout import JobDir
from sharpml.progress import ProgressFile, ProgressHook, no_progress
from sharpml.splat import preview_from_points, write_splat

#: Above this many photos "auto" matching switches from exhaustive to sequential (capture order).
SEQUENTIAL_ABOVE = 30


@dataclass(frozen=True)
class SfmOptions:
    """How to reconstruct. Defaults are the measured speed/accuracy choice (see benchmarks/)."""

    matcher: str = PROCESSING_DEFAULTS["matcher"]
    mapper: str = PROCESSING_DEFAULTS["mapper"]
    #: Longest image side used for feature extraction; 1600 px gave the same pose accuracy as
    #: COLMAP's 3200 on 12 MP photos at a third of the memory (the SharpJob's default too).
    max_image_size: int = PROCESSING_DEFAULTS["maxImageSize"]
    max_num_features: int = 8192
    #: SIFT's first octave; -1 (COLMAP's default) upsamples every image 2x first.
    first_octave: int = 0
    sequential_overlap: int = 10
    num_threads: int = -1
    min_registered_fraction: float = 0.7
    min_points: int = 300
    max_reprojection_error: float = 2.0
    write_scene: bool = True

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ValueError(f"matcher: {self.matcher!r} is not one of {', '.join(MATCHERS)}")
        if self.mapper not in MAPPERS:
            raise ValueError(f"mapper: {self.mapper!r} is not one of {', '.join(MAPPERS)}")

    @classmethod
    def colmap_defaults(cls, **overrides: object) -> SfmOptions:
        """The plain baseline: exhaustive matching and incremental mapping at COLMAP's defaults."""
        base = dict(matcher="exhaustive", mapper="incremental", max_image_size=3200, first_octave=-1)
        return cls(**{**base, **overrides})  # type: ignore[arg-type]

    def resolved_matcher(self, n_images: int) -> str:
        if self.matcher != "auto":
            return self.matcher
        return "exhaustive" if n_images <= SEQUENTIAL_ABOVE else "sequential"

    def resolved_mapper(self) -> str:
        # The global mapper was slower than incremental at every size measured here.
        return "incremental" if self.mapper == "auto" else self.mapper


class SfmError(RuntimeError):
    """COLMAP could not run (as opposed to running and failing the quality gate)."""


def _camera_groups(images: Sequence[StoredImage]) -> dict[tuple[int, int, float | None], list[str]]:
    """Photos of one size and focal prior share one camera (COLMAP's AUTO mode would give every
    EXIF-less photo its own, weakening the solve)."""
    groups: dict[tuple[int, int, float | None], list[str]] = defaultdict(list)
    for img in images:
        f = round(img.focal_px, 1) if img.focal_px else None
        groups[(img.width, img.height, f)].append(img.name)
    return groups


def _extract(
    job: JobDir, db_path: Path, images: Sequence[StoredImage], opts: SfmOptions, progress: ProgressHook
) -> int:
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = opts.max_image_size
    extraction.num_threads = opts.num_threads
    extraction.sift.max_num_features = opts.max_num_features
    extraction.sift.first_octave = opts.first_octave
    groups = _camera_groups(images)
    done = 0
    batch = max(1, len(images) // 10)  # several calls, so progress moves during extraction
    for (w, h, f), names in groups.items():
        camera_id = -1
        for start in range(0, len(names), batch):
            reader = pycolmap.ImageReaderOptions()
            reader.camera_model = "SIMPLE_RADIAL"
            if camera_id >= 0:
                reader.existing_camera_id = camera_id
            elif f is not None:
                reader.camera_params = f"{f},{w / 2},{h / 2},0"
            chunk = names[start : start + batch]
            pycolmap.extract_features(
                db_path,
                job.images,
                image_names=chunk,
                camera_mode=pycolmap.CameraMode.SINGLE,
                reader_options=reader,
                extraction_options=extraction,
                device=pycolmap.Device.cpu,
            )
            if camera_id < 0:
                with pycolmap.Database.open(db_path) as db:
                    camera_id = db.read_image_with_name(chunk[0]).camera_id
            done += len(chunk)
            progress("extract", done / len(images), f"features of {done}/{len(images)} photos")
    return len(groups)


def _match(db_path: Path, matcher: str, opts: SfmOptions, progress: ProgressHook) -> None:
    progress("match", 0.0, f"{matcher} matching")
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = opts.num_threads
    if matcher == "exhaustive":
        pycolmap.match_exhaustive(db_path, matching_options=matching, device=pycolmap.Device.cpu)
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = opts.sequential_overlap
        pairing.quadratic_overlap = True
        pairing.loop_detection = False  # needs a vocabulary tree download
        pycolmap.match_sequential(
            db_path, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu
        )
    progress("match", 1.0, f"{matcher} matching done")


def _map(
    db_path: Path, job: JobDir, sparse: Path, mapper: str, n: int, opts: SfmOptions, progress: ProgressHook
) -> dict[int, pycolmap.Reconstruction]:
    progress("map", 0.0, f"{mapper} mapping")
    if mapper == "global":
        global_opts = pycolmap.GlobalPipelineOptions()
        global_opts.num_threads = opts.num_threads
        global_opts.random_seed = 1  # reproducible runs (COLMAP seeds randomly by default)
        recs = pycolmap.global_mapping(db_path, job.images, sparse, options=global_opts)
    else:
        inc = pycolmap.IncrementalPipelineOptions()
        inc.num_threads = opts.num_threads
        inc.random_seed = 1
        registered = 0

        def next_image() -> None:
            nonlocal registered
            registered += 1
            progress("map", min(registered / n, 0.99), f"placed {registered}/{n} photos")

        recs = pycolmap.incremental_mapping(
            db_path, job.images, sparse, options=inc, next_image_callback=next_image
        )
    placed = max((r.num_reg_images() for r in recs.values()), default=0)
    progress("map", 1.0, f"placed {placed}/{n} photos")
    return recs


def _gate(rec: pycolmap.Reconstruction | None, total: int, opts: SfmOptions) -> str | None:
    """The quality gate: a user-facing reason to reject the reconstruction, or None."""
    if rec is None or rec.num_reg_images() == 0:
        return (
            f"none of the {total} photos could be placed together; take overlapping photos "
            "of a textured subject, moving around it"
        )
    reg = rec.num_reg_images()
    if reg / total < opts.min_registered_fraction or reg < 2:
        return f"only {reg} of {total} photos could be placed; take more overlapping photos"
    if rec.num_points3D() < opts.min_points:
        return (
            f"only {rec.num_points3D()} 3D points were found (at least {opts.min_points} are needed); "
            "photograph a subject with more texture, in good light"
        )
    err = rec.compute_mean_reprojection_error()
    if err > opts.max_reprojection_error:
        return (
            f"the reconstruction is inconsistent (mean reprojection error {err:.2f} px, limit "
            f"{opts.max_reprojection_error:.2f}); avoid moving subjects and blurry photos"
        )
    return None


def _undistort(job: JobDir, sparse_model: Path, opts: SfmOptions) -> None:
    """Undistort to PINHOLE images in the trainers' layout: scene/images, scene/sparse/0/*.bin."""
    scene = job.scene
    if scene.exists():
        shutil.rmtree(scene)
    pycolmap.undistort_images(
        scene, sparse_model, job.images, output_type="COLMAP", num_threads=opts.num_threads
    )
    sparse0 = scene / "sparse" / "0"
    sparse0.mkdir(parents=True, exist_ok=True)
    for f in (scene / "sparse").iterdir():
        if f.is_file():
            f.rename(sparse0 / f.name)
    for extra in ("stereo", "run-colmap-geometric.sh", "run-colmap-photometric.sh"):
        p = scene / extra
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def points_of(rec: pycolmap.Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float positions and (N, 3) uint8 colours of a reconstruction's 3D points."""
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3)
    return xyz, rgb


def reconstruct(
    job: JobDir, options: SfmOptions | None = None, progress: ProgressHook = no_progress
) -> SfmResult:
    """Run SfM for a stored job. Always writes ``result.json``; raises :class:`SfmError` only if
    COLMAP itself fails. Re-running starts from scratch, so a retried pod is safe."""
    opts = options or SfmOptions()
    images = load_manifest(job)
    n = len(images)
    out = job.colmap
    out.mkdir(exist_ok=True)
    for stale in ("database.db", "database.db-wal", "database.db-shm", "result.json", "preview.splat"):
        (out / stale).unlink(missing_ok=True)
    for stale_dir in ("sparse", "scene"):
        if (out / stale_dir).exists():
            shutil.rmtree(out / stale_dir)
    db_path = out / "database.db"
    sparse = out / "sparse"
    sparse.mkdir()
    matcher, mapper = opts.resolved_matcher(n), opts.resolved_mapper()
    result = SfmResult(
        ok=False, reason=None, total=n, matcher=matcher, mapper=mapper, colmap_version=pycolmap.__version__
    )
    timings = result.timings
    t_all = time.monotonic()

    def timed(stage: str, fn, *args):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            timings[stage] = round(time.monotonic() - t0, 3)

    try:
        result.cameras = timed("extract", _extract, job, db_path, images, opts, progress)
        timed("match", _match, db_path, matcher, opts, progress)
        recs = timed("map", _map, db_path, job, sparse, mapper, n, opts, progress)
    except Exception as exc:
        result.reason = f"structure from motion failed: {exc}"
        result.write(job.sfm_result)
        raise SfmError(result.reason) from exc

    result.models = len(recs)
    best_id, best = max(recs.items(), key=lambda kv: kv[1].num_reg_images(), default=(None, None))
    if best is not None:
        result.registered = best.num_reg_images()
        result.points = best.num_points3D()
        result.mean_reprojection_error = round(best.compute_mean_reprojection_error(), 4)
        result.mean_track_length = round(best.compute_mean_track_length(), 3)
        placed = {img.name for img in best.images.values() if img.has_pose}
        by_name = {img.name: img.source_name for img in images}
        result.unregistered = [by_name[name] for name in sorted(by_name) if name not in placed]
    result.reason = _gate(best, n, opts)
    result.ok = result.reason is None
    if result.ok and best is not None:
        model_dir = sparse / str(best_id)
        if opts.write_scene:
            progress("undistort", 0.0, "undistorting photos for training")
            timed("undistort", _undistort, job, model_dir, opts)
            result.scene = "scene"
            progress("undistort", 1.0, "scene ready")
        t0 = time.monotonic()
        xyz, rgb = points_of(best)
        write_splat(job.preview_splat, preview_from_points(xyz, rgb))
        timings["preview"] = round(time.monotonic() - t0, 3)
        result.preview_splat = job.preview_splat.name
    timings["total"] = round(time.monotonic() - t_all, 3)
    result.write(job.sfm_result)
    progress("done", 1.0, "reconstruction ready" if result.ok else result.reason or "")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """SfM pod entry point: reconstruct one job directory, report progress in ``progress.json``."""
    parser = argparse.ArgumentParser(prog="python -m sharpml.sfm", description=__doc__.split("\n")[0])
    parser.add_argument("job_dir", type=Path, help="jobs/{uuid} directory holding images/ and intake.json")
    parser.add_argument("--matcher", choices=MATCHERS, default="auto")
    parser.add_argument("--mapper", choices=MAPPERS, default="auto")
    parser.add_argument("--max-image-size", type=int, default=SfmOptions.max_image_size)
    parser.add_argument("--threads", type=int, default=-1, help="worker threads (-1: all cores)")
    parser.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    args = parser.parse_args(argv)
    if not args.verbose:
        pycolmap.logging.minloglevel = 2  # errors only
    job = JobDir(args.job_dir)
    opts = SfmOptions(
        matcher=args.matcher, mapper=args.mapper, max_image_size=args.max_image_size, num_threads=args.threads
    )

    def log(stage: str, fraction: float, message: str = "") -> None:
        print(json.dumps({"stage": stage, "fraction": round(fraction, 3), "message": message}), flush=True)

    job.colmap.mkdir(exist_ok=True)
    try:
        result = reconstruct(job, opts, ProgressFile(job.sfm_progress, also=log))
    except SfmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(asdict(result)), flush=True)
    return EXIT_OK if result.ok else EXIT_QUALITY_GATE


if __name__ == "__main__":
    sys.exit(main())
