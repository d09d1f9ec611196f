"""Which photo pairs to match: retrieval on the job's own features, so matching grows with N·k, not N².

Exhaustive matching tries every pair: 435 for 30 photos, 4 950 for 100, most of them photos that share
nothing. COLMAP's answer is retrieval with a vocabulary tree, but that tree is a pretrained download and
the SfM pod has no network. So the vocabulary is learnt from the job's own SIFT descriptors (k-means on
a sample, RootSIFT), each photo is summarised by its VLAD vector (residuals to the words, intra- and
power-normalised: Jégou et al., Arandjelović and Zisserman), and each photo is matched with

- its ``neighbours`` most similar photos by VLAD (cosine), which finds the overlap of an unordered set,
- and its ``window`` successors in capture order, which keeps a walk or a video chained even where the
  view changes too fast for retrieval.

Pairs: at most ``N · (neighbours + window)``, usually fewer as mutual neighbours coincide. A job whose
retrieved pairs leave it short of the quality gate is retried by the ladder with richer features,
matched exhaustively up to 60 photos and by retrieval twice as wide above
(:func:`sharpml.sfm._retry_pairing`), so retrieval costs a retry, not a rejection.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
from scipy.cluster.vq import kmeans2

#: Visual words learnt per job; descriptors sampled to learn them.
VOCABULARY_WORDS = 64
VOCABULARY_SAMPLE = 40_000
#: Each photo is matched with this many most similar photos, and this many next in capture order.
RETRIEVAL_NEIGHBOURS = 8
RETRIEVAL_WINDOW = 3
#: A retry's retrieval (the ladder's richer features, on sets too large to match every pair) looks
#: twice as wide: a photo whose 8 look-alikes missed its true neighbours gets 16.
RETRY_NEIGHBOURS = 16
RETRY_WINDOW = 6


def retrieval_pair_bound(n: int, neighbours: int, window: int) -> int:
    """At most how many pairs retrieval selects among ``n`` photos (to estimate a retry's cost)."""
    return min(n * (n - 1) // 2, n * (neighbours + window))


def _root_sift(d: np.ndarray) -> np.ndarray:
    """RootSIFT: L1-normalise, square root (Hellinger kernel); better for retrieval than raw SIFT."""
    d = d.astype(np.float32)
    d /= np.maximum(d.sum(axis=1, keepdims=True), 1e-12)
    return np.sqrt(d)


def vlad(descriptors: list[np.ndarray], words: int = VOCABULARY_WORDS, seed: int = 0) -> np.ndarray:
    """One L2-normalised VLAD row per photo (a photo without features gets a zero row)."""
    rng = np.random.default_rng(seed)
    total = sum(len(d) for d in descriptors)
    out = np.zeros((len(descriptors), words, 128), np.float32)
    if total < words:
        return out.reshape(len(descriptors), -1)
    # The vocabulary's sample, drawn photo by photo: only it and one photo at a time are ever float.
    share = min(1.0, VOCABULARY_SAMPLE / total)
    sample = np.concatenate([_root_sift(d[rng.random(len(d)) < share]) for d in descriptors if len(d)])
    centres, _ = kmeans2(sample, min(words, len(sample)), iter=10, minit="points", seed=rng)
    for i, d in enumerate(descriptors):
        if not len(d):
            continue
        f = _root_sift(d)
        # nearest word by squared distance, |c|^2 - 2 f.c (|f|^2 is the same for every word)
        label = np.argmin((centres**2).sum(axis=1) - 2.0 * f @ centres.T, axis=1)
        np.add.at(out[i], label, f - centres[label])
    out /= np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)  # intra-normalisation
    flat = out.reshape(len(descriptors), -1)
    flat = np.sign(flat) * np.sqrt(np.abs(flat))  # power normalisation
    return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)


def select_pairs(
    signatures: np.ndarray, neighbours: int = RETRIEVAL_NEIGHBOURS, window: int = RETRIEVAL_WINDOW
) -> list[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``: each photo's most similar ``neighbours`` and next ``window``."""
    n = len(signatures)
    similarity = signatures @ signatures.T
    np.fill_diagonal(similarity, -np.inf)
    pairs = {(i, j) for i in range(n) for j in range(i + 1, min(n, i + window + 1))}
    for i in range(n):
        for j in np.argsort(-similarity[i], kind="stable")[: min(neighbours, n - 1)]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def retrieval_pairs(
    db_path: Path, neighbours: int = RETRIEVAL_NEIGHBOURS, window: int = RETRIEVAL_WINDOW
) -> list[tuple[str, str]]:
    """The photo pairs to match, by name, from the features in the COLMAP database at ``db_path``
    (capture order is the stored names' order: intake numbers the photos as they came)."""
    with pycolmap.Database.open(db_path) as db:
        images = sorted(db.read_all_images(), key=lambda im: im.name)
        descriptors = [np.asarray(db.read_descriptors(im.image_id).data) for im in images]
    index = select_pairs(vlad(descriptors), neighbours, window)
    return [(images[i].name, images[j].name) for i, j in index]


def match_retrieval(
    db_path: Path,
    matching: pycolmap.FeatureMatchingOptions,
    neighbours: int = RETRIEVAL_NEIGHBOURS,
    window: int = RETRIEVAL_WINDOW,
) -> int:
    """Match the retrieved pairs (COLMAP's imported-pairs matcher, geometric verification included);
    returns how many pairs were matched."""
    pairs = retrieval_pairs(db_path, neighbours, window)
    listing = Path(db_path).with_name("retrieval-pairs.txt")
    listing.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    pairing = pycolmap.ImportedPairingOptions()
    pairing.match_list_path = str(listing)
    pycolmap.match_image_pairs(
        db_path, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu
    )
    return len(pairs)
