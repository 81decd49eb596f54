"""Arguments and steps shared by the command handlers."""

from __future__ import annotations

import argparse

from geomkit.errors import GeomkitError


def add_model_args(p: argparse.ArgumentParser, default: str = "gemma3-270m") -> None:
    p.add_argument(
        "--model",
        default=default,
        metavar="SPEC",
        help=f"gemma3-270m, minilm-l6, whisper-tiny-en, a local model or diffusers pipeline folder, "
        f"or an org/name repo id in the local Hugging Face cache (default: {default})",
    )
    p.add_argument(
        "--encoder", type=int, default=1, choices=(1, 2), help="which text encoder of a pipeline folder (SDXL: 1=CLIP-L, 2=bigG)"
    )


def add_out_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--out", default=default, metavar="DIR", help=f"output folder (default: {default})")


def float_list(text: str) -> list[float]:
    """argparse type for comma-separated positive numbers (scales, ratios)."""
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def positive_floats(text: str) -> list[float]:
    values = float_list(text)
    if any(not (v > 0) or v == float("inf") for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be a positive finite number")
    return values


def load(args):
    """The Encoder for --model/--encoder, after the output folder is known to be writable."""
    from geomkit.models import load_encoder

    return load_encoder(args.model, encoder=getattr(args, "encoder", 1))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise GeomkitError(message)
