"""Training objectives. Each one owns its frozen models and data and exposes

    encoders                      the text encoder(s) whose new rows are learned (private tokenizers)
    setup(slots)                  tokenise once, now that the placeholder ids are known
    loss(vectors, step, rank, world) -> scalar tensor, with the learned rows injected
    validate(slots, step, out)    optional sample outputs (diffusion: images)
    describe() -> dict            facts for config.json / results.json
"""

from __future__ import annotations

from pathlib import Path

from geomkit.errors import GeomkitError


def detect(cfg) -> str:
    """--objective auto: a diffusers pipeline folder trains `diffusion`, anything else `lm`."""
    if cfg.objective != "auto":
        return cfg.objective
    from geomkit.models import ALIASES

    if cfg.model in ALIASES:
        return "lm"
    p = Path(cfg.model).expanduser()
    return "diffusion" if (p / "model_index.json").is_file() else "lm"


def pipeline_kind_of(cfg) -> str:
    """"lm", or the pipeline kind ("sd", "sdxl", "sana", "flux", "sd3") of the diffusion objective's --model."""
    if cfg.objective == "lm":
        return "lm"
    from geomkit.generation import pipeline_dir
    from geomkit.train.text_conditioning import pipeline_kind

    return pipeline_kind(pipeline_dir(cfg.model))


def check_inputs(cfg, objective: str) -> dict:
    """Data checks that need no model (run before any loading): returns what was read."""
    from geomkit.train import data

    if objective == "lm":
        if not cfg.texts:
            raise GeomkitError("--objective lm needs --texts FILE: sentences that use the placeholder, one a line "
                               "(shipped example: --texts glimmerfox --placeholder '<glimmerfox>')")
        path, lines = data.read_corpus(cfg.texts, cfg.placeholder)
        return {"texts_path": path, "lines": lines}
    if not cfg.images:
        raise GeomkitError("--objective diffusion needs --images DIR: a folder of jpg/png/webp images of the concept")
    files = data.list_images(cfg.images)
    data.check_images(files)
    templates = data.load_templates(cfg.templates)
    return {"files": files, "templates": templates}


def build(cfg, objective: str, inputs: dict, device):
    if objective == "lm":
        from geomkit.train.objectives.lm import LMObjective

        return LMObjective(cfg, inputs, device)
    from geomkit.train.objectives.diffusion import build as build_diffusion

    return build_diffusion(cfg, inputs, device)
