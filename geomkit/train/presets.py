"""Training settings by source: the paper's text, the DTI authors' released scripts, diffusers'
textual-inversion example, and geomkit's own default (read from `TrainConfig`).

`SETTINGS` is the one table: the README's "settings" table is `settings_markdown()` (a test
checks they agree, and that every "geomkit default" cell is what `TrainConfig` holds).

`--preset paper|authors` sets every field a preset names that is still at geomkit's default (an
option typed on the command line, or a field set in Python, wins). Where the paper states a
setting, geomkit's default follows the paper; where it is silent (resolution, flips, crops),
geomkit's default is said to be geomkit's, not the paper's.
"""

from __future__ import annotations

from dataclasses import fields

from geomkit.errors import GeomkitError

PRESETS = ("paper", "authors")

# (setting, paper, authors' scripts, diffusers TI example, geomkit field or None)
SETTINGS = [
    ("learning rate (DTI)", "5e-3", "0.01 with scale-lr (SDXL: x4 = 0.04; SANA 2x2 = 0.04)", "-", "lr"),
    ("learning rate (TI, CrossInit)", "5e-3", "5e-3 with scale-lr (x4 = 0.02)", "1e-4 (README: 5e-4, scale-lr, x4)", "lr"),
    ("scale-lr (lr x batch x processes)", "not stated", "on", "off (README: on)", "scale_lr"),
    ("steps", "500", "SDXL 400; SANA 500", "5000 (README: SD 3000, SDXL 500)", "steps"),
    ("batch size", "4", "4 (SANA: 2 x 2 accumulation)", "16 (README: 1 x 4)", "batch_size"),
    ("resolution", "not stated", "SDXL 768; SANA 1024", "512 (SDXL README: 768)", "resolution"),
    ("flip probability", "not stated", "0.0", "0.5", "flip_p"),
    ("crop", "not stated", "random (shorter side resized, then cropped)", "SD: resize to square; SDXL: square resize, crop (0, 0)", "crop"),
    ("kappa (vMF prior)", "1e-4 for every model", "SDXL 1e-4; SANA, Wan 5e-5", "-", "kappa"),
    ("prior mean mu", "normalised class-word row", "normalised initializer row(s), per encoder", "-", "prior_word"),
    ("CrossInit regulariser", "weight 1e-5 'as the original paper': lambda ||e - e0||^2", "1e-5 x MSE (mean over elements), summed over SDXL's encoders", "-", "crossinit_reduction"),
    ("CrossInit weight", "1e-5", "1e-5", "-", "crossinit_weight"),
    ("AdamW weight decay (TI)", "not stated", "SDXL 1e-2; SANA 0.0", "1e-2", "weight_decay"),
    ("DTI-AdamW ablation", "AdamW step, then back to the sphere; kappa listed", "current launcher: AdamW on v, no prior, renormalised only when saved", "-", None),
    ("SANA prompts", "not stated", "lower-cased; no complex human instruction in training (on at sampling); zero-pad prefix: 0-15 zero tokens after BOS, Exp(2)", "-", None),
    ("SDXL time ids", "not stated", "per example: original size, random crop's top-left, target", "per example, crop always (0, 0)", None),
]

# Values each preset sets, per pipeline kind ("sd", "sdxl", "sana") and method family.
_AUTHORS_COMMON = dict(scale_lr=True, flip_p=0.0, crop="random", crossinit_reduction="mean")
_AUTHORS = {
    "sdxl": dict(steps=400, resolution=768, kappa=1e-4, weight_decay=1e-2),
    "sd": dict(steps=400, kappa=1e-4, weight_decay=1e-2),  # no SD 1.x script: SDXL's, at SD's own resolution
    "sana": dict(steps=500, resolution=1024, kappa=5e-5, weight_decay=0.0),
}
_PAPER = dict(lr=5e-3, steps=500, batch_size=4, kappa=1e-4, crossinit_weight=1e-5, scale_lr=False)


def preset_values(name: str, kind: str, method: str) -> dict:
    """The fields preset `name` sets for a pipeline of `kind` ("sd", "sdxl", "sana", or "lm") and `method`."""
    if name not in PRESETS:
        raise GeomkitError(f"--preset {name}: choose one of {', '.join(PRESETS)}")
    if name == "paper":
        return dict(_PAPER)
    if kind == "lm":
        raise GeomkitError("--preset authors: the DTI authors' scripts train diffusion models only; "
                           "use --preset paper (or none) with the lm objective")
    if kind not in _AUTHORS:
        raise GeomkitError(f"--preset authors: the DTI authors' scripts have no {kind.upper()} settings "
                           "(SDXL, SANA and Wan2.1 only); use --preset paper (or none) on this pipeline")
    values = dict(_AUTHORS_COMMON, **_AUTHORS[kind])
    values["lr"] = 0.01 if method in ("dti", "dti-adamw") else 5e-3
    return values


def apply_preset(cfg, kind: str, given=()) -> list:
    """Set the preset's fields that are still at geomkit's default and were not typed; the names set."""
    if not getattr(cfg, "preset", None):
        return []
    from geomkit.train.config import TrainConfig

    defaults = {f.name: f.default for f in fields(TrainConfig)}
    changed = []
    for key, value in preset_values(cfg.preset, kind, cfg.method).items():
        if key in given or getattr(cfg, key) != defaults[key]:
            continue
        if getattr(cfg, key) != value:
            setattr(cfg, key, value)
            changed.append(key)
    return changed


def geomkit_default(field_name) -> str:
    """The 'geomkit default' cell of a row: what TrainConfig holds, as the README shows it."""
    from geomkit.train.config import TrainConfig

    if field_name is None:
        return "-"
    value = getattr(TrainConfig(), field_name)
    if field_name == "resolution" and value is None:
        return "the pipeline's own (SD 1.5 512, SDXL 1024)"
    if field_name == "prior_word" and value is None:
        return "--init-word's row, normalised"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


_NOTES = {
    "SDXL time ids": "per example: original size, the crop's top-left, target",
    "DTI-AdamW ablation": "`--method dti-adamw`: the paper's text (prior added, AdamW step, row renormalised every step, weight decay 1e-2)",
    "SANA prompts": "lower-cased; the complex human instruction the pipeline uses at inference (training sees what sampling sees); no zero-pad prefix",
}


def settings_markdown() -> str:
    """The README's settings table."""
    lines = ["| setting | paper | authors' scripts | diffusers TI example | geomkit default |", "|---|---|---|---|---|"]
    for name, paper, authors, diffusers, field_name in SETTINGS:
        ours = _NOTES.get(name) or geomkit_default(field_name)
        if field_name == "crossinit_reduction":
            ours = f"{ours} (lambda x sum of squares; `--crossinit-reduction mean` for the authors')"
        lines.append(f"| {name} | {paper} | {authors} | {diffusers} | {ours} |")
    return "\n".join(lines)
