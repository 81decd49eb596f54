"""`geomkit train`: Directional Textual Inversion, Textual Inversion and the paper's baselines."""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "learn a new token: DTI (direction on the sphere, fixed norm m*), TI and baselines; diffusion or LM"
ORDER = 60
DESCRIPTION = """Learn the embedding of a new token (--placeholder) for a text encoder.

Methods: dti (Algorithm 1 of the DTI paper: e = m* v, Riemannian SGD on the sphere, vMF prior),
ti (free embedding, AdamW as the public example scripts), ti-rescaled (TI, then rescaled to m*),
crossinit (start from the encoder's output for --init-word, regularised towards it),
dti-adamw (Table 3 ablation: Euclidean AdamW step, then back to the sphere).

Objectives: diffusion (an SD 1.x/2.x, SDXL or SANA pipeline folder and --images), lm (a causal LM,
default gemma3-270m, and --texts: sentences that use the placeholder).

Outputs in --out: learned_embeds.safetensors (diffusers format; SDXL also learned_embeds_2 and
a clip_l/clip_g file named after the token, e.g. my-dog.safetensors), config.json, train_log.jsonl, results.json, checkpoints/.
Several processes: torchrun --nproc_per_node N -m geomkit train ..., or accelerate launch --multi_gpu
--num_processes N -m geomkit train ... (--multi_gpu also on a CPU-only machine; the batch is per process).

Resume: `geomkit train --out DIR --resume` takes the run's settings from DIR/config.json; on the
command line only what may change between the pieces of a run: --steps, --save-every,
--keep-checkpoints, --related, --device, --quiet, the --validation-* settings, --micro-batch-size,
--[no-]gradient-checkpointing, --[no-]compile (the result does not depend on them), and (with a warning,
as the result then differs from an uninterrupted run) --lr, --scale-lr, --lr-schedule, --kappa, --batch-size,
--seed, --mixed-precision, --crossinit-weight, --crossinit-reduction, --weight-decay, --flip-p, --crop. Anything else that differs
from the run's own setting is refused. One live run per --out: a second one is refused, naming the
first one's pid. SIGTERM or Ctrl-C writes a checkpoint at the last completed step and exits 143 / 130."""

EXAMPLES = """examples:
  geomkit train --objective lm --method dti --texts glimmerfox --placeholder '<glimmerfox>' \\
      --init-word fox --related glimmerfox --steps 300 --out runs/gemma-dti
  geomkit train --model ./sdxl-base --method dti --images ./my-dog --placeholder '<my-dog>' \\
      --init-word dog --mixed-precision bf16 --validation-prompt 'a <my-dog> on the moon' --out runs/dog
  geomkit train --out runs/dog --resume --steps 800  # continue from the newest checkpoint, with the run's settings"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from geomkit.commands._common import existing_dir, nonempty
    from geomkit.train.config import CROPS, LOSSES, METHODS, PRECISIONS, REDUCTIONS, SCHEDULES, TrainConfig
    from geomkit.train.presets import PRESETS

    d = TrainConfig()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EXAMPLES
    g = p.add_argument_group("what to learn")
    g.add_argument("--method", choices=METHODS, default=d.method, help=f"(default: {d.method})")
    g.add_argument("--objective", choices=("auto", "lm", "diffusion"), default="auto",
                   help="auto: diffusion for a diffusers pipeline folder, else lm (default: auto)")
    g.add_argument("--model", default=d.model, metavar="SPEC",
                   help="gemma3-270m, a causal LM folder, or an SD 1.x/2.x, SDXL or SANA diffusers pipeline folder (default: gemma3-270m)")
    g.add_argument("--placeholder", metavar="TOKEN", help="required: the new token, e.g. '<my-dog>' (must be new to the vocabulary)")
    g.add_argument("--init-word", metavar="WORD", help="required: one-token word the new token starts from (and the prior's mean)")
    g.add_argument("--prior-word", default=None, metavar="WORD", help="the vMF prior's mean direction mu, if not --init-word")
    g.add_argument("--num-vectors", type=int, default=d.num_vectors, metavar="N", help="vectors per token: tok, tok_1, ... (default: 1)")
    g = p.add_argument_group("data")
    g.add_argument("--texts", default=None, metavar="FILE",
                   help="lm: text file, one sentence a line using the placeholder (or a shipped example: glimmerfox)")
    g.add_argument("--max-length", type=int, default=d.max_length, metavar="N", help="lm: tokens per sentence (default: 64)")
    g.add_argument("--images", default=None, type=existing_dir, metavar="DIR", help="diffusion: folder of jpg/png/webp images of the concept")
    g.add_argument("--resolution", type=int, default=None, metavar="PX", help="diffusion: training size (default: the pipeline's)")
    g.add_argument("--templates", default=d.templates, metavar="object|style|FILE",
                   help="diffusion prompt templates: the diffusers TI object or style lists, or a file with {} (default: object)")
    g.add_argument("--flip-p", type=float, default=d.flip_p, metavar="P", help="diffusion: horizontal flip probability (default: 0.5)")
    g.add_argument("--crop", choices=CROPS, default=d.crop,
                   help="diffusion: square crop of each image after its shorter side is resized: center (encoded once) or "
                        "random (a new crop every step, VAE encoder every step; the DTI authors' setting). SDXL's time ids "
                        "carry each image's original size and crop (default: center)")
    g.add_argument("--encoders", default=None, metavar="NAMES",
                   help="FLUX.1/SD3: the text encoders the token gets rows for, a comma list of clip_l, clip_g, t5 "
                        "(FLUX: clip_l,t5; SD3: clip_l,clip_g,t5). The others read the placeholder as plain text, as at "
                        "inference when the token is loaded into those encoders only (default: all)")
    g.add_argument("--guidance-scale", type=float, default=d.guidance_scale, metavar="G",
                   help="FLUX.1 guidance-distilled transformers (dev): the guidance embedding's value, as diffusers' "
                        "FLUX training scripts (default: 3.5)")
    g.add_argument("--validation-prompt", action="append", default=[], metavar="TEXT", dest="validation_prompts", type=nonempty("validation prompt"),
                   help="diffusion: prompt to render during training (repeatable)")
    g.add_argument("--validation-steps", type=int, default=d.validation_steps, metavar="N", help="render every N steps (default: 100)")
    g.add_argument("--validation-images", type=int, default=d.validation_images, metavar="N", help="images per prompt (default: 1)")
    g.add_argument("--validation-inference-steps", type=int, default=d.validation_inference_steps, metavar="N",
                   help="sampler steps for validation images (default: 25)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--magnitude", default=d.magnitude, metavar="mean|min|max|FLOAT",
                   help="m*, per text encoder from its own vocabulary norms, zero rows excluded (default: mean)")
    g.add_argument("--kappa", type=float, default=d.kappa, help="vMF prior concentration (default: 1e-4; paper range 5e-5..2e-4)")
    g.add_argument("--lr", type=float, default=d.lr, help="learning rate; DTI turns each vector by atan(lr) per step (default: 5e-3)")
    g.add_argument("--scale-lr", action=argparse.BooleanOptionalAction, default=False,
                   help="use lr x batch size x processes, as diffusers' textual-inversion scripts (default: off)")
    g.add_argument("--lr-schedule", choices=SCHEDULES, default=d.lr_schedule, help="(default: constant)")
    g.add_argument("--preset", choices=PRESETS, default=None,
                   help="paper: the paper's stated settings; authors: the DTI authors' released scripts (lr 0.01 or 5e-3 "
                        "with --scale-lr, SDXL 400 steps at 768 px, SANA kappa 5e-5, no flips, random crops); typed options "
                        "win (README: settings table)")
    g.add_argument("--steps", type=int, default=d.steps, help="(default: 500)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default: 4)")
    g.add_argument("--seed", type=int, default=d.seed, help="(default: 42)")
    g.add_argument("--mixed-precision", choices=PRECISIONS, default=d.mixed_precision,
                   help="autocast for the frozen models; learned rows stay float32 (default: no)")
    g.add_argument("--crossinit-weight", type=float, default=d.crossinit_weight, help="crossinit: weight of ||e - init||^2 (default: 1e-5)")
    g.add_argument("--crossinit-reduction", choices=REDUCTIONS, default=d.crossinit_reduction,
                   help="crossinit: sum of squares (CrossInit's text) or their mean (the DTI authors' MSE) (default: sum)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW methods (default: 1e-2, as the diffusers scripts)")
    g = p.add_argument_group("LoRA on the frozen denoiser, beside the token (pivotal tuning), and DCO (diffusion)")
    g.add_argument("--lora-rank", type=int, default=None, metavar="R",
                   help="add a LoRA of rank R to the UNet's / SANA transformer's attention projections (peft), trained "
                        "with its own AdamW beside the token (default: off)")
    g.add_argument("--lora-alpha", type=float, default=None, metavar="A", help="LoRA scale numerator (default: the rank)")
    g.add_argument("--lora-lr", type=float, default=d.lora_lr, metavar="LR", help="the LoRA's learning rate (default: 1e-4)")
    g.add_argument("--lora-targets", default=d.lora_targets, metavar="NAMES",
                   help="comma list of projection names to adapt (default: to_q,to_k,to_v,to_out.0)")
    g.add_argument("--lora-dropout", type=float, default=d.lora_dropout, metavar="P", help="(default: 0)")
    g.add_argument("--token-steps", type=int, default=None, metavar="N",
                   help="train the token for steps 1..N only; the LoRA goes on (the pivot; default: every step)")
    g.add_argument("--loss", choices=LOSSES, default=d.loss,
                   help="mse, or dco: Direct Consistency Optimization against the same denoiser with the LoRA off "
                        "(needs --lora-rank; default: mse)")
    g.add_argument("--dco-beta", type=float, default=d.dco_beta, metavar="B", help="DCO's beta (default: 1000, as the DCO code)")
    g = p.add_argument_group("memory and speed (the result does not depend on these)")
    g.add_argument("--micro-batch-size", default=None, metavar="N|auto",
                   help="run each step's batch in micro-batches of N (a divisor of --batch-size), gradients "
                        "accumulated, one update; auto (CUDA): the largest N that fits (default: the batch size)")
    # --no-...: a resumed run takes these from its config.json, and may turn them off again
    g.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=False,
                   help="recompute the frozen UNet/transformer's activations in backward: much less memory, slower (default: off)")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile the frozen UNet/transformer (cache in geomkit's cache folder; first steps compile; default: off)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/train", metavar="DIR", help="output folder (default: runs/train)")
    g.add_argument("--save-every", type=int, default=d.save_every, metavar="N", help="checkpoint every N steps (default: only at the end)")
    g.add_argument("--keep-checkpoints", type=int, default=None, metavar="N",
                   help="keep only the N newest checkpoints (an older one is removed once a newer one is written; default: all)")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the newest good checkpoint in --out (or the one given), with the run's own settings")
    g.add_argument("--related", default=None, metavar="WORDS|FILE",
                   help="words to measure drift against: comma list, a file, or a shipped concept name (glimmerfox)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present; ignored under accelerate launch)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--report-to", choices=("tensorboard", "wandb"), default=None, dest="report_to",
                   help="also log loss, norm, angle, lr and validation images to TensorBoard (OUT/logs) or wandb (offline, OUT/wandb)")
    _track_given(p)


def _track_given(p: argparse.ArgumentParser) -> None:
    """Let `run` know which options were typed: each option's default is kept aside and replaced by
    SUPPRESS, so only typed options reach the namespace (--resume fills the rest from the run)."""
    defaults = {}
    for action in p._actions:
        if action.dest == "help" or action.default is argparse.SUPPRESS:
            continue
        defaults[action.dest] = action.default
        action.default = argparse.SUPPRESS
    p.set_defaults(_train_defaults=defaults)


# Per invocation, never taken from the run being resumed.
PER_INVOCATION = ("resume", "out", "progress", "device")


def _field(dest: str) -> str:
    return {"quiet": "progress"}.get(dest, dest)


def _value(dest: str, value):
    from geomkit.train.data import read_word_list

    if dest == "quiet":
        return not value
    if dest == "related":
        return read_word_list(value) if isinstance(value, (str, type(None))) else list(value)
    return value


def _saved_settings(out: str, spec) -> tuple:
    """(settings, where) of the run `--resume` continues: OUT/config.json, else the config recorded
    in its newest readable checkpoint (or in the checkpoint given); (None, None) if there is none."""
    import json
    from pathlib import Path

    from geomkit.train import checkpoint

    def read(path):
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    from geomkit.train import resume_check

    if spec not in (None, "", "latest"):
        js = checkpoint.find(out, spec)  # a checkpoint named by the user: its own error if it is not one
        saved = (read(js) or {}).get("config")
        return (resume_check.check_saved_config(saved, js) if saved is not None else None), js
    cfg_file = Path(out).expanduser() / "config.json"
    saved = resume_check.read_saved_config(cfg_file)  # damaged: blamed on the file and field, not on an option
    if saved is not None:
        described = saved.get("objective")
        if isinstance(described, dict):  # config.json records the objective's description, with its kind
            kind = described.get("kind") or ("diffusion" if "pipeline" in described else "lm" if "texts" in described else None)
            saved["objective"] = kind or "auto"
        elif not isinstance(described, str):
            saved["objective"] = "auto"
        return saved, cfg_file
    for _step, js in reversed(checkpoint.complete(Path(out).expanduser() / "checkpoints")):
        meta = read(js)
        if meta and isinstance(meta.get("config"), dict):
            return resume_check.check_saved_config(meta["config"], js), js
    return None, None


def build_config(args):
    """The TrainConfig of this invocation: typed options over (with --resume) the run's own
    settings over the defaults. Raises GeomkitError for an option that conflicts with the run."""
    import dataclasses
    from pathlib import Path

    from geomkit.errors import GeomkitError
    from geomkit.train import TrainConfig
    from geomkit.train.config import same_setting
    from geomkit.train.loop import STRICT_RESUME

    defaults = args._train_defaults
    given = {_field(k): _value(k, v) for k, v in vars(args).items() if k in defaults}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {_field(k): _value(k, v) for k, v in defaults.items() if _field(k) in fields}
    resume = given.get("resume")
    if resume is not None:
        out = given.get("out", defaults["out"])
        saved, where = _saved_settings(out, resume)
        if saved is None and Path(out).expanduser().is_dir():
            from geomkit.runlock import acquire

            acquire(Path(out).expanduser(), "train").release()  # a run still starting there: name its pid
        if saved is None and not {"placeholder", "init_word"} <= set(given):
            raise GeomkitError(f"--resume: {out} holds no run to resume (no config.json, no checkpoint); "
                               "start it without --resume")
        if saved is not None:
            for key in fields - set(PER_INVOCATION):
                if key in saved:
                    values[key] = saved[key]
            clash = [k for k in STRICT_RESUME if k in given and k in saved and not same_setting(k, given[k], saved[k])
                     and not (k == "objective" and given[k] == "auto")]
            if clash:
                shown = "; ".join(f"--{k.replace('_', '-')} {given[k]} (the run has {saved[k]!r})" for k in clash)
                raise GeomkitError(f"--resume: {shown}: a resumed run keeps its own setting ({where}); drop the "
                                   "option, or train into another --out")
    else:
        missing = [f"--{k.replace('_', '-')}" for k in ("placeholder", "init_word") if k not in given]
        if missing:
            raise GeomkitError(f"{' and '.join(missing)} required: the new token (e.g. '<my-dog>') and a one-token word "
                               "it starts from (e.g. dog); or --resume to continue the run in --out")
    values.update({k: v for k, v in given.items() if k in fields})
    if resume is not None and "batch_size" in given and "micro_batch_size" not in given:
        mb, bs = values.get("micro_batch_size"), values["batch_size"]
        if isinstance(mb, int) and isinstance(bs, int) and mb > 0 and bs % mb:
            raise GeomkitError(f"--batch-size {bs}: the run's --micro-batch-size {mb} (from {where}) does not divide it; "
                               f"give --micro-batch-size N as well (a divisor of {bs}, or auto)")
    return TrainConfig(**values), set(given)


def _accelerate_single_process() -> None:
    """`accelerate launch --num_processes N` without a GPU (or --multi_gpu) starts the script once,
    with no sign of it; say so instead of training in one process."""
    import os
    import re

    from geomkit.errors import GeomkitError

    if "WORLD_SIZE" in os.environ or "ACCELERATE_USE_CPU" not in os.environ:
        return
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
            parent = [a.decode(errors="replace") for a in fh.read().split(b"\0")]
    except OSError:
        return
    if not any("accelerate" in a for a in parent[:3]):
        return
    n = None
    for i, a in enumerate(parent):
        m = re.fullmatch(r"--num[_-]processes(?:=(\d+))?", a)
        if m:
            n = m.group(1) or (parent[i + 1] if i + 1 < len(parent) else None)
    if n and n.isdigit() and int(n) > 1:
        raise GeomkitError(
            f"accelerate launch --num_processes {n} started only one process: without --multi_gpu (or several GPUs) "
            f"accelerate runs the script once; use accelerate launch --multi_gpu --num_processes {n} -m geomkit train ... "
            f"(on a CPU-only machine too) or torchrun --nproc_per_node {n} -m geomkit train ..."
        )


def run(args) -> int:
    import os
    import sys

    from geomkit.report import table_text
    from geomkit.train import train
    from geomkit.train.loop import Stopped

    _accelerate_single_process()
    cfg, given = build_config(args)
    try:
        res = train(cfg, given)
    except Stopped as stop:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"geomkit train: {stop}", file=sys.stderr, flush=True)
        return stop.exit_code

    if int(os.environ.get("RANK", "0")) != 0:  # several processes: the main one reports
        return 0
    rows = []
    for p in res["per_encoder"]:
        rows.append({
            "encoder": p["encoder"], "m*": p["m_star"], "final norm": p["final_norm"],
            "angle from init (deg)": p["angle_from_init_deg"], "cos to prior": p["cos_to_prior"],
        })
    print(table_text(rows))
    loss0, loss1 = res.get("first_loss_mean10"), res.get("final_loss_mean10")
    if loss0 is not None:
        print(f"loss (mean of first / last 10 steps): {loss0:.4f} -> {loss1:.4f}   {res['seconds']:.1f} s")
    if res.get("drift"):
        print("drift (cosine to): " + ", ".join(f"{w} {c:+.3f}" for w, c in res["drift"].items()))
    print(f"wrote {cfg.out}/" + ", ".join(list(res.get("files") or ["learned_embeds.safetensors"]) + ["results.json", "train_log.jsonl"]))
    return 0
