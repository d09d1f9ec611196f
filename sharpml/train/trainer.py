"""Train 3D Gaussian splats on a COLMAP scene: one code path for GPU and CPU.

The recipe is gsplat's ``simple_trainer`` with its MCMC strategy (``examples/simple_trainer.py``,
``MCMCStrategy``): gaussians start at the SfM points (opacity 0.5, size ``init_scale`` x the distance
to their three nearest neighbours, random rotations); Adam per parameter group at gsplat's learning rates (the
position rate scaled by the scene's extent and decayed exponentially to 1 % over the run); loss
``0.8 L1 + 0.2 (1 - SSIM)`` plus MCMC's opacity and scale regularisers (0.01 each); MCMC relocation,
growth up to ``max_gaussians`` and position noise (:mod:`sharpml.train.mcmc`).

Colour is the zeroth spherical-harmonic band only: the ``.splat`` that users receive keeps no
view-dependent colour, so training any would make the delivered splat look worse than its metrics.

The only device-specific call is :func:`sharpml.train.raster.rasterize`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree

from sharpml import splat, spz
from sharpml.contract import TrainResult
from sharpml.layout import TRAIN_RESULT, TRAINED_PLY, TRAINED_SPLAT, TRAINED_SPZ
from sharpml.progress import ProgressHook, no_progress
from sharpml.train.mcmc import PortableMCMC
from sharpml.train.options import TrainOptions
from sharpml.train.raster import TooManyPairs, rasterize
from sharpml.train.scene import Scene, View, load_scene

#: File names in the output directory (the job layout's: the operator fetches them under these names).
PLY_NAME, SPLAT_NAME, SPZ_NAME, RESULT_NAME = TRAINED_PLY, TRAINED_SPLAT, TRAINED_SPZ, TRAIN_RESULT
PROGRESS_NAME = "progress.json"

#: gsplat simple_trainer's learning rates (``means`` is multiplied by the scene extent).
LEARNING_RATES = {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3, "opacities": 5e-2, "colors": 2.5e-3}
#: MCMC's initialisation and regularisers (simple_trainer's MCMC configuration).
INIT_OPACITY = 0.5
OPACITY_REG = 0.01
SCALE_REG = 0.01


class TrainingError(RuntimeError):
    """Training could not produce a model (e.g. the loss stopped being finite)."""


@dataclass
class Gaussians3D:
    """Activated gaussians ready to render."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    colors: torch.Tensor

    def __len__(self) -> int:
        return len(self.means)

    def render(self, view: ViewTensors, background: torch.Tensor | None = None) -> torch.Tensor:
        image, _ = rasterize(
            self.means,
            self.quats,
            self.scales,
            self.opacities,
            self.colors,
            view.viewmat,
            view.K,
            view.width,
            view.height,
            background,
        )
        return image


@dataclass
class ViewTensors:
    name: str
    image: torch.Tensor  # (H, W, 3) uint8 on the device
    K: torch.Tensor
    viewmat: torch.Tensor
    width: int
    height: int

    @classmethod
    def of(cls, view: View, device: torch.device) -> ViewTensors:
        return cls(
            view.name,
            torch.from_numpy(view.image.copy()).to(device),
            torch.tensor(view.K, dtype=torch.float32, device=device),
            torch.tensor(view.viewmat, dtype=torch.float32, device=device),
            view.width,
            view.height,
        )

    def target(self) -> torch.Tensor:
        return self.image.float() / 255.0


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device cuda was requested but PyTorch sees no CUDA device")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


# --- the model -------------------------------------------------------------------------------------


def init_params(scene: Scene, options: TrainOptions, device: torch.device) -> dict[str, torch.nn.Parameter]:
    """Gaussians at the SfM points (at most ``max_gaussians`` of them, chosen at random)."""
    xyz, rgb = scene.points, scene.colors
    if len(xyz) > options.max_gaussians:
        keep = np.sort(
            np.random.default_rng(options.seed).choice(len(xyz), options.max_gaussians, replace=False)
        )
        xyz, rgb = xyz[keep], rgb[keep]
    n = len(xyz)
    if n >= 2:
        dist, _ = cKDTree(xyz).query(xyz, k=min(4, n))
        spacing = np.sqrt((dist[:, 1:] ** 2).mean(axis=1))
        spacing = np.maximum(spacing, np.median(spacing) * 1e-3 + 1e-9)
    else:
        spacing = np.full(n, 0.01 * scene.extent)
    g = torch.Generator().manual_seed(options.seed)
    params = {
        "means": torch.tensor(xyz, dtype=torch.float32),
        "scales": torch.log(torch.tensor(spacing * options.init_scale, dtype=torch.float32))[:, None].repeat(
            1, 3
        ),
        "quats": torch.rand((n, 4), generator=g),
        "opacities": torch.logit(torch.full((n,), INIT_OPACITY)),
        "colors": (torch.tensor(rgb, dtype=torch.float32) / 255.0 - 0.5) / splat.SH_C0,
    }
    return {k: torch.nn.Parameter(v.to(device)) for k, v in params.items()}


def activated(params: dict[str, torch.nn.Parameter]) -> Gaussians3D:
    return Gaussians3D(
        means=params["means"],
        quats=params["quats"],
        scales=torch.exp(params["scales"]),
        opacities=torch.sigmoid(params["opacities"]),
        colors=(0.5 + splat.SH_C0 * params["colors"]).clamp(0.0, 1.0),
    )


def from_splat(records: np.ndarray, device: torch.device) -> Gaussians3D:
    """Gaussians of a ``.splat`` file (e.g. the untrained preview), to render like a trained model."""

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a, dtype=np.float32), device=device)

    return Gaussians3D(
        means=t(records["position"]),
        quats=t((records["rotation"].astype(np.float32) - 128.0) / 128.0),
        scales=t(records["scale"]),
        opacities=t(records["rgba"][:, 3] / 255.0),
        colors=t(records["rgba"][:, :3] / 255.0),
    )


def export(params: dict[str, torch.nn.Parameter]) -> splat.Gaussians:
    """The trained parameters as 3DGS stores them (the PLY's and the ``.splat`` converter's input)."""

    def a(name: str) -> np.ndarray:
        return params[name].detach().float().cpu().numpy()

    quats = F.normalize(params["quats"].detach(), dim=-1).float().cpu().numpy()
    return splat.Gaussians(
        positions=a("means"),
        log_scales=a("scales"),
        f_dc=a("colors"),
        opacity_logits=a("opacities"),
        rotations=quats,
    )


# --- metrics -----------------------------------------------------------------------------------------


def _gaussian_window(size: int = 11, sigma: float = 1.5, device: torch.device | None = None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(3, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Structural similarity of two (H, W, 3) images in [0, 1]: Gaussian window 11 / 1.5, constants
    (0.01, 0.03), valid region only (the definition of Wang et al. 2004 that 3DGS papers report)."""
    x, y = a.permute(2, 0, 1)[None], b.permute(2, 0, 1)[None]
    w = _gaussian_window(device=a.device).to(a.dtype)
    if min(x.shape[-2:]) < w.shape[-1]:
        raise ValueError("images smaller than the 11-pixel SSIM window")
    mu_x, mu_y = F.conv2d(x, w, groups=3), F.conv2d(y, w, groups=3)
    sxx = F.conv2d(x * x, w, groups=3) - mu_x**2
    syy = F.conv2d(y * y, w, groups=3) - mu_y**2
    sxy = F.conv2d(x * y, w, groups=3) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(F.mse_loss(a.clamp(0, 1), b))
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def evaluate(model: Gaussians3D, views: list[ViewTensors]) -> tuple[float | None, float | None]:
    """Mean PSNR (dB) and SSIM of ``model`` rendered at ``views`` against their photos."""
    if not views:
        return None, None
    scores = []
    for view in views:
        image, target = model.render(view).clamp(0.0, 1.0), view.target()
        scores.append((psnr(image, target), float(ssim(image, target))))
    return (
        round(float(np.mean([p for p, _ in scores])), 4),
        round(float(np.mean([s for _, s in scores])), 5),
    )


# --- training ------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    scene_dir: Path,
    out_dir: Path,
    options: TrainOptions | None = None,
    *,
    preview_splat: Path | None = None,
    progress: ProgressHook = no_progress,
) -> TrainResult:
    """Train on ``scene_dir``; write ``point_cloud.ply``, ``scene.splat``, ``scene.spz`` and
    ``result.json`` (the metrics record, also returned) into ``out_dir``. ``preview_splat``, when given,
    is scored on the same held-out views. Raises :class:`~sharpml.train.scene.SceneError` or
    :class:`TrainingError`."""
    opts = options or TrainOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    timings: dict[str, float] = {}
    if opts.threads:
        torch.set_num_threads(opts.threads)
    seed_everything(opts.seed)
    device = resolve_device(opts.device)
    if device.type == "cpu":
        # The backward of a gather accumulates with several threads in no fixed order; PyTorch's
        # deterministic mode fixes it (a run is then repeatable bit for bit). Process-wide.
        torch.use_deterministic_algorithms(True, warn_only=True)

    progress("load", 0.0, "reading the scene")
    t0 = time.monotonic()
    scene = load_scene(scene_dir, max_image_size=opts.max_image_size, test_every=opts.test_every)
    train_views = [ViewTensors.of(v, device) for v in scene.train]
    test_views = [ViewTensors.of(v, device) for v in scene.test]
    timings["load"] = round(time.monotonic() - t0, 3)
    progress("load", 1.0, f"{len(train_views)} training photos, {len(test_views)} held out")

    params = init_params(scene, opts, device)
    optimizers = {
        name: torch.optim.Adam(
            [
                {
                    "params": p,
                    "lr": LEARNING_RATES[name] * (scene.extent if name == "means" else 1.0),
                    "name": name,
                }
            ],
            eps=1e-15,
        )
        for name, p in params.items()
    }
    means_schedule = torch.optim.lr_scheduler.ExponentialLR(
        optimizers["means"], gamma=0.01 ** (1.0 / opts.steps)
    )
    strategy = PortableMCMC(
        cap_max=opts.max_gaussians,
        refine_start_iter=opts.refine_start,
        refine_every=opts.refine_every,
        refine_stop_iter=max(opts.steps, opts.refine_start + 1),
    )
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state()

    order = torch.Generator().manual_seed(opts.seed)
    queue: list[int] = []
    t0 = time.monotonic()
    report_every = max(1, opts.steps // 100)
    loss_value = float("nan")
    for step in range(opts.steps):
        if not queue:
            queue = torch.randperm(len(train_views), generator=order).tolist()
        view = train_views[queue.pop()]
        model = activated(params)
        try:
            image = model.render(view)
        except TooManyPairs as exc:
            raise TrainingError(f"step {step}: {exc}") from None
        target = view.target()
        loss = (1.0 - opts.ssim_lambda) * F.l1_loss(image, target) + opts.ssim_lambda * (
            1.0 - ssim(image, target)
        )
        loss = loss + OPACITY_REG * model.opacities.mean() + SCALE_REG * model.scales.mean()
        loss.backward()
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise TrainingError(f"the loss became {loss_value} at step {step}")
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        means_schedule.step()
        strategy.step_post_backward(params, optimizers, state, step, {}, lr=means_schedule.get_last_lr()[0])
        if (step + 1) % report_every == 0 or step + 1 == opts.steps:
            progress(
                "train",
                (step + 1) / opts.steps,
                f"step {step + 1}/{opts.steps}, {len(params['means'])} gaussians, loss {loss_value:.4f}",
            )
    seconds_training = time.monotonic() - t0
    timings["train"] = round(seconds_training, 3)

    progress("evaluate", 0.0, f"scoring {len(test_views)} held-out photos")
    t0 = time.monotonic()
    trained = activated({k: v.detach() for k, v in params.items()})  # type: ignore[misc]
    score = evaluate(trained, test_views)
    preview_score: tuple[float | None, float | None] = (None, None)
    if preview_splat is not None and Path(preview_splat).is_file():
        preview_score = evaluate(from_splat(splat.read_splat(preview_splat), device), test_views)
    timings["evaluate"] = round(time.monotonic() - t0, 3)
    progress(
        "evaluate", 1.0, f"held-out PSNR {score[0]} dB" if score[0] is not None else "no held-out photos"
    )

    t0 = time.monotonic()
    gaussians = export(params)
    splat.write_ply(out_dir / PLY_NAME, gaussians)
    splat.write_splat(out_dir / SPLAT_NAME, splat.to_splat(gaussians))
    try:
        spz.save(out_dir / SPZ_NAME, gaussians)
    except splat.SplatFormatError as exc:
        raise TrainingError(f"the trained gaussians cannot be stored: {exc}") from None
    timings["export"] = round(time.monotonic() - t0, 3)

    first = (train_views or test_views)[0]
    result = TrainResult(
        ok=True,
        reason=None,
        steps=opts.steps,
        gaussians=len(gaussians),
        seconds=round(time.monotonic() - t_all, 3),
        device=_device_name(device),
        psnr=score[0],
        ssim=score[1],
        preview_psnr=preview_score[0],
        preview_ssim=preview_score[1],
        train_views=len(train_views),
        test_views=len(test_views),
        width=first.width,
        height=first.height,
        steps_per_second=round(opts.steps / max(seconds_training, 1e-9), 3),
        ply=PLY_NAME,
        splat=SPLAT_NAME,
        timings=timings,
        options=asdict(opts),
        versions=_versions(),
    )
    result.write(out_dir / RESULT_NAME)
    progress("done", 1.0, f"{len(gaussians)} gaussians")
    return result


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def _versions() -> dict[str, str]:
    import gsplat

    return {"torch": torch.__version__, "gsplat": gsplat.__version__}
