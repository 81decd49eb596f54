"""`geomkit norms`: the vocabulary's token-norm histogram and statistics (the paper's Fig. 1a)."""

from __future__ import annotations

from geomkit.commands._common import add_model_args, add_out_arg, existing_file, int_range

NAME = "norms"
ORDER = 20
HELP = "vocabulary token-norm histogram and statistics, learned embeddings marked (Fig. 1a)"


def add_arguments(p):
    p.add_argument("--embedding", nargs="+", default=[], type=existing_file, metavar="FILE", help="learned embedding file(s) to place on the histogram")
    p.add_argument("--extremes", type=int_range(0, 1000, "the number of extremes"), default=5, help="how many largest/smallest-norm tokens to list (default 5)")
    p.add_argument("--bins", type=int_range(1, 100_000, "the number of bins"), default=200, help="histogram bins (default 200)")
    add_model_args(p)
    add_out_arg(p, "runs/norms")


def special_token_norms(enc, norms) -> dict:
    out = {}
    for tok, tid in zip(enc.tokenizer.all_special_tokens, enc.tokenizer.all_special_ids):
        if tid is not None and 0 <= tid < len(norms):
            out[tok] = float(norms[tid])
    return out


def zoom_window(live, embeddings: dict):
    """(lo, hi) of a close-up on the vocabulary when its spread is a sliver of the range the learned
    tokens force on the histogram, else None. The window spans the 0.5th..99.5th percentiles of the
    vocabulary's norms, widened by half their spread on each side."""
    import numpy as np

    if not embeddings:
        return None
    p_lo, p_hi = np.percentile(live, [0.5, 99.5])
    full = max([live.max()] + [e["norm"] for e in embeddings.values()]) * 1.02
    spread = max(p_hi - p_lo, 1e-6 * max(abs(p_hi), 1e-12))
    if spread > 0.1 * full:
        return None
    return float(p_lo - 0.5 * spread), float(p_hi + 0.5 * spread)


def plot(norms, stats, embeddings: dict, specials: dict, title: str, bins: int):
    """The vocabulary's norm histogram with learned tokens marked. When a learned token lies far
    outside the vocabulary's spread (TI), a second panel zooms on the vocabulary, so both its
    spread and the learned tokens show."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    live = norms[norms > 0].numpy()
    window = zoom_window(live, embeddings)
    colors = ["#C44E52", "#55A868", "#8172B2", "#CCB974", "#64B5CD"]
    if window is None:
        fig, ax = plt.subplots(figsize=(7.0, 4.0))
        axes = [ax]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.2), gridspec_kw={"width_ratios": [1.25, 1]})
    hi = max([live.max()] + [e["norm"] for e in embeddings.values()])

    def draw(ax, rng, nbins, legend):
        ax.hist(live, bins=nbins, color="#4C72B0", alpha=0.85, range=rng)
        for n in specials.values():
            if rng is None or rng[0] <= n <= rng[1]:
                ax.axvline(n, color="#999999", ls=":", lw=0.8, zorder=2)
        for i, ((name, e), c) in enumerate(zip(embeddings.items(), colors * 10)):
            if rng is None or rng[0] <= e["norm"] <= rng[1]:
                ax.axvline(e["norm"], color=c, lw=3 - 0.5 * (i % 3), zorder=3,
                           label=f"{name}: {e['norm']:.3f} ({e['ratio_to_mean']:.2f}x mean)" if legend else None)
        # drawn last and dashed: visible even where a learned token sits on the mean (DTI)
        ax.axvline(stats["mean"], color="black", ls=(0, (3, 2)), lw=1.2, zorder=4,
                   label=f"vocabulary mean {stats['mean']:.4g}" if legend else None)
        ax.set_xlabel("token embedding L2 norm")
        ax.set_ylabel("tokens")
        ax.set_yscale("log")

    main = axes[0]
    draw(main, (0, hi * 1.02) if embeddings else None, bins, legend=True)
    if specials:
        main.plot([], [], color="#999999", ls=":", label="special tokens")
    main.set_title(title if window is None else f"{title}: vocabulary and learned tokens", fontsize=10)
    if window is not None:
        zoom = axes[1]
        inside = int(((live >= window[0]) & (live <= window[1])).sum())
        share = f"all {len(live)}" if inside == len(live) else f"{inside} of {len(live)}"
        draw(zoom, window, 80, legend=False)
        zoom.set_title(f"close-up of the vocabulary ({share} tokens;\nstd/mean {stats['std'] / stats['mean']:.2g})", fontsize=9)
        zoom.ticklabel_format(axis="x", useOffset=False)
        zoom.tick_params(axis="x", labelsize=7)
        main.annotate(f"vocabulary: {share} tokens\nin {window[0]:.4g} .. {window[1]:.4g}\n(close-up on the right)",
                      xy=(stats["mean"], 0.45), xycoords=("data", "axes fraction"), xytext=(0.03, 0.72), textcoords="axes fraction",
                      fontsize=8, arrowprops={"arrowstyle": "->", "color": "#4C72B0"}, color="#2F4B7C")
        handles, labels = main.get_legend_handles_labels()
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2, frameon=False)
        fig.subplots_adjust(bottom=0.27, wspace=0.28, top=0.86)
    else:
        main.legend(fontsize=8)
        fig.tight_layout()
    return fig


def run(args) -> int:
    import pandas as pd

    from geomkit import report
    from geomkit.embeddings_io import load_learned_set
    from geomkit.errors import GeomkitError
    from geomkit.geometry import norm_stats, row_norms
    from geomkit.models import load_encoder

    if args.extremes < 0 or args.bins < 1:
        raise GeomkitError("--extremes must be >= 0 and --bins >= 1")
    from geomkit.commands._common import no_duplicates

    no_duplicates(args.embedding, "--embedding", paths=True)
    out = report.prepare_out(args.out, command="norms")
    enc = load_encoder(args.model, encoder=args.encoder)
    learned = load_learned_set(args.embedding, d_model=enc.d_model)
    norms = row_norms(enc.embedding_table())
    stats = norm_stats(norms)
    order = norms.argsort()
    live_order = order[norms[order] > 0]
    extremes = {
        "largest": [{"token": enc.token_str(i), "id": int(i), "norm": float(norms[i])} for i in live_order.flip(0)[: args.extremes]],
        "smallest": [{"token": enc.token_str(i), "id": int(i), "norm": float(norms[i])} for i in live_order[: args.extremes]],
    }
    specials = special_token_norms(enc, norms)
    embeddings = {}
    for name, vectors in learned.items():
        n = float(vectors.double().norm(dim=1).mean())
        embeddings[name] = {"norm": n, "ratio_to_mean": n / stats["mean"]}

    results = {"model": enc.name, **stats, "embed_scale": enc.embed_scale, "extremes": extremes, "special_tokens": specials, "embeddings": embeddings}
    tokens = [enc.token_str(i) for i in range(len(norms))]
    report.write_csv(out / "norms.csv", pd.DataFrame({"id": range(len(norms)), "token": tokens, "norm": norms.numpy()}))
    report.save_figure(out / "norm_histogram.png", plot(norms, stats, embeddings, specials, f"token norms: {enc.name}", args.bins))
    report.write_json(out / "results.json", results)

    print(f"model: {enc.name}   tokens: {stats['count']} (all-zero rows: {stats['zero_rows']})   d = {enc.d_model}")
    if enc.embed_scale != 1.0:
        print(f"norms are of the raw table; the model multiplies embeddings by {enc.embed_scale:.4f} (sqrt(d)) in its forward")
    print(report.table_text([{k: stats[k] for k in ("mean", "median", "std", "min", "max")}]))
    for side in ("largest", "smallest"):
        print(f"\n{side} norms:")
        print(report.table_text([{"token": enc.token_text(e["id"]), "id": e["id"], "norm": e["norm"]} for e in extremes[side]]))
    if specials:
        print("\nspecial tokens: " + ", ".join(f"{t} {n:.4f}" for t, n in specials.items()))
    if embeddings:
        print("\nlearned embeddings:")
        print(report.table_text([{"name": k, "norm": v["norm"], "ratio_to_mean": v["ratio_to_mean"]} for k, v in embeddings.items()]))
    print(f"\nwrote {out / 'results.json'}, {out / 'norm_histogram.png'}, {out / 'norms.csv'}")
    return 0
