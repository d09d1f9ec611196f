"""The CPU rasteriser and the device-neutral MCMC densification, against plain references."""

from __future__ import annotations

import math

import pytest
import torch

from sharpml.train.mcmc import PortableMCMC, compute_relocation
from sharpml.train.raster import (
    T_MIN,
    footprint_pairs,
    project,
    rasterize,
    rasterize_dense,
    rasterize_sparse,
)


def tiny_scene(
    n: int, seed: int, dtype: torch.dtype = torch.float64, min_opacity: float = 0.04
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    width, height = 40, 30
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[2, 3] = 5.0
    return {
        "means": torch.randn(n, 3, generator=g, dtype=dtype) * torch.tensor([1.2, 0.9, 1.0], dtype=dtype),
        "quats": torch.randn(n, 4, generator=g, dtype=dtype),
        "scales": torch.rand(n, 3, generator=g, dtype=dtype) * 0.35 + 0.03,
        "opacities": torch.rand(n, generator=g, dtype=dtype) * (0.99 - min_opacity) + min_opacity,
        "colors": torch.rand(n, 3, generator=g, dtype=dtype),
        "viewmat": viewmat,
        "K": torch.tensor([[36.0, 0, width / 2], [0, 36.0, height / 2], [0, 0, 1]], dtype=dtype),
        "width": width,
        "height": height,
    }


def render_with_grads(fn, s: dict, background: torch.Tensor | None):  # type: ignore[no-untyped-def]
    names = ("means", "quats", "scales", "opacities", "colors")
    leaves = {k: s[k].clone().requires_grad_() for k in names}
    image, alpha = fn(*(leaves[k] for k in names), s["viewmat"], s["K"], s["width"], s["height"], background)
    weights = torch.rand(image.shape, generator=torch.Generator().manual_seed(3), dtype=image.dtype)
    grads = torch.autograd.grad((image * weights).sum() + alpha.sum(), list(leaves.values()))
    return image.detach(), alpha.detach(), dict(zip(names, grads, strict=True))


@pytest.mark.parametrize("n, seed, min_opacity", [(60, 0, 0.04), (200, 1, 0.04), (200, 2, 0.6)])
def test_sparse_compositor_matches_the_dense_reference(n: int, seed: int, min_opacity: float) -> None:
    """Image, alpha and every gradient agree with the all-pairs compositor (cumulative product of
    1 - alpha): the footprints leave out no contributing pair and add none."""
    s = tiny_scene(n, seed, min_opacity=min_opacity)
    background = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    sparse = render_with_grads(rasterize_sparse, s, background)
    dense = render_with_grads(rasterize_dense, s, background)
    torch.testing.assert_close(sparse[0], dense[0], rtol=0, atol=1e-10)
    torch.testing.assert_close(sparse[1], dense[1], rtol=0, atol=1e-10)
    for name in sparse[2]:
        scale = dense[2][name].abs().max()
        assert scale > 0, name
        torch.testing.assert_close(
            sparse[2][name], dense[2][name], rtol=0, atol=1e-9 * float(scale), msg=name
        )
    # Not a trivial case: a third of the image or more is covered; with opaque gaussians pixels
    # saturate, so early termination is exercised.
    assert float(dense[1].mean()) > 0.3
    if min_opacity > 0.5:
        assert float(dense[1].max()) > 1 - 2 * T_MIN  # stopped just before T reached T_MIN


def test_pairs_are_exactly_the_contributing_ones_in_pixel_then_depth_order() -> None:
    s = tiny_scene(200, 2, min_opacity=0.6)
    w, h = s["width"], s["height"]
    with torch.no_grad():
        radii, means2d, depths, conics = project(
            s["means"], s["quats"], s["scales"], s["viewmat"], s["K"], w, h
        )
        gid, pix = footprint_pairs(radii, means2d, depths, conics, s["opacities"], w, h)
    assert bool((pix[1:] >= pix[:-1]).all()), "sorted by pixel"
    same = pix[1:] == pix[:-1]
    d = depths[gid]
    assert bool((d[1:][same] >= d[:-1][same]).all()), "front to back within a pixel"
    # The same pairs, by brute force: every pixel x gaussian with alpha >= 1/255, front to back,
    # cut where the transmittance after a gaussian would drop to T_MIN.
    visible = (radii > 0).all(-1)
    expected = set()
    cut = 0
    for p in range(w * h):
        px, py = p % w + 0.5, p // w + 0.5
        dx, dy = px - means2d[:, 0], py - means2d[:, 1]
        sigma = 0.5 * (conics[:, 0] * dx * dx + conics[:, 2] * dy * dy) + conics[:, 1] * dx * dy
        alpha = (s["opacities"] * torch.exp(-sigma)).clamp(max=0.999)
        candidates = [
            int(i) for i in torch.argsort(depths) if visible[i] and alpha[i] >= 1 / 255 and sigma[i] >= 0
        ]
        transmittance = 1.0
        for i in candidates:
            transmittance *= 1 - float(alpha[i])
            if transmittance <= T_MIN:
                cut += 1
                break
            expected.add((i, p))
    assert set(zip(gid.tolist(), pix.tolist(), strict=True)) == expected
    assert len(gid) == len(expected)
    assert cut > 0, "some pixels saturate: early termination is exercised"


def test_float32_render_is_close_to_float64() -> None:
    s64 = tiny_scene(120, 2)
    s32 = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in s64.items()}
    names = ("means", "quats", "scales", "opacities", "colors")
    img64, _ = rasterize(*(s64[k] for k in names), s64["viewmat"], s64["K"], s64["width"], s64["height"])
    img32, _ = rasterize(*(s32[k] for k in names), s32["viewmat"], s32["K"], s32["width"], s32["height"])
    assert float((img64.float() - img32).abs().max()) < 2e-3


def test_nothing_visible_renders_the_background() -> None:
    s = tiny_scene(10, 4)
    s["means"] = s["means"] - torch.tensor([0.0, 0.0, 20.0], dtype=torch.float64)  # all behind the camera
    background = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    names = ("means", "quats", "scales", "opacities", "colors")
    image, alpha = rasterize(
        *(s[k] for k in names), s["viewmat"], s["K"], s["width"], s["height"], background
    )
    assert float(alpha.abs().max()) == 0.0
    torch.testing.assert_close(image, background.expand_as(image))


def relocation_by_the_formula(opacity: float, scale: float, n: int) -> tuple[float, float]:
    """Equation 9 of the MCMC paper written out with loops (as gsplat's CUDA kernel does)."""
    new_op = 1.0 - (1.0 - opacity) ** (1.0 / n)
    denom = sum(
        math.comb(i - 1, k) * (-1) ** k / math.sqrt(k + 1) * new_op ** (k + 1)
        for i in range(1, n + 1)
        for k in range(i)
    )
    return new_op, opacity / denom * scale


def test_relocation_matches_the_papers_formula() -> None:
    binoms = PortableMCMC().initialize_state()["binoms"]
    opacities = torch.tensor([0.9, 0.5, 0.05, 0.99, 0.3])
    scales = torch.tensor(
        [[1.0, 2.0, 0.5], [0.1, 0.1, 0.1], [3.0, 1.0, 1.0], [0.2, 0.4, 0.8], [1.0, 1.0, 1.0]]
    )
    ratios = torch.tensor([1, 2, 3, 5, 8])
    new_op, new_scales = compute_relocation(opacities, scales, ratios, binoms)
    for i in range(len(opacities)):
        op, sc = relocation_by_the_formula(float(opacities[i]), 1.0, int(ratios[i]))
        assert float(new_op[i]) == pytest.approx(op, rel=1e-5)
        torch.testing.assert_close(new_scales[i], scales[i] * sc, rtol=1e-5, atol=0)
    # One copy is the gaussian itself.
    assert float(new_op[0]) == pytest.approx(0.9) and torch.equal(new_scales[0], scales[0])


def test_mcmc_relocates_dead_gaussians_and_grows_to_the_cap_on_cpu() -> None:
    torch.manual_seed(0)
    n = 100
    params = {
        "means": torch.nn.Parameter(torch.randn(n, 3)),
        "scales": torch.nn.Parameter(torch.full((n, 3), -2.0)),
        "quats": torch.nn.Parameter(torch.rand(n, 4)),
        "opacities": torch.nn.Parameter(torch.cat([torch.full((10,), -9.0), torch.full((90,), 1.0)])),
        "colors": torch.nn.Parameter(torch.rand(n, 3)),
    }
    optimizers = {k: torch.optim.Adam([{"params": p, "lr": 1e-3, "name": k}]) for k, p in params.items()}
    # One optimiser step so that every optimiser holds state to be carried along.
    sum(p.sum() for p in params.values()).backward()
    for opt in optimizers.values():
        opt.step()
    strategy = PortableMCMC(cap_max=103, refine_start_iter=0, refine_every=10)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state()
    strategy.step_post_backward(params, optimizers, state, step=10, info={}, lr=1e-3)
    assert len(params["means"]) == 103  # 5 % growth, capped
    assert float(torch.sigmoid(params["opacities"].detach()).min()) > strategy.min_opacity  # none left dead
    for name, p in params.items():
        assert optimizers[name].param_groups[0]["params"][0] is p
        assert optimizers[name].state[p]["exp_avg"].shape == p.shape
    strategy.step_post_backward(params, optimizers, state, step=20, info={}, lr=1e-3)
    assert len(params["means"]) == 103  # at the cap
