"""The training loop: `train(TrainConfig) -> results`.

Order of work: settings checked, output folder checked, data read and checked, then models
loaded (so bad input fails in one line, fast). One step: the learned rows are formed (e = m* v
or e), injected through `geomkit.hooks.inject`, the objective's loss computed, gradients reach
only the new rows, the optimiser steps, the step is logged. Checkpoints every --save-every steps
and at the end; a non-finite loss stops the run, keeping the last good state as a checkpoint.

Several processes (`accelerate launch` / `torchrun`): each draws its own examples and noise
(a pure function of seed, step and rank), the few gradient rows are averaged with one
all-reduce, every process takes the same step; only the main process writes files.

Faults: the main process holds the output folder's run lock (geomkit.runlock) for the run's
whole life; SIGTERM or Ctrl-C lets the current step finish, writes a checkpoint there and raises
`Stopped` (the CLI exits 143 / 130); a failed checkpoint write (a full disk) is one line and
leaves the previous checkpoint as it was; `--keep-checkpoints N` prunes older checkpoints once a
newer one is complete; `--resume` skips checkpoints that fail their integrity check.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import signal
import statistics
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

from geomkit.errors import GeomkitError
from geomkit.train import checkpoint, data, header, objectives, resume_check, tracking
from geomkit.train.config import (
    TrainConfig, absolute_paths, check, check_objective_options, effective_lr, same_setting,
)

STRICT_RESUME = (
    "method", "objective", "model", "placeholder", "init_word", "prior_word", "magnitude", "num_vectors",
    "texts", "images", "resolution", "templates", "max_length", "preset",
    "lora_rank", "lora_alpha", "lora_targets", "loss", "dco_beta", "encoders",
)
LOG_FLUSH_S = 5.0


class _Dist:
    """Process layout: one process, or several under accelerate launch / torchrun."""

    def __init__(self, device=None):
        import torch

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1:
            from accelerate import PartialState

            cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
            state = PartialState(cpu=cpu)
            self.rank, self.world, self.device = state.process_index, state.num_processes, state.device
            self._state = state
        else:
            self.rank = 0
            self._state = None
            if device:
                self.device = torch.device(device)
            else:
                self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def reduce_step(self, terms: list, params) -> list:
        """Average the step's loss terms (scalars) and the parameters' gradients over processes
        with ONE all-reduce (one flat buffer); returns the averaged terms (the grads in place)."""
        if self.world == 1:
            return terms
        import torch
        import torch.distributed as dist

        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([t.detach().float().reshape(1) for t in terms] + [g.reshape(-1).float() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        out = list(flat[: len(terms)])
        offset = len(terms)
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset: offset + n].view_as(g))
            offset += n
        return out

    def barrier(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    def any(self, flag: bool) -> bool:
        """True on every process when `flag` is true on one (a stop request reaches them all)."""
        if self.world == 1:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)


def _say(msg: str, main: bool = True) -> None:
    if main:
        print(f"geomkit train: {msg}", file=sys.stderr, flush=True)


def _metrics(e, ref) -> dict:
    """A log line's geometry of one slot, in float64 on the CPU. `e`: its rows already copied to
    the CPU; `ref`: (init, mu) in float64 on the CPU, computed once (see `_log_line`)."""
    from geomkit.geometry import angle_deg, cosine

    e = e.double()
    init, mu = ref
    return {
        "norm": float(e.norm(dim=-1).mean()),
        "angle_from_init_deg": float(angle_deg(e, init).mean()),
        "cos_to_prior": float(cosine(e, mu[None].expand_as(e)).mean()),
    }


def _log_line(step, loss, lr, slots, refs) -> dict:
    """The step's log line. Every slot's rows reach the CPU in one copy (one device sync for all
    text encoders), and the reference directions are passed in once per run (`refs`), so the
    line costs a few small float64 operations on the CPU per step."""
    import torch

    rows = [s.vectors().detach() for s in slots]
    flat = torch.cat([r.reshape(-1) for r in rows]).to("cpu", torch.float32)  # one copy, as slot.embedding()
    line = {"step": step, "loss": loss}
    offset = 0
    for k, r in enumerate(rows):
        e = flat[offset: offset + r.numel()].view(r.shape)
        offset += r.numel()
        suffix = "" if k == 0 else f"_{k + 1}"
        for key, value in _metrics(e, refs[k]).items():
            line[key + suffix] = value
    line["lr"] = lr
    return line


def _write_log(out: Path, log: list) -> None:
    import json

    from geomkit.report import write_text

    try:
        write_text(out / "train_log.jsonl", "".join(json.dumps(line) + "\n" for line in log))
    except OSError as exc:
        raise GeomkitError(f"cannot write {out / 'train_log.jsonl'} ({exc.strerror or exc}); the checkpoints "
                           "in checkpoints/ are intact: free space, then continue with --resume") from None


def _resume_check(cfg: TrainConfig, saved: dict, main: bool) -> None:
    # a setting newer than the checkpoint had its default value in that run
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    saved = dict(defaults, **saved)
    diff = [k for k in STRICT_RESUME if not same_setting(k, saved.get(k), getattr(cfg, k))]
    if diff:
        shown = "; ".join(f"--{k.replace('_', '-')} was {saved.get(k)!r}, now {getattr(cfg, k)!r}" for k in diff)
        raise GeomkitError(f"--resume: the checkpoint belongs to a different run ({shown})")
    soft = [k for k in ("lr", "scale_lr", "lr_schedule", "kappa", "batch_size", "seed", "mixed_precision",
                        "crossinit_weight", "crossinit_reduction", "weight_decay", "flip_p", "crop", "lora_lr",
                        "lora_dropout", "token_steps", "guidance_scale") if str(saved.get(k)) != str(getattr(cfg, k))]
    if soft:
        _say("resuming with changed settings (the result will differ from an uninterrupted run): "
             + ", ".join(f"{k} {saved.get(k)} -> {getattr(cfg, k)}" for k in soft), main)


def _check_related(cfg: TrainConfig, sess) -> None:
    """--related words are measured against (semantic drift): each must be one token of the first
    text encoder, as the analysis commands require; dropping one silently would hide a typo."""
    enc = sess.slots[0].enc
    bad = []
    for w in cfg.related:
        if not w:
            continue
        try:
            enc.token_id(w)
        except GeomkitError:
            bad.append(w)
    if bad:
        shown = ", ".join(repr(w) for w in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        raise GeomkitError(f"--related: {shown} {'is' if len(bad) == 1 else 'are'} not one token of {enc.name}; "
                           "drift is measured against single-token words: drop or replace them")


def _check_token_room(cfg: TrainConfig, sess) -> None:
    """Every training text must keep all of the placeholder's tokens within what the encoder reads
    (--max-length for lm; the text encoder's own limit, 77 for CLIP, for diffusion); else some
    vectors would never be trained or the token would be cut off."""
    from geomkit.train.data import expand_placeholder

    obj = sess.obj
    new = {i for s in sess.slots for i in s.token_ids}
    if getattr(obj, "kind", None) == "lm":
        texts = [(f"--texts line {k + 1}", expand_placeholder(t, cfg.placeholder, cfg.num_vectors))
                 for k, t in enumerate(obj.lines)]
        limits = [(obj.enc, cfg.max_length, f"--max-length {cfg.max_length}")]
    else:
        prompts = getattr(obj, "prompts", None) or []
        texts = [(f"--templates prompt {p!r}", p) for p in prompts]
        limits = []
        for enc in obj.encoders:
            limit = getattr(obj, "MAX_SEQUENCE_LENGTH", None) or getattr(enc.tokenizer, "model_max_length", None)
            if limit and limit < 10**6:
                limits.append((enc, int(limit), f"the text encoder's limit of {int(limit)} tokens"))
    for enc, limit, what in limits:
        for where, text in texts:
            ids = enc.tokenizer(text)["input_ids"]
            kept = enc.tokenizer(text, truncation=True, max_length=limit)["input_ids"]
            last = max((i for i, t in enumerate(ids) if t in new), default=-1)
            if sum(t in new for t in kept) < sum(t in new for t in ids):
                hint = ("use fewer --num-vectors or a shorter text" if cfg.num_vectors > 1 else
                        ("raise --max-length or shorten the line" if obj.kind == "lm" else "shorten the template"))
                raise GeomkitError(f"{where} needs {last + 1} tokens to hold the placeholder ({cfg.num_vectors} "
                                   f"vector{'s' if cfg.num_vectors > 1 else ''}), more than {what}: part of it would "
                                   f"never be trained; {hint}")


def _peak_memory_mb(device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU; else the resident-set high-water
    mark of this process's own address space (VmHWM; `ru_maxrss` would also count a parent's
    memory inherited through fork + exec)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    except (ImportError, AttributeError):
        return float("nan")


def compile_unavailable(device) -> Optional[str]:
    """Why torch.compile (inductor) cannot run on `device` here, or None when it can: on CUDA it
    needs Triton and a GPU of compute capability 7.0 or newer; on a CPU, a C++ compiler."""
    import shutil

    import torch

    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:  # pragma: no cover - older torch
            has_triton = None
        if has_triton is not None and not has_triton():
            return "Triton is not installed (pip install triton)"
        major, _ = torch.cuda.get_device_capability(device)
        if major < 7:
            return f"the GPU's compute capability is {major}.x; inductor needs 7.0 or newer"
        return None
    if device.type == "cpu":
        cxx = os.environ.get("CXX") or "g++"
        if not any(shutil.which(c) for c in (cxx, "g++", "clang++", "c++")):
            return "no C++ compiler was found (install g++ or set CXX)"
        return None
    return f"geomkit compiles on cuda and cpu only, not {device.type}"


def compile_cache_dir() -> Path:
    """torch.compile's cache (inductor's FX-graph and kernel caches) under geomkit's cache folder,
    so a second run with the same models and shapes compiles little."""
    from geomkit.sources.packaged import _cache_root

    return _cache_root() / "torch-compile"


def check_device_options(cfg: TrainConfig, device) -> None:
    """Settings that depend on the device, checked before any model is loaded."""
    if cfg.micro_batch_size == "auto" and device.type != "cuda":
        raise GeomkitError(f"--micro-batch-size auto needs a CUDA GPU (this run is on {device.type}); "
                           f"give a number that divides --batch-size {cfg.batch_size}")
    if cfg.compile:
        why = compile_unavailable(device)
        if why:
            raise GeomkitError(f"--compile: torch.compile cannot run here: {why}; run without --compile")
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(compile_cache_dir()))


def _resolve_micro_batch(sess, spec) -> int:
    """The micro-batch size: the batch size, a given divisor of it, or for "auto" the largest
    divisor of the batch size whose forward + backward fits in the GPU's memory, found by
    accelerate's `find_executable_batch_size` (a trial chunk of step 1's draw; nothing updated)."""
    b = int(sess.cfg.batch_size)
    if spec is None:
        return b
    if spec != "auto":
        return int(spec)
    from accelerate.utils import find_executable_batch_size

    divisors = [d for d in range(1, b + 1) if b % d == 0]
    state = {"n": b}

    def next_smaller() -> int:
        below = [d for d in divisors if d < state["n"]]
        state["n"] = below[-1] if below else 0
        return state["n"]

    @find_executable_batch_size(starting_batch_size=b, reduce_batch_size_fn=next_smaller)
    def trial(n):
        state["n"] = n
        sess.trial_chunk(n)
        return n

    try:
        n = trial()
    except RuntimeError as exc:
        if "No executable batch size" in str(exc):
            raise GeomkitError("--micro-batch-size auto: not even a micro-batch of 1 fits in the GPU's memory; "
                               "add --gradient-checkpointing, use --mixed-precision bf16, or a lower --resolution") from None
        raise
    _say(f"--micro-batch-size auto: {n} (the largest divisor of --batch-size {b} that fits)", sess.dist.main)
    return n


def crossinit_penalty(vectors, slots, reduction: str = "sum"):
    """CrossInit's ||e - e0||^2 per text encoder, summed over encoders: the sum of squares
    (CrossInit's text) or their mean over the rows' elements (the DTI authors' MSE)."""
    terms = [((v.float() - s.init.to(v.device)) ** 2) for v, s in zip(vectors, slots)]
    return sum(t.mean() if reduction == "mean" else t.sum() for t in terms)


class NonFinite(Exception):
    def __init__(self, what: str, value: float):
        super().__init__(what)
        self.what, self.value = what, value


class Session:
    """Everything one run needs between steps: objective (frozen models, data), slots (learned
    rows), optimiser, precision settings and process layout."""

    def __init__(self, cfg: TrainConfig, inputs: dict, dist: "_Dist"):
        import torch

        from geomkit.train.params import add_placeholder, build_slot
        from geomkit.train.trainables import TokenRows

        self.cfg, self.dist = cfg, dist
        self.obj = objectives.build(cfg, cfg.objective, inputs, dist.device)
        self.slots = []
        for enc in self.obj.encoders:
            ids = add_placeholder(enc, cfg.placeholder, cfg.num_vectors)
            self.slots.append(build_slot(enc, cfg, ids))
        self.obj.setup(self.slots)
        self.base_lr = effective_lr(cfg, dist.world)
        self.tokens = TokenRows(self.slots, cfg, self.base_lr)
        self.trainables = [self.tokens]
        self.lora = None
        if cfg.lora_rank:
            from geomkit.train.lora import LoraTrainable

            self.lora = LoraTrainable(self.obj.denoiser, cfg, self.obj.denoiser_name)
            self.trainables.append(self.lora)
        self.params = [p for t in self.trainables for p in t.params]
        self.opt = self.tokens.opt
        self._data_loss = self._dco_loss if cfg.loss == "dco" else self.obj.loss
        device_type = dist.device.type
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.mixed_precision)
        self.autocast = (lambda: torch.autocast(device_type, dtype=half)) if half is not None else nullcontext
        self.scaler = torch.amp.GradScaler(device_type) if cfg.mixed_precision == "fp16" else None
        self.micro_batch = _resolve_micro_batch(self, cfg.micro_batch_size)
        # the log's reference directions, in float64 on the CPU once (not copied every step)
        self._refs = [(s.init.double(), s.mu.detach().cpu().double()) for s in self.slots]

    def _dco_loss(self, vectors, slots, step: int, rank: int = 0, world: int = 1, part=None):
        from geomkit.train.lora import dco_loss

        part = self.obj.draw(step, rank, world) if part is None else part
        return dco_loss(self.obj, part, vectors, slots, self.cfg.dco_beta)

    def step(self, step: int) -> dict:
        """One optimisation step (1-based); its log line. Raises NonFinite (nothing updated).

        The step's examples, noise and timesteps are drawn once for the whole batch; with a
        micro-batch size N < batch size they run in chunks of N, each chunk's loss weighted by its
        share of the batch (so the summed gradient is the full batch's), then one reduction over
        processes (every trainable's gradients in one buffer) and one update of each trainable.
        The result does not depend on N."""
        import torch

        cfg, slots, dist, scaler = self.cfg, self.slots, self.dist, self.scaler
        lr = self.tokens.set_lr(step)
        for t in self.trainables[1:]:
            t.set_lr(step)
        reg_on = cfg.method == "crossinit" and cfg.crossinit_weight and self.tokens.active(step)
        if self.micro_batch >= cfg.batch_size:
            parts = [(None, None)]  # the whole batch: the objective draws it itself
        else:
            parts = self.obj.micro_batches(step, dist.rank, dist.world, self.micro_batch)
        total = data_total = None
        with self.obj_mode():
            for k, (part, weight) in enumerate(parts):
                vectors = self.tokens.vectors(step)
                with self.autocast():
                    data_loss = self._data_loss(vectors, slots, step, dist.rank, dist.world, part=part)
                data_loss = data_loss.float()
                if weight is not None:
                    data_loss = data_loss * weight
                loss = data_loss
                if reg_on and k == 0:  # the regulariser once per step, as the full batch has it once
                    loss = loss + cfg.crossinit_weight * crossinit_penalty(vectors, slots, cfg.crossinit_reduction)
                if loss.requires_grad:
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                total = loss.detach() if total is None else total + loss.detach()
                if reg_on:
                    data_total = data_loss.detach() if data_total is None else data_total + data_loss.detach()
        # one reduction over processes (loss, data term and gradients together), one host sync
        terms = [total] + ([data_total] if reg_on else [])
        terms = dist.reduce_step(terms, self.params)
        grads = [p.grad for p in self.params if p.grad is not None]
        flags = torch.stack([torch.isfinite(g).all() for g in grads]).all().float() if scaler is None and grads else None
        host = torch.stack([t.float().reshape(()) for t in terms] + ([flags.to(terms[0].device)] if flags is not None else []))
        host = host.tolist()
        value = host[0]
        stepping = [t for t in self.trainables if t.active(step) and any(p.grad is not None for p in t.params)]
        if not math.isfinite(value):
            self._zero_grad()
            raise NonFinite("loss", value)
        if flags is not None and not host[-1]:
            self._zero_grad()
            raise NonFinite("gradient", value)
        for t in stepping:
            if scaler is not None:
                scaler.step(t.opt)
            else:
                t.opt.step()
        if scaler is not None and stepping:
            scaler.update()
        self._zero_grad()
        if reg_on:  # log the data term, averaged over processes
            value = host[1]
        line = _log_line(step, value, lr, slots, self._refs)
        for t in self.trainables[1:]:
            line.update(t.log_fields(step))
        return line

    def inference(self):
        """Sampling (validation images): the LoRA's dropout off, as at inference."""
        return self.lora.inference() if self.lora is not None else nullcontext()

    def _zero_grad(self) -> None:
        for t in self.trainables:
            t.opt.zero_grad(set_to_none=True)

    def state_tensors(self) -> dict:
        out = {}
        for t in self.trainables:
            out.update(t.state_tensors())
        return out

    def load_state_tensors(self, tensors: dict) -> None:
        for t in self.trainables:
            t.load_state_tensors(tensors)

    def trial_chunk(self, n: int) -> None:
        """Forward + backward of one micro-batch of n examples of step 1's draw, then the gradients
        are dropped: what `--micro-batch-size auto` tries (no update, no randomness consumed)."""
        dist = self.dist
        try:
            with self.obj_mode():
                vectors = [s.vectors() for s in self.slots]
                with self.autocast():
                    if n >= self.cfg.batch_size:
                        loss = self._data_loss(vectors, self.slots, 1, dist.rank, dist.world)
                    else:
                        part, _ = self.obj.micro_batches(1, dist.rank, dist.world, n)[0]
                        loss = self._data_loss(vectors, self.slots, 1, dist.rank, dist.world, part=part)
                loss.float().backward()
                del loss, vectors
        finally:
            self._zero_grad()

    def obj_mode(self):
        """The objective's own context for a training step (e.g. transformers' checkpointing needs
        train mode); a no-op for most."""
        mode = getattr(self.obj, "step_mode", None)
        return mode() if mode is not None else nullcontext()


class Stopped(KeyboardInterrupt):
    """SIGTERM or Ctrl-C ended the run: `checkpoint` (if any) holds the state after `step`."""

    def __init__(self, signum: int, step=None, checkpoint=None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + int(signum)
        name = signal.Signals(signum).name
        if checkpoint is not None:
            msg = f"stopped by {name} after step {step}; checkpoint {checkpoint}; continue with --resume"
        else:
            msg = f"stopped by {name} before this run wrote a checkpoint (checkpoints already in --out are unchanged)"
        super().__init__(msg)


class _Signals:
    """SIGINT/SIGTERM during the steps: finish the step, checkpoint, stop. Outside the steps (model
    loading, final outputs), or a second signal: stop at once (every file is written atomically)."""

    def __init__(self):
        self.signum = None
        self.deferring = False
        self.step = None  # the newest checkpoint written by this run: (step, path)
        self._old = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old[sig] = signal.signal(sig, self._handle)
                except (ValueError, OSError):
                    pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _handle(self, signum, frame) -> None:
        if self.deferring and self.signum is None:
            self.signum = signum
            return
        step, path = self.step or (None, None)
        raise Stopped(signum, step, path)


def train(cfg: TrainConfig, given=()) -> dict:
    """Check the settings, lock --out for this run, train (see the module docstring). `given`:
    the options typed on the command line (an option of the other objective is refused even at
    its default value).

    Raises GeomkitError for bad input (nothing written: a folder this call created is removed
    again) and Stopped on SIGTERM / Ctrl-C (after a checkpoint at the last completed step)."""
    from geomkit import report, runlock

    cfg = absolute_paths(check(cfg))  # recorded so, --resume works from any folder
    cfg.objective = objectives.detect(cfg)
    check_objective_options(cfg, given)
    if cfg.preset and cfg.resume is None:  # a resumed run's config.json already holds the preset's values
        from geomkit.train.presets import apply_preset

        applied = apply_preset(cfg, objectives.pipeline_kind_of(cfg), given)
        check(cfg)  # the preset's values (and --scale-lr's rate with them) pass the same checks
        if applied:
            _say(f"--preset {cfg.preset}: " + ", ".join(f"{k} {getattr(cfg, k)}" for k in applied))
    mark = report.created_mark()
    out = report.prepare_out(cfg.out, command="train")  # a folder of another kind of run is refused
    lock = runlock.acquire(out, "train")
    try:
        with _Signals() as sig:
            return _train(cfg, out, sig)
    except GeomkitError:
        lock.release()  # its file first: then a folder this call created is empty and goes too
        report.remove_created_if_empty(mark)
        raise
    finally:
        lock.release()


def _train(cfg: TrainConfig, out: Path, sig: _Signals) -> dict:
    """The run itself, on settings `train` checked, in the folder it locked."""
    import numpy as np
    import torch

    from geomkit.report import write_json
    from geomkit.train.exports import export, rescale

    ckpt_dir = out / "checkpoints"
    resume_meta = resume_tensors = None
    checkpoint.remove_stale_temporaries(ckpt_dir)  # writes cut short by a kill (we hold the run lock)
    if cfg.resume == "latest" and not checkpoint.complete(ckpt_dir):  # stopped before its first checkpoint
        _say(f"no checkpoint in {ckpt_dir} yet (the run stopped before its first one): starting from step 0")
    elif cfg.resume is not None:
        js = resume_check.find(out, cfg.resume, _say)  # damaged checkpoints skipped: one line
        resume_meta, resume_tensors = checkpoint.load(js)
        resume_check.check_owner(out, js, resume_meta.get("config"), resume_check.read_saved_config(out / "config.json"))
        resume_check.check_steps(int(resume_meta["step"]), cfg.steps)
        _resume_check(cfg, resume_meta.get("config", {}), True)
    elif checkpoint.complete(ckpt_dir):
        raise GeomkitError(f"--out {out} already holds a training run (checkpoints/); add --resume to continue it, or choose another --out")
    inputs = objectives.check_inputs(cfg, cfg.objective)
    related = [w for w in cfg.related if w]

    dist = _Dist(cfg.device)
    check_device_options(cfg, dist.device)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)

    sess = Session(cfg, inputs, dist)
    _check_token_room(cfg, sess)
    _check_related(cfg, sess)
    obj, slots = sess.obj, sess.slots
    autocast = sess.autocast

    start, log, prior_seconds, last_saved = 0, [], 0.0, None
    if resume_meta is not None:
        sess.load_state_tensors(resume_tensors)
        checkpoint.set_rng_state(resume_meta["rng"])
        start = int(resume_meta["step"])
        log = [ln for ln in resume_meta.get("log", []) if ln["step"] <= start]
        prior_seconds = float(resume_meta.get("train_seconds", 0.0))
        last_saved = start
        _say(f"resuming from step {start} ({js})", dist.main)

    run_info = {
        "objective": {"kind": obj.kind, **obj.describe()},  # --resume reads the kind back from here
        "m_star": [s.m_star for s in slots],
        "token_ids": [s.token_ids for s in slots],
        "tokens": data.token_strings(cfg.placeholder, cfg.num_vectors),
        "device": str(dist.device),
        "num_processes": dist.world,
        "micro_batch_size_used": sess.micro_batch,
    }
    if sess.lora is not None:
        run_info["lora"] = sess.lora.describe()
    if dist.main:
        write_json(out / "config.json", dict(cfg.to_dict(), **run_info))
    tracker = tracking.Tracker(cfg.report_to if dist.main else None, out, cfg.to_dict())  # --report-to; a no-op without it

    def save(step: int) -> Path:
        nonlocal last_saved
        tensors = sess.state_tensors()
        meta = {"config": cfg.to_dict(), "log": log, "train_seconds": prior_seconds + (time.perf_counter() - t_start),
                "format": 1}
        path = None
        if dist.main:
            try:
                path = checkpoint.save(ckpt_dir, step, tensors, meta)
            except OSError as exc:
                kept = (f"the previous checkpoint {checkpoint.paths(ckpt_dir, last_saved)[1]} is intact"
                        if last_saved else "no earlier checkpoint exists")
                raise GeomkitError(f"cannot write the checkpoint at step {step} in {ckpt_dir} ({exc.strerror or exc}); "
                                   f"{kept}: free space, then continue with --resume") from None
            checkpoint.prune(ckpt_dir, cfg.keep_checkpoints, step)
        dist.barrier()
        last_saved = step
        sig.step = (step, path)
        return path

    from tqdm.auto import tqdm

    for line in header.from_session(cfg, obj, slots, sess, dist, start):  # what is about to run, before the bar
        _say(line, cfg.progress and dist.main)
    bar = tqdm(total=cfg.steps, initial=min(start, cfg.steps), desc=f"train {cfg.method}", unit="step",
               disable=not (cfg.progress and dist.main), dynamic_ncols=True)
    t_start = time.perf_counter()
    last_flush = time.perf_counter()
    step_times = []
    sig.deferring = True
    finished = False
    try:
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            try:
                line = sess.step(step)
            except NonFinite as bad:
                _stop(step, bad.value, bad.what, save, last_saved, log, out, dist)
            log.append(line)
            tracker.log(step, line)
            bar.update(1)
            bar.set_postfix(loss=f"{log[-1]['loss']:.4f}", norm=f"{log[-1]['norm']:.4f}", refresh=False)
            dt = time.perf_counter() - t0  # the whole step: batch, forward, backward, update, metrics
            step_times.append(dt)
            log[-1]["step_s"] = round(dt, 6)
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
                save(step)
                if dist.main:
                    _write_log(out, log)
                last_flush = time.perf_counter()
            elif dist.main and time.perf_counter() - last_flush > LOG_FLUSH_S:
                _write_log(out, log)
                last_flush = time.perf_counter()
            if cfg.validation_steps and cfg.validation_prompts and step % cfg.validation_steps == 0 and dist.main:
                with autocast(), sess.inference():
                    tracker.images(step, obj.validate(slots, step, out))
            if dist.any(sig.signum is not None):  # SIGTERM / Ctrl-C: keep this step, then stop
                signum = sig.signum or signal.SIGTERM
                path = save(step) if last_saved != step else sig.step[1]
                raise Stopped(signum, step, path)
        finished = True
    finally:
        sig.deferring = False
        bar.close()
        tracker.close()
        if dist.main and log:
            try:
                _write_log(out, log)
            except GeomkitError:
                if finished:  # else an error is already on its way out: that is the one to report
                    raise
    seconds = prior_seconds + (time.perf_counter() - t_start)

    # ---- outputs ----------------------------------------------------------------------------
    final_step = max(start, cfg.steps)
    if start >= cfg.steps:
        _say(f"the checkpoint is already at step {start} (--steps {cfg.steps}); writing the outputs only", dist.main)
    rows = [s.embedding() for s in slots]
    unrescaled = None
    if cfg.method == "ti-rescaled":
        unrescaled = rows
        rows = [rescale(r, s.m_star) for r, s in zip(rows, slots)]
    files = []
    if dist.main:
        flow = dict(labels=getattr(obj, "encoder_labels", None), kind=getattr(obj, "flow", None))
        files = export(out, cfg.placeholder, rows, **flow)
        if sess.lora is not None:
            files += sess.lora.export(out, type(obj.pipeline()), obj.denoiser_name)
        if unrescaled is not None:
            files += export(out, cfg.placeholder, unrescaled, stem="learned_embeds_unrescaled", **flow)
        done_in_loop = cfg.validation_steps and final_step % cfg.validation_steps == 0 and start < cfg.steps
        if cfg.validation_prompts and not done_in_loop:
            with autocast(), sess.inference():
                files += obj.validate(slots, final_step, out)

    results = _results(cfg, obj, slots, rows, unrescaled, log, seconds, step_times, related, files, start, dist, run_info)
    if dist.main:
        write_json(out / "results.json", results)
    dist.barrier()
    return results


def _stop(step, value, what, save, last_saved, log, out, dist):
    good = step - 1
    where = "no checkpoint was written (it failed on the first step)"
    if good >= 1:
        if last_saved != good:
            save(good)  # the parameters are still those after step `good`: a good state
        where = f"the last good checkpoint is {out / 'checkpoints' / f'step-{good:06d}.json'} (step {good})"
    if dist.main:
        _write_log(out, log)
    raise GeomkitError(
        f"the {what} became {value if what == 'loss' else 'non-finite'} at step {step}: training stopped; {where}. "
        "Lower --lr (or use --mixed-precision no), then continue with --resume"
    )


def _results(cfg, obj, slots, rows, unrescaled, log, seconds, step_times, related, files, start, dist, run_info) -> dict:
    import torch

    from geomkit.geometry import angle_deg, cosine, drift

    per = []
    for k, (slot, e) in enumerate(zip(slots, rows)):
        e64 = e.double()
        per.append({
            "encoder": k + 1,
            "m_star": slot.m_star,
            "final_norm": float(e64.norm(dim=-1).mean()),
            "row_norms": e64.norm(dim=-1).tolist(),
            "angle_from_init_deg": float(angle_deg(e64, slot.init.double()).mean()),
            "cos_to_prior": float(cosine(e64, slot.mu.detach().cpu().double()[None].expand_as(e64)).mean()),
        })
        if unrescaled is not None:
            per[-1]["norm_before_rescale"] = float(unrescaled[k].double().norm(dim=-1).mean())
    enc = slots[0].enc
    mean_vec = rows[0].double().mean(0)
    words, vecs = [], []
    for w in [cfg.init_word] + [r for r in related if r != cfg.init_word]:
        tid = enc.token_id(w)  # every word checked before training (_check_related)
        words.append(w)
        vecs.append(enc.embedding_table()[tid].detach().double().cpu())
    drift_map = {}
    if vecs:
        drift_map = dict(zip(words, (float(c) for c in drift(mean_vec, torch.stack(vecs)))))
    losses = [ln["loss"] for ln in log]
    timed = step_times[2:] if len(step_times) > 4 else step_times
    res = {
        "method": cfg.method,
        "objective": cfg.objective,
        "model": cfg.model,
        "placeholder": cfg.placeholder,
        "init_word": cfg.init_word,
        "prior_word": cfg.prior,
        "m_star": [s.m_star for s in slots],
        "kappa": cfg.kappa,
        "lr": cfg.lr,
        "scale_lr": cfg.scale_lr,
        "lr_used": effective_lr(cfg, dist.world),
        "steps": cfg.steps,
        "batch_size": cfg.batch_size,
        "num_vectors": cfg.num_vectors,
        "seed": cfg.seed,
        "mixed_precision": cfg.mixed_precision,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "final_loss_mean10": sum(losses[-10:]) / len(losses[-10:]) if losses else None,
        "first_loss_mean10": sum(losses[:10]) / len(losses[:10]) if losses else None,
        "final_norm": [p["final_norm"] for p in per],
        "angle_from_init_deg": per[0]["angle_from_init_deg"],
        "cos_to_prior": per[0]["cos_to_prior"],
        "seconds": seconds,
        "step_seconds_median": statistics.median(timed) if timed else None,
        "peak_memory_mb": _peak_memory_mb(dist.device),
        "drift": drift_map,
        "per_encoder": per,
        "resumed_from": start or None,
        "files": [str(Path(f).name) for f in files],
        "device": run_info["device"],
        "num_processes": run_info["num_processes"],
        "micro_batch_size": cfg.micro_batch_size,
        "micro_batch_size_used": run_info["micro_batch_size_used"],
        "loss": cfg.loss,
        "dco_beta": cfg.dco_beta if cfg.loss == "dco" else None,
        "lora": run_info.get("lora"),
        "token_steps": cfg.token_steps,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "compile": cfg.compile,
        "first_step_seconds": step_times[0] if step_times else None,  # includes compiling under --compile
    }
    if cfg.model == "gemma3-270m":
        res["note"] = "Gemma 3 270M weights are Q4_K_M-quantised (de-quantised to float32); Gemma terms of use apply"
    return res
