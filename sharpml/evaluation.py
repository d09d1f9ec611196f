"""Pose accuracy of a reconstruction against the ground truth of a synthetic scene.

SfM recovers cameras only up to a similarity (scale, rotation, translation), so estimated camera
centres are aligned to the true ones first (Umeyama's least-squares similarity), then compared.
Errors are reported relative to the scene's size so that thresholds read as "a few per cent".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from sharpml.intake import load_manifest
from sharpml.layout import JobDir
from sharpml.sfm_ladder import umeyama
from sharpml.synthetic import load_ground_truth


@dataclass(frozen=True)
class PoseAccuracy:
    matched: int
    total: int
    #: Camera-centre errors after alignment, as fractions of the scene size.
    mean_error: float
    max_error: float
    #: Rotation errors in degrees after alignment.
    mean_rotation_error_deg: float

    def summary(self) -> str:
        return (
            f"{self.matched}/{self.total} cameras, centre error mean {self.mean_error:.2%} / "
            f"max {self.max_error:.2%} of scene size, rotation error {self.mean_rotation_error_deg:.2f} deg"
        )


def evaluate_job(job: JobDir, ground_truth: Path) -> PoseAccuracy:
    """Compare a job's reconstruction with the rendered cameras: the undistorted scene's model if
    there is one, else the largest sparse model."""
    sparse0 = job.scene / "sparse" / "0"
    if sparse0.exists():
        rec = pycolmap.Reconstruction(sparse0)
    else:
        models = [pycolmap.Reconstruction(p) for p in sorted((job.colmap / "sparse").iterdir()) if p.is_dir()]
        if not models:
            raise ValueError(f"{job.colmap}: no reconstruction to evaluate")
        rec = max(models, key=lambda r: r.num_reg_images())
    source_of = {img.name: img.source_name for img in load_manifest(job)}
    return evaluate(rec, source_of, ground_truth)


def evaluate(rec: pycolmap.Reconstruction, source_of: dict[str, str], ground_truth: Path) -> PoseAccuracy:
    """Align the registered cameras to the truth (``source_of`` maps stored to rendered names)."""
    gt = load_ground_truth(ground_truth)
    size = json.loads(Path(ground_truth).read_text())["scene_size"]
    names, est_c, est_r = [], [], []
    for image in rec.images.values():
        if not image.has_pose:
            continue
        src = source_of.get(image.name)
        if src in gt:
            names.append(src)
            est_r.append(image.cam_from_world().rotation.matrix())
            est_c.append(image.projection_center())
    if len(names) < 3:
        raise ValueError(f"only {len(names)} cameras registered; cannot align")
    true_c = np.array([gt[n].center for n in names])
    s, rot, t = umeyama(np.array(est_c), true_c)
    aligned = (s * (rot @ np.array(est_c).T)).T + t
    err = np.linalg.norm(aligned - true_c, axis=1) / size
    rot_err = []
    for n, r_est in zip(names, est_r, strict=True):
        # Estimated world->cam composed with the alignment must equal the true world->cam.
        r_delta = gt[n].R @ (r_est @ rot.T).T
        rot_err.append(np.degrees(np.arccos(np.clip((np.trace(r_delta) - 1) / 2, -1, 1))))
    return PoseAccuracy(len(names), len(gt), float(err.mean()), float(err.max()), float(np.mean(rot_err)))
