"""The residual-angles and inspect figures read at a glance (issue 18, item 8): few lines a panel,
Lemma 2 bounds only where they apply and named, y-axes fitted to the data, a token at m* visible.
Synthetic results dicts (seconds), plus the committed results.json files where present."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import matplotlib  # noqa: E402  (a dependency of geomkit: never skipped)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from geomkit.commands import inspect as ins_cmd  # noqa: E402
from geomkit.commands import residual_angles as ra  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEEDS = [f"<{c}> ({c}-s{s}-{m})" for c in ("glimmerfox", "emberkettle", "hollowmere") for s in (1, 2, 3)
         for m in ("ti", "ti-rescaled", "dti", "dti-kappa0")]


def synthetic(n_blocks=12, scales=(1, 16, 64, 256), learned=(), prenorm=True, words=("dog", "cat", "car"),
              low=5.0, high=60.0, vacuous_blocks=(0, 1, 2), all_vacuous_scale=None):
    """A residual-angles results dict: angles between `low` and `high` deg, the bound 180 deg
    (vacuous) at `vacuous_blocks` and 20 deg above the angle elsewhere."""
    rng = np.random.default_rng(0)
    rows, by = [], []

    def group(concept, scale):
        per = rng.uniform(low, high, n_blocks)
        bound = np.where(np.isin(np.arange(n_blocks), vacuous_blocks), 180.0, np.minimum(per + 20, 170.0))
        if scale is not None and scale == all_vacuous_scale:
            bound = np.full(n_blocks, 180.0)
        return {"concept": concept, "scale": scale, "mean_angle_deg": float(per.mean()), "per_block_deg": per.tolist(),
                "bound_deg": bound.tolist(), "bound_vocab_deg": bound.tolist()}

    for m in scales:
        ws = [dict(group(w, m), word=w) for w in words]
        rows += ws
        g = group("<vocabulary>", m)
        g["per_block_deg"] = np.mean([w["per_block_deg"] for w in ws], 0).tolist()
        g["mean_angle_deg"] = float(np.mean(g["per_block_deg"]))
        by.append(g)
    for c in learned:
        g = group(c, None)
        rows.append(g)
        by.append(g)
    return {"n_blocks": n_blocks, "prenorm": prenorm, "words": list(words), "rows": rows, "by_scale": by}


def _bound_axes(fig):
    return [ax for ax in fig.axes if "bound" in ax.get_ylabel().lower()]


def _angle_axes(fig):
    return [ax for ax in fig.axes if ax.get_ylabel().startswith("angle")]


def _figure_text(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""] + [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_ylabel()] + [t.get_text() for t in ax.texts]
        if ax.get_legend():
            parts += [t.get_text() for t in ax.get_legend().get_texts()]
    return "\n".join(parts)


CASES = {
    "gemma-like: 6 scales, 2 learned": dict(n_blocks=18, scales=(0.5, 1, 2, 4, 8, 16), learned=SEEDS[:0] + ["<g> (train-ti)", "<g> (train-dti)"]),
    "3 learned, 4 scales": dict(scales=(1, 16, 64, 256), learned=["<g> (train-ti)", "<g> (train-dti)", "<g> (train-ti-highlr)"]),
    "seeds: 36 learned": dict(learned=SEEDS),
    "seeds: 12 learned, 7 scales": dict(scales=(0.5, 1, 2, 4, 8, 16, 32), learned=SEEDS[:12]),
    "post-norm": dict(scales=(0.5, 1, 2, 4, 8, 16), prenorm=False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_residual_angles_at_most_six_lines_a_panel(case):
    fig = ra.plot(synthetic(**CASES[case]), "t")
    try:
        assert fig.axes
        for ax in fig.axes:
            assert len(ax.get_lines()) <= 6, (case, ax.get_title(), [ln.get_label() for ln in ax.get_lines()])
            assert len(ax.get_lines()) <= ra.MAX_SERIES
    finally:
        plt.close(fig)


def test_residual_angles_many_learned_tokens_grouped_by_method():
    fig = ra.plot(synthetic(learned=SEEDS), "t")
    try:
        learned_ax = [ax for ax in _angle_axes(fig) if "trained tokens" in ax.get_title()]
        assert len(learned_ax) == 1
        labels = [ln.get_label() for ln in learned_ax[0].get_lines()]
        for m in ("ti", "ti-rescaled", "dti", "dti-kappa0"):
            assert any(lb.startswith(f"{m} (n = 9)") for lb in labels), labels
        assert any(lb.startswith("words at m = 1 (reference") for lb in labels)
        assert len(learned_ax[0].collections) >= 4  # a min-max band per method (and the words' band)
        assert "36 trained tokens" in _figure_text(fig)
    finally:
        plt.close(fig)


def test_method_of_reads_the_seeds_labels():
    assert ra.method_of("<glimmerfox> (glimmerfox-s1-dti)") == "dti"
    assert ra.method_of("<hollowmere> (hollowmere-s3-dti-kappa0)") == "dti-kappa0"
    assert ra.method_of("<emberkettle> (emberkettle-s2-ti-rescaled)") == "ti-rescaled"
    assert ra.method_of("<glimmerfox> (train-ti)") is None
    # a ti-rescaled run exports the plain TI token beside the rescaled one: the labels the file
    # loader gives the two files of one run folder name both methods correctly
    from geomkit.embeddings_io import distinct_names

    run = "/x/trained-seeds/glimmerfox-s1-ti-rescaled"
    labels = distinct_names([f"{run}/learned_embeds.safetensors", f"{run}/learned_embeds_unrescaled.safetensors"],
                            ["<glimmerfox>", "<glimmerfox>"])
    assert [ra.method_of(x) for x in labels] == ["ti-rescaled", "ti"]


def test_residual_angles_post_norm_draws_no_bound_and_says_why():
    fig = ra.plot(synthetic(prenorm=False, learned=["<g> (train-ti)"]), "t")
    try:
        assert _bound_axes(fig) == []
        assert not any("bound" in ln.get_label().lower() for ax in fig.axes for ln in ax.get_lines())
        assert all(ln.get_linestyle() != "--" for ax in fig.axes for ln in ax.get_lines())
        assert "do not apply" in _figure_text(fig)
    finally:
        plt.close(fig)


def test_residual_angles_bounds_labelled_and_only_below_180():
    res = synthetic(n_blocks=10, vacuous_blocks=(0, 1, 5), all_vacuous_scale=1, learned=["<g> (train-ti)"])
    fig = ra.plot(res, "t")
    try:
        bound_axes = _bound_axes(fig)
        assert len(bound_axes) == len(_angle_axes(fig)) == 2
        for ax in bound_axes:
            lines = ax.get_lines()
            legend = [t.get_text() for t in ax.get_legend().get_texts()]
            assert lines and len(legend) == len(lines)
            assert all(t.startswith("bound for ") for t in legend)
            for ln in lines:
                y = np.asarray(ln.get_ydata(), float)
                assert np.all(np.isnan(y) | (y < 179.99)), "a vacuous (180 deg) bound is drawn"
                assert np.isnan(y[[0, 1, 5]]).all()
            assert ax.get_ylim()[1] <= 182
        text = _figure_text(fig)
        assert "bound for m = 1: 180 deg (vacuous) at every block" in text
        assert "180 deg at blocks 0-1, 5" in text
        assert "vacuous (180 deg)" in text  # the shaded blocks say so
    finally:
        plt.close(fig)


@pytest.mark.parametrize("low,high", [(5.0, 60.0), (0.5, 9.0), (40.0, 170.0)])
def test_residual_angles_y_axis_fits_the_data(low, high):
    res = synthetic(low=low, high=high, learned=["<g> (train-ti)", "<g> (train-dti)"])
    fig = ra.plot(res, "t")
    try:
        data_top = max(max(r["per_block_deg"]) for r in res["rows"])
        for ax in _angle_axes(fig):
            lo, hi = ax.get_ylim()
            assert lo == 0
            assert hi >= data_top
            assert hi <= 1.15 * data_top + 2, (hi, data_top)
        bound_top = max(b for r in res["by_scale"] for b in r["bound_vocab_deg"] if b < 179.99)
        for ax in _bound_axes(fig):
            assert bound_top <= ax.get_ylim()[1] <= min(182, 1.15 * bound_top + 2)
    finally:
        plt.close(fig)


def test_residual_angles_titles_say_what_is_shown():
    fig = ra.plot(synthetic(learned=["<g> (train-ti)", "<g> (train-dti)"]), "per-block turning angle: model")
    try:
        sup = fig._suptitle.get_text()
        assert sup.startswith("per-block turning angle: model") and "2 trained tokens" in sup and "m = 1, 16, 64, 256" in sup
        assert any("trained tokens (learned embeddings)" in ax.get_title() for ax in fig.axes)
        assert any(ax.get_title().startswith("vocabulary words scaled by m = 1, 16, 64, 256") for ax in fig.axes)
    finally:
        plt.close(fig)
    fig = ra.plot(synthetic(), "t")
    try:
        assert "trained" not in _figure_text(fig)
    finally:
        plt.close(fig)


COMMITTED = (sorted(ROOT.glob("probes/*/residual-angles/results.json")) + sorted(ROOT.glob("probes/*/trained-angles/results.json"))
             + sorted(ROOT.glob("probes/*/trained-seeds/angles/results.json")))


def test_the_committed_figures_exist():
    """The parametrised test below runs on the committed outputs; an empty list would skip it."""
    assert len(COMMITTED) == 4 + 2 + 2  # residual-angles: 3 real models + the tiny random T5; trained: 2 + 2


@pytest.mark.parametrize("path", COMMITTED, ids=[str(p.relative_to(ROOT).parent) for p in COMMITTED])
def test_committed_residual_angles_figures(path):
    res = json.loads(path.read_text())
    fig = ra.plot(res, path.parent.parent.name)
    try:
        for ax in fig.axes:
            assert len(ax.get_lines()) <= 6
        if res.get("prenorm") is False:
            assert _bound_axes(fig) == [] and "do not apply" in _figure_text(fig)
        else:
            for ax in _bound_axes(fig):
                assert all(np.all(np.isnan(y) | (y < 179.99)) for y in (np.asarray(ln.get_ydata(), float) for ln in ax.get_lines()))
        if any(g["scale"] is None for g in res["by_scale"]):
            assert "trained token" in fig._suptitle.get_text()
        drawn = max(max(g["per_block_deg"]) for g in res["by_scale"])  # the lines (means over words)
        top = max([drawn] + [max(r["per_block_deg"]) for r in res["rows"]])  # the bands reach the single words
        for ax in _angle_axes(fig):
            assert drawn <= ax.get_ylim()[1] <= 1.15 * top + 2
    finally:
        plt.close(fig)


# ---- inspect ------------------------------------------------------------------------------------
def _panel(tokens, m_star=1.0, title="encoder 1: m"):
    live = np.random.default_rng(0).normal(m_star, 0.01 * m_star, 5000)
    live *= m_star / live.mean()
    return {"live": live, "m_star": float(live.mean()), "tokens": tokens, "title": title}


def _markers(ax):
    """(x, y in axes coordinates, colour) of each token marker drawn on ax."""
    out = []
    for ln in ax.get_lines():
        if ln.get_marker() in ("None", None, "") or len(ln.get_xdata()) != 1:
            continue
        out.append((float(ln.get_xdata()[0]), float(ln.get_ydata()[0]), ln.get_color()))
    return out


def test_inspect_token_at_m_star_stays_visible():
    p = _panel([])
    m = p["m_star"]
    p["tokens"] = [{"label": "<t> (dti)", "norm": m, "ratio": 1.0}, {"label": "<t> (ti) (rescaled)", "norm": m * (1 + 1e-9), "ratio": 1.0},
                   {"label": "<t> (ti)", "norm": m * 1.01, "ratio": 1.01}]
    fig = ins_cmd.plot([p], "t")
    try:
        (ax,) = fig.axes
        mstar = [ln for ln in ax.get_lines() if ln.get_label().startswith("m*")]
        assert len(mstar) == 1
        mline = mstar[0]
        at = [mk for mk in _markers(ax) if abs(mk[0] - m) < 1e-6 * m]
        assert len(at) == 2  # DTI and the rescaled TI: a marker each on the m* line
        assert at[0][1] != at[1][1]  # at different heights: neither hides the other
        assert len({mk[2] for mk in at} | {mline.get_color()}) == 3  # colours: m*, DTI, rescaled TI all differ
        # the m* line is dashed, on top; the tokens' lines differ from it
        token_lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 2 and ln is not mline and ln.get_label().startswith("_")]
        assert mline.get_linestyle() == "--" and mline.get_zorder() > max(ln.get_zorder() for ln in token_lines)
        texts = [t.get_text() for t in ax.texts]
        assert "<t> (dti) = m*" in texts and "<t> (ti) (rescaled) = m*" in texts
        assert any("(1.01x m*)" in t for t in texts)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert sum("= m*" in t for t in legend) == 2
    finally:
        plt.close(fig)


def test_inspect_far_token_still_marked_on_its_own_panel():
    p = _panel([{"label": "<t> (dti)", "norm": 1.0, "ratio": 1.0}, {"label": "<t> (ti)", "norm": 27.0, "ratio": 27.0}])
    fig = ins_cmd.plot([p], "t")
    try:
        main, side = fig.axes
        assert [mk[0] for mk in _markers(side)] == [27.0]
        assert any("27.0x m*" in t.get_text() for t in side.texts)
        assert any("-> right panel" in t.get_text() for t in main.get_legend().get_texts())
    finally:
        plt.close(fig)
