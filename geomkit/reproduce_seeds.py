"""The trained-token experiment with seeds, concepts and controls (issue 18).

Every trained-token claim used to rest on one concept, one seed and one run per method. Here
each (concept, seed) trains three tokens on the LM objective:

- `ti-rescaled` (TI with AdamW; its file `learned_embeds_unrescaled` is the plain TI token, the
  same trajectory as `--method ti`, and `learned_embeds` is that token set to norm m*): the
  **norm control**, same direction as TI, vocabulary norm;
- `dti` (kappa 1e-4, the paper's setting);
- `dti-kappa0` (kappa 0): the **prior control**, telling the vMF pull from the atan(lr) step cap.

The seed changes the order of the training sentences (the init word fixes the start). All runs
of a model are measured together by one `residual-angles` and one `probe-position` call, and
`summarise` reduces them to `trained-seeds/results.json`.
"""

from __future__ import annotations

from typing import Optional

# concept: (placeholder, init word); corpora and related words live in geomkit/data/concepts
CONCEPTS = {
    "glimmerfox": ("<glimmerfox>", "fox"),
    "emberkettle": ("<emberkettle>", "kettle"),
    "hollowmere": ("<hollowmere>", "lake"),
}
SEEDS = (1, 2, 3)
# the three trainings of a (concept, seed): step suffix -> (train --method, extra flags)
TRAININGS = {"ti": ("ti-rescaled", []), "dti": ("dti", []), "dti-kappa0": ("dti", ["--kappa", "0"])}
# the four measured methods: method -> (training, file inside the run folder)
METHOD_FILES = {
    "ti": ("ti", "learned_embeds_unrescaled.safetensors"),
    "ti-rescaled": ("ti", "learned_embeds.safetensors"),
    "dti": ("dti", "learned_embeds.safetensors"),
    "dti-kappa0": ("dti-kappa0", "learned_embeds.safetensors"),
}
METHODS = tuple(METHOD_FILES)
# per model: concepts, seeds, steps, batch (full / quick). Gemma: ~0.8 s a step on an idle 2-core
# CPU, so one concept; Whisper tiny.en: ~0.13 s a step, so three.
PLANS = {
    "whisper-tiny-en": {"full": (tuple(CONCEPTS), SEEDS, "500", "4"), "quick": (("glimmerfox", "emberkettle"), (1, 2), "20", "2")},
    "gemma3-270m": {"full": (("glimmerfox",), SEEDS, "300", "4"), "quick": None},
}
FOLDER = "trained-seeds"


def run_name(concept: str, seed: int, training: str) -> str:
    return f"{FOLDER}/{concept}-s{seed}-{training}"


def runs(model: str, quick: bool) -> list[tuple[str, int, str]]:
    """(concept, seed, training) of every training run of `model`."""
    p = PLANS[model]["quick" if quick else "full"]
    if p is None:
        return []
    concepts, seeds, _, _ = p
    return [(c, s, t) for c in concepts for s in seeds for t in TRAININGS]


def train_argv(model: str, concept: str, seed: int, training: str, quick: bool) -> list:
    placeholder, init = CONCEPTS[concept]
    _, _, steps, batch = PLANS[model]["quick" if quick else "full"]
    method, extra = TRAININGS[training]
    return ["train", "--objective", "lm", "--method", method, *extra, "--model", model, "--texts", concept,
            "--placeholder", placeholder, "--init-word", init, "--related", concept, "--steps", steps,
            "--batch-size", batch, "--seed", str(seed)]


def measured_files(root, model: str, quick: bool) -> list[tuple[str, int, str, str]]:
    """(concept, seed, method, file) of every token measured on `model`."""
    out = []
    for concept, seed, training in runs(model, quick):
        for method, (tr, name) in METHOD_FILES.items():
            if tr == training:
                out.append((concept, seed, method, str(root / model / run_name(concept, seed, training) / name)))
    return out


def training_steps(root, quick: bool, step_cls) -> list:
    steps = []
    for model in PLANS:
        for concept, seed, training in runs(model, quick):
            steps.append(step_cls(run_name(concept, seed, training), model, train_argv(model, concept, seed, training, quick)))
    return steps


def pick(seq, key) -> Optional[object]:
    return next((x for x in seq if key(x)), None)
