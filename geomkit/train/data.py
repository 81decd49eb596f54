"""Training data: the image folder (diffusion), prompt templates, the text corpus (lm), and the
order in which examples are drawn.

Every random choice of a step is a pure function of (seed, step, process rank): the example
order comes from a per-epoch permutation seeded by (seed, epoch), and each step's noise,
timesteps, template and flip choices from a generator seeded by (seed, step, rank). A resumed
run therefore draws exactly what the uninterrupted run drew, whatever the save interval and
however many processes run (see `step_generator`).
"""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Optional

from geomkit.errors import GeomkitError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

# The prompt templates of the diffusers textual-inversion example scripts (Apache-2.0,
# huggingface/diffusers examples/textual_inversion), themselves from the original TI code.
OBJECT_TEMPLATES = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
]

STYLE_TEMPLATES = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
]

CONCEPTS_DIR = Path(__file__).resolve().parent.parent / "data" / "concepts"


# ---- randomness ------------------------------------------------------------------------------
def mix_seed(*parts) -> int:
    """A 63-bit seed from any parts, identical in every process and Python version
    (unlike `hash`)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def step_generator(seed: int, step: int, rank: int = 0, stream: str = "step"):
    """The CPU generator that draws everything random in one step of one process."""
    import torch

    return torch.Generator().manual_seed(mix_seed(seed, stream, step, rank))


@lru_cache(maxsize=8)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple:
    import torch

    gen = torch.Generator().manual_seed(mix_seed(seed, "epoch", epoch))
    return tuple(torch.randperm(n, generator=gen).tolist())


def batch_indices(n: int, batch: int, step: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """Example indices for `step` (1-based) on process `rank` of `world`: consecutive slices of a
    fresh permutation every epoch, so each example is seen once per epoch across all processes."""
    out = []
    base = ((step - 1) * world + rank) * batch
    for j in range(batch):
        pos = base + j
        out.append(_epoch_order(n, seed, pos // n)[pos % n])
    return out


# ---- placeholders ----------------------------------------------------------------------------
def token_strings(placeholder: str, n_vectors: int) -> list[str]:
    """The tokens added to the tokenizer: `tok`, then `tok_1` ... as diffusers names them."""
    return [placeholder] + [f"{placeholder}_{i}" for i in range(1, n_vectors)]


def expand_placeholder(text: str, placeholder: str, n_vectors: int) -> str:
    """`tok` -> `tok tok_1 ... tok_{n-1}` (what diffusers' `maybe_convert_prompt` does at inference)."""
    if n_vectors == 1:
        return text
    pattern = re.compile(re.escape(placeholder) + r"(?!_\d)")
    return pattern.sub(" ".join(token_strings(placeholder, n_vectors)), text)


# ---- templates -------------------------------------------------------------------------------
def load_templates(spec: str) -> list[str]:
    if spec == "object":
        return list(OBJECT_TEMPLATES)
    if spec == "style":
        return list(STYLE_TEMPLATES)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise GeomkitError(f"--templates {spec}: use object, style or a text file with one template per line")
    lines = [ln.strip() for ln in _read_text(path, "--templates").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    bad = [ln for ln in lines if ln.count("{}") != 1]
    if not lines or bad:
        raise GeomkitError(f"--templates {spec}: every line needs exactly one {{}} where the token goes" +
                           (f" (not: {bad[0]!r})" if bad else " (the file is empty)"))
    return lines


# ---- text corpus (lm objective) -------------------------------------------------------------
def _read_text(path: Path, flag: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GeomkitError(f"{flag} {path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise GeomkitError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def resolve_text_file(spec: str, flag: str, suffix: str = "") -> Path:
    """A path, or the name of a concept shipped in geomkit/data/concepts (e.g. `glimmerfox`)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    shipped = CONCEPTS_DIR / f"{spec}{suffix}.txt"
    if "/" not in spec and shipped.is_file():
        return shipped
    if path.is_dir():
        raise GeomkitError(f"{flag} {spec}: is a folder; give a text file")
    names = sorted(p.stem for p in CONCEPTS_DIR.glob("*.txt") if not p.stem.endswith("_related"))
    raise GeomkitError(f"{flag} {spec}: file not found (shipped examples: {', '.join(names) or 'none'})")


def read_corpus(spec: str, placeholder: str) -> tuple[Path, list[str]]:
    """Lines of a text file that use the placeholder (`#` lines are comments)."""
    path = resolve_text_file(spec, "--texts")
    lines = [ln.strip() for ln in _read_text(path, "--texts").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    used = [ln for ln in lines if placeholder in ln]
    if not used:
        raise GeomkitError(
            f"--texts {path}: no line contains the placeholder {placeholder!r} ({len(lines)} lines read); "
            "every training sentence must use it"
        )
    return path, used


def read_word_list(spec: Optional[str]) -> list[str]:
    """--related: comma-separated words, or a text file (one word a line, `#` comments), or a
    shipped concept's list (`glimmerfox` -> glimmerfox_related.txt)."""
    if not spec:
        return []
    path = Path(spec).expanduser()
    shipped = CONCEPTS_DIR / f"{spec}_related.txt"
    if not path.is_file() and "/" not in spec and "," not in spec and shipped.is_file():
        path = shipped
    if path.is_file():
        words = [ln.strip() for ln in _read_text(path, "--related").splitlines()]
        return [w for w in words if w and not w.startswith("#")]
    return [w.strip() for w in spec.split(",") if w.strip()]


# ---- images (diffusion objective) ------------------------------------------------------------
def list_images(folder: str) -> list[Path]:
    path = Path(folder).expanduser()
    if not path.is_dir():
        what = "is a file, not a folder" if path.exists() else "folder not found"
        raise GeomkitError(f"--images {folder}: {what}; give the folder of images")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise GeomkitError(f"--images {folder}: no images in it (looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def check_images(files: list[Path]) -> None:
    """Open every image header now, so a broken file is named before any model loads."""
    from PIL import Image, UnidentifiedImageError

    for f in files:
        try:
            with Image.open(f) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise GeomkitError(f"--images: cannot read {f} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def load_resized(path: Path, resolution: int):
    """(pixels, (height, width)): the image as RGB with its shorter side resized to `resolution`
    (bicubic), a (3, H, W) tensor in [-1, 1], and its original size (SDXL's `original_size`)."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            scale = resolution / min(w, h)
            im = im.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise GeomkitError(f"--images: cannot read {path} ({exc})") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), (h, w)


def center_crop_box(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(top, left) of the centre crop, rounded as torchvision's CenterCrop and the diffusers SDXL
    scripts' `crops_coords_top_left`."""
    return max(0, int(round((height - resolution) / 2.0))), max(0, int(round((width - resolution) / 2.0)))


def load_image(path: Path, resolution: int):
    """The centre crop of `load_resized`, a (3, R, R) tensor in [-1, 1] (the diffusers example
    scripts' preprocessing with --center_crop)."""
    pix, _ = load_resized(path, resolution)
    top, left = center_crop_box(pix.shape[1], pix.shape[2], resolution)
    return pix[:, top: top + resolution, left: left + resolution].contiguous()
