"""The trained-token experiment with seeds, concepts and controls (issue 18).

Every trained-token claim used to rest on one concept, one seed and one run per method. Here
each (concept, seed) trains three tokens on the LM objective:

- `ti-rescaled` (TI with AdamW, `--method ti-rescaled`; its file `learned_embeds_unrescaled` is
  the plain TI token, the same trajectory as `--method ti`, and `learned_embeds` is that token set
  to norm m*): the **norm control**, TI's direction at the vocabulary's norm;
- `dti` (kappa 1e-4, the paper's setting);
- `dti-kappa0` (kappa 0): the **prior control**, showing what the vMF pull adds to the same
  Riemannian steps.

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
TRAININGS = {"ti-rescaled": ("ti-rescaled", []), "dti": ("dti", []), "dti-kappa0": ("dti", ["--kappa", "0"])}
# the four measured methods: method -> (training, file inside the run folder)
METHOD_FILES = {
    "ti": ("ti-rescaled", "learned_embeds_unrescaled.safetensors"),
    "ti-rescaled": ("ti-rescaled", "learned_embeds.safetensors"),
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



# ---- measurement steps ----------------------------------------------------------------------
ANGLES, PROBE = f"{FOLDER}/angles", f"{FOLDER}/probe"


def measure_steps(root, quick: bool, step_cls, probe_models=("whisper-tiny-en",)) -> list:
    """One residual-angles call and (where the model has absolute positions) one position-probe
    call over every token of a model's seed runs. The probe is the one the model's probe-position
    step trained, evaluated (never retrained), so every token is read by the same probe."""
    steps = []
    for model in PLANS:
        files = [f for *_, f in measured_files(root, model, quick)]
        if not files:
            continue
        # one word at m = 1 as the reference row; the learned tokens are what this step is for
        steps.append(step_cls(ANGLES, model, ["residual-angles", "--model", model, "--scales", "1", "--words", "dog",
                                              "--embedding", *files]))
        if model in probe_models:
            argv = ["probe-position", "--model", model, "--scales", "1", "--embedding", *files,
                    "--load-probe", str(root / model / "probe-position" / "probe")]
            if quick:
                argv += ["--max-prompts", "40"]
            steps.append(step_cls(PROBE, model, argv))
    return steps


# DTI-DTI interpolation (Sec. 4.5): slerp between the seed-1 DTI tokens of two concepts
PAIRS_INTERP = (("glimmerfox", "emberkettle"), ("emberkettle", "hollowmere"), ("glimmerfox", "hollowmere"))
RATIOS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


def interpolation_steps(root, quick: bool, step_cls) -> list:
    """`interpolate --neighbors` between DTI tokens of different concepts on Whisper: both ends sit
    at m*, so slerp keeps every interpolant there by construction; what can fail is how the
    cosine neighbours move along the path."""
    model = "whisper-tiny-en"
    concepts = PLANS[model]["quick" if quick else "full"][0]
    steps = []
    for a, b in PAIRS_INTERP:
        if a in concepts and b in concepts:
            fa, fb = (str(root / model / run_name(c, 1, "dti") / "learned_embeds.safetensors") for c in (a, b))
            steps.append(step_cls(f"interpolate-dti/{a}-{b}", model, ["interpolate", fa, fb, "--mode", "slerp", "--ratios", RATIOS,
                                                                       "--neighbors", "10", "--model", model]))
    return steps


# ---- the summary (pure: results dicts in, rows and statistics out) ------------------------------
def _labels(files: list) -> list:
    """The display label `residual-angles` / `probe-position` give each file (same rule, same order)."""
    from geomkit.embeddings_io import distinct_names, read_embedding

    return distinct_names(files, [read_embedding(f).name for f in files])


def stat(values) -> dict:
    """mean, min, max and n of the non-null values (all null: n 0, the rest null)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": sum(xs) / len(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def run_rows(measured: list, labels: list, train_results: dict, angles: Optional[dict], probe: Optional[dict]) -> list:
    """One row per measured token: (concept, seed, method, file) from `measured`, its label in
    the measurement outputs, the training run's results (`train_results[(concept, seed, training)]`).
    cos_to_prior, related_cosine and angle_from_init_deg depend on the direction only, so a TI
    token and its rescaled copy share them; the rescaled copy's loss was never measured (null)."""
    angle_of = {}
    if angles:
        angle_of = {r["concept"]: r["mean_angle_deg"] for r in angles["rows"] if r["scale"] is None}
    pos_of = (probe or {}).get("embeddings") or {}
    rows = []
    for (concept, seed, method, f), label in zip(measured, labels):
        training = METHOD_FILES[method][0]
        tr = train_results.get((concept, seed, training)) or {}
        m_star = (tr.get("m_star") or [None])[0]
        norm = file_norm(f)
        drift = tr.get("drift") or {}
        rows.append({
            "concept": concept, "seed": seed, "method": method,
            "norm_ratio": norm / m_star if (norm is not None and m_star) else None,
            "angle_deg": angle_of.get(label),
            "position_accuracy": pos_of.get(label) if probe is not None else None,
            "steps": tr.get("steps"),
            "cos_to_prior": tr.get("cos_to_prior"),
            "angle_from_init_deg": tr.get("angle_from_init_deg"),
            "related_cosine": stat(drift.values())["mean"],
            # a ti-rescaled token was never trained at m*: its loss is TI's, not its own (not measured)
            "final_loss_mean10": None if method == "ti-rescaled" else tr.get("final_loss_mean10"),
            "kappa": tr.get("kappa") if training != "ti-rescaled" else None,
            "label": label,
            "file": f,
        })
    return rows


def file_norm(path) -> float:
    """Mean row norm of a one-token file (LM runs learn one vector)."""
    from geomkit.embeddings_io import read_embedding

    part = next(iter(read_embedding(path).parts.values()))
    return float(part.double().norm(dim=-1).mean())


METRICS = ("norm_ratio", "angle_deg", "position_accuracy", "cos_to_prior", "related_cosine", "angle_from_init_deg",
           "final_loss_mean10")
# (name, metric, method a, method b, "ratio" a/b or "diff" a-b): each compares two tokens of one
# (concept, seed). The controls split what TI vs DTI confounds: ti-rescaled has TI's direction at
# DTI's norm, dti-kappa0 is DTI without the prior.
PAIRS = (
    ("angle_dti_over_ti", "angle_deg", "dti", "ti", "ratio"),
    ("angle_ti_rescaled_over_ti", "angle_deg", "ti-rescaled", "ti", "ratio"),
    ("angle_dti_over_ti_rescaled", "angle_deg", "dti", "ti-rescaled", "ratio"),
    ("angle_dti_kappa0_over_dti", "angle_deg", "dti-kappa0", "dti", "ratio"),
    ("position_dti_minus_ti", "position_accuracy", "dti", "ti", "diff"),
    ("position_ti_rescaled_minus_ti", "position_accuracy", "ti-rescaled", "ti", "diff"),
    ("position_dti_minus_ti_rescaled", "position_accuracy", "dti", "ti-rescaled", "diff"),
    ("related_cosine_dti_minus_ti", "related_cosine", "dti", "ti", "diff"),
    ("cos_to_prior_dti_minus_dti_kappa0", "cos_to_prior", "dti", "dti-kappa0", "diff"),
)


def summarise(rows: list) -> dict:
    """Per method, each metric's mean/min/max/n over (concept, seed); per pair, the same over the
    per-(concept, seed) ratio or difference."""
    by_method = {m: {k: stat(r[k] for r in rows if r["method"] == m) for k in METRICS} for m in METHODS}
    index = {(r["concept"], r["seed"], r["method"]): r for r in rows}
    keys = sorted({(r["concept"], r["seed"]) for r in rows})
    paired = {}
    for name, metric, a, b, how in PAIRS:
        vals = []
        for c, s in keys:
            x, y = (index.get((c, s, a)) or {}).get(metric), (index.get((c, s, b)) or {}).get(metric)
            if x is None or y is None or (how == "ratio" and not y):
                continue
            vals.append(x / y if how == "ratio" else x - y)
        paired[name] = dict(stat(vals), compares=f"{metric}: {a} {'/' if how == 'ratio' else '-'} {b} per (concept, seed)")
    return {
        "concepts": sorted({r["concept"] for r in rows}),
        "seeds": sorted({r["seed"] for r in rows}),
        "steps": sorted({r["steps"] for r in rows if r["steps"] is not None}),
        "n_pairs": len(keys),  # (concept, seed) pairs; each trained three runs and gives four tokens
        "by_method": by_method,
        "paired": paired,
    }


def collect(root, model: str, quick: bool) -> Optional[dict]:
    """{"runs": [...], "summary": {...}} for `model` from its finished steps, or None when a
    training or the angles step has not finished."""
    import json
    from pathlib import Path

    def load(step):
        try:
            return json.loads((Path(root) / model / step / "results.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    measured = measured_files(Path(root), model, quick)
    if not measured:
        return None
    trains = {(c, s, t): load(run_name(c, s, t)) for c, s, t in runs(model, quick)}
    angles = load(ANGLES)
    if angles is None or any(v is None for v in trains.values()):
        return None
    probe = load(PROBE)
    files = [f for *_, f in measured]
    rows = run_rows(measured, _labels(files), trains, angles, probe)
    for r in rows:  # paths relative to the results root: the file moves with the folder
        r["file"] = str(Path(r["file"]).relative_to(Path(root) / model))
    return {"model": model, "positions": "absolute" if probe is not None else "none (RoPE): position_accuracy is null",
            "runs": rows, "summary": summarise(rows)}


# ---- the figure ------------------------------------------------------------------------------------
COLORS = {"ti": "C1", "ti-rescaled": "C2", "dti": "C0", "dti-kappa0": "C9"}
PANELS = (("norm_ratio", "norm / m* (dotted: m*)", True), ("angle_deg", "mean per-block angle (deg)", False),
          ("position_accuracy", "position-probe accuracy at the token", False))


def figure(res: dict):
    """One panel per measured quantity, methods on the x-axis, one dot per (concept, seed) run
    (concepts told apart by marker) and the mean as a bar: n and the spread are visible."""
    from geomkit.report import figure as new_figure

    panels = [p for p in PANELS if any(r[p[0]] is not None for r in res["runs"])]
    fig, first = new_figure(4.0 * len(panels), 3.8)  # the Agg backend, then one panel per quantity
    fig.delaxes(first)
    axes = list(fig.subplots(1, len(panels), squeeze=False)[0])
    concepts = res["summary"]["concepts"]
    markers = {c: "osD^v<>ph*"[i % 10] for i, c in enumerate(concepts)}
    for ax, (key, label, log) in zip(axes, panels):
        for i, m in enumerate(METHODS):
            vals = [(r["concept"], r[key]) for r in res["runs"] if r["method"] == m and r[key] is not None]
            if not vals:
                continue
            mean = sum(v for _, v in vals) / len(vals)
            ax.bar(i, mean, width=0.6, color=COLORS[m], alpha=0.35)
            for j, (c, v) in enumerate(vals):
                ax.plot(i + (j - (len(vals) - 1) / 2) * 0.5 / max(len(vals), 1), v, marker=markers[c], color=COLORS[m],
                        linestyle="none", markersize=4)
        ax.set_xticks(range(len(METHODS)), METHODS, rotation=20)
        ax.set_ylabel(label)
        if log:  # the norm panel: m* as the reference line, from 0 so ratios read as lengths
            ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
            ax.set_ylim(bottom=0)
        if key == "position_accuracy":
            ax.set_ylim(-0.03, 1.05)
    for c, mk in markers.items():
        axes[0].plot([], [], marker=mk, color="grey", linestyle="none", label=c)
    axes[0].legend(fontsize=7, title="concept", title_fontsize=7, loc="upper right")
    s = res["summary"]
    fig.suptitle(f"{res['model']}: trained tokens, {len(concepts)} concept(s) x {len(s['seeds'])} seeds, "
                 f"{'/'.join(map(str, s['steps']))} LM steps (dots: runs, bars: means)", fontsize=10)
    fig.tight_layout()
    return fig
