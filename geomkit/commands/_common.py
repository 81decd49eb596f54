"""Arguments and steps shared by the command handlers."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from geomkit.errors import GeomkitError


def add_model_args(p: argparse.ArgumentParser, default: str = "gemma3-270m") -> None:
    p.add_argument(
        "--model",
        default=default,
        type=model_spec,
        metavar="SPEC",
        help=f"gemma3-270m, minilm-l6, whisper-tiny-en, a local model or diffusers pipeline folder, "
        f"or an org/name repo id in the local Hugging Face cache (default: {default})",
    )
    p.add_argument(
        "--encoder", type=int, default=1, choices=(1, 2, 3),
        help="which text encoder of a pipeline folder (SDXL: 1=CLIP-L, 2=bigG; FLUX.1: 1=CLIP-L, 2=T5; SD3: 1=CLIP-L, 2=CLIP-G, 3=T5)"
    )


def add_out_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=default, type=out_dir, metavar="DIR", help=f"output folder (default: {default})")


def load(args):
    """The Encoder for --model/--encoder, after the output folder is known to be writable."""
    from geomkit.models import load_encoder

    return load_encoder(args.model, encoder=getattr(args, "encoder", 1))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise GeomkitError(message)


# ---- argparse types: every option checked when the command line is read ----------------------
# Each raises argparse.ArgumentTypeError with a message that says what is wrong; the parser
# (geomkit.cli.OneLineParser) prints it as one line naming the option, exit status 2.
MAX_SCALE = 1e6  # embedding scales beyond this overflow float32/bf16 arithmetic inside the models
MIN_SCALE = 1e-6  # and below it the scaled vector underflows to (near) zero
MAX_SEED = 2**32 - 1


def _number(text: str, kind=float):
    try:
        value = kind(str(text).strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def int_range(lo=None, hi=None, what: str = ""):
    """argparse type: an integer in [lo, hi] (either end open when None)."""

    def check(text: str) -> int:
        value = _number(text, int)
        subject = f"{what} " if what else ""
        if lo is not None and value < lo:
            raise argparse.ArgumentTypeError(f"{subject}must be at least {lo}, not {value}")
        if hi is not None and value > hi:
            raise argparse.ArgumentTypeError(f"{subject}must be at most {hi}, not {value}")
        return value

    check.__name__ = "integer"
    return check


def float_range(lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False, what: str = ""):
    """argparse type: a finite number in the range (bounds closed unless *_open)."""

    def check(text: str) -> float:
        value = _number(text, float)
        low_bad = lo is not None and (value <= lo if lo_open else value < lo)
        high_bad = hi is not None and (value >= hi if hi_open else value > hi)
        if low_bad or high_bad:
            left = "any" if lo is None else (f"({lo:g}" if lo_open else f"[{lo:g}")
            right = "" if hi is None else (f"{hi:g})" if hi_open else f"{hi:g}]")
            span = f"greater than {lo:g}" if hi is None and lo_open else (f"at least {lo:g}" if hi is None else f"in {left}, {right}")
            subject = f"{what} " if what else ""
            if lo is not None and hi is not None:
                raise argparse.ArgumentTypeError(f"{value:g} is outside {left}, {right}" + (f" ({what})" if what else ""))
            raise argparse.ArgumentTypeError(f"{subject}must be {span}, not {value:g}")
        return value

    check.__name__ = "number"
    return check


positive_int = int_range(1)
seed_int = int_range(0, MAX_SEED, "a seed")


def _items(text: str) -> list[str]:
    parts = [x.strip() for x in str(text).split(",")]
    if not any(parts):
        raise argparse.ArgumentTypeError("the list is empty; give comma-separated values")
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty item; separate values by single commas")
    return parts


def _unique(values: list, text: str) -> list:
    """A value listed twice would be measured or rendered twice under one label: refuse it."""
    seen = []
    for v in values:
        if v in seen:
            raise argparse.ArgumentTypeError(f"{text!r}: {v:g} is listed twice; give each value once")
        seen.append(v)
    return values


def _list_of(one):
    """argparse type: comma-separated items, each checked by `one`, none given twice."""

    def check(text: str) -> list:
        out = []
        for item in _items(text):
            try:
                out.append(one(item))
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
        return _unique(out, text)

    check.__name__ = "list"
    return check


def number_list(lo=None, hi=None, *, lo_open: bool = False, what: str = "value"):
    """argparse type: comma-separated finite numbers, each in the range."""
    return _list_of(float_range(lo, hi, lo_open=lo_open, what=f"every {what}"))


def int_list_range(lo=None, hi=None, what: str = "value"):
    """argparse type: comma-separated whole numbers, each in the range."""
    return _list_of(int_range(lo, hi, f"every {what}"))


def scale_list(text: str) -> list[float]:
    """Embedding scales m: positive, finite, and small enough not to overflow inside the model."""
    from geomkit.probes._args import parse_scales

    _items(text)  # an empty item gets its own message
    try:
        values = parse_scales(text, option="")
    except GeomkitError as exc:
        raise argparse.ArgumentTypeError(str(exc).strip()) from None
    bad = [v for v in values if not (MIN_SCALE <= v <= MAX_SCALE)]
    if bad:
        raise argparse.ArgumentTypeError(
            f"{text!r}: scale {bad[0]:g} is outside [{MIN_SCALE:g}, {MAX_SCALE:g}] (larger scales overflow float32 inside the model, "
            "smaller ones vanish)"
        )
    return _unique(values, text)


def nonempty(what: str = "value"):
    """argparse type: a string with something besides spaces in it."""

    def check(text: str) -> str:
        if not str(text).strip():
            raise argparse.ArgumentTypeError(f"empty {what}")
        return text

    check.__name__ = what
    return check


def word_list(text: str) -> list[str]:
    """argparse type: comma-separated words, none empty, none given twice."""
    words = _items(text)
    for k, w in enumerate(words):
        if w in words[:k]:
            raise argparse.ArgumentTypeError(f"{text!r}: {w} is given twice; give each once")
    return words


def _kind(text: str) -> str:
    """"dir", "file", "missing", or why the OS refuses the name (too long, ...): argparse types
    never raise an OSError from a path."""
    import os

    from geomkit.report import NAME_MAX

    p = Path(text).expanduser()
    for part in p.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            return f"a name in the path is {len(os.fsencode(part))} bytes long (at most {NAME_MAX}): no such file"
    try:
        st = p.stat()
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as exc:
        if isinstance(exc, NotADirectoryError):
            return "missing"
        return f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    import stat

    if stat.S_ISDIR(st.st_mode):
        return "dir"
    return "file"


def existing_file(text: str) -> str:
    """argparse type: a file that exists (a folder gets its own message)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("empty path; give a file")
    kind = _kind(text)
    if kind == "dir":
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file")
    if kind == "missing":
        raise argparse.ArgumentTypeError(f"{text}: file not found")
    if kind != "file":
        raise argparse.ArgumentTypeError(f"{text}: {kind}")
    return text


def existing_dir(text: str) -> str:
    """argparse type: a folder that exists (a file gets its own message)."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("empty path; give a folder")
    kind = _kind(text)
    if kind == "file":
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    if kind == "missing":
        raise argparse.ArgumentTypeError(f"{text}: folder not found")
    if kind != "dir":
        raise argparse.ArgumentTypeError(f"{text}: {kind}")
    return text


def file_or_dir(text: str) -> str:
    """argparse type: an existing file or folder."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("empty path")
    kind = _kind(text)
    if kind == "missing":
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    if kind not in ("file", "dir"):
        raise argparse.ArgumentTypeError(f"{text}: {kind}")
    return text


def out_dir(text: str) -> str:
    """argparse type: a folder to write into: not empty, not an existing file, nor under one, and
    nothing the OS refuses (a name over 255 bytes, /proc, a folder this user cannot write):
    `report.check_out_path`, the one check every output path gets."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("empty folder name; give a folder (e.g. runs/mine)")
    from geomkit.report import file_in_the_way, path_problem

    where = file_in_the_way(Path(text).expanduser()) or path_problem(text)
    if where:
        raise argparse.ArgumentTypeError(f"{text}: not a writable folder ({where}); give a folder")
    return text


def out_file(text: str) -> str:
    """argparse type: a file to write (its folder is created): the same check as `out_dir`."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("empty file name; give a file (e.g. runs/token.safetensors)")
    from geomkit.errors import GeomkitError
    from geomkit.report import check_out_path

    if _kind(text) == "dir":
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
    try:
        check_out_path(text, "", kind="file")
    except GeomkitError as exc:
        raise argparse.ArgumentTypeError(str(exc).strip()) from None
    return text


def model_spec(text: str) -> str:
    """argparse type for --model: not empty, and not a file."""
    if not str(text).strip():
        raise argparse.ArgumentTypeError("empty model name; give gemma3-270m, minilm-l6, whisper-tiny-en or a folder")
    kind = _kind(text)
    if kind == "file":
        raise argparse.ArgumentTypeError(f"{text} is a file; give a model or pipeline folder")
    if kind not in ("dir", "missing"):
        raise argparse.ArgumentTypeError(f"{text}: {kind}")
    return text


DEVICE_RE = r"^(auto|cpu|mps|cuda(:\d+)?)$"
DTYPES = ("auto", "float32", "fp32", "float16", "fp16", "bfloat16", "bf16")


def device_name(text: str) -> str:
    import re

    if not re.match(DEVICE_RE, str(text).strip()):
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, cpu, cuda, cuda:N or mps")
    return str(text).strip()


def dtype_name(text: str) -> str:
    if str(text).strip() not in DTYPES:
        raise argparse.ArgumentTypeError(f"{text!r}: use auto, float32, float16 or bfloat16")
    return str(text).strip()


def no_duplicates(values, option: str, paths: bool = False) -> None:
    """A value given twice would be reported once (results are keyed by it): refuse it."""
    seen = set()
    for v in values or []:
        key = Path(v).expanduser().resolve() if paths else v
        if key in seen:
            raise GeomkitError(f"{option}: {v} is given twice; give each once")
        seen.add(key)
