"""`geomkit generate`: images from a diffusers pipeline folder with learned tokens loaded."""

from __future__ import annotations

import re
from pathlib import Path

from geomkit.commands._common import (
    MAX_SEED, add_out_arg, device_name, dtype_name, existing_dir, existing_file, float_range, int_list_range, int_range, model_spec,
    nonempty,
)

NAME = "generate"
ORDER = 70
HELP = "images from a diffusion pipeline with learned tokens (PNGs + grid)"
DESCRIPTION = (
    "Load a local diffusers pipeline folder, add learned tokens (diffusers files, SDXL clip_l/clip_g files, "
    "or a training run folder) with load_textual_inversion, and render every prompt with every seed. "
    "In a prompt, '{}' stands for the learned token (with several tokens: {} {} ... in order, or {0} {1}); "
    "the token's own name (e.g. <my-dog>) works too. Images already in --out with the same settings are "
    "kept (resume)."
)


def int_list(text: str) -> list[int]:
    import argparse

    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def add_generation_args(p, *, seeds: str = "0,1,2,3") -> None:
    from geomkit.generation import DEFAULT_STEPS, SCHEDULERS

    g = p.add_argument_group("generation")
    g.add_argument("--seeds", type=int_list_range(0, MAX_SEED, "seed"), default=int_list(seeds), metavar="S,S,...", help=f"seeds, one image per prompt and seed (default {seeds})")
    g.add_argument("--steps", type=int_range(1, 1000, "the number of steps"), default=DEFAULT_STEPS, help=f"denoising steps (default {DEFAULT_STEPS}: the paper's DDIM 50 for SDXL; also used for SD1.x/2.x)")
    g.add_argument("--scheduler", default="ddim", choices=list(SCHEDULERS), help="sampler (default ddim, as the paper; 'default' keeps the pipeline's own)")
    g.add_argument("--guidance", type=float_range(0, 100, what="the guidance scale"), default=None, help="classifier-free guidance scale (default: 7.5 for SD1.x/2.x, 5.0 for SDXL, diffusers' defaults)")
    g.add_argument("--resolution", "--size", dest="size", type=int_range(8, 4096, "the image size"), default=None, metavar="PX",
                   help="image height and width in pixels, as train's --resolution (--size is an alias; default: the pipeline's native size, 512 SD1.x, 1024 SDXL)")
    g.add_argument("--negative-prompt", default=None, help="negative prompt (default none)")
    g.add_argument("--batch-size", type=int_range(1, 1024, "the batch size"), default=4, help="images per pipeline call (default 4)")
    g.add_argument("--device", default="auto", type=device_name, help="auto (cuda when available), cpu, cuda, cuda:1 ...")
    g.add_argument("--dtype", default="auto", type=dtype_name, help="auto (bfloat16 on GPU, float32 on CPU), float32, float16, bfloat16")
    g.add_argument("--overwrite", action="store_true", help="discard images in --out made with other settings instead of refusing")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def check_generation_args(args) -> None:
    from geomkit.errors import GeomkitError

    # steps, batch size, guidance and the size's range are checked as the command line is read
    if args.size is not None and args.size % 8:
        raise GeomkitError(f"--resolution {args.size}: must be a positive multiple of 8")
    from geomkit.generation import pick_device, pick_dtype

    pick_dtype(args.dtype, pick_device(args.device))  # CUDA asked for but absent, or an unknown dtype: before any file


def generation_settings(args, pipeline_folder, tokens) -> dict:
    """What decides an image besides its prompt and seed (recorded for resume)."""
    from geomkit.generation import file_digest, token_fingerprint

    return {
        "pipeline": str(Path(pipeline_folder).resolve()),
        "tokens": token_fingerprint(tokens),
        "steps": args.steps,
        "scheduler": args.scheduler,
        "guidance": args.guidance,
        "size": args.size,
        "negative_prompt": args.negative_prompt,
        "dtype": args.dtype,
        # only when given, so image folders made before --lora existed still match
        **({"loras": {str(Path(f).resolve()): file_digest(f) for f in args.lora}} if getattr(args, "lora", None) else {}),
    }


def guidance_used(guidance, folder) -> float:
    """The guidance scale the images were made with: the one given, else the pipeline's default
    (diffusers': 5.0 for SDXL, 7.5 for SD 1.x/2.x), read from the folder (results.json says the
    number, never null)."""
    import json

    from geomkit.generation import GUIDANCE_SD, GUIDANCE_SDXL

    if guidance is not None:
        return float(guidance)
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        index = {}
    two = isinstance(index, dict) and index.get("text_encoder_2") not in (None, [None, None])
    return GUIDANCE_SDXL if two else GUIDANCE_SD


def fill_tokens(template: str, names) -> str:
    """'{}' -> the tokens in order (the last repeats), '{k}' -> token k."""
    from geomkit.errors import GeomkitError

    if not names:
        return template
    count = iter(range(10_000))

    def sub(m):
        key = m.group(1)
        if key == "":
            return names[min(next(count), len(names) - 1)]
        k = int(key)
        if k >= len(names):
            raise GeomkitError(f"prompt {template!r}: {{{k}}} but only {len(names)} token(s) given")
        return names[k]

    return re.sub(r"\{(\d*)\}", sub, template)


def add_arguments(p):
    p.add_argument("--model", metavar="PIPELINE", default=None, type=model_spec, help="diffusers pipeline folder (or cached org/name); default: the --run's model")
    p.add_argument("--embedding", nargs="+", default=[], type=existing_file, metavar="FILE", help="learned embedding file(s): diffusers {token: (n, d)}, SDXL {clip_l, clip_g}, FLUX {clip_l, t5} (or t5 alone) or SD3 {clip_l, clip_g, t5}")
    p.add_argument("--run", nargs="+", default=[], type=existing_dir, metavar="RUN_DIR", help="training run folder(s): their learned token(s)")
    p.add_argument("--lora", nargs="+", default=[], type=existing_file, metavar="FILE",
                   help="LoRA file(s) for the denoiser (diffusers pytorch_lora_weights or kohya layout); a --run trained "
                        "with --lora-rank brings its own")
    p.add_argument("--token", nargs="+", default=None, type=nonempty("token name"), metavar="NAME", help="rename the learned tokens, in order (default: each file's token / the run's placeholder)")
    p.add_argument("--prompt", action="append", default=[], type=nonempty("prompt"), metavar="TEXT", help="a prompt ('{}' = the learned token); repeat for several")
    p.add_argument("--prompts", metavar="FILE", default=None, type=existing_file, help="a prompt file, one per line ('#' lines skipped)")
    add_generation_args(p)
    p.add_argument("--cell", type=int_range(16, 4096, "the cell size"), default=256, help="grid cell size in pixels (default 256)")
    add_out_arg(p, "runs/generate")


def read_prompt_lines(path) -> list[str]:
    from pathlib import Path

    from geomkit.errors import GeomkitError

    f = Path(path).expanduser()
    if not f.is_file():
        raise GeomkitError(f"--prompts {path}: file not found")
    try:
        lines = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise GeomkitError(f"--prompts {path}: cannot be read as UTF-8 text ({exc})") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise GeomkitError(f"--prompts {path}: no prompt lines")
    return lines


def check_merged(tokens) -> None:
    """Files naming one token merge into one token only as the parts of different text encoders
    (SDXL's learned_embeds + learned_embeds_2); two files for the same encoder would leave one
    of them unused: refuse that."""
    from geomkit.errors import GeomkitError

    for t in tokens:
        dims = [int(v.shape[-1]) for v in t.parts.values()]
        if len(dims) != len(set(dims)):
            d = next(x for x in dims if dims.count(x) > 1)
            same = [p for p, v in zip(t.paths, t.parts.values()) if int(v.shape[-1]) == d] or t.paths
            raise GeomkitError(f"{' and '.join(same)} both carry the token {t.name!r} for the same text encoder ({d}-d): "
                               "one would be dropped; give them different names (geomkit convert --to diffusers --token NEW) "
                               "or pass one of them")


def collect_tokens(embedding_files, run_dirs, names=None):
    """Tokens from files and run folders, renamed by --token; the first run's results (or None)."""
    from geomkit.errors import GeomkitError
    from geomkit.generation import read_run_results, read_tokens, run_token

    tokens = read_tokens(embedding_files) if embedding_files else []
    check_merged(tokens)
    first = None
    for rd in run_dirs:
        results = read_run_results(rd)
        first = first or results
        tokens.append(run_token(rd))
    if names:
        if len(names) != len(tokens):
            raise GeomkitError(f"--token gives {len(names)} name(s) for {len(tokens)} learned token(s)")
        for t, n in zip(tokens, names):
            t.name = n
    seen = set()
    for t in tokens:
        if t.name in seen:
            raise GeomkitError(f"two learned tokens are both named {t.name!r}; rename them with --token")
        seen.add(t.name)
    return tokens, first


def run(args) -> int:
    import hashlib

    from geomkit import report
    from geomkit.errors import GeomkitError
    from geomkit.generation import (
        Job, check_lora_fits, check_token_names, check_tokens_fit, generate, have_image, image_grid, install_loras, install_tokens,
        load_pipeline, pipeline_dir, record_settings, save_png, settings_guard, slug,
    )

    check_generation_args(args)
    tokens, run_results = collect_tokens(args.embedding, args.run, args.token)
    model = args.model or (run_results or {}).get("model")
    if not model:
        raise GeomkitError("--model PIPELINE is required (or --run RUN_DIR of a pipeline run)")
    folder = pipeline_dir(model)
    check_tokens_fit(folder, tokens)
    for f in args.lora:
        check_lora_fits(folder, f)
    prompts = list(args.prompt) + (read_prompt_lines(args.prompts) if args.prompts else [])
    if not prompts:
        raise GeomkitError("no prompts: give --prompt TEXT (repeatable) or --prompts FILE")
    names = [t.name for t in tokens]
    if not names:
        with_slot = next((p for p in prompts if re.search(r"\{\d*\}", p)), None)
        if with_slot is not None:
            raise GeomkitError(f"prompt {with_slot!r} has a '{{}}' placeholder but no learned token is given (--embedding FILE or --run RUN_DIR)")
    if names:
        idle = next((p for p in prompts if not re.search(r"\{\d*\}", p) and not any(n in p for n in names)), None)
        if idle is not None:
            raise GeomkitError(f"prompt {idle!r} holds neither a '{{}}' slot nor the token's name ({', '.join(names)}): the learned "
                               "token would not be used; add {} where it goes")
    texts = [fill_tokens(p, names) for p in prompts]
    check_token_names(folder, tokens)

    out = report.prepare_out(args.out, command="generate")
    from geomkit.runlock import acquire

    _lock = acquire(out, "generate")  # one live run per --out (it resumes there); released when run() returns
    img_dir = out / "images"
    settings = generation_settings(args, folder, tokens)
    settings_guard(img_dir, settings, overwrite=args.overwrite, record=False)
    jobs, rows = [], []
    for _template, text in zip(prompts, texts):
        key = hashlib.sha256(text.encode()).hexdigest()[:6]
        row = [Job(text, s, img_dir / f"{slug(text)}-{key}-s{s}.png") for s in args.seeds]
        jobs += row
        rows.append(row)

    pending = [j for j in jobs if not have_image(j.path)]
    made = 0
    if pending:
        pipe = load_pipeline(folder, device=args.device, dtype=args.dtype, scheduler=args.scheduler)
        install_tokens(pipe, tokens)
        install_loras(pipe, [t.lora for t in tokens if t.lora is not None] + list(args.lora))  # one set, all active
        record_settings(img_dir, settings)
        made = generate(
            pipe, jobs, steps=args.steps, guidance=args.guidance, size=args.size, batch_size=args.batch_size,
            negative_prompt=args.negative_prompt, progress=not args.no_progress,
        )
    grid = image_grid([j.path for j in jobs], len(prompts), len(args.seeds),
                      row_labels=texts, col_labels=[f"seed {s}" for s in args.seeds], cell=args.cell)
    save_png(out / "grid.png", grid)
    results = {
        "model": str(folder),
        "tokens": {t.name: {"files": t.paths, "dims": [int(v.shape[-1]) for v in t.parts.values()],
                            "n_vectors": int(next(iter(t.parts.values())).shape[0]),
                            "lora": str(t.lora) if t.lora is not None else None} for t in tokens},
        "loras": [str(f) for f in args.lora],
        "prompts": texts,
        "seeds": args.seeds,
        **{k: settings[k] for k in ("steps", "scheduler", "size", "negative_prompt", "dtype")},
        "guidance": guidance_used(args.guidance, folder),
        "images": [[str(j.path.relative_to(out)) for j in row] for row in rows],
        "n_images": len(jobs),
        "n_generated": made,
        "grid": "grid.png",
    }
    report.write_json(out / "results.json", results)
    print(f"pipeline: {folder}   tokens: {', '.join(names) or '(none)'}")
    print(report.table_text([{"prompt": t, "seeds": ",".join(map(str, args.seeds))} for t in texts]))
    print(f"\n{len(jobs)} images ({made} generated, {len(jobs) - made} reused) in {img_dir}")
    print(f"wrote {out / 'grid.png'}, {out / 'results.json'}")
    return 0
