"""The trainer's settings, and the checks that need no model (run before anything is loaded)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from geomkit.errors import GeomkitError

METHODS = ("dti", "ti", "ti-rescaled", "crossinit", "dti-adamw")
# Methods whose parameter is a unit direction v with e = m* v (updated on the sphere).
DIRECTIONAL = ("dti", "dti-adamw")
OBJECTIVES = ("auto", "lm", "diffusion")
PRECISIONS = ("no", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")

# Settings that must not change between a run and its --resume (anything else may: --steps
# can be raised, --save-every and validation settings changed).
RESUME_KEYS = (
    "method", "objective", "model", "placeholder", "init_word", "prior_word", "magnitude", "kappa",
    "num_vectors", "lr", "lr_schedule", "batch_size", "seed", "mixed_precision", "texts", "images",
    "resolution", "templates", "flip_p", "max_length", "crossinit_weight", "weight_decay",
)


@dataclass
class TrainConfig:
    method: str = "dti"
    objective: str = "auto"
    model: str = "gemma3-270m"
    placeholder: str = "<concept>"
    init_word: str = ""
    prior_word: Optional[str] = None
    magnitude: str = "mean"  # mean | min | max | a number
    kappa: float = 1e-4
    num_vectors: int = 1
    lr: float = 5e-3
    lr_schedule: str = "constant"
    steps: int = 500
    batch_size: int = 4
    seed: int = 42
    mixed_precision: str = "no"
    save_every: int = 0  # 0: a checkpoint at the end only
    resume: Optional[str] = None  # None: fresh run; "latest": newest checkpoint in out; or a checkpoint path
    out: str = "runs/train"
    # lm objective
    texts: Optional[str] = None
    max_length: int = 64
    # diffusion objective
    images: Optional[str] = None
    resolution: Optional[int] = None  # default: the pipeline's own default size
    templates: str = "object"  # object | style | a text file with one template per line ("{}" = the token)
    flip_p: float = 0.5
    validation_prompts: list = field(default_factory=list)
    validation_steps: int = 100
    validation_images: int = 1
    validation_inference_steps: int = 25
    # baselines / optimiser
    crossinit_weight: float = 1e-5
    weight_decay: float = 1e-2  # AdamW methods, as the public TI example scripts
    # reporting
    related: list = field(default_factory=list)
    progress: bool = True
    device: Optional[str] = None  # default: accelerate's choice (cuda when present, else cpu)
    # memory / speed (the result does not depend on these)
    micro_batch_size: Optional[object] = None  # None: the batch size; an int dividing it; or "auto" (CUDA)
    gradient_checkpointing: bool = False
    compile: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def directional(self) -> bool:
        return self.method in DIRECTIONAL

    @property
    def prior(self) -> str:
        return self.prior_word or self.init_word


def magnitude_spec(text) -> str:
    """Validate --magnitude: mean, min, max or a positive finite number."""
    text = str(text).strip()
    if text in ("mean", "min", "max"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise GeomkitError(f"--magnitude {text}: use mean, min, max or a positive number") from None
    if not math.isfinite(value) or value <= 0:
        raise GeomkitError(f"--magnitude {text}: m* must be a positive finite number (the norm every learned vector keeps)")
    return text


def check(cfg: TrainConfig) -> TrainConfig:
    """Every check that needs no model, so bad input fails in one line before any loading."""
    if cfg.method not in METHODS:
        raise GeomkitError(f"--method {cfg.method}: choose one of {', '.join(METHODS)}")
    if cfg.objective not in OBJECTIVES:
        raise GeomkitError(f"--objective {cfg.objective}: choose one of {', '.join(OBJECTIVES)}")
    if cfg.mixed_precision not in PRECISIONS:
        raise GeomkitError(f"--mixed-precision {cfg.mixed_precision}: choose one of {', '.join(PRECISIONS)}")
    if cfg.lr_schedule not in SCHEDULES:
        raise GeomkitError(f"--lr-schedule {cfg.lr_schedule}: choose one of {', '.join(SCHEDULES)}")
    cfg.magnitude = magnitude_spec(cfg.magnitude)
    if not math.isfinite(cfg.kappa) or cfg.kappa < 0:
        raise GeomkitError(f"--kappa {cfg.kappa}: the vMF concentration must be >= 0 (the paper uses 1e-4)")
    if not math.isfinite(cfg.lr) or cfg.lr <= 0:
        raise GeomkitError(f"--lr {cfg.lr}: the learning rate must be a positive number")
    for name in ("steps", "batch_size", "num_vectors", "max_length", "validation_images", "validation_inference_steps"):
        if int(getattr(cfg, name)) < 1:
            raise GeomkitError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be at least 1")
    if cfg.save_every < 0 or cfg.validation_steps < 0:
        raise GeomkitError("--save-every and --validation-steps must be >= 0 (0 turns them off)")
    if not 0 <= cfg.flip_p <= 1:
        raise GeomkitError(f"--flip-p {cfg.flip_p}: a probability between 0 and 1")
    if cfg.crossinit_weight < 0 or cfg.weight_decay < 0:
        raise GeomkitError("--crossinit-weight and --weight-decay must be >= 0")
    if cfg.resolution is not None and (cfg.resolution < 8 or cfg.resolution % 8):
        raise GeomkitError(f"--resolution {cfg.resolution}: use a multiple of 8 (e.g. 512, 768, 1024)")
    if not cfg.init_word or not cfg.init_word.strip():
        raise GeomkitError("--init-word is required: a word that is one token and describes the concept (e.g. dog)")
    if not cfg.placeholder or any(ch.isspace() for ch in cfg.placeholder):
        raise GeomkitError(f"--placeholder {cfg.placeholder!r}: a non-empty string without spaces, e.g. <my-dog>")
    cfg.micro_batch_size = micro_batch_spec(cfg.micro_batch_size, cfg.batch_size)
    return cfg


def micro_batch_spec(value, batch_size: int):
    """Validate --micro-batch-size: None (the batch size), "auto", or a positive divisor of the batch size."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise GeomkitError(f"--micro-batch-size {value}: use a whole number that divides --batch-size, or auto") from None
    if n < 1:
        raise GeomkitError(f"--micro-batch-size {value}: must be at least 1 (and divide --batch-size {batch_size})")
    if int(batch_size) % n:
        divisors = [d for d in range(1, int(batch_size) + 1) if int(batch_size) % d == 0]
        raise GeomkitError(f"--micro-batch-size {n} does not divide --batch-size {batch_size}; "
                           f"use one of {', '.join(map(str, divisors))} (or auto)")
    return n
