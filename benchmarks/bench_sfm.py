"""SfM speed and accuracy: SharpML's choices against plain COLMAP defaults, in the same run.

For 10/30/60 synthetic photos at 1024x768: wall time per stage, registered fraction and camera
pose error after similarity alignment, for the baseline (exhaustive matching + incremental mapping
at COLMAP defaults) and for SharpML's defaults (matcher/mapper "auto", 1600 px cap, first octave 0).
Undistortion is left out of both: it costs the same whatever the choices.

Run: .venv/bin/python benchmarks/bench_sfm.py [--sizes 10 30 60] [--configs baseline sharpml]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pycolmap
from common import save

from sharpml.evaluation import evaluate_job
from sharpml.intake import ingest, select_uploads
from sharpml.layout import DataDir
from sharpml.sfm import SfmOptions, reconstruct
from sharpml.synthetic import write_dataset

CONFIGS = {
    "baseline": SfmOptions.colmap_defaults(write_scene=False),
    "sharpml": SfmOptions(write_scene=False),
    "sharpml-exhaustive": SfmOptions(matcher="exhaustive", write_scene=False),
    "sharpml-global": SfmOptions(mapper="global", write_scene=False),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 60])
    parser.add_argument("--configs", nargs="+", default=["baseline", "sharpml"], choices=sorted(CONFIGS))
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            t0 = time.perf_counter()
            ds = write_dataset(Path(tmp) / f"scene{n}", n, args.width, args.height)
            print(f"rendered {n} photos in {time.perf_counter() - t0:.0f} s", flush=True)
            for name in args.configs:
                job = ingest(
                    select_uploads([ds.photos_dir]).uploads, DataDir(Path(tmp) / f"data-{n}-{name}")
                ).job
                t0 = time.perf_counter()
                result = reconstruct(job, CONFIGS[name])
                wall = time.perf_counter() - t0
                row = {
                    "photos": n,
                    "config": name,
                    "matcher": result.matcher,
                    "mapper": result.mapper,
                    "wall_s": round(wall, 1),
                    "extract_s": result.timings.get("extract"),
                    "match_s": result.timings.get("match"),
                    "map_s": result.timings.get("map"),
                    "registered": f"{result.registered}/{result.total}",
                    "points": result.points,
                    "ok": result.ok,
                }
                if result.registered >= 3:
                    acc = evaluate_job(job, ds.ground_truth)
                    row["centre_error_mean_pct"] = round(acc.mean_error * 100, 3)
                    row["centre_error_max_pct"] = round(acc.max_error * 100, 3)
                    row["rotation_error_deg"] = round(acc.mean_rotation_error_deg, 3)
                rows.append(row)
                print(row, flush=True)
    speedups = {}
    for n in args.sizes:
        by = {r["config"]: r for r in rows if r["photos"] == n}
        if "baseline" in by and "sharpml" in by:
            speedups[str(n)] = round(by["baseline"]["wall_s"] / by["sharpml"]["wall_s"], 2)
    print("speed-up of sharpml over baseline:", speedups)
    save("sfm", {"width": args.width, "height": args.height, "runs": rows, "speedup_vs_baseline": speedups})


if __name__ == "__main__":
    main()
