"""Rasterisers: gsplat's CUDA ``rasterization`` on a GPU, a footprint-sparse compositor on CPU.

Both take the same activated gaussians (means, quaternions, scales, opacities in [0, 1], RGB colours)
and one pinhole camera, and return ``(image [H, W, 3], alpha [H, W, 1])``. Everything else in the
trainer (model, optimiser, loss, densification) is shared; only this call differs between devices.

The CPU compositor reproduces gsplat's "classic" 3DGS rasterisation rule by rule, in PyTorch so that
autograd gives the backward pass:

- projection: gsplat's own pure-PyTorch ``_fully_fused_projection`` (EWA, ``eps2d`` = 0.3 blur,
  near plane 0.01, frustum culling), pixel centres at ``+ 0.5``;
- ``alpha = min(0.999, opacity * exp(-sigma))``, pairs with ``sigma < 0`` or ``alpha < 1/255`` are
  skipped, and a pixel stops at the gaussian that would take its transmittance to 1e-4 or below
  (that gaussian excluded), as gsplat's CUDA kernel does.

It differs from a dense pixels x gaussians compositor in *which* pairs it builds, not in what it
computes: a gaussian touches only the pixels of its footprint, the ellipse where ``alpha >= 1/255``
(``sigma <= ln(255 * opacity)``, so no pair it leaves out could contribute), enumerated row by row.
The pairs are sorted by (pixel, depth), and each pixel's transmittance is an exclusive cumulative sum
of ``log(1 - alpha)`` within its run of pairs. Work and memory grow with the footprints, not with
pixels x gaussians. ``rasterize_dense`` is the plain all-pairs reference the tests compare it with.
"""

from __future__ import annotations

import math

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci
from torch import Tensor

#: gsplat's classic-mode constants (``rasterize_to_pixels_3dgs_fwd``).
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
EPS2D = 0.3
NEAR_PLANE = 0.01
#: Most (gaussian, pixel) pairs the CPU compositor takes on in one view. A pair costs about 150 bytes
#: through the forward and backward passes, so this bounds one step near 5 GB instead of letting a
#: large image or a swarm of big gaussians exhaust the machine.
MAX_PAIRS = 32_000_000


class TooManyPairs(MemoryError):
    """One view needs more pixel-gaussian pairs than :data:`MAX_PAIRS`."""


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] (w, x, y, z; normalised here)
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N] in [0, 1]
    colors: Tensor,  # [N, 3]
    viewmat: Tensor,  # [4, 4] world -> camera (COLMAP convention)
    K: Tensor,  # [3, 3]
    width: int,
    height: int,
    background: Tensor | None = None,  # [3]
) -> tuple[Tensor, Tensor]:
    """Render one view on the device the gaussians live on: gsplat's CUDA kernels on a GPU, the
    footprint-sparse compositor on CPU."""
    if means.is_cuda:
        from gsplat import rasterization

        image, alpha, _ = rasterization(
            means,
            quats,
            scales,
            opacities,
            colors,
            viewmat[None],
            K[None],
            width,
            height,
            eps2d=EPS2D,
            near_plane=NEAR_PLANE,
            packed=False,
            backgrounds=None if background is None else background[None],
            rasterize_mode="classic",
        )
        return image[0], alpha[0]
    return rasterize_sparse(means, quats, scales, opacities, colors, viewmat, K, width, height, background)


def project(
    means: Tensor, quats: Tensor, scales: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """gsplat's PyTorch projection of one camera: ``radii [N, 2]`` (0 = culled), ``means2d [N, 2]``,
    ``depths [N]``, ``conics [N, 3]`` (the upper triangle of the inverse 2D covariance)."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmat[None], K[None], width, height, eps2d=EPS2D, near_plane=NEAR_PLANE
    )
    return radii[0], means2d[0], depths[0], conics[0]


def _alpha(
    means2d: Tensor, conics: Tensor, opacities: Tensor, gid: Tensor, pix: Tensor, width: int
) -> tuple[Tensor, Tensor]:
    """``sigma`` and ``alpha`` of each (gaussian, pixel) pair; pixel centres at ``+ 0.5``."""
    px = (pix % width).to(means2d.dtype) + 0.5
    py = torch.div(pix, width, rounding_mode="floor").to(means2d.dtype) + 0.5
    m, c = means2d[gid], conics[gid]
    dx, dy = px - m[:, 0], py - m[:, 1]
    sigma = 0.5 * (c[:, 0] * dx * dx + c[:, 2] * dy * dy) + c[:, 1] * dx * dy
    return sigma, torch.clamp_max(opacities[gid] * torch.exp(-sigma), ALPHA_MAX)


@torch.no_grad()
def footprint_candidates(
    radii: Tensor, means2d: Tensor, depths: Tensor, conics: Tensor, opacities: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """The (gaussian, pixel) pairs whose pixel centre lies inside the gaussian's ``alpha >= 1/255``
    ellipse (``sigma <= ln(255 opacity)``), sorted by (pixel, depth).

    Returns ``gaussian ids [M]`` and row-major ``pixel ids [M]``. Found row by row: the rows the
    ellipse spans (never beyond the projection's 3.33-sigma radius), then in each row the interval
    between the two roots of the quadratic in x, so no pixel outside the ellipse is ever visited.
    """
    device, dtype = means2d.device, means2d.dtype
    empty = torch.zeros(0, dtype=torch.long, device=device)
    visible = (radii > 0).all(dim=-1) & (opacities >= ALPHA_MIN)
    ids = visible.nonzero().squeeze(1)
    ids = ids[torch.argsort(depths[ids], stable=True)]  # front to back
    m, c = means2d[ids], conics[ids]
    # sigma = 0.5 (a dx^2 + c dy^2) + b dx dy <= t  <=>  alpha >= 1/255 (before the 0.999 clamp).
    t = torch.log(opacities[ids] * 255.0).clamp(min=0.0)
    det = (c[:, 0] * c[:, 2] - c[:, 1] * c[:, 1]).clamp(min=1e-12)
    ry = torch.minimum(torch.sqrt(2.0 * t * c[:, 0] / det), radii[ids, 1].to(dtype))
    y0 = torch.ceil(m[:, 1] - ry - 0.5).clamp(0, height).long()
    y1 = torch.floor(m[:, 1] + ry - 0.5).clamp(-1, height - 1).long()
    rows = (y1 - y0 + 1).clamp(min=0)
    n_rows = int(rows.sum())
    if n_rows == 0:
        return empty, empty
    # One entry per (gaussian, row): the row's span of pixel centres inside the ellipse.
    row_g = torch.repeat_interleave(torch.arange(len(ids), device=device), rows)
    row_y = y0[row_g] + torch.arange(n_rows, device=device) - (torch.cumsum(rows, 0) - rows)[row_g]
    a, b, cc = c[row_g, 0], c[row_g, 1], c[row_g, 2]
    dy = row_y.to(dtype) + 0.5 - m[row_g, 1]
    # 0.5 a dx^2 + (b dy) dx + (0.5 c dy^2 - t) <= 0
    disc = (b * dy) ** 2 - a * (cc * dy * dy - 2.0 * t[row_g])
    root = torch.sqrt(disc.clamp(min=0.0))
    rx = radii[ids[row_g], 0].to(dtype)
    lo = torch.maximum((-b * dy - root) / a, -rx)
    hi = torch.minimum((-b * dy + root) / a, rx)
    x0 = torch.ceil(m[row_g, 0] + lo - 0.5).clamp(0, width).long()
    x1 = torch.floor(m[row_g, 0] + hi - 0.5).clamp(-1, width - 1).long()
    span = torch.where(disc >= 0, (x1 - x0 + 1).clamp(min=0), torch.zeros_like(x0))
    total = int(span.sum())
    if total == 0:
        return empty, empty
    if total > MAX_PAIRS:
        raise TooManyPairs(
            f"one {width}x{height} view needs {total} pixel-gaussian pairs, over the CPU rasteriser's "
            f"budget of {MAX_PAIRS}; train at a smaller image size or with fewer gaussians"
        )
    pair_row = torch.repeat_interleave(torch.arange(n_rows, device=device), span)
    px = x0[pair_row] + torch.arange(total, device=device) - (torch.cumsum(span, 0) - span)[pair_row]
    pix = row_y[pair_row] * width + px
    gid = ids[row_g[pair_row]]
    # Pairs were made front to back; a stable sort by pixel keeps that order within each pixel.
    pix, order = torch.sort(pix, stable=True)
    return gid[order], pix


@torch.no_grad()
def contributing(sigma: Tensor, alpha: Tensor, pix: Tensor) -> Tensor:
    """Which sorted candidate pairs gsplat's kernel composites: ``sigma >= 0`` and ``alpha >= 1/255``
    (rounding can leave a boundary pixel just below), and in each pixel only while the
    transmittance *after* the gaussian stays above ``T_MIN`` (the gaussian that would cross it and
    all behind it are left out)."""
    passes = (sigma >= 0) & (alpha >= ALPHA_MIN)
    log_one_minus = torch.log1p(-torch.where(passes, alpha, torch.zeros_like(alpha)).double())
    after = _segment_exclusive_cumsum(log_one_minus, pix) + log_one_minus
    return passes & (after > math.log(T_MIN))


def footprint_pairs(
    radii: Tensor, means2d: Tensor, depths: Tensor, conics: Tensor, opacities: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:
    """Every (gaussian, pixel) pair that contributes to the image, sorted by (pixel, depth)."""
    with torch.no_grad():
        gid, pix = footprint_candidates(radii, means2d, depths, conics, opacities, width, height)
        sigma, alpha = _alpha(means2d, conics, opacities, gid, pix, width)
        keep = contributing(sigma, alpha, pix)
    return gid[keep], pix[keep]


def _segment_exclusive_cumsum(values: Tensor, segments: Tensor) -> Tensor:
    """Exclusive cumulative sum of ``values`` within each run of equal, sorted ``segments``."""
    inclusive = torch.cumsum(values, 0)
    exclusive = inclusive - values
    _, counts = torch.unique_consecutive(segments, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    return exclusive - torch.repeat_interleave(exclusive[starts], counts)


def rasterize_sparse(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The footprint-sparse compositor (any device; used on CPU). Differentiable in every input."""
    radii, means2d, depths, conics = project(means, quats, scales, viewmat, K, width, height)
    gid, pix = footprint_candidates(
        radii, means2d.detach(), depths.detach(), conics.detach(), opacities.detach(), width, height
    )
    n_pix = width * height
    image = torch.zeros(n_pix, colors.shape[-1], dtype=colors.dtype, device=colors.device)
    acc = torch.zeros(n_pix, 1, dtype=colors.dtype, device=colors.device)
    if len(gid):
        sigma, alpha = _alpha(means2d, conics, opacities, gid, pix, width)
        keep = contributing(sigma.detach(), alpha.detach(), pix)
        gid, pix, alpha = gid[keep], pix[keep], alpha[keep]
        # Transmittance in float64: a float32 running sum over ~10^6 pairs would lose the per-pixel
        # differences.
        transmittance = torch.exp(_segment_exclusive_cumsum(torch.log1p(-alpha.double()), pix)).to(
            alpha.dtype
        )
        weights = (alpha * transmittance)[:, None]
        image = image.index_add(0, pix, weights * colors[gid])
        acc = acc.index_add(0, pix, weights)
    if background is not None:
        image = image + (1.0 - acc) * background
    return image.reshape(height, width, -1), acc.reshape(height, width, 1)


def rasterize_dense(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmat: Tensor,
    K: Tensor,
    width: int,
    height: int,
    background: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference compositor: every pixel against every gaussian, depth-sorted, with an exclusive
    cumulative *product* of ``1 - alpha``. Memory grows with pixels x gaussians: tests only."""
    radii, means2d, depths, conics = project(means, quats, scales, viewmat, K, width, height)
    visible = (radii > 0).all(dim=-1)
    order = torch.argsort(depths.detach().masked_fill(~visible, float("inf")), stable=True)
    order = order[visible[order]]
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype, device=means.device),
        torch.arange(width, dtype=means.dtype, device=means.device),
        indexing="ij",
    )
    px, py = xs.reshape(-1, 1), ys.reshape(-1, 1)  # [P, 1]
    m, c, o = means2d[order], conics[order], opacities[order]  # [V, ...]
    dx, dy = px + 0.5 - m[:, 0], py + 0.5 - m[:, 1]  # [P, V]
    sigma = 0.5 * (c[:, 0] * dx * dx + c[:, 2] * dy * dy) + c[:, 1] * dx * dy
    alpha = torch.clamp_max(o * torch.exp(-sigma), ALPHA_MAX)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
    after = torch.cumprod(1.0 - alpha, dim=1)
    before = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], dim=1)
    weights = alpha * before * (after > T_MIN)
    image = weights @ colors[order]
    acc = weights.sum(dim=1, keepdim=True)
    if background is not None:
        image = image + (1.0 - acc) * background
    return image.reshape(height, width, -1), acc.reshape(height, width, 1)
