"""gsplat's MCMC densification ("3D Gaussian Splatting as Markov Chain Monte Carlo") on any device.

:class:`gsplat.strategy.MCMCStrategy` is the schedule and the bookkeeping (teleport dead gaussians
to live ones, add 5 % more up to ``cap_max`` every ``refine_every`` steps, perturb positions), but two
of its helpers call CUDA kernels: the relocation formula (``gsplat.relocation.compute_relocation``)
and the covariance used by the position noise. :class:`PortableMCMC` keeps gsplat's schedule,
sampling and optimiser-state surgery (``gsplat.strategy.ops``) and replaces just those two with
PyTorch: the same code then runs on a GPU and on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
from gsplat.strategy import MCMCStrategy
from gsplat.strategy.ops import _multinomial_sample, _update_param_with_optimizer
from torch import Tensor

Params = dict[str, torch.nn.Parameter]
Optimizers = dict[str, torch.optim.Optimizer]


def compute_relocation(
    opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor
) -> tuple[Tensor, Tensor]:
    """Equation 9 of the MCMC paper, as gsplat's ``relocation`` kernel computes it: a gaussian
    split into ``n`` copies keeps its rendered opacity and spread. Evaluated in float64 (the
    alternating binomial sum loses precision in float32 for large ``n``)."""
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).long()
    op = opacities.double()
    new_op = 1.0 - torch.pow(1.0 - op, 1.0 / n.double())
    k = torch.arange(n_max, dtype=torch.float64, device=op.device)
    # coef[i-1, k] = C(i-1, k) (-1)^k / sqrt(k+1), zero for k > i-1 (binoms is zero there).
    coef = binoms.double() * torch.pow(-1.0, k) / torch.sqrt(k + 1.0)
    powers = torch.pow(new_op[:, None], k + 1.0)  # [N, n_max]: new_op^(k+1)
    per_i = powers @ coef.T  # [N, n_max]: the inner sum for i = 1..n_max
    denom = torch.cumsum(per_i, dim=1).gather(1, (n - 1)[:, None]).squeeze(1)
    new_scales = (op / denom)[:, None] * scales.double()
    return new_op.to(opacities.dtype), new_scales.to(scales.dtype)


def _write_split(name: str, p: Tensor, sampled: Tensor, new_op: Tensor, new_scales: Tensor) -> None:
    """Give the sampled gaussians (the ones being copied) their post-split opacity and scale."""
    if name == "opacities":
        p[sampled] = torch.logit(new_op)
    elif name == "scales":
        p[sampled] = torch.log(new_scales)


@dataclass
class PortableMCMC(MCMCStrategy):
    """:class:`gsplat.strategy.MCMCStrategy` with its CUDA-only helpers replaced by PyTorch."""

    def step_post_backward(  # type: ignore[override]
        self, params: Params, optimizers: Optimizers, state: dict[str, Any], step: int, info: Any, lr: float
    ) -> None:
        state["binoms"] = state["binoms"].to(params["means"].device)
        binoms = state["binoms"]
        if self.refine_start_iter < step < self.refine_stop_iter and step % self.refine_every == 0:
            self._relocate_gs(params, optimizers, binoms)
            self._add_new_gs(params, optimizers, binoms)
        self._inject_noise(params, lr * self.noise_lr)

    @torch.no_grad()
    def _relocate_gs(self, params: Params, optimizers: Optimizers, binoms: Tensor) -> int:  # type: ignore[override]
        opacities = torch.sigmoid(params["opacities"])
        dead = opacities <= self.min_opacity
        n_dead = int(dead.sum())
        if n_dead == 0 or n_dead == len(dead):
            return 0
        dead_idx = dead.nonzero(as_tuple=True)[0]
        alive_idx = (~dead).nonzero(as_tuple=True)[0]
        sampled = alive_idx[_multinomial_sample(opacities[alive_idx], n_dead, replacement=True)]
        new_op, new_scales = self._split(params, opacities, sampled, binoms)

        def param_fn(name: str, p: Tensor) -> Tensor:
            _write_split(name, p, sampled, new_op, new_scales)
            p[dead_idx] = p[sampled]
            return torch.nn.Parameter(p, requires_grad=p.requires_grad)

        def optimizer_fn(key: str, v: Tensor) -> Tensor:
            v[sampled] = 0
            return v

        _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)
        return n_dead

    @torch.no_grad()
    def _add_new_gs(self, params: Params, optimizers: Optimizers, binoms: Tensor) -> int:  # type: ignore[override]
        current = len(params["means"])
        n_new = max(0, min(self.cap_max, int(1.05 * current)) - current)
        if n_new == 0:
            return 0
        opacities = torch.sigmoid(params["opacities"])
        sampled = _multinomial_sample(opacities, n_new, replacement=True)
        new_op, new_scales = self._split(params, opacities, sampled, binoms)

        def param_fn(name: str, p: Tensor) -> Tensor:
            _write_split(name, p, sampled, new_op, new_scales)
            return torch.nn.Parameter(torch.cat([p, p[sampled]]), requires_grad=p.requires_grad)

        def optimizer_fn(key: str, v: Tensor) -> Tensor:
            return torch.cat([v, torch.zeros((n_new, *v.shape[1:]), dtype=v.dtype, device=v.device)])

        _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)
        return n_new

    def _split(
        self, params: Params, opacities: Tensor, sampled: Tensor, binoms: Tensor
    ) -> tuple[Tensor, Tensor]:
        new_op, new_scales = compute_relocation(
            opacities[sampled],
            torch.exp(params["scales"])[sampled],
            torch.bincount(sampled)[sampled] + 1,
            binoms,
        )
        eps = torch.finfo(torch.float32).eps
        return new_op.clamp(min=self.min_opacity, max=1.0 - eps), new_scales

    @torch.no_grad()
    def _inject_noise(self, params: Params, scaler: float) -> None:
        """Perturb nearly transparent gaussians along their own covariance (gsplat's
        ``inject_noise_to_position``)."""
        opacities = torch.sigmoid(params["opacities"])
        covars, _ = _quat_scale_to_covar_preci(
            params["quats"], torch.exp(params["scales"]), compute_covar=True, compute_preci=False
        )
        gate = torch.sigmoid(100.0 * ((1.0 - opacities) - 0.995))
        noise = torch.randn_like(params["means"]) * gate[:, None] * scaler
        params["means"].add_(torch.einsum("nij,nj->ni", covars, noise))
