"""The fallback ladder of the SfM stage: what to try when the first attempt fails the quality gate,
how to tell a right model from a self-consistent wrong one, and whose fault a failure is.

Why a ladder: each failing class of real photo sets in issue 14 was placed whole by one change of
settings — small photos by 2x upsampling (more features), forward-moving sequences by a relaxed
initial pair or the global mapper — so a gate failure is first a reason to retry, not a verdict.
Why checks: COLMAP's global mapper once converged to a self-consistent solution 57 degrees wrong;
no gate sees that, but another attempt's cameras or the photos' GPS track do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pycolmap

from sharpml.sfm_features import FeaturePlan, more_features

#: Two models agree when, after a similarity alignment of their common cameras, the centres differ
#: by at most this fraction of the reference's extent and the orientations by at most this angle.
AGREE_CENTRE_FRACTION = 0.05
AGREE_ROTATION_DEG = 5.0
#: The GPS track checks a model when at least this many placed photos carry GPS spread over at
#: least this many metres (a phone's GPS is good to a few metres), within this fraction of the track.
GPS_MIN_PHOTOS = 4
GPS_MIN_EXTENT_M = 20.0
GPS_AGREE_FRACTION = 0.15
#: Fewest common cameras to compare two models.
MIN_COMMON = 4
#: A photo pair counts as matched (geometrically verified) with at least this many inlier matches.
MIN_PAIR_INLIERS = 15


@dataclass(frozen=True)
class Rung:
    """One attempt: the features it extracts (a new database when they differ from the last), the
    mapper and, for the incremental mapper, whether the initial pair is relaxed."""

    name: str
    features: FeaturePlan
    mapper: str
    relaxed_init: bool = False
    seed: int = 1
    #: Why this rung exists (shown in progress and result.json).
    purpose: str = ""


def rungs(plan: FeaturePlan, first_mapper: str) -> list[Rung]:
    """The ladder: the planned attempt, then what worked on each failing class, cheapest first."""
    ladder = [Rung("planned", plan, first_mapper, purpose="the size-based choice")]
    # Mapping-only rungs reuse the database; the one with new features extracts and matches again.
    ladder.append(
        Rung(
            "relaxed-init", plan, "incremental", relaxed_init=True, purpose="forward motion, narrow baselines"
        )
    )
    richer = more_features(plan) or plan
    if richer is not plan:
        ladder.append(Rung("more-features", richer, "incremental", purpose="small or weakly textured photos"))
    if first_mapper != "global":
        ladder.append(
            Rung("global", richer, "global", purpose="sequences the incremental mapper cannot start")
        )
    return ladder


def incremental_options(relaxed: bool, threads: int, seed: int) -> pycolmap.IncrementalPipelineOptions:
    inc = pycolmap.IncrementalPipelineOptions()
    inc.num_threads = threads
    inc.random_seed = seed
    if relaxed:
        # COLMAP's defaults want 16 degrees of triangulation angle and at most 95 % forward motion
        # in the initial pair: a walk down a street offers neither.
        m = inc.mapper
        m.init_min_tri_angle = 4.0
        m.init_max_forward_motion = 0.995
        m.init_min_num_inliers = 50
        m.init_max_reg_trials = 4
        m.abs_pose_min_num_inliers = 15
        m.abs_pose_min_inlier_ratio = 0.15
        inc.init_num_trials = 400
    return inc


# --- checking a model --------------------------------------------------------------------------------


def _poses(rec: pycolmap.Reconstruction) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Placed photos by name: (world-to-camera rotation, camera centre)."""
    out = {}
    for img in rec.images.values():
        if img.has_pose:
            pose = img.cam_from_world()
            R = pose.rotation.matrix()
            out[img.name] = (R, -R.T @ pose.translation)
    return out


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama's least-squares similarity (s, R, t) minimising ``|| dst - (s R src + t) ||`` over
    corresponding rows (also :mod:`sharpml.evaluation`'s alignment to the truth)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[2, 2] = -1
    rot = u @ sign @ vt
    var_s = (xs**2).sum() / len(src)
    scale = float(np.trace(np.diag(d) @ sign) / var_s)
    return scale, rot, mu_d - scale * rot @ mu_s


def compare(rec: pycolmap.Reconstruction, ref: pycolmap.Reconstruction) -> dict[str, float] | None:
    """How far ``rec``'s cameras are from ``ref``'s: see :func:`compare_poses`."""
    return compare_poses(_poses(rec), _poses(ref))


Poses = Mapping[str, tuple[np.ndarray, np.ndarray]]


def compare_poses(a: Poses, b: Poses) -> dict[str, float] | None:
    """How far cameras ``a`` are from ``b`` (by name: world-to-camera rotation, centre) after a
    similarity alignment: the largest centre error as a fraction of ``b``'s extent and the largest
    rotation error in degrees; None when they share fewer than :data:`MIN_COMMON` cameras."""
    common = sorted(set(a) & set(b))
    if len(common) < MIN_COMMON:
        return None
    src = np.array([a[n][1] for n in common])
    dst = np.array([b[n][1] for n in common])
    extent = float(np.linalg.norm(dst.max(0) - dst.min(0)))
    if extent <= 0:
        return None
    s, R, t = umeyama(src, dst)
    centre = float(np.max(np.linalg.norm((s * (R @ src.T)).T + t - dst, axis=1))) / extent
    rot = 0.0
    for n in common:
        # rec's world is ref's through R: a camera's rotation in ref's frame is R_rec @ R.T.
        rel = a[n][0] @ R.T @ b[n][0].T
        rot = max(rot, math.degrees(math.acos(max(-1.0, min(1.0, (np.trace(rel) - 1) / 2)))))
    return {"common": len(common), "centre": round(centre, 4), "rotation_deg": round(rot, 3)}


def agrees(diff: Mapping[str, float]) -> bool:
    return diff["centre"] <= AGREE_CENTRE_FRACTION and diff["rotation_deg"] <= AGREE_ROTATION_DEG


def gps_local(gps: Mapping[str, Sequence[float | None]]) -> dict[str, np.ndarray]:
    """GPS (lat, lon, alt) by photo name as local east/north/up metres (equirectangular: exact
    enough over a walk of a few km)."""
    if not gps:
        return {}
    lat0 = float(np.mean([g[0] for g in gps.values()]))
    lon0 = float(np.mean([g[1] for g in gps.values()]))
    r = 6_371_000.0
    out = {}
    for name, g in gps.items():
        east = math.radians(g[1] - lon0) * r * math.cos(math.radians(lat0))
        north = math.radians(g[0] - lat0) * r
        up = g[2] if len(g) > 2 and g[2] is not None else 0.0
        out[name] = np.array([east, north, up])
    return out


def compare_gps(rec: pycolmap.Reconstruction, track: Mapping[str, np.ndarray]) -> dict[str, float] | None:
    """How far ``rec``'s cameras are from the GPS track: see :func:`compare_gps_poses`."""
    return compare_gps_poses(_poses(rec), track)


def compare_gps_poses(poses: Poses, track: Mapping[str, np.ndarray]) -> dict[str, float] | None:
    """Median distance of the aligned camera centres from their GPS positions, as a fraction of the
    track's extent (and in metres); None when the track cannot check the model (too few photos
    with GPS, or all within GPS noise of each other)."""
    common = sorted(set(poses) & set(track))
    if len(common) < GPS_MIN_PHOTOS:
        return None
    dst = np.array([track[n] for n in common])
    extent = float(np.linalg.norm(dst.max(0) - dst.min(0)))
    if extent < GPS_MIN_EXTENT_M:
        return None
    src = np.array([poses[n][1] for n in common])
    s, R, t = umeyama(src, dst)
    err = np.linalg.norm((s * (R @ src.T)).T + t - dst, axis=1)
    med = float(np.median(err))
    return {"common": len(common), "median_m": round(med, 2), "fraction": round(med / extent, 4)}


# --- whose fault a failure is ---------------------------------------------------------------------------


def matched_photos(db_path: Any) -> dict[str, int]:
    """For each photo in the database: how many other photos it matches geometrically."""
    with pycolmap.Database.open(db_path) as db:
        names = {img.image_id: img.name for img in db.read_all_images()}
        counts = dict.fromkeys(names.values(), 0)
        pair_ids, geometries = db.read_two_view_geometries()
    for pair_id, geom in zip(pair_ids, geometries, strict=True):
        if len(geom.inlier_matches) < MIN_PAIR_INLIERS:
            continue
        i1, i2 = pycolmap.pair_id_to_image_pair(pair_id)
        for i in (i1, i2):
            if i in names:
                counts[names[i]] += 1
    return counts


def keypoints_per_photo(db_path: Any) -> float:
    with pycolmap.Database.open(db_path) as db:
        n = db.num_images()
        return db.num_keypoints() / n if n else 0.0


def name_list(names: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
