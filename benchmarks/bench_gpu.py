"""SDXL-class training on the GPUs people own: step time and peak memory of geomkit's trainer per
memory mode, on a pipeline of the chosen size built from configs with random weights (speed and
memory do not depend on the weights' values).

    python benchmarks/bench_gpu.py --size tiny|sd15|sdxl [--steps N] [--batch 4] [--resolution PX]
                                   [--precision bf16|fp16|no] [--compile] [--device cuda|cpu] [--work DIR]

Modes (each in a fresh process, so its peak memory is its own):
  full (fp32 frozen) the full batch with the frozen text encoders in float32 and the whole VAE kept
                     (the trainer before lean frozen models), for the lean saving
  full               the full batch (lean: encoders in the half dtype, VAE encoder dropped)
  micro 2, micro 1   --micro-batch-size 2 / 1
  micro 1 + ckpt     --micro-batch-size 1 --gradient-checkpointing
  full + compile     --compile (only with --compile): compile seconds, then the step after warm-up

Per mode, in that process: peak memory of a DTI session alone (CUDA: max_memory_allocated; CPU:
the process's peak RSS, VmHWM, which includes Python, torch and the libraries), then DTI, TI and
the irreducible work of the same batch (text encoders + UNet forward, MSE, backward to the learned
rows; no draw, optimiser or log line) interleaved step by step in a fresh random order: medians.
The `full` mode also runs `train()` itself (the command's loop) and reports its step period over
`Session.step` in the same process. Prints one table; `--json FILE` keeps the rows.
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
import functools
from pathlib import Path

MODES = {
    "full (fp32 frozen)": dict(micro=None, ckpt=False, lean=False),
    "full": dict(micro=None, ckpt=False),
    "micro 2": dict(micro=2, ckpt=False),
    "micro 1": dict(micro=1, ckpt=False),
    "micro 1 + ckpt": dict(micro=1, ckpt=True),
    # the token with a LoRA beside it (train --lora-rank): its step against the token-only "full" step
    "lora r4": dict(micro=None, ckpt=False, lora=4),
    "lora r32": dict(micro=None, ckpt=False, lora=32),
    "lora r32 + ckpt": dict(micro=None, ckpt=True, lora=32),
}
DEFAULTS = {"tiny": (32, 12), "sd15": (512, 10), "sdxl": (1024, 10), "flux-dev": (1024, 10), "sd35-large": (1024, 10)}


def _images(folder: Path, size: int, n: int = 5) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def _peak_mb(device) -> float:
    from geomkit.train.loop import _peak_memory_mb

    return _peak_memory_mb(device)


def worker(a) -> dict:
    """One mode: everything measured in this process."""
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    from geomkit.train import TrainConfig, objectives
    from geomkit.train.config import check
    from geomkit.train.loop import Session, _Dist, check_device_options

    spec = json.loads(a.mode_spec)
    if not spec.get("lean", True):  # the trainer before lean frozen models
        from geomkit.train.objectives import diffusion

        diffusion.half_dtype_for_encoders = lambda cfg, allow_fp16=True: None
        diffusion.lean_vae = lambda obj: None
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def config(method, **kw):
        cfg = TrainConfig(method=method, model=a.pipe, images=a.images, placeholder="<sks>", init_word="dog",
                          resolution=a.resolution, batch_size=a.batch, lr=5e-3, seed=42, steps=10**6,
                          mixed_precision=a.precision, out=str(Path(a.work) / "runs" / method), progress=False,
                          device=a.device, micro_batch_size=spec["micro"], gradient_checkpointing=spec["ckpt"],
                          compile=spec.get("compile", False), lora_rank=spec.get("lora"), **kw)
        return check(cfg)

    def session(method):
        cfg = config(method)
        cfg.objective = objectives.detect(cfg)
        check_device_options(cfg, device)
        torch.manual_seed(0)
        return Session(cfg, objectives.check_inputs(cfg, cfg.objective), _Dist(a.device))

    warm = 3 if spec.get("compile") else 2
    row = {"mode": a.mode}
    t0 = time.perf_counter()
    dti = session("dti")
    row["load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dti.step(1)
    sync()
    row["first_step_s"] = time.perf_counter() - t0  # includes compiling under --compile
    for k in range(2, warm + 1):
        dti.step(k)
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for k in range(warm + 1, warm + 3):
        dti.step(k)
    sync()
    row["peak_mb"] = _peak_mb(device)

    # the irreducible work of the same batch (and the same chunks): forward + backward to the rows
    obj, slots = dti.obj, dti.slots
    if dti.micro_batch >= a.batch:
        parts = [(obj.draw(1, 0, 1), None)]
    else:
        parts = obj.micro_batches(1, 0, 1, dti.micro_batch)
    leaves = [s.vectors().detach().clone().requires_grad_(True) for s in slots]

    def floor_step(_k):
        for part, w in parts:
            with dti.obj_mode(), dti.autocast():
                loss = obj.loss(leaves, slots, 1, part=part).float()
            (loss * w if w is not None else loss).backward()
        for v in leaves:
            v.grad = None

    ti = session("ti")
    for k in range(1, warm + 1):
        ti.step(k)
        floor_step(k)
    runs = {"dti": dti.step, "ti": ti.step, "floor": floor_step}
    times = {m: [] for m in runs}
    for k in range(warm + 1, warm + 1 + a.steps):
        for m in random.Random(k).sample(list(runs), len(runs)):
            sync()
            t = time.perf_counter()
            runs[m](k)
            sync()
            times[m].append(time.perf_counter() - t)
    for m, v in times.items():
        row[f"{m}_ms"] = 1000 * statistics.median(v)
    row["dti_over_ti"] = row["dti_ms"] / row["ti_ms"]
    row["micro_batch"] = dti.micro_batch
    dti = ti = runs = obj = slots = parts = leaves = floor_step = None  # free the models before the next mode

    if a.mode == "full" and not a.no_loop:  # the command's own loop, in this process
        import gc

        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        row.update(loop_ratio(config, warm + a.steps + 1, sync))
    return row


def loop_ratio(config, steps, sync) -> dict:
    """`train()` (what `geomkit train` runs, progress bar on) with every `Session.step` timed: the
    loop's step period (start to start) over the step itself; 1.00 means the loop adds nothing."""
    import shutil

    from geomkit.train import loop, train

    starts, durs = [], []
    orig = loop.Session.step

    def timed(self, step):
        sync()
        t = time.perf_counter()
        starts.append(t)
        out = orig(self, step)
        sync()
        durs.append(time.perf_counter() - t)
        return out

    cfg = config("dti")
    cfg.steps, cfg.progress = steps, True
    shutil.rmtree(cfg.out, ignore_errors=True)
    loop.Session.step = timed
    try:
        devnull = open(os.devnull, "w")
        err, sys.stderr = sys.stderr, devnull  # the progress bar runs, into /dev/null
        try:
            train(cfg)
        finally:
            sys.stderr = err
            devnull.close()
    finally:
        loop.Session.step = orig
    period = [b - a for a, b in zip(starts[2:-1], starts[3:])]
    return {"command_step_ms": 1000 * statistics.median(period),
            "command_over_session": statistics.median(period) / statistics.median(durs[2:-1])}


# ---- memory estimate without the hardware (--estimate) -----------------------------------------
# The step is traced on the `meta` device (shapes and dtypes only, no weights allocated, seconds on a
# CPU): weights + the tensors autograd keeps for backward (counted once per storage, the frozen
# weights excluded), under a small stand-in for CUDA autocast (matmuls/convs in the half dtype,
# norms and softmax in float32) and a flash-attention stand-in (saves q, k, v, out and the
# log-sum-exp, as PyTorch's fused CUDA kernels do). Checked against the H200 measurements of the
# SDXL-sized floor (see the README): the estimate is a few per cent low.


def _add_lora(denoiser, rank: int) -> int:
    """The adapter as train --lora-rank adds it (meta device); the bytes of its float32 weights,
    their gradients and AdamW's two moments (0 without a LoRA)."""
    if not rank:
        return 0
    import torch
    from peft import LoraConfig

    with torch.device("meta"):
        denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                        init_lora_weights="gaussian"))
    params = [p for n, p in denoiser.named_parameters() if "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return 3 * sum(p.numel() * 4 for p in params)


def _accounting(models: list, extra: int = 0):
    """(weight bytes + `extra`, {storage: bytes} kept for backward, the saved-tensors pack hook that
    fills it): every tensor autograd keeps, counted once, the frozen weights excepted."""
    weights = sum(p.numel() * p.element_size() for m in models for p in m.parameters()) + extra
    frozen = {p.untyped_storage()._cdata for m in models for p in m.parameters()}
    saved = {}

    def pack(t):
        key = t.untyped_storage()._cdata
        if key not in frozen and key not in saved:
            saved[key] = t.untyped_storage().nbytes()
        return t

    return weights, saved, pack


@functools.lru_cache(maxsize=None)
def _flash_like():
    """An attention stand-in for the meta-device trace: flash attention keeps q, k, v, the output
    and the log-sum-exp for backward, never the (L x L) scores."""
    import torch

    class FlashLike(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty(q.shape[:-1] + (v.shape[-1],))
            ctx.save_for_backward(q, k, v, out, q.new_empty(q.shape[:-1], dtype=torch.float32))
            return out

        @staticmethod
        def backward(ctx, g):
            q, k, v = ctx.saved_tensors[:3]
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    return FlashLike


def _estimate(size: str, batch: int, res: int, micro=None, ckpt=False, lean=True, precision="bf16", lora=0) -> dict:
    import logging

    import torch
    import torch.nn.functional as F
    from diffusers import UNet2DConditionModel
    from torch.overrides import TorchFunctionMode
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from geomkit import tiny

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    low = {F.linear, F.conv2d, torch.matmul, torch.bmm, torch.baddbmm, torch.Tensor.matmul, torch.addmm}
    high = {F.group_norm, F.layer_norm, F.softmax, torch.softmax, torch.Tensor.softmax}

    def cast(x, dtype):
        return x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x

    class MiniAutocast(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in low or func in high:
                dtype = half if func in low else torch.float32
                args = tuple(cast(a, dtype) for a in args)
                kwargs = {k: cast(v, dtype) for k, v in kwargs.items()}
            elif func is F.scaled_dot_product_attention:
                return _flash_like().apply(*(a.to(half) for a in args[:3]))
            return func(*args, **kwargs)

    sdxl, unet_cfg, enc_cfgs, _, _ = tiny.PIPELINE_SIZES[size]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg).to(half).eval().requires_grad_(False)
        encs = []
        for k, e in enumerate(enc_cfgs):
            c = tiny.clip_text_config(hidden=e["hidden"], layers=e["layers"], heads=e["heads"], projection_dim=e["projection_dim"])
            c.intermediate_size, c.hidden_act = e["intermediate_size"], e["hidden_act"]
            m = (CLIPTextModelWithProjection if k == 1 else CLIPTextModel)(c).eval().requires_grad_(False)
            encs.append(m.to(half) if lean else m)
    lora_state = _add_lora(unet, lora)
    if ckpt:
        unet.enable_gradient_checkpointing()
    weights, saved, pack = _accounting([unet, *encs], lora_state)

    n, lat = micro or batch, res // 8
    with torch.device("meta"):
        leaves = [torch.zeros(m.config.hidden_size, requires_grad=True) for m in encs]  # the learned rows
        for m, leaf in zip(encs, leaves):  # the rows' gradient path (as geomkit.hooks.inject), without a hook
            emb = m.get_input_embeddings()
            emb.forward = lambda ids, emb=emb, leaf=leaf: type(emb).forward(emb, ids).detach() + leaf.to(emb.weight.dtype)
        ids, t = torch.zeros(n, 77, dtype=torch.long), torch.zeros(n, dtype=torch.long)
        noisy, target = torch.zeros(n, 4, lat, lat, dtype=half), torch.zeros(n, 4, lat, lat)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), MiniAutocast():
            if sdxl:
                o1, o2 = encs[0](ids, output_hidden_states=True), encs[1](ids, output_hidden_states=True)
                cond = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], -1)
                added = {"text_embeds": o2.text_embeds.to(half), "time_ids": torch.zeros(n, 6, dtype=half)}
                pred = unet(noisy, t, cond.to(half), added_cond_kwargs=added).sample
            else:
                pred = unet(noisy, t, encs[0](ids)[0].to(half)).sample
            F.mse_loss(pred.float(), target)
    act = sum(saved.values())
    return {"weights_gib": weights / 2**30, "activations_gib": act / 2**30, "total_gib": (weights + act) / 2**30}


# FLUX.1-dev and SD3.5-large as released (transformer, CLIP-L, CLIP-G, T5-XXL configs); only estimated
# here (no GPU builds them in this kit): random-weight pipelines of these sizes need 30-40 GB to build.
_T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
FLOW_SIZES = {
    # size: (kind, transformer config, CLIP configs, T5 max_sequence_length)
    "flux-dev": ("flux", dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                              num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                              guidance_embeds=True, axes_dims_rope=(16, 56, 56)), ["clip_l"], 512),
    "sd35-large": ("sd3", dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                               num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                               pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm"),
                   ["clip_l", "clip_g"], 256),
}


def _estimate_flow(size: str, batch: int, res: int, micro=None, ckpt=False, precision="bf16", lora=0,
                   encoders=None) -> dict:
    """As `_estimate`, for a FLUX.1 / SD3.x step: the transformer, the CLIP encoders and T5-XXL in the
    half dtype (the learned rows float32), `encoders` the trained ones (default all: gradients flow
    back through each of them, so each keeps its activations)."""
    import logging

    import torch
    import torch.nn.functional as F
    from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel
    from torch.overrides import TorchFunctionMode
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from geomkit import tiny

    logging.getLogger("diffusers").setLevel(logging.ERROR)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    kind, tcfg, clips, t5_len = FLOW_SIZES[size]
    trained = set(encoders or clips + ["t5"])
    low = {F.linear, F.conv2d, torch.matmul, torch.bmm, torch.baddbmm, torch.Tensor.matmul, torch.addmm}

    class MiniAutocast(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in low:
                args = tuple(a.to(half) if torch.is_tensor(a) and a.is_floating_point() else a for a in args)
            elif func is F.scaled_dot_product_attention and kwargs.get("attn_mask") is None:
                # diffusers' attention dispatcher passes query=, key=, value= by keyword
                qkv = list(args[:3]) + [kwargs[k] for k in ("query", "key", "value")[len(args[:3]):]]
                return _flash_like().apply(*(a.to(half) for a in qkv))
            return func(*args, **kwargs)

    cfg = {"clip_l": tiny._CLIP_L, "clip_g": tiny._CLIP_G}
    with torch.device("meta"):
        model = (FluxTransformer2DModel if kind == "flux" else SD3Transformer2DModel)(**tcfg).to(half).eval().requires_grad_(False)
        encs = {}
        for name in clips:
            e = cfg[name]
            c = tiny.clip_text_config(hidden=e["hidden"], layers=e["layers"], heads=e["heads"], projection_dim=e["projection_dim"])
            c.intermediate_size, c.hidden_act = e["intermediate_size"], e["hidden_act"]
            cls = CLIPTextModel if kind == "flux" else CLIPTextModelWithProjection
            encs[name] = cls(c).to(half).eval().requires_grad_(False)
        t5c = T5Config(**_T5_XXL, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)
        encs["t5"] = T5EncoderModel(t5c).to(half).eval().requires_grad_(False)
    lora_state = _add_lora(model, lora)
    if ckpt:
        model.enable_gradient_checkpointing()
    weights, saved, pack = _accounting([model, *encs.values()], lora_state)

    n, lat = micro or batch, res // 8
    with torch.device("meta"):
        for name, m in encs.items():  # the learned rows' gradient path, trained encoders only
            if name in trained:
                # T5EncoderModel's `shared` and `encoder.embed_tokens` are two modules sharing one weight:
                # the encoder's forward calls the latter
                emb = m.encoder.embed_tokens if name == "t5" else m.get_input_embeddings()
                leaf = torch.zeros(emb.weight.shape[1], requires_grad=True)
                emb.forward = lambda ids, emb=emb, leaf=leaf: type(emb).forward(emb, ids).detach() + leaf.to(emb.weight.dtype)
        ids, t5_ids = torch.zeros(n, 77, dtype=torch.long), torch.zeros(n, t5_len, dtype=torch.long)
        t = torch.zeros(n)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), MiniAutocast():
            seq = encs["t5"](t5_ids)[0]
            if kind == "flux":
                pooled = encs["clip_l"](ids).pooler_output
                x = torch.zeros(n, 16, lat, lat, dtype=half)
                packed = FluxPipeline._pack_latents(x, n, 16, lat, lat)
                pred = model(hidden_states=packed, timestep=t, guidance=torch.zeros(n), pooled_projections=pooled.to(half),
                             encoder_hidden_states=seq.to(half), txt_ids=torch.zeros(t5_len, 3),
                             img_ids=torch.zeros((lat // 2) ** 2, 3), return_dict=False)[0]
            else:
                o1, o2 = (encs[k](ids, output_hidden_states=True) for k in ("clip_l", "clip_g"))
                clip = torch.cat([o1.hidden_states[-2], o2.hidden_states[-2]], -1)
                clip = F.pad(clip, (0, seq.shape[-1] - clip.shape[-1]))
                embeds = torch.cat([clip.to(half), seq.to(half)], -2)
                pooled = torch.cat([o1[0], o2[0]], -1).to(half)
                pred = model(hidden_states=torch.zeros(n, 16, lat, lat, dtype=half), timestep=t, encoder_hidden_states=embeds,
                             pooled_projections=pooled, return_dict=False)[0]
            F.mse_loss(pred.float(), torch.zeros(pred.shape))
    act = sum(saved.values())
    return {"weights_gib": weights / 2**30, "activations_gib": act / 2**30, "total_gib": (weights + act) / 2**30}


def estimate_flow_table(size: str, batch: int, res: int, precision: str) -> list:
    kind = FLOW_SIZES[size][0]
    clip_only = ["clip_l"] if kind == "flux" else ["clip_l", "clip_g"]
    rows = []
    for name, kw in [("full", {}), ("micro 1", dict(micro=1)), ("full + ckpt", dict(ckpt=True)),
                     ("micro 1 + ckpt", dict(micro=1, ckpt=True)),
                     (f"--encoders {','.join(clip_only)} + micro 1 + ckpt", dict(micro=1, ckpt=True, encoders=clip_only)),
                     ("--encoders t5 + micro 1 + ckpt", dict(micro=1, ckpt=True, encoders=["t5"])),
                     ("LoRA r4 + micro 1 + ckpt", dict(lora=4, micro=1, ckpt=True)),
                     ("LoRA r32 + micro 1 + ckpt", dict(lora=32, micro=1, ckpt=True))]:
        if kw.get("micro") and batch % kw["micro"]:
            continue
        r = _estimate_flow(size, batch, res, precision=precision, **kw)
        rows.append({"mode": name, "weights GiB": f"{r['weights_gib']:.2f}", "kept for backward GiB": f"{r['activations_gib']:.2f}",
                     "estimated peak GiB": f"{r['total_gib']:.1f}"})
    return rows


def estimate_table(size: str, batch: int, res: int, precision: str) -> list:
    if size in FLOW_SIZES:
        return estimate_flow_table(size, batch, res, precision)
    rows = []
    for name, kw in [("full, fp32 frozen encoders", dict(lean=False)), ("full", {}), ("micro 2", dict(micro=2)),
                     ("micro 1", dict(micro=1)), ("full + ckpt", dict(ckpt=True)), ("micro 2 + ckpt", dict(micro=2, ckpt=True)),
                     ("micro 1 + ckpt", dict(micro=1, ckpt=True)), ("full, fp32 frozen encoders + ckpt", dict(lean=False, ckpt=True)),
                     ("LoRA r4", dict(lora=4)), ("LoRA r32", dict(lora=32)), ("LoRA r32 + micro 1", dict(lora=32, micro=1)),
                     ("LoRA r32 + ckpt", dict(lora=32, ckpt=True)), ("LoRA r32 + micro 1 + ckpt", dict(lora=32, micro=1, ckpt=True))]:
        if kw.get("micro") and batch % kw["micro"]:
            continue
        r = _estimate(size, batch, res, precision=precision, **kw)
        rows.append({"mode": name, "weights GiB": f"{r['weights_gib']:.2f}", "kept for backward GiB": f"{r['activations_gib']:.2f}",
                     "estimated peak GiB": f"{r['total_gib']:.1f}"})
    return rows


def build(size: str, work: Path) -> Path:
    from geomkit import tiny

    dest = work / f"pipe-{size}"
    if not (dest / "model_index.json").exists():
        t = time.time()
        tiny.save_sized_pipeline(dest, size)
        print(f"built the {size} pipeline in {time.time() - t:.0f} s: {dest}", file=sys.stderr, flush=True)
    return dest


def fmt(row: dict, cuda: bool) -> dict:
    mem = "peak GPU MB" if cuda else "peak RSS MB"
    out = {"mode": row["mode"]}
    if "error" in row:
        out["error"] = row["error"][:80]
        return out
    out.update({
        "µ-batch": row["micro_batch"], "DTI ms": f"{row['dti_ms']:.1f}", "TI ms": f"{row['ti_ms']:.1f}",
        "floor ms": f"{row['floor_ms']:.1f}", "DTI/TI": f"{row['dti_over_ti']:.3f}",
        "DTI/floor": f"{row['dti_ms'] / row['floor_ms']:.2f}", mem: f"{row['peak_mb']:.0f}",
        "1st step s": f"{row['first_step_s']:.1f}",
    })
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "sd15", "sdxl", *FLOW_SIZES), default="tiny",
                   help="flux-dev and sd35-large: --estimate only")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: 12 tiny, 10 otherwise)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--resolution", type=int, default=None, help="default: 32 tiny, 512 sd15, 1024 sdxl")
    p.add_argument("--precision", choices=("bf16", "fp16", "no"), default="bf16")
    p.add_argument("--compile", action="store_true", help="add the --compile mode")
    p.add_argument("--modes", default=None, help="comma list of modes to run (default: all)")
    p.add_argument("--device", default=None, help="default: cuda when present")
    p.add_argument("--threads", type=int, default=0, help="torch threads in each worker (default: torch's)")
    p.add_argument("--work", default=None, help="folder for the pipeline and images (kept; default: a temp folder)")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--no-loop", action="store_true", help="skip the command-loop measurement")
    p.add_argument("--estimate", action="store_true",
                   help="only estimate each mode's peak GPU memory at this size (meta-device trace; seconds on a CPU)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode-spec", default=None, help=argparse.SUPPRESS)
    p.add_argument("--pipe", default=None, help=argparse.SUPPRESS)
    p.add_argument("--images", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    res, steps = DEFAULTS[a.size]
    a.resolution = a.resolution or res
    a.steps = a.steps or steps
    if a.worker:
        import warnings

        warnings.filterwarnings("ignore")
        a.mode = a.worker
        print("ROW " + json.dumps(worker(a)), flush=True)
        return 0

    if a.estimate:
        from geomkit.report import table_text

        if a.size == "tiny" or a.precision == "no":
            p.error("--estimate needs --size sd15, sdxl, flux-dev or sd35-large and --precision bf16 or fp16")
        print(f"geomkit bench_gpu --estimate: size {a.size}, {a.resolution} px, batch {a.batch}, {a.precision}: peak GPU "
              "memory of one step, ESTIMATED on the meta device (no GPU; weights + tensors kept for backward)")
        print(table_text(estimate_table(a.size, a.batch, a.resolution, a.precision)))
        return 0

    if a.size in FLOW_SIZES:
        p.error(f"--size {a.size}: only --estimate (building a random pipeline of this size is not part of this kit)")
    import torch

    a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = a.device.startswith("cuda")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="geomkit-bench-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    pipe = build(a.size, work)
    images = _images(work / "images", a.resolution)
    modes = dict(MODES)
    if a.size == "tiny":  # the tiny UNet's projections are 8-16 wide: rank 32 does not fit, rank 8 stands in
        modes = {k.replace("r32", "r8"): dict(v, lora=min(v.get("lora") or 0, 8) or None) if "lora" in v else v
                 for k, v in modes.items()}
    if a.compile:
        modes["full + compile"] = dict(micro=None, ckpt=False, compile=True)
    if a.modes:
        modes = {m: modes[m] for m in a.modes.split(",")}
    rows = []
    t_all = time.time()
    for name, spec in modes.items():
        if spec["micro"] is not None and a.batch % spec["micro"]:
            continue
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--mode-spec", json.dumps(spec),
               "--size", a.size, "--pipe", str(pipe), "--images", str(images), "--steps", str(a.steps),
               "--batch", str(a.batch), "--resolution", str(a.resolution), "--precision", a.precision,
               "--device", a.device, "--threads", str(a.threads), "--work", str(work)] + (["--no-loop"] if a.no_loop else [])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                                            os.environ.get("PYTHONPATH", "")]))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROW ")]
        if proc.returncode or not line:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"mode": name, "error": err})
        else:
            rows.append(json.loads(line[-1][4:]))
        print(f"  {name}: done ({time.time() - t_all:.0f} s)", file=sys.stderr, flush=True)

    from geomkit.report import table_text

    dev_name = torch.cuda.get_device_name(a.device) if cuda else f"CPU ({os.cpu_count()} cores)"
    print(f"geomkit bench_gpu: size {a.size}, {a.resolution} px, batch {a.batch}, {a.precision}, {dev_name}, "
          f"{a.steps} timed steps per variant (median), random weights")
    print(table_text([fmt(r, cuda) for r in rows]))
    full = next((r for r in rows if r["mode"] == "full" and "command_over_session" in r), None)
    if full:
        print(f"command loop (train(), progress bar on): step period {full['command_step_ms']:.1f} ms = "
              f"{full['command_over_session']:.3f} x Session.step in the same process")
    base = next((r for r in rows if r["mode"] == "full (fp32 frozen)" and "peak_mb" in r), None)
    if base and full:
        print(f"lean frozen models: peak {base['peak_mb']:.0f} -> {full['peak_mb']:.0f} MB "
              f"({'GPU' if cuda else 'RSS, whole process'})")
    comp = next((r for r in rows if r["mode"] == "full + compile" and "dti_ms" in r), None)
    if comp and full:
        print(f"compile: first step {comp['first_step_s']:.1f} s (compiling), then {comp['dti_ms']:.1f} ms vs "
              f"{full['dti_ms']:.1f} ms eager ({comp['dti_ms'] / full['dti_ms']:.2f}x)")
    plain = next((r for r in rows if r["mode"] == "full" and "dti_ms" in r), None)
    for r in rows:
        if r["mode"].startswith("lora") and "dti_ms" in r and plain:
            print(f"{r['mode']}: DTI + LoRA step {r['dti_ms']:.1f} ms = {r['dti_ms'] / plain['dti_ms']:.3f} x the token-only "
                  f"step ({plain['dti_ms']:.1f} ms); peak {r['peak_mb']:.0f} vs {plain['peak_mb']:.0f} MB")
    print(f"total {time.time() - t_all:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
