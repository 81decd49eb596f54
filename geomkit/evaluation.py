"""The DTI paper's evaluation protocol (Sec. 4.1, App. D.1) as small functions: prompt sets,
reference images, and scoring with models loaded from local folders.

- Subject fidelity ("image"): cosine between DINOv2 features (the CLS token of the last hidden
  state) of each generated image and each reference image, averaged over all pairs.
- Text alignment ("text"): SigLIP's own image-text match probability for each image and ITS
  prompt, sigmoid(exp(t) * cos(img, txt) + b) with the checkpoint's learned temperature t and
  bias b, averaged over images. This is what the authors' released evaluation computes
  (`SigLIPScore`: sigmoid of `logits_per_image`, diagonal of the paired batch, texts padded to
  64 tokens) and why their Table 2 numbers lie in 0.29..0.76 while raw SigLIP cosines are ~0.1.
  The scored text is the prompt with the subject's class word in place of the token
  ("a dog in the jungle."), as in the authors' code. The raw cosine is reported beside it.
- CLIP fallback (no SigLIP folder): the cosine of CLIP's projected image and text embeddings.

Model-facing functions take already-loaded models; the arithmetic (`cosine_matrix`,
`siglip_probability`) is pure and tested against the models' own forward.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from geomkit.errors import GeomkitError

EVAL_PROMPTS = "eval_prompts.txt"
PROMPT_SETS = ("auto", "object", "live", "all")
LIVE_CLASSES = {"dog", "cat", "puppy", "kitten"}  # DreamBooth's live subjects are its cats and dogs
SECTIONS_FOR = {"object": {"both", "object", "complex"}, "live": {"both", "live", "complex"}}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ---- prompts ---------------------------------------------------------------------------------
def packaged_prompts() -> Path:
    from importlib import resources

    return Path(str(resources.files("geomkit") / "data" / EVAL_PROMPTS))


def read_prompt_sections(path=None) -> list[tuple[Optional[str], str]]:
    """(section, prompt) for every prompt line; `#@ NAME` lines open a section, other `#` lines
    and blank lines are skipped. Every prompt must hold a `{}` placeholder for the subject."""
    from geomkit.probes.prompts import read_prompt_lines

    p, lines = read_prompt_lines(path, EVAL_PROMPTS)
    out, section = [], None
    for n, raw in enumerate(lines, start=1):
        line = raw.strip()
        if line.startswith("#@"):
            section = line[2:].strip().lower() or None
            continue
        if not line or line.startswith("#"):
            continue
        if "{}" not in line:
            raise GeomkitError(f"prompt file {p}, line {n}: {line!r} has no '{{}}' placeholder for the subject")
        out.append((section, line))
    if not out:
        raise GeomkitError(f"prompt file {p}: no prompts (one per line, each with a '{{}}' placeholder)")
    return out


def is_live(class_word: Optional[str]) -> bool:
    return bool(class_word) and class_word.strip().lower() in LIVE_CLASSES


def select_prompts(prompt_set: str = "auto", class_word: Optional[str] = None, path=None) -> tuple[str, list[str]]:
    """(resolved set name, prompts). `auto` picks `live` for DreamBooth live classes (dog, cat),
    else `object`. A file without `#@` sections is used whole whatever the set (name "file")."""
    if prompt_set not in PROMPT_SETS:
        raise GeomkitError(f"--prompt-set {prompt_set}: choose one of {', '.join(PROMPT_SETS)}")
    items = read_prompt_sections(path)
    if prompt_set == "auto":
        prompt_set = "live" if is_live(class_word) else "object"
    if all(s is None for s, _ in items):
        return "file", [t for _, t in items]  # no '#@' sections: the whole file
    if prompt_set == "all":
        return prompt_set, [t for _, t in items]
    keep = SECTIONS_FOR[prompt_set]
    chosen = [t for s, t in items if s in keep]
    if not chosen:
        raise GeomkitError(f"prompt file {path}: no prompts in the sections of --prompt-set {prompt_set} ({', '.join(sorted(keep))})")
    return prompt_set, chosen


def fill(template: str, subject: str) -> str:
    return template.replace("{}", subject)


def scoring_text(template: str, class_word: str) -> str:
    """The text scored against an image: the prompt with the class word for the subject, ending
    in a full stop (the authors' evaluation turns "a_dog_in_the_jungle.png" into "a dog in the jungle.")."""
    text = fill(template, class_word).strip()
    return text if text.endswith((".", "!", "?")) else text + "."


# ---- images ----------------------------------------------------------------------------------
def image_files(folder) -> list[Path]:
    p = Path(folder).expanduser()
    if not p.is_dir():
        what = "is a file, not a folder" if p.exists() else "folder not found"
        raise GeomkitError(f"--reference {folder}: {what}; give the folder of images")
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GeomkitError(f"--reference {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return files


def load_images(paths) -> list:
    from PIL import Image

    out = []
    for f in paths:
        try:
            with Image.open(f) as im:
                out.append(im.convert("RGB"))
        except Exception as exc:  # PIL raises several unrelated types for bad files
            raise GeomkitError(f"{f}: not a readable image ({exc})") from None
    return out


# ---- scoring models --------------------------------------------------------------------------
KINDS = {"dinov2": ("dinov2",), "siglip": ("siglip", "siglip2"), "clip": ("clip",)}


@dataclass
class Scorer:
    kind: str  # "dinov2" | "siglip" | "clip"
    model_type: str
    model: object
    processor: object
    tokenizer: object
    source: str
    device: str = "cpu"


def scorer_model_type(folder, kind: str, flag: str) -> str:
    """Check a scoring-model folder before loading anything: it exists and is the right kind."""
    p = Path(folder).expanduser()
    cfg = p / "config.json"
    if not cfg.is_file():
        raise GeomkitError(f"{flag} {folder}: not a transformers model folder (no config.json)")
    try:
        model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type", "")
    except (OSError, ValueError, AttributeError) as exc:
        raise GeomkitError(f"{flag} {folder}: unreadable config.json ({exc})") from None
    if model_type not in KINDS[kind]:
        raise GeomkitError(f"{flag} {folder}: is a {model_type or 'unknown'} model; expected {' or '.join(KINDS[kind])}")
    if not (p / "preprocessor_config.json").is_file():
        raise GeomkitError(f"{flag} {folder}: no preprocessor_config.json (the model's image processor)")
    if not any(p.glob("*.safetensors")) and not any(p.glob("pytorch_model*.bin")):
        raise GeomkitError(f"{flag} {folder}: no weights (model.safetensors) in it; copy the whole model folder")
    return model_type


SCORER_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model", "tokenizer.model")


def _weights_problem(f: Path) -> Optional[str]:
    """Why a weights file cannot be read, from its header (safetensors) or the restricted
    unpickler (a .bin), without building the model; None when it reads."""
    if f.suffix == ".safetensors":
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as fh:
                if not list(fh.keys()):
                    return f"{f.name} holds no tensors"
        except Exception as exc:  # safetensors' own error types for a damaged header
            return f"{f.name} is not a readable safetensors file ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})"
        return None
    import pickle
    import warnings

    import torch

    def load(mmap: bool):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(f, "rb") as fh:  # a file object: torch never guesses the format from the name
                return torch.load(fh if not mmap else str(f), weights_only=True, map_location="cpu", mmap=mmap)

    try:
        try:
            load(True)  # a zip archive: the tensors stay on disk
        except (RuntimeError, ValueError) as exc:
            if "mmap" not in str(exc):
                raise
            load(False)  # a legacy pickle cannot be mapped: read it (still through the restricted unpickler)
    except pickle.UnpicklingError:
        return (f"{f.name} is a pickle that holds Python objects besides tensors, which the safe loader refuses (nothing in it "
                "was run); use the model's model.safetensors instead")
    except Exception as exc:  # a truncated or damaged archive
        return f"{f.name} is not a readable PyTorch file ({(str(exc).splitlines() or [type(exc).__name__])[0][:120]})"
    return None


def check_scorer(folder, kind: str, flag: str) -> str:
    """Everything about a scoring-model folder that can be checked without building the model, so
    that `evaluate` refuses a damaged one BEFORE it generates any image: the config's model type,
    the image processor, every weights file (header / restricted unpickler), and for the text
    scorers the tokenizer (loaded: it is small)."""
    model_type = scorer_model_type(folder, kind, flag)
    p = Path(folder).expanduser()
    weights = sorted(p.glob("*.safetensors")) or sorted(p.glob("pytorch_model*.bin"))
    for f in weights:
        why = _weights_problem(f)
        if why:
            raise GeomkitError(f"{flag} {folder}: {why}; copy the model folder again")
    from geomkit.generation import quiet_loading

    quiet_loading()
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    for what, load in (("config.json", AutoConfig.from_pretrained), ("image processor", AutoImageProcessor.from_pretrained)):
        try:
            load(str(p), local_files_only=True)
        except Exception as exc:  # transformers raises many types for a damaged folder
            raise GeomkitError(f"{flag} {folder}: its {what} does not load ({(str(exc).splitlines() or [type(exc).__name__])[0][:160]})") from None
    if kind != "dinov2":
        if not any((p / f).is_file() for f in SCORER_TOKENIZER_FILES):
            raise GeomkitError(f"{flag} {folder}: no tokenizer files ({', '.join(SCORER_TOKENIZER_FILES[:3])}, ...): the text "
                               "scorer needs its tokenizer; copy the whole model folder")
        try:
            AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as exc:
            raise GeomkitError(f"{flag} {folder}: its tokenizer does not load ({(str(exc).splitlines() or [type(exc).__name__])[0][:160]})") from None
    return model_type


def load_scorer(folder, kind: str, device: str = "cpu", flag: str = "") -> Scorer:
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from geomkit.generation import quiet_loading

    quiet_loading()
    model_type = scorer_model_type(folder, kind, flag or f"--{kind}")
    p = str(Path(folder).expanduser())
    try:
        model = AutoModel.from_pretrained(p, local_files_only=True, torch_dtype=torch.float32).to(device).eval()
        processor = AutoImageProcessor.from_pretrained(p, local_files_only=True)
        tokenizer = None if kind == "dinov2" else AutoTokenizer.from_pretrained(p, local_files_only=True)
    except Exception as exc:  # what check_scorer could not see without building the model (weights that do not fit it)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise GeomkitError(f"{flag or '--' + kind} {folder}: the model does not load ({first}); the generated images are kept "
                           "in --out and reused when you run evaluate again") from None
    return Scorer(kind, model_type, model, processor, tokenizer, p, device)


def _pooled(out):
    """get_*_features returns a tensor (transformers 4) or an output with the projected
    `pooler_output` (transformers 5)."""
    import torch

    return out if torch.is_tensor(out) else out.pooler_output


def _pixels(scorer: Scorer, images) -> dict:
    batch = scorer.processor(images=list(images), return_tensors="pt")
    return {k: v.to(scorer.device) for k, v in batch.items()}


def dino_features(scorer: Scorer, images, batch_size: int = 16):
    """(N, D) DINOv2 features: the CLS token of the last hidden state (float32, CPU)."""
    import torch

    feats = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            out = scorer.model(**_pixels(scorer, images[s : s + batch_size]))
            feats.append(out.last_hidden_state[:, 0].float().cpu())
    return torch.cat(feats)


def cosine_matrix(a, b):
    """(N, M) cosine similarity of every row of `a` with every row of `b`, in float64."""
    a = a.double()
    b = b.double()
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def siglip_probability(cos, logit_scale, logit_bias):
    """SigLIP's match probability for a cosine: sigmoid(exp(logit_scale) * cos + logit_bias)."""
    import torch

    return torch.sigmoid(cos.double() * torch.as_tensor(logit_scale).double().exp() + torch.as_tensor(logit_bias).double())


def _text_inputs(scorer: Scorer, texts) -> dict:
    tok = scorer.tokenizer
    if scorer.kind == "siglip":
        # SigLIP checkpoints were trained on texts padded to the full 64 positions and pool the
        # last one; the original SigLIP tokenizer gives no attention mask (SiglipProcessor's output).
        length = int(getattr(scorer.model.config.text_config, "max_position_embeddings", 64))
        batch = tok(list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        keys = ("input_ids",) if scorer.model_type == "siglip" else ("input_ids", "attention_mask")
    else:
        length = int(getattr(scorer.model.config.text_config, "max_position_embeddings", 77))
        batch = tok(list(texts), padding=True, max_length=length, truncation=True, return_tensors="pt")
        keys = ("input_ids", "attention_mask")
    return {k: batch[k].to(scorer.device) for k in keys if k in batch}


def image_text_embeddings(scorer: Scorer, images, texts, batch_size: int = 16):
    """(image embeddings, text embeddings), both (N, D) and L2-normalised, paired by index."""
    import torch

    if len(images) != len(texts):
        raise ValueError("images and texts must pair up")
    imgs, txts = [], []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            i = _pooled(scorer.model.get_image_features(**_pixels(scorer, images[s : s + batch_size])))
            t = _pooled(scorer.model.get_text_features(**_text_inputs(scorer, texts[s : s + batch_size])))
            imgs.append(i.float().cpu())
            txts.append(t.float().cpu())
    img = torch.cat(imgs)
    txt = torch.cat(txts)
    return img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)


def text_alignment(scorer: Scorer, images, texts, batch_size: int = 16):
    """(score, cosine) per image with its own text: SigLIP -> match probability, CLIP -> cosine."""
    img, txt = image_text_embeddings(scorer, images, texts, batch_size)
    cos = (img.double() * txt.double()).sum(-1)
    if scorer.kind == "siglip":
        m = scorer.model
        return siglip_probability(cos, m.logit_scale.detach().cpu(), m.logit_bias.detach().cpu()), cos
    return cos.clone(), cos


def text_metric_name(scorer: Scorer) -> str:
    return "siglip-sigmoid" if scorer.kind == "siglip" else "clip-cosine"
