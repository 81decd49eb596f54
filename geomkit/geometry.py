"""Pure functions on embedding tensors: neighbours, norms, magnitudes, angles, drift, interpolation.

Nothing here touches a model; every function takes tensors and returns tensors or plain values,
so each is testable on synthetic data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

CHUNK_ROWS = 32768


@dataclass
class Neighbours:
    ids: torch.Tensor  # (k,)
    scores: torch.Tensor  # (k,) cosine similarity, or Euclidean distance


def _merge_topk(best_s, best_i, s, i, k, largest):
    s = torch.cat([best_s, s], dim=-1)
    i = torch.cat([best_i, i], dim=-1)
    top = torch.topk(s, min(k, s.shape[-1]), dim=-1, largest=largest)
    return top.values, torch.gather(i, -1, top.indices)


def nearest(
    table: torch.Tensor,
    queries: torch.Tensor,
    k: int = 10,
    exclude: Optional[Sequence[Sequence[int]]] = None,
    chunk_rows: int = CHUNK_ROWS,
) -> tuple[list[Neighbours], list[Neighbours]]:
    """Top-k rows of `table` by cosine similarity and by Euclidean distance, for each query.

    Streams over `chunk_rows` rows at a time, so a 262,144 x 640 vocabulary never needs a full
    (queries x vocabulary) matrix beyond one chunk. All-zero rows have no direction and are
    never cosine neighbours. `exclude[q]` lists ids never returned for query q (the query token).
    Returns (cosine, euclidean), one `Neighbours` per query.
    """
    q = queries.detach().to(torch.float32)
    if q.ndim == 1:
        q = q[None]
    nq = q.shape[0]
    qn = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos_s = q.new_full((nq, 0), -math.inf)
    cos_i = torch.zeros((nq, 0), dtype=torch.long, device=q.device)
    euc_s = q.new_full((nq, 0), math.inf)
    euc_i = torch.zeros((nq, 0), dtype=torch.long, device=q.device)
    exclude = exclude or [[] for _ in range(nq)]
    for start in range(0, table.shape[0], chunk_rows):
        rows = table[start : start + chunk_rows].detach().to(device=q.device, dtype=torch.float32)
        ids = torch.arange(start, start + rows.shape[0], device=q.device)
        norms = rows.norm(dim=1)
        cos = (qn @ rows.T) / norms.clamp_min(1e-12)
        cos[:, norms == 0] = -math.inf
        # Direct differences, not the |a|^2 - 2ab + |b|^2 expansion, which cancels badly in float32.
        dist = torch.cdist(q, rows, compute_mode="donot_use_mm_for_euclid_dist")
        for qi, ex in enumerate(exclude):
            local = [e - start for e in ex if start <= e < start + rows.shape[0]]
            if local:
                cos[qi, local] = -math.inf
                dist[qi, local] = math.inf
        idx = ids.expand(nq, -1)
        cos_s, cos_i = _merge_topk(cos_s, cos_i, cos, idx, k, largest=True)
        euc_s, euc_i = _merge_topk(euc_s, euc_i, dist, idx, k, largest=False)
    cosine = [Neighbours(cos_i[i], cos_s[i]) for i in range(nq)]
    euclid = [Neighbours(euc_i[i], euc_s[i]) for i in range(nq)]
    return cosine, euclid


def row_norms(table: torch.Tensor, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """L2 norm of every row, in float64 (chunked, so a bf16/fp16 table is never upcast whole)."""
    return torch.cat([table[s : s + chunk_rows].double().norm(dim=1) for s in range(0, table.shape[0], chunk_rows)])


def norm_stats(norms: torch.Tensor) -> dict:
    """Statistics of the non-zero rows' norms (all-zero rows are unused slots, not tokens)."""
    live = norms[norms > 0]
    return {
        "count": int(live.numel()),
        "zero_rows": int((norms == 0).sum()),
        "mean": float(live.mean()),
        "median": float(live.median()),
        "std": float(live.std()) if live.numel() > 1 else 0.0,
        "min": float(live.min()),
        "max": float(live.max()),
    }


def magnitude(table: torch.Tensor, how="mean") -> float:
    """The fixed DTI magnitude m*: "mean", "min" or "max" of the vocabulary's non-zero row norms,
    or a number given directly."""
    if isinstance(how, (int, float)):
        return float(how)
    try:
        return float(how)
    except (TypeError, ValueError):
        pass
    stats = norm_stats(row_norms(table))
    if how not in ("mean", "min", "max"):
        raise ValueError(f"magnitude must be mean, min, max or a number, not {how!r}")
    return stats[how]


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between vectors along the last dimension, in degrees, via atan2 of the orthogonal
    and parallel parts in float64: accurate for tiny angles where acos(cos) in float32 is not."""
    a = a.double()
    b = b.double()
    dot = (a * b).sum(-1)
    an = a.norm(dim=-1)
    # |a x b| generalised: |b_perp| * |a| where b_perp is b minus its projection on a
    b_perp = b - (dot / an.clamp_min(1e-300) ** 2)[..., None] * a
    return torch.rad2deg(torch.atan2(b_perp.norm(dim=-1) * an, dot))


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.double()
    b = b.double()
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


def drift(vector: torch.Tensor, related: torch.Tensor) -> torch.Tensor:
    """Semantic drift (Fig. 1b): cosine of `vector` (d,) to each row of `related` (n, d)."""
    return cosine(vector[None, :], related)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Interpolate direction and norm separately, row by row (last dimension); t=0 -> a, t=1 -> b.

    - Direction: along the great circle from a/|a| to b/|b| at constant angular speed, so the
      interpolant's angle to a is exactly t * angle(a, b) (and (1 - t) * angle(a, b) to b).
    - Norm: linear in t, |slerp(a, b, t)| = (1 - t) |a| + t |b|, set explicitly below.

    Consequence, by construction and not a measurement: inputs of equal norm (two DTI tokens of
    one model, both at m*) give interpolants of exactly that norm at every t. Whether the
    interpolants *mean* anything in between (their vocabulary neighbours) is what must be measured.
    Computed in float64 and returned in a's dtype. Near-parallel inputs (sin(angle) < 1e-9) fall
    back to a linear mix of the directions; exactly opposite directions raise ValueError (no unique
    great circle)."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(dim=-1, keepdim=True), b64.norm(dim=-1, keepdim=True)
    ua, ub = a64 / na, b64 / nb
    omega = torch.deg2rad(angle_deg(ua, ub))[..., None]
    so = torch.sin(omega)
    # nearly parallel: fall back to lerp; exactly opposite directions have no unique great circle
    if bool(((so.abs() < 1e-9) & (omega > 1.0)).any()):
        raise ValueError("slerp: the two directions are opposite; the interpolating great circle is not unique")
    small = so.abs() < 1e-9
    wa = torch.where(small, 1 - t, torch.sin((1 - t) * omega) / torch.where(small, 1.0, so))
    wb = torch.where(small, t, torch.sin(t * omega) / torch.where(small, 1.0, so))
    u = wa * ua + wb * ub
    u = u / u.norm(dim=-1, keepdim=True)
    return (u * ((1 - t) * na + t * nb)).to(a.dtype)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Linear interpolation (TI's usual): the norm dips between two differing vectors."""
    return ((1 - t) * a.double() + t * b.double()).to(a.dtype)
