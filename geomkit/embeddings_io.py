"""Learned-embedding files, in the formats the ecosystem already uses (safetensors only).

- diffusers / `load_textual_inversion`: `{token: float32 (n_vectors, d)}`, one key;
- A1111 safetensors: `{"emb_params": (n, d)}` (the token is the file's stem);
- SDXL community files (kohya, A1111, ComfyUI): `{"clip_l": (n, 768), "clip_g": (n, 1280)}`.
Pickled files (.pt/.bin/.ckpt) are refused: geomkit never unpickles files handed to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from geomkit.errors import GeomkitError

SDXL_KEYS = ("clip_l", "clip_g")


@dataclass
class Learned:
    name: str  # the placeholder token, e.g. "<my-dog>"
    vectors: "object"  # torch.Tensor (n_vectors, d), float32
    path: str = ""


def read_tensors(path) -> dict:
    p = Path(path)
    if not p.exists():
        raise GeomkitError(f"embedding file {path} not found")
    if p.suffix.lower() in (".pt", ".bin", ".ckpt", ".pth"):
        raise GeomkitError(f"{path}: pickle files are not loaded (unsafe); convert it to .safetensors first")
    from safetensors.torch import load_file

    try:
        return load_file(str(p))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise GeomkitError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None


def single_token(tensors: dict, path) -> tuple:
    """(token name, tensor) of a one-token file: diffusers `{token: t}` or A1111 `{"emb_params": t}`."""
    if "emb_params" in tensors:
        return Path(path).stem, tensors["emb_params"]
    if len(tensors) == 1:
        return next(iter(tensors.items()))
    raise GeomkitError(
        f"{path}: holds {len(tensors)} tensors ({', '.join(list(tensors)[:5])}); expected one token "
        "(diffusers format) or an SDXL clip_l/clip_g pair"
    )


def load_learned(path, d_model: Optional[int] = None, encoder: Optional[int] = None) -> Learned:
    """One learned token from a file, checked against the target encoder's dimension.

    For an SDXL `{clip_l, clip_g}` file the part is chosen by `encoder` (1 -> clip_l, 2 -> clip_g)
    or, when not given, by which part matches `d_model`.
    """
    import torch

    tensors = read_tensors(path)
    p = Path(path)
    if set(SDXL_KEYS) <= set(tensors):
        key = None
        if encoder in (1, 2):
            key = SDXL_KEYS[encoder - 1]
        elif d_model is not None:
            key = next((k for k in SDXL_KEYS if tensors[k].shape[-1] == d_model), None)
        if key is None:
            dims = ", ".join(f"{k}: {tensors[k].shape[-1]}" for k in SDXL_KEYS)
            raise GeomkitError(f"{path}: SDXL file ({dims}) has no part of dimension {d_model}; pick --encoder 1 or 2")
        name, vec = p.stem, tensors[key]
    else:
        name, vec = single_token(tensors, p)
    vec = vec.to(torch.float32)
    if vec.ndim == 1:
        vec = vec[None]
    if vec.ndim != 2:
        raise GeomkitError(f"{path}: tensor of shape {tuple(vec.shape)}; expected (n_vectors, d)")
    if d_model is not None and vec.shape[-1] != d_model:
        raise GeomkitError(f"{path}: embedding dimension {vec.shape[-1]} does not match the model's {d_model}")
    if not torch.isfinite(vec).all():
        raise GeomkitError(f"{path}: contains NaN or infinite values")
    return Learned(name=name, vectors=vec, path=str(path))


def load_learned_set(paths, d_model: Optional[int] = None, encoder: Optional[int] = None) -> dict:
    """{name: (n_vectors, d) float32} for several files. Files sharing a token name (the TI and DTI
    runs of one placeholder) are told apart by file stem, or by run folder for `learned_embeds`."""
    items = [(Path(p), load_learned(p, d_model=d_model, encoder=encoder)) for p in paths]
    names = [item.name for _, item in items]
    out = {}
    for p, item in items:
        name = item.name
        if names.count(name) > 1:
            name = f"{name} ({p.stem if p.stem != 'learned_embeds' else p.resolve().parent.name})"
        out[name] = item.vectors
    return out


def save_learned(path, token: str, vectors) -> Path:
    """diffusers format: `{token: float32 (n_vectors, d)}`."""
    from geomkit.report import save_tensors

    import torch

    return save_tensors(path, {token: vectors.detach().to(torch.float32).reshape(-1, vectors.shape[-1])})


def save_sdxl_pair(path, clip_l, clip_g) -> Path:
    """The kohya/A1111/ComfyUI SDXL file: `{"clip_l": (n, 768), "clip_g": (n, 1280)}`."""
    import torch

    from geomkit.report import save_tensors

    return save_tensors(path, {"clip_l": clip_l.detach().to(torch.float32), "clip_g": clip_g.detach().to(torch.float32)})
