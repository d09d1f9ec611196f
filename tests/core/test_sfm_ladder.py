"""The pure parts of SfM on real photos: features chosen by size, the ladder's order, and the checks
that tell a right model from a self-consistent wrong one (no COLMAP run: fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sharpml.sfm_features import (
    DEFAULT_FEATURES,
    LARGE_PHOTO_FEATURES,
    UPSAMPLE_AT_MOST_PX,
    more_features,
    plan_features,
)
from sharpml.sfm_ladder import (
    AGREE_ROTATION_DEG,
    agrees,
    compare_gps_poses,
    compare_poses,
    gps_local,
    rungs,
)
from sharpml.synthetic import gps_of, orbit_cameras, street_cameras


@pytest.mark.parametrize(
    ("sizes", "cap", "octave"),
    [
        ([(640, 480)], 1600, -1),  # an old camera: upsampled, as COLMAP does
        ([(1024, 768), (1000, 700)], 1600, -1),  # internet photos of ~1 000 px
        ([(UPSAMPLE_AT_MOST_PX, 960)], 1600, -1),
        ([(UPSAMPLE_AT_MOST_PX + 1, 961)], 1600, 0),
        ([(4032, 3024)], 1600, 0),  # 12 MP: extracted at the 1600 px cap, native scale (today's speed)
        ([(4032, 3024)], 1024, -1),  # ... unless the cap itself makes them small
    ],
)
def test_first_octave_follows_the_extracted_size(sizes, cap, octave) -> None:
    plan = plan_features(sizes, cap)
    assert plan.first_octave == octave
    assert plan.extraction_side == min(max(max(s) for s in sizes), cap)
    assert str(plan.extraction_side) in plan.why
    # The feature budget follows the size too: every feature of a small photo, the strongest 4 096
    # of a large one (matching and mapping 1.8x faster on 12 MP photos, as accurate).
    assert plan.max_num_features == (DEFAULT_FEATURES if octave == -1 else LARGE_PHOTO_FEATURES)
    assert f"at most {plan.max_num_features} features" in plan.why


def test_first_octave_override_and_bad_value() -> None:
    assert plan_features([(4032, 3024)], 1600, "-1").first_octave == -1
    assert plan_features([(640, 480)], 1600, "0").first_octave == 0
    with pytest.raises(ValueError, match="first_octave: '1' is not one of auto, -1, 0"):
        plan_features([(640, 480)], 1600, "1")


def test_ladder_tries_mapping_first_then_richer_features_then_global() -> None:
    plan = plan_features([(4032, 3024)], 1600)
    ladder = rungs(plan, "incremental")
    assert [r.name for r in ladder] == ["planned", "relaxed-init", "more-features", "global"]
    assert ladder[1].features == plan and ladder[1].relaxed_init  # reuses the planned database
    richer = more_features(plan)
    assert (
        richer is not None and richer.first_octave == -1 and richer.max_num_features > plan.max_num_features
    )
    assert ladder[2].features == ladder[3].features == richer
    assert more_features(richer) is None  # nothing richer to try twice
    assert [r.name for r in rungs(plan, "global")] == ["planned", "relaxed-init", "more-features"]


def _poses(cams) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {f"{i:04d}.jpg": (c.R, c.center) for i, c in enumerate(cams)}


def _similar(poses, scale: float, rot: np.ndarray, shift: np.ndarray):
    """The same cameras in another frame (what SfM recovers: up to a similarity)."""
    return {n: (R @ rot.T, scale * rot @ c + shift) for n, (R, c) in poses.items()}


def test_models_equal_up_to_a_similarity_agree() -> None:
    truth = _poses(orbit_cameras(10, 640, 480))
    rot = Rotation.from_euler("xyz", [20, -35, 80], degrees=True).as_matrix()
    other = _similar(truth, 0.37, rot, np.array([3.0, -1.0, 2.0]))
    diff = compare_poses(other, truth)
    assert diff is not None and diff["common"] == 10
    assert diff["centre"] < 1e-9 and diff["rotation_deg"] < 1e-6 and agrees(diff)


def test_a_wrong_solution_is_caught() -> None:
    """Camera centres right but orientations 57 degrees off (what the global mapper once returned)."""
    truth = _poses(orbit_cameras(10, 640, 480))
    tilt = Rotation.from_euler("x", 57, degrees=True).as_matrix()
    wrong = {n: (R @ tilt, c) for n, (R, c) in truth.items()}
    diff = compare_poses(wrong, truth)
    assert diff is not None and diff["rotation_deg"] == pytest.approx(57, abs=0.5)
    assert diff["rotation_deg"] > AGREE_ROTATION_DEG and not agrees(diff)
    swapped = dict(truth)  # two cameras' centres exchanged: a mirrored or folded walk
    a, b = "0002.jpg", "0007.jpg"
    swapped[a], swapped[b] = (truth[a][0], truth[b][1]), (truth[b][0], truth[a][1])
    assert not agrees(compare_poses(swapped, truth))
    assert compare_poses(dict(list(truth.items())[:3]), truth) is None  # too few in common to judge


def test_gps_track_checks_a_street_walk_and_not_a_small_object() -> None:
    cams = street_cameras(12, step=2.0)  # 22 m of street
    poses = _poses(cams)
    track = gps_local({n: gps_of(c) for n, (_, c) in poses.items()})
    rot = Rotation.from_euler("z", 40, degrees=True).as_matrix()
    diff = compare_gps_poses(_similar(poses, 0.1, rot, np.zeros(3)), track)
    assert diff is not None and diff["median_m"] < 0.05 and diff["fraction"] < 0.01
    names = list(poses)
    order = np.random.default_rng(3).permutation(len(names))  # a model that placed photos at wrong spots
    scrambled = {n: (poses[n][0], poses[names[k]][1]) for n, k in zip(names, order, strict=True)}
    assert compare_gps_poses(scrambled, track)["fraction"] > 0.15
    small = _poses(orbit_cameras(8, 640, 480))  # 14 m across: within GPS noise of each other
    assert compare_gps_poses(small, gps_local({n: gps_of(c) for n, (_, c) in small.items()})) is None


def test_gps_local_is_metres() -> None:
    local = gps_local({"a": gps_of(np.array([0.0, 0.0, 1.0])), "b": gps_of(np.array([30.0, 40.0, 1.0]))})
    assert math.dist(local["a"], local["b"]) == pytest.approx(50.0, rel=1e-4)
