"""`geomkit interpolate A B`: slerp / lerp between two learned tokens (the paper's Fig. 4)."""

from __future__ import annotations

from geomkit.commands._common import add_out_arg, file_or_dir, int_range, model_spec, nonempty, number_list
from geomkit.commands.generate import add_generation_args

NAME = "interpolate"
ORDER = 72
HELP = "slerp/lerp between two learned embeddings at several ratios (Fig. 4), optionally rendered"
DESCRIPTION = (
    "Interpolate two learned tokens (embedding files or training run folders) at --ratios: slerp moves the "
    "direction along the great circle and sets the norm linearly in the ratio (so two tokens of equal norm, "
    "e.g. two DTI tokens at m*, give interpolants at that norm by construction); lerp is TI's straight line "
    "(its norm dips between differing vectors). Writes one embedding file per ratio (diffusers format, or the "
    "SDXL clip_l/clip_g format when the inputs are SDXL pairs) and results.json with per-ratio norms and "
    "angles. With --neighbors K and a model (--model, or the runs' model), lists each interpolant's top-K "
    "cosine neighbours in the vocabulary (as `geomkit neighbors` does) and measures the path's smoothness: "
    "Jaccard overlap of consecutive top-K sets, top-1 changes, distinct top-1 tokens, whether the angle to A "
    "grows monotonically; with a model, each norm is also given as a fraction of its m* (mean vocabulary norm). "
    "With --model and --prompt, also renders each prompt at every ratio with the same seed as one grid PNG."
)


FIG4_RATIOS = (0.0, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 1.0)  # = geomkit.interpolation.FIG4_RATIOS (no torch import here)


def add_arguments(p):
    default = ",".join(f"{r:g}" for r in FIG4_RATIOS)
    p.add_argument("a", type=file_or_dir, metavar="A", help="learned embedding file or training run folder (ratio 0)")
    p.add_argument("b", type=file_or_dir, metavar="B", help="learned embedding file or training run folder (ratio 1)")
    p.add_argument("--ratios", type=number_list(0, 1, what="ratio"), default=list(FIG4_RATIOS), metavar="R,R,...", help=f"ratios in [0, 1] (default {default}, as Fig. 4)")
    p.add_argument("--mode", choices=("slerp", "lerp"), default="slerp", help="slerp (default; on the sphere) or lerp (straight line, TI's usual)")
    p.add_argument("--token", default="<mix>", type=nonempty("token name"), help="the token name written into the output files (default <mix>)")
    p.add_argument("--model", metavar="SPEC", default=None, type=model_spec,
                   help="the model whose vocabulary --neighbors searches and whose m* (mean vocabulary norm) the norms "
                   "are divided by: any --model of `geomkit neighbors`; with --prompt it must be a diffusers pipeline "
                   "folder, which also renders the interpolants. Default with --prompt or --neighbors: the runs' "
                   "model, when A and B are run folders of one model")
    p.add_argument("--neighbors", "--neighbours", dest="neighbors", type=int_range(1, None, "--neighbors"), default=None,
                   metavar="K", help="list each interpolant's top-K cosine vocabulary neighbours and the path's smoothness "
                   "(needs a model: --model or run folders)")
    p.add_argument("--encoder", type=int, default=1, choices=(1, 2, 3),
                   help="with --neighbors on a pipeline folder: whose vocabulary a single-encoder token is compared with "
                   "(SDXL clip_l/clip_g pairs always use encoders 1 and 2)")
    p.add_argument("--prompt", action="append", default=[], type=nonempty("prompt"), metavar="TEXT", help="prompt to render, '{}' = the interpolated token (repeatable; needs --model)")
    p.add_argument("--cell", type=int_range(16, 4096, "the cell size"), default=256, help="grid cell size in pixels (default 256)")
    add_generation_args(p, seeds="0")  # one grid row per prompt and seed
    add_out_arg(p, "runs/interpolate")


def read_input(spec: str):
    """(name, parts, model or None) from an embedding file or a run folder."""
    from pathlib import Path

    from geomkit.errors import GeomkitError
    from geomkit.generation import read_run_results, read_token_file, run_token
    from geomkit.interpolation import token_parts

    p = Path(spec).expanduser()
    if p.is_dir():
        tok = run_token(p)
        return tok.name, token_parts(tok), read_run_results(p).get("model")
    if not p.exists():
        raise GeomkitError(f"{spec}: no such embedding file or run folder")
    tok = read_token_file(p)
    return tok.name, token_parts(tok), None


def check_mix_name(name: str, model=None) -> None:
    """--token must be a new name: not empty, no spaces, not a word of the model's vocabulary
    (generate and evaluate refuse such files). Without a model to ask, a plain word is refused."""
    from geomkit.errors import GeomkitError
    from geomkit.models import check_new_token, load_tokenizers

    tokenizers = None
    if model:
        try:
            tokenizers = load_tokenizers(str(model))
        except GeomkitError:
            tokenizers = None  # the runs' model is not here: fall back to the plain-word rule
    check_new_token(name, tokenizers or [])
    if tokenizers is None and name.isalnum():
        raise GeomkitError(f"--token {name!r} looks like an ordinary word, which a text encoder's vocabulary already holds "
                           f"(generate would refuse the files); give a new name such as <{name}>")


def run(args) -> int:
    from geomkit import report
    from geomkit.commands.generate import check_generation_args, generation_settings
    from geomkit.embeddings_io import save_learned, save_sdxl_pair
    from geomkit.errors import GeomkitError
    from geomkit.generation import Job, Token, check_tokens_fit, generate, image_grid, install_tokens, load_pipeline, pipeline_dir, record_settings, save_png, settings_guard
    from geomkit.interpolation import check_compatible, check_ratios, describe, interpolate

    ratios = check_ratios(args.ratios)
    name_a, a, model_a = read_input(args.a)
    name_b, b, model_b = read_input(args.b)
    check_compatible(a, b, f"A ({args.a})", f"B ({args.b})")
    if model_a and model_b and model_a != model_b:
        raise GeomkitError(f"A was trained on {model_a} and B on {model_b}: tokens of different encoders cannot be interpolated")
    run_model = model_a if model_a and model_a == model_b else None
    model = (args.model or run_model) if args.prompt else None  # the pipeline that renders
    vocab_model = args.model or (run_model if args.neighbors else None)  # the vocabulary searched, m*
    if args.prompt and not model:
        raise GeomkitError("--prompt renders images and needs --model PIPELINE")
    if args.neighbors and not vocab_model:
        raise GeomkitError(f"--neighbors {args.neighbors} needs --model SPEC, the model whose vocabulary is searched "
                           "(A and B are not training run folders of one model)")
    for text in args.prompt:
        if "{}" not in text:
            raise GeomkitError(f"--prompt {text!r}: needs a '{{}}' placeholder where the interpolated token goes")
    folder = pipeline_dir(model) if model else None
    if folder is not None:
        check_generation_args(args)
        check_tokens_fit(folder, [Token(name=name_a, parts=dict(a), hints={"clip_l": 1, "clip_g": 2})])
    check_mix_name(args.token, folder or model_a or model_b)
    if all(a[k].shape == b[k].shape and bool((a[k] == b[k]).all()) for k in a):
        raise GeomkitError(f"A ({args.a}) and B ({args.b}) hold the same vectors: every interpolant would equal them; give two different tokens")

    from geomkit.interpolation import check_not_opposite

    check_not_opposite(a, b)
    vocab = vocabularies(vocab_model, a, args.encoder, args.neighbors) if vocab_model else None  # loads before any file is written
    out = report.prepare_out(args.out, command="interpolate")
    mixes = interpolate(a, b, ratios, args.mode)
    info = describe(a, b, mixes)
    sdxl = "clip_l" in a
    path = measure_path(vocab, a, mixes, ratios, info, args.neighbors) if vocab else None

    pipe = None
    if folder is not None:  # the pipeline loads, and takes the tokens, before any file is written
        tokens = [Token(name=f"<mix-{i}>", parts=dict(m), hints={"clip_l": 1, "clip_g": 2}) for i, m in enumerate(mixes)]
        img_dir = out / "images"
        settings = generation_settings(args, folder, tokens)
        settings["mode"] = args.mode
        settings_guard(img_dir, settings, overwrite=args.overwrite, record=False)
        pipe = load_pipeline(folder, device=args.device, dtype=args.dtype, scheduler=args.scheduler)
        install_tokens(pipe, tokens)

    files = []
    for i, (t, m) in enumerate(zip(ratios, mixes)):
        f = out / f"mix-{i:02d}-r{t:.2f}.safetensors"
        if sdxl:
            save_sdxl_pair(f, m["clip_l"], m["clip_g"], token=args.token)
        else:
            save_learned(f, args.token, m["embedding"])
        files.append(f.name)

    grid_name = None
    if folder is not None:
        record_settings(img_dir, settings)
        rows = [(pi, text, seed) for pi, text in enumerate(args.prompt) for seed in args.seeds]
        jobs = [
            Job(text.replace("{}", tok.name), seed, img_dir / f"p{pi:02d}-r{i:02d}-{t:.2f}-s{seed}.png")
            for pi, text, seed in rows
            for i, (t, tok) in enumerate(zip(ratios, tokens))
        ]
        generate(pipe, jobs, steps=args.steps, guidance=args.guidance, size=args.size, batch_size=args.batch_size,
                 negative_prompt=args.negative_prompt, progress=not args.no_progress, desc=f"rendering ({args.mode})")
        labels = [text if len(args.seeds) == 1 else f"{text} (seed {seed})" for _, text, seed in rows]
        grid = image_grid([j.path for j in jobs], len(rows), len(ratios), row_labels=labels,
                          col_labels=[f"{t:g}" for t in ratios], cell=args.cell)
        grid_name = f"grid-{args.mode}.png"
        save_png(out / grid_name, grid)

    results = {
        "mode": args.mode,
        "ratios": ratios,
        "norms": info["norms"],
        "angles_deg": info["angles_deg"],
        "parts": info["parts"],
        "angles_to_b_deg": info["angles_to_b_deg"],
        "angle_ab_deg": info["angle_ab_deg"],
        "norm_a": info["norm_a"],
        "norm_b": info["norm_b"],
        "a": {"path": str(args.a), "token": name_a, "model": model_a},
        "b": {"path": str(args.b), "token": name_b, "model": model_b},
        "token": args.token,
        "format": "sdxl clip_l/clip_g" if sdxl else "diffusers",
        "files": files,
        "grid": grid_name,
        "model": str(folder) if folder else None,
        "prompts": args.prompt,
        # measured on the interpolants when a model is known (--model, or run folders with --neighbors)
        "vocabulary_model": path["model"] if path else None,
        "m_star": path["m_star"] if path else None,
        "norm_over_m_star": path["norm_over_m_star"] if path else None,
        "top_k": args.neighbors,
        "neighbors": path["neighbors"] if path else None,
        "smoothness": path["smoothness"] if path else None,
    }
    report.write_json(out / "results.json", results)
    if path:
        write_path_csvs(out, ratios, info, path)

    table = []
    one = len(info["parts"]) == 1
    for i, t in enumerate(ratios):
        row = {"ratio": t} if path and args.neighbors else {"ratio": t, "file": files[i]}
        for j, label in enumerate(info["parts"]):
            sfx = "" if one and path else f" {label}"
            row[f"norm{sfx}"] = info["norms"][i][j]
            if path:
                row[f"norm/m*{sfx}"] = path["norm_over_m_star"][i][j]
            row[f"angle from A{sfx}"] = info["angles_deg"][i][j]
            if path and args.neighbors:
                nb = path["neighbors"][i][label]
                row[f"J prev{sfx}"] = path["jaccard_prev"][i][j]
                row[f"top-{min(SHOWN, args.neighbors)} cosine{sfx}"] = " ".join(r["text"].strip() or repr(r["text"]) for r in nb[:SHOWN])
        table.append(row)
    print(f"{args.mode}: {name_a} -> {name_b}   angle between them: "
          + ", ".join(f"{lab} {ang:.2f} deg" for lab, ang in zip(info["parts"], info["angle_ab_deg"])))
    if path:
        print(f"vocabulary: {path['model']}   m* = " + ", ".join(f"{lab} {m:.4f}" for lab, m in zip(info["parts"], path["m_star"])))
    print(report.table_text(table))
    if path and args.neighbors:
        for label, sm in path["smoothness"].items():
            print(f"smoothness ({label}, top-{args.neighbors}): Jaccard of consecutive ratios min {sm['jaccard_min']:.3f} "
                  f"mean {sm['jaccard_mean']:.3f}; top-1 changes {sm['top1_changes']} times, {sm['distinct_top1']} distinct "
                  f"({' -> '.join(repr(x) for x in sm['top1_sequence'])}); angle to A monotonic: "
                  f"{'yes' if sm['angle_to_a_monotonic'] else 'NO'}")
    extra = f", {out / 'neighbors.csv'}, {out / 'path.csv'}" if path else ""
    print(f"\nwrote {len(files)} embedding files and {out / 'results.json'}{extra}" + (f", {out / grid_name}" if grid_name else ""))
    return 0


SHOWN = 5  # neighbours per ratio in the printed table (results.json and neighbors.csv hold all K)
PART_ENCODER = {"clip_l": 1, "clip_g": 2}  # an SDXL pair's parts belong to the pipeline's text encoders 1 and 2


def vocabularies(spec: str, parts: dict, encoder: int, k) -> dict:
    """{part: Encoder} whose vocabulary each part is compared with; one line when it cannot be."""
    from geomkit.errors import GeomkitError
    from geomkit.models import load_encoder

    out = {}
    for part, v in parts.items():
        enc = load_encoder(spec, encoder=PART_ENCODER.get(part, encoder))
        if enc.d_model != v.shape[-1]:
            raise GeomkitError(f"--model {spec}: its vocabulary has dimension {enc.d_model} but the tokens' {part} has "
                               f"{v.shape[-1]}; give the model the tokens were trained on")
        if k is not None and k >= enc.vocab_size:
            raise GeomkitError(f"--neighbors {k}: the vocabulary of {enc.name} has only {enc.vocab_size} tokens")
        out[part] = enc
    return out


def measure_path(vocab: dict, a: dict, mixes, ratios, info: dict, k) -> dict:
    """norm / m* per ratio and column; with k, the top-k cosine neighbours and the smoothness."""
    import torch

    from geomkit.inspection import vocab_norms
    from geomkit.interpolation import columns, jaccard, neighbour_path, smoothness

    cols = columns(a)
    m_star = {part: vocab_norms(enc.embedding_table()).m_star for part, enc in vocab.items()}
    res = {
        "model": vocab[cols[0][1]].name,
        "m_star": [m_star[part] for _, part, _ in cols],
        "norm_over_m_star": [[n / m_star[part] for n, (_, part, _) in zip(row, cols)] for row in info["norms"]],
        "neighbors": None, "smoothness": None, "jaccard_prev": None,
    }
    if not k:
        return res
    per_col = {label: neighbour_path(vocab[part], torch.stack([m[part][row] for m in mixes]), k) for label, part, row in cols}
    res["neighbors"] = [{label: per_col[label][i] for label, _, _ in cols} for i in range(len(ratios))]
    res["smoothness"] = {
        label: smoothness(ratios, [[r["id"] for r in nb] for nb in per_col[label]], [ang[j] for ang in info["angles_deg"]],
                          labels=[nb[0]["text"] for nb in per_col[label]])
        for j, (label, _, _) in enumerate(cols)
    }
    # the printed table's column, in the order given: overlap with the previous ratio listed
    res["jaccard_prev"] = [[None if i == 0 else jaccard([r["id"] for r in per_col[label][i - 1]], [r["id"] for r in per_col[label][i]])
                            for label, _, _ in cols] for i in range(len(ratios))]
    return res


def write_path_csvs(out, ratios, info: dict, path: dict) -> None:
    """neighbors.csv (ratio, part, rank, decoded token, raw piece, id, cosine) and path.csv (one row per
    ratio and part: norm, norm/m*, angle from A, top-1, Jaccard with the previous ratio)."""
    import pandas as pd

    from geomkit import report

    labels = info["parts"]
    rows, prow = [], []
    for i, t in enumerate(ratios):
        for j, label in enumerate(labels):
            nb = path["neighbors"][i][label] if path["neighbors"] else []
            for rank, r in enumerate(nb, 1):
                rows.append({"ratio": t, "part": label, "rank": rank, "token": r["text"], "piece": r["token"], "id": r["id"],
                             "cosine": r["score"]})
            prow.append({"ratio": t, "part": label, "norm": info["norms"][i][j], "norm_over_m_star": path["norm_over_m_star"][i][j],
                         "angle_from_a_deg": info["angles_deg"][i][j], "top1": nb[0]["text"] if nb else None,
                         "jaccard_with_previous": path["jaccard_prev"][i][j] if path["jaccard_prev"] else None})
    report.write_csv(out / "neighbors.csv", pd.DataFrame(rows, columns=["ratio", "part", "rank", "token", "piece", "id", "cosine"]))
    report.write_csv(out / "path.csv", pd.DataFrame(prow))
