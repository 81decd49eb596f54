"""geomkit's own run files, checked against what geomkit writes: a field of the wrong type (text
where a number belongs, a list where a dict belongs, ...) is one line naming the file and the
field, never a traceback in whatever reads it later.

A schema maps a field to its kind; a field that is absent or null is always accepted (older runs
lack newer fields). Kinds:
- "num": a finite number (not a bool); "int": a whole number; "str": text; "bool";
- "nums": a number or a list of numbers (one per text encoder, SDXL);
- "str|num": text or a number (--magnitude mean | 2.5);
- "dict:num": an object of numbers (drift: word -> cosine); "dict": any object; "list": any list.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from geomkit.errors import GeomkitError

# `geomkit train`'s results.json (the fields other commands read)
TRAIN_RESULTS = {
    "method": "str", "objective": "str", "model": "str", "placeholder": "str", "init_word": "str", "prior_word": "str",
    "m_star": "nums", "kappa": "num", "lr": "num", "steps": "int", "batch_size": "int", "num_vectors": "int",
    "seed": "int", "final_loss": "num", "first_loss": "num", "final_loss_mean10": "num", "first_loss_mean10": "num",
    "final_norm": "nums", "angle_from_init_deg": "num", "cos_to_prior": "num", "seconds": "num", "drift": "dict:num",
    "per_encoder": "list", "files": "list", "note": "str", "resolution": "int",
}
# `geomkit train`'s config.json (the fields other commands read)
TRAIN_CONFIG = {
    "method": "str", "model": "str", "placeholder": "str", "magnitude": "str|num", "lr": "num", "kappa": "num",
    "steps": "int", "batch_size": "int", "resolution": "int", "seed": "int",
}
# `geomkit evaluate`'s results.json
EVAL_RESULTS = {
    "image_similarity": "num", "text_alignment": "num", "text_metric": "str", "text_cosine": "num", "n_images": "int",
    "token": "str", "per_prompt": "list",
}
# one line of train_log.jsonl
LOG_LINE = {"step": "int", "loss": "num", "norm": "num", "lr": "num", "cos_to_prior": "num", "angle_from_init_deg": "num"}


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ok(kind: str, v) -> bool:
    if v is None:
        return True
    if kind == "num":
        return _is_num(v)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer())
    if kind == "str":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "nums":
        return _is_num(v) or (isinstance(v, list) and all(x is None or _is_num(x) for x in v))
    if kind == "str|num":
        return isinstance(v, str) or _is_num(v)
    if kind == "dict:num":
        return isinstance(v, dict) and all(x is None or _is_num(x) for x in v.values())
    if kind == "dict":
        return isinstance(v, dict)
    if kind == "list":
        return isinstance(v, list)
    raise ValueError(kind)


WANT = {
    "num": "a number", "int": "a whole number", "str": "text", "bool": "true or false",
    "nums": "a number or a list of numbers", "str|num": "text or a number", "dict:num": "an object of numbers",
    "dict": "an object", "list": "a list",
}


def _shown(v) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_fields(data, schema: dict, where, what: str = "", line: Optional[int] = None) -> dict:
    """`data` (a parsed JSON file) checked against `schema`; a GeomkitError naming the file (and
    line) and the first field of the wrong type. Returns `data`."""
    at = f"{where}" + (f", line {line}" if line is not None else "")
    if not isinstance(data, dict):
        raise GeomkitError(f"{at}: holds {type(data).__name__ if data is not None else 'null'}, not an object"
                           + (f"; not {what}" if what else ""))
    for key, kind in schema.items():
        if key in data and not _ok(kind, data[key]):
            raise GeomkitError(f"{at}: field {key!r} is {_shown(data[key])}, where geomkit writes {WANT[kind]}; the file was "
                               "edited or damaged: restore it (or move the run away)")
    return data


def read_json(path, schema: Optional[dict] = None, what: str = ""):
    """A JSON object from one of geomkit's files, checked against `schema`."""
    import json

    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise GeomkitError(f"{p}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    except ValueError as exc:
        raise GeomkitError(f"{p}: not readable JSON ({exc})") from None
    return check_fields(data, schema or {}, p, what)
