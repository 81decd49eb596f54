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
from typing import Optional, Sequence

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


# ---- what can fail: the interpolants' vocabulary neighbours along the path ----------------------
def neighbour_path(enc, vectors, k: int) -> list[list[dict]]:
    """Top-k cosine neighbours in `enc`'s vocabulary for each row of `vectors` (n, d): one list of
    {"token" (raw piece), "text" (decoded for people), "id", "score"} per row, computed by the same
    `geometry.nearest` call `geomkit neighbors --embedding` makes (no query token excluded)."""
    from geomkit.inspection import neighbours

    return [cos for cos, _ in neighbours(enc.embedding_table(), vectors, enc.token_str, k=k, token_text=enc.token_text)]


ANGLE_TOL_DEG = 1e-3  # a step back smaller than this is rounding (float32 tokens: ~1e-5 deg), not a turn towards A


def jaccard(x: Sequence, y: Sequence) -> float:
    sx, sy = set(x), set(y)
    return len(sx & sy) / len(sx | sy) if sx | sy else 1.0


def smoothness(ratios: Sequence[float], top_ids: Sequence[Sequence[int]], angles_to_a: Sequence[float],
               labels: Optional[Sequence[str]] = None) -> dict:
    """Measures of one column's path that can fail, taken in ascending ratio order:

    - jaccard: |S_i & S_i+1| / |S_i | S_i+1| of the top-K id sets at consecutive ratios (1 = same set);
    - top1_changed: whether the nearest token differs between consecutive ratios, and how often;
    - distinct_top1: how many different nearest tokens the path passes through (1 = one token all along);
    - angle_to_a_monotonic: whether the angle to A never decreases as the ratio grows (a decrease
      beyond ANGLE_TOL_DEG means the path turns back towards A somewhere).
    `labels` (the decoded top-1 tokens, same order as `top_ids`) only make the report readable.
    """
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    rs = [float(ratios[i]) for i in order]
    ids = [list(top_ids[i]) for i in order]
    ang = [float(angles_to_a[i]) for i in order]
    top1 = [x[0] for x in ids]
    jac = [jaccard(ids[i], ids[i + 1]) for i in range(len(ids) - 1)]
    changed = [top1[i] != top1[i + 1] for i in range(len(ids) - 1)]
    steps = [ang[i + 1] - ang[i] for i in range(len(ang) - 1)]
    back = [i for i, s in enumerate(steps) if s < -ANGLE_TOL_DEG]
    out = {
        "ratios": rs,
        "jaccard": jac,
        "jaccard_min": min(jac) if jac else None,
        "jaccard_mean": sum(jac) / len(jac) if jac else None,
        "top1_changed": changed,
        "top1_changes": sum(changed),
        "top1_ids": top1,
        "distinct_top1": len(set(top1)),
        "angle_to_a_steps_deg": steps,
        "angle_to_a_monotonic": not back,
    }
    if labels is not None:
        names = [labels[i] for i in order]
        seen = []
        for n in names:
            if n not in seen:
                seen.append(n)
        out["top1"] = names
        out["top1_sequence"] = seen
    return out
