"""SfM on each class of photo set that failed in issue 14: SharpML against plain COLMAP defaults.

One row per class and configuration, side by side in the same run: placed photos, points, pose
error against the known cameras (rendered sets) and wall time. The baseline is pycolmap at COLMAP's
default options (exhaustive matching, incremental mapping, 3200 px, first octave -1, one attempt);
"sharpml" is the default pipeline (features by size, the fallback ladder); "sharpml-before"
(optional) is what SharpML did before (first octave 0, one attempt). Classes:

- ``small-640``: 12 photos of 640x480 (an old camera), phone EXIF;
- ``web-1000``: 9 photos of ~1 000 px from three cameras of different focal lengths, no EXIF;
- ``mm-focal``: 10 photos of 640x480 whose EXIF has the focal length in mm and the focal-plane
  resolution but no 35 mm equivalent;
- ``street``: 12 photos of 640x480 walking forward down a street, with GPS;
- ``orbit-1024-N``: the earlier speed rows (``--sizes``), N photos of 1024x768 around the scene;
- ``real-et``: the real set ``../shared/data/sfm-bundler-et`` (9 photos, 640x480, mm focal length
  only) when present, or any folder given with ``--real`` (no ground truth: no pose error);
- ``large-DIR``: a set of large photos given with ``--large DIR`` (``DIR/photos`` and, when present,
  ``DIR/ground_truth.json``, as ``sharpml sample-photos`` or ``bench_first_view.py`` render them):
  the 12 MP phone-photo row, where SharpML's size-based choices differ most from COLMAP's.

Undistortion is left out of both: it costs the same whatever the choices.

Run: .venv/bin/python benchmarks/bench_sfm.py [--classes ...] [--sizes 30] [--real DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import pycolmap
from common import pose_error, save

from sharpml.config import FULL_FRAME_DIAGONAL_MM
from sharpml.intake import ingest, select_uploads
from sharpml.layout import DataDir
from sharpml.sfm import SfmOptions, reconstruct
from sharpml.synthetic import (
    Camera,
    orbit_cameras,
    street_cameras,
    street_scene,
    write_dataset,
)

CONFIGS = {
    "baseline": SfmOptions.colmap_defaults(write_scene=False),
    "sharpml": SfmOptions(write_scene=False),
    # What SharpML did before issue 14: first octave 0 whatever the size, one attempt.
    "sharpml-before": SfmOptions(first_octave="0", retry=False, write_scene=False),
    # Pair selection alone, everything else SharpML's: every pair against retrieval (sharpml.sfm_pairs).
    "sharpml-exhaustive": SfmOptions(matcher="exhaustive", write_scene=False),
    "sharpml-retrieval": SfmOptions(matcher="retrieval", write_scene=False),
}
REAL_SET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sfm-bundler-et"
CLASSES = ("small-640", "web-1000", "mm-focal", "street")


def render(name: str, out: Path):  # type: ignore[no-untyped-def]
    """The rendered set of one class (photos and ground truth)."""
    if name == "small-640":
        return write_dataset(out, 12, 640, 480)
    if name == "web-1000":
        kinds = [((1000, 750), 24.0), ((1024, 683), 35.0), ((960, 720), 28.0)]
        cams = []
        for i, c in enumerate(orbit_cameras(9, 1000, 750)):
            (w, h), f35 = kinds[i % 3]
            cams.append(Camera(w, h, f35 / FULL_FRAME_DIAGONAL_MM * math.hypot(w, h), c.R, c.t))
        return write_dataset(out, 9, cameras=cams, exif="none", supersample=1)
    if name == "mm-focal":
        return write_dataset(out, 10, 640, 480, exif="mm")
    if name == "street":
        cams = street_cameras(12, 640, 480, step=2.5)
        return write_dataset(out, 12, scene=street_scene(), cameras=cams, gps=True, supersample=1)
    if name.startswith("orbit-1024-"):
        return write_dataset(out, int(name.rsplit("-", 1)[1]), 1024, 768)
    raise ValueError(name)


def run(set_name: str, photos: Path, truth: Path | None, config: str, tmp: Path) -> dict:
    job = ingest(select_uploads([photos]).uploads, DataDir(tmp / f"data-{set_name}-{config}")).job
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = reconstruct(job, CONFIGS[config])
    wall = time.perf_counter() - t0
    row = {
        "set": set_name,
        "config": config,
        "wall_s": round(wall, 1),
        "load_1min": round(load, 1),
        "registered": f"{result.registered}/{result.total}",
        "points": result.points,
        "ok": result.ok,
        "first_octave": result.features.get("first_octave"),
        "matcher": result.matcher,
        "timings_s": {k: result.timings.get(k) for k in ("extract", "match", "map")},
        "attempt": result.attempt,
        "attempts": [f"{a['name']}: {a['outcome']}" for a in result.attempts],
        "reason": result.reason,
    }
    return {**row, **pose_error(job, truth, result.registered)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", nargs="*", default=list(CLASSES), choices=CLASSES)
    parser.add_argument("--sizes", type=int, nargs="*", default=[], help="orbit rows of N 1024x768 photos")
    parser.add_argument(
        "--real",
        type=lambda s: Path(s) if s else None,
        default=REAL_SET,
        help="a folder of real photos (no truth); '' for none",
    )
    parser.add_argument(
        "--large", type=Path, action="append", default=[], help="a rendered set: DIR/photos (+ ground truth)"
    )
    parser.add_argument("--configs", nargs="+", default=["baseline", "sharpml"], choices=sorted(CONFIGS))
    parser.add_argument("--save-as", default="sfm", help="results/<name>.json (sfm: the README's table)")
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    rows = []
    sets = [*args.classes, *(f"orbit-1024-{n}" for n in args.sizes)]
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        todo: list[tuple[str, Path, Path | None]] = []
        if args.real and args.real.is_dir():
            todo.append((f"real-{args.real.name}", args.real, None))
        for large in args.large:
            truth = large / "ground_truth.json"
            todo.append((f"large-{large.name}", large / "photos", truth if truth.exists() else None))
        for name in sets:
            t0 = time.perf_counter()
            ds = render(name, tmp / name)
            print(f"rendered {name} in {time.perf_counter() - t0:.0f} s", flush=True)
            todo.append((name, ds.photos_dir, ds.ground_truth))
        for set_name, photos, truth in todo:
            for config in args.configs:
                row = run(set_name, photos, truth, config, tmp)
                rows.append(row)
                print(row, flush=True)
    speedups = {}
    for set_name, *_ in todo:
        by = {r["config"]: r for r in rows if r["set"] == set_name}
        if "baseline" in by and "sharpml" in by:
            speedups[set_name] = round(by["baseline"]["wall_s"] / by["sharpml"]["wall_s"], 2)
    total = {c: round(sum(r["wall_s"] for r in rows if r["config"] == c), 1) for c in args.configs}
    print("speed-up of sharpml over baseline:", speedups, "total wall:", total)
    print("load average at the end:", os.getloadavg())
    save(
        args.save_as,
        {
            "runs": rows,
            "speedup_vs_baseline": speedups,
            "total_wall_s": total,
            "load_at_end": os.getloadavg(),
        },
    )


if __name__ == "__main__":
    main()
