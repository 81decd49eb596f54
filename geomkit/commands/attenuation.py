"""`geomkit attenuation`: ||Norm(m v + p) - Norm(m v)|| against m and its log-log slope (Lemma 1)."""

from __future__ import annotations

from geomkit.commands._common import add_model_args, add_out_arg, int_range, positive_int, scale_list, seed_int

NAME = "attenuation"
ORDER = 42
HELP = "how position embeddings fade after the first norm as a token's norm grows (Lemma 1)"
DESCRIPTION = (
    "For vocabulary tokens v and position embeddings p of the model, measure ||Norm(m v + p) - Norm(m v)|| over a "
    "range of m, with the model's own first normalisation (gamma, beta, eps) and with the paper's scale-invariant "
    "definitions, beside the first-order prediction of App. B; fit the log-log slope at large m (theory: -1). "
    "Models with RoPE (Gemma) have no p: the result says 'not applicable' with the reason."
)

DEFAULT_SCALES = ",".join(f"{2.0 ** k:g}" for k in range(-3, 13))


def add_arguments(p):
    p.add_argument("--scales", default=DEFAULT_SCALES, type=scale_list, metavar="M,M,...", help=f"scales m (default {DEFAULT_SCALES})")
    p.add_argument("--tokens", type=int_range(1, 1_000_000, "the number of tokens"), default=200, metavar="N", help="vocabulary tokens sampled (default 200)")
    p.add_argument("--positions", type=positive_int, default=32, metavar="N", help="positions, evenly spaced from 0 (default 32)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the token sample (default 0)")
    add_model_args(p)
    add_out_arg(p, "runs/attenuation")


def plot(res: dict, title: str):
    from geomkit.report import figure

    fig, ax = figure(6.4, 4.0)
    s = res["scales"]
    ax.loglog(s, res["delta"], "o-", color="#4C72B0", label=f"model norm (slope {res['loglog_slope']:.3f})")
    ax.loglog(s, res["delta_scale_invariant"], "s-", ms=3, color="#55A868", label=f"scale-invariant (slope {res['loglog_slope_scale_invariant']:.3f})")
    ax.loglog(s, res["delta_first_order"], "--", color="#4C72B0", lw=0.8, label="first order, model norm: c/m")
    ax.loglog(s, res["delta_first_order_scale_invariant"], "--", color="#55A868", lw=0.8, label="first order, scale-invariant")
    ax.axvspan(min(res["fit_scales"]), max(res["fit_scales"]), color="#eeeeee", zorder=0, label="slope fit range")
    ax.set_xlabel("m (token embedding scale; 1 = its own norm)")
    ax.set_ylabel("mean ||Norm(m v + p) - Norm(m v)||")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig


def run(args) -> int:
    import pandas as pd

    from geomkit import report
    from geomkit.commands._common import load
    from geomkit.probes import _args
    from geomkit.probes.attenuation import run_attenuation

    scales = sorted(args.scales)  # checked (and each given once) as the command line is read
    _args.positive_int(args.tokens, "--tokens")
    _args.positive_int(args.positions, "--positions")
    if len(scales) < 2:
        from geomkit.errors import GeomkitError

        raise GeomkitError("--scales: a slope needs at least 2 distinct scales")
    out = report.prepare_out(args.out, command="attenuation")
    enc = load(args)
    res = run_attenuation(enc, scales, args.tokens, args.positions, args.seed)
    if not res["applicable"]:
        report.write_json(out / "results.json", res)
        print(f"model: {enc.name}: Lemma 1 not applicable")
        print(res["reason"])
        print(f"wrote {out / 'results.json'}")
        return 0
    frame = pd.DataFrame(
        {
            "scale": res["scales"],
            "delta": res["delta"],
            "delta_scale_invariant": res["delta_scale_invariant"],
            "delta_first_order": res["delta_first_order"],
            "delta_first_order_scale_invariant": res["delta_first_order_scale_invariant"],
        }
    )
    report.write_csv(out / "attenuation.csv", frame)
    report.save_figure(out / "attenuation.png", plot(res, f"Lemma 1 at {res['site']}: {enc.name}"))
    report.write_json(out / "results.json", res)

    print(
        f"model: {enc.name}   norm: {res['norm']} at {res['site']}   tokens: {res['n_tokens']}   positions: {res['n_positions']}"
        + ("   (token-type row added on both sides)" if res["token_type_row_added"] else "")
    )
    print(f"mean ||v|| = {res['mean_token_norm']:.4g}   mean ||p|| = {res['mean_position_norm']:.4g}")
    rows = [
        {"m": m, "delta": d, "scale-invariant": si, "first order": fo}
        for m, d, si, fo in zip(res["scales"], res["delta"], res["delta_scale_invariant"], res["delta_first_order"])
    ]
    print(report.table_text(rows, "{:.5g}"))
    print(
        f"\nlog-log slope over m in [{min(res['fit_scales']):g}, {max(res['fit_scales']):g}]: model norm {res['loglog_slope']:.4f}, "
        f"scale-invariant {res['loglog_slope_scale_invariant']:.4f} (theory -1); per-pair median {res['pair_slope_median']:.4f}; "
        f"measured / first order at m = {max(res['scales']):g}: {res['measured_over_first_order_at_max_scale']:.5f}"
    )
    print(f"wrote {out / 'results.json'}, {out / 'attenuation.png'}, {out / 'attenuation.csv'}")
    return 0
