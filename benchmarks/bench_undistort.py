"""The SfM stage's time on 12 MP phone photos, undistorting the training scene at full size (the
baseline: what the stage did before) against at the training size (``scene_image_size`` 1600, decoded
at reduced size): the same photos and job, whole SfM runs alternated so load drifts hit both alike.

Run: .venv/bin/python benchmarks/bench_undistort.py [--photos DIR] [--count 12] [--rounds 2]
(without --photos it renders --count photos of 4032x3024 first: about 10-25 s a photo on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import pycolmap
from common import save

from sharpml.intake import ingest, select_uploads
from sharpml.layout import DataDir
from sharpml.sfm import SfmOptions, reconstruct
from sharpml.synthetic import write_dataset

CONFIGS = {"full size (before)": 0, "training size 1600": 1600}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=Path, help="a folder of photos (default: render --count)")
    parser.add_argument("--count", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    with tempfile.TemporaryDirectory() as tmp:
        photos = args.photos
        if photos is None:
            photos = write_dataset(
                Path(tmp) / "render", args.count, 4032, 3024, seed=7, formats=("jpg",)
            ).photos_dir
        job = ingest(select_uploads([photos]).uploads, DataDir(Path(tmp) / "data")).job
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
        for _ in range(args.rounds):
            for name, size in CONFIGS.items():
                result = reconstruct(job, SfmOptions(scene_image_size=size))
                assert result.ok, result.reason
                runs[name].append(result.timings)
                print(name, {k: round(v, 1) for k, v in result.timings.items()}, flush=True)
        scene_mb = sum(p.stat().st_size for p in (job.scene / "images").iterdir()) / 1e6
    med = {
        name: {k: round(statistics.median(t[k] for t in ts), 1) for k in ("undistort", "total")}
        for name, ts in runs.items()
    }
    base, new = med["full size (before)"], med["training size 1600"]
    results = {
        "photos": result.total,
        "registered": result.registered,
        "rounds": args.rounds,
        "median_seconds": med,
        "undistort_speedup": round(base["undistort"] / new["undistort"], 2),
        "total_speedup": round(base["total"] / new["total"], 2),
        "scene_images_mb_at_1600": round(scene_mb, 1),
        "runs": runs,
    }
    print({k: v for k, v in results.items() if k != "runs"})
    save("undistort", results)


if __name__ == "__main__":
    main()
