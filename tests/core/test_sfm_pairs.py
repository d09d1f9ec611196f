"""Pair selection by retrieval (sharpml.sfm_pairs): similar photos found, capture order kept, and the
number of pairs linear in the photo count. The matcher on a rendered scene is in test_sfm.py."""

from __future__ import annotations

import numpy as np

from sharpml.sfm_pairs import select_pairs, vlad


def _descriptors(rng: np.random.Generator, words: np.ndarray, picks: np.ndarray, n: int) -> np.ndarray:
    """SIFT-like uint8 descriptors drawn around the given ``words``."""
    base = words[rng.choice(picks, n)]
    return np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)


def test_photos_of_the_same_place_are_each_others_nearest() -> None:
    """Three places, four photos each, interleaved in capture order: VLAD groups them by place."""
    rng = np.random.default_rng(0)
    words = rng.uniform(0, 120, (90, 128))
    places = [np.arange(30 * p, 30 * p + 30) for p in range(3)]
    photos = [_descriptors(rng, words, places[i % 3], 400) for i in range(12)]
    sig = vlad(photos, words=16, seed=0)
    assert sig.shape == (12, 16 * 128)
    np.testing.assert_allclose(np.linalg.norm(sig, axis=1), 1.0, rtol=1e-5)
    pairs = set(select_pairs(sig, neighbours=3, window=0))
    same_place = {(i, j) for i in range(12) for j in range(i + 1, 12) if i % 3 == j % 3}
    assert pairs == same_place  # every photo's 3 nearest are the other 3 of its place, and nothing else


def test_capture_order_neighbours_are_always_matched() -> None:
    sig = np.eye(6, dtype=np.float32)  # nothing alike: retrieval alone would pick arbitrarily
    pairs = select_pairs(sig, neighbours=0, window=2)
    assert pairs == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (2, 4), (3, 4), (3, 5), (4, 5)]


def test_pairs_grow_linearly_with_the_photo_count() -> None:
    rng = np.random.default_rng(1)
    for n in (10, 30, 100):
        sig = rng.normal(size=(n, 64)).astype(np.float32)
        sig /= np.linalg.norm(sig, axis=1, keepdims=True)
        pairs = select_pairs(sig, neighbours=8, window=3)
        assert len(pairs) == len(set(pairs)) and all(i < j for i, j in pairs)
        assert len(pairs) <= min(n * (n - 1) // 2, n * 11)
    assert len(select_pairs(sig, neighbours=8, window=3)) < 100 * 99 // 2 / 4


def test_photos_without_features_do_not_break_the_signatures() -> None:
    rng = np.random.default_rng(2)
    photos = [rng.integers(0, 255, (200, 128), dtype=np.uint8), np.zeros((0, 128), np.uint8)]
    sig = vlad(photos, words=8)
    assert np.isfinite(sig).all() and not sig[1].any()
    assert not vlad([np.zeros((3, 128), np.uint8)], words=8).any()  # fewer features than words


def test_auto_matches_every_pair_of_a_small_set_and_retrieves_above() -> None:
    from sharpml.sfm import RETRIEVAL_ABOVE, SfmOptions

    assert SfmOptions().resolved_matcher(RETRIEVAL_ABOVE) == "exhaustive"
    assert SfmOptions().resolved_matcher(RETRIEVAL_ABOVE + 1) == "retrieval"
    assert SfmOptions(matcher="sequential").resolved_matcher(100) == "sequential"


def test_pairs_each_matcher_tries_and_the_retry_estimate() -> None:
    from sharpml.sfm import EXHAUSTIVE_RETRY_AT_MOST, Pairing, _retry_estimate, _retry_pairing
    from sharpml.sfm_pairs import RETRY_NEIGHBOURS, RETRY_WINDOW

    assert Pairing("exhaustive").pairs(30, 10) == 435
    assert Pairing("sequential").pairs(5, 2) == 4 + 3  # the next two of each
    assert Pairing("sequential").pairs(20, 3) == 19 + 18 + 17 + 16  # +1, +2, +3 and +4 (2^2)
    assert Pairing("retrieval", 8, 3).pairs(100, 10) == 1100
    assert Pairing("retrieval", 8, 3).pairs(6, 10) == 15  # never more than every pair
    assert _retry_pairing(EXHAUSTIVE_RETRY_AT_MOST) == Pairing("exhaustive")
    assert _retry_pairing(100) == Pairing("retrieval", RETRY_NEIGHBOURS, RETRY_WINDOW)
    first = {"extract": 10.0, "match": 4.0, "map": 2.0, "pairs": 100}
    # twice the features: extraction 4x, matching 4x a pair over the retry's pairs, mapping 2x twice
    assert _retry_estimate(first, True, 200, 2.0, 2.0) == 40.0 + 32.0 + 8.0
    # 4 096 -> 16 384 (a 12 MP photo's richer retry): matching 16x a pair
    assert _retry_estimate(first, True, 100, 4.0, 2.0) == 40.0 + 64.0 + 16.0
    assert _retry_estimate(first, False, 200, 1.0, 7.0) == 14.0  # the same features: all mapping so far, 2x


def test_extraction_keeps_every_thread_busy() -> None:
    from sharpml.sfm import _extraction_batch

    assert _extraction_batch(12, 2) == 2  # not one photo a call: that left a core idle
    assert _extraction_batch(100, 2) == 10 and _extraction_batch(100, 4) == 12
    assert _extraction_batch(5, 1) == 1
