"""`geomkit probe-position`: positional recovery from LN(e + p) under scaled norms (Effect I, Fig. 2)."""

from __future__ import annotations

from geomkit.commands._common import (
    add_model_args, add_out_arg, existing_dir, existing_file, float_range, int_range, nonempty, out_dir, positive_int, scale_list, seed_int,
)

NAME = "probe-position"
ORDER = 40
HELP = "train a position probe on LN(e + p) and measure it as one token's norm is scaled (Effect I, Fig. 2)"
DESCRIPTION = (
    "Train a 2-layer MLP on the frozen encoder to predict each token's absolute position from the output of the "
    "first normalisation after position embeddings are added (LN(e + p); BERT: the embedding LayerNorm), over all "
    "positions of the training prompts. Then, on held-out prompts, replace one content token at a time by its own "
    "embedding times m (--scales) or by a learned embedding (--embedding), and report the probe's accuracy at that "
    "token's position, averaged over positions. --norm-mode absolute sets the replaced token to norm m instead "
    "(its direction kept, as the DTI authors' notebook does); --protocol single evaluates, as their notebook does, one "
    "random vocabulary token per input at the first content position instead of every content position of the "
    "held-out prompts. RoPE models (Gemma) have no LN(e + p): there the site defaults to "
    "blocks.3.resid_post (after 4 blocks; --site blocks.K.resid_post picks another), and the output says so. "
    "Everything is written inside --out, the trained probe in --out/probe unless --probe-dir says otherwise."
)

DEFAULT_SCALES = "0.5,1,2,4,8,16"
NORM_MODES = ("multiply", "absolute")  # = geomkit.probes.position.NORM_MODES (not imported here: --help stays light)
PROTOCOLS = ("content", "single")  # = geomkit.probes.position.PROTOCOLS
SINGLE_DRAWS = 1000  # = geomkit.probes.position.SINGLE_DRAWS


def add_arguments(p):
    p.add_argument("--scales", default=DEFAULT_SCALES, type=scale_list, metavar="M,M,...", help=f"values of m (default {DEFAULT_SCALES}): factors on the token's row, or the norms it is set to (see --norm-mode)")
    p.add_argument("--norm-mode", default="multiply", choices=NORM_MODES,
                   help="what m does to the replaced token: multiply = its embedding row times m (default; its norm becomes "
                        "m x its own norm); absolute = its direction at norm m exactly (row / ||row|| x m, as the DTI authors' "
                        "notebook). Learned embeddings (--embedding) are placed as they are in both modes")
    p.add_argument("--protocol", default="content", choices=PROTOCOLS,
                   help="where tokens are replaced: content = every content position of every held-out prompt, one at a time "
                        "(default); single = the authors' protocol: one random vocabulary token (seeded by --seed) per input, "
                        f"{SINGLE_DRAWS} inputs, each the tokenizer's one-token template with its BOS/CLS/EOS kept, evaluated at "
                        "that token's position (the first content position)")
    p.add_argument("--embedding", nargs="+", action="extend", default=[], type=existing_file, metavar="FILE", help="learned embedding file(s) to place in the prompts")
    p.add_argument("--site", default=None, type=nonempty("site"), help="site to probe (default: the model's LN(e + p); on RoPE models, which have none, blocks.3.resid_post)")
    p.add_argument("--prompts", default=None, type=existing_file, metavar="FILE", help="prompt file, one per line, '#' comments (default: the packaged 305 prompts)")
    p.add_argument("--max-prompts", type=positive_int, default=None, metavar="N", help="use a seeded subset of N prompts (faster)")
    p.add_argument("--held-out", type=float_range(0, 1, lo_open=True, hi_open=True, what="the held-out fraction"), default=0.2, metavar="FRACTION", help="fraction of prompts held out for evaluation (default 0.2)")
    p.add_argument("--hidden", type=int_range(1, 65_536, "the hidden width"), default=256, help="probe hidden width (default 256)")
    p.add_argument("--epochs", type=int_range(1, 100_000, "the number of epochs"), default=40, help="probe training epochs (default 40)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the split and the probe (default 0)")
    p.add_argument("--min-support", type=positive_int, default=5, metavar="N", help="a position gets a class when at least N training prompts reach it (default 5)")
    p.add_argument("--probe-dir", default=None, type=out_dir, metavar="DIR", help="where to save the trained probe (default: OUT/probe)")
    p.add_argument("--load-probe", default=None, type=existing_dir, metavar="DIR", help="evaluate a saved probe instead of training one")
    add_model_args(p)
    add_out_arg(p, "runs/probe-position")


def plot(res, title: str):
    import math

    from geomkit.report import figure

    fig, ax = figure(6.4, 4.0)
    absolute = getattr(res, "norm_mode", "multiply") == "absolute"
    ax.plot(res.scales, [100 * a for a in res.accuracy], "o-", color="#4C72B0",
            label="one token set to norm m" if absolute else "one token scaled by m")
    ax.axhline(100 * res.baseline_accuracy, color="black", ls="--", lw=1, label=f"normal inputs {100 * res.baseline_accuracy:.1f}%")
    ax.axhline(100 * res.chance, color="#999999", ls=":", lw=1, label=f"chance {100 * res.chance:.1f}%")
    colors = ["#C44E52", "#55A868", "#8172B2", "#CCB974", "#64B5CD"]
    xs = {}
    for (name, acc), c in zip(res.embeddings.items(), colors * 10):
        ratio = res.embedding_norm_ratio.get(name, 1.0)
        # multiply: at its norm / the vocabulary mean (m x a typical row); absolute: at its own norm
        x = xs[name] = ratio * res.mean_vocab_norm if absolute else ratio
        ax.plot([x], [100 * acc], "*", ms=12, color=c,
                label=f"{name} (norm {ratio * res.mean_vocab_norm:.3g}, {ratio:.2g}x vocab mean): {100 * acc:.1f}%")
    ax.set_xscale("log", base=2)
    lo = min(res.scales + list(xs.values()) or [1.0])
    hi = max(res.scales + list(xs.values()) or [1.0])
    ax.set_xlim(2 ** (math.floor(math.log2(lo)) - 0.3), 2 ** (math.ceil(math.log2(hi)) + 0.3))
    ax.set_ylim(-3, 103)
    from geomkit.probes.position import scale_axis_label

    learned_x = " (learned tokens: their norm)" if absolute else " (learned tokens: norm / vocabulary mean norm)"
    ax.set_xlabel(scale_axis_label(getattr(res, "norm_mode", "multiply")) + (learned_x if res.embeddings else ""))
    ax.set_ylabel("position accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig


def run(args) -> int:
    import pandas as pd

    from geomkit import report
    from geomkit.commands._common import load
    from geomkit.probes import _args
    from geomkit.probes import position as pos
    from geomkit.probes.prompts import read_prompts, split_prompts, tokenize

    scales = args.scales  # checked as the command line is read (scale_list)
    _args.check_files(args.embedding)
    from geomkit.commands._common import no_duplicates

    no_duplicates(args.embedding, "--embedding", paths=True)
    _args.positive_int(args.max_prompts, "--max-prompts")
    _args.positive_int(args.hidden, "--hidden")
    _args.positive_int(args.epochs, "--epochs")
    _args.positive_int(args.min_support, "--min-support")
    if args.probe_dir and args.load_probe:
        from geomkit.errors import GeomkitError

        raise GeomkitError(f"--probe-dir {args.probe_dir} with --load-probe {args.load_probe}: a loaded probe is not trained, so "
                           "nothing would be saved; drop --probe-dir")
    if args.load_probe:
        for flag, value, default in (("--epochs", args.epochs, 40), ("--hidden", args.hidden, 256)):
            if value != default:
                from geomkit.errors import GeomkitError

                raise GeomkitError(f"{flag} {value} with --load-probe: it sets the training of a new probe, and a loaded probe "
                                   f"is not trained; drop {flag}")
    prompts = _args.subsample(read_prompts(args.prompts), args.max_prompts, args.seed)
    train_p, test_p = split_prompts(prompts, args.held_out, args.seed)
    if args.min_support > len(train_p):
        from geomkit.errors import GeomkitError

        raise GeomkitError(f"--min-support {args.min_support}: there are only {len(train_p)} training prompts; give at most that")
    out = report.prepare_out(args.out, command="probe-position")
    enc = load(args)
    site, site_why = pos.choose_site(enc, args.site)
    learned = _args.load_learned_set(enc, args.embedding, encoder=args.encoder if enc.pipeline_dir else None)

    probe = None
    if args.load_probe:
        probe, _ = pos.load_probe(args.load_probe, enc, site)
    train_t, test_t = tokenize(enc, train_p), tokenize(enc, test_p)
    res, probe = pos.run_position_probe(
        enc, train_t, test_t, site, scales, learned, probe=probe, min_support=args.min_support,
        norm_mode=args.norm_mode, protocol=args.protocol, single_seed=args.seed,
        hidden=args.hidden, epochs=args.epochs, seed=args.seed,
    )

    probe_dir = None
    if not args.load_probe:
        probe_dir = pos.save_probe(
            args.probe_dir or pos.default_probe_dir(out),
            probe,
            {
                "model": enc.name,
                "site": site,
                "seed": args.seed,
                "epochs": args.epochs,
                "held_out": args.held_out,
                "prompts": args.prompts or "geomkit/data/position_prompts.txt",
                "n_prompts": len(prompts),
                "train_accuracy": res.train_accuracy,
                "baseline_accuracy": res.baseline_accuracy,
            },
        )

    results = res.results_json()
    results["probe_dir"] = str(probe_dir or args.load_probe)
    results["positions"] = enc.family.positions
    results["site_chosen"] = "given (--site)" if args.site else f"automatic: {site_why}"
    if enc.family.name == "gemma":
        results["note"] = "Gemma 3 270M numbers come from Q4_K_M-quantised weights (de-quantised)."
    rows = [{"condition": "normal", "scale": None, "accuracy": res.baseline_accuracy}]
    cond = "scaled" if args.norm_mode == "multiply" else "norm"
    rows += [{"condition": cond, "scale": m, "accuracy": a} for m, a in zip(res.scales, res.accuracy)]
    rows += [{"condition": f"learned:{k}", "scale": res.embedding_norm_ratio[k], "accuracy": v} for k, v in res.embeddings.items()]
    report.write_csv(out / "accuracy.csv", pd.DataFrame(rows))
    where = "every content position" if args.protocol == "content" else f"one random token at position {res.single['position']}"
    title = f"position probe at {site}: {enc.name}\n{args.norm_mode} mode, {where}"
    report.save_figure(out / "position_probe.png", plot(res, title))
    report.write_json(out / "results.json", results)

    print(f"model: {enc.name}   site: {site}   positions: {res.n_positions} (chance {100 * res.chance:.1f}%)")
    print(f"m: {pos.scale_axis_label(args.norm_mode)}   protocol: {args.protocol} ({results['averaging']})")
    if not args.site and enc.family.positions in ("rope", "relative"):
        print(f"site chosen automatically: {site_why}")
    import math

    train_acc = (f"train accuracy {100 * res.train_accuracy:.1f}%" if math.isfinite(res.train_accuracy)
                 else f"probe loaded from {args.load_probe} (not trained here)")
    print(
        f"prompts: {res.n_train_prompts} train / {res.n_heldout_prompts} held out   {train_acc}   "
        f"held-out, all tokens {100 * res.baseline_all_tokens:.1f}%"
    )
    print(report.table_text([{"condition": r["condition"], "m": r["scale"], "accuracy %": 100 * r["accuracy"]} for r in rows], "{:.2f}"))
    if probe_dir:
        print(f"\nprobe saved to {probe_dir}")
    print(f"wrote {out / 'results.json'}, {out / 'position_probe.png'}, {out / 'accuracy.csv'}")
    return 0
