"""The DTI / TI trainer: `geomkit train`, or `train(TrainConfig(...))` from Python.

Modules: `config` (settings and input checks), `params` (direction + fixed magnitude, or a free
embedding), `optim` (RSGD of Algorithm 1, the AdamW variants), `objectives` (diffusion, lm),
`data` (images, templates, corpus, example order), `checkpoint` (atomic, bit-exact resume),
`exports` (diffusers / SDXL community formats), `loop` (the training loop).
"""

from geomkit.train.config import METHODS, TrainConfig


def train(cfg: TrainConfig, given=()) -> dict:
    """Train (see geomkit.train.loop.train); imports torch only when called."""
    from geomkit.train.loop import train as _train

    return _train(cfg, given)


def conditioning(model, prompts, embedding, device: str = "cpu") -> dict:
    """What the trainer feeds the denoiser for `prompts` with the token of `embedding` in place
    (see geomkit.train.text_conditioning.conditioning); imports torch only when called."""
    from geomkit.train.text_conditioning import conditioning as _conditioning

    return _conditioning(model, prompts, embedding, device)


__all__ = ["METHODS", "TrainConfig", "conditioning", "train"]
