"""Argument checks shared by the probe commands (one-line GeomkitErrors, never argparse usage dumps)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

from geomkit.errors import GeomkitError


def parse_scales(text, option: str = "--scales") -> list[float]:
    """Comma-separated positive finite numbers ("0.5,1,2"); a list of numbers passes through checked."""
    if isinstance(text, (list, tuple)):
        values = [float(v) for v in text]
    else:
        parts = [x.strip() for x in str(text).split(",") if x.strip()]
        try:
            values = [float(x) for x in parts]
        except ValueError:
            raise GeomkitError(f"{option} {text!r}: not a comma-separated list of numbers (e.g. 0.5,1,2,4)") from None
    if not values:
        raise GeomkitError(f"{option}: the list is empty; give positive numbers such as 0.5,1,2,4")
    bad = [v for v in values if not (v > 0 and math.isfinite(v))]
    if bad:
        raise GeomkitError(f"{option} {text!r}: every scale must be a positive finite number (got {bad[0]:g})")
    return values


def check_files(paths: Sequence[str], what: str = "embedding file") -> None:
    for p in paths:
        if not Path(p).expanduser().is_file():
            raise GeomkitError(f"{what} {p} not found")


def positive_int(value: Optional[int], option: str) -> None:
    if value is not None and value < 1:
        raise GeomkitError(f"{option} must be at least 1, not {value}")


def load_learned_set(enc, paths: Sequence[str], encoder: Optional[int] = None) -> dict:
    """{name: (n_vectors, d) float32} for each file, checked against the model's dimension."""
    from geomkit.embeddings_io import load_learned_set as load

    return load(paths, d_model=enc.d_model, encoder=encoder)


def subsample(items: list, n: Optional[int], seed: int = 0) -> list:
    """At most n items, chosen by a seeded shuffle but kept in their original order."""
    import random

    if n is None or n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]
