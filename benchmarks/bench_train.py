"""Trainer benchmarks, as ratios measured in one run (these machines are noisy and shared).

Step times are measured in ONE process with the variants' steps interleaved (step k of every
variant, in a fresh random order for each k), so a change in machine load hits every variant alike; figures are medians over steps after a warm-up. geomkit's DTI and
TI steps use the same batch (step k draws the same examples and noise). Peak memory is measured
separately, each variant alone in a fresh process.

1. DTI step time / TI step time, same model and batch (goal <= 1.02; DTI's extra work is O(d)).
2. geomkit TI step time / a plain loop in the style of the public example scripts
   (benchmarks/reference_ti.py: VAE-encode every step, AdamW over the whole table, restore the
   frozen rows), on the same tiny SD pipeline, 64 px, batch 4, CPU (goal <= 0.8).
3. Peak memory (RSS) of both.

Configurations: `tiny` (tiny SD pipeline, CLIP width 32) as specified; `wide` (the same tiny
UNet/VAE with a CLIP text encoder of SD 1.5's real width 768 and vocabulary, one block), where
the table itself (38M parameters) shows what whole-table AdamW costs; `--gemma` adds DTI vs TI
on the real Gemma 3 270M LM objective.

    python benchmarks/bench_train.py [--steps 30] [--threads N] [--gemma] [--out runs/bench-train]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _images(folder: Path, n: int = 4) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        p = folder / f"img{i}.png"
        if not p.exists():
            Image.fromarray(rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)).save(p)
    return folder


def _pipelines(root: Path) -> dict:
    from geomkit import tiny

    wide = root / "sd-wide"
    if not (wide / "model_index.json").exists():
        tiny.save_sd_pipeline_wide(wide)
    return {"tiny": tiny.cached_dir("sd", str(root)), "wide": wide}


# ---- workers (each in its own process) ---------------------------------------------------------
def worker_geomkit(args) -> dict:
    from geomkit.train import TrainConfig, train

    with tempfile.TemporaryDirectory() as out:
        if args.model == "gemma3-270m":
            cfg = TrainConfig(method=args.method, model=args.model, texts="glimmerfox", placeholder="<glimmerfox>",
                              init_word="fox", steps=args.steps, batch_size=args.batch_size, out=out, progress=False)
        else:
            cfg = TrainConfig(method=args.method, model=args.model, images=args.images, placeholder="<cat-toy>",
                              init_word="toy", steps=args.steps, batch_size=args.batch_size, resolution=args.resolution,
                              out=out, progress=False)
        res = train(cfg)
    return {"step_seconds_median": res["step_seconds_median"], "peak_rss_mb": res["peak_memory_mb"],
            "final_loss": res["final_loss"]}


def worker_reference(args) -> dict:
    sys.path.insert(0, str(HERE))
    import contextlib
    import io

    import reference_ti

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        reference_ti.main([args.model, args.images, "--steps", str(args.steps), "--resolution", str(args.resolution),
                           "--batch-size", str(args.batch_size)])
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def _run(variant: str, model, images, steps, batch, resolution, threads) -> dict:
    kind, _, method = variant.partition(":")
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--method", method or "ti",
           "--model", str(model), "--images", str(images), "--steps", str(steps), "--batch-size", str(batch),
           "--resolution", str(resolution)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench(config: str, model, images, variants, rounds, steps, batch, resolution, threads) -> dict:
    runs = {v: [] for v in variants}
    for r in range(rounds):
        for v in (variants if r % 2 == 0 else list(reversed(variants))):  # interleaved, order alternating
            runs[v].append(_run(v, model, images, steps, batch, resolution, threads))
            print(f"  {config} round {r + 1} {v}: {runs[v][-1]['step_seconds_median'] * 1000:.1f} ms/step, "
                  f"peak {runs[v][-1]['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    out = {}
    for v, rs in runs.items():
        out[v] = {
            "step_ms": 1000 * statistics.median(x["step_seconds_median"] for x in rs),
            "step_ms_all": [round(1000 * x["step_seconds_median"], 2) for x in rs],
            "peak_rss_mb": statistics.median(x["peak_rss_mb"] for x in rs),
        }
    return out


def _session(method: str, **kw):
    from geomkit.train import TrainConfig, objectives
    from geomkit.train.config import check
    from geomkit.train.loop import Session, _Dist

    cfg = check(TrainConfig(method=method, progress=False, **kw))
    cfg.objective = objectives.detect(cfg)
    return Session(cfg, objectives.check_inputs(cfg, cfg.objective), _Dist("cpu"))


def paired(config: str, timed: int, warmup: int = 3, rounds: int = 3, **kw) -> dict:
    """Alternate one step of each variant; per-variant median step time and ratios.

    Each round builds fresh sessions (construction order alternating between rounds, since
    where a model lands in memory shifts its speed by a few per cent) and times `timed` steps
    after `warmup`; the reported ratios are medians over rounds of the per-round ratio of medians.
    `geomkit:ti-again` is a second, identical TI session: its ratio to `geomkit:ti` is the noise
    floor of the measurement (an A/A test)."""
    with_reference = "images" in kw
    per_round = []
    for r in range(rounds):
        methods = ("dti", "ti", "ti-again") if r % 2 == 0 else ("ti-again", "ti", "dti")
        runners = {m: _session(m.replace("-again", ""), **kw) for m in methods}
        stepper = {f"geomkit:{m}": (lambda k, s=runners[m]: s.step(k)) for m in ("dti", "ti", "ti-again")}
        if with_reference:
            sys.path.insert(0, str(HERE))
            from reference_ti import ReferenceTI

            ref = ReferenceTI(kw["model"], kw["images"], kw["resolution"], kw["batch_size"], kw["lr"], kw["seed"])
            stepper["reference:ti"] = lambda k: ref.step()  # noqa: B023 (used within this round)
        names = list(stepper)
        times = {n: [] for n in names}
        for k in range(1, warmup + timed + 1):
            # a fresh random order every step: a cyclic rotation would always run the same variant
            # right after the reference (whose whole-table work evicts the caches), biasing it
            order = random.Random(k * 7919 + r).sample(names, len(names))
            for n in order:
                t = time.perf_counter()
                stepper[n](k)
                if k > warmup:
                    times[n].append(time.perf_counter() - t)
        per_round.append({n: statistics.median(v) for n, v in times.items()})
        print(f"  {config} round {r + 1}: " + ", ".join(f"{n} {1000 * per_round[-1][n]:.1f} ms" for n in names),
              file=sys.stderr, flush=True)
        del runners, stepper
    names = list(per_round[0])
    out = {n: {"step_ms": 1000 * statistics.median(x[n] for x in per_round),
               "step_ms_rounds": [round(1000 * x[n], 2) for x in per_round]} for n in names}

    def ratio(a, b):
        return statistics.median(x[a] / x[b] for x in per_round)

    out["dti_over_ti"] = ratio("geomkit:dti", "geomkit:ti")
    out["dti_over_ti_rounds"] = [round(x["geomkit:dti"] / x["geomkit:ti"], 4) for x in per_round]
    out["aa_noise_ti_again_over_ti"] = ratio("geomkit:ti-again", "geomkit:ti")
    out["aa_noise_rounds"] = [round(x["geomkit:ti-again"] / x["geomkit:ti"], 4) for x in per_round]
    if with_reference:
        out["geomkit_ti_over_reference"] = ratio("geomkit:ti", "reference:ti")
    return out


def optimizer_overhead(dims=(32, 640, 768, 1280), n_vectors: int = 1, repeats: int = 2000) -> dict:
    """The only work DTI adds to a step: e = m* v and the RSGD update instead of AdamW's, timed
    alone (microseconds per step), so the O(d) claim does not rest on noisy step-time ratios."""
    import torch

    from geomkit.train.optim import RSGD

    out = {}
    for d in dims:
        g = torch.Generator().manual_seed(0)
        v = torch.nn.Parameter(torch.nn.functional.normalize(torch.randn(n_vectors, d, generator=g), dim=-1))
        e = torch.nn.Parameter(v.detach().clone())
        mu = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
        rsgd = RSGD([dict(params=[v], mu=mu, kappa=1e-4)], lr=5e-3)
        adamw = torch.optim.AdamW([e], lr=5e-3, weight_decay=1e-2, foreach=False)
        grad = torch.randn(n_vectors, d, generator=g)
        times = {"dti": [], "ti": []}
        for _ in range(repeats):
            t = time.perf_counter()
            rows = 1.0313 * v  # noqa: F841  (e = m* v, formed every step)
            v.grad = grad
            rsgd.step()
            times["dti"].append(time.perf_counter() - t)
            t = time.perf_counter()
            rows = e  # noqa: F841
            e.grad = grad
            adamw.step()
            times["ti"].append(time.perf_counter() - t)
        out[d] = {k: 1e6 * statistics.median(x) for k, x in times.items()}
        out[d]["extra_us"] = out[d]["dti"] - out[d]["ti"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=("geomkit", "reference"))
    ap.add_argument("--method", default="ti")
    ap.add_argument("--model")
    ap.add_argument("--images")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per variant and round (after 3 warm-up steps)")
    ap.add_argument("--paired-rounds", type=int, default=3, help="rounds of freshly built sessions for step times")
    ap.add_argument("--mem-steps", type=int, default=10, help="steps of each separate peak-memory process")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1, help="separate-process runs per variant (peak memory)")
    ap.add_argument("--threads", type=int, default=0, help="OMP threads per worker (default: torch's choice)")
    ap.add_argument("--gemma", action="store_true", help="also DTI vs TI on the real Gemma 3 270M (slow on a CPU)")
    ap.add_argument("--gemma-steps", type=int, default=10)
    ap.add_argument("--configs", default="tiny,wide")
    ap.add_argument("--out", default="runs/bench-train")
    args = ap.parse_args()

    if args.worker:
        fn = worker_geomkit if args.worker == "geomkit" else worker_reference
        print(json.dumps(fn(args)))
        return

    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = _images(out / "images")
    pipes = _pipelines(out / "models")
    report = {"steps": args.steps, "batch_size": args.batch_size, "resolution": args.resolution, "rounds": args.rounds,
              "threads": args.threads or torch.get_num_threads(), "torch": torch.__version__,
              "cpu": os.cpu_count(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.threads:
        torch.set_num_threads(args.threads)
    report["optimizer_us"] = optimizer_overhead()
    variants = ["geomkit:dti", "geomkit:ti", "reference:ti"]
    for config in [c for c in args.configs.split(",") if c]:
        r = paired(config, args.steps, rounds=args.paired_rounds, model=str(pipes[config]), images=str(images), placeholder="<cat-toy>",
                   init_word="toy", resolution=args.resolution, batch_size=args.batch_size, lr=5e-3, seed=42,
                   steps=10**6)
        mem = bench(config, pipes[config], images, variants, args.rounds, args.mem_steps, args.batch_size,
                    args.resolution, args.threads)
        for v in variants:
            r[v]["peak_rss_mb"] = mem[v]["peak_rss_mb"]
            r[v]["separate_process_step_ms"] = mem[v]["step_ms"]
        report[config] = r
    if args.gemma:
        report["gemma"] = paired("gemma", args.gemma_steps, rounds=args.paired_rounds, model="gemma3-270m", texts="glimmerfox",
                                 placeholder="<glimmerfox>", init_word="fox", batch_size=args.batch_size, steps=10**6)

    from geomkit.report import write_json

    write_json(out / "bench_train.json", report)
    print(json.dumps(report, indent=2))
    print("\nsummary")
    for d, r in report["optimizer_us"].items():
        print(f"  optimiser step alone, d={d}: RSGD (DTI) {r['dti']:.1f} us, AdamW (TI) {r['ti']:.1f} us, "
              f"DTI extra {r['extra_us']:+.1f} us")
    for config in [c for c in ("tiny", "wide", "gemma") if c in report]:
        r = report[config]
        line = (f"  {config:5s}  DTI/TI step time {r['dti_over_ti']:.3f} (rounds {r['dti_over_ti_rounds']}; "
                f"A/A noise {r['aa_noise_ti_again_over_ti']:.3f} {r['aa_noise_rounds']})")
        if "geomkit_ti_over_reference" in r:
            line += (f"\n         geomkit TI / reference {r['geomkit_ti_over_reference']:.3f}   peak RSS geomkit TI "
                     f"{r['geomkit:ti']['peak_rss_mb']:.0f} MB vs reference {r['reference:ti']['peak_rss_mb']:.0f} MB")
        print(line)


if __name__ == "__main__":
    main()
