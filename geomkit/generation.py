"""Images from a diffusers pipeline folder with learned tokens loaded: pipeline loading, token
installation (diffusers files and SDXL clip_l/clip_g files), scheduler choice, seeded batch
generation with resume, and image grids.

Everything here takes explicit arguments; the command modules (`generate`, `evaluate`,
`interpolate`) do the parsing. Learned files are read by `geomkit.embeddings_io` (safetensors, or
.pt/.bin through the restricted unpickler only) and handed to `pipe.load_textual_inversion` as
tensors, one call per text encoder.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from geomkit.errors import GeomkitError

# name -> diffusers scheduler class; "default" keeps the one saved with the pipeline
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "default": None,
}
DEFAULT_SCHEDULER = "ddim"  # the paper: DDIMScheduler, 50 steps, for SDXL (App. D.1)
DEFAULT_STEPS = 50
GUIDANCE_SD = 7.5  # diffusers' StableDiffusionPipeline default
GUIDANCE_SDXL = 5.0  # diffusers' StableDiffusionXLPipeline default (what the DTI authors' code sampled with)
GUIDANCE_FLUX = 3.5  # diffusers' FluxPipeline default (the guidance embedding's value; no CFG pass)
GUIDANCE_SD3 = 7.0  # diffusers' StableDiffusion3Pipeline default
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ---- learned tokens --------------------------------------------------------------------------
@dataclass
class Token:
    """One learned token: its prompt string and one (n_vectors, d) tensor per part.

    Part labels: "clip_l"/"clip_g" (SDXL pair files), otherwise the file name; `hints` maps a
    label to the encoder index it was written for when the file says so (clip_g / `_2` -> 2)."""

    name: str
    parts: dict = field(default_factory=dict)  # label -> tensor (n, d)
    hints: dict = field(default_factory=dict)  # label -> 1 | 2
    paths: list = field(default_factory=list)
    lora: Optional[Path] = None  # the LoRA trained with it (a run folder's pytorch_lora_weights.safetensors)
    layout: str = ""  # the file's layout (embeddings_io): "flux"/"sd3" files may cover some encoders only


def read_token_file(path, name: Optional[str] = None) -> Token:
    """A learned-embedding file as a `Token`, read by `geomkit.embeddings_io.read_embedding` (the one
    reader: safetensors or safely-loaded .pt/.bin; diffusers, A1111 or SDXL clip_l/clip_g layouts;
    vectors checked). The token string is `name`, else what the file says, else its stem."""
    from geomkit.embeddings_io import read_embedding

    ef = read_embedding(path, name=name)
    return Token(name=ef.name, parts=dict(ef.parts), hints=dict(ef.hints), paths=[str(path)], layout=ef.layout)


def read_tokens(paths: Sequence, names: Optional[Sequence[str]] = None) -> list[Token]:
    """Tokens from files; files naming the same token (learned_embeds + learned_embeds_2 of an
    SDXL run) merge into one token with two parts. `names` renames tokens in order."""
    tokens: list[Token] = []
    for path in paths:
        tok = read_token_file(path)
        same = next((t for t in tokens if t.name == tok.name), None)
        if same is None:
            tokens.append(tok)
        else:
            clash = set(same.parts) & set(tok.parts)
            if clash:
                raise GeomkitError(f"{path}: the token {tok.name!r} is given twice ({', '.join(sorted(clash))})")
            same.parts.update(tok.parts)
            same.hints.update(tok.hints)
            same.paths += tok.paths
    if names:
        if len(names) != len(tokens):
            raise GeomkitError(f"--token gives {len(names)} name(s) for {len(tokens)} learned token(s)")
        for tok, name in zip(tokens, names):
            tok.name = name
    return tokens


RUN_FILES_SDXL = "learned_embeds_sdxl.safetensors"
RUN_FILES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")
RUN_FILES_FLOW = ("learned_embeds_flux.safetensors", "learned_embeds_sd3.safetensors")


def read_run_results(run_dir) -> dict:
    """A training run folder's results.json (the trainer's format), or a one-line error."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise GeomkitError(f"run folder {run_dir} not found")
    f = run / "results.json"
    if not f.is_file():
        raise GeomkitError(f"run folder {run_dir} has no results.json (not a finished `geomkit train` run)")
    try:
        results = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise GeomkitError(f"{f}: not readable JSON ({exc})") from None
    if not isinstance(results, dict) or not {"method", "model", "placeholder"} <= set(results):
        raise GeomkitError(f"{f}: not the results of a `geomkit train` run (no method/model/placeholder)")
    from geomkit.runfiles import TRAIN_RESULTS, check_fields

    return check_fields(results, TRAIN_RESULTS, f)  # a field of the wrong type: one line naming it


def run_token(run_dir) -> Token:
    """The learned token of a training run folder, named by its results.json placeholder."""
    run = Path(run_dir).expanduser()
    results = read_run_results(run)
    name = results.get("placeholder")
    from geomkit.train.exports import sdxl_file

    pair = sdxl_file(run, name)  # named after the token, or the old learned_embeds_sdxl.safetensors
    if pair is not None:
        return with_run_lora(read_token_file(pair, name=name), run)
    for flow in RUN_FILES_FLOW:  # FLUX.1 / SD3.x runs: one file, a part per trained encoder
        if (run / flow).is_file():
            return with_run_lora(read_token_file(run / flow, name=name), run)
    files = [run / f for f in RUN_FILES if (run / f).is_file()]
    if not files:
        raise GeomkitError(f"run folder {run_dir} has no learned_embeds*.safetensors")
    tokens = read_tokens(files)
    if len(tokens) != 1:
        raise GeomkitError(f"run folder {run_dir}: its embedding files name different tokens")
    if name:
        tokens[0].name = name
    return with_run_lora(tokens[0], run)


def with_run_lora(token: Token, run_dir) -> Token:
    """The token of a run trained with --lora-rank carries that run's LoRA (loaded with it). Only a
    run whose results.json records a LoRA: a file left in the folder by an earlier run is not its."""
    results = read_run_results(run_dir)
    f = Path(run_dir).expanduser() / RUN_LORA
    has = isinstance(results.get("lora"), dict) and results["lora"].get("rank")
    if has and not f.is_file():
        raise GeomkitError(f"run folder {run_dir}: results.json records a LoRA but {RUN_LORA} is missing")
    token.lora = f if has else None
    return token


RUN_LORA = "pytorch_lora_weights.safetensors"


def _header_shapes(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def check_lora_fits(folder, path) -> None:
    """One line before any loading when a LoRA file was made for another model: every adapted
    module must exist in this pipeline's denoiser with the LoRA's input/output sizes. Reads
    safetensors headers only (diffusers/peft keys `unet.X.lora.down.weight`, `...lora_A.weight`;
    kohya keys `lora_unet_X.lora_down.weight`)."""
    path = Path(path)
    try:
        lora = _header_shapes(path)
    except Exception as exc:  # noqa: BLE001 - safetensors raises several kinds for a damaged header
        raise GeomkitError(f"--lora {path}: not a readable safetensors LoRA file ({str(exc).splitlines()[0]})") from None
    folder = Path(folder)
    component = "unet" if (folder / "unet").is_dir() else "transformer"
    weights = sorted((folder / component).glob("*.safetensors"))
    if not weights:
        return  # a .bin denoiser: diffusers' own loader checks
    base = {}
    for w in weights:
        base.update(_header_shapes(w))
    by_kohya = {k[: -len(".weight")].replace(".", "_"): v for k, v in base.items() if k.endswith(".weight")}
    pairs = 0
    for key, shape in lora.items():
        down = key.endswith((".lora.down.weight", ".lora_A.weight", ".lora_down.weight"))
        up = key.endswith((".lora.up.weight", ".lora_B.weight", ".lora_up.weight"))
        if not (down or up):
            continue
        pairs += 1
        module = key.rsplit(".", 3 if ".lora." in key else 2)[0]
        if module.startswith("lora_unet_"):
            target = by_kohya.get(module[len("lora_unet_"):])
        elif module.startswith(("unet.", "transformer.")):
            target = base.get(module.split(".", 1)[1] + ".weight")
        else:
            continue  # text-encoder parts: diffusers' loader handles them
        if target is None:
            if module.startswith("lora_unet_"):
                continue  # kohya names of another naming scheme (SGM's input_blocks_...): diffusers converts them
            raise GeomkitError(f"--lora {path}: made for another model: it adapts {module}, which this pipeline's "
                               f"{component} does not have; give a LoRA trained for this pipeline")
        # linear (out, in) or 1x1 convolution (out, in, 1, 1) weights: compare the channels only
        if len(target) < 2 or len(shape) < 2 or (shape[1] != target[1] if down else shape[0] != target[0]):
            raise GeomkitError(f"--lora {path}: made for another model: its {module} has other sizes than this "
                               f"pipeline's {component}; give a LoRA trained for this pipeline")
    if not pairs:
        raise GeomkitError(f"--lora {path}: no LoRA weights in it (no lora_A/lora_B, lora.down/lora.up or lora_down/lora_up keys)")


def install_loras(pipe, paths: Sequence) -> None:
    """`load_lora_weights` for each LoRA file (an adapter each; all active)."""
    paths = [Path(p) for p in paths if p]
    if not paths:
        return
    names = []
    for i, path in enumerate(paths):
        name = f"geomkit_{i}"
        try:
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise GeomkitError(f"--lora {path}: diffusers could not load it ({str(exc).splitlines()[0]})") from None
        names.append(name)
    pipe.set_adapters(names)  # loading one makes it the only active one: activate them all, once


# ---- pipelines -------------------------------------------------------------------------------
def pipeline_dir(spec) -> Path:
    """The local diffusers pipeline folder a --model spec names (never downloads)."""
    from geomkit.models import ALIASES, resolve_spec

    if spec in ALIASES:
        raise GeomkitError(f"--model {spec} is a text model, not a diffusion pipeline; give a diffusers pipeline folder")
    folder = resolve_spec(str(spec), progress=False)
    if not (folder / "model_index.json").is_file():
        raise GeomkitError(f"--model {spec}: not a diffusers pipeline folder (no model_index.json)")
    from geomkit.models import check_pipeline_folder

    check_pipeline_folder(folder, spec)  # the one check, shared with train
    return folder


def check_token_names(folder, tokens, option: str = "--token") -> None:
    """Every learned token's name is new to the pipeline's tokenizers (load_textual_inversion
    would refuse it only after the pipeline loaded and files were written)."""
    from geomkit.models import check_new_token, load_tokenizers

    if not tokens:
        return
    tokenizers = load_tokenizers(str(folder))
    for tok in tokens:
        check_new_token(tok.name, tokenizers, option)


def quiet_loading() -> None:
    """No per-component / per-weight loading bars from diffusers and transformers (geomkit shows its own)."""
    try:
        import diffusers.utils.logging as dlog

        dlog.disable_progress_bar()
    except Exception:  # pragma: no cover - older diffusers
        pass
    try:
        import transformers.utils.logging as tlog

        tlog.disable_progress_bar()
    except Exception:  # pragma: no cover
        pass


def pick_device(device: str = "auto") -> str:
    """The device to run on: "auto" picks CUDA when present; a named one must exist on this machine
    (checked here, so a missing GPU is one line before anything loads). The trainer checks its
    --device with this too."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError):
        raise GeomkitError(f"--device {device}: not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GeomkitError(f"--device {device}: CUDA is not available on this machine; use --device cpu or leave --device out")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GeomkitError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise GeomkitError(f"--device {device}: Apple's MPS is not available on this machine; use --device cpu")
    return device


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32  # the authors sampled in bf16
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise GeomkitError(f"--dtype {dtype}: use auto, float32, float16 or bfloat16")
    return table[dtype]


def load_pipeline(spec, *, device: str = "auto", dtype: str = "auto", scheduler: str = DEFAULT_SCHEDULER):
    """A text-to-image pipeline from a local folder, on `device`, with the chosen scheduler and
    diffusers' per-step progress bar off (callers show their own)."""
    import diffusers

    folder = pipeline_dir(spec)
    quiet_loading()
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev)
    index = json.loads((folder / "model_index.json").read_text())
    kwargs = {"local_files_only": True, "torch_dtype": dt}
    if "safety_checker" in index:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = diffusers.DiffusionPipeline.from_pretrained(str(folder), **kwargs)
    except Exception as exc:  # damaged weights or configs surface as many exception types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GeomkitError(f"--model {spec}: cannot load the pipeline ({first})") from None
    if scheduler not in SCHEDULERS:
        raise GeomkitError(f"--scheduler {scheduler}: choose one of {', '.join(SCHEDULERS)}")
    # FLUX.1 and SD3.x sample with their own flow-matching scheduler only (they pass it sigmas)
    flow = type(pipe).__name__.startswith(("Flux", "StableDiffusion3"))
    if SCHEDULERS[scheduler] and not flow:
        pipe.scheduler = getattr(diffusers, SCHEDULERS[scheduler]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dev)
    return pipe


def is_sdxl(pipe) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None and getattr(pipe, "tokenizer_2", None) is not None


def default_guidance(pipe) -> float:
    name = type(pipe).__name__
    if name.startswith("Flux"):
        return GUIDANCE_FLUX
    if name.startswith("StableDiffusion3"):
        return GUIDANCE_SD3
    return GUIDANCE_SDXL if is_sdxl(pipe) else GUIDANCE_SD


def default_size(pipe) -> int:
    size = getattr(pipe, "default_sample_size", None)
    if size is None:
        unet = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        size = getattr(getattr(unet, "config", None), "sample_size", 64)
    scale = getattr(pipe, "vae_scale_factor", 8)
    return int(size) * int(scale)


# every text encoder a pipeline may have, in the `--encoder N` numbering (SD3's T5 is the third)
ENCODER_ATTRS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"), ("text_encoder_3", "tokenizer_3"))


def pipeline_encoders(pipe) -> list[tuple[int, object, object, int]]:
    """(index, text_encoder, tokenizer, embedding dimension) for each text encoder of the pipeline."""
    out = []
    for i, (te, tk) in enumerate(ENCODER_ATTRS, start=1):
        enc, tok = getattr(pipe, te, None), getattr(pipe, tk, None)
        if enc is not None and tok is not None:
            out.append((i, enc, tok, int(enc.get_input_embeddings().weight.shape[1])))
    return out


def pipeline_dims(folder) -> list[tuple[int, None, None, int]]:
    """The text encoders' embedding dimensions read from the folder's configs (nothing loaded), in
    the shape `assign_parts` takes: checks a token against a pipeline before any model loads."""
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    out = []
    for i, (te, tk) in enumerate(ENCODER_ATTRS, start=1):
        entry = index.get(te)
        if not entry or entry in ([None, None], (None, None)) or index.get(tk) in (None, [None, None]):
            continue
        try:
            cfg = json.loads((folder / te / "config.json").read_text())
        except (OSError, ValueError):
            return []  # unusual layout: leave the check to install_tokens
        cfg = cfg.get("text_config", cfg)
        d = cfg.get("hidden_size") or cfg.get("d_model")
        if not d:
            return []
        out.append((i, None, None, int(d)))
    return out


def check_tokens_fit(folder, tokens) -> None:
    """One-line error when a token does not fit the pipeline's text encoders (before loading it)."""
    dims = pipeline_dims(folder)
    if dims:
        for tok in tokens:
            assign_parts(tok, dims)
    for tok in tokens:
        if tok.lora is not None:
            check_lora_fits(folder, tok.lora)


def assign_parts(token: Token, encoders) -> list[tuple[int, object]]:
    """Which part of `token` each text encoder receives, matched by dimension (file hints break
    ties). Every encoder of the pipeline needs one: a token known to one encoder only would be
    split into sub-word pieces by the other."""
    free = dict(token.parts)
    chosen = []
    # a FLUX/SD3 file may hold the token for some encoders only (a T5-only FLUX token): the others
    # read the placeholder as plain text, as the ecosystem's loaders leave them
    partial = getattr(token, "layout", None) in ("flux", "sd3")
    for idx, _enc, _tok, d in encoders:
        fits = [k for k, v in free.items() if v.shape[-1] == d]
        if not fits and partial:
            continue
        if not fits and getattr(token, "layout", None) == "sdxl" and len(encoders) != 2:
            raise GeomkitError(f"token {token.name!r} is an SDXL clip_l/clip_g file; this pipeline's text encoders "
                               f"(dimension {' and '.join(str(e[3]) for e in encoders)}) are not SDXL's")
        if not fits:
            have = ", ".join(f"{k}: {v.shape[-1]}" for k, v in token.parts.items())
            want = " and ".join(str(e[3]) for e in encoders)
            what = "SDXL pipeline needs the token for both text encoders (the clip_l/clip_g file, or both learned_embeds files)" if len(encoders) > 1 else "the embedding is for another text encoder"
            raise GeomkitError(
                f"token {token.name!r} ({have}) does not fit this pipeline's text encoder{'s' if len(encoders) > 1 else ''} "
                f"(dimension {want}): {what}"
            )
        best = next((k for k in fits if token.hints.get(k) == idx), None)
        best = best or next((k for k in fits if k not in token.hints), fits[0])
        chosen.append((idx, free.pop(best)))
    if partial and (free or not chosen):
        have = ", ".join(f"{k}: {v.shape[-1]}" for k, v in token.parts.items())
        want = " and ".join(str(e[3]) for e in encoders)
        raise GeomkitError(f"token {token.name!r} ({have}) does not fit this pipeline's text encoders (dimension {want}): "
                           f"the {token.layout.upper()} file was trained for another model")
    return chosen


def install_tokens(pipe, tokens: Sequence[Token]) -> None:
    """`load_textual_inversion` once per text encoder and token (the two-call way for SDXL)."""
    if not tokens:
        return
    by_hand = not hasattr(pipe, "load_textual_inversion")
    if by_hand and getattr(pipe, "text_encoder_3", None) is None:
        raise GeomkitError(f"{type(pipe).__name__} does not support textual-inversion tokens")
    encoders = pipeline_encoders(pipe)
    if not encoders:
        raise GeomkitError(f"{type(pipe).__name__} has no CLIP text encoder/tokenizer to load tokens into")
    plan = [(tok, assign_parts(tok, encoders)) for tok in tokens]  # check all before changing anything
    by_idx = {e[0]: e for e in encoders}
    for tok, parts in plan:
        for idx, vec in parts:
            _, enc, tk, _ = by_idx[idx]
            if by_hand:  # SD3: diffusers' pipeline has no TextualInversionLoaderMixin
                load_rows_by_hand(vec, tok.name, enc, tk)
                # nor maybe_convert_prompt: multi-vector tokens are expanded in the prompts here
                pipe._geomkit_by_hand = {**getattr(pipe, "_geomkit_by_hand", {}), tok.name: int(vec.shape[0])}
                continue
            try:
                pipe.load_textual_inversion(
                    vec.to(dtype=enc.dtype), token=tok.name, text_encoder=enc, tokenizer=tk
                )
            except ValueError as exc:
                raise GeomkitError(f"token {tok.name!r}: {str(exc).splitlines()[0]} (choose a new name with --token)") from None


def expand_by_hand_tokens(pipe, prompt: str) -> str:
    """`tok` -> `tok tok_1 ...` for tokens loaded by hand (what maybe_convert_prompt does elsewhere)."""
    from geomkit.train.data import expand_placeholder

    for name, n in getattr(pipe, "_geomkit_by_hand", {}).items():
        prompt = expand_placeholder(prompt, name, n)
    return prompt


def load_rows_by_hand(vectors, name: str, text_encoder, tokenizer) -> list:
    """What `load_textual_inversion` does, for pipelines without it (diffusers' SD3): the token (and
    `name_1`, ... for more vectors) added to the tokenizer, the table grown, the rows written. The ids."""
    from geomkit.train.data import token_strings

    names = token_strings(name, int(vectors.shape[0]))
    vocab = tokenizer.get_vocab()
    if any(n in vocab for n in names):
        raise GeomkitError(f"token {name!r} is already in the tokenizer's vocabulary (choose a new name with --token)")
    tokenizer.add_tokens(names)
    ids = tokenizer.convert_tokens_to_ids(names)
    text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.get_input_embeddings().weight
    with __import__("torch").no_grad():
        for i, v in zip(ids, vectors):
            weight[i] = v.to(device=weight.device, dtype=weight.dtype)
    return list(ids)


# ---- generation ------------------------------------------------------------------------------
@dataclass
class Job:
    prompt: str  # the text given to the pipeline
    seed: int
    path: Path


def generate(
    pipe,
    jobs: Sequence[Job],
    *,
    steps: int = DEFAULT_STEPS,
    guidance: Optional[float] = None,
    size: Optional[int] = None,
    batch_size: int = 4,
    negative_prompt: Optional[str] = None,
    resume: bool = True,
    progress: bool = True,
    desc: str = "generating",
) -> int:
    """Render every job not already on disk (resume), `batch_size` at a time, each image seeded
    by its own CPU generator (a seed draws the same starting noise whatever the batch, its order
    and the device). Images are written atomically. Returns how many were generated."""
    import torch
    from tqdm.auto import tqdm

    todo = [j for j in jobs if not (resume and have_image(j.path))]
    if not todo:
        return 0
    guidance = default_guidance(pipe) if guidance is None else guidance
    size = size or default_size(pipe)
    bar = tqdm(total=len(todo), desc=desc, unit="img", disable=not progress)
    try:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            gens = [torch.Generator("cpu").manual_seed(int(j.seed)) for j in batch]
            kwargs = dict(
                prompt=[expand_by_hand_tokens(pipe, j.prompt) for j in batch],
                generator=gens,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=size,
                width=size,
            )
            if negative_prompt:
                kwargs["negative_prompt"] = [negative_prompt] * len(batch)
            with torch.inference_mode():
                images = pipe(**kwargs).images
            for job, img in zip(batch, images):
                save_png(job.path, img)
            bar.update(len(batch))
    finally:
        bar.close()
    return len(todo)


def have_image(path) -> bool:
    """True when `path` is an image file PIL can read (a resumable result)."""
    p = Path(path)
    if not p.is_file():
        return False
    try:
        from PIL import Image

        with Image.open(p) as im:
            im.verify()
        return True
    except Exception:
        return False


def save_png(path, image) -> Path:
    from geomkit.report import atomic_path

    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)


def settings_guard(folder: Path, settings: dict, overwrite: bool = False, record: bool = True) -> None:
    """Resume only images made with the same settings: `folder/generation.json` records them; a
    mismatch is an error (or, with `overwrite`, the old PNGs are removed). With record=False the
    check runs but nothing is written yet (call `record_settings` once the pipeline has loaded)."""
    f = folder / "generation.json"
    if f.is_file():
        try:
            old = json.loads(f.read_text())
        except (OSError, ValueError):
            old = None
        if old != json.loads(json.dumps(settings)):
            if not overwrite:
                changed = sorted(k for k in set(old or {}) | set(settings) if (old or {}).get(k) != settings.get(k))
                raise GeomkitError(
                    f"{folder} holds images made with other settings ({', '.join(changed) or 'unreadable record'}); "
                    "use another --out, or --overwrite to discard them"
                )
            for png in folder.glob("*.png"):
                png.unlink()
    if record:
        record_settings(folder, settings)


def record_settings(folder: Path, settings: dict) -> None:
    from geomkit.report import write_json

    write_json(Path(folder) / "generation.json", settings)


def file_digest(path) -> str:
    """A short content hash of a file (a LoRA changed in place is another LoRA)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def token_fingerprint(tokens: Sequence[Token]) -> dict:
    """A short content hash per token, so resumed images are known to come from the same vectors."""
    import hashlib

    out = {}
    for tok in tokens:
        h = hashlib.sha256()
        for k in sorted(tok.parts):
            h.update(tok.parts[k].detach().cpu().numpy().tobytes())
        if tok.lora is not None:  # images made with the LoRA differ from images made without it
            h.update(file_digest(tok.lora).encode())
        out[tok.name] = h.hexdigest()[:16]
    return out


# ---- grids -----------------------------------------------------------------------------------
def image_grid(images, rows: int, cols: int, *, row_labels=None, col_labels=None, cell: int = 256):
    """One PIL image of `rows` x `cols` cells (row-major `images`: PIL images or file paths, opened
    one at a time; None leaves a cell blank), each scaled to at most `cell` pixels, with optional
    text labels above columns / left of rows."""
    from PIL import Image, ImageDraw

    def _open(item):
        if item is None or hasattr(item, "size"):
            return item
        with Image.open(item) as im:
            return im.convert("RGB")

    first = next((_open(im) for im in images if im is not None), None)
    w0, h0 = first.size if first is not None else (cell, cell)
    scale = min(1.0, cell / max(w0, h0))
    cw, ch = max(1, round(w0 * scale)), max(1, round(h0 * scale))
    pad = 2
    top = 14 if col_labels else 0
    left = 0
    if row_labels:
        left = min(240, 6 * max(len(str(s)) for s in row_labels) + 8)
    grid = Image.new("RGB", (left + cols * (cw + pad) + pad, top + rows * (ch + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, item in enumerate(images):
        im = _open(item)
        if im is None:
            continue
        r, c = divmod(i, cols)
        grid.paste(im.convert("RGB").resize((cw, ch)), (left + pad + c * (cw + pad), top + pad + r * (ch + pad)))
    for c, label in enumerate(col_labels or []):
        draw.text((left + pad + c * (cw + pad) + 2, 1), str(label), fill="black")
    for r, label in enumerate(row_labels or []):
        text = str(label)
        max_chars = max(4, (left - 4) // 6)
        if len(text) > max_chars:
            text = text[: max_chars - 1] + "…"
        draw.text((2, top + pad + r * (ch + pad) + ch // 2 - 5), text, fill="black")
    return grid


def grid_shape(n: int, cols: Optional[int] = None) -> tuple[int, int]:
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    return max(1, math.ceil(n / cols)), cols


def slug(text: str, limit: int = 48) -> str:
    keep = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    while "--" in keep:
        keep = keep.replace("--", "-")
    return keep.strip("-")[:limit].strip("-") or "prompt"

