"""Lemma 1: ||Norm(m v + p) - Norm(m v)|| = O(||p|| / m) as m grows.

v are vocabulary embeddings (their own norm: m = 1 is the natural scale), p absolute position
embeddings, Norm either
- the model's own first normalisation (the module at `family.first_norm_site`, with its gamma/beta
  and eps; evaluated in float64 from its weights), or
- the scale-invariant definitions of the paper's App. B (eq. 7): RMSN(x) = sqrt(d) x/||x||,
  LN(x) = sqrt(d) Cx/||Cx||, C = I - 11^T/d.

The first-order term of the proof gives an independent prediction,
  Delta(m) ~ sqrt(d) ||gamma * (I - u u^T) C p|| / (m ||C v||),  u = Cv/||Cv||,
(RMSNorm: C = I), so the measured curve is checked against it as well as by its log-log slope.

BERT adds a token-type row t to every token before its embedding LayerNorm: it is added on both
sides (Norm(m v + t + p) - Norm(m v + t)); to first order t cancels.
Under RoPE (Gemma) there is no additive p: Lemma 1 does not apply (see `not_applicable_reason`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

DEFAULT_SCALES = tuple(2.0**k for k in range(-3, 13))  # 0.125 .. 4096


# ---- pure functions ------------------------------------------------------------------------------
def center(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(-1, keepdim=True)


def scale_invariant_norm(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """App. B eq. 7 as a function of (..., d) float64 tensors."""
    if kind == "layernorm":
        return lambda x: math.sqrt(x.shape[-1]) * center(x) / center(x).norm(dim=-1, keepdim=True)
    if kind == "rmsnorm":
        return lambda x: math.sqrt(x.shape[-1]) * x / x.norm(dim=-1, keepdim=True)
    raise ValueError(f"unknown norm {kind!r}")


def module_norm(module, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's normalisation module as a float64 function (its own weights and eps)."""
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    eps = float(getattr(module, "eps", getattr(module, "variance_epsilon", 1e-5)))
    w = None if weight is None else weight.detach().double()
    b = None if bias is None else bias.detach().double()
    if kind == "layernorm":
        return lambda x: torch.nn.functional.layer_norm(x, (x.shape[-1],), w, b, eps)
    if kind == "rmsnorm":
        gemma_style = "gemma" in type(module).__name__.lower()  # Gemma scales by (1 + weight)
        gain = None if w is None else (1.0 + w if gemma_style else w)

        def rms(x):
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
            return y if gain is None else y * gain

        return rms
    raise ValueError(f"unknown norm {kind!r}")


def deltas(v: torch.Tensor, p: torch.Tensor, scales: Sequence[float], norm: Callable, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(S, N, P) = ||Norm(m v_n + extra + p_k) - Norm(m v_n + extra)|| for every scale m."""
    v = v.double()
    p = p.double()
    extra = torch.zeros(v.shape[-1], dtype=torch.float64) if extra is None else extra.double()
    out = []
    for m in scales:
        base = float(m) * v + extra  # (N, d)
        with_p = base[:, None, :] + p[None, :, :]  # (N, P, d)
        out.append((norm(with_p) - norm(base)[:, None, :]).norm(dim=-1))
    return torch.stack(out)


def first_order(v: torch.Tensor, p: torch.Tensor, kind: str, gain: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, P): the coefficient c with Delta(m) ~ c / m (App. B's first-order term)."""
    v = v.double()
    p = p.double()
    d = v.shape[-1]
    cv = center(v) if kind == "layernorm" else v
    cp = center(p) if kind == "layernorm" else p
    u = cv / cv.norm(dim=-1, keepdim=True)  # (N, d)
    proj = cp[None, :, :] - (cp[None, :, :] * u[:, None, :]).sum(-1, keepdim=True) * u[:, None, :]  # (N, P, d)
    if gain is not None:
        proj = proj * gain.double()
    return math.sqrt(d) * proj.norm(dim=-1) / cv.norm(dim=-1)[:, None]


def loglog_slope(scales: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of log(values) against log(scales)."""
    x = torch.log(torch.as_tensor(list(scales), dtype=torch.float64))
    y = torch.log(torch.as_tensor(list(values), dtype=torch.float64))
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc * xc).sum())


def fit_range(scales: Sequence[float], ratio: float, factor: float = 20.0, min_points: int = 3) -> list[int]:
    """Indices of the scales used for the slope: m >= factor * ratio (ratio = typical
    ||C p|| / ||C v||, where the first-order term dominates), and at least the last `min_points`."""
    idx = [i for i, m in enumerate(scales) if m >= factor * ratio]
    if len(idx) < min_points:
        idx = list(range(max(0, len(scales) - min_points), len(scales)))
    return idx


# ---- the experiment ------------------------------------------------------------------------------
@dataclass
class Inputs:
    v: torch.Tensor  # (N, d) vocabulary rows
    p: torch.Tensor  # (P, d) position rows
    token_ids: list
    positions: list
    extra: Optional[torch.Tensor]


def not_applicable_reason(enc) -> Optional[str]:
    if enc.family.positions == "relative":
        return (
            f"{enc.name} ({enc.family.name}) has no absolute position embedding p: positions enter as a learned bias on "
            "the attention logits (relative position buckets), after the normalisation, so Norm(m v + p) has no p to "
            "attenuate and Lemma 1 does not apply"
        )
    if enc.family.positions == "rope" or enc.position_table() is None:
        return (
            f"{enc.name} ({enc.family.name}) has no absolute position embedding p: positions enter as RoPE rotations of "
            "queries and keys inside attention, after the normalisation, so Norm(m v + p) has no p to attenuate and "
            "Lemma 1 does not apply (no meaningful RoPE-free proxy exists: the rotation does not depend on m)"
        )
    return None


def sample_inputs(enc, n_tokens: int = 200, n_positions: int = 32, seed: int = 0) -> Inputs:
    """Random non-special, non-zero vocabulary rows and evenly spaced positions (0 included)."""
    from geomkit.geometry import row_norms

    table = enc.embedding_table()
    norms = row_norms(table)
    special = set(getattr(enc.tokenizer, "all_special_ids", []) or [])
    candidates = [i for i in torch.nonzero(norms > 0).flatten().tolist() if i not in special]
    gen = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(candidates), generator=gen)[: min(n_tokens, len(candidates))]
    ids = sorted(candidates[i] for i in pick.tolist())
    ptable = enc.position_table()
    n_pos = min(n_positions, ptable.shape[0])
    positions = sorted(set(torch.linspace(0, ptable.shape[0] - 1, n_pos).round().long().tolist()))
    extra = None
    if enc.family.name == "bert":
        from geomkit.families import find_module

        types = find_module(enc.model, ("bert.embeddings.token_type_embeddings", "embeddings.token_type_embeddings"))
        if types is not None:
            extra = types.weight.detach()[0].double()
    v = table[ids].double() * enc.embed_scale
    return Inputs(v, ptable[positions].double(), ids, positions, extra)


def run_attenuation(enc, scales: Sequence[float] = DEFAULT_SCALES, n_tokens: int = 200, n_positions: int = 32, seed: int = 0) -> dict:
    """Mean Delta(m) over (token, position) pairs for the model's norm and the scale-invariant one,
    the first-order prediction, and log-log slopes over the large-m range."""
    from geomkit.hooks import resolve_site

    scales = [float(m) for m in scales]
    site = enc.family.first_norm_site
    reason = not_applicable_reason(enc)
    if reason is not None:
        return {
            "model": enc.name,
            "site": None,
            "applicable": False,
            "reason": reason,
            "scales": scales,
            "delta": None,
            "loglog_slope": None,
        }
    kind = enc.family.norm
    module, _ = resolve_site(enc, site)
    inp = sample_inputs(enc, n_tokens, n_positions, seed)
    model_norm = module_norm(module, kind)
    si_norm = scale_invariant_norm(kind)
    d_model = deltas(inp.v, inp.p, scales, model_norm, inp.extra)  # (S, N, P)
    d_si = deltas(inp.v, inp.p, scales, si_norm, inp.extra)
    weight = getattr(module, "weight", None)
    gain = None if weight is None else weight.detach().double()
    c_model = first_order(inp.v, inp.p, kind, gain)  # (N, P)
    c_si = first_order(inp.v, inp.p, kind)
    mean_model = d_model.mean((1, 2))
    mean_si = d_si.mean((1, 2))
    pred_model = torch.stack([c_model.mean() / m for m in scales])
    pred_si = torch.stack([c_si.mean() / m for m in scales])
    cv = center(inp.v) if kind == "layernorm" else inp.v
    cp = center(inp.p) if kind == "layernorm" else inp.p
    ratio = float(cp.norm(dim=-1).median() / cv.norm(dim=-1).median())
    idx = fit_range(scales, ratio)
    fit_scales = [scales[i] for i in idx]
    per_pair = torch.log(d_si[idx]).reshape(len(idx), -1)  # slopes of each pair, scale-invariant norm
    lx = torch.log(torch.as_tensor(fit_scales, dtype=torch.float64))
    lxc = lx - lx.mean()
    pair_slopes = ((lxc[:, None] * (per_pair - per_pair.mean(0))).sum(0) / (lxc * lxc).sum())
    return {
        "model": enc.name,
        "site": site,
        "norm": kind,
        "applicable": True,
        "scales": scales,
        "delta": mean_model.tolist(),
        "delta_scale_invariant": mean_si.tolist(),
        "delta_first_order": pred_model.tolist(),
        "delta_first_order_scale_invariant": pred_si.tolist(),
        "loglog_slope": loglog_slope(fit_scales, [float(mean_model[i]) for i in idx]),
        "loglog_slope_scale_invariant": loglog_slope(fit_scales, [float(mean_si[i]) for i in idx]),
        "pair_slope_median": float(pair_slopes.median()),
        "pair_slope_range": [float(pair_slopes.min()), float(pair_slopes.max())],
        "fit_scales": fit_scales,
        "measured_over_first_order_at_max_scale": float(mean_model[-1] / pred_model[-1]),
        "mean_token_norm": float(inp.v.norm(dim=-1).mean()),
        "mean_position_norm": float(inp.p.norm(dim=-1).mean()),
        "position_to_token_ratio": ratio,
        "token_type_row_added": inp.extra is not None,
        "n_tokens": len(inp.token_ids),
        "n_positions": len(inp.positions),
        "positions": inp.positions,
    }
