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


LEARNED_STYLES = [  # distinct from the scale colour map and from one another
    {"color": "#111111", "ls": "-", "marker": "X", "lw": 2.0},
    {"color": "#D62728", "ls": (0, (5, 2)), "marker": "D", "lw": 2.0},
    {"color": "#17BECF", "ls": "-.", "marker": "P", "lw": 2.0},
    {"color": "#8C564B", "ls": ":", "marker": "*", "lw": 2.0},
]
SCALE_MARKERS = ["o", "s", "^", "v", "<", ">", "p", "h"]


def scale_colors(n: int):
    """n colours along a sequential map (small m light, large m dark), so neighbouring scales differ."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("viridis_r")
    return [cmap(0.15 + 0.85 * i / max(1, n - 1)) for i in range(n)]


def plot(results: dict, title: str):
    """Top: the measured per-block angle, scales on a sequential colour map (each with its own
    marker), learned tokens in distinct line styles. Bottom: Lemma 2's bound for each scale, one
    legend entry per bound, in the same colours."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    blocks = list(range(results["n_blocks"]))
    groups = results["by_scale"]
    scaled = [g for g in groups if g["scale"] is not None]
    learned = [g for g in groups if g["scale"] is None]
    bound_key = "bound_vocab_deg"  # the informative one; the weights' bound is often vacuous (180)
    with_bounds = [g for g in scaled if bound_key in g]
    fig, axes = plt.subplots(2 if with_bounds else 1, 1, figsize=(7.6, 8.6 if with_bounds else 5.0), sharex=True,
                             gridspec_kw={"height_ratios": [1.35, 1]} if with_bounds else None, squeeze=False)
    ax = axes[0][0]
    colors = scale_colors(len(scaled))
    for i, (g, c) in enumerate(zip(scaled, colors)):
        ax.plot(blocks, g["per_block_deg"], marker=SCALE_MARKERS[i % len(SCALE_MARKERS)], ms=4, lw=1.3, color=c,
                label=f"vocabulary word x m = {g['scale']:g}: mean {g['mean_angle_deg']:.1f} deg")
    for g, st in zip(learned, LEARNED_STYLES * 10):
        ax.plot(blocks, g["per_block_deg"], ms=6, mfc="white", mew=1.5, color=st["color"], ls=st["ls"], marker=st["marker"],
                lw=st["lw"], label=f"{g['concept']}: mean {g['mean_angle_deg']:.1f} deg")
    top = max([max(g["per_block_deg"]) for g in groups if g["per_block_deg"]] + [1.0])
    ax.set_ylim(0, min(185, top * 1.4 + 2))  # headroom: the legend sits above the lines
    ax.set_ylabel("angle(x_l, x_l+1) (degrees)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, ncol=2, loc="upper right", framealpha=0.9)
    if with_bounds:
        bx = axes[1][0]
        for i, (g, c) in enumerate(zip(scaled, colors)):
            bx.plot(blocks, g[bound_key], ls="--", lw=1.3, color=c, marker=SCALE_MARKERS[i % len(SCALE_MARKERS)], ms=3,
                    label=f"bound for m = {g['scale']:g}")
        bx.set_ylim(0, 185)
        bx.set_ylabel("Lemma 2 bound (degrees)")
        bx.set_title("Lemma 2: arcsin(B_l / ||x_l||), B_l from unscaled vocabulary runs (180 = vacuous)", fontsize=9)
        bx.grid(alpha=0.25)
        bx.legend(fontsize=7, ncol=3, loc="lower left", framealpha=0.9)
    last = axes[-1][0]
    last.set_xticks(blocks if len(blocks) <= 24 else blocks[:: max(1, len(blocks) // 12)])
    last.set_xlabel("block")
    fig.tight_layout()
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
