"""Atomic checkpoints: `checkpoints/step-XXXXXX.safetensors` (learned parameters and optimiser
state tensors) plus `step-XXXXXX.json` (step, every RNG state, the run's settings, the training
log so far). The JSON sidecar is written last, so a checkpoint counts only once both exist; each
file is written to a temporary sibling and renamed (geomkit.report), so a crash never leaves a
half-written one that `--resume` could pick.
"""

from __future__ import annotations

import base64
import json
import random
import re
from pathlib import Path
from typing import Optional

from geomkit.errors import GeomkitError

NAME = re.compile(r"^step-(\d{6,})\.json$")


def _b64(t) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def rng_state() -> dict:
    """Python, NumPy and torch (CPU and every CUDA device) generator states, JSON-ready."""
    import numpy as np
    import torch

    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], base64.b64encode(np_state[1].astype("<u4").tobytes()).decode("ascii"),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.frombuffer(base64.b64decode(keys), dtype="<u4").astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(state["torch"])), dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(
            [torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8) for s in state["cuda"]]
        )


def paths(ckpt_dir, step: int) -> tuple[Path, Path]:
    base = Path(ckpt_dir) / f"step-{step:06d}"
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def save(ckpt_dir, step: int, tensors: dict, meta: dict) -> Path:
    from geomkit.report import save_tensors, write_json

    st, js = paths(ckpt_dir, step)
    save_tensors(st, tensors, metadata={"step": step, "format": "geomkit-train-checkpoint"})
    write_json(js, dict(meta, step=step, rng=rng_state(), tensors=st.name))
    return js


def complete(ckpt_dir) -> list[tuple[int, Path]]:
    """(step, json path) of every complete checkpoint, oldest first."""
    folder = Path(ckpt_dir)
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = NAME.match(p.name)
            if m and p.with_suffix(".safetensors").is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def newest(ckpt_dir) -> Optional[Path]:
    """The newest checkpoint whose two files are both readable."""
    for _step, js in reversed(complete(ckpt_dir)):
        try:
            json.loads(js.read_text())
            return js
        except (OSError, ValueError):
            continue
    return None


def find(out_dir, spec: str) -> Path:
    """--resume: "latest" -> newest in OUT/checkpoints; else a checkpoint file or folder."""
    if spec in (None, "", "latest"):
        js = newest(Path(out_dir) / "checkpoints")
        if js is None:
            raise GeomkitError(f"--resume: no complete checkpoint in {Path(out_dir) / 'checkpoints'}; run without --resume to start")
        return js
    p = Path(spec).expanduser()
    if p.is_dir():
        js = newest(p if p.name == "checkpoints" else p / "checkpoints") or newest(p)
        if js is None:
            raise GeomkitError(f"--resume {spec}: no complete checkpoint there")
        return js
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.is_file() or not p.with_suffix(".safetensors").is_file():
        raise GeomkitError(f"--resume {spec}: not a complete checkpoint (need step-N.json and step-N.safetensors)")
    return p


def load(js: Path) -> tuple[dict, dict]:
    """(meta, tensors) of a checkpoint."""
    from geomkit.embeddings_io import read_tensors

    try:
        meta = json.loads(Path(js).read_text())
    except (OSError, ValueError) as exc:
        raise GeomkitError(f"--resume: cannot read {js} ({exc})") from None
    tensors = read_tensors(Path(js).with_suffix(".safetensors"))
    return meta, tensors
