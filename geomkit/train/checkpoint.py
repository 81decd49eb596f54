"""Atomic checkpoints: `checkpoints/step-XXXXXX.safetensors` (learned parameters and optimiser
state tensors) plus `step-XXXXXX.json` (step, every RNG state, the run's settings, the training
log so far, and the size and SHA-256 of the tensors file). The JSON sidecar is written last, so a
checkpoint counts only once both exist; each file is written to a temporary sibling, flushed to
disk and renamed (geomkit.report.atomic_path), so a crash never leaves a half-written one that
`--resume` could pick. A checkpoint damaged afterwards (a truncated copy, a disk fault) fails its
integrity check (size, hash, a readable safetensors header) and `--resume` falls back to the
newest good one, naming the one it skipped. `prune` keeps the N newest once a newer one is
complete.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import sys
import time
from pathlib import Path
from typing import Callable, Optional

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


FAULT_ENV = "GEOMKIT_TEST_FAULT_DELAY"  # tests: announce each write phase on stderr and pause there


def _fault_point(name: str, step: int) -> None:
    """Fault-injection hook for the tests: with GEOMKIT_TEST_FAULT_DELAY=SECONDS set, print
    `geomkit-fault: NAME STEP` and pause, so a test can kill the process at that exact phase."""
    delay = os.environ.get(FAULT_ENV)
    if delay:
        print(f"geomkit-fault: {name} {step}", file=sys.stderr, flush=True)
        time.sleep(float(delay))


def _write_file(path: Path, data: bytes, step: int) -> None:
    """Atomically write `data` to `path`, flushed to disk before the rename."""
    from geomkit.report import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            half = len(data) // 2
            fh.write(data[:half])
            if os.environ.get(FAULT_ENV):
                fh.flush()
                _fault_point(f"{path.suffix[1:]}-half-written", step)
            fh.write(data[half:])
            fh.flush()
            os.fsync(fh.fileno())
    try:  # the rename itself
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save(ckpt_dir, step: int, tensors: dict, meta: dict) -> Path:
    """Write checkpoint `step` (tensors first, then the JSON sidecar that makes it count)."""
    from safetensors.torch import save as to_bytes

    from geomkit.report import _jsonable

    st, js = paths(ckpt_dir, step)
    st.parent.mkdir(parents=True, exist_ok=True)
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    blob = to_bytes(clean, metadata={"step": str(step), "format": "geomkit-train-checkpoint"})
    _write_file(st, blob, step)
    _fault_point("tensors-written", step)
    sidecar = dict(meta, step=step, rng=rng_state(), tensors=st.name, tensors_size=len(blob),
                   tensors_sha256=hashlib.sha256(blob).hexdigest())
    _write_file(js, (json.dumps(_jsonable(sidecar), indent=2, ensure_ascii=False) + "\n").encode(), step)
    _fault_point("checkpoint-written", step)
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


def problem(js) -> Optional[str]:
    """Why checkpoint `js` cannot be resumed from (None: it passes the integrity check)."""
    js = Path(js)
    st = js.with_suffix(".safetensors")
    try:
        meta = json.loads(js.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        return f"its .json is unreadable ({type(exc).__name__})"
    if not isinstance(meta, dict) or not {"step", "rng", "config"} <= set(meta):
        return "its .json lacks step, rng or config"
    try:
        size = st.stat().st_size
    except OSError:
        return "its .safetensors is missing"
    if "tensors_size" in meta and size != meta["tensors_size"]:
        return f"its .safetensors holds {size} bytes, the .json records {meta['tensors_size']}"
    if "tensors_sha256" in meta:
        digest = hashlib.sha256()
        try:
            with open(st, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError as exc:
            return f"its .safetensors is unreadable ({exc.strerror or exc})"
        if digest.hexdigest() != meta["tensors_sha256"]:
            return "its .safetensors does not match the SHA-256 in its .json"
    try:
        from safetensors import safe_open

        with safe_open(str(st), framework="pt") as fh:
            keys = set(fh.keys())
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        return f"its .safetensors header is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if "param.0" not in keys:
        return "its .safetensors holds no learned parameters"
    return None


def newest(ckpt_dir, warn: Optional[Callable[[str], None]] = None) -> Optional[Path]:
    """The newest checkpoint that passes its integrity check; each newer one that fails is
    reported through `warn` (by name and reason) and skipped."""
    for _step, js in reversed(complete(ckpt_dir)):
        why = problem(js)
        if why is None:
            return js
        if warn is not None:
            warn(f"skipping checkpoint {js.with_suffix('')}: {why}")
    return None


def find(out_dir, spec: str, warn: Optional[Callable[[str], None]] = None) -> Path:
    """--resume: "latest" -> newest good one in OUT/checkpoints; else a checkpoint file or folder."""
    if spec in (None, "", "latest"):
        folder = Path(out_dir) / "checkpoints"
        js = newest(folder, warn)
        if js is None:
            if complete(folder):
                raise GeomkitError(f"--resume: no checkpoint in {folder} passes its integrity check (each is named "
                                   "above); run without --resume into a new --out to start again")
            raise GeomkitError(f"--resume: no complete checkpoint in {folder}; run without --resume to start")
        return js
    p = Path(spec).expanduser()
    if p.is_dir():
        folder = p if p.name == "checkpoints" else p / "checkpoints"
        js = newest(folder, warn) or newest(p, warn)
        if js is None:
            raise GeomkitError(f"--resume {spec}: no complete checkpoint there that passes its integrity check")
        return js
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.is_file() or not p.with_suffix(".safetensors").is_file():
        raise GeomkitError(f"--resume {spec}: not a complete checkpoint (need step-N.json and step-N.safetensors)")
    why = problem(p)
    if why is not None:
        raise GeomkitError(f"--resume {spec}: this checkpoint fails its integrity check: {why}")
    return p


def prune(ckpt_dir, keep: Optional[int], current: int) -> list[int]:
    """--keep-checkpoints: remove all but the `keep` newest checkpoints at or before step
    `current` (call it only once `current` is completely written). Checkpoints beyond `current`
    (left by a run resumed from an older one) are not touched: they are overwritten when reached.
    The .json goes first, so a removal cut short leaves an incomplete checkpoint, never one that
    looks whole. Returns the removed steps."""
    if not keep:
        return []
    done = [(s, js) for s, js in complete(ckpt_dir) if s <= current]
    removed = []
    for step, js in done[:-keep] if len(done) > keep else []:
        for f in (js, js.with_suffix(".safetensors")):
            try:
                f.unlink()
            except FileNotFoundError:
                pass
        removed.append(step)
    return removed


def remove_stale_temporaries(ckpt_dir) -> None:
    """Temporary files of writes cut short by a kill (`.step-XXXXXX-*`); call only under the run lock."""
    folder = Path(ckpt_dir)
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".step-") and p.is_file():
                try:
                    p.unlink()
                except OSError:
                    pass


def load(js: Path) -> tuple[dict, dict]:
    """(meta, tensors) of a checkpoint."""
    from geomkit.embeddings_io import read_tensors

    try:
        meta = json.loads(Path(js).read_text())
    except (OSError, ValueError) as exc:
        raise GeomkitError(f"--resume: cannot read {js} ({exc})") from None
    tensors = read_tensors(Path(js).with_suffix(".safetensors"))
    return meta, tensors
