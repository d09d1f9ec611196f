"""First view on 12 MP phone photos: intake -> SfM -> preview splat (what ``sharpml process`` does before
training), by pair selection, with the pose error against the photos' true cameras.

Issue 14's goal 7: 30 photos of 4032x3024 took 104 s on 2 cores (match 40.5 s of it: exhaustive,
435 pairs); the goal is 60 s at the same pose accuracy. Configurations, alternated per round so load
drifts hit each alike:

- ``exhaustive``: every pair (what ``auto`` chose for 30 photos before retrieval);
- ``retrieval``: :mod:`sharpml.sfm_pairs` (each photo's most similar photos plus its next in capture
  order);
- ``retrieval-4096``, ``retrieval-8192`` (asked by name): retrieval with a fixed feature budget (the
  budget by size gives 12 MP photos 4 096; ``first_view-budget.json`` was measured before, when
  ``retrieval`` meant 8 192, on a set rendered with ``--detail 4``: 7 700 keypoints a photo, as real
  12 MP photos have).

Both write the training scene at the training size (1600 px) and the preview, as the SfM pod does.

Run: .venv/bin/python benchmarks/bench_first_view.py [--photos DIR] [--count 30] [--rounds 1]
(without --photos it renders --count photos of 4032x3024 with their ground truth first, about 6 s a
photo on 2 cores at --supersample 1; a folder given with --photos is scored when it holds the
``ground_truth.json`` that ``sharpml sample-photos`` writes beside ``photos/``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pycolmap
from common import pose_error, save

from sharpml.intake import ingest, select_uploads
from sharpml.layout import DataDir
from sharpml.sfm import SfmOptions, reconstruct
from sharpml.sfm_ladder import keypoints_per_photo
from sharpml.synthetic import default_scene, write_dataset

CONFIGS = {
    "exhaustive": SfmOptions(matcher="exhaustive"),
    "retrieval": SfmOptions(matcher="retrieval"),
    # feature budgets for large photos (4 096 is the budget by size; matching cost grows with its square)
    "retrieval-4096": SfmOptions(matcher="retrieval", max_num_features=4096),
    "retrieval-8192": SfmOptions(matcher="retrieval", max_num_features=8192),
}


def run(photos: Path, truth: Path | None, config: str, tmp: Path) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    job = ingest(select_uploads([photos]).uploads, DataDir(tmp / f"data-{config}-{time.monotonic_ns()}")).job
    intake = time.perf_counter() - t0
    result = reconstruct(job, CONFIGS[config])
    wall = time.perf_counter() - t0
    row = {
        "config": config,
        "first_view_s": round(wall, 1),
        "intake_s": round(intake, 1),
        "timings_s": {k: result.timings.get(k) for k in ("extract", "match", "map", "undistort", "preview")},
        "load_1min": round(load, 1),
        "registered": f"{result.registered}/{result.total}",
        "points": result.points,
        "keypoints_per_photo": round(keypoints_per_photo(job.colmap / "database.db")),
        "attempts": [f"{a['name']}: {a['outcome']}" for a in result.attempts],
    }
    return {**row, **pose_error(job, truth, result.registered)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=Path, help="a folder of photos (default: render --count)")
    parser.add_argument("--count", type=int, default=30)
    parser.add_argument("--supersample", type=int, default=1)
    parser.add_argument(
        "--detail",
        type=float,
        default=1.0,
        help="texture detail of the render (3: about as many keypoints as real 12 MP photos)",
    )
    parser.add_argument("--render-to", type=Path, help="keep the rendered set here (reuse with --photos)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--configs", nargs="+", default=["exhaustive", "retrieval"], choices=list(CONFIGS))
    parser.add_argument("--save-as", default="first_view", help="results/<name>.json (first_view: README's)")
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        photos = args.photos
        if photos is None:
            t0 = time.perf_counter()
            ds = write_dataset(
                args.render_to or tmp / "render",
                args.count,
                4032,
                3024,
                supersample=args.supersample,
                scene=default_scene(detail=args.detail),
            )
            print(f"rendered {args.count} photos in {time.perf_counter() - t0:.0f} s", flush=True)
            photos = ds.photos_dir
        truth = photos.parent / "ground_truth.json"
        rows = []
        for _ in range(args.rounds):
            for config in args.configs:
                row = run(photos, truth, config, tmp)
                rows.append(row)
                print(row, flush=True)
    medians = {}
    for c in args.configs:
        medians[c] = round(statistics.median(r["first_view_s"] for r in rows if r["config"] == c), 1)
    print("median first view:", medians, "load at the end:", os.getloadavg())
    save(args.save_as, {"photos": str(photos), "runs": rows, "median_first_view_s": medians})


if __name__ == "__main__":
    main()
