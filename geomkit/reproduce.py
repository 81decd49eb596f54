"""`geomkit reproduce`: every claim of the paper that can be measured here, re-measured on the real
models reachable from the package registry, through the same commands a user runs.

Each step is one `geomkit` command run in-process; a step whose `results.json` exists is reused
(resumable). Raw outputs go under `<results>/<model>/<step>/`, key figures are copied to
`<figures>/`, and `<figures>/REPORT.md` holds the claim-by-claim table.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

MODELS = ("gemma3-270m", "minilm-l6", "whisper-tiny-en")
WORDS = ("apple", "study", "writing")
CONCEPT = "glimmerfox"
PLACEHOLDER = "<glimmerfox>"
GEMMA_SITE = "blocks.3.resid_post"  # Gemma has RoPE, no LN(e+p): probe after a few blocks instead


@dataclass
class Step:
    name: str
    model: str
    argv: list
    figure: Optional[str] = None  # PNG inside the step folder to copy into figures/
    prepare: Optional[Callable[[Path], None]] = None  # writes the step's input files into its folder first


def scaled_word_file(model: str, word: str, m: float, name: str) -> Callable[[Path], None]:
    """A `prepare` that writes `word`'s own embedding times `m` as a one-token file `name` in the
    step's folder: a synthetic inflated token on a real model (not a trained one; the report says so)."""
    def write(out: Path) -> None:
        from geomkit.embeddings_io import save_learned
        from geomkit.models import load_encoder

        enc = load_encoder(model)
        vec = enc.embedding_table()[enc.token_id(word)].float() * m
        save_learned(out / "input" / f"{name}.safetensors", f"<{name}>", vec[None])
    return write


def inspect_steps(root: Path, quick: bool) -> list[Step]:
    """The outputs behind the README's `inspect` examples: the Gemma TI/DTI tokens, and MiniLM's own
    `river` row scaled 8x with its rescaled copy."""
    gem = root / "gemma3-270m"
    files = [str(gem / n / "learned_embeds.safetensors") for n in ("train-ti", "train-dti")]
    steps = [Step("inspect", "gemma3-270m", ["inspect", *files, "--model", "gemma3-270m", "--fix", "rescale"],
                  figure="inspect.png")]
    river = root / "minilm-l6" / "inspect-river-x8" / "input" / "river-x8.safetensors"
    steps.append(Step("inspect-river-x8", "minilm-l6", ["inspect", str(river), "--model", "minilm-l6", "--fix", "rescale"]
                      + (["--max-prompts", "150", "--max-templates", "8"] if quick else []),
                      prepare=scaled_word_file("minilm-l6", "river", 8.0, "river-x8")))
    return steps


def shared_fractions(nb: dict, words) -> list:
    """Per query word of a neighbors results.json: the share of its cosine neighbours that are also
    its Euclidean ones (Table 1's contrast)."""
    out = []
    for q in words:
        e = nb["queries"].get(q)
        if e:
            c = {x["token"] for x in e["cosine"]}
            out.append(len(c & {x["token"] for x in e["euclidean"]}) / len(c))
    return out

def _sizes(quick: bool) -> dict:
    if quick:
        return dict(max_prompts="40", epochs="15", scales="0.5,1,4,16", words="apple,dog", templates="8",
                    tokens="40", steps="30", batch="2", att_scales="1,4,16,64,256")
    return dict(max_prompts="0", epochs="40", scales="0.5,1,2,4,8,16", words="apple,dog,house,tree,car,cat",
                templates="0", tokens="200", steps="300", batch="4", att_scales="")


# Trained tokens where the architecture shows Effects I/II (issue 10): TI and DTI on the Whisper
# decoder at the paper's settings, a TI run at a higher learning rate so its norm reaches a large
# multiple of m*, and the same high-norm TI on Gemma; then angles, probe and neighbours of the tokens.
WHISPER_STEPS = {"full": "500", "quick": "20"}
HIGH_LR = {"whisper-tiny-en": "5e-2", "gemma3-270m": "5e-2"}
GEMMA_HIGHLR_STEPS = "40"  # lr 5e-2 lifts the norm ~3x in 5 steps; ~3 s a step on an idle 2-core CPU, not run with --quick


def _train(model: str, method: str, steps: str, batch: str, lr: Optional[str] = None) -> list:
    argv = ["train", "--objective", "lm", "--method", method, "--model", model, "--texts", CONCEPT,
            "--placeholder", PLACEHOLDER, "--init-word", "fox", "--related", CONCEPT, "--steps", steps,
            "--batch-size", batch, "--seed", "42"]  # its progress bar shows: training steps are reproduce's longest phase
    return argv + (["--lr", lr] if lr else [])


def trained_token_steps(root: Path, quick: bool) -> list[Step]:
    """Steps of the trained-token experiments (issue 10), after the per-model steps they reuse."""
    s = _sizes(quick)
    steps: list[Step] = []
    wh, gem = "whisper-tiny-en", "gemma3-270m"
    wsteps, wbatch = WHISPER_STEPS["quick" if quick else "full"], "4"
    steps.append(Step("train-ti", wh, _train(wh, "ti", wsteps, wbatch)))
    steps.append(Step("train-dti", wh, _train(wh, "dti", wsteps, wbatch)))
    steps.append(Step("train-ti-highlr", wh, _train(wh, "ti", wsteps, wbatch, HIGH_LR[wh])))
    if not quick:
        steps.append(Step("train-ti-highlr", gem, _train(gem, "ti", GEMMA_HIGHLR_STEPS, "4", HIGH_LR[gem])))
    for model in (wh, gem):
        if quick and model == gem:
            continue
        files = [str(root / model / n / "learned_embeds.safetensors") for n in ("train-ti", "train-dti", "train-ti-highlr")]
        # the words also at large m, so the README's large-m angles have a committed source
        scales = "1,16" if quick else "1,16,64,256"
        angles = ["residual-angles", "--model", model, "--scales", scales, "--words", s["words"], "--embedding", *files]
        if s["templates"] != "0":
            angles += ["--max-prompts", s["templates"]]
        steps.append(Step("trained-angles", model, angles, figure="residual_angles.png"))
        # the probe the probe-position step trained on the same prompts, evaluated (never retrained or rewritten)
        probe = ["probe-position", "--model", model, "--scales", "1", "--embedding", *files,
                 "--load-probe", str(root / model / "probe-position" / "probe")]
        if s["max_prompts"] != "0":
            probe += ["--max-prompts", s["max_prompts"]]
        if model == gem:
            probe += ["--site", GEMMA_SITE]
        steps.append(Step("trained-probe", model, probe, figure="position_probe.png"))
        steps.append(Step("trained-neighbors", model, ["neighbors", "--model", model, "-k", "10", "--embedding", *files]))
    return steps


def plan(root: Path, quick: bool) -> list[Step]:
    s = _sizes(quick)
    steps: list[Step] = []
    gem = root / "gemma3-270m"
    ti_file = str(gem / "train-ti" / "learned_embeds.safetensors")
    dti_file = str(gem / "train-dti" / "learned_embeds.safetensors")
    for method in ("ti", "dti"):
        steps.append(Step(f"train-{method}", "gemma3-270m", [
            "train", "--objective", "lm", "--method", method, "--model", "gemma3-270m", "--texts", CONCEPT,
            "--placeholder", PLACEHOLDER, "--init-word", "fox", "--related", CONCEPT, "--steps", s["steps"],
            "--batch-size", s["batch"], "--seed", "42"]))  # progress shown: the longest steps
    learned = ["--embedding", ti_file, dti_file]
    for model in MODELS:
        gemma = model == "gemma3-270m"
        emb = learned if gemma else []
        steps.append(Step("neighbors", model, ["neighbors", *WORDS, "--model", model, "-k", "10", *emb]))
        steps.append(Step("norms", model, ["norms", "--model", model, *emb], figure="norm_histogram.png"))
        probe = ["probe-position", "--model", model, "--scales", s["scales"], "--epochs", s["epochs"], *emb,
                 "--probe-dir", str(root / model / "probe-position" / "probe")]
        if s["max_prompts"] != "0":
            probe += ["--max-prompts", s["max_prompts"]]
        if gemma:
            probe += ["--site", GEMMA_SITE]
        steps.append(Step("probe-position", model, probe, figure="position_probe.png"))
        # Fig. 2 as the DTI authors' notebook runs it (the token set to norm m; one random token per
        # input), read by the same probe, beside geomkit's own protocol
        authors = ["probe-position", "--model", model, "--scales", s["scales"], "--norm-mode", "absolute", "--protocol", "single",
                   "--load-probe", str(root / model / "probe-position" / "probe")]
        if gemma:
            authors += ["--site", GEMMA_SITE]
        steps.append(Step("probe-position-authors", model, authors, figure="position_probe.png"))
        angles = ["residual-angles", "--model", model, "--scales", s["scales"], "--words", s["words"], *emb]
        if s["templates"] != "0":
            angles += ["--max-prompts", s["templates"]]
        steps.append(Step("residual-angles", model, angles, figure="residual_angles.png"))
        att = ["attenuation", "--model", model, "--tokens", s["tokens"]]
        if s["att_scales"]:
            att += ["--scales", s["att_scales"]]
        steps.append(Step("attenuation", model, att, figure="attenuation.png"))
    for mode in ("slerp", "lerp"):
        steps.append(Step(f"interpolate-{mode}", "gemma3-270m", ["interpolate", ti_file, dti_file, "--mode", mode]))
    return steps + trained_token_steps(root, quick) + seed_steps(root, quick) + inspect_steps(root, quick)


def seed_steps(root: Path, quick: bool) -> list[Step]:
    """The seeds/concepts/controls experiment (issue 18): its trainings, then one measurement
    call per model over all of them (see `geomkit.reproduce_seeds`)."""
    from geomkit import reproduce_seeds as rs

    return rs.training_steps(root, quick, Step) + rs.measure_steps(root, quick, Step) + rs.interpolation_steps(root, quick, Step)


STOPPED_CODES = (130, 143)  # a step stopped by Ctrl-C / SIGTERM, as the shell reports them


class StepStopped(Exception):
    """A step was stopped by a signal: reproduce stops too, with the step's exit status (not 2,
    which says the input was bad)."""

    def __init__(self, code: int, step: str):
        super().__init__(f"stopped by {'SIGTERM' if code == 143 else 'Ctrl-C'} during step {step}; rerun reproduce to resume")
        self.code = code


def step_dir(root: Path, step: Step) -> Path:
    return root / step.model / step.name


def run_steps(steps: list[Step], root: Path, figures: Path, force: bool = False,
              runner: Optional[Callable[[list], int]] = None, log=print) -> list[dict]:
    """Run (or reuse) each step; returns one status row per step."""
    from geomkit.cli import main as cli_main
    from geomkit.errors import GeomkitError
    from geomkit.report import write_json

    runner = runner or cli_main
    status = []
    figures.mkdir(parents=True, exist_ok=True)
    for i, step in enumerate(steps, 1):
        out = step_dir(root, step)
        done = finished(out)
        label = f"[{i}/{len(steps)}] {step.name} on {step.model}"
        if done and not force:
            log(f"{label}: reused {out}")
            secs = (_read(out / "step.json") or {}).get("seconds")
            status.append({"step": step.name, "model": step.model, "status": "reused", "seconds": secs})
        else:
            if (force or (out / "results.json").exists()) and out.exists():
                shutil.rmtree(out)  # --force, or a damaged results.json: the step starts afresh
            log(f"{label} ...")
            t = time.perf_counter()
            if step.prepare is not None:
                step.prepare(out)
            code = runner([*step.argv, "--out", str(out)])
            secs = time.perf_counter() - t
            if code in STOPPED_CODES:  # SIGTERM / Ctrl-C inside the step (train checkpoints and exits 143 / 130)
                raise StepStopped(code, f"{step.name} on {step.model}")
            if code != 0:
                raise GeomkitError(f"step {step.name} on {step.model} failed (exit {code}); rerun reproduce to resume from it")
            log(f"{label}: done in {secs:.0f} s")
            write_json(out / "step.json", {"command": command_line(step), "seconds": round(secs, 1)})
            status.append({"step": step.name, "model": step.model, "status": "ran", "seconds": round(secs, 1)})
        if step.figure and (out / step.figure).exists():
            shutil.copyfile(out / step.figure, figures / f"{step.name}-{step.model}.png")
    return status


def _read(f: Path) -> Optional[dict]:
    """A JSON object from a file, or None when it is missing or unreadable (a damaged file is
    treated as absent: the step that wrote it is run again)."""
    try:
        data = json.loads(Path(f).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def finished(out: Path) -> bool:
    """A step is finished when its results.json is readable."""
    return _read(out / "results.json") is not None


def command_line(step: Step) -> str:
    return "geomkit " + " ".join(a if " " not in a else repr(a) for a in step.argv)


# ---- the claim-by-claim report (geomkit.findings) -----------------------------------------------
from geomkit.findings import _fmt, _load  # noqa: E402,F401 (reproduce_t5 and the notebooks read them from here)


def trained_norms_figure(root: Path, model: str):
    """Norm / m* against step: the seed runs' TI tokens (thin lines, one legend entry), their DTI
    tokens, and the single high-lr TI; None when none ran. The legend sits outside the axes so no
    curve hides under it."""
    from geomkit import reproduce_seeds as rs
    from geomkit.report import figure

    def log(step):
        f, r = root / model / step / "train_log.jsonl", _load(root, model, step)
        if not (f.exists() and r):
            return None
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        return [x["step"] for x in rows], [x["norm"] / r["m_star"][0] for x in rows], r

    series = []  # (label, color, style, [(steps, norms)], lr, batch)
    for key, color, name in (("ti-rescaled", "C1", "TI"), ("dti", "C0", "DTI")):  # a ti-rescaled run logs TI's norm
        names = dict.fromkeys(rs.run_name(c, s, t) for c, s, t in rs.runs(model, quick=False) + rs.runs(model, quick=True) if t == key)
        curves = [log(n) for n in names]  # the quick plan's runs are some of the full plan's
        curves = [c for c in curves if c]
        if curves:
            series.append((f"{name}, {len(curves)} runs (concepts x seeds)", color, "-", curves))
    for key, step, color, name in (("ti", "train-ti", "C1", "TI, seed 42"), ("ti-highlr", "train-ti-highlr", "C3", "TI, high lr, seed 42")):
        c = log(step)
        if c and (key == "ti-highlr" or not series):
            series.append((name, color, "--", [c]))
    if not series:
        return None
    fig, ax = figure(7.6, 4.0)
    for label, color, style, curves in series:
        for i, (steps, norms, r) in enumerate(curves):
            ax.plot(steps, norms, color=color, linestyle=style, linewidth=0.9 if len(curves) > 1 else 1.4, alpha=0.8,
                    label=f"{label} (lr {r['lr']:g}, batch {r['batch_size']})" if i == 0 else None)
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":", label="m* (vocabulary mean norm)")
    ax.axhline(8.0, color="grey", linewidth=0.8, linestyle="-.", label="8 m*")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("norm of the learned token / m*")
    ax.set_title(f"{model}: norms of LM-trained tokens")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def write_report(root: Path, figures: Path, steps: list[Step], status: list[dict], quick: bool) -> Path:
    from geomkit.report import markdown_table, write_json, write_text

    from geomkit.report import save_figure

    from geomkit import reproduce_seeds as rs
    from geomkit.findings import claims
    from geomkit.verdicts import rules_table

    for model in ("whisper-tiny-en", "gemma3-270m"):
        fig = trained_norms_figure(root, model)
        if fig is not None:
            save_figure(figures / f"trained-norms-{model}.png", fig)
        seeds = rs.collect(root, model, quick)
        if seeds is not None:
            write_json(root / model / rs.FOLDER / "results.json", seeds)
            save_figure(figures / f"trained-seeds-{model}.png", rs.figure(seeds))
    study = root / "gemma3-270m" / "probe-study" / "study.png"  # benchmarks/study_gemma_probe.py made it
    if study.exists():
        shutil.copyfile(study, figures / "probe-study-gemma3-270m.png")
    rows = claims(root)
    commands = {(st.name, st.model): command_line(st) for st in steps}
    many = {"trained-seeds": "the `geomkit train` runs in `{root}/{model}/trained-seeds/*/` (each command in its step.json), "
                             "measured by the steps `trained-seeds/angles` and `trained-seeds/probe`",
            "interpolate-dti": "`geomkit interpolate ... --neighbors 10 --model {model}` in `{root}/{model}/interpolate-dti/*/` "
                               "(each command in its step.json)"}

    def command(r):
        step = r["step"].split(",")[0]
        if step in many:
            return many[step].format(root=root, model=r["model"])
        return f"`{commands.get((step, r['model']), step)}`"

    table = [{"claim": r["claim"], "paper": r["paper"], "model": r["model"], "geomkit": r["geomkit"], "agrees": r["agrees"],
              "command": command(r)} for r in rows]
    figs = sorted(p.name for p in figures.glob("*.png"))
    text = [
        "# geomkit reproduction report",
        "",
        "Every claim of the DTI paper that can be measured without a diffusion model, re-measured on the real models "
        "reachable here: Gemma 3 270M (Q4_K_M-quantised weights, de-quantised; Gemma terms of use apply), "
        "all-MiniLM-L6-v2 (BERT, post-norm) and the Whisper tiny.en text decoder (pre-norm LayerNorm, learned positions: "
        "the closest reachable relative of CLIP). The paper's numbers come from CLIP/SDXL; where ours differ the table says so. "
        "Regenerate with `geomkit reproduce`" + (" (this report: `--quick`, reduced sizes, not for citing)." if quick else "."),
        "",
        markdown_table(table),
        "",
        "## How verdicts are graded",
        "",
        "One rule for every model (`geomkit/verdicts.py`): **yes** when every measured value (each seed, concept or "
        "word) is beyond the claim's yes-threshold; **partly** when the mean is beyond its partly-threshold; **no** "
        "otherwise. Claims about trained tokens give mean (min to max, n). A bound that is 180 deg wherever it is "
        "evaluated cannot fail and is called untestable; a probe that does not read position on clean held-out prompts "
        "makes its rows inconclusive. Slerp keeps a norm shared by both ends by construction (`geometry.slerp` "
        "interpolates the norm linearly), so the report measures how the neighbours move instead.",
        "",
        markdown_table(rules_table()),
        "",
        "## Figures",
        "",
        *[f"![{f}]({f})" for f in figs],
        "",
        "## Steps",
        "",
        markdown_table([{"step": s["step"], "model": s["model"], "status": s["status"],
                        "seconds (when it ran)": "" if s["seconds"] is None else s["seconds"]} for s in status]),
        "",
    ]
    write_json(figures / "claims.json", {"quick": quick, "claims": rows, "steps": status})
    return write_text(figures / "REPORT.md", "\n".join(text))
