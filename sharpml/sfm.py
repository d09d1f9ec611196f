"""Structure from motion with pycolmap (COLMAP 4.x, CPU): stored photos -> posed, undistorted scene.

Reads ``jobs/{id}/images`` and ``intake.json``, writes only below ``jobs/{id}/colmap``:
``database.db``, ``sparse/``, ``scene/`` (undistorted PINHOLE images and ``sparse/0/*.bin``, the
layout 3D Gaussian splatting trainers read), ``preview.splat`` (and ``preview.spz``, its SPZ for
delivery), ``progress.json`` and ``result.json`` — the machine-readable summary (quality gate
verdict, counts, error, timings) that the operator reads. Runs with no network: SIFT features and
exhaustive or sequential matching need no vocabulary tree or model download.

Also the SfM pod's entry point: ``python -m sharpml.sfm JOB_DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pycolmap
from PIL import Image

from sharpml.config import job_timeout_seconds
from sharpml.contract import EXIT_ERROR, EXIT_OK, EXIT_QUALITY_GATE, PROCESSING_DEFAULTS, SfmResult
from sharpml.contract.spec import MAPPERS, MATCHERS, TRAINING_DEFAULTS
from sharpml.intake import StoredImage, load_manifest
from sharpml.layout import PREVIEW_SPLAT, PREVIEW_SPZ, JobDir
from sharpml.progress import ProgressFile, ProgressHook, no_progress
from sharpml.sfm_features import (
    DEFAULT_FEATURES,
    FIRST_OCTAVES,
    UPSAMPLE_AT_MOST_PX,
    FeaturePlan,
    plan_features,
)
from sharpml.sfm_intrinsics import refine_principal_points
from sharpml.sfm_ladder import (
    GPS_AGREE_FRACTION,
    MIN_COMMON,
    Rung,
    agrees,
    compare,
    compare_gps,
    gps_local,
    incremental_options,
    keypoints_per_photo,
    matched_photos,
    name_list,
    rungs,
)
from sharpml.sfm_pairs import (
    RETRIEVAL_NEIGHBOURS,
    RETRIEVAL_WINDOW,
    RETRY_NEIGHBOURS,
    RETRY_WINDOW,
    match_retrieval,
    retrieval_pair_bound,
)
from sharpml.splat import preview_from_points, write_splat
from sharpml.spz import write_spz

#: Above this many photos "auto" matching switches from every pair to retrieval (sharpml.sfm_pairs):
#: on 30 and 60 rendered 1024x768 photos it matched 2.6x and 5.6x faster, every photo placed, pose error
#: within 0.003 % of the scene size of exhaustive matching's (benchmarks/results/sfm-pairs.json); on
#: smaller sets it saves little, since each photo's neighbours are most of the set.
RETRIEVAL_ABOVE = 20
#: Retries match every pair up to this many photos, and by retrieval twice as wide above.
EXHAUSTIVE_RETRY_AT_MOST = 60
#: Plausible focal lengths as a multiple of the photo's longest side: a 170-degree fisheye to a
#: 5-degree telephoto (beyond, the model is degenerate, not a lens).
MIN_FOCAL_RATIO = 0.15
MAX_FOCAL_RATIO = 6.0
#: Retries start only if they should end within this share of the time budget (undistortion,
#: the preview and the pod's start need the rest).
RETRY_SHARE_OF_BUDGET = 0.8
#: Fewer keypoints a photo than this (after the richer retry) reads as "the photos lack texture".
LOW_TEXTURE_KEYPOINTS = 1000


@dataclass(frozen=True)
class SfmOptions:
    """How to reconstruct. Defaults are the measured speed/accuracy choice (see benchmarks/)."""

    matcher: str = PROCESSING_DEFAULTS["matcher"]
    mapper: str = PROCESSING_DEFAULTS["mapper"]
    #: Longest image side used for feature extraction; 1600 px gave the same pose accuracy as
    #: COLMAP's 3200 on 12 MP photos at a third of the memory (the SharpJob's default too).
    max_image_size: int = PROCESSING_DEFAULTS["maxImageSize"]
    #: Keypoints kept per photo, or None for the budget by size (sharpml.sfm_features).
    max_num_features: int | None = None
    #: Longest side of the undistorted scene images (``scene/images``), or 0 for the stored photos' size.
    #: Trainers downscale to their own ``maxImageSize`` anyway: undistorting 12 MP photos at full size
    #: only costs time (3x more, measured) and bytes (4.6x more: the scene sent to RunPod).
    #: The job's training size (``spec.training.maxImageSize``), so training never gets less than it asked.
    scene_image_size: int = TRAINING_DEFAULTS["maxImageSize"]
    #: SIFT's first octave: "auto" chooses by the photos' size (sharpml.sfm_features), "-1"
    #: (COLMAP's default) upsamples every image 2x first, "0" does not.
    first_octave: str = "auto"
    sequential_overlap: int = 10
    num_threads: int = -1
    min_registered_fraction: float = 0.7
    min_points: int = 300
    max_reprojection_error: float = 2.0
    write_scene: bool = True
    #: Refine the principal point in a final adjustment when the photos allow it (sharpml.sfm_intrinsics).
    refine_principal_point: bool = True
    #: Retry with the fallback ladder (sharpml.sfm_ladder) when the first attempt fails the gate.
    retry: bool = True
    #: Seconds the whole stage may take (the job's deadline): retries that would not fit are skipped.
    time_budget_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.matcher not in MATCHERS:
            raise ValueError(f"matcher: {self.matcher!r} is not one of {', '.join(MATCHERS)}")
        if self.mapper not in MAPPERS:
            raise ValueError(f"mapper: {self.mapper!r} is not one of {', '.join(MAPPERS)}")
        if self.scene_image_size < 0:
            raise ValueError(f"scene_image_size: {self.scene_image_size} is negative (0: full size)")
        if self.first_octave not in FIRST_OCTAVES:
            raise ValueError(f"first_octave: {self.first_octave!r} is not one of {', '.join(FIRST_OCTAVES)}")

    @classmethod
    def colmap_defaults(cls, **overrides: object) -> SfmOptions:
        """The plain baseline: exhaustive matching and incremental mapping at COLMAP's defaults, once."""
        base = dict(
            matcher="exhaustive",
            mapper="incremental",
            max_image_size=3200,
            first_octave="-1",
            max_num_features=DEFAULT_FEATURES,
            retry=False,
            refine_principal_point=False,
        )
        return cls(**{**base, **overrides})  # type: ignore[arg-type]

    def resolved_matcher(self, n_images: int) -> str:
        if self.matcher != "auto":
            return self.matcher
        return "exhaustive" if n_images <= RETRIEVAL_ABOVE else "retrieval"

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
    job: JobDir,
    db_path: Path,
    images: Sequence[StoredImage],
    opts: SfmOptions,
    plan: FeaturePlan,
    progress: ProgressHook,
) -> int:
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = opts.max_image_size
    extraction.num_threads = opts.num_threads
    extraction.sift.max_num_features = plan.max_num_features
    extraction.sift.first_octave = plan.first_octave
    extraction.sift.peak_threshold = plan.peak_threshold
    groups = _camera_groups(images)
    done = 0
    batch = _extraction_batch(len(images), opts.num_threads)
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


def _extraction_batch(n: int, num_threads: int) -> int:
    """Photos per extraction call: several calls, so progress moves during extraction, but each
    with at least one photo per thread — COLMAP extracts a call's photos in parallel, and one photo
    a call left a core idle (12 photos of 640x480: 5.8 s one at a time, 2.8 s in one call)."""
    threads = num_threads if num_threads > 0 else (os.cpu_count() or 1)
    per_tenth = max(1, n // 10)
    return threads * math.ceil(per_tenth / threads)


@dataclass(frozen=True)
class Pairing:
    """Which photo pairs an attempt matches: a matcher, and for retrieval how wide it looks."""

    matcher: str
    neighbours: int = RETRIEVAL_NEIGHBOURS
    window: int = RETRIEVAL_WINDOW

    def pairs(self, n: int, overlap: int) -> int:
        """How many pairs it matches among ``n`` photos (for retrieval, at most)."""
        if self.matcher == "exhaustive":
            return n * (n - 1) // 2
        if self.matcher == "retrieval":
            return retrieval_pair_bound(n, self.neighbours, self.window)
        # sequential with quadratic overlap: the next `overlap` photos and those 2^k ahead
        ahead = {*range(1, overlap + 1), *(2**k for k in range(overlap))}
        return sum(1 for i in range(n) for d in ahead if i + d < n)


def _retry_pairing(n: int) -> Pairing:
    """A retry matches every pair up to :data:`EXHAUSTIVE_RETRY_AT_MOST` photos: the capture order may
    not be the overlap order, and the first attempt's retrieval may have missed a photo's neighbours.
    Above, every pair would cost hours (4 950 pairs at 100 photos), so it retrieves twice as wide."""
    if n <= EXHAUSTIVE_RETRY_AT_MOST:
        return Pairing("exhaustive")
    return Pairing("retrieval", RETRY_NEIGHBOURS, RETRY_WINDOW)


def _match(db_path: Path, pairing: Pairing, n: int, opts: SfmOptions, progress: ProgressHook) -> int:
    """Match and verify the chosen pairs; returns how many pairs were matched."""
    matcher = pairing.matcher
    progress("match", 0.0, f"{matcher} matching")
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = opts.num_threads
    if matcher == "exhaustive":
        pycolmap.match_exhaustive(db_path, matching_options=matching, device=pycolmap.Device.cpu)
    elif matcher == "retrieval":
        pairs = match_retrieval(db_path, matching, pairing.neighbours, pairing.window)
        progress("match", 1.0, f"retrieval matching done: {pairs} pairs")
        return pairs
    else:
        sequential = pycolmap.SequentialPairingOptions()
        sequential.overlap = opts.sequential_overlap
        sequential.quadratic_overlap = True
        sequential.loop_detection = False  # needs a vocabulary tree download
        pycolmap.match_sequential(
            db_path, matching_options=matching, pairing_options=sequential, device=pycolmap.Device.cpu
        )
    progress("match", 1.0, f"{matcher} matching done")
    return pairing.pairs(n, opts.sequential_overlap)


def _map(
    db_path: Path, job: JobDir, sparse: Path, rung: Rung, n: int, opts: SfmOptions, progress: ProgressHook
) -> dict[int, pycolmap.Reconstruction]:
    progress("map", 0.0, f"{rung.mapper} mapping")
    sparse.mkdir(parents=True, exist_ok=True)
    if rung.mapper == "global":
        global_opts = pycolmap.GlobalPipelineOptions()
        # One thread: with several, COLMAP's global mapper is not reproducible even with a fixed
        # seed, and once converged to a self-consistent but wrong solution (README, SfM choices).
        global_opts.num_threads = 1 if rung.name != "planned" else opts.num_threads
        global_opts.random_seed = rung.seed
        recs = pycolmap.global_mapping(db_path, job.images, sparse, options=global_opts)
    else:
        inc = incremental_options(rung.relaxed_init, opts.num_threads, rung.seed)
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
    """The quality gate: a short reason the model is not good enough (for the attempt's record),
    or None. :func:`_explain` words the final verdict for the user."""
    if rec is None or rec.num_reg_images() == 0:
        return f"0 of {total} photos placed"
    reg = rec.num_reg_images()
    if reg / total < opts.min_registered_fraction or reg < 2:
        return f"{reg} of {total} photos placed (at least {opts.min_registered_fraction:.0%} needed)"
    if rec.num_points3D() < opts.min_points:
        return f"{rec.num_points3D()} 3D points (at least {opts.min_points} needed)"
    err = rec.compute_mean_reprojection_error()
    if err > opts.max_reprojection_error:
        return f"mean reprojection error {err:.2f} px (limit {opts.max_reprojection_error:.2f})"
    for cam in rec.cameras.values():
        ratio = cam.mean_focal_length() / max(cam.width, cam.height)
        if not MIN_FOCAL_RATIO <= ratio <= MAX_FOCAL_RATIO:
            # A degenerate solve: 8 000-12 000 px on 1 000 px photos was seen on EXIF-less photos.
            f = cam.mean_focal_length()
            return f"focal length {f:.0f} px on {cam.width}x{cam.height} photos is implausible"
    return None


def _explain(
    rec: pycolmap.Reconstruction | None,
    total: int,
    opts: SfmOptions,
    db_path: Path,
    source_of: dict[str, str],
    tried: int,
    skipped: int = 0,
) -> tuple[str, str]:
    """The user-facing reason and whose fix it is: ``"photos"`` when the photos themselves do not
    overlap or lack texture (a photo that matches no other is something no retry can place), else
    ``"reconstruction"`` — the photos match, SharpML failed — and then no advice to re-shoot. When
    retries were skipped for time, nobody knows whether they would have worked: never the photos'.
    Above :data:`EXHAUSTIVE_RETRY_AT_MOST` photos "matches no other" means none of the pairs the wide
    retrieval chose: a photo's 16 most similar photos and its 6 successors."""
    matched = matched_photos(db_path)
    ours = (
        f"after {tried} automatic attempt{'s' if tried != 1 else ''}; this is a limitation of SharpML, "
        "not of your photos"
    )
    if skipped:
        return (
            f"reconstruction failed on these photos: {_gate(rec, total, opts)} after {tried} automatic "
            f"attempt{'s' if tried != 1 else ''}; {skipped} more did not fit in the time budget "
            f"({opts.time_budget_s:.0f} s), so this is not a verdict on your photos",
            "reconstruction",
        )
    reg = rec.num_reg_images() if rec is not None else 0
    if reg == 0:
        isolated = [name for name, k in matched.items() if k == 0]
        if len(isolated) * 2 >= total or not any(matched.values()):
            return (
                f"none of the {total} photos could be placed together: they share too few features "
                "with each other; take overlapping photos of a textured subject, moving around it",
                "photos",
            )
        return (
            f"reconstruction failed on these photos: none of the {total} could be placed {ours}",
            "reconstruction",
        )
    placed = {img.name for img in rec.images.values() if img.has_pose}
    unplaced = [name for name in sorted(source_of) if name not in placed]
    shown = name_list([source_of[name] for name in unplaced])
    if reg / total < opts.min_registered_fraction or reg < 2:
        if all(matched.get(name, 0) == 0 for name in unplaced):
            return (
                f"only {reg} of {total} photos could be placed: {shown} share no features with the "
                "others; take more overlapping photos of the same subject",
                "photos",
            )
        return (
            f"reconstruction failed on these photos: only {reg} of {total} could be placed although "
            f"they match each other ({shown} not placed) {ours}",
            "reconstruction",
        )
    if rec.num_points3D() < opts.min_points:
        if keypoints_per_photo(db_path) < LOW_TEXTURE_KEYPOINTS:
            return (
                f"only {rec.num_points3D()} 3D points were found (at least {opts.min_points} are "
                "needed): the photos show too little texture; photograph a subject with more texture, "
                "in good light",
                "photos",
            )
        return (
            f"reconstruction failed on these photos: only {rec.num_points3D()} 3D points were found "
            f"(at least {opts.min_points} are needed) {ours}",
            "reconstruction",
        )
    err = rec.compute_mean_reprojection_error()
    if err > opts.max_reprojection_error:
        return (
            f"the reconstruction is inconsistent (mean reprojection error {err:.2f} px, limit "
            f"{opts.max_reprojection_error:.2f}); avoid moving subjects and blurry photos",
            "photos",
        )
    what = _gate(rec, total, opts) or "the attempts disagreed on the cameras"
    return f"reconstruction failed on these photos: {what} {ours}", "reconstruction"


def _undistort(job: JobDir, sparse_model: Path, opts: SfmOptions) -> None:
    """Undistort to PINHOLE images in the trainers' layout: scene/images, scene/sparse/0/*.bin, with no
    image much larger than ``opts.scene_image_size`` on its longest side (at most 1 % more).

    Photos larger than that are first decoded at reduced size (JPEG's DCT scaling, :func:`_downscaled`)
    with their cameras rescaled to match, then undistorted: 3x faster on 12 MP photos than undistorting
    at full size, where COLMAP's own ``max_image_size`` is slower still (it warps at full size and then
    resamples)."""
    scene = job.scene
    if scene.exists():
        shutil.rmtree(scene)
    staging = job.colmap / ".undistort-input"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        model, images = _downscaled(sparse_model, job.images, staging, opts)
        pycolmap.undistort_images(scene, model, images, output_type="COLMAP", num_threads=opts.num_threads)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
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


def _downscaled(sparse_model: Path, images: Path, staging: Path, opts: SfmOptions) -> tuple[Path, Path]:
    """The model and image directory to undistort: unchanged when every camera fits
    ``opts.scene_image_size`` plus a margin (or it is 0), else a copy in ``staging`` with the larger
    cameras rescaled and their photos resized to exactly the rescaled size (intrinsics and pixels agree)."""
    # Undistortion trims a pixel or two at the border: a small margin keeps the scene at least the
    # training size, so the trainer still gets exactly the size it asked for (it downscales the rest).
    limit = (
        opts.scene_image_size + max(2, math.ceil(opts.scene_image_size / 100)) if opts.scene_image_size else 0
    )
    rec = pycolmap.Reconstruction(sparse_model)
    sizes: dict[int, tuple[int, int]] = {}
    for cam_id, cam in rec.cameras.items():
        scale = limit / max(cam.width, cam.height) if limit else 1.0
        if scale < 1.0:
            sizes[cam_id] = (max(1, round(cam.width * scale)), max(1, round(cam.height * scale)))
            cam.rescale(*sizes[cam_id])
    if not sizes:
        return sparse_model, images
    (staging / "model").mkdir(parents=True)
    rec.write(staging / "model")

    def resize(name: str, size: tuple[int, int] | None) -> None:
        dest = staging / "images" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if size is None:
            shutil.copyfile(images / name, dest)
            return
        with Image.open(images / name) as im:
            im.draft("RGB", size)  # JPEG: decode at 1/2, 1/4 or 1/8 scale, no smaller than asked
            small = im.convert("RGB").resize(size, Image.Resampling.BILINEAR)
        jpeg = dest.suffix.lower() in (".jpg", ".jpeg")
        small.save(dest, **({"quality": 95} if jpeg else {}))

    workers = opts.num_threads if opts.num_threads > 0 else (os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow decodes and resizes without the GIL
        done = [pool.submit(resize, img.name, sizes.get(img.camera_id)) for img in rec.images.values()]
        for future in done:
            future.result()
    return staging / "model", staging / "images"


def points_of(rec: pycolmap.Reconstruction) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float positions and (N, 3) uint8 colours of a reconstruction's 3D points."""
    pts = list(rec.points3D.values())
    xyz = np.array([p.xyz for p in pts], dtype=np.float64).reshape(-1, 3)
    rgb = np.array([p.color for p in pts], dtype=np.uint8).reshape(-1, 3)
    return xyz, rgb


@dataclass
class _Attempt:
    """One rung as it ran: its model (the largest it produced) and its record for result.json."""

    index: int
    rung: Rung
    db: Path
    sparse: Path
    model_id: int | None = None
    model: pycolmap.Reconstruction | None = None
    passed: bool = False
    trusted: bool = False
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def registered(self) -> int:
        return self.model.num_reg_images() if self.model is not None else 0

    @property
    def score(self) -> tuple[int, int, int, int]:
        contradicted = self.record.get("outcome", "").startswith("rejected: disagrees")
        points = self.model.num_points3D() if self.model is not None else 0
        return (int(self.passed and not contradicted), int(not contradicted), self.registered, points)


def _check(
    attempt: _Attempt,
    earlier: Sequence[_Attempt],
    track: dict[str, np.ndarray],
    job: JobDir,
    n: int,
    opts: SfmOptions,
    progress: ProgressHook,
) -> tuple[bool, bool, dict[str, Any]]:
    """(agrees with something, contradicted by everything that can judge, the figures). Judges:
    the GPS track and the earlier attempts' models; a global model nothing can judge is mapped
    again with another seed and must agree with itself. One agreeing judge is enough: GPS can be
    poor, and a partial model from a failed attempt can be the wrong one."""
    assert attempt.model is not None
    checks: dict[str, Any] = {}
    verdicts = []
    gps = compare_gps(attempt.model, track)
    if gps is not None:
        checks["gps"] = gps
        verdicts.append(gps["fraction"] <= GPS_AGREE_FRACTION)
    diffs = {}
    for other in earlier:
        if other.model is not None and other.registered >= MIN_COMMON:
            diff = compare(attempt.model, other.model)
            if diff is not None:
                diffs[other.rung.name] = diff
    if not diffs and not verdicts and attempt.rung.mapper == "global" and attempt.index > 0:
        again = Rung(
            f"{attempt.rung.name}-check", attempt.rung.features, "global", seed=attempt.rung.seed + 1
        )
        recs = _map(
            attempt.db,
            job,
            attempt.sparse.with_name(attempt.sparse.name + "-check"),
            again,
            n,
            opts,
            progress,
        )
        if recs:
            diff = compare(attempt.model, max(recs.values(), key=lambda r: r.num_reg_images()))
            if diff is not None:
                diffs[again.name] = diff
    if diffs:
        checks["attempts"] = diffs
    verdicts += [agrees(d) for d in diffs.values()]
    return any(verdicts), bool(verdicts) and not any(verdicts), checks


def _prepare(out: Path) -> None:
    out.mkdir(exist_ok=True)
    for stale in out.glob("database*.db*"):
        stale.unlink()
    for stale in ("result.json", PREVIEW_SPLAT, PREVIEW_SPZ):
        (out / stale).unlink(missing_ok=True)
    for stale_dir in ("sparse", "scene", "attempts"):
        if (out / stale_dir).exists():
            shutil.rmtree(out / stale_dir)


def reconstruct(
    job: JobDir, options: SfmOptions | None = None, progress: ProgressHook = no_progress
) -> SfmResult:
    """Run SfM for a stored job, climbing the fallback ladder while the gate fails and time allows.
    Always writes ``result.json``; raises :class:`SfmError` only if COLMAP itself fails on the first
    attempt. Re-running starts from scratch, so a retried pod is safe."""
    opts = options or SfmOptions()
    images = load_manifest(job)
    n = len(images)
    out = job.colmap
    _prepare(out)
    sparse = out / "sparse"
    matcher, mapper = opts.resolved_matcher(n), opts.resolved_mapper()
    plan = plan_features([(img.width, img.height) for img in images], opts.max_image_size, opts.first_octave)
    if opts.max_num_features is not None and opts.max_num_features != plan.max_num_features:
        plan = replace(plan, max_num_features=opts.max_num_features)
    ladder = rungs(plan, mapper) if opts.retry else [Rung("planned", plan, mapper)]
    result = SfmResult(
        ok=False, reason=None, total=n, matcher=matcher, mapper=mapper, colmap_version=pycolmap.__version__
    )
    result.features = plan.to_json()
    progress("extract", 0.0, f"features: {plan.why}")
    timings = result.timings
    source_of = {img.name: img.source_name for img in images}
    track = gps_local({img.name: img.gps for img in images if img.gps})
    t_all = time.monotonic()

    def timed(stage: str, fn, *args):  # type: ignore[no-untyped-def]
        t0 = time.monotonic()
        try:
            return fn(*args)
        finally:
            timings[stage] = round(timings.get(stage, 0.0) + time.monotonic() - t0, 3)

    dbs: dict[tuple[int, int, float], Path] = {}
    first_stages: dict[str, float] = {}  # the planned attempt's seconds by stage, and its pairs
    attempts: list[_Attempt] = []
    chosen: _Attempt | None = None
    for k, rung in enumerate(ladder):
        elapsed = time.monotonic() - t_all
        record: dict[str, Any] = {"name": rung.name, "purpose": rung.purpose, "mapper": rung.mapper}
        record["features"] = rung.features.to_json()
        record["relaxed_init"] = rung.relaxed_init
        new_db = rung.features.key not in dbs
        pairing = Pairing(matcher) if k == 0 else _retry_pairing(n)
        if k > 0:
            estimate = _retry_estimate(
                first_stages,
                new_db,
                pairing.pairs(n, opts.sequential_overlap),
                # at most 4x: 4 096 -> 16 384 on large photos (a tiny asked-for budget is no guide)
                min(4.0, rung.features.max_num_features / plan.max_num_features),
                timings.get("map", 0.0),
            )
            if elapsed + estimate > RETRY_SHARE_OF_BUDGET * opts.time_budget_s:
                record["outcome"] = (
                    f"skipped (time): about {estimate:.0f} s would pass the {opts.time_budget_s:.0f} s budget"
                )
            elif not new_db and _only_isolated_unplaced(attempts, dbs[rung.features.key], source_of):
                record["outcome"] = (
                    "skipped (no use): the photos not placed match no other photo in these features, "
                    "so mapping them again cannot place them"
                )
            if "outcome" in record:
                result.attempts.append(record)
                progress("retry", k / len(ladder), f"attempt {k + 1} ({rung.name}) {record['outcome']}")
                continue
            before = attempts[-1].record.get("gate") or "it disagreed with another attempt"
            progress(
                "retry",
                k / len(ladder),
                f"attempt {k + 1}/{len(ladder)}: {rung.name} ({rung.purpose}), because {before}",
            )
        hook = progress if k == 0 else _retry_progress(progress, k, len(ladder), rung.name)
        t0 = time.monotonic()
        db_path = dbs.get(rung.features.key) or (out / ("database.db" if k == 0 else f"database-{k}.db"))
        attempt = _Attempt(k, rung, db_path, out / "attempts" / str(k))
        try:
            if new_db:
                cams = timed("extract", _extract, job, db_path, images, opts, rung.features, hook)
                result.cameras = result.cameras or cams
                pairs = timed("match", _match, db_path, pairing, n, opts, hook)
                dbs[rung.features.key] = db_path
                record["matcher"] = pairing.matcher
                record["pairs"] = pairs
            recs = timed("map", _map, db_path, job, attempt.sparse, rung, n, opts, hook)
            if k == 0:
                first_stages.update(timings, pairs=pairs)
        except Exception as exc:
            if k == 0:
                result.reason = f"structure from motion failed: {exc}"
                result.write(job.sfm_result)
                raise SfmError(result.reason) from exc
            record["outcome"] = f"error: {exc}"
            record["seconds"] = round(time.monotonic() - t0, 3)
            result.attempts.append(record)
            continue
        if recs:
            attempt.model_id, attempt.model = max(recs.items(), key=lambda kv: kv[1].num_reg_images())
        gate = _gate(attempt.model, n, opts)
        attempt.passed = gate is None
        record["models"] = len(recs)
        record["registered"] = attempt.registered
        record["points"] = attempt.model.num_points3D() if attempt.model is not None else 0
        if attempt.model is not None and attempt.registered:
            record["mean_reprojection_error"] = round(attempt.model.compute_mean_reprojection_error(), 4)
        record["gate"] = gate
        if attempt.passed and attempt.model is not None:
            agree, contradicted, checks = _check(attempt, attempts, track, job, n, opts, hook)
            record["checks"] = checks
            # The planned attempt is trusted as before (the checks are recorded); a fallback's
            # model must not be contradicted by everything that can judge it.
            attempt.trusted = k == 0 or not contradicted
            judges = [*checks.get("attempts", {}), *(["the GPS track"] if "gps" in checks else [])]
            if not attempt.trusted:
                record["outcome"] = f"rejected: disagrees with {', '.join(judges)}"
            elif contradicted:
                record["outcome"] = f"accepted (unconfirmed: disagrees with {', '.join(judges)})"
            else:
                record["outcome"] = "accepted" + (" (checked)" if agree else "")
        else:
            record["outcome"] = f"rejected: {gate}"
        record["seconds"] = round(time.monotonic() - t0, 3)
        attempts.append(attempt)
        attempt.record = record
        result.attempts.append(record)
        if attempt.passed and attempt.trusted:
            chosen = attempt
            break

    best = chosen or max(attempts, key=lambda a: a.score)
    result.attempt = best.rung.name
    if chosen is None:
        # Judged on the richest features extracted: whether photos match is a fact about them only
        # when SharpML looked hard enough.
        tried = sum(1 for r in result.attempts if not r["outcome"].startswith("skipped"))
        skipped = sum(1 for r in result.attempts if r["outcome"].startswith("skipped (time)"))
        result.reason, result.failure = _explain(
            best.model, n, opts, list(dbs.values())[-1], source_of, tried, skipped
        )
    result.models = best.record.get("models", 0)
    for a in attempts:  # the chosen model becomes colmap/sparse and colmap/database.db
        if a is not best and a.db != best.db:
            a.db.unlink(missing_ok=True)
    if best.sparse.exists():
        best.sparse.rename(sparse)
    else:
        sparse.mkdir()
    if best.db != out / "database.db":
        best.db.rename(out / "database.db")
    shutil.rmtree(out / "attempts", ignore_errors=True)
    model = best.model
    if chosen is not None and model is not None and opts.refine_principal_point:
        # A few bundle adjustments, each about the mapper's last: only while the budget leaves room.
        if time.monotonic() - t_all > RETRY_SHARE_OF_BUDGET * opts.time_budget_s:
            result.intrinsics = {"refined": False, "why": "skipped (time): the budget is nearly spent"}
        else:
            progress("map", 1.0, "refining the principal point")
            model, result.intrinsics = timed("refine", refine_principal_points, model, opts.num_threads)
            if result.intrinsics["refined"]:
                model.write(sparse / str(best.model_id))
    if model is not None:
        result.registered = model.num_reg_images()
        result.points = model.num_points3D()
        result.mean_reprojection_error = round(model.compute_mean_reprojection_error(), 4)
        result.mean_track_length = round(model.compute_mean_track_length(), 3)
        placed = {img.name for img in model.images.values() if img.has_pose}
        result.unregistered = [source_of[name] for name in sorted(source_of) if name not in placed]
    result.ok = chosen is not None
    if result.ok and model is not None:
        model_dir = sparse / str(best.model_id)
        if opts.write_scene:
            progress("undistort", 0.0, "undistorting photos for training")
            timed("undistort", _undistort, job, model_dir, opts)
            result.scene = "scene"
            progress("undistort", 1.0, "scene ready")
        t0 = time.monotonic()
        xyz, rgb = points_of(model)
        write_splat(job.preview_splat, preview_from_points(xyz, rgb))
        write_spz(job.preview_splat, job.preview_spz)  # what delivery serves; the operator has no numpy
        timings["preview"] = round(time.monotonic() - t0, 3)
        result.preview_splat = job.preview_splat.name
    timings["total"] = round(time.monotonic() - t_all, 3)
    result.write(job.sfm_result)
    done = "reconstruction ready" if result.ok else result.reason or ""
    if result.ok and best.index > 0:
        done += f" (attempt {best.index + 1}: {best.rung.name})"
    progress("done", 1.0, done)
    return result


def _only_isolated_unplaced(attempts: Sequence[_Attempt], db_path: Path, source_of: dict[str, str]) -> bool:
    """Whether every photo the best attempt so far left unplaced matches no other photo in
    ``db_path``: then a mapping-only retry on those features is no use (new features may be)."""
    best = max(attempts, key=lambda a: a.score)
    placed = {i.name for i in best.model.images.values() if i.has_pose} if best.model is not None else set()
    unplaced = [name for name in source_of if name not in placed]
    if not unplaced:
        return False
    matched = matched_photos(db_path)
    return all(matched.get(name, 0) == 0 for name in unplaced)


def _retry_estimate(
    first: dict[str, float], new_db: bool, pairs: int, feature_ratio: float, mapped: float
) -> float:
    """Seconds a retry should take, from the planned attempt's stages. New features (``feature_ratio``
    times the budget): extraction 4x (upsampled extraction took 3-4x as long as native on the real
    set), matching the ratio squared a pair (every keypoint against every other) times its pairs,
    mapping twice per ratio; the same features: twice all mapping so far (a global check on the
    richest features costs more than the first mapping)."""
    if not new_db:
        return 2.0 * mapped
    per_pair = first.get("match", 0.0) / max(first.get("pairs", 1), 1)
    matching = per_pair * pairs * feature_ratio**2
    return 4.0 * first.get("extract", 0.0) + matching + 2.0 * feature_ratio * first.get("map", 0.0)


def _retry_progress(progress: ProgressHook, k: int, total: int, name: str) -> ProgressHook:
    """A retry's steps reported as one "retry" stage, so the operator's bar does not run backwards."""

    def hook(stage: str, fraction: float, message: str = "") -> None:
        progress("retry", min((k + fraction) / total, 0.99), f"attempt {k + 1} ({name}), {stage}: {message}")

    return hook


def main(argv: Sequence[str] | None = None) -> int:
    """SfM pod entry point: reconstruct one job directory, report progress in ``progress.json``."""
    parser = argparse.ArgumentParser(prog="python -m sharpml.sfm", description=__doc__.split("\n")[0])
    parser.add_argument("job_dir", type=Path, help="jobs/{uuid} directory holding images/ and intake.json")
    parser.add_argument("--matcher", choices=MATCHERS, default="auto")
    parser.add_argument("--mapper", choices=MAPPERS, default="auto")
    parser.add_argument("--max-image-size", type=int, default=SfmOptions.max_image_size)
    parser.add_argument(
        "--scene-image-size",
        type=int,
        default=SfmOptions.scene_image_size,
        help="longest side of the undistorted scene images for training (0: the photos' own size)",
    )
    parser.add_argument(
        "--first-octave",
        choices=FIRST_OCTAVES,
        default="auto",
        help="SIFT's first octave (auto: -1, 2x upsampling, for photos of at most "
        f"{UPSAMPLE_AT_MOST_PX} px; 0 above)",
    )
    parser.add_argument("--no-retry", action="store_true", help="one attempt only: no fallback ladder")
    parser.add_argument(
        "--time-budget",
        type=float,
        default=None,
        help="seconds the stage may take, retries included (default: SHARPML_JOB_TIMEOUT_MS)",
    )
    parser.add_argument("--threads", type=int, default=-1, help="worker threads (-1: all cores)")
    parser.add_argument("--verbose", action="store_true", help="show COLMAP's own log")
    args = parser.parse_args(argv)
    if not args.verbose:
        pycolmap.logging.minloglevel = 2  # errors only
    job = JobDir(args.job_dir)
    opts = SfmOptions(
        matcher=args.matcher,
        mapper=args.mapper,
        max_image_size=args.max_image_size,
        scene_image_size=args.scene_image_size,
        num_threads=args.threads,
        first_octave=args.first_octave,
        retry=not args.no_retry,
        time_budget_s=args.time_budget if args.time_budget is not None else job_timeout_seconds(),
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
