"""Optimisers for the learned rows.

- `rsgd_update`: one step of Algorithm 1 (DTI) as a pure function on tensors;
- `RSGD`: that step as a `torch.optim.Optimizer` (so `torch.amp.GradScaler` can drive it);
- `SphereAdamW`: the Table 3 ablation: a Euclidean AdamW step on v, then v / ||v||;
- `make_optimizer`: the optimiser each `--method` uses (TI-type methods: plain AdamW with the
  public example scripts' settings).

The prior's loss is -kappa mu.v, so its Euclidean gradient is the constant -kappa mu, which is
added to the data gradient before anything else (tangent projection, normalisation): its pull
is measured against the data gradient's size, as in the authors' code.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

ADAMW_BETAS = (0.9, 0.999)
ADAMW_EPS = 1e-8
# A tangent gradient this much smaller than the Euclidean one is rounding noise (e.g. v == mu
# with no data gradient): no step is taken rather than a step in a random direction.
_NOISE = 1e-12


def rsgd_update(v: torch.Tensor, grad: torch.Tensor, lr: float, kappa: float = 0.0,
                mu: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One Riemannian SGD step on the unit sphere, row by row (Algorithm 1, lines 6-10).

    g_euc = grad - kappa mu;  g = g_euc - (g_euc.v) v;  g' = g / ||g||;
    v <- (v - lr g') / ||v - lr g'||.

    `v`, `grad`: (n, d) (or (d,)); `mu`: (d,) or (n, d), unit. Computed in float64 and returned
    in v's dtype. Since g' is a unit tangent vector, every row turns by exactly atan(lr) per
    step (whatever the gradient's size); a row whose tangent gradient is zero stays put.
    """
    squeeze = v.ndim == 1
    v_in = v.detach().double().reshape(-1, v.shape[-1])
    v64 = v_in / v_in.norm(dim=-1, keepdim=True)
    g = grad.detach().double().reshape(v64.shape)
    if kappa and mu is not None:
        g = g - kappa * mu.detach().double().expand_as(g)
    g_euc_norm = g.norm(dim=-1, keepdim=True)
    g = g - (g * v64).sum(-1, keepdim=True) * v64
    gn = g.norm(dim=-1, keepdim=True)
    live = gn > _NOISE * g_euc_norm
    g_unit = torch.where(live, g / gn.clamp_min(1e-300), torch.zeros_like(g))
    new = v64 - lr * g_unit
    new = new / new.norm(dim=-1, keepdim=True)
    new = torch.where(live, new, v_in).to(v.dtype)  # rows with no step are returned untouched
    return new[0] if squeeze else new


class RSGD(torch.optim.Optimizer):
    """Riemannian SGD with gradient normalisation and a vMF prior (DTI). Parameters are rows of
    unit vectors; each param group may carry its own prior direction `mu` and `kappa`."""

    def __init__(self, params, lr: float, kappa: float = 0.0):
        super().__init__(params, dict(lr=lr, kappa=kappa, mu=None))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.copy_(rsgd_update(p, p.grad, group["lr"], group["kappa"], group["mu"]))
        return loss


class SphereAdamW(torch.optim.AdamW):
    """The Table 3 ablation ("AdamW"): the prior gradient -kappa mu is added, a Euclidean AdamW
    step is taken on v, and each row is projected back to the sphere. Not a Riemannian update."""

    def __init__(self, params, lr: float, kappa: float = 0.0, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=ADAMW_BETAS, eps=ADAMW_EPS, weight_decay=weight_decay,
                         foreach=False)
        for group in self.param_groups:
            group.setdefault("kappa", kappa)
            group.setdefault("mu", None)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            if group["kappa"] and group["mu"] is not None:
                for p in group["params"]:
                    if p.grad is not None:
                        p.grad.add_(group["mu"].to(p.grad.dtype).expand_as(p.grad), alpha=-group["kappa"])
        loss = super().step(closure)
        for group in self.param_groups:
            for p in group["params"]:
                p.div_(p.norm(dim=-1, keepdim=True))
        return loss


def make_optimizer(method: str, slots, lr: float, kappa: float, weight_decay: float) -> torch.optim.Optimizer:
    """One param group per text encoder (each with its own prior direction mu)."""
    if method == "dti":
        groups = [dict(params=[s.param], mu=s.mu, kappa=kappa) for s in slots]
        return RSGD(groups, lr=lr, kappa=kappa)
    if method == "dti-adamw":
        groups = [dict(params=[s.param], mu=s.mu, kappa=kappa) for s in slots]
        return SphereAdamW(groups, lr=lr, kappa=kappa, weight_decay=weight_decay)
    # ti, ti-rescaled, crossinit: AdamW on the free embedding, as the diffusers TI scripts
    return torch.optim.AdamW([s.param for s in slots], lr=lr, betas=ADAMW_BETAS, eps=ADAMW_EPS,
                             weight_decay=weight_decay, foreach=False)


def lr_at(step: int, base: float, steps: int, schedule: str = "constant") -> float:
    """Learning rate of `step` (1-based): a pure function, so resuming needs no scheduler state."""
    if schedule == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * (step - 1) / max(1, steps)))
    return base


def optimizer_state_tensors(opt: torch.optim.Optimizer, prefix: str = "opt") -> dict:
    """Per-parameter optimiser state as flat {"{prefix}.{i}.{name}": tensor} (AdamW moments and step)."""
    out = {}
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for name, value in opt.state.get(p, {}).items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            out[f"{prefix}.{i}.{name}"] = t.detach().clone().cpu()
    return out


def load_optimizer_state_tensors(opt: torch.optim.Optimizer, tensors: dict, prefix: str = "opt") -> None:
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        prefix_i = f"{prefix}.{i}."
        state = {k[len(prefix_i):]: v for k, v in tensors.items() if k.startswith(prefix_i)}
        if state:
            opt.state[p] = {k: (v.to(p.device) if k != "step" else v.clone()) for k, v in state.items()}
