"""`geomkit residual-angles`: per-block turning angles of a concept token beside Lemma 2 / Prop. 1 bounds (Effect II)."""

from __future__ import annotations

from geomkit.commands._common import add_model_args, add_out_arg, existing_file, positive_int, scale_list, seed_int, word_list

NAME = "residual-angles"
ORDER = 41
HELP = "per-block angle of a concept token's hidden state vs. its norm, with Lemma 2 / Prop. 1 bounds (Effect II)"
DESCRIPTION = (
    "For concept tokens in prompts - vocabulary words whose embedding is scaled by each m in --scales, and learned "
    "embeddings (--embedding) placed where the first word stands - measure the angle between the token's hidden "
    "state entering and leaving each block, per block and averaged over blocks and prompts. Beside each angle: "
    "Lemma 2's bound arcsin(B_l/||x_l||) with B_l estimated (a) as the largest update norm seen at block l over every "
    "token of every run, (b) over unscaled vocabulary runs only (a real test on scaled tokens), and (c) where the "
    "architecture allows, a true bound from the weights. Proposition 1's cumulative bound where ||x_0|| > S_L."
)

DEFAULT_SCALES = "0.5,1,2,4,8,16"


def add_arguments(p):
    p.add_argument("--scales", default=DEFAULT_SCALES, type=scale_list, metavar="M,M,...", help=f"embedding scales m (default {DEFAULT_SCALES})")
    p.add_argument("--words", default="dog,cat,car,house", type=word_list, metavar="W,W,...", help="concept words, each one token (default dog,cat,car,house)")
    p.add_argument("--embedding", nargs="+", action="extend", default=[], type=existing_file, metavar="FILE", help="learned embedding file(s), placed where the first word stands")
    p.add_argument("--prompts", default=None, type=existing_file, metavar="FILE", help="template file, one '{}' per line (default: the packaged evaluation prompts)")
    p.add_argument("--max-prompts", type=positive_int, default=None, metavar="N", help="use a seeded subset of N templates (faster)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the template subset (default 0)")
    add_model_args(p)
    add_out_arg(p, "runs/residual-angles")


MAX_SERIES = 5  # lines per panel, reference line included: more and a reader stops telling them apart
BOUND_KEY = "bound_vocab_deg"  # the informative bound; the weights' bound is often vacuous (180)
VACUOUS_DEG = 179.99  # arcsin(B_l / ||x_l||) with B_l >= ||x_l||: the bound says nothing
LEARNED_STYLES = [  # distinct from the scale colour map and from one another
    {"color": "#1F4E9C", "ls": "-", "marker": "X"},
    {"color": "#D62728", "ls": (0, (5, 2)), "marker": "D"},
    {"color": "#17BECF", "ls": "-.", "marker": "P"},
    {"color": "#8C564B", "ls": ":", "marker": "*"},
]
REFERENCE_STYLE = {"color": "#888888", "ls": "-", "marker": None}
SCALE_MARKERS = ["o", "s", "^", "v", "<", ">", "p", "h"]


def scale_colors(n: int):
    """n colours along a sequential map (small m light, large m dark), so neighbouring scales differ."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("viridis_r")
    return [cmap(0.15 + 0.85 * i / max(1, n - 1)) for i in range(n)]


def method_of(label: str):
    """The training method in a learned token's label, when the run folder names a seed:
    '<glimmerfox> (glimmerfox-s1-dti)' -> 'dti'; a ti-rescaled run's unrescaled export,
    '<glimmerfox> (glimmerfox-s1-ti-rescaled, unrescaled)', is the plain TI token -> 'ti'; None
    when the label carries no such suffix."""
    import re

    m = re.search(r"\(([^()]*)\)\s*$", label)
    inner = m.group(1) if m else label
    if inner.endswith(", unrescaled"):
        return "ti"
    s = re.search(r"-s\d+-(.+)$", inner)
    return s.group(1) if s else None


def _chunks(items: list, most: int) -> list:
    """items split into the fewest panels of at most `most`, as even as possible."""
    if not items:
        return []
    k = -(-len(items) // most)
    size = -(-len(items) // k)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _series(results: dict) -> list:
    """The panels' contents: [(panel title, [series])]. A series: label, mean (per block), lo/hi
    (a band, or None), bound (per block, or None), style. Vocabulary words: one line per scale m
    (mean over the words, band from the least to the most turning word). Learned tokens: one line
    each, or, when there are more than fit a panel, one line per training method (mean, band from
    min to max over the method's tokens, bound the loosest of them)."""
    import numpy as np

    groups = results["by_scale"]
    rows = results.get("rows", [])
    scaled = [g for g in groups if g["scale"] is not None]
    learned = [g for g in groups if g["scale"] is None]
    words = results.get("words") or sorted({r.get("word") for r in rows if r.get("scale") is not None} - {None})

    def word_band(scale):
        per = [r["per_block_deg"] for r in rows if r.get("scale") == scale and r.get("per_block_deg")]
        if len(per) < 2:
            return None, None
        a = np.asarray(per, dtype=float)
        return a.min(0), a.max(0)

    def word_series(g, color, marker):
        lo, hi = word_band(g["scale"])
        return {"label": f"m = {g['scale']:g}: mean {g['mean_angle_deg']:.1f} deg", "short": f"m = {g['scale']:g}",
                "mean": np.asarray(g["per_block_deg"], float), "lo": lo, "hi": hi,
                "bound": np.asarray(g[BOUND_KEY], float) if BOUND_KEY in g else None,
                "style": {"color": color, "ls": "-", "marker": marker}}

    colors = scale_colors(len(scaled))
    word_lines = [word_series(g, c, SCALE_MARKERS[i % len(SCALE_MARKERS)]) for i, (g, c) in enumerate(zip(scaled, colors))]
    for w in word_lines:  # one band per scale would cover the panel: the words' spread is shown on the reference only
        w["lo"] = w["hi"] = None
    ref = None
    if scaled:
        at1 = min(scaled, key=lambda g: abs(np.log(g["scale"])) if g["scale"] > 0 else np.inf)
        ref = word_series(at1, REFERENCE_STYLE["color"], None)
        ref["style"] = dict(REFERENCE_STYLE)
        ref["label"] = (f"words at m = {at1['scale']:g} (reference{'; band: min-max over the words' if ref['lo'] is not None else ''}): "
                        f"mean {at1['mean_angle_deg']:.1f} deg")
        ref["short"] = f"words, m = {at1['scale']:g}"
        ref["reference"] = True
    n_words = f"{len(words)} words" if words else "words"
    panels = []
    word_chunks = _chunks(word_lines, MAX_SERIES - (1 if len(word_lines) > MAX_SERIES else 0))
    for chunk in word_chunks:
        ms = ", ".join(s["short"].split("= ")[1] for s in chunk)
        extra = [] if len(word_chunks) == 1 or any(s["short"] == ref["short"].replace("words, ", "") for s in chunk) else [ref]
        panels.append((f"vocabulary words scaled by m = {ms} (mean of {n_words})", chunk + extra))

    if learned:
        if len(learned) <= MAX_SERIES - 1:
            items = [{"label": f"{g['concept']}: mean {g['mean_angle_deg']:.1f} deg", "short": g["concept"],
                      "mean": np.asarray(g["per_block_deg"], float), "lo": None, "hi": None,
                      "bound": np.asarray(g[BOUND_KEY], float) if BOUND_KEY in g else None} for g in learned]
            what = "trained tokens (learned embeddings)"
        else:
            keys = [g.get("method") or method_of(g["concept"]) or g["concept"] for g in learned]
            by = {}
            for k, g in zip(keys, learned):
                by.setdefault(k, []).append(g)
            items = []
            for k, gs in by.items():
                a = np.asarray([g["per_block_deg"] for g in gs], float)
                means = [g["mean_angle_deg"] for g in gs]
                b = None
                if all(BOUND_KEY in g for g in gs):
                    b = np.asarray([g[BOUND_KEY] for g in gs], float).max(0)
                label = (f"{k} (n = {len(gs)}): mean {np.mean(means):.1f} deg, tokens {min(means):.1f}-{max(means):.1f}"
                         if len(gs) > 1 else f"{k}: mean {means[0]:.1f} deg")
                items.append({"label": label, "short": f"{k} (n = {len(gs)})" if len(gs) > 1 else k, "mean": a.mean(0),
                              "lo": a.min(0) if len(gs) > 1 else None, "hi": a.max(0) if len(gs) > 1 else None,
                              "bound": b, "n": len(gs)})
            what = f"{len(learned)} trained tokens (learned embeddings) by method, band: min-max over tokens"
        for i, it in enumerate(items):
            it["style"] = LEARNED_STYLES[i % len(LEARNED_STYLES)] if i < len(LEARNED_STYLES) else {
                "color": f"C{i % 10}", "ls": "-", "marker": "o"}
        for chunk in _chunks(items, MAX_SERIES - (1 if ref else 0)):
            panels.append((what + (f", beside words at m = {ref['short'].split('= ')[1]}" if ref else ""),
                           chunk + ([ref] if ref else [])))
    return panels


def _runs(idx: list) -> list:
    """[0, 1, 3, 4, 5] -> [[0, 1], [3, 4, 5]]: consecutive blocks together."""
    out = []
    for b in idx:
        if out and out[-1][-1] == b - 1:
            out[-1].append(b)
        else:
            out.append([b])
    return out


def _blocks_text(idx: list) -> str:
    """[0, 1, 3, 4, 5] -> '0-1, 3-5'."""
    return ", ".join(f"{r[0]}" if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in _runs(idx))


def _legend_below(ax, last_row: bool):
    """The legend under its panel, so it hides no data (under the block axis on the last row)."""
    h, labels = ax.get_legend_handles_labels()
    if h:
        ax.legend(h, labels, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16 if last_row else -0.03),
                  ncol=2 if max(map(len, labels)) < 48 else 1, frameon=False, handlelength=2.6)


def plot(results: dict, title: str):
    """One row per group of series, at most MAX_SERIES lines a panel: vocabulary words at each
    scale m (split over rows when there are many scales), then the trained tokens beside the words
    at m = 1 (grouped by training method when there are many). Left: the measured per-block angle,
    y-axis scaled to the data. Right, for pre-norm models only: Lemma 2's bound for the same series,
    drawn only below 180 deg; blocks where it is vacuous (180 deg) are shaded and named. A post-norm
    model gets no bound column and says why."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import textwrap

    import matplotlib.pyplot as plt
    import numpy as np

    blocks = np.arange(results["n_blocks"])
    panels = _series(results)
    prenorm = results.get("prenorm")
    has_bound = any(s["bound"] is not None for _, ss in panels for s in ss)
    show_bounds = has_bound and prenorm is not False
    ncols = 2 if show_bounds else 1
    nrows = max(1, len(panels))
    fig, axes = plt.subplots(nrows, ncols, figsize=(13.0 if show_bounds else 7.6, 1.0 + 3.6 * nrows), squeeze=False,
                             sharex=True, sharey="col", layout="constrained")
    # one y-scale a column, fitted to the data it shows (not 0-180), so panels compare at a glance
    angle_top = max([float(np.nanmax(s["hi"] if s["lo"] is not None else s["mean"])) for _, ss in panels for s in ss
                     if len(s["mean"])] + [1.0])
    bounds = [np.where(s["bound"] >= VACUOUS_DEG, np.nan, s["bound"]) for _, ss in panels for s in ss if s["bound"] is not None]
    bound_top = max([float(np.nanmax(b)) for b in bounds if np.isfinite(b).any()] + [0.0])
    learned_n = sum(1 for g in results["by_scale"] if g["scale"] is None)
    scales = [g["scale"] for g in results["by_scale"] if g["scale"] is not None]
    shown = []
    if scales:
        shown.append(f"vocabulary words at m = {', '.join(f'{m:g}' for m in scales)}")
    if learned_n:
        shown.append(f"{learned_n} trained token{'s' if learned_n > 1 else ''}")
    sub = " and ".join(shown)
    if prenorm is False:
        sub += ("\npost-norm model (blocks are LN(x + F(x))): Lemma 2 / Prop. 1 do not apply, so no bound is drawn")
    elif show_bounds:
        sub += "\nright: Lemma 2 bound arcsin(B_l / ||x_l||), B_l from unscaled vocabulary runs, drawn where below 180 deg"
    fig.suptitle(f"{title}\n{sub}" if sub else title, fontsize=10)
    if not panels:
        axes[0][0].text(0.5, 0.5, "nothing measured", ha="center", va="center", transform=axes[0][0].transAxes)
    for r, (ptitle, series) in enumerate(panels):
        ax = axes[r][0]
        for s in series:
            st = s["style"]
            ref = s.get("reference")
            ax.plot(blocks, s["mean"], color=st["color"], ls=st["ls"], marker=st["marker"], ms=4.5 if not ref else 0,
                    lw=1.2 if ref else 1.8, label=s["label"], zorder=2 if ref else 3)
            if s["lo"] is not None:
                ax.fill_between(blocks, s["lo"], s["hi"], color=st["color"], alpha=0.12, lw=0, zorder=1)
        ax.set_ylim(0, angle_top * 1.08 + 1)
        ax.set_ylabel("angle(x_l, x_l+1) (deg)")
        ax.set_title(textwrap.fill(ptitle, 80 if show_bounds else 90), fontsize=9)
        ax.grid(alpha=0.25)
        _legend_below(ax, last_row=r == nrows - 1)
        if not show_bounds:
            continue
        bx = axes[r][1]
        vac_all = np.ones(len(blocks), bool)
        for s in series:
            if s["bound"] is None:
                continue
            st = s["style"]
            b = s["bound"]
            vac = b >= VACUOUS_DEG
            vac_all &= vac
            shown_b = np.where(vac, np.nan, b)
            k = int(vac.sum())
            note = ("180 deg (vacuous) at every block" if k == len(b) else
                    f"180 deg at block{'s' if k > 1 else ''} {_blocks_text(list(np.flatnonzero(vac)))}" if k else "below 180 everywhere")
            loosest = " (loosest of the tokens)" if s.get("n", 1) > 1 else ""
            bx.plot(blocks, shown_b, color=st["color"], ls="--", marker=st["marker"] or "o", ms=4, lw=1.5,
                    label=f"bound for {s['short']}{loosest}: {note}")
        for run in _runs(list(np.flatnonzero(vac_all))):  # where no line has a bound: shaded and said
            bx.axvspan(run[0] - 0.5, run[-1] + 0.5, color="#999999", alpha=0.15, lw=0)
            bx.text((run[0] + run[-1]) / 2, 0.5, "vacuous (180 deg)", transform=bx.get_xaxis_transform(), rotation=90,
                    ha="center", va="center", fontsize=7.5, color="#555555")
        bx.set_ylim(0, min(182.0, bound_top * 1.08 + 1) if bound_top > 0 else 182.0)
        bx.set_ylabel("Lemma 2 bound (deg)")
        bx.set_title("Lemma 2 bound of the same lines (below 180 deg only)", fontsize=9)
        bx.grid(alpha=0.25)
        _legend_below(bx, last_row=r == nrows - 1)
    for c in range(ncols):
        last = axes[-1][c]
        last.set_xticks(blocks if len(blocks) <= 24 else blocks[:: max(1, len(blocks) // 12)])
        last.set_xlabel("block")
        last.set_xlim(-0.5, len(blocks) - 0.5)
    return fig


def run(args) -> int:
    import pandas as pd

    from geomkit import report
    from geomkit.commands._common import load
    from geomkit.probes import _args
    from geomkit.probes.prompts import EVAL_PROMPTS, read_prompts
    from geomkit.probes.residual import run_residual_angles

    scales = args.scales  # checked as the command line is read (scale_list)
    words = args.words
    _args.check_files(args.embedding)
    from geomkit.commands._common import no_duplicates

    no_duplicates(args.embedding, "--embedding", paths=True)
    _args.positive_int(args.max_prompts, "--max-prompts")
    templates = _args.subsample(read_prompts(args.prompts, default=EVAL_PROMPTS, placeholder=True), args.max_prompts, args.seed)
    out = report.prepare_out(args.out, command="residual-angles")
    enc = load(args)
    learned = _args.load_learned_set(enc, args.embedding, encoder=args.encoder if enc.pipeline_dir else None)
    results = run_residual_angles(enc, templates, words, scales, learned)
    notes = []
    if not enc.family.prenorm:
        notes.append(
            "post-norm model: blocks are LN(x + F(x)), not x + F(Norm(x)); Lemma 2 / Prop. 1 premises do not hold, and the "
            "hidden state entering block 0 is already normalised, so scaling the embedding cannot inflate it"
        )
    if enc.family.name == "gemma":
        notes.append("Gemma: sandwich norms normalise each sub-layer's update, so B_l follows from the weights (B_analytic).")
        notes.append("Gemma 3 270M numbers come from Q4_K_M-quantised weights (de-quantised).")
    results["notes"] = notes
    results["bound_definitions"] = {
        "bound_deg": "Lemma 2 with B_l = largest update norm at block l over every token of every run (holds by construction)",
        "bound_vocab_deg": "Lemma 2 with B_l from unscaled vocabulary runs only, checked on scaled and learned tokens",
        "bound_analytic_deg": "Lemma 2 with a true B_l from the weights (pre-norm families)",
        "vacuous": "B_l >= ||x_l||: the update can reverse x, so the bound is 180 deg",
    }

    flat = []
    for r in results["rows"]:
        for i, a in enumerate(r["per_block_deg"]):
            flat.append(
                {
                    "concept": r["concept"], "scale": r["scale"], "block": i, "angle_deg": a,
                    "bound_deg": r["bound_deg"][i], "bound_vocab_deg": r["bound_vocab_deg"][i],
                    "bound_analytic_deg": r.get("bound_analytic_deg", [None] * (i + 1))[i],
                    "x_norm": r["x_norm"][i], "update_norm": r["update_norm"][i],
                }
            )
    report.write_csv(out / "angles.csv", pd.DataFrame(flat))
    report.save_figure(out / "residual_angles.png", plot(results, f"per-block turning angle of the concept token: {enc.name}"))
    report.write_json(out / "results.json", results)

    print(f"model: {enc.name} ({enc.family.name}, {'pre' if enc.family.prenorm else 'post'}-norm {enc.family.norm}, {enc.n_blocks} blocks)")
    print(f"words: {', '.join(words)}   templates: {len(templates)}")
    table = []
    for g in results["by_scale"]:
        row = {
            "concept": g["concept"], "m": g["scale"], "||x0||": g["x0_norm"], "mean angle": g["mean_angle_deg"],
            "bound(vocab B)": g["mean_bound_vocab_deg"], "viol(vocab B)": g["violations_vocab"],
        }
        if "mean_bound_analytic_deg" in g:
            row["bound(weights)"] = g["mean_bound_analytic_deg"]
            row["viol(weights)"] = g["violations_analytic"]
        row["viol(emp B)"] = g["violations"]
        row["non-vacuous"] = g["nonvacuous_fraction"]
        row["angle(x0,xL)"] = g["total_angle_deg"]
        row["Prop1 applies"] = g["prop1_applicable"]
        table.append(row)
    print(report.table_text(table, "{:.2f}"))
    print(f"\nS_L (sum of B_l, empirical) = {results['S_L_empirical']:.4g}; mean ||x0|| of vocabulary tokens = {results['vocab_x0_norm']:.4g}")
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {out / 'results.json'}, {out / 'residual_angles.png'}, {out / 'angles.csv'}")
    return 0
