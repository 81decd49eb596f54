"""`geomkit reproduce --t5-random`: the paper's mechanisms checked on a T5 encoder with RANDOM weights.

No real T5 weights install from the package registries, so these rows run the same commands on the T5
encoder of a tiny random FLUX.1 pipeline (`geomkit.tiny`, locally trained tokenizer): they show that
each measurement works on a pre-norm RMSNorm encoder with relative position buckets, and nothing about
real T5 models. The same commands on your own FLUX.1 (`--encoder 2`) or SD3.x (`--encoder 3`) folder
give real numbers. Raw outputs under `<results>/tiny-random-t5/`, the table in
`<figures>/REPORT-T5-RANDOM.md`.
"""

from __future__ import annotations

from pathlib import Path

from geomkit.reproduce import Step, _fmt, _load, command_line, shared_fractions

T5_RANDOM = "tiny-random-t5"
MODEL_LABEL = "T5 of a tiny random FLUX.1 (random weights)"
WORDS = ("dog", "cat", "house")
VERDICT = "n/a (random weights: a mechanism check, not a finding)"


def pipeline_dir(root: Path) -> Path:
    return Path(root) / T5_RANDOM / "pipeline"


def prepare(root: Path) -> None:
    """The tiny random FLUX.1 pipeline and a few random training images (seeded; rebuilt when absent)."""
    import numpy as np
    from PIL import Image

    from geomkit import tiny

    pipe = pipeline_dir(root)
    if not (pipe / "model_index.json").is_file():
        tiny.save_flux_pipeline(pipe)
    images = Path(root) / T5_RANDOM / "images"
    if not images.is_dir():
        images.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for k in range(4):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(images / f"{k}.png")


def steps(root: Path) -> list[Step]:
    pipe = str(pipeline_dir(root))
    model = ["--model", pipe, "--encoder", "2"]
    out = [
        Step("neighbors", T5_RANDOM, ["neighbors", *WORDS, *model, "-k", "10"]),
        Step("norms", T5_RANDOM, ["norms", *model]),
        Step("probe-position", T5_RANDOM, ["probe-position", *model, "--scales", "0.5,1,4,16", "--epochs", "15",
                                           "--max-prompts", "120"]),
        Step("residual-angles", T5_RANDOM, ["residual-angles", *model, "--scales", "1,4,16,64", "--words", "dog,cat,house,car",
                                            "--max-prompts", "8"]),
        Step("attenuation", T5_RANDOM, ["attenuation", *model, "--tokens", "40"]),
    ]
    for method in ("ti", "dti"):
        out.append(Step(f"train-{method}", T5_RANDOM, [
            "train", "--model", pipe, "--images", str(Path(root) / T5_RANDOM / "images"), "--placeholder", "<cat-toy>",
            "--init-word", "toy", "--method", method, "--encoders", "t5", "--steps", "20", "--batch-size", "2",
            "--resolution", "32", "--lr", "0.05", "--seed", "42", "--quiet"]))
    return out


def claims(root: Path) -> list[dict]:
    """One row per mechanism, every one marked as random weights."""
    rows = []

    def row(claim, paper, ours, step):
        rows.append({"claim": claim, "paper": paper, "model": MODEL_LABEL, "geomkit": ours, "agrees": VERDICT, "step": step})

    nb, nm = _load(root, T5_RANDOM, "neighbors"), _load(root, T5_RANDOM, "norms")
    if nb:
        shared = shared_fractions(nb, WORDS)
        cv = nm["std"] / nm["mean"] if nm else None
        row("Table 1/5: Euclidean vs cosine neighbours", "apple: 0/5 shared (CLIP-L)",
            f"top-10 shared {sum(shared) / len(shared):.0%} (mean of {', '.join(WORDS)}); norm std/mean {_fmt(cv, '.3f')}",
            "neighbors")
    tr = {m: _load(root, T5_RANDOM, f"train-{m}") for m in ("ti", "dti")}
    if all(tr.values()):
        ti, dti = tr["ti"], tr["dti"]
        row("Fig. 1a: TI moves the norm, DTI keeps it at m*", "TI > 20 vs mean 0.4 (CLIP)",
            f"after 20 steps at lr 0.05 (FLUX objective, --encoders t5): TI {ti['final_norm'][0]:.3f} "
            f"({ti['final_norm'][0] / ti['m_star'][0]:.3f}x m* {ti['m_star'][0]:.3f}), DTI {dti['final_norm'][0]:.3f} "
            f"({dti['final_norm'][0] / dti['m_star'][0]:.3f}x)", "train-ti")
    pp = _load(root, T5_RANDOM, "probe-position")
    if pp:
        acc = ", ".join(f"m={m:g}: {a:.0%}" for m, a in zip(pp["scales"], pp["accuracy"]))
        row("Fig. 2: position probe; accuracy as one token's norm is scaled", "100%, falling towards 0% by m = 16",
            f"no LN(e + p) (positions: {pp.get('positions')}): probed at {pp['site']} (automatic); normal "
            f"{pp['baseline_accuracy']:.0%} (chance {pp['chance']:.0%}); {acc}", "probe-position")
    ra = _load(root, T5_RANDOM, "residual-angles")
    if ra:
        by_scale = {}
        for r in ra["rows"]:
            if r["scale"] is not None:
                by_scale.setdefault(r["scale"], []).append(r["mean_angle_deg"])
        text = ", ".join(f"m={m:g}: {sum(v) / len(v):.2f} deg" for m, v in sorted(by_scale.items()))
        row("Effect II: per-block angle as the norm grows", "angle ~ 1/||x||", text, "residual-angles")
    at = _load(root, T5_RANDOM, "attenuation")
    if at:
        text = f"not applicable: {at['reason']}" if not at.get("applicable", True) else f"slope {_fmt(at.get('loglog_slope'), '.3f')}"
        row("Lemma 1: ||Norm(mv + p) - Norm(mv)|| ~ 1/m", "log-log slope -1", text, "attenuation")
    return rows


def write_report(root: Path, figures: Path, status: list[dict]) -> Path:
    from geomkit.report import markdown_table, write_json, write_text

    rows = claims(root)
    commands = {st.name: command_line(st) for st in steps(root)}
    table = [{"claim": r["claim"], "paper": r["paper"], "model": r["model"], "geomkit": r["geomkit"], "agrees": r["agrees"],
              "command": f"`{commands.get(r['step'], r['step'])}`"} for r in rows]
    text = [
        "# T5 mechanism checks on RANDOM weights",
        "",
        "No real T5 weights install from the package registries. These rows run geomkit's measurements on the T5 "
        "encoder of a tiny random FLUX.1 pipeline (pre-norm RMSNorm, relative position buckets, no absolute positions; "
        "tokenizer trained locally): they check that each mechanism runs on a T5 encoder and **are not findings about "
        "real T5 models**. Run the same commands on your own FLUX.1 folder (`--encoder 2`) or SD3.x folder "
        "(`--encoder 3`) for real numbers. Regenerate with `geomkit reproduce --t5-random`.",
        "",
        markdown_table(table),
        "",
        "## Steps",
        "",
        markdown_table([{"step": s["step"], "status": s["status"], "seconds (when it ran)": "" if s["seconds"] is None else s["seconds"]}
                        for s in status]),
        "",
    ]
    write_json(figures / "claims-t5-random.json", {"random_weights": True, "claims": rows, "steps": status})
    return write_text(figures / "REPORT-T5-RANDOM.md", "\n".join(text))
