"""The principal point: refined by one final bundle adjustment when the photos allow it.

Why: COLMAP's mappers hold each camera's principal point at the image centre, because refining it is
ill-posed on few photos or narrow coverage. A real lens's is often tens of pixels off, and holding it
at the centre turns that into a rotation common to every camera: 0.48 degrees on a benchmark whose
true principal point is 23 px off centre (issue 14). So once a model has passed the gate, one bundle
adjustment refines the principal points with everything else, and the result is kept only when it is
believable: every camera has enough photos to constrain it, no principal point wanders implausibly far
from the centre (that is a degenerate solve, not a lens), and the reprojection error falls by
MIN_GAIN, each coordinate kept off centre earning its share of that fall.
Otherwise the model stays as the mapper left it; either way ``result.json`` says what happened.
It runs only while the job's time budget leaves room (:func:`sharpml.sfm.reconstruct`).
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


def _adjusted(
    rec: pycolmap.Reconstruction, refine: bool, threads: int
) -> tuple[pycolmap.Reconstruction, float]:
    """A copy of ``rec`` after a bundle adjustment (principal points free or held), and its error."""
    out = pycolmap.Reconstruction(rec)
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_principal_point = refine
    options.print_summary = False
    options.ceres.solver_options.num_threads = threads
    pycolmap.bundle_adjustment(out, options)
    return out, out.compute_mean_reprojection_error()


def _offset(cam: pycolmap.Camera) -> tuple[float, float]:
    return cam.principal_point_x - cam.width / 2, cam.principal_point_y - cam.height / 2


def _centred(rec: pycolmap.Reconstruction, coordinates: list[tuple[int, int]]) -> pycolmap.Reconstruction:
    """A copy of ``rec`` with the given (camera id, axis) principal-point coordinates at the centre."""
    out = pycolmap.Reconstruction(rec)
    for cid, axis in coordinates:
        cam = out.cameras[cid]
        params = cam.params.copy()
        params[cam.principal_point_idxs()[axis]] = (cam.width, cam.height)[axis] / 2
        cam.params = params
    return out


def refine_principal_points(
    rec: pycolmap.Reconstruction, threads: int = -1
) -> tuple[pycolmap.Reconstruction, dict[str, Any]]:
    """``rec`` with its principal points refined where the photos constrain them, else ``rec`` itself;
    and the record for result.json: ``refined``, ``why``, each camera's offset from the centre (px).
    Costs 2 + 2 x cameras bundle adjustments at most."""
    placed = Counter(img.camera_id for img in rec.images.values() if img.has_pose)
    few = {cid: placed[cid] for cid in rec.cameras if placed[cid] < MIN_PHOTOS_PER_CAMERA}
    if few:
        why = ", ".join(f"camera {cid}: {n}" for cid, n in sorted(few.items()))
        return rec, {"refined": False, "why": f"fewer than {MIN_PHOTOS_PER_CAMERA} placed photos ({why})"}
    before = rec.compute_mean_reprojection_error()
    free, free_error = _adjusted(rec, True, threads)

    def offsets(model: pycolmap.Reconstruction) -> dict[str, list[float]]:
        return {str(c): [round(v, 2) for v in _offset(cam)] for c, cam in model.cameras.items()}

    record: dict[str, Any] = {"offsets_px": offsets(free)}
    for cid, cam in free.cameras.items():
        dx, dy = _offset(cam)
        if abs(dx) > MAX_OFFSET_FRACTION * cam.width or abs(dy) > MAX_OFFSET_FRACTION * cam.height:
            why = (
                f"camera {cid}'s principal point moved ({dx:.0f}, {dy:.0f}) px from the centre, more "
                f"than {MAX_OFFSET_FRACTION:.0%} of {cam.width}x{cam.height}: a degenerate solve"
            )
            return rec, {"refined": False, "why": why, **record}
    if free_error > (1 - MIN_GAIN) * before:
        why = f"no gain: the mean reprojection error went {before:.4f} -> {free_error:.4f} px"
        return rec, {"refined": False, "why": why, **record}
    # Each coordinate must earn its place on its own: put back at the centre (the rest as solved) and
    # adjusted with the principal points held, the error must rise by MIN_GAIN over the free solve's.
    held = []
    for cid in free.cameras:
        for axis in (0, 1):
            _, without = _adjusted(_centred(free, [(cid, axis)]), False, threads)
            if without <= (1 + MIN_GAIN) * free_error:
                held.append((cid, axis))
    model, error = (free, free_error) if not held else _adjusted(_centred(free, held), False, threads)
    record["offsets_px"] = offsets(model)
    record["reprojection_error_px"] = [round(before, 4), round(error, 4)]
    if len(held) == 2 * len(free.cameras) or error > (1 - MIN_GAIN) * before:
        why = "no gain once the coordinates the photos do not constrain are held at the centre"
        return rec, {"refined": False, "why": why, **record}
    why = f"the mean reprojection error fell {1 - error / before:.0%}"
    if held:
        names = ", ".join(f"camera {cid} {'xy'[axis]}" for cid, axis in held)
        why += f"; held at the centre where the photos do not constrain it: {names}"
    return model, {"refined": True, "why": why, **record}
