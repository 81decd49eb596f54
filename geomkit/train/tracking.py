"""`train --report-to tensorboard|wandb`: the run's scalars (loss, norm, angle from init, cosine
to the prior, lr, per text encoder) and its validation images, logged as the diffusers example
scripts do. TensorBoard event files go to OUT/logs (view with `tensorboard --logdir OUT/logs`);
wandb logs offline into OUT/wandb unless WANDB_MODE says otherwise (geomkit never needs the
network). Checked before anything loads: a tracker whose package is not installed is one line."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from geomkit.errors import GeomkitError

TRACKERS = ("tensorboard", "wandb")
LOGGED = ("loss", "norm", "angle_from_init_deg", "cos_to_prior", "lr")  # and their _2 twins (SDXL)


def check_tracker(name: Optional[str]) -> Optional[str]:
    """None, or a tracker whose package is installed; else a one-line GeomkitError."""
    if name in (None, "", "none"):
        return None
    if name not in TRACKERS:
        raise GeomkitError(f"--report-to {name}: choose tensorboard or wandb")
    import importlib.util

    package = "tensorboard" if name == "tensorboard" else "wandb"
    if importlib.util.find_spec(package) is None:
        raise GeomkitError(f"--report-to {name}: the {package} package is not installed (pip install {package}); "
                           "or leave --report-to out (train_log.jsonl holds the same numbers)")
    return name


def scalars(line: dict) -> dict:
    """The numbers of a train_log line that a tracker shows: {"train/loss": ..., "train/norm_2": ...}."""
    out = {}
    for key, value in line.items():
        base = key[:-2] if key.endswith(("_2", "_3")) else key
        if base in LOGGED and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"train/{key}"] = float(value)
    return out


class Tracker:
    """One run's tracker; every method is a no-op for `name` None (so the trainer calls it always)."""

    def __init__(self, name: Optional[str], out_dir, config: Optional[dict] = None):
        self.name = check_tracker(name)
        self._writer = self._run = None
        out = Path(out_dir)
        if self.name == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(out / "logs"))
            if config:
                self._writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())), 0)
        elif self.name == "wandb":
            import os

            import wandb

            os.environ.setdefault("WANDB_MODE", "offline")
            self._run = wandb.init(project="geomkit", dir=str(out), config=config or {}, reinit=True)

    def log(self, step: int, line: dict) -> None:
        values = scalars(line)
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, step)
        elif self._run is not None:
            self._run.log(values, step=step)

    def images(self, step: int, paths: Sequence) -> None:
        """Validation images (PNG files the objective wrote) under "validation"."""
        paths = [Path(p) for p in paths if str(p).endswith(".png")]
        if not paths or (self._writer is None and self._run is None):
            return
        import numpy as np
        from PIL import Image

        arrays = []
        for p in paths:
            with Image.open(p) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        if self._writer is not None:
            for k, a in enumerate(arrays):
                self._writer.add_image(f"validation/{k}", a, step, dataformats="HWC")
        else:
            import wandb

            self._run.log({"validation": [wandb.Image(a) for a in arrays]}, step=step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._run is not None:
            self._run.finish()
            self._run = None
