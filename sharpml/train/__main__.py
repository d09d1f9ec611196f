"""The training pod's entry point: ``python -m sharpml.train SCENE_DIR OUT_DIR [--steps N] ...``.

Writes ``OUT_DIR/point_cloud.ply``, ``OUT_DIR/scene.splat``, ``OUT_DIR/result.json`` (the metrics record,
:class:`sharpml.contract.TrainResult`) and ``OUT_DIR/progress.json`` (read back by
:func:`sharpml.contract.read_progress`); prints one JSON progress line per report and the record at the
end. Exit codes: 0 trained; 1 unexpected error; 2 usage; 6 the scene cannot be trained on or training
diverged (``result.json`` then holds ``ok: false`` and the reason).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sharpml.contract import EXIT_OK, EXIT_TRAINING_FAILED, EXIT_USAGE, TrainResult
from sharpml.settings import ConfigError
from sharpml.train.options import DEVICES, TrainOptions


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sharpml.train", description=__doc__.split("\n")[0])
    p.add_argument("scene_dir", type=Path, help="undistorted COLMAP scene: images/ and sparse/0/")
    p.add_argument("out_dir", type=Path, help="where the PLY, the .splat and result.json go")
    p.add_argument("--steps", type=int, help="training steps (SHARPML_TRAIN_STEPS, default 7000)")
    p.add_argument("--max-gaussians", type=int, help="cap on gaussians (SHARPML_TRAIN_MAX_GAUSSIANS)")
    p.add_argument(
        "--max-image-size", type=int, help="longest photo side used (SHARPML_TRAIN_MAX_IMAGE_SIZE)"
    )
    p.add_argument("--device", choices=DEVICES, help="SHARPML_TRAIN_DEVICE (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads (SHARPML_TRAIN_THREADS; 0: PyTorch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-every", type=int, default=8, help="hold out every n-th photo (0: none)")
    p.add_argument("--refine-start", type=int, help="first MCMC refinement step (default 500)")
    p.add_argument("--refine-every", type=int, help="MCMC refinement interval (default 100)")
    p.add_argument(
        "--preview",
        type=Path,
        help="an untrained splat to score on the same views (default: SCENE_DIR/../preview.splat if present)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        options = TrainOptions.from_env(
            steps=args.steps,
            max_gaussians=args.max_gaussians,
            max_image_size=args.max_image_size,
            device=args.device,
            threads=args.threads,
            seed=args.seed,
            test_every=args.test_every,
            refine_start=args.refine_start,
            refine_every=args.refine_every,
        )
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    preview = args.preview
    if preview is None and (args.scene_dir.parent / "preview.splat").is_file():
        preview = args.scene_dir.parent / "preview.splat"

    # torch is imported only now: `--help` and usage errors stay fast.
    from sharpml.progress import ProgressFile
    from sharpml.train.scene import SceneError
    from sharpml.train.trainer import PROGRESS_NAME, RESULT_NAME, TrainingError, train

    def log(stage: str, fraction: float, message: str = "") -> None:
        print(json.dumps({"stage": stage, "fraction": round(fraction, 4), "message": message}), flush=True)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    try:
        result = train(
            args.scene_dir,
            args.out_dir,
            options,
            preview_splat=preview,
            progress=ProgressFile(args.out_dir / PROGRESS_NAME, also=log),
        )
    except (SceneError, TrainingError) as exc:
        failed = TrainResult(ok=False, reason=str(exc))
        failed.write(args.out_dir / RESULT_NAME)
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    print(json.dumps(result.to_json()), flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
