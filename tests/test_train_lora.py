"""The token trained together with a LoRA on the frozen denoiser (pivotal tuning), and DCO, on tiny
SD, SDXL and SANA pipelines: the exported LoRA files load into diffusers and give geomkit's own
trained denoiser; DCO starts at ln 2; DTI's invariants hold; micro-batches and checkpointing give
the same result; resume is bit-exact; two processes equal one with the averaged batch."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from geomkit.train import TrainConfig, objectives, train
from geomkit.train.config import check
from geomkit.train.loop import Session, _Dist

from helpers import assert_one_line_error, random_images, run_cli

TOKEN = "<cat-toy>"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("lora-images"), [(32, 32), (40, 36), (36, 44)], seed=2)


@pytest.fixture(scope="module")
def models(tiny_dir):
    return {"sd": tiny_dir("sd"), "sdxl": tiny_dir("sdxl"), "sana": tiny_dir("sana")}


def config(kind, models, images, out, **kw):
    args = dict(model=str(models[kind]), images=str(images), placeholder=TOKEN, init_word="toy", steps=2, batch_size=2,
                lr=0.05, lora_rank=2, lora_lr=0.01, out=str(out), progress=False, seed=3,
                resolution=32 if kind != "sana" else None)
    args.update(kw)
    return TrainConfig(**args)


def session(cfg, world_seed=True):
    cfg = check(cfg)
    cfg.objective = objectives.detect(cfg)
    torch.manual_seed(cfg.seed)
    return Session(cfg, objectives.check_inputs(cfg, cfg.objective), _Dist("cpu"))


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def log_of(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


# ---- files every LoRA loader reads --------------------------------------------------------------
def _pipeline(kind, folder):
    from diffusers import SanaPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    if kind == "sd":
        return StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    return (StableDiffusionXLPipeline if kind == "sdxl" else SanaPipeline).from_pretrained(folder)


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sana"])
def test_exported_lora_loads_into_diffusers_and_gives_the_trained_denoiser(kind, models, images, tmp_path):
    cfg = config(kind, models, images, tmp_path / "run", lora_alpha=3.0, method="dti", steps=3)
    res = train(cfg)
    out = tmp_path / "run"
    assert res["lora"]["rank"] == 2 and res["lora"]["alpha"] == 3.0 and res["loss"] == "mse"
    saved = json.loads((out / "config.json").read_text())
    assert (saved["lora_rank"], saved["lora_alpha"], saved["lora_lr"], saved["loss"]) == (2, 3.0, 0.01, "mse")
    assert saved["lora"]["targets"] == ["to_q", "to_k", "to_v", "to_out.0"]

    # geomkit's own trained denoiser: a session resumed from the final checkpoint, adapter on
    sess = session(config(kind, models, images, out, lora_alpha=3.0, method="dti", steps=3, resume="latest"))
    from geomkit.train import checkpoint

    _, tensors = checkpoint.load(checkpoint.find(out, "latest"))
    sess.load_state_tensors(tensors)
    part = sess.obj.draw(1)
    vectors = [s.vectors().detach() for s in sess.slots]
    with torch.no_grad():
        ours = sess.obj.predict(part, vectors, sess.slots)
    assert sess.lora.n_params == res["lora"]["parameters"] > 0

    layouts = ["pytorch_lora_weights.safetensors"] + (["lora_kohya.safetensors"] if kind != "sana" else [])
    assert set(layouts) <= set(res["files"])
    for name in layouts:
        pipe = _pipeline(kind, models[kind])
        pipe.load_lora_weights(str(out), weight_name=name)
        denoiser = pipe.unet if kind != "sana" else pipe.transformer
        sess.obj.denoiser.disable_adapters()
        base = sess.obj.predict
        # the same conditioning fed to the loaded denoiser
        with torch.no_grad():
            if kind == "sana":
                embeds, mask = sess.obj.condition(part["prompts"], vectors, sess.slots)
                theirs = denoiser(hidden_states=part["noisy"], encoder_hidden_states=embeds, encoder_attention_mask=mask,
                                  timestep=part["t"], return_dict=False)[0]
            else:
                cond, added = sess.obj.condition([ids[part["which"]] for ids in sess.obj.template_ids], vectors,
                                                 sess.slots, part["crops"])
                kwargs = {"added_cond_kwargs": added} if added is not None else {}
                theirs = denoiser(part["noisy"], part["t"], cond, **kwargs).sample
            plain = base(part, vectors, sess.slots)
        sess.obj.denoiser.enable_adapters()
        assert rel(theirs, ours) <= 1e-5, name
        assert rel(plain, ours) > 1e-4  # the LoRA changed the denoiser: the comparison has teeth
        if name == "lora_kohya.safetensors":
            alphas = {k: v for k, v in load_file(str(out / name)).items() if k.endswith(".alpha")}
            assert alphas and all(float(v) == 3.0 for v in alphas.values())
            assert all(k.startswith("lora_unet_") for k in load_file(str(out / name)))


# ---- DCO ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "sdxl", "sana"])
def test_dco_loss_is_ln2_at_step_1_and_falls(kind, models, images, tmp_path):
    train(config(kind, models, images, tmp_path, loss="dco", dco_beta=1000.0, method="dti", steps=3))
    log = log_of(tmp_path)
    assert log[0]["loss"] == pytest.approx(math.log(2.0), abs=1e-6)  # LoRA B = 0: model == reference
    assert log[-1]["loss"] < math.log(2.0)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["loss"] == "dco" and res["dco_beta"] == 1000.0


def test_dco_reference_is_the_adapter_off_model(models, images, tmp_path):
    """An independent computation of the DCO loss on one drawn batch: per-example errors of the
    model and of the frozen denoiser, -log sigmoid(-beta (err - err_ref)), averaged."""
    from geomkit.train.lora import dco_loss

    sess = session(config("sd", models, images, tmp_path, loss="dco", dco_beta=50.0))
    with torch.no_grad():
        for p in sess.lora.params:
            p.add_(torch.randn_like(p) * 0.05)
    part = sess.obj.draw(1)
    vectors = [s.vectors().detach() for s in sess.slots]
    got = dco_loss(sess.obj, part, vectors, sess.slots, 50.0)
    with torch.no_grad():
        pred = sess.obj.predict(part, vectors, sess.slots)
        for p in sess.lora.params:
            p.zero_()
        ref = sess.obj.predict(part, vectors, sess.slots)
    e = ((pred - part["target"]) ** 2).mean(dim=(1, 2, 3))
    r = ((ref - part["target"]) ** 2).mean(dim=(1, 2, 3))
    want = torch.nn.functional.softplus(50.0 * (e - r)).mean()
    assert float(got.detach()) == pytest.approx(float(want), rel=1e-5)
    assert float(got.detach()) != pytest.approx(math.log(2.0), abs=1e-4)


# ---- invariants, micro-batches, checkpointing, pivot --------------------------------------------
def test_dti_invariants_hold_under_joint_training_and_the_token_stops_at_the_pivot(models, images, tmp_path):
    res = train(config("sdxl", models, images, tmp_path, method="dti", kappa=0.0, steps=4, token_steps=2, loss="dco",
                       validation_prompts=[f"a {TOKEN}"], validation_steps=4, validation_inference_steps=1))
    assert len(list((tmp_path / "validation").glob("step-000004-*.png"))) == 1  # rendered with the LoRA on
    log = log_of(tmp_path)
    m1, m2 = res["m_star"]
    for ln in log:
        assert ln["norm"] == pytest.approx(m1, rel=1e-6) and ln["norm_2"] == pytest.approx(m2, rel=1e-6)
        assert ln["lora_lr"] == pytest.approx(0.01)
    assert log[0]["angle_from_init_deg"] == pytest.approx(math.degrees(math.atan(0.05)), rel=1e-4)  # one step: atan(lr)
    assert [ln["lr"] for ln in log] == [0.05, 0.05, 0.0, 0.0]
    assert log[2]["angle_from_init_deg"] == log[1]["angle_from_init_deg"] == log[3]["angle_from_init_deg"]
    assert log[3]["loss"] != log[2]["loss"]  # the LoRA goes on


def _steps(sess, n):
    for k in range(1, n + 1):
        sess.step(k)
    return [p.detach().clone() for p in sess.params]


@pytest.mark.parametrize("kind", ["sd", "sana"])
def test_micro_batches_and_checkpointing_give_the_same_result(kind, models, images, tmp_path):
    ref = _steps(session(config(kind, models, images, tmp_path, batch_size=4, loss="dco")), 2)
    for kw in ({"micro_batch_size": 1}, {"gradient_checkpointing": True}, {"micro_batch_size": 2, "gradient_checkpointing": True}):
        got = _steps(session(config(kind, models, images, tmp_path, batch_size=4, loss="dco", **kw)), 2)
        assert len(got) == len(ref) > 1
        for i, (a, b) in enumerate(zip(got, ref)):
            # sess.params: the token rows first (the trainer's usual 1e-5), then the LoRA weights, 1e-4
            # under AdamW: Adam divides by sqrt(v), so a rounding-level difference in a near-zero gradient
            # (lora_A while B is still ~0) becomes a visible, still tiny, difference in the step
            assert rel(a, b) <= (1e-5 if i == 0 else 1e-4), (kw, i)


def test_resume_with_a_lora_is_bit_exact(models, images, tmp_path):
    kw = dict(method="ti", loss="dco", steps=4)
    train(config("sdxl", models, images, tmp_path / "a", **kw))
    train(config("sdxl", models, images, tmp_path / "b", save_every=2, **dict(kw, steps=2)))
    train(config("sdxl", models, images, tmp_path / "b", save_every=2, resume="latest", **kw))
    for f in ("learned_embeds_sdxl.safetensors", "pytorch_lora_weights.safetensors", "lora_kohya.safetensors"):
        a, b = load_file(str(tmp_path / "a" / f)), load_file(str(tmp_path / "b" / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
    assert [ln["loss"] for ln in log_of(tmp_path / "a")] == [ln["loss"] for ln in log_of(tmp_path / "b")]


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_keeps_lora_weights_and_state_float32(models, images, tmp_path, precision, dtype):
    sess = session(config("sd", models, images, tmp_path, mixed_precision=precision, loss="dco"))
    before = [p.detach().clone() for p in sess.lora.params]
    for k in range(1, 21):  # fp16: one GradScaler drives both optimisers; it skips steps until its scale fits
        line = sess.step(k)
        if any(not torch.equal(a, p) for a, p in zip(before, sess.lora.params)):
            break
    assert math.isfinite(line["loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, sess.lora.params))  # the LoRA was updated
    assert all(p.dtype == torch.float32 for p in sess.lora.params)
    assert all(v.dtype == torch.float32 for st in sess.lora.opt.state.values() for k, v in st.items() if k != "step")
    assert next(iter(sess.obj.unet.parameters())).dtype == dtype  # the frozen denoiser stays lean


@pytest.mark.slow
def test_two_processes_equal_one_with_the_averaged_batch(models, images, tmp_path):
    """torchrun with 2 processes of batch 2 against an in-process computation: each rank's loss
    on its own draw, gradients averaged, one step of each optimiser."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "geomkit", "train",
           "--model", str(models["sd"]), "--images", str(images), "--placeholder", TOKEN, "--init-word", "toy",
           "--steps", "2", "--batch-size", "2", "--resolution", "32", "--lr", "0.05", "--seed", "3",
           "--lora-rank", "2", "--lora-lr", "0.01", "--loss", "dco", "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]

    import random

    import numpy as np

    cfg = config("sd", models, images, tmp_path / "ref", loss="dco")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    sess = session(cfg)
    for step in (1, 2):
        sess.tokens.set_lr(step)
        sess.lora.set_lr(step)
        for rank in (0, 1):
            loss = sess._data_loss(sess.tokens.vectors(step), sess.slots, step, rank, 2)
            (loss / 2).backward()
        sess.tokens.opt.step()
        sess.lora.opt.step()
        sess._zero_grad()
    token = load_file(str(out / "learned_embeds.safetensors"))[TOKEN]
    assert rel(token, sess.slots[0].vectors().detach()) <= 1e-5
    theirs = sess.lora.peft_state()
    from diffusers.utils import convert_unet_state_dict_to_peft

    saved = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in
                                             load_file(str(out / "pytorch_lora_weights.safetensors")).items()})
    assert saved.keys() == theirs.keys()
    for k in theirs:
        assert rel(saved[k], theirs[k]) <= 1e-5 or float(theirs[k].abs().max()) == 0.0, k


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize("args,msg", [
    (["--lora-rank", "0"], "--lora-rank 0"),
    (["--lora-rank", "-3"], "--lora-rank -3"),
    (["--lora-rank", "two"], "--lora-rank"),
    (["--lora-rank", "64"], "above the smallest targeted dimension"),
    (["--lora-rank", "2", "--lora-alpha", "0"], "--lora-alpha"),
    (["--lora-rank", "2", "--lora-alpha", "nan"], "--lora-alpha"),
    (["--lora-rank", "2", "--loss", "dco", "--dco-beta", "-1"], "--dco-beta"),
    (["--lora-rank", "2", "--lora-targets", "to_q,qkv"], "has no linear module named qkv"),
    (["--loss", "dco"], "add --lora-rank"),
    (["--lora-alpha", "4"], "add --lora-rank"),
    (["--lora-rank", "2", "--token-steps", "9", "--steps", "3"], "--token-steps 9"),
    (["--lora-rank", "2", "--loss", "kl"], "--loss"),
])
def test_bad_lora_input_is_one_line_and_writes_nothing(models, images, tmp_path, capsys, args, msg):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "train", "--model", models["sd"], "--images", images, "--placeholder", TOKEN,
                           "--init-word", "toy", "--resolution", "32", "--steps", "3", "--out", out, *args)
    assert_one_line_error(code, err, msg)
    assert not out.exists()


def test_lora_with_the_lm_objective_is_refused(tiny_dir, tmp_path, capsys):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "train", "--model", tiny_dir("gemma3"), "--texts", "glimmerfox", "--placeholder",
                           "<glimmerfox>", "--init-word", "fox", "--lora-rank", "4", "--out", out)
    assert_one_line_error(code, err, "--lora-rank")
    assert not out.exists()


def test_resume_refuses_a_changed_lora(models, images, tmp_path, capsys):
    out = tmp_path / "run"
    train(config("sd", models, images, out, steps=2, save_every=1))
    for flag, value in (("--lora-rank", "3"), ("--lora-alpha", "7"), ("--loss", "dco"), ("--lora-targets", "to_q")):
        code, _, err = run_cli(capsys, "train", "--out", out, "--resume", flag, value, "--steps", "3")
        assert_one_line_error(code, err, flag)


# ---- using the result: generate / evaluate -------------------------------------------------------
@pytest.fixture(scope="module")
def lora_run(models, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-run") / "run"
    train(config("sd", models, images, out, steps=2, lora_lr=0.05))
    return out


def test_a_run_folder_brings_its_lora_to_generate(models, lora_run, tmp_path, capsys):
    from geomkit.generation import install_loras, load_pipeline, run_token

    token = run_token(lora_run)
    assert token.lora == lora_run / "pytorch_lora_weights.safetensors"
    pipe = load_pipeline(str(models["sd"]), device="cpu", dtype="float32")
    install_loras(pipe, [token.lora])  # what generate and evaluate call
    assert "geomkit_0" in pipe.unet.peft_config
    code, _, err = run_cli(capsys, "generate", "--run", lora_run, "--prompt", "a {} on a beach", "--seeds", "0",
                           "--steps", "2", "--resolution", "32", "--out", tmp_path / "g", "--no-progress")
    assert code == 0, err
    res = json.loads((tmp_path / "g" / "results.json").read_text())
    assert res["tokens"][TOKEN]["lora"].endswith("pytorch_lora_weights.safetensors")
    # the same run without its LoRA: other images (the LoRA is really applied)
    code, _, err = run_cli(capsys, "generate", "--embedding", lora_run / "learned_embeds.safetensors", "--model", models["sd"],
                           "--prompt", "a {} on a beach", "--seeds", "0", "--steps", "2", "--resolution", "32",
                           "--out", tmp_path / "h", "--no-progress")
    assert code == 0, err
    from PIL import Image
    import numpy as np

    a = np.asarray(Image.open(next((tmp_path / "g" / "images").glob("*.png"))), dtype=np.float32)
    b = np.asarray(Image.open(next((tmp_path / "h" / "images").glob("*.png"))), dtype=np.float32)
    assert np.abs(a - b).max() > 0
    # --lora FILE gives the same images as the run folder
    code, _, err = run_cli(capsys, "generate", "--embedding", lora_run / "learned_embeds.safetensors", "--model", models["sd"],
                           "--lora", lora_run / "pytorch_lora_weights.safetensors", "--prompt", "a {} on a beach",
                           "--seeds", "0", "--steps", "2", "--resolution", "32", "--out", tmp_path / "i", "--no-progress")
    assert code == 0, err
    c = np.asarray(Image.open(next((tmp_path / "i" / "images").glob("*.png"))), dtype=np.float32)
    assert np.array_equal(a, c)


def test_generate_refuses_a_lora_made_for_another_model(models, images, lora_run, tmp_path, capsys):
    xl = tmp_path / "xl"
    train(config("sdxl", models, images, xl, steps=1))
    for f in (xl / "pytorch_lora_weights.safetensors", xl / "lora_kohya.safetensors"):
        out = tmp_path / f"o-{f.stem}"
        code, _, err = run_cli(capsys, "generate", "--embedding", lora_run / "learned_embeds.safetensors", "--model",
                               models["sd"], "--lora", f, "--prompt", "a {}", "--seeds", "0", "--out", out)
        assert_one_line_error(code, err, "made for another model")
        assert not out.exists()


def test_readme_lora_commands_work_as_written_on_tiny_pipelines(models, images, tmp_path, capsys, monkeypatch):
    """The README's "Token + LoRA" commands, with the user's folders swapped for tiny ones and the
    step counts cut (appended options win in argparse)."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = text.split("# README: lora-commands", 1)[1].split("```", 1)[0]
    commands = [c for c in re.sub(r"\\\n\s*", " ", block).splitlines() if c.strip().startswith("geomkit ")]
    assert len(commands) == 3
    monkeypatch.chdir(tmp_path)
    for line in commands:
        argv = shlex.split(line.split("#")[0] if "#" in line.split("'")[0] else line)[1:]
        argv = [str(models["sdxl"]) if a == "~/models/sdxl-base" else str(images) if a == "./my-dog" else a for a in argv]
        if argv[0] == "train":
            argv += ["--steps", "2", "--resolution", "32"] + (["--token-steps", "1"] if "--token-steps" in argv else [])
        else:
            argv += ["--seeds", "0", "--steps", "1", "--resolution", "32", "--no-progress"]
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, (line, err)
    assert (tmp_path / "runs/dog-dco/pytorch_lora_weights.safetensors").is_file()
    assert (tmp_path / "runs/dog-lora/lora_kohya.safetensors").is_file()
    assert json.loads((tmp_path / "runs/dog-dco/results.json").read_text())["loss"] == "dco"
    assert list((tmp_path / "runs/dog-dco-images/images").glob("*.png"))


def test_compare_shows_token_and_lora_runs_as_table_8(models, images, lora_run, tmp_path, capsys):
    import pandas as pd

    dco = tmp_path / "dti-dco"
    train(config("sd", models, images, dco, steps=2, loss="dco", lora_rank=4, lora_alpha=4.0))
    code, _, err = run_cli(capsys, "compare", lora_run, dco, "--out", tmp_path / "cmp")
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "cmp" / "compare.csv")
    assert list(frame["lora"]) == ["r2 a2", "r4 a4"] and list(frame["loss"]) == ["mse", "dco"]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    table8 = md.split("## Table 8 layout", 1)[1].split("##", 1)[0]
    assert "r2 a2" in table8 and "r4 a4" in table8 and "dco" in table8


def test_generate_with_a_lora_run_and_another_lora_activates_both(models, images, lora_run, tmp_path, capsys):
    other = tmp_path / "other"
    train(config("sd", models, images, other, steps=1, lora_rank=4, seed=9))
    code, _, err = run_cli(capsys, "generate", "--run", lora_run, "--lora", other / "lora_kohya.safetensors",
                           "--prompt", "a {}", "--seeds", "0", "--steps", "1", "--resolution", "32", "--out",
                           tmp_path / "g", "--no-progress")
    assert code == 0, err
    from geomkit.generation import install_loras, load_pipeline

    pipe = load_pipeline(str(models["sd"]), device="cpu", dtype="float32")
    install_loras(pipe, [lora_run / "pytorch_lora_weights.safetensors", other / "lora_kohya.safetensors"])
    assert sorted(pipe.get_active_adapters()) == ["geomkit_0", "geomkit_1"]


def test_a_stale_lora_file_is_not_the_runs(models, images, lora_run, tmp_path):
    import shutil

    from geomkit.generation import run_token

    plain = tmp_path / "plain"
    train(config("sd", models, images, plain, steps=1, lora_rank=None, lora_lr=1e-4))
    shutil.copy(lora_run / "pytorch_lora_weights.safetensors", plain)  # left over in the folder
    assert run_token(plain).lora is None  # results.json records no LoRA


def test_lora_fit_check_reads_kohya_convolutions_and_other_namings(models, lora_run, tmp_path):
    """1x1-convolution pairs (proj_in, as kohya's sd-scripts write them for SD 1.x) and SGM-named
    keys pass the header check; a key of another size does not."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from geomkit.errors import GeomkitError
    from geomkit.generation import check_lora_fits

    state = load_file(str(lora_run / "lora_kohya.safetensors"))
    with safe_open(str(models["sd"] / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        w = list(f.get_slice("down_blocks.1.attentions.0.proj_in.weight").get_shape())
    tail = [1, 1] if len(w) == 4 else []
    extra = {
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_down.weight": torch.zeros(2, w[1], *tail),
        "lora_unet_down_blocks_1_attentions_0_proj_in.lora_up.weight": torch.zeros(w[0], 2, *tail),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(2, 640),
    }
    ok = tmp_path / "ok.safetensors"
    save_file(dict(state, **extra), str(ok))
    check_lora_fits(models["sd"], ok)
    bad = tmp_path / "bad.safetensors"
    key = next(k for k in state if k.endswith("to_k.lora_down.weight"))
    save_file(dict(state, **{key: torch.zeros(2, 999)}), str(bad))
    with pytest.raises(GeomkitError, match="made for another model"):
        check_lora_fits(models["sd"], bad)


def test_resume_of_a_checkpoint_from_before_the_lora_options(models, images, tmp_path, capsys):
    """A checkpoint written before --lora-rank, --loss, --crop... existed holds none of those keys: it
    resumes (they had their defaults then) without a warning about them."""
    from geomkit.train import checkpoint

    out = tmp_path / "old"
    train(config("sd", models, images, out, steps=2, save_every=1, lora_rank=None, lora_lr=1e-4))
    (out / "results.json").unlink()
    for _, js in checkpoint.complete(out / "checkpoints"):
        meta = json.loads(js.read_text())
        for key in ("lora_rank", "lora_alpha", "lora_lr", "lora_targets", "lora_dropout", "token_steps", "loss",
                    "dco_beta", "crop", "scale_lr", "preset", "crossinit_reduction"):
            meta["config"].pop(key)
        js.write_text(json.dumps(meta))
    capsys.readouterr()
    train(config("sd", models, images, out, steps=3, save_every=1, lora_rank=None, lora_lr=1e-4, resume="latest"))
    assert "changed settings" not in capsys.readouterr().err
    assert [ln["step"] for ln in log_of(out)] == [1, 2, 3]


def test_a_preset_is_not_applied_again_on_resume(models, images, tmp_path, capsys):
    out = tmp_path / "p"
    code, _, err = run_cli(capsys, "train", "--model", models["sd"], "--images", images, "--placeholder", TOKEN,
                           "--init-word", "toy", "--resolution", "32", "--steps", "2", "--save-every", "1",
                           "--preset", "authors", "--flip-p", "0.5", "--lr", "0.005", "--out", out, "--quiet")
    assert code == 0, err
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "3", "--quiet")
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["flip_p"], cfg["lr"], cfg["crop"]) == (0.5, 0.005, "random")  # typed values kept, preset's others too
    assert "changed settings" not in err


def test_random_crops_are_encoded_outside_autocast(models, images, tmp_path):
    """Under --crop random the VAE encodes every step's crops; the full batch draws inside the step's
    autocast and micro-batches outside it: the latents must not depend on that (and the SDXL VAE
    must never run in fp16)."""
    sess = session(config("sd", models, images, tmp_path, batch_size=4, crop="random", mixed_precision="bf16",
                          lora_rank=None, lora_lr=1e-4))
    with sess.autocast():
        inside = sess.obj.draw(1)
    outside = sess.obj.draw(1)
    assert torch.equal(inside["noisy"], outside["noisy"]) and inside["noisy"].dtype == torch.float32
