"""`geomkit inspect`: a health report for learned-embedding files (downloaded or trained)."""

from __future__ import annotations

NAME = "inspect"
ORDER = 75
HELP = "health report of learned embedding files: norm vs m*, neighbours, position and residual effects, verdict"
DESCRIPTION = (
    "For each learned vector in FILE(s) (.safetensors, A1111 .pt, diffusers .bin; pickles only through "
    "torch.load(weights_only=True)): its norm, the encoder's m* (mean vocabulary norm), norm/m* and percentile "
    "among the vocabulary's norms; its top-k cosine and Euclidean neighbours; where the model has absolute "
    "positions, a position probe's accuracy with the token in the prompt beside normal tokens' (Effect I); its "
    "mean per-block residual angle beside a vocabulary word's (Effect II); and a one-line verdict. SDXL "
    "clip_l/clip_g files are inspected on both text encoders of a pipeline folder. --fix rescale also writes a "
    "copy of each file with every vector rescaled to m* (TI-rescaled) and inspects it."
)


def add_arguments(p):
    from geomkit.commands._common import (
        add_out_arg, existing_dir, existing_file, int_range, model_spec, nonempty, positive_int, seed_int,
    )

    p.add_argument("files", nargs="+", type=existing_file, metavar="FILE", help="learned embedding file(s)")
    p.add_argument(
        "--model",
        default="gemma3-270m",
        type=model_spec,
        metavar="SPEC",
        help="gemma3-270m, minilm-l6, whisper-tiny-en, a local model or a diffusers pipeline folder (default: gemma3-270m)",
    )
    p.add_argument(
        "--encoder", type=int, default=None, choices=(1, 2, 3),
        help="pipeline folders: inspect on this text encoder only (default: each part on the encoder it fits)",
    )
    add_out_arg(p, "runs/inspect")
    p.add_argument("-k", "--top-k", type=int_range(1, 1000, "the number of neighbours"), default=10, help="neighbours listed per vector (default 10)")
    p.add_argument("--fix", choices=("rescale",), default=None, help="rescale: also write and inspect a copy rescaled to m*")
    p.add_argument("--probe-dir", default=None, type=existing_dir, metavar="DIR",
                   help="a saved position probe (from `geomkit probe-position`) instead of a quick one")
    p.add_argument("--word", default=None, type=nonempty("word"),
                   help="vocabulary word the residual angle is compared with, and whose place the token takes (default dog)")
    p.add_argument("--prompts", default=None, type=existing_file, metavar="FILE", help="prompts for the quick position probe (default: the packaged set)")
    p.add_argument("--templates", default=None, type=existing_file, metavar="FILE",
                   help="templates with one {} for the residual angles (default: the packaged set)")
    p.add_argument("--max-prompts", type=positive_int, default=None, metavar="N", help=f"prompts used by the quick position probe (default {MAX_PROMPTS})")
    p.add_argument("--max-templates", type=positive_int, default=None, metavar="N", help=f"templates used for the residual angles (default {MAX_TEMPLATES})")
    p.add_argument("--no-effects", action="store_true",
                   help="skip the position and residual measurements (norms and neighbours only); the options of those "
                        "measurements (--word, --probe-dir, --prompts, --templates, --max-*) are refused with it")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the quick probe's prompts and training (default 0)")


WORD, MAX_PROMPTS, MAX_TEMPLATES = "dog", 300, 24
EFFECT_OPTIONS = ("word", "probe_dir", "prompts", "templates", "max_prompts", "max_templates")


def check_options(args) -> None:
    """The measurement options mean nothing under --no-effects: refuse them rather than ignore them;
    then fill in their defaults. A file given twice would be reported twice under one name."""
    from geomkit.commands._common import no_duplicates
    from geomkit.errors import GeomkitError

    no_duplicates(args.files, "FILE", paths=True)
    if args.no_effects:
        given = [f"--{k.replace('_', '-')}" for k in EFFECT_OPTIONS if getattr(args, k) is not None]
        if given:
            raise GeomkitError(f"{', '.join(given)} with --no-effects: {'it sets' if len(given) == 1 else 'they set'} the position and "
                               f"residual measurements, which --no-effects skips; drop {'it' if len(given) == 1 else 'them'} or --no-effects")
    args.word = args.word or WORD
    args.max_prompts = args.max_prompts or MAX_PROMPTS
    args.max_templates = args.max_templates or MAX_TEMPLATES


# ---- planning ----------------------------------------------------------------------------------
def plan_parts(files, dims: dict, encoder=None, model: str = "") -> list:
    """[(EmbeddingFile, part label, encoder index)]: each part on the encoder whose dimension it has
    (file hints first: clip_l -> 1, clip_g -> 2); `encoder` restricts to one encoder. `dims` maps an
    encoder index to its embedding dimension."""
    from geomkit.errors import GeomkitError

    plan = []
    have = ", ".join(f"encoder {i}: {d}" for i, d in sorted(dims.items()))
    for ef in files:
        chosen = []
        for label, vec in ef.parts.items():
            d = vec.shape[-1]
            fits = [i for i, di in sorted(dims.items()) if di == d and (encoder is None or i == encoder)]
            hint = ef.hints.get(label)
            if hint in fits:
                fits = [hint]
            elif hint is not None and ef.is_pair and len(dims) > 1:
                fits = []
            if fits:
                chosen.append((ef, label, fits[0]))
        if not chosen:
            dims_f = ", ".join(f"{k}: {v.shape[-1]}" for k, v in ef.parts.items())
            where = f"not --encoder {encoder}" if encoder is not None else "no text encoder"
            raise GeomkitError(
                f"{ef.path}: dimension ({dims_f}) fits {where} of {model} ({have}); "
                "the file was trained for another model: pass the matching --model (an SDXL pair needs the SDXL pipeline folder)"
            )
        plan += chosen
    return plan


def model_dims(spec: str):
    """({encoder index: dimension} from a pipeline folder's configs, or None for a single model."""
    from geomkit.generation import pipeline_dims
    from geomkit.models import resolve_spec

    folder = resolve_spec(spec)
    if not (folder / "model_index.json").exists():
        return None
    dims = {i: d for i, _, _, d in pipeline_dims(folder)}
    return dims or None


# ---- figure ------------------------------------------------------------------------------------
TOKEN_MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*"]
TOKEN_STYLES = ["-", (0, (4, 2)), "-.", (0, (1, 1.5))]
AT_M_STAR = 1e-3  # |norm/m* - 1| below this: the token sits on the m* line ("= m*")


def at_m_star(t: dict) -> bool:
    return abs(float(t["ratio"]) - 1.0) < AT_M_STAR


def plot(panels: list, title: str):
    """One row per encoder: the vocabulary's norm histogram, m* (its mean) as a dashed black line on
    top, and each token as a coloured line with its own marker at its own height and a label beside
    it, so tokens at the same norm (a DTI token and a rescaled one both at m*) stay visible and
    named ("= m*"). Tokens far outside the vocabulary's range get their own panel beside it (a
    broken axis), so neither the histogram nor the token is squashed."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.transforms import blended_transform_factory

    colors = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i not in (0, 7)]  # not the histogram's blue nor grey
    broken = []
    for p in panels:
        live = p["live"]
        lo, hi = float(live.min()), float(live.max())
        pad = max((hi - lo) * 0.15, 1e-6 * max(hi, 1e-12))
        out = [t for t in p["tokens"] if not (lo - pad <= t["norm"] <= hi + pad)]
        broken.append(bool(out))
    n = len(panels)
    rows_legend = [2 + len(p["tokens"]) for p in panels]
    height = sum(3.6 + 0.17 * r for r in rows_legend)
    fig = plt.figure(figsize=(9.0, height))
    grid = fig.add_gridspec(n, 2, width_ratios=[3, 1] if any(broken) else [1, 0.0001], wspace=0.06,
                            hspace=0.35 + 0.08 * max(rows_legend), top=1 - 0.75 / height)

    def mark(ax, t, i, k, side_text=True):
        """The token's line, its marker at height k (0 top), and its name beside the marker."""
        tr = blended_transform_factory(ax.transData, ax.transAxes)
        y = 0.9 - 0.13 * (k % 6)
        ax.axvline(t["norm"], color=t["color"], lw=1.8, ls=TOKEN_STYLES[i % len(TOKEN_STYLES)], zorder=3)
        ax.plot([t["norm"]], [y], transform=tr, marker=TOKEN_MARKERS[i % len(TOKEN_MARKERS)], ms=9, color=t["color"],
                mec="white", mew=1.2, ls="none", zorder=6, clip_on=False)
        if side_text:
            x0, x1 = ax.get_xlim()
            right = (t["norm"] - x0) > 0.6 * (x1 - x0)
            text = t["label"] + (" = m*" if at_m_star(t) else f" ({t['ratio']:.2f}x m*)")
            ax.annotate(text, (t["norm"], y), xycoords=tr, xytext=(-9 if right else 9, 0), textcoords="offset points",
                        ha="right" if right else "left", va="center", fontsize=7.5, color=t["color"], zorder=7,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})

    for r, (p, is_broken) in enumerate(zip(panels, broken)):
        live = p["live"]
        lo, hi = float(live.min()), float(live.max())
        pad = max((hi - lo) * 0.15, 1e-6 * max(hi, 1e-12))
        ax = fig.add_subplot(grid[r, 0] if is_broken else grid[r, :])
        ax.hist(live, bins=120, range=(lo - pad, hi + pad), color="#4C72B0", alpha=0.6)
        ax.set_yscale("log")
        ax.set_ylim(top=ax.get_ylim()[1] * 30)  # room above the bars for the tokens' markers and names
        ax.set_xlim(lo - pad, hi + pad)
        ax.axvline(p["m_star"], color="black", ls=(0, (3, 2)), lw=1.2, zorder=5, label=f"m* (mean vocabulary norm) {p['m_star']:.4g}")
        ax.annotate("m*", (p["m_star"], 1.0), xycoords=blended_transform_factory(ax.transData, ax.transAxes), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
        ax.set_ylabel("vocabulary tokens (log)")
        ax.set_title(p["title"], fontsize=10, pad=14)
        ax.set_xlabel("token embedding L2 norm")
        inside = [t for t in p["tokens"] if lo - pad <= t["norm"] <= hi + pad]
        outside = [t for t in p["tokens"] if t not in inside]
        for i, t in enumerate(p["tokens"]):
            t["color"] = colors[i % len(colors)]
        order = {id(t): k for k, t in enumerate(p["tokens"])}
        for t in inside:
            i = order[id(t)]
            mark(ax, t, i, i)
            ax.plot([], [], color=t["color"], lw=1.8, ls=TOKEN_STYLES[i % len(TOKEN_STYLES)], marker=TOKEN_MARKERS[i % len(TOKEN_MARKERS)],
                    label=f"{t['label']}: {t['norm']:.4g} ({t['ratio']:.2f}x m*)" + (", = m*: on the m* line" if at_m_star(t) else ""))
        if is_broken:
            ax2 = fig.add_subplot(grid[r, 1], sharey=ax)
            xs = [t["norm"] for t in outside]
            a, b = min(xs), max(xs)
            w = max((b - a) * 0.25, 0.08 * b)
            ax2.set_xlim(a - w, b + w)
            for t in outside:
                i = order[id(t)]
                mark(ax2, t, i, i, side_text=False)
                ax2.annotate(f"{t['ratio']:.1f}x m*", (t["norm"], 0.9 - 0.13 * (i % 6)),
                             xycoords=blended_transform_factory(ax2.transData, ax2.transAxes), xytext=(9, 0),
                             textcoords="offset points", ha="left", va="center", fontsize=7.5, color=t["color"],
                             bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
                ax.plot([], [], color=t["color"], lw=1.8, ls=TOKEN_STYLES[i % len(TOKEN_STYLES)], marker=TOKEN_MARKERS[i % len(TOKEN_MARKERS)],
                        label=f"{t['label']}: {t['norm']:.4g} ({t['ratio']:.1f}x m*) -> right panel")
            ax2.set_title("far outside the vocabulary", fontsize=9, pad=14)
            ax2.tick_params(labelleft=False, left=False)
            ax2.set_xlabel("norm")
            # the broken-axis marks
            above = a > hi
            ax.spines["right" if above else "left"].set_visible(False)
            ax2.spines["left" if above else "right"].set_visible(False)
            kw = dict(transform=ax.transAxes, color="k", clip_on=False, lw=1)
            x = 1 if above else 0
            ax.plot((x - 0.01, x + 0.01), (-0.02, 0.02), **kw)
            ax.plot((x - 0.01, x + 0.01), (0.98, 1.02), **kw)
        ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0, -0.2), ncol=1, frameon=False)
    fig.suptitle(title, fontsize=11, y=1 - 0.2 / height)  # clear of the panels' titles and the m* mark
    return fig


# ---- report ------------------------------------------------------------------------------------
def markdown(results: dict, notes: list) -> str:
    from geomkit.report import markdown_table

    lines = [f"# Embedding health report: {results['model']}", ""]
    lines += [f"- {n}" for n in notes] + [""]
    lines.append(markdown_table(summary_rows(results["tokens"]), "{:.3f}"))
    lines.append("")
    for t in results["tokens"]:
        lines.append(f"## {t['token']} (encoder {t['encoder']}, {t['file']})")
        lines.append("")
        lines.append(f"**Verdict:** {t['verdict']}")
        lines.append("")
        if t.get("position_accuracy") is None and t.get("position_note"):
            lines.append(f"Position: {t['position_note']}")
            lines.append("")
        k = max(len(t["cosine_neighbors"]), len(t["euclidean_neighbors"]))
        rows = [
            {
                "rank": i + 1,
                "cosine": t["cosine_neighbors"][i].get("text", t["cosine_neighbors"][i]["token"]) if i < len(t["cosine_neighbors"]) else "",
                "cos": t["cosine_neighbors"][i]["score"] if i < len(t["cosine_neighbors"]) else None,
                "euclidean": t["euclidean_neighbors"][i].get("text", t["euclidean_neighbors"][i]["token"]) if i < len(t["euclidean_neighbors"]) else "",
                "dist": t["euclidean_neighbors"][i]["score"] if i < len(t["euclidean_neighbors"]) else None,
            }
            for i in range(k)
        ]
        lines.append(markdown_table(rows, "{:.3f}"))
        lines.append("")
    return "\n".join(lines)


def summary_rows(tokens: list) -> list:
    def pct(x):
        return None if x is None else f"{100 * x:.1f}%"

    return [
        {
            "token": t["token"],
            "enc": t["encoder"],
            "norm": t["norm"],
            "m*": t["m_star"],
            "norm/m*": t["norm_ratio"],
            "pctile": t["norm_percentile"],
            "pos acc": pct(t["position_accuracy"]) if t["position_accuracy"] is not None else "n/a",
            "pos normal": pct(t.get("position_accuracy_normal")) if t["position_accuracy"] is not None else "n/a",
            "resid deg": t["residual_angle_deg"],
            "word deg": t["vocab_residual_angle_deg"],
        }
        for t in tokens
    ]


# ---- run ---------------------------------------------------------------------------------------
def run(args) -> int:
    from pathlib import Path

    import torch

    from geomkit import inspection as ins
    from geomkit import report
    from geomkit.embeddings_io import distinct_names, read_embedding, save_learned, save_sdxl_pair
    from geomkit.errors import GeomkitError
    from geomkit.models import load_encoder
    from geomkit.probes import _args
    from geomkit.probes.prompts import EVAL_PROMPTS, read_prompts

    check_options(args)
    files = [read_embedding(f) for f in args.files]  # every file checked before any model loads
    prompts = templates = None
    if not args.no_effects:
        prompts = _args.subsample(read_prompts(args.prompts), args.max_prompts, args.seed)
        templates = _args.subsample(read_prompts(args.templates, default=EVAL_PROMPTS, placeholder=True), args.max_templates, args.seed)
    out = report.prepare_out(args.out, command="inspect")

    dims = model_dims(args.model)
    if dims is None:
        if args.encoder not in (None, 1):
            raise GeomkitError(f"--encoder {args.encoder} needs a diffusers pipeline folder; {args.model} is a single model")
        encs = {1: load_encoder(args.model, encoder=1)}
        dims = {1: encs[1].d_model}
    else:
        encs = {}
    plan = plan_parts(files, dims, args.encoder, args.model)

    state = {}  # encoder index -> (enc, vocab norms, position setup, residual setup)

    def encoder_state(i):
        if i not in state:
            enc = encs.get(i) or load_encoder(args.model, encoder=i)
            vn = ins.vocab_norms(enc.embedding_table())
            pos_s = res_s = None
            if not args.no_effects:
                pos_s = ins.position_setup(enc, prompts, probe_dir=args.probe_dir, seed=args.seed)
                res_s = ins.residual_setup(enc, templates, args.word)
            state[i] = (enc, vn, pos_s, res_s)
        return state[i]

    def rows_for(name, vectors, file, i, fixed=None):
        enc, vn, pos_s, res_s = encoder_state(i)
        nbs = ins.neighbours(enc.embedding_table(), vectors, enc.token_str, k=args.top_k, token_text=enc.token_text)
        rows = []
        for k, v in enumerate(vectors):
            label = (name if len(vectors) == 1 else f"{name}[{k}]") + (" (rescaled)" if fixed else "")
            row = {"token": label, "file": str(file), "encoder": i}
            row.update(ins.norm_row(v, vn))
            row["cosine_neighbors"], row["euclidean_neighbors"] = nbs[k]
            row["position_accuracy"] = None
            row["position_accuracy_normal"] = None
            row["position_note"] = "not measured (--no-effects)" if args.no_effects else None
            row["residual_angle_deg"] = row["vocab_residual_angle_deg"] = None
            if pos_s is not None:
                if pos_s.probe is None:
                    row["position_note"] = pos_s.reason
                else:
                    row["position_accuracy"] = ins.position_accuracy(enc, pos_s, v)
                    row["position_accuracy_normal"] = pos_s.normal
                    row["position_chance"] = pos_s.chance
                    row["position_site"] = pos_s.site
                    row["position_note"] = f"probe {pos_s.source}; {len(pos_s.slots)} held-out token slots"
            if res_s is not None:
                row["residual_angle_deg"], row["residual_per_block_deg"] = ins.residual_angle(enc, res_s, v)
                row["vocab_residual_angle_deg"] = res_s.vocab_angle
                row["vocab_residual_per_block_deg"] = res_s.vocab_per_block
                row["residual_word"] = res_s.word
                row["residual_prompts"] = len(res_s.prompts.positions)
            row["vector_index"], row["n_vectors"], row["fixed"] = k, len(vectors), fixed
            row["verdict"] = ins.verdict(row)
            rows.append(row)
        return rows

    shown = dict(zip(map(id, files), distinct_names([f.path for f in files], [f.name for f in files])))
    tokens = []
    bar = report.progress(plan, desc="inspecting" if args.no_effects else "inspecting (norms, neighbours, position, residual angles)",
                          unit="part")
    for ef, label, i in bar:
        bar.set_postfix_str(f"{shown[id(ef)]} on encoder {i}", refresh=True)
        tokens += rows_for(shown[id(ef)], ef.parts[label], ef.path, i)

    written, skipped = [], []
    if args.fix == "rescale":
        by_file = {}
        for ef, label, i in plan:
            by_file.setdefault(id(ef), (ef, []))[1].append((label, i))
        for ef, parts in by_file.values():
            at_m = all(
                torch.allclose(ef.parts[label].double().norm(dim=-1), torch.tensor(encoder_state(i)[1].m_star, dtype=torch.float64), rtol=1e-5)
                for label, i in parts
            )
            if at_m:
                skipped.append(ef.path)  # already at m* (a DTI token): a rescaled copy would be the same file
                continue
            fixed = {label: (i, ins.rescale(ef.parts[label], encoder_state(i)[1].m_star)) for label, i in parts}
            src = Path(ef.path)
            stems = [Path(e.path).stem for e in files]
            stem = f"{src.resolve().parent.name}-{src.stem}" if stems.count(src.stem) > 1 else src.stem
            f = out / f"{stem}-rescaled.safetensors"
            if f in written:  # x.pt and x.safetensors in one folder: keep both
                f = out / f"{stem}-{src.suffix.lstrip('.') or 'file'}-rescaled.safetensors"
            if ef.layout in ("flux", "sd3"):  # FLUX.1 / SD3.x files keep their layout (clip_l, clip_g, t5 keys)
                from geomkit.embeddings_io import save_parts

                save_parts(f, {label: vec for label, (_i, vec) in fixed.items()})
            elif set(fixed) == {"clip_l", "clip_g"}:
                save_sdxl_pair(f, fixed["clip_l"][1], fixed["clip_g"][1], token=ef.name)
            else:
                save_learned(f, ef.name, next(iter(fixed.values()))[1])
            back = read_embedding(f)
            written.append(f)
            for label, (i, _vec) in fixed.items():
                if back.layout in ("flux", "sd3"):
                    part = back.parts[label]
                else:
                    part = back.parts["clip_l" if label == "clip_l" else "clip_g"] if back.is_pair else next(iter(back.parts.values()))
                tokens += rows_for(shown[id(ef)], part, f, i, fixed="rescale")

    model_name = state[min(state)][0].name if len(state) == 1 else str(args.model)
    results = {"model": model_name, "tokens": tokens}
    results["encoders"] = {
        str(i): {
            "name": s[0].name,
            "family": s[0].family.name,
            "positions": s[0].family.positions,
            "d_model": s[0].d_model,
            "vocab_norms": s[1].stats,
        }
        for i, s in sorted(state.items())
    }
    results["thresholds"] = {
        "inflated_norm_ratio": ins.INFLATED_RATIO,
        "small_norm_ratio": ins.SMALL_RATIO,
        "position_drop": ins.POSITION_DROP,
        "frozen_fraction": ins.FROZEN_FRACTION,
    }
    results["rescaled_files"] = [str(f) for f in written]
    results["already_at_m_star"] = [str(f) for f in skipped]
    notes = [f"model {args.model}: " + ", ".join(f"encoder {i} {s[0].name} ({s[0].family.name}, d={s[0].d_model}, m* {s[1].m_star:.4f})" for i, s in sorted(state.items()))]
    done = {(id(ef), label) for ef, label, _ in plan}
    for ef in files:
        for label, vec in ef.parts.items():
            if (id(ef), label) not in done:
                why = f"--encoder {args.encoder}" if args.encoder is not None else f"no text encoder of dimension {vec.shape[-1]}"
                notes.append(f"{ef.path}: part {label} ({vec.shape[-1]}-d) not inspected ({why})")
    if any(s[0].family.name == "gemma" for s in state.values()):
        notes.append("Gemma 3 270M numbers come from Q4_K_M-quantised weights (de-quantised).")
        results["note"] = notes[-1]
    notes.append(
        f"verdict thresholds: inflated when norm/m* > {ins.INFLATED_RATIO:g} or beyond every vocabulary norm; position lost when "
        f"{100 * ins.POSITION_DROP:.0f} points below normal tokens; frozen when the residual turn is < {ins.FROZEN_FRACTION:g}x the word's"
    )

    panels = []
    for i, (enc, vn, _, _) in sorted(state.items()):
        toks = [{"label": t["token"], "norm": t["norm"], "ratio": t["norm_ratio"]} for t in tokens if t["encoder"] == i]
        panels.append({"live": vn.live.numpy(), "m_star": vn.m_star, "tokens": toks, "title": f"encoder {i}: {enc.name}"})
    report.save_figure(out / "inspect.png", plot(panels, "learned (trained) tokens' norms on the vocabulary's norm histogram"))
    report.write_text(out / "report.md", markdown(results, notes))
    report.write_json(out / "results.json", results)

    for n in notes:
        print(n)
    print()
    table = summary_rows(tokens)
    print(report.table_text(table, "{:.3f}"))
    for t in tokens:
        cos = ", ".join(f"{nb.get('text', nb['token'])} {nb['score']:.2f}" for nb in t["cosine_neighbors"][:5])
        euc = ", ".join(f"{nb.get('text', nb['token'])} {nb['score']:.2f}" for nb in t["euclidean_neighbors"][:5])
        print(f"\n{t['token']} (encoder {t['encoder']}):")
        print(f"  cosine neighbours:    {cos}")
        print(f"  euclidean neighbours: {euc}")
        if t["position_accuracy"] is None:
            print(f"  position: {t['position_note']}")
        print(f"  verdict: {t['verdict']}")
    for f in skipped:
        print(f"\n--fix rescale: {f} is already at m*; no copy written")
    extra = (", " + ", ".join(str(f) for f in written)) if written else ""
    print(f"\nwrote {out / 'results.json'}, {out / 'report.md'}, {out / 'inspect.png'}{extra}")
    return 0
