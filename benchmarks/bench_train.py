"""Training on CPU: steps per second and held-out PSNR after N steps at a few resolutions, and the
footprint-sparse compositor against the dense all-pairs one.

A synthetic scene (16 photos, 800x600) goes through intake and the real SfM stage once; the trainer
then runs N steps at each training resolution (longest side). Wall-clock figures depend on what else
the machine runs (the load average is recorded); CPU seconds per step (process time, all threads) are
less sensitive to it. No GPU figure is measured here.

Run: .venv/bin/python benchmarks/bench_train.py [--steps 300] [--sizes 160,320] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pycolmap
import torch
from common import peak_rss_mb, save

from sharpml import splat
from sharpml.intake import ingest, select_uploads
from sharpml.layout import DataDir
from sharpml.sfm import SfmOptions, reconstruct
from sharpml.synthetic import write_dataset
from sharpml.train.options import TrainOptions
from sharpml.train.raster import rasterize_dense, rasterize_sparse
from sharpml.train.scene import load_scene
from sharpml.train.trainer import ViewTensors, from_splat, train

OUT = Path(__file__).parent / "out" / "train"


def scene(photos: int, size: tuple[int, int], threads: int):  # type: ignore[no-untyped-def]
    if OUT.exists():
        shutil.rmtree(OUT)
    ds = write_dataset(OUT / "photos", photos, *size, formats=("jpg",))
    job = ingest(select_uploads([ds.photos_dir]).uploads, DataDir(OUT / "data")).job
    result = reconstruct(job, SfmOptions(num_threads=threads))
    assert result.ok, result.reason
    return job, result


def compositor(trained_splat: Path, scene_dir: Path, size: int, repeat: int) -> dict[str, object]:
    """Forward + backward of one view with the trained gaussians: sparse (min of ``repeat``) and dense."""
    view = ViewTensors.of(load_scene(scene_dir, max_image_size=size).train[0], torch.device("cpu"))
    model = from_splat(splat.read_splat(trained_splat), torch.device("cpu"))
    out: dict[str, object] = {"gaussians": len(model), "width": view.width, "height": view.height}
    for name, fn, n in (("sparse", rasterize_sparse, repeat), ("dense", rasterize_dense, 1)):
        times = []
        for _ in range(n):
            leaves = [
                t.clone().requires_grad_()
                for t in (model.means, model.quats, model.scales, model.opacities, model.colors)
            ]
            t0 = time.perf_counter()
            image, alpha = fn(*leaves, view.viewmat, view.K, view.width, view.height)
            (image.sum() + alpha.sum()).backward()
            times.append(time.perf_counter() - t0)
        out[f"{name}_seconds"] = round(min(times), 4)
    out["speedup"] = round(out["dense_seconds"] / out["sparse_seconds"], 1)  # type: ignore[operator]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument(
        "--sizes", default="160,320", help="training resolutions (longest side), comma-separated"
    )
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    pycolmap.logging.minloglevel = 2
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    job, sfm = scene(args.photos, (800, 600), args.threads)
    runs = []
    for size in (int(s) for s in args.sizes.split(",")):
        options = TrainOptions(
            steps=args.steps,
            max_image_size=size,
            device="cpu",
            threads=args.threads,
            refine_start=min(500, args.steps // 5),
            refine_every=min(100, max(1, args.steps // 10)),
            max_gaussians=1_000_000,
        )
        load_before = os.getloadavg()[0]
        cpu0 = time.process_time()
        result = train(job.scene, OUT / f"out-{size}", options, preview_splat=job.preview_splat)
        cpu = time.process_time() - cpu0
        run = {
            "size": size,
            "width": result.width,
            "height": result.height,
            "steps": result.steps,
            "train_seconds": result.timings["train"],
            "steps_per_second": result.steps_per_second,
            "cpu_seconds_per_step": round(cpu / result.steps, 4),
            "psnr": result.psnr,
            "ssim": result.ssim,
            "preview_psnr": result.preview_psnr,
            "preview_ssim": result.preview_ssim,
            "gaussians": result.gaussians,
            "sfm_points": sfm.points,
            "seconds_for_7000_steps_extrapolated": round(7000 / result.steps_per_second),
            "load_average_before": round(load_before, 2),
        }
        print(run, flush=True)
        runs.append(run)
    comp = compositor(OUT / f"out-{runs[0]['size']}" / "scene.splat", job.scene, runs[0]["size"], repeat=5)
    print(comp, flush=True)
    save(
        "train",
        {
            "photos": args.photos,
            "photo_size": [800, 600],
            "threads": args.threads,
            "runs": runs,
            "compositor_forward_backward": comp,
            "peak_rss_mb": round(peak_rss_mb()),
            "torch": torch.__version__,
            "gpu": "not measured: no GPU on this machine",
            "total_seconds": round(time.monotonic() - t0, 1),
            "mean_load_average": float(np.round(os.getloadavg()[0], 2)),
        },
    )


if __name__ == "__main__":
    main()
