"""SIFT settings chosen from the photos' size: the one home of those thresholds.

Why: with SIFT's first octave 0 (no 2x upsampling) a 640x480 photo yields 430-690 keypoints and a
1 000 px photo 1 450-2 840, too few to place every photo of real sets that COLMAP's default (first
octave -1) places whole (issue 14: 9/11, 2/29 and 3/10 placed). On 12 MP photos, capped at 1600 px,
first octave 0 gave the same pose accuracy at a third of the time (benchmarks/bench_sfm.py), so
large photos keep it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: Photos whose longest side, as extracted (after the max-image-size cap), is at most this many
#: pixels get COLMAP's 2x upsampling (first octave -1); larger ones start at the native scale.
UPSAMPLE_AT_MOST_PX = 1280
#: Keypoints kept per photo: up to 8 192 on photos of at most UPSAMPLE_AT_MOST_PX (COLMAP's default;
#: upsampled small photos need every one), the 4 096 strongest on larger ones. On 30 rendered 12 MP
#: photos textured like real ones (7 700 keypoints a photo at 8 192), 4 096 took the first view from
#: 79.0 s to 58.5 s (matching and mapping each 1.8x faster), every photo placed, centre error 0.005 %
#: of the scene against 0.004 % (benchmarks/results/first_view-budget.json). Retries take 16 384.
DEFAULT_FEATURES = 8192
LARGE_PHOTO_FEATURES = 4096
MORE_FEATURES = 16384
#: SIFT's peak threshold: COLMAP's default, and the lower one a "more features" retry uses so that
#: weakly textured small photos yield more keypoints.
DEFAULT_PEAK_THRESHOLD = 0.02 / 3
LOW_PEAK_THRESHOLD = 0.004
#: Accepted values of the first-octave override ("auto": chosen by size).
FIRST_OCTAVES = ("auto", "-1", "0")


@dataclass(frozen=True)
class FeaturePlan:
    """The SIFT settings of one extraction, and why they were chosen (recorded in result.json)."""

    first_octave: int
    max_num_features: int
    peak_threshold: float
    #: Longest side of the largest photo as extracted (after the cap), in pixels.
    extraction_side: int
    why: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_threshold"] = round(self.peak_threshold, 5)
        return d

    @property
    def key(self) -> tuple[int, int, float]:
        """Two plans with one key extract the same features (so a retry may reuse the database)."""
        return (self.first_octave, self.max_num_features, round(self.peak_threshold, 6))


def extraction_side(sizes: Sequence[tuple[int, int]], max_image_size: int) -> int:
    """Longest side the extractor sees: the largest photo's, capped at ``max_image_size``."""
    longest = max((max(w, h) for w, h in sizes), default=0)
    return min(longest, max_image_size)


def plan_features(
    sizes: Sequence[tuple[int, int]], max_image_size: int, first_octave: str = "auto"
) -> FeaturePlan:
    """The first attempt's features: first octave by size unless overridden (``"-1"`` / ``"0"``)."""
    if first_octave not in FIRST_OCTAVES:
        raise ValueError(f"first_octave: {first_octave!r} is not one of {', '.join(FIRST_OCTAVES)}")
    side = extraction_side(sizes, max_image_size)
    if first_octave != "auto":
        octave, why = int(first_octave), f"first octave {first_octave} as asked"
    elif side <= UPSAMPLE_AT_MOST_PX:
        octave = -1
        why = f"photos of {side} px (at most {UPSAMPLE_AT_MOST_PX}): upsampled 2x (first octave -1)"
    else:
        octave = 0
        why = f"photos of {side} px (over {UPSAMPLE_AT_MOST_PX}): native scale (first octave 0)"
    budget = DEFAULT_FEATURES if side <= UPSAMPLE_AT_MOST_PX else LARGE_PHOTO_FEATURES
    return FeaturePlan(octave, budget, DEFAULT_PEAK_THRESHOLD, side, f"{why}, at most {budget} features")


def more_features(plan: FeaturePlan) -> FeaturePlan | None:
    """The retry's features: upsampled, a larger budget and a lower peak threshold; None when the
    plan already is that."""
    richer = FeaturePlan(
        -1,
        max(MORE_FEATURES, plan.max_num_features),
        min(LOW_PEAK_THRESHOLD, plan.peak_threshold),
        plan.extraction_side,
        "retry: upsampled 2x, more and weaker keypoints",
    )
    return None if richer.key == plan.key else richer
