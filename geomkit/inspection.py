"""Health of a learned token (a downloaded or trained embedding) on one text encoder: pure
computations behind `geomkit inspect`, built on the existing analyses.

- norm, the encoder's m* (mean non-zero vocabulary norm, DTI's fixed magnitude), norm / m*, and the
  percentile of the norm among the vocabulary's non-zero row norms (`geometry.row_norms`/`norm_stats`);
- top-k vocabulary neighbours by cosine and by Euclidean distance (`geometry.nearest`);
- Effect I: position-probe accuracy at LN(e + p) with the token standing at each content position
  of held-out prompts, beside the accuracy of the prompts' own tokens (`probes.position`); only for
  models with absolute position embeddings (RoPE models have no LN(e + p): null, with the reason);
- Effect II: the token's mean per-block residual angle, angle(x_l, x_{l+1}) averaged over blocks and
  prompts, beside a vocabulary word's in the same prompts and place (`probes.residual`);
- a one-line verdict (thresholds below).

Verdict thresholds (each states what it tests; the numbers behind them are in the README):
- INFLATED_RATIO = 2: Lemma 1 gives LN(m e + p) = LN(e + p / m): at m = 2 the position's share of the
  normalised input is already halved, while a vocabulary's own norms sit near their mean (Gemma 3
  270M, Q4_K_M weights: max/mean 1.004, probes/gemma3-270m/norms). A norm beyond EVERY vocabulary
  norm (percentile 100) is also called inflated.
- SMALL_RATIO = 0.5: below half the mean the token is weaker than almost every word beside it.
- POSITION_DROP = 0.10: accuracy 10 points below the normal tokens' (probe noise on ~100 held-out
  prompts is a few points) means the position was measurably lost (Effect I).
- FROZEN_FRACTION = 0.5: a residual turn less than half the vocabulary word's means the blocks barely
  move the token (Effect II: the other words' context does not reach it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from geomkit.geometry import nearest, norm_stats, row_norms

INFLATED_RATIO = 2.0
SMALL_RATIO = 0.5
POSITION_DROP = 0.10
FROZEN_FRACTION = 0.5


# ---- norms -------------------------------------------------------------------------------------
@dataclass
class VocabNorms:
    norms: torch.Tensor  # (V,) float64, every row (zero rows included)
    stats: dict  # norm_stats: mean (= m*), median, std, min, max, count, zero_rows

    @property
    def live(self) -> torch.Tensor:
        return self.norms[self.norms > 0]

    @property
    def m_star(self) -> float:
        return self.stats["mean"]


def vocab_norms(table: torch.Tensor) -> VocabNorms:
    norms = row_norms(table)
    return VocabNorms(norms, norm_stats(norms))


def norm_percentile(value: float, live: torch.Tensor) -> float:
    """Percent of the vocabulary's non-zero norms that are <= value (100: beyond every token)."""
    return float(100.0 * (live <= value).double().mean())


def norm_row(vector: torch.Tensor, vn: VocabNorms) -> dict:
    n = float(vector.double().norm())
    return {
        "norm": n,
        "m_star": vn.m_star,
        "norm_ratio": n / vn.m_star,
        "norm_percentile": norm_percentile(n, vn.live),
        "vocab_norm_max": vn.stats["max"],
        "vocab_norm_median": vn.stats["median"],
    }


def rescale(vectors: torch.Tensor, m_star: float) -> torch.Tensor:
    """Each row scaled to norm m* (TI-rescaled, as the trainer exports it), computed in float64."""
    from geomkit.train.exports import rescale as ti_rescale

    return ti_rescale(vectors.double(), m_star).to(torch.float32)


# ---- neighbours --------------------------------------------------------------------------------
def neighbours(table: torch.Tensor, vectors: torch.Tensor, token_str: Callable[[int], str], k: int = 10,
               token_text: Optional[Callable[[int], str]] = None) -> list[tuple[list, list]]:
    """[(cosine, euclidean)] per vector, each a list of {"token", "id", "score"} (+ "text", the
    token decoded for people, when `token_text` is given)."""
    cos, euc = nearest(table, vectors, k=k)

    def fmt(nb):
        rows = [{"token": token_str(int(i)), "id": int(i), "score": float(s)} for i, s in zip(nb.ids, nb.scores)]
        if token_text is not None:
            for r in rows:
                r["text"] = token_text(r["id"])
        return rows
    return [(fmt(c), fmt(e)) for c, e in zip(cos, euc)]


# ---- Effect I: position ------------------------------------------------------------------------
@dataclass
class PositionSetup:
    probe: object  # PositionProbe, or None with `reason`
    site: Optional[str]
    heldout: object  # Tokenized
    slots: list
    normal: float  # accuracy at the prompts' own tokens (no replacement)
    chance: float
    source: str  # "saved:<dir>" or "trained on the spot (...)"
    reason: Optional[str] = None


def no_positions_reason(enc) -> Optional[str]:
    if enc.family.positions != "absolute":
        return (
            f"{enc.name} ({enc.family.name}) has no absolute position embeddings ({enc.family.positions}): "
            "there is no LN(e + p) for the token to drown (Effect I does not apply)"
        )
    return None


def position_setup(
    enc,
    prompts: Sequence[str],
    *,
    probe_dir=None,
    held_out: float = 0.2,
    seed: int = 0,
    hidden: int = 128,
    epochs: int = 15,
    min_support: int = 5,
) -> PositionSetup:
    """The probe (loaded from `probe_dir`, else a quick one trained on `prompts`), the held-out
    prompts and the normal tokens' accuracy. A RoPE model gets probe None and the reason."""
    from geomkit.probes import position as pos
    from geomkit.probes.prompts import split_prompts, tokenize

    reason = no_positions_reason(enc)
    if reason:
        return PositionSetup(None, None, None, [], float("nan"), float("nan"), "", reason)
    site = pos.default_site(enc)
    train_p, test_p = split_prompts(prompts, held_out, seed)
    test_t = tokenize(enc, test_p)
    if probe_dir is not None:
        probe, _ = pos.load_probe(probe_dir, enc, site, flag="--probe-dir")
        source = f"saved: {probe_dir}"
    else:
        probe, _, _, train_acc = pos.fit_position_probe(
            enc, tokenize(enc, train_p), site, min_support=min_support, hidden=hidden, epochs=epochs, seed=seed
        )
        source = f"trained on the spot: {len(train_p)} prompts, {epochs} epochs, train accuracy {100 * train_acc:.1f}%"
    slots = pos.content_slots(test_t, probe.n_positions)
    normal = pos.evaluate_replaced(enc, probe, test_t, site, None, slots=slots).accuracy
    return PositionSetup(probe, site, test_t, slots, normal, 1.0 / probe.n_positions, source)


def position_accuracy(enc, setup: PositionSetup, vector: torch.Tensor) -> Optional[float]:
    """Probe accuracy with `vector` standing at every content slot of the held-out prompts in turn."""
    from geomkit.probes import position as pos

    if setup.probe is None:
        return None
    return pos.evaluate_replaced(enc, setup.probe, setup.heldout, setup.site, pos.fixed_replacement(vector), slots=setup.slots).accuracy


# ---- Effect II: residual angles ----------------------------------------------------------------
@dataclass
class ResidualSetup:
    word: str
    prompts: object  # ConceptPrompts
    vocab_angle: float  # mean over blocks and prompts, degrees
    vocab_per_block: list


def residual_setup(enc, templates: Sequence[str], word: str) -> ResidualSetup:
    from geomkit.probes.residual import measure_blocks, place_word

    cp = place_word(enc, templates, word)
    plain = measure_blocks(enc, cp.ids, cp.mask, cp.positions)
    return ResidualSetup(word, cp, float(plain.angle.mean()), plain.angle.mean(0).tolist())


def residual_angle(enc, setup: ResidualSetup, vector: torch.Tensor) -> tuple[float, list]:
    """(mean angle, per-block mean angles) in degrees with `vector` where the word stands."""
    from geomkit.probes.residual import measure_blocks

    cp = setup.prompts
    stats = measure_blocks(enc, cp.ids, cp.mask, cp.positions, vector.to(torch.float32).expand(len(cp.positions), -1))
    return float(stats.angle.mean()), stats.angle.mean(0).tolist()


# ---- verdict -----------------------------------------------------------------------------------
def verdict(row: dict) -> str:
    """One line from a token row (norm_ratio, norm_percentile, position_accuracy(+_normal),
    residual_angle_deg, vocab_residual_angle_deg); thresholds in the module docstring."""
    ratio, pct = row["norm_ratio"], row["norm_percentile"]
    facts, problems = [], []
    inflated = ratio > INFLATED_RATIO or pct >= 100.0
    small = ratio < SMALL_RATIO
    if inflated:
        beyond = ", beyond every vocabulary token" if pct >= 100.0 else ""
        facts.append(f"norm {ratio:.1f}x m*{beyond}")
    elif small:
        facts.append(f"norm {ratio:.2f}x m* (weaker than {100 - pct:.0f}% of the vocabulary)")
    else:
        facts.append(f"norm {ratio:.2f}x m*, within the vocabulary's range")
    pa, pn = row.get("position_accuracy"), row.get("position_accuracy_normal")
    lost_position = pa is not None and pn is not None and pa < pn - POSITION_DROP
    if pa is not None and pn is not None:
        facts.append(f"position read {100 * pa:.0f}% vs {100 * pn:.0f}% for normal tokens")
        if lost_position:
            problems.append("position (Effect I)")
    ra, rv = row.get("residual_angle_deg"), row.get("vocab_residual_angle_deg")
    frozen = ra is not None and rv is not None and rv > 0 and ra < FROZEN_FRACTION * rv
    if ra is not None and rv is not None:
        facts.append(f"turns {ra:.2f} deg/block vs {rv:.2f} for {row.get('residual_word', 'a word')!r}")
        if frozen:
            problems.append("the context of the rest of the prompt (Effect II)")
    head = "; ".join(facts)
    if inflated and (problems or (pa is None and ra is None)):
        what = " and ".join(problems) if problems else "position and the rest of the prompt (Effects I/II)"
        return f"{head}: likely to drown {what}; consider DTI or --fix rescale"
    if inflated:
        return f"{head}: inflated norm, but no measured effect beyond the thresholds here; --fix rescale brings it to m*"
    if problems:
        return f"{head}: {' and '.join(problems)} measurably affected despite the norm; check the token in prompts"
    if small:
        return f"{head}: unusually small norm; the token may be under-weighted in prompts"
    return f"{head}: healthy"
