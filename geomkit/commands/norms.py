"""`geomkit norms`: the vocabulary's token-norm histogram and statistics (the paper's Fig. 1a)."""

from __future__ import annotations

from geomkit.commands._common import add_model_args, add_out_arg, existing_file, int_range, nonnegative_int

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


def plot(norms, stats, embeddings: dict, specials: dict, title: str, bins: int):
    from geomkit.report import figure

    fig, ax = figure(7.0, 4.0)
    live = norms[norms > 0].numpy()
    hi = max([live.max()] + [e["norm"] for e in embeddings.values()])
    ax.hist(live, bins=bins, color="#4C72B0", alpha=0.85, range=(0, hi * 1.02) if embeddings else None)
    ax.axvline(stats["mean"], color="black", ls="--", lw=1, label=f"vocabulary mean {stats['mean']:.3f}")
    for tok, n in specials.items():
        ax.axvline(n, color="#999999", ls=":", lw=0.8)
    if specials:
        ax.plot([], [], color="#999999", ls=":", label="special tokens")
    colors = ["#C44E52", "#55A868", "#8172B2", "#CCB974", "#64B5CD"]
    for (name, e), c in zip(embeddings.items(), colors * 10):
        ax.axvline(e["norm"], color=c, lw=2, label=f"{name}: {e['norm']:.3f} ({e['ratio_to_mean']:.1f}x mean)")
    ax.set_xlabel("token embedding L2 norm")
    ax.set_ylabel("tokens")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
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
    out = report.prepare_out(args.out)
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
        print(report.table_text(extremes[side]))
    if specials:
        print("\nspecial tokens: " + ", ".join(f"{t} {n:.4f}" for t, n in specials.items()))
    if embeddings:
        print("\nlearned embeddings:")
        print(report.table_text([{"name": k, "norm": v["norm"], "ratio_to_mean": v["ratio_to_mean"]} for k, v in embeddings.items()]))
    print(f"\nwrote {out / 'results.json'}, {out / 'norm_histogram.png'}, {out / 'norms.csv'}")
    return 0
