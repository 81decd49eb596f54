"""`geomkit compare RUN_DIR ...`: one table over training / evaluation runs (Tables 2 and 3),
the image-vs-text scatter, and semantic drift over training (Fig. 1b)."""

from __future__ import annotations

from typing import Optional

from geomkit.commands._common import add_out_arg, existing_dir, no_duplicates, nonempty

NAME = "compare"
ORDER = 73
HELP = "table over training/evaluation runs (Tables 2/3), image-vs-text scatter, semantic drift (Fig. 1b)"
DESCRIPTION = (
    "Read each RUN_DIR/results.json (written by `geomkit train`) and, when present, RUN_DIR/eval/results.json "
    "(written by `geomkit evaluate --run`), and tabulate method, model, m*, kappa, final norm, image score, text "
    "score, steps and time as CSV and markdown (also in the layouts of the paper's Tables 2 and 3), plot image "
    "vs text score per run, and plot the learned direction's cosine to the init word over training (from "
    "train_log.jsonl). --related adds the final direction's cosine to further words (semantic drift, Fig. 1b); "
    "that loads each run's model."
)


def add_arguments(p):
    p.add_argument("runs", nargs="+", type=existing_dir, metavar="RUN_DIR", help="training run folders")
    p.add_argument("--labels", nargs="+", default=None, type=nonempty("label"), metavar="LABEL", help="a label per run for tables and plots (default: folder names)")
    p.add_argument("--related", nargs="+", default=[], type=nonempty("word"), metavar="WORD", help="also report each run's cosine to these words (each one token of the run's model)")
    p.add_argument("--eval-dir", default="eval", type=nonempty("folder name"), metavar="NAME", help="the evaluation subfolder of each run (default eval)")
    add_out_arg(p, "runs/compare")


def _read_json(path):
    import json

    from geomkit.errors import GeomkitError

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GeomkitError(f"{path}: not readable JSON ({exc})") from None


def read_log(path) -> list[dict]:
    """The training log's rows. Only its last line may be unreadable (cut by a crash); a log that
    is damaged elsewhere, or holds no training steps, is refused rather than left out of the figure."""
    import json

    from geomkit.errors import GeomkitError

    rows = []
    if path.is_file():
        try:
            lines = [(n, ln.strip()) for n, ln in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise GeomkitError(f"{path}: not a readable training log ({exc}); move it away to compare without it") from None
        for i, (n, line) in enumerate(lines):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                if i == len(lines) - 1 and rows:
                    continue  # a line cut by a crash: the rest is still usable
                raise GeomkitError(f"{path}, line {n}: not a JSON log line; the training log is damaged (move it away to compare without it)")
            rows.append(row)
        if lines and not any("step" in r for r in rows):
            raise GeomkitError(f"{path}: holds no training steps (not a `geomkit train` log); move it away to compare without it")
    return rows


def load_run(run_dir, eval_dir: str = "eval") -> dict:
    from pathlib import Path

    from geomkit.generation import read_run_results

    run = Path(run_dir).expanduser()
    results = read_run_results(run)  # one-line error when missing
    ev = run / eval_dir / "results.json"
    cfg = run / "config.json"
    return {
        "dir": run,
        "results": results,
        "eval": _read_json(ev) if ev.is_file() else None,
        "config": _read_json(cfg) if cfg.is_file() else {},
        "log": read_log(run / "train_log.jsonl"),
    }


def _num_or_list(values):
    """One number per encoder: a float for one encoder, 'a / b' for two (SDXL)."""
    if values is None:
        return None
    if not isinstance(values, (list, tuple)):
        return float(values) if isinstance(values, (int, float)) else values
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    return vals[0] if len(vals) == 1 else " / ".join(f"{v:.4g}" for v in vals)


def short_model(model) -> str:
    from pathlib import Path

    if not model:
        return ""
    s = str(model).rstrip("/")
    return Path(s).name if ("/" in s and Path(s).exists()) or s.startswith((".", "/", "~")) else s


def _lora_label(lora) -> str:
    """'r4 a4' for a run trained with a LoRA (results.json's "lora"), '-' without."""
    if not isinstance(lora, dict) or not lora.get("rank"):
        return "-"
    return f"r{lora['rank']} a{lora.get('alpha', lora['rank']):g}"


def table_row(label: str, run: dict, drift_words: list) -> dict:
    r, ev, cfg = run["results"], run["eval"] or {}, run["config"]
    m_star = _num_or_list(r.get("m_star"))
    magnitude = cfg.get("magnitude")
    row = {
        "run": label,
        "method": r.get("method"),
        "model": short_model(r.get("model")),
        "m*": m_star,
        "m* spec": magnitude if magnitude not in (None, "") else None,
        "kappa": r.get("kappa"),
        "final norm": _num_or_list(r.get("final_norm")),
        "image": ev.get("image_similarity"),
        "text": ev.get("text_alignment"),
        "text metric": ev.get("text_metric") if ev else None,
        "steps": r.get("steps"),
        "lora": _lora_label(r.get("lora")),
        "loss": r.get("loss") or ("mse" if r.get("objective") == "diffusion" else "-"),  # lm: cross-entropy, not a choice
        "time (s)": r.get("seconds"),
        "cos to prior": r.get("cos_to_prior"),
        "angle from init (deg)": r.get("angle_from_init_deg"),
    }
    drift = dict(r.get("drift") or {})
    drift.update(run.get("drift_extra") or {})
    for w in drift_words:
        row[f"cos {w}"] = drift.get(w)
    return row


def related_cosines(runs: list, words: list) -> None:
    """The final direction's cosine to each word, computed with the run's own encoder (cached per
    model). Stored as run["drift_extra"]."""
    import torch

    from geomkit.generation import run_token
    from geomkit.geometry import drift
    from geomkit.models import load_encoder

    encoders = {}
    for run in runs:
        model = run["results"].get("model")
        if model not in encoders:
            encoders[model] = load_encoder(model, encoder=1)
        enc = encoders[model]
        tok = run_token(run["dir"])
        vec = next((v for v in tok.parts.values() if v.shape[-1] == enc.d_model), None)
        if vec is None:
            from geomkit.errors import GeomkitError

            raise GeomkitError(f"run {run['dir']}: its embedding does not match {model}'s dimension {enc.d_model}")
        table = enc.embedding_table()
        rows = torch.stack([table[enc.token_id(w)].detach().double().cpu() for w in words])
        run["drift_extra"] = dict(zip(words, (float(c) for c in drift(vec.double().mean(0), rows))))


TEXT_METRIC_LABELS = {"siglip-sigmoid": "SigLIP match probability", "clip-cosine": "CLIP image-text cosine"}


def text_metric(rows) -> Optional[str]:
    """The one text-alignment metric of the evaluated runs (None when none says); runs scored with
    different metrics (SigLIP vs CLIP) are not comparable: a one-line GeomkitError."""
    from geomkit.errors import GeomkitError

    metrics = {}
    for r in rows:
        if r["text"] is not None and r.get("text metric"):
            metrics.setdefault(r["text metric"], []).append(r["run"])
    if len(metrics) > 1:
        seen = "; ".join(f"{m}: {', '.join(runs)}" for m, runs in metrics.items())
        raise GeomkitError(
            f"runs were scored with different text metrics ({seen}); their text scores are not comparable: "
            "compare runs evaluated with the same --siglip/--clip model, or re-run `geomkit evaluate` on them with one"
        )
    return next(iter(metrics), None)


def text_axis_label(metric: Optional[str]) -> str:
    return f"text alignment ({TEXT_METRIC_LABELS.get(metric, metric)})" if metric else "text alignment"


def plot_scatter(rows, metric: Optional[str] = None):
    from geomkit.report import figure

    fig, ax = figure(5.5, 4.5)
    pts = [r for r in rows if r["image"] is not None and r["text"] is not None]
    methods = sorted({str(r["method"]) for r in pts})
    colors = ["#4C72B0", "#C44E52", "#55A868", "#8172B2", "#CCB974", "#64B5CD", "#8C8C8C"]
    for i, m in enumerate(methods):
        sel = [r for r in pts if str(r["method"]) == m]
        ax.scatter([r["text"] for r in sel], [r["image"] for r in sel], s=40, color=colors[i % len(colors)], label=m, zorder=3)
        for r in sel:
            ax.annotate(r["run"], (r["text"], r["image"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel(text_axis_label(metric))
    ax.set_ylabel("image similarity (DINOv2)")
    ax.set_title("subject fidelity vs text alignment")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="method", title_fontsize=8)
    return fig


def plot_drift(labels, runs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    for label, run in zip(labels, runs):
        log = [ln for ln in run["log"] if "step" in ln]
        if not log:
            continue
        steps = [ln["step"] for ln in log]
        if any("cos_to_prior" in ln for ln in log):
            a1.plot(steps, [ln.get("cos_to_prior") for ln in log], label=label, lw=1.2)
        if any("angle_from_init_deg" in ln for ln in log):
            a2.plot(steps, [ln.get("angle_from_init_deg") for ln in log], label=label, lw=1.2)
    a1.set_xlabel("step")
    a1.set_ylabel("cosine to the init word")
    a1.set_title("semantic drift over training (Fig. 1b)")
    a2.set_xlabel("step")
    a2.set_ylabel("angle from init (deg)")
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _fmt_table(rows, cols):
    """Rows for printing: kappa in short scientific form (1e-04 would print as 0.000)."""

    def show(c, v):
        if c == "kappa" and isinstance(v, (int, float)):
            return f"{v:g}"
        return v

    return [{c: show(c, r.get(c)) for c in cols} for r in rows]


def run(args) -> int:
    import pandas as pd

    from geomkit import report
    from geomkit.errors import GeomkitError

    if args.labels and len(args.labels) != len(args.runs):
        raise GeomkitError(f"--labels gives {len(args.labels)} label(s) for {len(args.runs)} run(s)")
    no_duplicates(args.runs, "RUN_DIR", paths=True)
    runs = [load_run(r, args.eval_dir) for r in args.runs]
    labels = list(args.labels) if args.labels else [r["dir"].resolve().name for r in runs]
    if len(set(labels)) != len(labels):
        labels = [str(r["dir"]) for r in runs]
    metric = text_metric([table_row(lab, run, []) for lab, run in zip(labels, runs)])
    out = report.prepare_out(args.out)
    if args.related:
        related_cosines(runs, args.related)

    drift_words = []
    for run in runs:
        for w in list((run["results"].get("drift") or {})) + list(args.related):
            if w not in drift_words:
                drift_words.append(w)
    rows = [table_row(lab, run, drift_words) for lab, run in zip(labels, runs)]
    for col in ("m* spec",):
        if all(r[col] is None for r in rows):
            for r in rows:
                del r[col]

    frame = pd.DataFrame(rows)
    report.write_csv(out / "compare.csv", frame)

    with_lora = any(r["lora"] != "-" or r["loss"] == "dco" for r in rows)
    main_cols = ["run", "method", "model", "m*", "kappa", "final norm"] + (["lora", "loss"] if with_lora else []) + \
        ["image", "text", "steps", "time (s)"]
    t2 = _table2(rows)
    t3 = _fmt_table(rows, ["run", "method", "m*"] + (["m* spec"] if "m* spec" in rows[0] else []) + ["kappa", "image", "text"])
    drift_cols = ["run", "cos to prior", "angle from init (deg)"] + [f"cos {w}" for w in drift_words]
    md = ["# geomkit compare", "", "## Runs", "", report.markdown_table(_fmt_table(rows, main_cols)), "",
          "## Table 2 layout (image / text per model; mean over runs of a method)", "", report.markdown_table(t2) if t2 else "(no evaluated runs)", "",
          "## Table 3 layout (ablation)", "", report.markdown_table(t3), "",
          *(["## Table 8 layout (token + LoRA: TI+LoRA vs DTI+LoRA, DCO)", "",
              report.markdown_table(_fmt_table(rows, ["run", "method", "lora", "loss", "image", "text"])), ""] if with_lora else []),
          "## Semantic drift (Fig. 1b): cosine of the learned direction", "", report.markdown_table(_fmt_table(rows, drift_cols)), ""]
    evaluated = [r for r in rows if r["image"] is not None and r["text"] is not None]
    notes = sorted({run["results"]["note"] for run in runs if run["results"].get("note")})
    md += [f"Note: {n}." for n in notes] + ([""] if notes else [])
    if metric:
        md += [f"Text scores: {text_axis_label(metric)}; image scores: DINOv2 CLS cosine.", ""]
    report.write_text(out / "compare.md", "\n".join(md))

    scatter = None
    if evaluated:
        report.save_figure(out / "scatter.png", plot_scatter(rows, metric))
        scatter = "scatter.png"
    drift_png = None
    if any(run["log"] for run in runs):
        report.save_figure(out / "drift.png", plot_drift(labels, runs))
        drift_png = "drift.png"

    results = {
        "runs": [{"label": lab, "dir": str(run["dir"]), "evaluated": run["eval"] is not None} for lab, run in zip(labels, runs)],
        "rows": rows,
        "drift_words": drift_words,
        "text_metric": metric,
        "files": {"csv": "compare.csv", "markdown": "compare.md", "scatter": scatter, "drift": drift_png},
    }
    report.write_json(out / "results.json", results)

    print(report.table_text(_fmt_table(rows, main_cols)))
    if drift_words or any(r["cos to prior"] is not None for r in rows):
        print("\nsemantic drift (cosine of the learned direction):")
        print(report.table_text(_fmt_table(rows, drift_cols)))
    if metric:
        print(f"\ntext = {text_axis_label(metric)}, image = DINOv2 CLS cosine")
    if not evaluated:
        print(f"\nno run has {args.eval_dir}/results.json: image/text scores empty, scatter skipped "
              "(run `geomkit evaluate --run RUN_DIR ...` first)")
    written = ["compare.csv", "compare.md", "results.json"] + [f for f in (scatter, drift_png) if f]
    print(f"\nwrote {', '.join(str(out / f) for f in written)}")
    return 0


def _table2(rows):
    """method x model, with image and text columns per model (the paper's Table 2)."""
    models = []
    for r in rows:
        if r["model"] not in models:
            models.append(r["model"])
    methods = []
    for r in rows:
        if r["method"] not in methods:
            methods.append(r["method"])
    if not any(r["image"] is not None for r in rows):
        return []
    out = []
    for m in methods:
        line = {"method": m}
        for model in models:
            sel = [r for r in rows if r["method"] == m and r["model"] == model and r["image"] is not None]
            line[f"{model} image"] = sum(r["image"] for r in sel) / len(sel) if sel else None
            line[f"{model} text"] = sum(r["text"] for r in sel) / len(sel) if sel else None
        out.append(line)
    return out
