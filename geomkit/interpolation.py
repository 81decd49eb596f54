"""Interpolating two learned tokens over a list of ratios (the paper's Sec. 4.5, Fig. 4).

A token is a dict of parts, {"embedding": (n, d)} or SDXL's {"clip_l": (n, 768), "clip_g": (n, 1280)};
each part is interpolated row by row with `geometry.slerp` (directions along the great circle,
the norm linear in the ratio: two tokens of equal norm give interpolants of that norm by
construction, which is why it is not reported as a result) or `geometry.lerp`.

What can fail, and is measured (`neighbour_path`, `smoothness`): which vocabulary tokens lie
nearest each interpolant (top-K by cosine) and whether they change smoothly along the path.
"""

from __future__ import annotations

import math
from typing import Sequence

from geomkit.errors import GeomkitError
from geomkit.geometry import angle_deg, lerp, slerp

MODES = {"slerp": slerp, "lerp": lerp}
FIG4_RATIOS = (0.0, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65, 1.0)


def token_parts(token) -> dict:
    """A generation.Token's parts under canonical names: "clip_l"/"clip_g" for SDXL, else "embedding"."""
    parts = token.parts
    if "clip_l" in parts and "clip_g" in parts:
        return {"clip_l": parts["clip_l"], "clip_g": parts["clip_g"]}
    if len(parts) == 1:
        return {"embedding": next(iter(parts.values()))}
    if len(parts) == 2:  # learned_embeds + learned_embeds_2 of an SDXL run
        ordered = sorted(parts, key=lambda k: token.hints.get(k, 1))
        return {"clip_l": parts[ordered[0]], "clip_g": parts[ordered[1]]}
    raise GeomkitError(f"token {token.name!r}: {len(parts)} parts; expected one embedding or an SDXL clip_l/clip_g pair")


def check_compatible(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> None:
    """Same parts, same shapes; otherwise one line saying what differs."""
    if set(a) != set(b):
        kind = lambda p: "an SDXL clip_l/clip_g pair" if "clip_l" in p else "a single-encoder embedding"  # noqa: E731
        raise GeomkitError(f"{name_a} is {kind(a)} and {name_b} is {kind(b)}: they cannot be interpolated")
    for k in a:
        da, db = a[k].shape[-1], b[k].shape[-1]
        if da != db:
            raise GeomkitError(
                f"{name_a} has dimension {da} and {name_b} {db} ({k}): embeddings of different text encoders cannot be interpolated"
            )
        if a[k].shape != b[k].shape:
            raise GeomkitError(f"{name_a} has {a[k].shape[0]} vector(s) and {name_b} {b[k].shape[0]} ({k}); they must match")


def check_ratios(ratios: Sequence[float]) -> list[float]:
    ratios = [float(r) for r in ratios]
    bad = [r for r in ratios if not 0.0 <= r <= 1.0]
    if bad:
        raise GeomkitError(f"--ratios: {', '.join(map(str, bad))} outside [0, 1] (0 = A, 1 = B)")
    return ratios


def interpolate(a: dict, b: dict, ratios: Sequence[float], mode: str = "slerp") -> list[dict]:
    """One part dict per ratio. Ratio 0 returns A and ratio 1 returns B exactly."""
    if mode not in MODES:
        raise GeomkitError(f"--mode {mode}: choose slerp or lerp")
    check_compatible(a, b)
    check_not_opposite(a, b)
    fn = MODES[mode]
    mixes = [{k: fn(a[k], b[k], float(t)) for k in a} for t in check_ratios(ratios)]
    from geomkit.embeddings_io import MAX_NORM, MIN_NORM

    for t, m in zip(ratios, mixes):
        for k, v in m.items():
            n = v.double().norm(dim=-1)
            if not bool(((n >= MIN_NORM) & (n <= MAX_NORM)).all()):
                raise GeomkitError(f"{mode} at ratio {float(t):g} ({k}) gives a vector of norm {float(n.min()):.3g}, outside "
                                   f"[{MIN_NORM:g}, {MAX_NORM:g}]: not a usable embedding; leave that ratio out or use --mode slerp")
    return mixes


OPPOSITE_SIN = 1e-6  # sin(angle) below this with the angle past 90 deg: the directions are opposite


def check_not_opposite(a: dict, b: dict) -> None:
    """Antipodal vectors (angle 180 deg) have no unique great circle between them (slerp is
    undefined) and their straight line passes through zero (lerp gives a vector with no direction):
    one line instead of an answer that depends on rounding."""
    for k in a:
        for i in range(a[k].shape[0]):
            ang = float(angle_deg(a[k][i].double(), b[k][i].double()))
            if ang > 90 and math.sin(math.radians(ang)) < OPPOSITE_SIN:
                row = k if a[k].shape[0] == 1 else f"{k}[{i}]"
                raise GeomkitError(f"A and B point in opposite directions ({row}: {ang:.4f} deg apart): no unique great circle joins "
                                   "them (slerp is undefined) and the straight line between them passes through zero (lerp); "
                                   "interpolate two tokens that are not antipodal")


def columns(parts: dict) -> list[tuple[str, str, int]]:
    """(label, part, row) for every vector: "embedding", "clip_l", or "clip_l[1]" for multi-vector tokens."""
    out = []
    for k, v in parts.items():
        for i in range(v.shape[0]):
            out.append((k if v.shape[0] == 1 else f"{k}[{i}]", k, i))
    return out


def describe(a: dict, b: dict, mixes: Sequence[dict]) -> dict:
    """Norms and angles of every interpolant, one list per ratio with one value per column."""
    cols = columns(a)

    def per(fn):
        return [[float(fn(m[k][i], k, i)) for _, k, i in cols] for m in mixes]

    return {
        "parts": [c[0] for c in cols],
        "norms": per(lambda v, k, i: v.double().norm()),
        "angles_deg": per(lambda v, k, i: angle_deg(a[k][i], v)),
        "angles_to_b_deg": per(lambda v, k, i: angle_deg(v, b[k][i])),
        "angle_ab_deg": [float(angle_deg(a[k][i], b[k][i])) for _, k, i in cols],
        "norm_a": [float(a[k][i].double().norm()) for _, k, i in cols],
        "norm_b": [float(b[k][i].double().norm()) for _, k, i in cols],
    }
