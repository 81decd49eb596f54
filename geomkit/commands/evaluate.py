"""`geomkit evaluate`: the DTI paper's protocol for one learned token (Sec. 4.1, App. D.1)."""

from __future__ import annotations

from geomkit.commands._common import existing_dir, existing_file, int_range, model_spec, nonempty, out_dir
from geomkit.commands.generate import add_generation_args, check_generation_args, generation_settings

NAME = "evaluate"
ORDER = 71
HELP = "the paper's evaluation: prompt set x 4 seeds, DINOv2 subject fidelity, SigLIP text alignment"
DESCRIPTION = (
    "Generate the evaluation prompt set with the learned token for every seed, then score subject fidelity "
    "(DINOv2 CLS-feature cosine of each image to each reference image, averaged) and text alignment "
    "(SigLIP's match probability sigmoid(exp(t)*cos + b) of each image with its prompt, the class word in "
    "place of the token, as the DTI authors' evaluation code computes it; with --clip instead of --siglip, "
    "the CLIP image-text cosine). Scoring models load from local folders (transformers Dinov2Model, "
    "SiglipModel, CLIPModel). Images already in the output folder with the same settings are reused."
)


def add_arguments(p):
    src = p.add_argument_group("learned token")
    src.add_argument("--run", metavar="RUN_DIR", default=None, type=existing_dir, help="a training run folder: token, pipeline and class word come from it; output defaults to RUN_DIR/eval")
    src.add_argument("--embedding", nargs="+", default=[], type=existing_file, metavar="FILE", help="learned embedding file(s) instead of --run (diffusers files or the SDXL clip_l/clip_g file)")
    src.add_argument("--token", default=None, type=nonempty("token name"), metavar="NAME", help="the token's prompt string (default: the file's token / the run's placeholder)")
    src.add_argument("--model", metavar="PIPELINE", default=None, type=model_spec, help="diffusers pipeline folder (default: the run's model)")
    ev = p.add_argument_group("protocol")
    ev.add_argument("--reference", required=True, type=existing_dir, metavar="DIR", help="folder of the subject's reference (training) images")
    ev.add_argument("--class-word", default=None, type=nonempty("class word"), metavar="WORD", help="the subject's class word for the scored text (default: the run's init word)")
    ev.add_argument("--prompt-set", default=None, choices=("auto", "object", "live", "all"),
                    help="DreamBooth object or live-subject list + 10 complex prompts (35 each), or all 45; "
                         "auto: live for dog/cat, else object (default auto)")
    ev.add_argument("--prompts", metavar="FILE", default=None, type=existing_file, help="your own prompt file (each line with a '{}' placeholder; '#@ SECTION' lines as in the shipped file)")
    ev.add_argument("--dino", required=True, type=existing_dir, metavar="DIR", help="DINOv2 model folder (transformers Dinov2Model + image processor), e.g. facebook/dinov2-base")
    ev.add_argument("--siglip", metavar="DIR", default=None, type=existing_dir, help="SigLIP model folder (SiglipModel + processor + tokenizer), e.g. google/siglip-base-patch16-512")
    ev.add_argument("--clip", metavar="DIR", default=None, type=existing_dir, help="CLIP model folder (CLIPModel): the text-alignment fallback when no --siglip is given")
    ev.add_argument("--eval-batch-size", type=int_range(1, 1024, "the batch size"), default=16, help="images per scoring forward (default 16)")
    ev.add_argument("--cell", type=int_range(16, 4096, "the cell size"), default=128, help="grid cell size in pixels (default 128)")
    add_generation_args(p)
    p.add_argument("--out", default=None, type=out_dir, metavar="DIR", help="output folder (default: RUN_DIR/eval with --run, else runs/evaluate)")


def resolve_inputs(args):
    """Everything checked before any model loads: (token, pipeline folder, class word, the reference images decoded, prompts)."""
    from pathlib import Path

    from geomkit.errors import GeomkitError
    from geomkit.evaluation import image_files, load_images, scorer_model_type, select_prompts
    from geomkit.generation import check_token_names, check_tokens_fit, pipeline_dir, read_run_results, read_tokens, run_token

    if bool(args.run) == bool(args.embedding):
        raise GeomkitError("give the learned token as --run RUN_DIR or as --embedding FILE (one of them)")
    results = {}
    if args.run:
        results = read_run_results(args.run)
        token = run_token(args.run)
    else:
        tokens = read_tokens(args.embedding)
        if len(tokens) != 1:
            raise GeomkitError(f"--embedding: {len(tokens)} different tokens ({', '.join(t.name for t in tokens)}); evaluate scores one")
        token = tokens[0]
    if args.token:
        token.name = args.token
    model = args.model or results.get("model")
    if not model:
        raise GeomkitError("--model PIPELINE is required with --embedding")
    try:
        folder = pipeline_dir(model)
    except GeomkitError as exc:
        if args.run and not args.model:
            raise GeomkitError(f"run {args.run} was trained on {model!r}, not a diffusion pipeline folder here; pass --model PIPELINE ({exc})") from None
        raise
    check_tokens_fit(folder, [token])
    check_token_names(folder, [token])
    class_word = args.class_word or results.get("init_word")
    if not class_word:
        raise GeomkitError("--class-word WORD is required (the subject's class, e.g. dog): the scored text uses it")
    ref_images = load_images(image_files(args.reference))  # every reference readable before anything is rendered
    prompt_set, prompts = select_prompts(args.prompt_set or "auto", class_word, args.prompts)
    if args.prompt_set and prompt_set == "file":
        raise GeomkitError(f"--prompt-set {args.prompt_set} with --prompts {args.prompts}: the file has no '#@ SECTION' lines, "
                           "so it is used whole; drop --prompt-set (or add sections to the file)")
    scorer_model_type(args.dino, "dinov2", "--dino")
    if args.siglip:
        scorer_model_type(args.siglip, "siglip", "--siglip")
    if args.clip:
        scorer_model_type(args.clip, "clip", "--clip")
    if not (args.siglip or args.clip):
        raise GeomkitError("text alignment needs --siglip DIR (the paper's metric) or --clip DIR (fallback)")
    if args.eval_batch_size < 1:
        raise GeomkitError("--eval-batch-size must be at least 1")
    out = args.out or (str(Path(args.run) / "eval") if args.run else "runs/evaluate")
    return token, folder, class_word, ref_images, prompt_set, prompts, out


def run(args) -> int:
    import gc
    import hashlib

    import torch

    from geomkit import report
    from geomkit.evaluation import (
        cosine_matrix, dino_features, fill, load_images, load_scorer, scoring_text, text_alignment, text_metric_name,
    )
    from geomkit.generation import (
        Job, generate, have_image, image_grid, install_loras, install_tokens, load_pipeline, pick_device, record_settings, save_png,
        settings_guard, slug,
    )

    check_generation_args(args)
    token, folder, class_word, ref_images, prompt_set, prompts, out_path = resolve_inputs(args)
    out = report.prepare_out(out_path)
    from geomkit.runlock import acquire

    _lock = acquire(out, "evaluate")  # one live run per --out (it resumes there); released when run() returns
    img_dir = out / "images"
    settings = generation_settings(args, folder, [token])
    settings_guard(img_dir, settings, overwrite=args.overwrite, record=False)

    jobs, by_prompt = [], []
    for template in prompts:
        text = fill(template, token.name)
        key = hashlib.sha256(text.encode()).hexdigest()[:6]
        row = [Job(text, s, img_dir / f"{slug(template.replace('{}', 'X'))}-{key}-s{s}.png") for s in args.seeds]
        jobs += row
        by_prompt.append((template, text, row))

    made = 0
    if any(not have_image(j.path) for j in jobs):
        pipe = load_pipeline(folder, device=args.device, dtype=args.dtype, scheduler=args.scheduler)
        install_tokens(pipe, [token])
        install_loras(pipe, [token.lora] if token.lora is not None else [])
        record_settings(img_dir, settings)
        made = generate(
            pipe, jobs, steps=args.steps, guidance=args.guidance, size=args.size, batch_size=args.batch_size,
            negative_prompt=args.negative_prompt, progress=not args.no_progress, desc="generating",
        )
        del pipe
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    device = pick_device(args.device)
    gen_images = load_images([j.path for j in jobs])
    texts = [scoring_text(t, class_word) for t, _, row in by_prompt for _ in row]

    dino = load_scorer(args.dino, "dinov2", device, "--dino")
    sims = cosine_matrix(dino_features(dino, gen_images, args.eval_batch_size), dino_features(dino, ref_images, args.eval_batch_size))
    per_image_sim = sims.mean(dim=1)  # each generated image: mean cosine over the references
    del dino
    scorer = load_scorer(args.siglip or args.clip, "siglip" if args.siglip else "clip", device, "--siglip" if args.siglip else "--clip")
    text_score, text_cos = text_alignment(scorer, gen_images, texts, args.eval_batch_size)
    metric = text_metric_name(scorer)
    clip_cos = None
    if args.siglip and args.clip:
        clip = load_scorer(args.clip, "clip", device, "--clip")
        clip_cos = text_alignment(clip, gen_images, texts, args.eval_batch_size)[1]

    per_prompt, per_image_rows, k = [], [], 0
    for template, text, row in by_prompt:
        idx = list(range(k, k + len(row)))
        k += len(row)
        entry = {
            "prompt": template,
            "generation_prompt": text,
            "scored_text": texts[idx[0]],
            "image_similarity": float(per_image_sim[idx].mean()),
            "text_alignment": float(text_score[idx].mean()),
            "text_cosine": float(text_cos[idx].mean()),
            "images": [str(j.path.relative_to(out)) for j in row],
        }
        if clip_cos is not None:
            entry["clip_text_cosine"] = float(clip_cos[idx].mean())
        per_prompt.append(entry)
        for i, j in zip(idx, row):
            per_image_rows.append({"prompt": template, "seed": j.seed, "file": str(j.path.relative_to(out)),
                                   "image_similarity": float(per_image_sim[i]), "text_alignment": float(text_score[i]),
                                   "text_cosine": float(text_cos[i])})

    results = {
        "image_similarity": float(per_image_sim.mean()),
        "text_alignment": float(text_score.mean()),
        "n_images": len(jobs),
        "per_prompt": per_prompt,
        "text_metric": metric,
        "text_cosine": float(text_cos.mean()),
        **({"clip_text_cosine": float(clip_cos.mean())} if clip_cos is not None else {}),
        "image_metric": "dinov2-cls-cosine (mean over generated x reference pairs)",
        "token": token.name,
        "token_files": token.paths,
        "lora": str(token.lora) if token.lora is not None else None,  # a --run trained with --lora-rank brings its LoRA
        "class_word": class_word,
        "run": str(args.run) if args.run else None,
        "pipeline": str(folder),
        "prompt_set": prompt_set,
        "prompt_file": str(args.prompts) if args.prompts else "geomkit/data/eval_prompts.txt",
        "n_prompts": len(prompts),
        "seeds": args.seeds,
        "n_reference": len(ref_images),
        "reference": str(args.reference),
        "dino_model": str(args.dino),
        "text_model": str(args.siglip or args.clip),
        **{k: settings[k] for k in ("steps", "scheduler", "guidance", "size", "negative_prompt", "dtype")},
        "n_generated": made,
    }
    import pandas as pd

    report.write_csv(out / "scores.csv", pd.DataFrame(per_image_rows))
    grid = image_grid([j.path for j in jobs], len(prompts), len(args.seeds),
                      row_labels=[t for t, _, _ in by_prompt], col_labels=[f"seed {s}" for s in args.seeds], cell=args.cell)
    save_png(out / "grid.png", grid)
    report.write_json(out / "results.json", results)

    print(f"token {token.name} ({class_word})   pipeline: {folder}   prompt set: {prompt_set} ({len(prompts)} prompts x {len(args.seeds)} seeds)")
    short = lambda t: t if len(t) <= 64 else t[:61] + "..."  # noqa: E731
    print(report.table_text([{"prompt": short(e["prompt"]), "image": e["image_similarity"], "text": e["text_alignment"]} for e in per_prompt]))
    print(f"\nimage similarity (DINOv2): {results['image_similarity']:.4f}   text alignment ({metric}): {results['text_alignment']:.4f}"
          f"   n_images: {len(jobs)} ({made} generated, {len(jobs) - made} reused)")
    print(f"wrote {out / 'results.json'}, {out / 'scores.csv'}, {out / 'grid.png'}")
    return 0
