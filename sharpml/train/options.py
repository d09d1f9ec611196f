"""What a training run may be asked for, and its defaults; pure Python (no torch), so the CLI, the
RunPod worker's input validation and the operator can check a request where torch is absent."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from sharpml.settings import REGISTRY, value

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainOptions:
    """One training run. The defaults are the GPU product's (gsplat's 7k-step MCMC recipe)."""

    #: Optimisation steps (one training photo each).
    steps: int = REGISTRY["SHARPML_TRAIN_STEPS"].default
    #: MCMC's cap on the number of gaussians: memory and time are bounded by it.
    max_gaussians: int = REGISTRY["SHARPML_TRAIN_MAX_GAUSSIANS"].default
    #: Photos are downscaled so that their longest side is at most this (never upscaled).
    max_image_size: int = REGISTRY["SHARPML_TRAIN_MAX_IMAGE_SIZE"].default
    device: str = REGISTRY["SHARPML_TRAIN_DEVICE"].default
    #: Every n-th photo (in name order, starting with the first) is held out for PSNR/SSIM; 0: none.
    test_every: int = 8
    seed: int = 0
    #: CPU threads for PyTorch (0: leave PyTorch's default).
    threads: int = REGISTRY["SHARPML_TRAIN_THREADS"].default
    #: MCMC refinement: from this step, every ``refine_every`` steps (gsplat: 500 and 100).
    refine_start: int = 500
    refine_every: int = 100
    #: Initial gaussian size as a fraction of the distance to the three nearest SfM points. gsplat's
    #: MCMC preset uses 0.1 on dense point clouds; SfM points from phone photos are sparse, and at 0.1
    #: most of each photo starts uncovered (measured on the test scene: held-out PSNR 7.2 dB after
    #: 300 steps, against 14.0 dB at 0.5 and 15.4 dB at 1.0; 1.0 cost 4x the CPU time of 0.5).
    init_scale: float = 0.5
    #: Weight of D-SSIM in the loss ``(1 - l) L1 + l (1 - SSIM)`` (3DGS: 0.2).
    ssim_lambda: float = 0.2

    def __post_init__(self) -> None:
        for name, setting in (
            ("steps", "SHARPML_TRAIN_STEPS"),
            ("max_gaussians", "SHARPML_TRAIN_MAX_GAUSSIANS"),
            ("max_image_size", "SHARPML_TRAIN_MAX_IMAGE_SIZE"),
            ("threads", "SHARPML_TRAIN_THREADS"),
        ):
            v, s = getattr(self, name), REGISTRY[setting]
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{name}: must be a whole number")
            if (s.minimum is not None and v < s.minimum) or (s.maximum is not None and v > s.maximum):
                raise ValueError(f"{name}: must be {s.accepts.removeprefix('integer ')}")
        if self.device not in DEVICES:
            raise ValueError(f"device: must be one of {', '.join(DEVICES)}")
        if self.test_every < 0 or self.test_every == 1:
            raise ValueError("test_every: must be 0 (no held-out views) or at least 2")
        if self.refine_start < 0 or self.refine_every < 1:
            raise ValueError("refine_start must be >= 0 and refine_every >= 1")
        if not 0.0 < self.init_scale <= 10.0:
            raise ValueError("init_scale: must be in (0, 10]")
        if not 0.0 <= self.ssim_lambda <= 1.0:
            raise ValueError("ssim_lambda: must be between 0 and 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> TrainOptions:
        """Defaults from the ``SHARPML_TRAIN_*`` settings, then ``overrides`` (those not None)."""
        env = os.environ if env is None else env
        base = {
            "steps": value(env, "SHARPML_TRAIN_STEPS"),
            "max_gaussians": value(env, "SHARPML_TRAIN_MAX_GAUSSIANS"),
            "max_image_size": value(env, "SHARPML_TRAIN_MAX_IMAGE_SIZE"),
            "device": value(env, "SHARPML_TRAIN_DEVICE"),
            "threads": value(env, "SHARPML_TRAIN_THREADS"),
        }
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)  # type: ignore[arg-type]
