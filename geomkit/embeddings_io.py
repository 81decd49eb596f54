"""Learned-embedding files, in the formats the ecosystem already uses: the ONE reader of them.

Containers
- safetensors;
- PyTorch pickles (`.pt`, `.bin`, `.pth`, `.ckpt`), read ONLY with
  `torch.load(weights_only=True, map_location="cpu")`: the restricted unpickler builds tensors and
  plain containers (dict, list, str, int) and refuses every other Python object, so a file whose
  `__reduce__` would run a command is refused without running it. geomkit never plain-unpickles.

Layouts (either container)
- diffusers / `load_textual_inversion`: `{token: (d,) or (n_vectors, d)}`, one key;
- A1111 `.pt`: `{"string_to_param": {"*": (n, d)}, "string_to_token", "name", "step", ...}`
  (the token is `name`, else the file's stem);
- A1111 safetensors: `{"emb_params": (n, d)}` (the token is the file's stem);
- SDXL community files (kohya, A1111, ComfyUI): `{"clip_l": (n, 768), "clip_g": (n, 1280)}`;
- FLUX.1 files (diffusers' advanced FLUX script, kohya): `{"clip_l": (n, 768), "t5": (n, 4096)}`, or `t5` alone
  for a T5-only token; SD3.x: `{"clip_l", "clip_g", "t5"}`. Forge's `t5xxl` key is read as `t5`.

Every vector is checked: at least one vector of at least one value, finite, not all zeros
(a zero vector has no direction: cosines, norm ratios and interpolation are undefined).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from geomkit.errors import GeomkitError

SDXL_KEYS = ("clip_l", "clip_g")
T5_KEYS = ("clip_l", "clip_g", "t5")  # FLUX.1 / SD3.x files; the pipelines' encoder order
FLUX_KEYS = ("clip_l", "t5")
PICKLE_SUFFIXES = (".pt", ".bin", ".pth", ".ckpt")
LAYOUTS = ("diffusers", "a1111", "sdxl", "flux", "sd3")
EXPECTED = (
    "expected a textual-inversion embedding: diffusers {token: tensor}, A1111 string_to_param / emb_params, "
    "or an SDXL clip_l/clip_g pair"
)


@dataclass
class Learned:
    name: str  # the placeholder token, e.g. "<my-dog>"
    vectors: "object"  # torch.Tensor (n_vectors, d), float32
    path: str = ""


@dataclass
class EmbeddingFile:
    """A learned-embedding file as read: its token, one (n, d) float32 tensor per part, and which
    text encoder a part was written for when the file says so (SDXL clip_g, a `_2` file -> 2)."""

    name: str
    parts: dict  # label -> torch.Tensor (n_vectors, d) float32; label "clip_l"/"clip_g" or the file name
    hints: dict = field(default_factory=dict)  # label -> 1 | 2
    path: str = ""
    layout: str = "diffusers"  # diffusers | a1111 | sdxl (how the file was laid out)
    container: str = "safetensors"  # safetensors | pickle
    meta: dict = field(default_factory=dict)  # A1111 extras: step, sd_checkpoint_name, ...

    @property
    def is_pair(self) -> bool:
        return set(self.parts) == set(SDXL_KEYS)


# ---- containers ------------------------------------------------------------------------------
def _container(p: Path) -> str:
    """"pickle" or "safetensors", from the file's first bytes (a renamed file is still recognised);
    the suffix decides only for files too short or too damaged to tell."""
    with open(p, "rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < (1 << 30):
        return "safetensors"  # an 8-byte little-endian header length, then the JSON header
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save zip archive / legacy pickle
        return "pickle"
    return "pickle" if p.suffix.lower() in PICKLE_SUFFIXES else "safetensors"


def _refused_global(text: str) -> str:
    """What the restricted unpickler refused, in a few words (e.g. "posix.system")."""
    import re

    m = re.search(r"GLOBAL\s+([\w.]+)", text)
    if m:
        return f"it asks for {m.group(1)}"
    m = re.search(r"Unsupported operand \d+", text)
    return m.group(0).lower() if m else ""


def _first_sentence(exc) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text.split(". ")[0][:160]


def _torch_load(p: Path):
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with open(p, "rb") as fh:  # a file object: torch.load never guesses the format from the suffix
                return torch.load(fh, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        what = _refused_global(str(exc))
        if what or "Weights only load failed" in str(exc):
            raise GeomkitError(
                f"{p}: refused by the safe loader (torch.load weights_only): the pickle holds Python objects, not only "
                f"tensors ({what or 'an object the restricted unpickler does not build'}); nothing in it was run. "
                "Ask for a .safetensors version, or convert it where you trust its source"
            ) from None
        raise GeomkitError(f"{p}: not a readable PyTorch pickle ({_first_sentence(exc)}); is it truncated or corrupt? Download it again") from None
    except Exception as exc:  # zip/pickle readers raise RuntimeError, EOFError, ValueError, ... on damaged files
        raise GeomkitError(f"{p}: not a readable PyTorch pickle ({_first_sentence(exc)}); is it truncated or corrupt? Download it again") from None


def read_tensors(path) -> dict:
    """The file's top-level dictionary (safetensors: name -> tensor; a pickle: whatever dict the
    restricted unpickler built, e.g. A1111's nested one). A bare pickled tensor -> {stem: tensor}."""
    import torch

    p = Path(path).expanduser()
    if not p.exists():
        raise GeomkitError(f"embedding file {path} not found")
    if not p.is_file():
        raise GeomkitError(f"{path} is not a file")
    if p.stat().st_size == 0:
        raise GeomkitError(f"{path}: the file is empty; download it again")
    if _container(p) == "pickle":
        obj = _torch_load(p)
        if isinstance(obj, torch.Tensor):
            return {p.stem: obj}
        if not isinstance(obj, dict):
            raise GeomkitError(f"{path}: the pickle holds a {type(obj).__name__}, not a dictionary; {EXPECTED}")
        return obj
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise GeomkitError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]}); is it truncated or corrupt?") from None


# ---- layouts ---------------------------------------------------------------------------------
# A vector whose L2 norm lies outside [MIN_NORM, MAX_NORM] breaks float32 arithmetic downstream:
# squared distances and LayerNorm variances overflow to inf above it (1e30: inf distances, black
# images, NaN angles), and products of its values underflow to 0 below it (1e-45: cosines of 0).
# The same bounds as the scales m the probes accept (commands._common.MIN_SCALE / MAX_SCALE).
MIN_NORM = 1e-6
MAX_NORM = 1e6


def check_vectors(vec, path, label: str = "") -> "object":
    """(n, d) float32 from a (d,) or (n, d) tensor; a one-line error for anything that is not a
    usable embedding: not a dense real tensor (sparse, meta, complex, quantized, bool), wrong rank,
    no vectors, empty vectors, NaN/inf, all-zero vectors, or a vector whose norm lies outside the
    float32-safe range [MIN_NORM, MAX_NORM]."""
    import torch

    where = f"{path}" + (f" [{label}]" if label and label != Path(str(path)).name else "")
    if not isinstance(vec, torch.Tensor):
        raise GeomkitError(f"{where}: holds a {type(vec).__name__} where a tensor was expected; {EXPECTED}")
    if vec.layout != torch.strided:
        raise GeomkitError(f"{where}: a {str(vec.layout).replace('torch.', '')} tensor; an embedding is a dense tensor "
                           "(convert it with .to_dense() where you trust the file)")
    if vec.is_meta or vec.device.type == "meta":
        raise GeomkitError(f"{where}: a meta tensor (a shape without values); the file holds no trained values")
    if getattr(vec, "is_quantized", False):
        raise GeomkitError(f"{where}: a quantized tensor ({vec.dtype}); give the float embedding")
    if vec.is_complex():
        raise GeomkitError(f"{where}: complex values ({vec.dtype}); an embedding holds real numbers")
    if not (vec.is_floating_point() or vec.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise GeomkitError(f"{where}: tensor of type {vec.dtype}; expected floating-point vectors")
    vec = vec.detach()
    if vec.ndim == 1:
        vec = vec[None]
    if vec.ndim != 2:
        raise GeomkitError(f"{where}: tensor of shape {tuple(vec.shape)}; expected (n_vectors, d)")
    if vec.shape[0] == 0:
        raise GeomkitError(f"{where}: holds no vectors (shape {tuple(vec.shape)}); the file is not a trained embedding")
    if vec.shape[1] == 0:
        raise GeomkitError(f"{where}: its vectors are empty (shape {tuple(vec.shape)}); the file is not a trained embedding")
    wide = vec.to(torch.float64)
    if not torch.isfinite(wide).all():
        raise GeomkitError(f"{where}: contains NaN or infinite values; the training diverged or the file is damaged")
    zero = (wide == 0).all(dim=1).nonzero().flatten().tolist()
    if zero:
        which = "its only vector is" if vec.shape[0] == 1 else f"vector{'s' if len(zero) > 1 else ''} {', '.join(map(str, zero))} of {vec.shape[0]} {'are' if len(zero) > 1 else 'is'}"
        raise GeomkitError(f"{where}: {which} all zeros (no direction: cosines and norm ratios are undefined); not a trained embedding")
    norms = wide.norm(dim=1)
    bad = [(i, float(n)) for i, n in enumerate(norms.tolist()) if not MIN_NORM <= n <= MAX_NORM]
    if bad:
        i, n = bad[0]
        which = "its vector" if vec.shape[0] == 1 else f"vector {i} of {vec.shape[0]}"
        side = "overflow to inf" if n > MAX_NORM else "underflow to 0"
        raise GeomkitError(f"{where}: {which} has norm {n:.3g}, outside the float32-safe range [{MIN_NORM:g}, {MAX_NORM:g}] "
                           f"(squared distances and LayerNorm variances would {side}); not a usable embedding")
    return wide.to(torch.float32).contiguous()


# ---- geomkit's own files are not embeddings -----------------------------------------------------
CHECKPOINT_FORMAT = "geomkit-train-checkpoint"
OWN_JSON = {
    "results.json": "a run's results.json",
    "config.json": "a run's config.json",
    "generation.json": "the generation settings of an image folder",
    "step.json": "a reproduce step record",
}


def safetensors_metadata(path) -> dict:
    """The string metadata of a safetensors file's header ({} when none or unreadable)."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:  # a damaged header: read_tensors says so
        return {}


def own_file(path, obj: Optional[dict] = None, meta: Optional[dict] = None) -> Optional[str]:
    """What geomkit file `path` is, when it is one of geomkit's own files that is NOT a learned
    embedding (a training checkpoint, a saved position probe, a run's JSON or log), else None."""
    p = Path(path)
    meta = meta or {}
    fmt = str(meta.get("format", ""))
    keys = set(obj or {})
    if fmt == CHECKPOINT_FORMAT or ("param.0" in keys and all(str(k).startswith(("param.", "opt.", "optim")) for k in keys)):
        step = meta.get("step")
        return (f"a geomkit training checkpoint{f' (step {step})' if step else ''}: its param.N tensors are the run's raw "
                "parameters (for DTI the unit direction, not the token), with optimiser state; give the run's "
                f"learned_embeds.safetensors ({p.parent.parent / 'learned_embeds.safetensors'}) instead")
    if fmt.startswith("geomkit-position-probe"):
        return "a position probe saved by `geomkit probe-position` (pass its folder as --probe-dir / --load-probe), not an embedding"
    if p.suffix.lower() in (".json", ".jsonl"):
        if re.match(r"^step-\d{6,}\.json$", p.name):
            return "a geomkit training checkpoint's .json sidecar, not an embedding; give the run's learned_embeds.safetensors"
        what = OWN_JSON.get(p.name) or ("a training log" if p.name == "train_log.jsonl" else "a JSON file")
        return f"{what}, not an embedding file; give a .safetensors/.pt/.bin embedding"
    return None


def _is_text(p: Path) -> bool:
    """A JSON or text file (what a misplaced results.json or prompt file is), from its first bytes."""
    try:
        with open(p, "rb") as fh:
            head = fh.read(64).lstrip()
    except OSError:
        return False
    return head[:1] in (b"{", b"[") and p.suffix.lower() in (".json", ".jsonl")


def _is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def parse_layout(obj: dict, path, name: Optional[str] = None) -> EmbeddingFile:
    """An `EmbeddingFile` from a container's dictionary (see the module docstring for layouts)."""
    p = Path(path)
    keys = list(obj)
    shown = ", ".join(map(str, keys[:6])) + (", ..." if len(keys) > 6 else "")
    t5_keys = {"t5xxl": "t5"}
    if ("t5" in keys or "t5xxl" in keys) and set(keys) <= set(T5_KEYS) | set(t5_keys) and all(_is_tensor(v) for v in obj.values()):
        parts = {t5_keys.get(k, k): check_vectors(obj[k], p, k) for k in keys}
        parts = {k: parts[k] for k in T5_KEYS if k in parts}  # pipeline order
        counts = {int(v.shape[0]) for v in parts.values()}
        if len(counts) > 1:
            raise GeomkitError(f"{path}: its parts hold different numbers of vectors ({', '.join(f'{k}: {v.shape[0]}' for k, v in parts.items())})")
        # clip_l and clip_g name their encoders; t5 is the last one (FLUX 2, SD3 3): matched by dimension
        return EmbeddingFile(name=name or p.stem, parts=parts, hints={k: i for i, k in enumerate(SDXL_KEYS, 1) if k in parts},
                             path=str(p), layout="sd3" if "clip_g" in parts else "flux")
    if set(SDXL_KEYS) <= set(keys) and all(_is_tensor(obj[k]) for k in SDXL_KEYS):
        counts = {k: obj[k].shape[0] if obj[k].ndim == 2 else 1 for k in SDXL_KEYS}
        if counts["clip_l"] != counts["clip_g"]:
            raise GeomkitError(f"{path}: SDXL file whose clip_l holds {counts['clip_l']} vector(s) and clip_g {counts['clip_g']}: "
                               "the two parts of one token have the same count; the file is damaged")
        return EmbeddingFile(
            name=name or p.stem,
            parts={k: check_vectors(obj[k], p, k) for k in SDXL_KEYS},
            hints={"clip_l": 1, "clip_g": 2},
            path=str(p),
            layout="sdxl",
        )
    half = [k for k in SDXL_KEYS if k in keys]
    if len(half) == 1 and len(keys) == 1:
        missing = next(k for k in SDXL_KEYS if k not in half)
        raise GeomkitError(f"{path}: holds only {half[0]} of an SDXL clip_l/clip_g pair ({missing} is missing): not a "
                           f"token of its own; give the whole pair, or convert it (geomkit convert ... --to sdxl)")
    hint = {p.name: 2} if p.stem.endswith("_2") or "_2-" in p.stem else {}
    if "string_to_param" in obj:
        params = obj["string_to_param"]
        if not isinstance(params, dict) or not params:
            raise GeomkitError(f"{path}: A1111 file whose string_to_param is not a {{'*': tensor}} dictionary; {EXPECTED}")
        tensors = [v for v in params.values() if _is_tensor(v)]
        if len(params) != 1 or len(tensors) != 1:
            raise GeomkitError(f"{path}: A1111 file with {len(params)} entries in string_to_param; expected one ('*')")
        stored = obj.get("name")
        token = name or (stored.strip() if isinstance(stored, str) and stored.strip() else p.stem)
        meta = {k: obj[k] for k in ("step", "sd_checkpoint", "sd_checkpoint_name") if isinstance(obj.get(k), (str, int, float))}
        return EmbeddingFile(token, {p.name: check_vectors(tensors[0], p)}, hint, str(p), "a1111", meta=meta)
    if "emb_params" in obj:
        return EmbeddingFile(name or p.stem, {p.name: check_vectors(obj["emb_params"], p)}, hint, str(p), "a1111")
    if len(obj) == 1 and _is_tensor(next(iter(obj.values()))):
        key, vec = next(iter(obj.items()))
        return EmbeddingFile(name or str(key), {p.name: check_vectors(vec, p)}, hint, str(p), "diffusers")
    if not keys:
        raise GeomkitError(f"{path}: the file holds nothing; {EXPECTED}")
    if all(_is_tensor(v) for v in obj.values()):
        raise GeomkitError(f"{path}: holds {len(keys)} tensors ({shown}); unknown embedding layout: {EXPECTED}")
    raise GeomkitError(f"{path}: unknown embedding layout (keys: {shown}); {EXPECTED}")


def read_embedding(path, name: Optional[str] = None) -> EmbeddingFile:
    """Any supported learned-embedding file (see the module docstring), checked. The token is
    `name` when given, else what the file says (see the layouts)."""
    p = Path(path).expanduser()
    if p.is_file() and _is_text(p):
        raise GeomkitError(f"{path}: {own_file(p)}")
    obj = read_tensors(p)
    container = _container(p)
    meta = safetensors_metadata(p) if container == "safetensors" else {}
    why = own_file(p, obj, meta)
    if why:
        raise GeomkitError(f"{path}: {why}")
    token = meta.get("token") if isinstance(meta.get("token"), str) and meta.get("token").strip() else None
    ef = parse_layout(obj, p, name or (token if set(SDXL_KEYS) <= set(obj) else None))
    ef.container = container
    return ef


def part_for(ef: EmbeddingFile, d_model: Optional[int] = None, encoder: Optional[int] = None):
    """The (n, d) part of `ef` for one text encoder: by `encoder` (SDXL: 1 -> clip_l, 2 -> clip_g),
    else by dimension; checked against `d_model`."""
    path = ef.path
    if ef.is_pair:
        key = None
        if encoder in (1, 2):
            key = SDXL_KEYS[encoder - 1]
        elif d_model is not None:
            key = next((k for k in SDXL_KEYS if ef.parts[k].shape[-1] == d_model), None)
        if key is None:
            dims = ", ".join(f"{k}: {ef.parts[k].shape[-1]}" for k in SDXL_KEYS)
            raise GeomkitError(f"{path}: SDXL file ({dims}) has no part of dimension {d_model}; pick --encoder 1 or 2")
        vec = ef.parts[key]
    elif len(ef.parts) > 1 or ef.layout in ("flux", "sd3"):
        order = [k for k in (FLUX_KEYS if ef.layout == "flux" else T5_KEYS)]
        key = None
        if encoder is not None:
            key = order[encoder - 1] if 1 <= encoder <= len(order) and order[encoder - 1] in ef.parts else None
            if key is None:
                raise GeomkitError(f"{path}: {ef.layout.upper()} file ({', '.join(ef.parts)}) has no part for text encoder "
                                   f"{encoder} ({', '.join(f'{i}={k}' for i, k in enumerate(order, 1))})")
        elif d_model is not None:
            key = next((k for k, v in ef.parts.items() if v.shape[-1] == d_model), None)
        elif len(ef.parts) == 1:
            key = next(iter(ef.parts))
        if key is None:
            dims = ", ".join(f"{k}: {v.shape[-1]}" for k, v in ef.parts.items())
            raise GeomkitError(f"{path}: {ef.layout.upper()} file ({dims}) has no part of dimension {d_model}; "
                               f"pick the part with --encoder ({', '.join(f'{i}={k}' for i, k in enumerate(order, 1))})")
        vec = ef.parts[key]
    else:
        vec = next(iter(ef.parts.values()))
    if d_model is not None and vec.shape[-1] != d_model:
        raise GeomkitError(
            f"{path}: embedding dimension {vec.shape[-1]} does not match the model's {d_model}; "
            "the file was trained for another text encoder"
        )
    return vec


def load_learned(path, d_model: Optional[int] = None, encoder: Optional[int] = None) -> Learned:
    """One learned token from a file, checked against the target encoder's dimension.

    For an SDXL `{clip_l, clip_g}` file the part is chosen by `encoder` (1 -> clip_l, 2 -> clip_g)
    or, when not given, by which part matches `d_model`.
    """
    ef = read_embedding(path)
    return Learned(name=ef.name, vectors=part_for(ef, d_model, encoder), path=str(path))


def load_learned_set(paths, d_model: Optional[int] = None, encoder: Optional[int] = None) -> dict:
    """{name: (n_vectors, d) float32} for several files. Files sharing a token name (the TI and DTI
    runs of one placeholder) are told apart by file stem, or by run folder for `learned_embeds`."""
    items = [(Path(p), load_learned(p, d_model=d_model, encoder=encoder)) for p in paths]
    labels = distinct_names([p for p, _ in items], [item.name for _, item in items])
    return {label: item.vectors for label, (_, item) in zip(labels, items)}


def distinct_names(paths, names) -> list:
    """Token names made distinct for display: a name shared by several files gets the file's stem,
    or its run folder for `learned_embeds` files (the TI and DTI runs of one placeholder), and
    "folder, unrescaled" for the other `learned_embeds_*` files of a run (a TI-rescaled run's unrescaled token)."""
    out = []
    for p, name in zip(paths, names):
        p = Path(p)
        if list(names).count(name) > 1:
            if not p.stem.startswith("learned_embeds"):
                name = f"{name} ({p.stem})"
            elif p.stem == "learned_embeds":
                name = f"{name} ({p.resolve().parent.name})"
            else:  # learned_embeds_unrescaled beside learned_embeds: one run folder, two tokens
                name = f"{name} ({p.resolve().parent.name}, {p.stem[len('learned_embeds_'):]})"
        out.append(name)
    return out


# ---- writing ---------------------------------------------------------------------------------
def save_learned(path, token: str, vectors) -> Path:
    """diffusers format: `{token: float32 (n_vectors, d)}`."""
    from geomkit.report import save_tensors

    import torch

    return save_tensors(path, {token: vectors.detach().to(torch.float32).reshape(-1, vectors.shape[-1])})


def save_parts(path, parts: dict) -> Path:
    """A FLUX.1 (`{"clip_l", "t5"}`, or one of them) or SD3.x (`{"clip_l", "clip_g", "t5"}`) file, as
    diffusers' advanced FLUX script and kohya write them; diffusers loads it with one
    `load_textual_inversion` per text encoder."""
    import torch

    from geomkit.report import save_tensors

    bad = [k for k in parts if k not in T5_KEYS]
    if bad:
        raise GeomkitError(f"{path}: unknown part {bad[0]!r}; parts are {', '.join(T5_KEYS)}")
    return save_tensors(path, {k: v.detach().to(torch.float32).reshape(-1, v.shape[-1]) for k, v in parts.items()})


def save_sdxl_pair(path, clip_l, clip_g, token: Optional[str] = None) -> Path:
    """The kohya/A1111/ComfyUI SDXL file: `{"clip_l": (n, 768), "clip_g": (n, 1280)}`. The token's
    name goes into the header's metadata ("token"), which `read_embedding` reads back; A1111 and
    ComfyUI take the trigger word from the file name (see `token_file_name`)."""
    import torch

    from geomkit.report import save_tensors

    meta = {"token": token} if token else None
    return save_tensors(path, {"clip_l": clip_l.detach().to(torch.float32), "clip_g": clip_g.detach().to(torch.float32)}, metadata=meta)


def token_file_name(token: str, suffix: str = ".safetensors", fallback: str = "learned_embeds_sdxl") -> str:
    """The file name A1111 and ComfyUI expect for a token: the token itself is the trigger word, so
    the file is named after it, with characters file systems refuse (/ \\ : * ? " < > |, controls)
    left out: '<my-dog>' -> 'my-dog.safetensors'. `fallback` when nothing is left."""
    stem = "".join(ch for ch in str(token) if ch.isprintable() and ch not in '/\\:*?"<>|').strip().strip(".")
    stem = stem.encode("utf-8")[:200].decode("utf-8", "ignore") or fallback
    return stem + suffix


# ---- conversion ------------------------------------------------------------------------------
def pair_parts(files: Sequence[EmbeddingFile]) -> tuple:
    """(clip_l, clip_g) from one SDXL file or two one-part files (the smaller dimension is CLIP-L's)."""
    if len(files) == 1 and files[0].is_pair:
        return files[0].parts["clip_l"], files[0].parts["clip_g"]
    parts = []
    for ef in files:
        if ef.is_pair:
            raise GeomkitError(f"{ef.path}: already an SDXL pair; give it alone")
        vec = next(iter(ef.parts.values()))
        parts.append((vec, ef.path))
    if len(parts) != 2:
        raise GeomkitError(
            f"--to sdxl needs the token for both SDXL text encoders: one clip_l/clip_g file, or two files "
            f"(CLIP-L 768-d and OpenCLIP bigG 1280-d, e.g. learned_embeds.safetensors and learned_embeds_2.safetensors); got {len(parts)}"
        )
    (v1, f1), (v2, f2) = parts
    if v1.shape[-1] == v2.shape[-1]:
        raise GeomkitError(f"{f1} and {f2} have the same dimension {v1.shape[-1]}: not the two parts of an SDXL token")
    # the dimensions decide (CLIP-L's is the smaller); a file name such as *_2 is only a hint and
    # must not put a part on the wrong encoder
    if v1.shape[-1] > v2.shape[-1]:
        (v1, f1), (v2, f2) = (v2, f2), (v1, f1)
    if v1.shape[0] != v2.shape[0]:
        raise GeomkitError(f"{f1} has {v1.shape[0]} vectors but {f2} has {v2.shape[0]}: the two parts of an SDXL token have the same count")
    return v1, v2


def t5_parts(files: Sequence[EmbeddingFile], to: str) -> dict:
    """The FLUX (`clip_l`, `t5`) or SD3 (`clip_l`, `clip_g`, `t5`) parts from one such file or from
    one single-part file per encoder: ordered by dimension (CLIP-L < CLIP-G < T5, as in the released models)."""
    keys = FLUX_KEYS if to == "flux" else T5_KEYS
    if len(files) == 1 and files[0].layout in ("flux", "sd3"):
        parts = files[0].parts
    else:
        vecs = []
        for ef in files:
            if len(ef.parts) != 1:
                raise GeomkitError(f"{ef.path}: already holds several parts ({', '.join(ef.parts)}); give it alone")
            vecs.append((next(iter(ef.parts.values())), ef.path))
        if len(vecs) != len(keys):
            raise GeomkitError(f"--to {to} needs one file per text encoder ({', '.join(keys)}), or one {to.upper()} file; got {len(vecs)}")
        vecs.sort(key=lambda x: x[0].shape[-1])
        if len({int(v.shape[-1]) for v, _ in vecs}) != len(vecs):
            raise GeomkitError(f"--to {to}: two files have the same dimension; they are not the parts of one {to.upper()} token")
        parts = {k: v for k, (v, _) in zip(keys, vecs)}
    missing = [k for k in keys if k not in parts]
    extra = [k for k in parts if k not in keys]
    if extra or (missing and to == "sd3"):
        raise GeomkitError(f"--to {to}: the input's parts ({', '.join(parts)}) are not a {to.upper()} token's ({', '.join(keys)})")
    if len({int(v.shape[0]) for v in parts.values()}) > 1:
        raise GeomkitError(f"--to {to}: the parts hold different numbers of vectors")
    return {k: parts[k] for k in keys if k in parts}


def convert_tensors(files: Sequence[EmbeddingFile], to: str, token: Optional[str] = None, encoder: Optional[int] = None) -> dict:
    """The tensors of the `to` layout ("diffusers" | "a1111" | "sdxl") for the token in `files`."""
    if to not in LAYOUTS:
        raise GeomkitError(f"--to {to!r}: choose {', '.join(LAYOUTS)}")
    if not files:
        raise GeomkitError("no input file")
    if to in ("flux", "sd3"):
        return t5_parts(files, to)
    if to == "sdxl":
        clip_l, clip_g = pair_parts(files)
        return {"clip_l": clip_l, "clip_g": clip_g}
    if len(files) != 1:
        raise GeomkitError(f"--to {to} writes one token for one text encoder: give one input file (got {len(files)})")
    ef = files[0]
    if ef.layout in ("flux", "sd3") and len(ef.parts) > 1 and encoder is None:
        order = FLUX_KEYS if ef.layout == "flux" else T5_KEYS
        raise GeomkitError(f"{ef.path}: a {ef.layout.upper()} file ({', '.join(ef.parts)}); pick the part with --encoder "
                           f"({', '.join(f'{i}={k}' for i, k in enumerate(order, 1))})")
    if ef.is_pair and encoder not in (1, 2):
        raise GeomkitError(f"{ef.path}: an SDXL clip_l/clip_g pair; pick the part with --encoder 1 (clip_l) or 2 (clip_g)")
    vec = part_for(ef, encoder=encoder)
    if to == "a1111":
        return {"emb_params": vec}
    return {token or ef.name: vec}


def write_converted(out, tensors: dict, token: Optional[str] = None) -> EmbeddingFile:
    """Write `tensors` as safetensors (atomically) and read the file back through `read_embedding`,
    checking every tensor came back bit-identical. Returns what was read back. `token` goes into
    the header's metadata (the SDXL pair's name)."""
    import torch

    from geomkit.report import check_out_path, save_tensors

    out = Path(out)
    if out.suffix.lower() != ".safetensors":
        raise GeomkitError(f"--out {out}: converted files are safetensors; name it *.safetensors")
    check_out_path(out, "--out", kind="file")
    try:
        save_tensors(out, {k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()},
                     metadata={"token": token} if token else None)
    except OSError as exc:
        raise GeomkitError(f"--out {out}: cannot be written ({exc.strerror or exc}); nothing was written") from None
    back = read_tensors(out)
    if set(back) != set(tensors) or not all(torch.equal(back[k], tensors[k].to(torch.float32)) for k in tensors):
        raise GeomkitError(f"{out}: the written file does not read back identical; disk full or a failing disk?")
    return read_embedding(out)
