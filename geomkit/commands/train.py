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
learned_embeds_sdxl with clip_l/clip_g), config.json, train_log.jsonl, results.json, checkpoints/.
Several GPUs: accelerate launch -m geomkit train ... (the batch is per process)."""

EXAMPLES = """examples:
  geomkit train --objective lm --method dti --texts glimmerfox --placeholder '<glimmerfox>' \\
      --init-word fox --related glimmerfox --steps 300 --out runs/gemma-dti
  geomkit train --model ./sdxl-base --method dti --images ./my-dog --placeholder '<my-dog>' \\
      --init-word dog --mixed-precision bf16 --validation-prompt 'a <my-dog> on the moon' --out runs/dog
  geomkit train ... --out runs/dog --resume          # continue from the newest checkpoint"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from geomkit.train.config import METHODS, PRECISIONS, SCHEDULES, TrainConfig

    d = TrainConfig()
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EXAMPLES
    g = p.add_argument_group("what to learn")
    g.add_argument("--method", choices=METHODS, default=d.method, help=f"(default: {d.method})")
    g.add_argument("--objective", choices=("auto", "lm", "diffusion"), default="auto",
                   help="auto: diffusion for a diffusers pipeline folder, else lm (default: auto)")
    g.add_argument("--model", default=d.model, metavar="SPEC",
                   help="gemma3-270m, a causal LM folder, or an SD 1.x/2.x, SDXL or SANA diffusers pipeline folder (default: gemma3-270m)")
    g.add_argument("--placeholder", required=True, metavar="TOKEN", help="the new token, e.g. '<my-dog>' (must be new to the vocabulary)")
    g.add_argument("--init-word", required=True, metavar="WORD", help="one-token word the new token starts from (and the prior's mean)")
    g.add_argument("--prior-word", default=None, metavar="WORD", help="the vMF prior's mean direction mu, if not --init-word")
    g.add_argument("--num-vectors", type=int, default=d.num_vectors, metavar="N", help="vectors per token: tok, tok_1, ... (default: 1)")
    g = p.add_argument_group("data")
    g.add_argument("--texts", default=None, metavar="FILE",
                   help="lm: text file, one sentence a line using the placeholder (or a shipped example: glimmerfox)")
    g.add_argument("--max-length", type=int, default=d.max_length, metavar="N", help="lm: tokens per sentence (default: 64)")
    g.add_argument("--images", default=None, metavar="DIR", help="diffusion: folder of jpg/png/webp images of the concept")
    g.add_argument("--resolution", type=int, default=None, metavar="PX", help="diffusion: training size (default: the pipeline's)")
    g.add_argument("--templates", default=d.templates, metavar="object|style|FILE",
                   help="diffusion prompt templates: the diffusers TI object or style lists, or a file with {} (default: object)")
    g.add_argument("--flip-p", type=float, default=d.flip_p, metavar="P", help="diffusion: horizontal flip probability (default: 0.5)")
    g.add_argument("--validation-prompt", action="append", default=[], metavar="TEXT", dest="validation_prompts",
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
    g.add_argument("--lr-schedule", choices=SCHEDULES, default=d.lr_schedule, help="(default: constant)")
    g.add_argument("--steps", type=int, default=d.steps, help="(default: 500)")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default: 4)")
    g.add_argument("--seed", type=int, default=d.seed, help="(default: 42)")
    g.add_argument("--mixed-precision", choices=PRECISIONS, default=d.mixed_precision,
                   help="autocast for the frozen models; learned rows stay float32 (default: no)")
    g.add_argument("--crossinit-weight", type=float, default=d.crossinit_weight, help="crossinit: weight of ||e - init||^2 (default: 1e-5)")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW methods (default: 1e-2, as the diffusers scripts)")
    g = p.add_argument_group("memory and speed (the result does not depend on these)")
    g.add_argument("--micro-batch-size", default=None, metavar="N|auto",
                   help="run each step's batch in micro-batches of N (a divisor of --batch-size), gradients "
                        "accumulated, one update; auto (CUDA): the largest N that fits (default: the batch size)")
    g.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute the frozen UNet/transformer's activations in backward: much less memory, slower")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the frozen UNet/transformer (cache in geomkit's cache folder; first steps compile)")
    g = p.add_argument_group("run")
    g.add_argument("--out", default="runs/train", metavar="DIR", help="output folder (default: runs/train)")
    g.add_argument("--save-every", type=int, default=d.save_every, metavar="N", help="checkpoint every N steps (default: only at the end)")
    g.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the newest checkpoint in --out (or the one given)")
    g.add_argument("--related", default=None, metavar="WORDS|FILE",
                   help="words to measure drift against: comma list, a file, or a shipped concept name (glimmerfox)")
    g.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when present; ignored under accelerate launch)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from geomkit.report import table_text
    from geomkit.train import TrainConfig, train
    from geomkit.train.data import read_word_list

    cfg = TrainConfig(
        method=args.method, objective=args.objective, model=args.model, placeholder=args.placeholder,
        init_word=args.init_word, prior_word=args.prior_word, magnitude=args.magnitude, kappa=args.kappa,
        num_vectors=args.num_vectors, lr=args.lr, lr_schedule=args.lr_schedule, steps=args.steps,
        batch_size=args.batch_size, seed=args.seed, mixed_precision=args.mixed_precision, save_every=args.save_every,
        resume=args.resume, out=args.out, texts=args.texts, max_length=args.max_length, images=args.images,
        resolution=args.resolution, templates=args.templates, flip_p=args.flip_p,
        validation_prompts=args.validation_prompts, validation_steps=args.validation_steps,
        validation_images=args.validation_images, validation_inference_steps=args.validation_inference_steps,
        crossinit_weight=args.crossinit_weight, weight_decay=args.weight_decay, related=read_word_list(args.related),
        progress=not args.quiet, device=args.device,
        micro_batch_size=args.micro_batch_size, gradient_checkpointing=args.gradient_checkpointing, compile=args.compile,
    )
    res = train(cfg)
    import os

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
    print(f"wrote {cfg.out}/learned_embeds.safetensors, results.json, train_log.jsonl")
    return 0
