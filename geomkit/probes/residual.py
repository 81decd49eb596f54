"""Effect II (Lemma 2, Proposition 1): how far does a concept token's hidden state turn in each block?

For a concept token in a prompt (a vocabulary word whose embedding is scaled by m, or a learned
embedding standing where the word stands) the angle between its hidden state entering block l
(`blocks.l.resid_pre`, x_l) and leaving it (`blocks.l.resid_post`, x_{l+1}) is measured, beside:

- Lemma 2's bound. With B_l an upper bound on the update norm ||x_{l+1} - x_l|| at block l, the
  angle is at most arcsin(B_l / ||x_l||) when B_l < ||x_l||. When B_l >= ||x_l|| the update can
  reverse the vector, and the only bound is 180 deg (the paper's arcsin(min(1, .)) = 90 deg is not a
  bound there: x = (1, 0), delta = (-1.5, 0.5) turns x by 135 deg). Such a bound is "vacuous".
- Proposition 1's cumulative bound on angle(x_0, x_L): (pi/2) sum_l B_l / (||x_0|| - sum_{j<l} B_j),
  only when ||x_0|| > S_L = sum_l B_l (else None: not applicable).

B_l is unknown (a sup over the norm's image), so two empirical estimates are used:
- `B_emp`: the largest update norm seen at block l over EVERY token of every run (all scales,
  learned tokens). Lemma 2 then holds by construction (a sanity check of the geometry);
- `B_vocab`: the largest update norm over every token of the UNSCALED runs (natural vocabulary
  embeddings only), checked on scaled and learned tokens - a real test of whether updates stay
  bounded when the input norm leaves the vocabulary's range.

- `B_analytic` (pre-norm families): a TRUE sup from the weights alone (see
  `analytic_update_bound`): for Gemma's sandwich norms B_l <= sqrt(d) (max|1 + w_attn| + max|1 + w_ffw|);
  for CLIP / Whisper spectral norms of the projections times LayerNorm output radii. The lemma
  applies per block even though a block's second sub-layer sees x + attention: F_l stays bounded.

Post-norm models (BERT) are not of the form x + F(Norm(x)): their blocks end in a LayerNorm, so
the lemma's premise fails; the same quantities are still measured and reported.

Angles come from `geomkit.geometry.angle_deg` (atan2, float64); activations are captured in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from geomkit.errors import GeomkitError
from geomkit.geometry import angle_deg
from geomkit.hooks import inject, run_with_cache
from geomkit.probes._threads import single_thread
from geomkit.probes.prompts import find_token, pad_id, pad_right, tokenize

DEFAULT_WORDS = ("dog", "cat", "car", "house")


# ---- pure bound functions -----------------------------------------------------------------------
def lemma2_bound_deg(b, x_norm) -> torch.Tensor:
    """Lemma 2: arcsin(B / ||x||) in degrees where B < ||x||, else 180 (vacuous)."""
    b = torch.as_tensor(b, dtype=torch.float64)
    x = torch.as_tensor(x_norm, dtype=torch.float64)
    ratio = b / x
    inside = ratio < 1
    return torch.where(inside, torch.rad2deg(torch.asin(ratio.clamp(max=1.0))), torch.full_like(ratio, 180.0))


def prop1_bound_deg(b: Sequence[float], x0_norm: float) -> Optional[float]:
    """Proposition 1 (first form): (pi/2) sum_l B_l / (||x0|| - sum_{j<l} B_j) in degrees,
    or None when ||x0|| <= S_L (the proposition does not apply)."""
    b = [float(v) for v in b]
    s = sum(b)
    if not x0_norm > s:
        return None
    total, before = 0.0, 0.0
    for bl in b:
        total += bl / (x0_norm - before)
        before += bl
    return math.degrees(math.pi / 2 * total)


_BOUNDED_ACTS = {"gelu", "quick_gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish"}  # |f(x)| <= |x|


def _spectral(w) -> float:
    return float(torch.linalg.matrix_norm(w.detach().double(), ord=2))


def _vnorm(b) -> float:
    return 0.0 if b is None else float(b.detach().double().norm())


def _ln_radius(ln) -> float:
    """sup ||LayerNorm(x)|| <= sqrt(d) max|gamma| + ||beta|| (eps only shrinks it)."""
    w = ln.weight.detach().double()
    return math.sqrt(w.numel()) * float(w.abs().max()) + _vnorm(getattr(ln, "bias", None))


def _attention_bound(attn, radius: float) -> float:
    """sup of an attention output when every value input has norm <= radius: each head mixes its
    value slices convexly, so ||head_h|| <= ||W_v,h|| r + ||b_v,h||."""
    wv, bv = attn.v_proj.weight, attn.v_proj.bias
    heads = int(attn.num_heads)
    hd = wv.shape[0] // heads
    sq = sum(
        (_spectral(wv[h * hd : (h + 1) * hd]) * radius + (_vnorm(bv[h * hd : (h + 1) * hd]) if bv is not None else 0.0)) ** 2
        for h in range(heads)
    )
    return _spectral(attn.out_proj.weight) * math.sqrt(sq) + _vnorm(attn.out_proj.bias)


def _mlp_bound(fc1, fc2, radius: float) -> float:
    return _spectral(fc2.weight) * (_spectral(fc1.weight) * radius + _vnorm(fc1.bias)) + _vnorm(fc2.bias)


def analytic_update_bound(enc) -> Optional[torch.Tensor]:
    """(L,) TRUE upper bounds on each block's update norm ||x_{l+1} - x_l||, from the weights alone,
    for pre-norm families where one follows (else None):

    - Gemma 2/3 sandwich norms: the update is post_attention_norm(.) + post_feedforward_norm(.),
      two RMSNorm outputs, each of norm <= sqrt(d) max|1 + w|;
    - CLIP text / Whisper decoder: every sub-layer input is a LayerNorm output (norm <= sqrt(d)
      max|gamma| + ||beta||; Whisper's cross-attention reads the audio encoder's final LayerNorm),
      attention mixes values convexly per head, and the activation satisfies |f(x)| <= |x|, so
      spectral norms of the projections bound each sub-layer.
    BERT is post-norm (its block is not x + F(Norm(x))): None. Computed once per encoder."""
    key = "probes.analytic_update_bound"
    if key not in enc._context:
        with single_thread():
            enc._context[key] = _analytic_update_bound(enc)
    return enc._context[key]


def _analytic_update_bound(enc) -> Optional[torch.Tensor]:
    cfg = getattr(enc.model, "config", None)
    fam = enc.family.name
    out = []
    if fam == "gemma":
        for block in enc.blocks:
            norms = [getattr(block, n, None) for n in ("post_attention_layernorm", "post_feedforward_layernorm")]
            if any(n is None or "gemma" not in type(n).__name__.lower() for n in norms):
                return None
            d = norms[0].weight.shape[-1]
            out.append(sum(float((1.0 + n.weight.detach().double()).abs().max()) for n in norms) * math.sqrt(d))
    elif fam == "clip-text":
        act = getattr(cfg, "hidden_act", None) or getattr(getattr(cfg, "text_config", None), "hidden_act", None)
        if act not in _BOUNDED_ACTS:
            return None
        for b in enc.blocks:
            out.append(
                _attention_bound(b.self_attn, _ln_radius(b.layer_norm1)) + _mlp_bound(b.mlp.fc1, b.mlp.fc2, _ln_radius(b.layer_norm2))
            )
    elif fam == "whisper-decoder":
        from geomkit.families import find_module

        if getattr(cfg, "activation_function", None) not in _BOUNDED_ACTS:
            return None
        enc_ln = find_module(enc.model, ("model.encoder.layer_norm", "encoder.layer_norm"))
        if enc_ln is None:
            return None
        r_audio = _ln_radius(enc_ln)
        for b in enc.blocks:
            out.append(
                _attention_bound(b.self_attn, _ln_radius(b.self_attn_layer_norm))
                + _attention_bound(b.encoder_attn, r_audio)
                + _mlp_bound(b.fc1, b.fc2, _ln_radius(b.final_layer_norm))
            )
    else:
        return None
    return torch.as_tensor(out, dtype=torch.float64)


# ---- measurement ---------------------------------------------------------------------------------
@dataclass
class BlockStats:
    """One run over a batch of prompts, each with one concept position."""

    angle: torch.Tensor  # (B, L) degrees: angle(x_l, x_{l+1}) at the concept
    x_norm: torch.Tensor  # (B, L) ||x_l|| at the concept
    update_norm: torch.Tensor  # (B, L) ||x_{l+1} - x_l|| at the concept
    max_update: torch.Tensor  # (L,) max over every non-padding token of the batch
    total_angle: torch.Tensor  # (B,) angle(x_0, x_L) at the concept
    x0_norm: torch.Tensor  # (B,)


def block_sites(enc) -> list[str]:
    return [s for i in range(enc.n_blocks) for s in (f"blocks.{i}.resid_pre", f"blocks.{i}.resid_post")]


def measure_blocks(enc, ids, attention_mask, positions, vectors=None) -> BlockStats:
    """Capture every block's input and output; `vectors` (B, d, raw-table space) replace the
    embedding at `positions` (B,) through `geomkit.hooks.inject` (None: the prompts as they are)."""
    positions = torch.as_tensor(positions, dtype=torch.long)
    rows = torch.arange(ids.shape[0])
    sites = block_sites(enc)
    with torch.no_grad():
        if vectors is None:
            _, cache = run_with_cache(enc, ids, attention_mask, sites=sites, dtype=torch.float64)
        else:
            mask = torch.zeros(ids.shape, dtype=torch.bool)
            mask[rows, positions] = True
            with inject(enc, vectors.to(enc.dtype), mask=mask):
                _, cache = run_with_cache(enc, ids, attention_mask, sites=sites, dtype=torch.float64)
    live = attention_mask.bool()
    angles, xn, un, mx = [], [], [], []
    for i in range(enc.n_blocks):
        pre, post = cache[f"blocks.{i}.resid_pre"], cache[f"blocks.{i}.resid_post"]
        upd = (post - pre).norm(dim=-1)  # (B, T)
        mx.append(upd[live].max())
        a, b = pre[rows, positions], post[rows, positions]
        angles.append(angle_deg(a, b))
        xn.append(a.norm(dim=-1))
        un.append(upd[rows, positions])
    x0 = cache["blocks.0.resid_pre"][rows, positions]
    xl = cache[f"blocks.{enc.n_blocks - 1}.resid_post"][rows, positions]
    return BlockStats(
        angle=torch.stack(angles, 1),
        x_norm=torch.stack(xn, 1),
        update_norm=torch.stack(un, 1),
        max_update=torch.stack(mx),
        total_angle=angle_deg(x0, xl),
        x0_norm=x0.norm(dim=-1),
    )


@dataclass
class ConceptPrompts:
    """Tokenised templates with the reference word in place and where it stands."""

    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    token_id: int
    prompts: list


def place_word(enc, templates: Sequence[str], word: str) -> ConceptPrompts:
    """Fill each `{}` template with `word` and find the word's (single) token; templates where
    the tokenizer merges it differently are skipped."""
    tid = enc.token_id(word)
    texts = [t.replace("{}", word) for t in templates]
    tok = tokenize(enc, texts)
    keep = [(s, find_token(s, sp, tid), txt) for s, sp, txt in zip(tok.ids, tok.special, texts)]
    keep = [k for k in keep if k[1] is not None]
    if not keep:
        raise GeomkitError(f"{word!r} ({enc.name} token {tid}) was not found as a token in any prompt; choose another word")
    ids, mask = pad_right([k[0] for k in keep], pad_id(enc))
    return ConceptPrompts(ids, mask, torch.as_tensor([k[1] for k in keep]), tid, [k[2] for k in keep])


# ---- the experiment ------------------------------------------------------------------------------
@dataclass
class Run:
    concept: str
    scale: Optional[float]
    stats: BlockStats
    word: str  # the vocabulary word whose place the concept takes


def run_residual_angles(
    enc,
    templates: Sequence[str],
    words: Sequence[str] = DEFAULT_WORDS,
    scales: Sequence[float] = (0.5, 1, 2, 4, 8, 16),
    learned: Optional[dict] = None,
) -> dict:
    """All runs, both B_l estimates, and results rows (see the module docstring).
    `learned` maps a name to (n_vectors, d) raw-table vectors; each row is placed where the first
    word stands, and multi-vector tokens give one result row per vector (`name[k]`)."""
    if not words:
        raise GeomkitError("no vocabulary words given")
    table = enc.embedding_table()
    runs: list[Run] = []
    vocab_runs: list[BlockStats] = []
    placed = {w: place_word(enc, templates, w) for w in words}
    from geomkit.report import progress

    n_learned = sum(int(torch.as_tensor(v).reshape(-1, torch.as_tensor(v).shape[-1]).shape[0]) for v in (learned or {}).values())
    bar = progress(total=len(words) * (1 + len(scales)) + n_learned, desc=f"residual angles over {enc.n_blocks} blocks", unit="run")
    for w, cp in placed.items():
        base = table[cp.token_id].to(torch.float32)
        plain = measure_blocks(enc, cp.ids, cp.mask, cp.positions)  # natural embeddings, no injection
        vocab_runs.append(plain)
        bar.update(1)
        for m in scales:
            vecs = (base * float(m)).expand(len(cp.positions), -1)
            runs.append(Run(w, float(m), measure_blocks(enc, cp.ids, cp.mask, cp.positions, vecs), w))
            bar.update(1)
    ref = placed[words[0]]
    for name, vectors in (learned or {}).items():
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        if vectors.ndim == 1:
            vectors = vectors[None]
        for k, v in enumerate(vectors):
            label = name if len(vectors) == 1 else f"{name}[{k}]"
            vecs = v.expand(len(ref.positions), -1)
            runs.append(Run(label, None, measure_blocks(enc, ref.ids, ref.mask, ref.positions, vecs), words[0]))
            bar.update(1)
    bar.close()

    b_vocab = torch.stack([r.max_update for r in vocab_runs]).amax(0)
    b_emp = torch.stack([b_vocab] + [r.stats.max_update for r in runs]).amax(0)
    b_an = analytic_update_bound(enc)
    rows = [summarise(r, b_emp, b_vocab, b_an) for r in runs]
    return {
        "model": enc.name,
        "family": enc.family.name,
        "prenorm": enc.family.prenorm,
        "norm": enc.family.norm,
        "n_blocks": enc.n_blocks,
        "words": list(words),
        "n_prompts": {w: len(cp.positions) for w, cp in placed.items()},
        "B_empirical": b_emp.tolist(),
        "B_vocab": b_vocab.tolist(),
        "S_L_empirical": float(b_emp.sum()),
        "S_L_vocab": float(b_vocab.sum()),
        "B_analytic": None if b_an is None else b_an.tolist(),
        "S_L_analytic": None if b_an is None else float(b_an.sum()),
        "vocab_x0_norm": float(torch.cat([r.x0_norm for r in vocab_runs]).mean()),
        "rows": rows,
        "by_scale": by_scale(rows),
    }


def _per_block_mean(t: torch.Tensor) -> list:
    return t.mean(0).tolist()


def summarise(run: Run, b_emp: torch.Tensor, b_vocab: torch.Tensor, b_analytic: Optional[torch.Tensor] = None) -> dict:
    s = run.stats
    bound = lemma2_bound_deg(b_emp[None, :], s.x_norm)  # (B, L)
    bound_v = lemma2_bound_deg(b_vocab[None, :], s.x_norm)
    tol = 1e-9  # degrees: float64 rounding
    within = (s.angle <= bound + tol).double()
    within_v = (s.angle <= bound_v + tol).double()
    nonvac = bound < 180.0
    p1 = [prop1_bound_deg(b_emp.tolist(), float(x)) for x in s.x0_norm]
    p1v = [prop1_bound_deg(b_vocab.tolist(), float(x)) for x in s.x0_norm]
    applicable = [v for v in p1 if v is not None]
    applicable_v = [(v, float(a)) for v, a in zip(p1v, s.total_angle) if v is not None]
    informative = s.angle[nonvac]
    extra = {}
    if b_analytic is not None:
        bound_a = lemma2_bound_deg(b_analytic[None, :], s.x_norm)
        p1a = [prop1_bound_deg(b_analytic.tolist(), float(x)) for x in s.x0_norm]
        extra = {
            "bound_analytic_deg": _per_block_mean(bound_a),
            "violations_analytic": int((s.angle > bound_a + tol).sum()),
            # the share of measurements where this bound says anything (below 180 deg): where it is
            # 180 it cannot be violated, so "0 violations" is a test only on this share
            "nonvacuous_analytic_fraction": float((bound_a < 180.0).double().mean()),
            "update_over_analytic_max": float((s.update_norm / b_analytic[None, :]).max()),
            "prop1_analytic_applicable": sum(v is not None for v in p1a) / len(p1a),
        }
    row = {
        "concept": run.concept,
        "scale": run.scale,
        "word": run.word,
        "mean_angle_deg": float(s.angle.mean()),
        "per_block_deg": _per_block_mean(s.angle),
        "bound_deg": _per_block_mean(bound),
        "within_bound": _per_block_mean(within),
        "bound_vocab_deg": _per_block_mean(bound_v),
        "within_bound_vocab": _per_block_mean(within_v),
        "violations": int((within == 0).sum()),
        "violations_vocab": int((within_v == 0).sum()),
        "nonvacuous_fraction": float(nonvac.double().mean()),
        "nonvacuous_vocab_fraction": float((bound_v < 180.0).double().mean()),
        "angle_over_bound": float((informative / bound[nonvac]).mean()) if informative.numel() else None,
        "x_norm": _per_block_mean(s.x_norm),
        "update_norm": _per_block_mean(s.update_norm),
        "x0_norm": float(s.x0_norm.mean()),
        "total_angle_deg": float(s.total_angle.mean()),
        "prop1_bound_deg": (sum(applicable) / len(applicable)) if applicable else None,
        "prop1_applicable": len(applicable) / len(p1),
        "prop1_vocab_violations": sum(1 for v, a in applicable_v if a > v + tol),
        "prop1_vocab_applicable": len(applicable_v) / len(p1v),
        "n_prompts": int(s.angle.shape[0]),
    }
    row.update(extra)
    return row


def by_scale(rows: list) -> list:
    """Rows of vocabulary words averaged over words, one per scale (learned rows as they are)."""
    out, seen = [], {}
    for r in rows:
        key = ("<vocabulary>", r["scale"]) if r["scale"] is not None else (r["concept"], None)
        seen.setdefault(key, []).append(r)
    for (concept, scale), group in seen.items():
        n = sum(g["n_prompts"] for g in group)
        w = [g["n_prompts"] / n for g in group]
        avg = lambda k: sum(wi * g[k] for wi, g in zip(w, group))  # noqa: E731, B023 (used at once, inside the loop)
        per_block = lambda k: [sum(wi * g[k][i] for wi, g in zip(w, group)) for i in range(len(group[0][k]))]  # noqa: E731, B023
        row = (
            {
                "concept": concept,
                "scale": scale,
                "mean_angle_deg": avg("mean_angle_deg"),
                "mean_bound_deg": sum(wi * sum(g["bound_deg"]) / len(g["bound_deg"]) for wi, g in zip(w, group)),
                "mean_bound_vocab_deg": sum(wi * sum(g["bound_vocab_deg"]) / len(g["bound_vocab_deg"]) for wi, g in zip(w, group)),
                "violations": sum(g["violations"] for g in group),
                "violations_vocab": sum(g["violations_vocab"] for g in group),
                "violations_analytic": sum(g["violations_analytic"] for g in group) if "violations_analytic" in group[0] else None,
                "nonvacuous_fraction": avg("nonvacuous_fraction"),
                "nonvacuous_vocab_fraction": avg("nonvacuous_vocab_fraction"),
                "x0_norm": avg("x0_norm"),
                "total_angle_deg": avg("total_angle_deg"),
                "prop1_applicable": avg("prop1_applicable"),
                "n_measurements": sum(g["n_prompts"] * len(g["per_block_deg"]) for g in group),
                "per_block_deg": per_block("per_block_deg"),
                "bound_deg": per_block("bound_deg"),
                "bound_vocab_deg": per_block("bound_vocab_deg"),
            }
        )
        if "nonvacuous_analytic_fraction" in group[0]:
            row["nonvacuous_analytic_fraction"] = avg("nonvacuous_analytic_fraction")
        if "bound_analytic_deg" in group[0]:
            row["bound_analytic_deg"] = per_block("bound_analytic_deg")
            row["mean_bound_analytic_deg"] = sum(row["bound_analytic_deg"]) / len(row["bound_analytic_deg"])
        out.append(row)
    return out
