"""Intake throughput on 12-megapixel JPEGs against a bare Pillow decode+encode floor, and peak
memory for a full 500 MB set.

Run: .venv/bin/python benchmarks/bench_intake.py [--photos 16] [--skip-500mb]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import peak_rss_mb, save
from PIL import Image

from sharpml.config import MB
from sharpml.intake import Upload, ingest
from sharpml.layout import DataDir
from sharpml.synthetic import default_scene, orbit_cameras, phone_exif, render

WIDTH, HEIGHT = 4032, 3024  # a 12 MP phone photo


def make_photos(folder: Path, n: int, noise: float) -> list[Path]:
    """12 MP JPEGs with phone EXIF: a rendered view upscaled, plus sensor-like noise."""
    folder.mkdir(parents=True, exist_ok=True)
    scene = default_scene()
    cams = orbit_cameras(n, WIDTH // 4, HEIGHT // 4)
    big_cams = orbit_cameras(n, WIDTH, HEIGHT)
    rng = np.random.default_rng(0)
    paths = []
    for i, cam in enumerate(cams):
        small = Image.fromarray(render(scene, cam, supersample=1))
        big = np.asarray(small.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC), np.float32)
        big += rng.normal(0, noise, big.shape).astype(np.float32)
        img = Image.fromarray(np.clip(big, 0, 255).astype(np.uint8))
        path = folder / f"IMG_{i:04d}.jpg"
        img.save(path, "JPEG", quality=95, exif=phone_exif(big_cams[i], i).tobytes())
        paths.append(path)
    return paths


def floor_rate(paths: list[Path]) -> float:
    """Images per second for the least any intake must do: decode every pixel, encode once."""
    t0 = time.perf_counter()
    for p in paths:
        with Image.open(p) as img:
            img.load()
            img.save(io.BytesIO(), "JPEG", quality=95)
    return len(paths) / (time.perf_counter() - t0)


def intake_rate(paths: list[Path], workers: int, root: Path) -> float:
    uploads = [Upload(p.name, p) for p in paths]
    t0 = time.perf_counter()
    ingest(uploads, DataDir(root), workers=workers)
    return len(paths) / (time.perf_counter() - t0)


def child_500mb(folder: str, root: str, count: int, workers: int) -> None:
    """Run in a child process so its peak RSS is the intake's alone."""
    files = sorted(Path(folder).iterdir())
    uploads = [Upload(f"IMG_{i:04d}.jpg", files[i % len(files)]) for i in range(count)]
    t0 = time.perf_counter()
    result = ingest(uploads, DataDir(Path(root)), workers=workers)
    seconds = time.perf_counter() - t0
    rss = peak_rss_mb()
    print(
        json.dumps(
            {
                "workers": workers,
                "images": len(result.images),
                "bytes_in": result.bytes_in,
                "seconds": seconds,
                "peak_rss_mb": rss,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--skip-500mb", action="store_true")
    parser.add_argument("--child-500mb", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_500mb:
        child_500mb(
            args.child_500mb[0], args.child_500mb[1], int(args.child_500mb[2]), int(args.child_500mb[3])
        )
        return
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp) / "photos", args.photos, noise=8.0)
        sizes = [p.stat().st_size for p in photos]
        results["photo"] = {"width": WIDTH, "height": HEIGHT, "mean_mb": round(np.mean(sizes) / MB, 2)}
        floor = floor_rate(photos)
        serial = intake_rate(photos, 1, Path(tmp) / "d1")
        parallel_workers = min(4, os.cpu_count() or 1)
        parallel = intake_rate(photos, parallel_workers, Path(tmp) / "d2")
        results["throughput"] = {
            "photos": len(photos),
            "floor_pillow_decode_encode_per_s": round(floor, 2),
            "intake_1_worker_per_s": round(serial, 2),
            f"intake_{parallel_workers}_workers_per_s": round(parallel, 2),
            "ratio_1_worker_to_floor": round(serial / floor, 3),
            f"ratio_{parallel_workers}_workers_to_floor": round(parallel / floor, 3),
        }
        print(results["throughput"])
        if not args.skip_500mb:
            mean = np.mean(sizes)
            count = min(100, int(500 * MB // mean))
            results["set_500mb"] = []
            for workers in (1, parallel_workers):
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child-500mb",
                        str(Path(tmp) / "photos"),
                        str(Path(tmp) / f"d-set-{workers}"),
                        str(count),
                        str(workers),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                big = json.loads(proc.stdout.strip().splitlines()[-1])
                big["set_mb"] = round(big.pop("bytes_in") / MB, 1)
                big["seconds"] = round(big["seconds"], 1)
                big["peak_rss_mb"] = round(big["peak_rss_mb"], 1)
                results["set_500mb"].append(big)
                print(big)
    save("intake", results)


if __name__ == "__main__":
    main()
