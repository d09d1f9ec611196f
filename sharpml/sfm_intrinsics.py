"""The principal point: refined by one final bundle adjustment when the photos allow it.

Why: COLMAP's mappers hold each camera's principal point at the image centre, because refining it is
ill-posed on few photos or narrow coverage. A real lens's is often tens of pixels off, and holding it
at the centre turns that into a rotation common to every camera: 0.48 degrees on a benchmark whose
true principal point is 23 px off centre (issue 14). So once a model has passed the gate, one bundle
adjustment refines the principal points with everything else, and the result is kept only when it is
believable: every camera has enough photos to constrain it, no principal point wanders implausibly far
from the centre (that is a degenerate solve, not a lens), and the reprojection error does not rise.
Otherwise the model stays as the mapper left it; either way ``result.json`` says what happened.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pycolmap

#: Fewest placed photos of a camera for its principal point to be refined.
MIN_PHOTOS_PER_CAMERA = 8
#: The largest believable offset from the image centre, as a fraction of the image's width / height.
MAX_OFFSET_FRACTION = 0.1
#: A principal point (and each of its two coordinates) is kept only if it lowers the mean
#: reprojection error by at least this fraction. Along a direction the photos do not constrain (an
#: orbit at one height: a vertical shift is nearly a common tilt) the adjustment drifts without a
#: gain: 21 px on a test scene whose true principal point is centred, 0.04 -> 1.6 degrees of error.
MIN_GAIN = 0.02


def _adjusted(rec: pycolmap.Reconstruction, refine: bool) -> tuple[pycolmap.Reconstruction, float]:
    """A copy of ``rec`` after a bundle adjustment (principal points free or held), and its error."""
    out = pycolmap.Reconstruction(rec)
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = refine
    options.print_summary = False
    pycolmap.bundle_adjustment(out, options)
    return out, out.compute_mean_reprojection_error()


def _offset(cam: pycolmap.Camera) -> tuple[float, float]:
    return cam.principal_point_x - cam.width / 2, cam.principal_point_y - cam.height / 2


def refine_principal_points(rec: pycolmap.Reconstruction) -> tuple[pycolmap.Reconstruction, dict[str, Any]]:
    """``rec`` with its principal points refined where the photos constrain them, else ``rec`` itself;
    and the record for result.json: ``refined``, ``why``, each camera's offset from the centre (px)."""
    placed = Counter(img.camera_id for img in rec.images.values() if img.has_pose)
    few = {cid: placed[cid] for cid in rec.cameras if placed[cid] < MIN_PHOTOS_PER_CAMERA}
    if few:
        why = ", ".join(f"camera {cid}: {n}" for cid, n in sorted(few.items()))
        return rec, {"refined": False, "why": f"fewer than {MIN_PHOTOS_PER_CAMERA} placed photos ({why})"}
    before = rec.compute_mean_reprojection_error()
    free, error = _adjusted(rec, True)
    record: dict[str, Any] = {
        "offsets_px": {str(c): [round(v, 2) for v in _offset(cam)] for c, cam in free.cameras.items()}
    }
    for cid, cam in free.cameras.items():
        dx, dy = _offset(cam)
        if abs(dx) > MAX_OFFSET_FRACTION * cam.width or abs(dy) > MAX_OFFSET_FRACTION * cam.height:
            why = (
                f"camera {cid}'s principal point moved ({dx:.0f}, {dy:.0f}) px from the centre, more "
                f"than {MAX_OFFSET_FRACTION:.0%} of {cam.width}x{cam.height}: a degenerate solve"
            )
            return rec, {"refined": False, "why": why, **record}
    if error > (1 - MIN_GAIN) * before:
        why = f"no gain: the mean reprojection error went {before:.4f} -> {error:.4f} px"
        return rec, {"refined": False, "why": why, **record}
    # Each coordinate must earn its place: put it back at the centre, adjust with the principal points
    # held, and keep it only if the error rises by MIN_GAIN without it.
    held: list[str] = []
    for cid in free.cameras:
        for axis in (0, 1):
            trial = pycolmap.Reconstruction(free)
            cam = trial.cameras[cid]
            centred = cam.params.copy()
            centred[cam.principal_point_idxs()[axis]] = (cam.width, cam.height)[axis] / 2
            cam.params = centred
            trial, without = _adjusted(trial, False)
            if without <= (1 + MIN_GAIN) * error:
                free, error = trial, without
                held.append(f"camera {cid} {'xy'[axis]}")
    record["offsets_px"] = {str(c): [round(v, 2) for v in _offset(cam)] for c, cam in free.cameras.items()}
    record["reprojection_error_px"] = [round(before, 4), round(error, 4)]
    if len(held) == 2 * len(free.cameras):
        return rec, {"refined": False, "why": "no coordinate lowered the error on its own", **record}
    why = f"the mean reprojection error fell {1 - error / before:.0%}" + (
        f"; held at the centre where the photos do not constrain it: {', '.join(held)}" if held else ""
    )
    return free, {"refined": True, "why": why, **record}
