"""Splat conversion speed: 1 M gaussians, 3DGS PLY -> .splat (goal: under a second).

Run: .venv/bin/python benchmarks/bench_splat.py [--gaussians 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from common import save

from sharpml.splat import Gaussians, read_ply, to_splat, write_ply, write_splat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gaussians", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.gaussians
    g = Gaussians(
        positions=rng.normal(0, 3, (n, 3)).astype(np.float32),
        log_scales=rng.normal(-4, 1, (n, 3)).astype(np.float32),
        f_dc=rng.normal(0, 1, (n, 3)).astype(np.float32),
        opacity_logits=rng.normal(0, 2, n).astype(np.float32),
        rotations=rng.normal(0, 1, (n, 4)).astype(np.float32),
    )
    with tempfile.TemporaryDirectory() as tmp:
        ply, out = Path(tmp) / "in.ply", Path(tmp) / "out.splat"
        write_ply(ply, g)
        convert, read, total = [], [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            loaded = read_ply(ply)
            t1 = time.perf_counter()
            records = to_splat(loaded)
            t2 = time.perf_counter()
            write_splat(out, records)
            t3 = time.perf_counter()
            read.append(t1 - t0)
            convert.append(t2 - t1)
            total.append(t3 - t0)
    results = {
        "gaussians": n,
        "repeats": args.repeat,
        "read_ply_s_median": round(statistics.median(read), 3),
        "to_splat_s_median": round(statistics.median(convert), 3),
        "ply_to_splat_file_s_median": round(statistics.median(total), 3),
        "gaussians_per_s": round(n / statistics.median(total)),
    }
    print(results)
    save("splat", results)


if __name__ == "__main__":
    main()
