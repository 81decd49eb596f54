"""Micro-batches, gradient checkpointing, lean frozen models and the new flags' bad input.

The result of a step must not depend on how its batch is cut: on tiny random SD, SDXL, SANA
pipelines and the LM objective, DTI and TI, micro-batches of 2 and 1 (and diffusers' /
transformers' gradient checkpointing) give the full batch's learned rows (float32, CPU,
relative difference <= 1e-5); DTI keeps its invariants in every mode; resume stays bit-exact."""

from __future__ import annotations

import json
import math

import pytest
import torch

from geomkit.train import TrainConfig, objectives, train
from geomkit.train.config import check
from geomkit.train.loop import Session, _Dist

from helpers import random_images

TOKEN = "<cat-toy>"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("mb-images"), [(32, 32)] * 3, seed=1)


@pytest.fixture(scope="module")
def models(tiny_dir, tmp_path_factory):
    from geomkit import tiny

    sana = tiny.save_sana_pipeline(tmp_path_factory.mktemp("mb-sana") / "sana")
    return {"sd": tiny_dir("sd"), "sdxl": tiny_dir("sdxl"), "sana": sana, "lm": tiny_dir("gemma3")}


def config(kind, models, images, out, **kw):
    args = dict(model=str(models[kind]), placeholder=TOKEN, init_word="toy", steps=2, batch_size=4, lr=0.05,
                out=str(out), progress=False, seed=3)
    if kind == "lm":
        args.update(texts="glimmerfox", placeholder="<glimmerfox>", init_word="fox")
    else:
        args.update(images=str(images), resolution=32 if kind != "sana" else None)
    args.update(kw)
    return TrainConfig(**args)


def session(cfg):
    cfg = check(cfg)
    cfg.objective = objectives.detect(cfg)
    torch.manual_seed(0)
    return Session(cfg, objectives.check_inputs(cfg, cfg.objective), _Dist("cpu"))


def checkpointed_module(sess):
    """A module that diffusers / transformers checkpoint (its forward runs again in backward)."""
    obj = sess.obj
    if obj.kind == "lm":
        return obj.enc.model.model.layers[0].mlp  # transformers checkpoints the layer's forward, not its hooks
    model = obj.transformer if hasattr(obj, "transformer") else obj.unet
    if hasattr(model, "transformer_blocks"):
        return model.transformer_blocks[0]
    return model.up_blocks[-1].resnets[0]  # downstream of cross-attention: its input needs a gradient


def two_steps(sess, micro):
    """Two steps from the session's starting state with micro-batches of `micro`; the rows
    after each step and the log lines."""
    for p, p0 in zip(sess.params, sess.start):
        with torch.no_grad():
            p.copy_(p0)
    sess.opt.state.clear()
    sess.micro_batch = micro
    calls = []
    module = checkpointed_module(sess)
    forward = module.forward

    def counting(*a, **k):  # counted on entry: a non-reentrant recompute may stop early
        calls.append(1)
        return forward(*a, **k)

    module.forward = counting  # (no hooks outside geomkit.hooks)
    try:
        rows, lines = [], []
        for k in (1, 2):
            lines.append(sess.step(k))
            rows.append([p.detach().clone() for p in sess.params])
    finally:
        del module.forward
    return rows, lines, len(calls)


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sana", "lm"])
@pytest.mark.parametrize("method", ["dti", "ti"])
def test_micro_batches_and_checkpointing_give_the_full_batch_result(kind, method, models, images, tmp_path):
    kw = {"kappa": 0.0} if method == "dti" else {}
    plain = session(config(kind, models, images, tmp_path, method=method, **kw))
    plain.start = [p.detach().clone() for p in plain.params]
    ref, ref_lines, ref_calls = two_steps(plain, 4)
    runs = {"micro 2": two_steps(plain, 2), "micro 1": two_steps(plain, 1)}
    ckpt = session(config(kind, models, images, tmp_path, method=method, gradient_checkpointing=True, **kw))
    ckpt.start = plain.start
    runs["checkpointing"] = two_steps(ckpt, 4)
    runs["checkpointing + micro 1"] = two_steps(ckpt, 1)

    assert runs["micro 1"][2] == 4 * ref_calls  # four chunks, each one forward of the block
    assert runs["checkpointing"][2] == 2 * ref_calls  # the checkpointed block runs again in backward
    for name, (rows, lines, _) in runs.items():
        for step in range(2):
            for a, b in zip(rows[step], ref[step]):
                assert rel(a, b) <= 1e-5, (name, step)
            assert lines[step]["loss"] == pytest.approx(ref_lines[step]["loss"], rel=1e-5), name
    if method == "dti":
        lr = plain.cfg.lr
        for name, (rows, lines, _) in dict(runs, full=(ref, ref_lines, 0)).items():
            for k, slot in enumerate(plain.slots):
                sfx = "" if k == 0 else f"_{k + 1}"
                for ln in lines:  # the norm is m* after every step
                    assert ln["norm" + sfx] == pytest.approx(slot.m_star, rel=1e-6), name
                v0, v1 = plain.start[k].double(), rows[0][k].double()  # unit rows
                dot = (v0 * v1).sum(-1)
                turned = torch.atan2((v1 - dot[:, None] * v0).norm(dim=-1), dot)
                assert torch.allclose(turned, torch.full_like(turned, math.atan(lr)), atol=1e-6), name  # kappa 0


def test_resume_with_micro_batches_is_bit_exact_and_records_the_size(models, images, tmp_path):
    from safetensors.torch import load_file

    def learned(out):
        return load_file(str(out / "learned_embeds.safetensors"))[TOKEN]

    train(config("sdxl", models, images, tmp_path / "a", method="dti", steps=3, micro_batch_size=2))
    train(config("sdxl", models, images, tmp_path / "b", method="dti", steps=2, save_every=1, micro_batch_size=2))
    # resumed with another micro-batch size: the result does not depend on it
    train(config("sdxl", models, images, tmp_path / "b", method="dti", steps=3, micro_batch_size=1, resume="latest"))
    a, b = learned(tmp_path / "a"), learned(tmp_path / "b")
    assert rel(b, a) <= 1e-5
    train(config("sdxl", models, images, tmp_path / "c", method="dti", steps=2, save_every=1, micro_batch_size=2))
    train(config("sdxl", models, images, tmp_path / "c", method="dti", steps=3, micro_batch_size=2, resume="latest"))
    assert torch.equal(learned(tmp_path / "c"), a)  # same micro-batch size: bit-exact
    for name in ("config.json", "results.json"):
        saved = json.loads((tmp_path / "a" / name).read_text())
        assert saved["micro_batch_size"] == 2 and saved["micro_batch_size_used"] == 2


def test_lean_frozen_models_under_bf16(models, images, tmp_path):
    sess = session(config("sdxl", models, images, tmp_path, method="ti", mixed_precision="bf16"))
    obj = sess.obj
    for enc in obj.encoders:
        assert {p.dtype for p in enc.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in obj.unet.parameters()} == {torch.bfloat16}
    assert obj.vae.encoder is None and obj.vae.decoder is not None  # validation decodes only
    line = sess.step(1)
    assert math.isfinite(line["loss"])
    for p in sess.params:
        assert p.dtype == torch.float32
        assert {t.dtype for t in sess.opt.state[p].values() if t.ndim} == {torch.float32}


@pytest.mark.parametrize("flags, message", [
    (["--micro-batch-size", "3"], "--micro-batch-size 3 does not divide --batch-size 4"),
    (["--micro-batch-size", "0"], "--micro-batch-size 0: must be at least 1"),
    (["--micro-batch-size", "-2"], "--micro-batch-size -2: must be at least 1"),
    (["--micro-batch-size", "two"], "--micro-batch-size two: use a whole number"),
    (["--micro-batch-size", "auto"], "--micro-batch-size auto needs a CUDA GPU"),
    (["--compile"], "--compile: torch.compile cannot run here"),
])
def test_bad_memory_flags_fail_in_one_line(flags, message, models, capsys, monkeypatch, tmp_path):
    from geomkit.cli import main
    from geomkit.train import loop

    monkeypatch.setattr(loop, "compile_unavailable", lambda device: "no C++ compiler was found (install g++ or set CXX)")
    code = main(["train", "--model", str(models["lm"]), "--texts", "glimmerfox", "--placeholder", "<glimmerfox>",
                 "--init-word", "fox", "--batch-size", "4", "--steps", "1", "--out", str(tmp_path / "x"), "--quiet",
                 "--device", "cpu", *flags])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x" / "config.json").exists()


def test_compile_check_is_honest_about_this_machine():
    import shutil

    from geomkit.train.loop import compile_unavailable

    why = compile_unavailable(torch.device("cpu"))
    has_cxx = any(shutil.which(c) for c in ("g++", "clang++", "c++"))
    assert (why is None) == has_cxx


@pytest.mark.parametrize("fits, chosen", [(4, 4), (3, 2), (1, 1), (0, None)])
def test_auto_takes_the_largest_divisor_that_fits(fits, chosen, capsys):
    """`auto` (CUDA only, so the out-of-memory errors are simulated here): accelerate's
    find_executable_batch_size walks down the divisors of the batch size."""
    from types import SimpleNamespace

    from geomkit.errors import GeomkitError
    from geomkit.train.loop import _resolve_micro_batch

    tried = []

    def trial_chunk(n):
        tried.append(n)
        if n > fits:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    sess = SimpleNamespace(cfg=SimpleNamespace(batch_size=4), dist=SimpleNamespace(main=True), trial_chunk=trial_chunk)
    if chosen is None:
        with pytest.raises(GeomkitError, match="not even a micro-batch of 1 fits"):
            _resolve_micro_batch(sess, "auto")
        assert tried == [4, 2, 1]
        return
    assert _resolve_micro_batch(sess, "auto") == chosen
    assert tried == [d for d in (4, 2, 1) if d >= chosen]
    assert f"--micro-batch-size auto: {chosen}" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_with_micro_batches_match_the_full_batch(models, tmp_path):
    """Under torchrun (what `accelerate launch` runs): each process accumulates its chunks, then
    one all-reduce per step; the result equals the full batch's."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    env = dict(os.environ, OMP_NUM_THREADS="1")
    rows = {}
    for micro in ("2", "1"):
        out = tmp_path / micro
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "geomkit", "train",
               "--model", str(models["lm"]), "--texts", "glimmerfox", "--placeholder", "<glimmerfox>", "--init-word", "fox",
               "--steps", "2", "--batch-size", "2", "--micro-batch-size", micro, "--lr", "0.05", "--out", str(out), "--quiet"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = json.loads((out / "results.json").read_text())
        assert res["num_processes"] == 2 and res["micro_batch_size_used"] == int(micro)
        rows[micro] = load_file(str(out / "learned_embeds.safetensors"))["<glimmerfox>"]
    assert rel(rows["1"], rows["2"]) <= 1e-5
    assert float(rows["1"].double().norm()) == pytest.approx(res["m_star"][0], rel=1e-6)
