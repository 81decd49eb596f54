"""What `train --resume` checks before it continues a run (functions of plain values, so the
trainer calls them in a line each):

- `read_saved_config`: the run's config.json is readable and every field has the type and value
  geomkit writes; a damaged one is blamed on the file and the field, never on an option the user
  did not type ("--method lora: choose one of ...");
- `find`: the checkpoint to resume, with the checkpoints skipped for failing their integrity check
  reported as ONE line (or inside the one error line when none is good);
- `check_owner`: a checkpoint belongs to its run: one of another run folder (or, by its recorded
  settings, of another model or token) is refused, since continuing it would overwrite this
  run's learned_embeds, config.json and results.json with another run's token;
- `check_steps`: --steps below the steps a checkpoint already holds is refused (the run cannot go
  back; recording N steps beside an embedding trained for more would be false).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Optional

from geomkit.errors import GeomkitError

# field -> kind of value `geomkit train` writes into config.json (the TrainConfig fields)
CONFIG_KINDS = {
    "method": "str", "objective": "str|dict", "model": "str", "placeholder": "str", "init_word": "str", "prior_word": "str?",
    "magnitude": "str|num", "kappa": "num", "num_vectors": "int", "lr": "num", "lr_schedule": "str", "steps": "int",
    "batch_size": "int", "seed": "int", "mixed_precision": "str", "save_every": "int", "keep_checkpoints": "int?",
    "texts": "str?", "max_length": "int", "images": "str?", "resolution": "int?", "templates": "str", "flip_p": "num",
    "validation_prompts": "list:str", "validation_steps": "int", "validation_images": "int", "validation_inference_steps": "int",
    "crossinit_weight": "num", "weight_decay": "num", "related": "list:str", "progress": "bool", "device": "str?",
    "micro_batch_size": "int|str?", "gradient_checkpointing": "bool", "compile": "bool",
}
WANT = {"str": "text", "num": "a number", "int": "a whole number", "bool": "true or false", "list:str": "a list of text",
        "str|num": "text or a number", "str|dict": "text or an object", "int|str": "a whole number or auto"}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _ok(kind: str, v) -> bool:
    if kind.endswith("?"):
        if v is None:
            return True
        kind = kind[:-1]
    if kind == "str":
        return isinstance(v, str)
    if kind == "num":
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if kind == "int":
        return _is_int(v)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "list:str":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if kind == "str|num":
        return isinstance(v, str) or _ok("num", v)
    if kind == "str|dict":
        return isinstance(v, (str, dict))
    if kind == "int|str":
        return _is_int(v) or isinstance(v, str)
    raise ValueError(kind)


def check_saved_config(saved, where) -> dict:
    """`saved` (config.json's content) has the types and values `geomkit train` writes; else one
    line naming `where` and the field."""
    from geomkit.train.config import FLOAT_RANGES, INT_RANGES, METHODS, PRECISIONS, SCHEDULES

    if not isinstance(saved, dict):
        raise GeomkitError(f"{where}: holds {type(saved).__name__}, not the run's settings; the file is damaged: restore it, "
                           "or resume from a checkpoint with --resume CHECKPOINT")
    bad = None
    for key, kind in CONFIG_KINDS.items():
        if key in saved and not _ok(kind, saved[key]):
            bad = (key, f"is {saved[key]!r}, where geomkit writes {WANT[kind.rstrip('?')]}")
            break
    choices = {"method": METHODS, "mixed_precision": PRECISIONS, "lr_schedule": SCHEDULES}
    for key, allowed in choices.items():
        if bad is None and isinstance(saved.get(key), str) and saved[key] not in allowed:
            bad = (key, f"is {saved[key]!r}, not one of {', '.join(allowed)}")
    for key, (lo, hi, lo_ok) in FLOAT_RANGES.items():
        v = saved.get(key)
        if bad is None and _ok("num", v) and not ((v > lo or (lo_ok and v == lo)) and v <= hi):
            bad = (key, f"is {v!r}, outside the range geomkit accepts")
    for key, (lo, hi) in INT_RANGES.items():
        v = saved.get(key)
        if bad is None and _is_int(v) and not lo <= v <= hi:
            bad = (key, f"is {v!r}, outside {lo}..{hi}")
    if bad is not None:
        key, what = bad
        raise GeomkitError(f"{where}: field {key!r} {what}; the run's config.json was edited or damaged: restore it "
                           "(the checkpoints record the settings too: --resume CHECKPOINT)")
    return saved


def read_saved_config(path) -> Optional[dict]:
    """The run's config.json checked (`check_saved_config`); None when there is no such file. An
    unreadable one is an error naming it, not "no run to resume"."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        saved = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise GeomkitError(f"{p}: the run's settings cannot be read ({getattr(exc, 'strerror', None) or exc}); restore it, "
                           "or resume from a checkpoint with --resume CHECKPOINT") from None
    except ValueError as exc:
        raise GeomkitError(f"{p}: the run's settings are not readable JSON ({exc}); the file is damaged: restore it, "
                           "or resume from a checkpoint with --resume CHECKPOINT") from None
    return check_saved_config(saved, p)


def find(out, spec, say: Callable[[str], None]) -> Path:
    """`checkpoint.find`, with every checkpoint skipped for failing its integrity check reported as
    one line through `say` (or inside the one error line when none is good)."""
    from geomkit.train import checkpoint

    skipped = []
    try:
        js = checkpoint.find(out, spec, warn=skipped.append)
    except GeomkitError as exc:
        if skipped:
            names = "; ".join(s.replace("skipping checkpoint ", "") for s in skipped)
            text = str(exc).replace(" (each is named above)", "")
            raise GeomkitError(f"{text} (skipped: {names})") from None
        raise
    if skipped:
        names = "; ".join(s.replace("skipping checkpoint ", "") for s in skipped)
        say(f"skipped {len(skipped)} damaged checkpoint{'s' if len(skipped) > 1 else ''} ({names}); resuming from {Path(js).with_suffix('').name}")
    return js


def _same(a, b) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)


def check_owner(out, js, ckpt_config: Optional[dict], run_config: Optional[dict] = None) -> None:
    """A checkpoint belongs to its run: it lies in OUT/checkpoints (or OUT), and when OUT already
    records its run (config.json) the two name the same model and token."""
    out, js = Path(out), Path(js)
    home = js.parent.parent if js.parent.name == "checkpoints" else js.parent
    if not _same(home, out):
        raise GeomkitError(f"--resume {js}: that checkpoint belongs to the run in {home}, not to --out {out}; continuing it here "
                           f"would overwrite this folder's files with another run's token: resume it with --out {home} --resume")
    if isinstance(ckpt_config, dict) and isinstance(run_config, dict):
        for key in ("model", "placeholder", "method"):
            a, b = ckpt_config.get(key), run_config.get(key)
            if a is not None and b is not None and str(a) != str(b):
                from geomkit.train.config import same_setting

                if not same_setting(key, a, b):
                    raise GeomkitError(f"--resume {js}: the checkpoint was trained with {key} {a!r}, but {out / 'config.json'} "
                                       f"records {b!r}: it belongs to another run; resume it in its own --out")


def check_steps(done: int, steps: int) -> None:
    """--steps below what a checkpoint holds is refused: the run cannot go back."""
    if steps < done:
        raise GeomkitError(f"--steps {steps}: the checkpoint already holds {done} steps and a run cannot go back (its embedding "
                           f"is the one after {done} steps); give --steps {done} or more, or --resume an earlier checkpoint")
