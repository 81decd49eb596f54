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
CROPS = ("center", "random")
REDUCTIONS = ("sum", "mean")
LOSSES = ("mse", "dco")
LORA_OPTIONS = ("lora_alpha", "lora_lr", "lora_targets", "lora_dropout", "token_steps", "loss", "dco_beta")
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
    scale_lr: bool = False  # lr x batch size x processes, as diffusers' textual-inversion scripts
    lr_schedule: str = "constant"
    steps: int = 500
    batch_size: int = 4
    seed: int = 42
    mixed_precision: str = "no"
    save_every: int = 0  # 0: a checkpoint at the end only
    keep_checkpoints: Optional[int] = None  # None: keep all; N: the N newest (older ones removed once a newer is written)
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
    crop: str = "center"  # center | random (SDXL: the crop's offsets are the time ids' crops_coords_top_left)
    encoders: Optional[str] = None  # FLUX/SD3: comma list of clip_l, clip_g, t5 to learn rows for (None: all)
    guidance_scale: float = 3.5  # FLUX.1 guidance-distilled transformers: the guidance embedding's value
    validation_prompts: list = field(default_factory=list)
    validation_steps: int = 100
    validation_images: int = 1
    validation_inference_steps: int = 25
    # baselines / optimiser
    crossinit_weight: float = 1e-5
    # LoRA on the frozen denoiser beside the token (pivotal tuning), and the DCO loss
    lora_rank: Optional[int] = None  # None: no LoRA
    lora_alpha: Optional[float] = None  # default: the rank
    lora_lr: float = 1e-4
    lora_targets: str = "to_q,to_k,to_v,to_out.0"
    lora_dropout: float = 0.0
    token_steps: Optional[int] = None  # the token stops after this step, the LoRA goes on (None: all steps)
    loss: str = "mse"  # mse | dco
    dco_beta: float = 1000.0
    crossinit_reduction: str = "sum"  # sum: lambda ||e - e0||^2 (CrossInit's text); mean: the DTI authors' MSE
    preset: Optional[str] = None  # paper | authors: their settings for every field still at its default
    weight_decay: float = 1e-2  # AdamW methods, as the public TI example scripts
    # reporting
    related: list = field(default_factory=list)
    progress: bool = True
    device: Optional[str] = None  # default: accelerate's choice (cuda when present, else cpu)
    # memory / speed (the result does not depend on these)
    micro_batch_size: Optional[object] = None  # None: the batch size; an int dividing it; or "auto" (CUDA)
    gradient_checkpointing: bool = False
    compile: bool = False
    report_to: Optional[str] = None  # tensorboard | wandb (geomkit.train.tracking)

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
    if not math.isfinite(value) or value <= 0 or value > 1e4:
        raise GeomkitError(f"--magnitude {text}: m* must be a positive finite number up to 1e4 (the norm every learned vector keeps)")
    return text


# Ranges of the numeric settings: beyond them a run is meaningless or overflows float32 later
# (e.g. TI with --lr 1e38), so they are refused before anything is loaded or written.
FLOAT_RANGES = {  # name: (low, high, low is allowed)
    "kappa": (0.0, 1e4, True),
    "lr": (0.0, 10.0, False),
    "flip_p": (0.0, 1.0, True),
    "crossinit_weight": (0.0, 1e6, True),
    "lora_lr": (0.0, 10.0, False),
    "lora_dropout": (0.0, 0.99, True),
    "dco_beta": (0.0, 1e6, False),
    "weight_decay": (0.0, 100.0, True),
    "guidance_scale": (0.0, 100.0, True),
}
INT_RANGES = {  # name: (low, high)
    "steps": (1, 10**8),
    "batch_size": (1, 10**5),
    "num_vectors": (1, 1000),
    "max_length": (2, 10**6),
    "save_every": (0, 10**8),
    "validation_steps": (0, 10**8),
    "validation_images": (1, 1000),
    "validation_inference_steps": (1, 10**4),
    "seed": (0, 2**63 - 1),
}
# Options that only the diffusion objective reads, with their defaults.
DIFFUSION_ONLY = {
    "lora_rank": None, "lora_alpha": None, "lora_lr": 1e-4, "lora_targets": "to_q,to_k,to_v,to_out.0", "lora_dropout": 0.0,
    "token_steps": None, "loss": "mse", "dco_beta": 1000.0,
    "images": None, "resolution": None, "templates": "object", "flip_p": 0.5, "crop": "center", "validation_prompts": [],
    "encoders": None, "guidance_scale": 3.5,
    "validation_steps": 100, "validation_images": 1, "validation_inference_steps": 25,
}
LM_ONLY = {"texts": None, "max_length": 64}


def flag(name: str) -> str:
    return {"validation_prompts": "--validation-prompt", "progress": "--quiet"}.get(name, "--" + name.replace("_", "-"))


def _check_numbers(cfg: "TrainConfig") -> None:
    for name, (lo, hi, lo_ok) in FLOAT_RANGES.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GeomkitError(f"{flag(name)} {value!r}: must be a number")
        if not math.isfinite(value) or value < lo or (value == lo and not lo_ok) or value > hi:
            low = f">= {lo:g}" if lo_ok else f"> {lo:g}"
            raise GeomkitError(f"{flag(name)} {value}: must be a finite number {low} and <= {hi:g}")
    for name, (lo, hi) in INT_RANGES.items():
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise GeomkitError(f"{flag(name)} {value!r}: must be a whole number")
        if not lo <= value <= hi:
            raise GeomkitError(f"{flag(name)} {value}: must be between {lo} and {hi}")
    k = cfg.keep_checkpoints
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10**8):
        raise GeomkitError(f"--keep-checkpoints {k}: keep at least 1 (leave it out to keep every checkpoint)")
    _check_lora(cfg)
    if cfg.resolution is not None and (isinstance(cfg.resolution, bool) or not isinstance(cfg.resolution, int)
                                       or not 8 <= cfg.resolution <= 8192):
        raise GeomkitError(f"--resolution {cfg.resolution}: a multiple of 8 between 8 and 8192 (e.g. 512, 768, 1024)")
    if cfg.resolution is not None and cfg.resolution % 8:
        raise GeomkitError(f"--resolution {cfg.resolution}: use a multiple of 8 (e.g. 512, 768, 1024)")


def _check_lora(cfg: "TrainConfig") -> None:
    """The LoRA / DCO settings that need no model (rank against the denoiser: once it is loaded)."""
    r = cfg.lora_rank
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= 4096):
        raise GeomkitError(f"--lora-rank {r}: a whole number from 1 (e.g. 4, as the paper's DCO runs, or 32)")
    a = cfg.lora_alpha
    if a is not None and (isinstance(a, bool) or not isinstance(a, (int, float)) or not math.isfinite(a) or a <= 0):
        raise GeomkitError(f"--lora-alpha {a}: must be a positive finite number (default: the rank)")
    if cfg.loss not in LOSSES:
        raise GeomkitError(f"--loss {cfg.loss}: choose one of {', '.join(LOSSES)}")
    if r is not None and cfg.compile:
        raise GeomkitError("--compile with --lora-rank: a compiled denoiser with a peft adapter trained differently from "
                           "the eager one in geomkit's check (torch 2.13, inductor on CPU), so it is refused; drop --compile")
    t = cfg.token_steps
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= cfg.steps):
        raise GeomkitError(f"--token-steps {t}: the token trains from step 1 to N, so N must be between 1 and --steps {cfg.steps}")
    if r is None:
        from dataclasses import fields as _fields

        defaults = {f.name: f.default for f in _fields(TrainConfig)}
        used = [k for k in LORA_OPTIONS if getattr(cfg, k) != defaults[k]]
        if used:
            what = "--loss dco compares the model with the LoRA against it without" if cfg.loss == "dco" else \
                f"{', '.join(flag(k) for k in used)} only {'applies' if len(used) == 1 else 'apply'} with a LoRA"
            raise GeomkitError(f"{what}: add --lora-rank R (e.g. 4)")


def check_device(device: Optional[str]) -> None:
    """--device names a device this machine has (cuda without CUDA is refused here, not mid-run)."""
    if device is not None:
        from geomkit.generation import pick_device

        pick_device(str(device))


def check_model(spec: str) -> None:
    """--model names a model or pipeline folder (checked before the data, so a folder that is not a
    model is reported as such and not as a missing --texts)."""
    from geomkit.models import ALIASES, resolve_spec

    if not spec or not str(spec).strip():
        raise GeomkitError("--model '': give gemma3-270m, a causal LM folder or a diffusers pipeline folder")
    if spec in ALIASES:
        return
    folder = resolve_spec(spec, progress=False)
    if (folder / "model_index.json").is_file():
        from geomkit.models import check_pipeline_folder

        check_pipeline_folder(folder, spec)  # the one pipeline-folder check every command uses
    if not (folder / "model_index.json").is_file() and not (folder / "config.json").is_file():
        raise GeomkitError(f"--model {spec}: not a model folder (it has neither model_index.json, a diffusers pipeline, "
                           "nor config.json, a transformers model)")


def check_objective_options(cfg: "TrainConfig", given=()) -> None:
    """Options of the other objective are refused, not silently ignored: those changed from their
    defaults, and (from the command line) those given at all."""
    other = DIFFUSION_ONLY if cfg.objective == "lm" else LM_ONLY if cfg.objective == "diffusion" else {}
    used = [k for k, default in other.items() if k in given or getattr(cfg, k) != default]
    if used:
        names = ", ".join(dict.fromkeys(flag(k) for k in used))
        raise GeomkitError(f"{names}: only the {'diffusion' if cfg.objective == 'lm' else 'lm'} objective reads "
                           f"{'it' if len(used) == 1 else 'them'}; this run's objective is {cfg.objective} "
                           f"(--model {cfg.model}); drop {'it' if len(used) == 1 else 'them'}")


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
    if cfg.crop not in CROPS:
        raise GeomkitError(f"--crop {cfg.crop}: choose one of {', '.join(CROPS)}")
    if cfg.crossinit_reduction not in REDUCTIONS:
        raise GeomkitError(f"--crossinit-reduction {cfg.crossinit_reduction}: choose one of {', '.join(REDUCTIONS)}")
    from geomkit.train.presets import PRESETS

    if cfg.preset is not None and cfg.preset not in PRESETS:
        raise GeomkitError(f"--preset {cfg.preset}: choose one of {', '.join(PRESETS)}")
    cfg.magnitude = magnitude_spec(cfg.magnitude)
    if isinstance(cfg.kappa, (int, float)) and cfg.kappa < 0:  # the table below says the same, without the hint
        raise GeomkitError(f"--kappa {cfg.kappa}: the vMF concentration must be >= 0 (the paper uses 1e-4)")
    _check_numbers(cfg)
    if not cfg.init_word or not cfg.init_word.strip():
        raise GeomkitError("--init-word is required: a word that is one token and describes the concept (e.g. dog)")
    if not cfg.placeholder or any(ch.isspace() for ch in cfg.placeholder):
        raise GeomkitError(f"--placeholder {cfg.placeholder!r}: a non-empty string without spaces, e.g. <my-dog>")
    from geomkit.train.data import token_strings

    new = token_strings(cfg.placeholder, cfg.num_vectors)
    if cfg.init_word.strip() in new:
        raise GeomkitError(f"--placeholder {cfg.placeholder}: equals --init-word; the placeholder must be a new string "
                           f"(not already in the vocabulary, e.g. <{cfg.init_word.strip()}>) and --init-word the existing "
                           "word it starts from")
    if cfg.prior_word is not None and cfg.prior_word.strip() in new:
        raise GeomkitError(f"--prior-word {cfg.prior_word}: that is the new token itself; give an existing word (or leave "
                           "it out to use --init-word)")
    if cfg.prior_word is not None and not cfg.prior_word.strip():
        raise GeomkitError("--prior-word '': give a word, or leave it out to use --init-word")
    if not str(cfg.out).strip():
        raise GeomkitError("--out '': give the output folder (e.g. runs/my-run)")
    effective_lr(cfg)  # --scale-lr's rate is checked like --lr itself
    cfg.micro_batch_size = micro_batch_spec(cfg.micro_batch_size, cfg.batch_size)
    if cfg.device == "auto":  # as generate takes it: CUDA when present, the default
        cfg.device = None
    check_device(cfg.device)
    check_model(cfg.model)
    from geomkit.train.tracking import check_tracker

    cfg.report_to = check_tracker(cfg.report_to)
    return cfg


def effective_lr(cfg: "TrainConfig", world: Optional[int] = None) -> float:
    """The learning rate a step uses: --lr, times the batch size and the number of processes under
    --scale-lr (as diffusers' textual-inversion scripts scale it). Refused when not finite or
    above 10, as --lr itself."""
    import os

    if not cfg.scale_lr:
        return float(cfg.lr)
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else int(world)
    rate = float(cfg.lr) * int(cfg.batch_size) * world
    if not math.isfinite(rate) or rate > FLOAT_RANGES["lr"][1]:
        raise GeomkitError(f"--scale-lr: --lr {cfg.lr} x batch {cfg.batch_size} x {world} process(es) = {rate:g}, "
                           f"above {FLOAT_RANGES['lr'][1]:g}; lower --lr or drop --scale-lr")
    return rate


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


PATH_OPTIONS = ("model", "texts", "images", "templates")


def same_setting(key: str, a, b) -> bool:
    """Whether two values of a setting name the same thing: equal, equal numbers, or for the
    options that take a path, two spellings of one file or folder (relative, trailing slash, ~)."""
    if a == b or str(a) == str(b):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str) and key in PATH_OPTIONS:
        import os

        pa, pb = os.path.expanduser(a), os.path.expanduser(b)
        if os.path.abspath(pa) == os.path.abspath(pb):
            return True
        return os.path.exists(pa) and os.path.exists(pb) and os.path.samefile(pa, pb)
    return False


def absolute_paths(cfg: "TrainConfig") -> "TrainConfig":
    """The options that name a file or folder, made absolute (symlinks kept), so that the run's
    config.json and checkpoints can be resumed from any folder. Names that are not paths stay as
    given: model aliases and org/name repo ids, shipped concepts (glimmerfox), object/style."""
    import os

    from geomkit.models import ALIASES

    for key in PATH_OPTIONS:
        value = getattr(cfg, key)
        if not isinstance(value, str) or not value.strip():
            continue
        if (key == "model" and value in ALIASES) or (key == "templates" and value in ("object", "style")):
            continue
        path = os.path.expanduser(value)
        if (os.path.isfile(path) if key in ("texts", "templates") else os.path.isdir(path)):
            setattr(cfg, key, os.path.abspath(path))
    return cfg
