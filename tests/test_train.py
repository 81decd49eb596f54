"""The trainer on a tiny random Gemma 3 causal LM (`--objective lm`): invariants of each method,
bit-exact resume, outputs, and one-line errors for bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from geomkit.errors import GeomkitError
from geomkit.geometry import angle_deg, cosine
from geomkit.train import TrainConfig, train

TOKEN = "<glimmerfox>"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm_dir(tiny_dir):
    return str(tiny_dir("gemma3"))


def run(lm_dir, out, **kw):
    args = dict(model=lm_dir, texts="glimmerfox", placeholder=TOKEN, init_word="fox", steps=4, batch_size=2,
                out=str(out), progress=False)
    args.update(kw)
    return train(TrainConfig(**args))


def log_of(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def learned(out, name="learned_embeds.safetensors"):
    t = load_file(str(out / name))
    assert list(t) == [TOKEN]
    return t[TOKEN]


def table_row(lm_dir, word):
    from geomkit.models import load_encoder

    enc = load_encoder(lm_dir)
    return enc.embedding_table()[enc.token_id(word)].double()


def test_dti_keeps_norm_m_star_at_every_step(lm_dir, tmp_path):
    res = run(lm_dir, tmp_path, method="dti", steps=6, lr=0.05)
    m = res["m_star"][0]
    log = log_of(tmp_path)
    assert [ln["step"] for ln in log] == list(range(1, 7))
    for ln in log:
        assert ln["norm"] == pytest.approx(m, rel=1e-6)
        assert set(ln) >= {"step", "loss", "norm", "angle_from_init_deg", "cos_to_prior", "lr"}
    e = learned(tmp_path)
    assert e.dtype == torch.float32 and e.shape == (1, 32)
    assert float(e.double().norm()) == pytest.approx(m, rel=1e-6)
    # m* is the mean norm of the encoder's non-zero rows, computed independently here
    from geomkit.models import load_encoder

    norms = load_encoder(lm_dir).embedding_table().double().norm(dim=1)
    assert m == pytest.approx(float(norms[norms > 0].mean()), rel=1e-9)
    assert log[-1]["angle_from_init_deg"] > 0


@pytest.mark.parametrize("lr", [5e-3, 0.2])
def test_dti_one_step_without_prior_turns_by_atan_lr(lm_dir, tmp_path, lr):
    run(lm_dir, tmp_path, method="dti", kappa=0.0, lr=lr, steps=1)
    e = learned(tmp_path)[0].double()
    turned = float(angle_deg(e, table_row(lm_dir, "fox")))
    assert turned == pytest.approx(math.degrees(math.atan(lr)), abs=2e-4)
    assert log_of(tmp_path)[0]["angle_from_init_deg"] == pytest.approx(turned, abs=1e-6)


def test_kappa_pulls_towards_the_prior(lm_dir, tmp_path):
    # prior word differs from the init word; a strong prior dominates the data gradient
    free = run(lm_dir, tmp_path / "k0", method="dti", prior_word="snow", kappa=0.0, lr=0.05, steps=5)
    pulled = run(lm_dir, tmp_path / "k1", method="dti", prior_word="snow", kappa=1e3, lr=0.05, steps=5)
    cos = [ln["cos_to_prior"] for ln in log_of(tmp_path / "k1")]
    assert all(b > a for a, b in zip(cos, cos[1:]))
    assert pulled["cos_to_prior"] > free["cos_to_prior"]
    e = learned(tmp_path / "k1")[0].double()
    assert float(cosine(e, table_row(lm_dir, "snow"))) == pytest.approx(pulled["cos_to_prior"], abs=1e-6)


def test_ti_changes_only_the_new_rows(lm_dir, tmp_path):
    from geomkit.models import load_encoder

    enc = load_encoder(lm_dir)
    before = {k: v.clone() for k, v in enc.model.state_dict().items()}
    n_tokens = len(enc.tokenizer)
    res = run(lm_dir, tmp_path, method="ti", steps=3, lr=0.05)
    after = enc.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in enc.model.parameters())
    assert len(enc.tokenizer) == n_tokens  # the shared tokenizer never learned the placeholder
    e = learned(tmp_path)[0].double()
    fox = table_row(lm_dir, "fox")
    assert not torch.allclose(e, fox)
    assert res["final_norm"][0] == pytest.approx(float(e.norm()), rel=1e-6)
    assert res["final_norm"][0] != pytest.approx(res["m_star"][0], rel=1e-3)


def test_ti_rescaled_and_crossinit(lm_dir, tmp_path):
    res = run(lm_dir, tmp_path / "r", method="ti-rescaled", steps=3, lr=0.05)
    e, raw = learned(tmp_path / "r")[0].double(), learned(tmp_path / "r", "learned_embeds_unrescaled.safetensors")[0].double()
    assert float(e.norm()) == pytest.approx(res["m_star"][0], rel=1e-6)
    assert float(angle_deg(e, raw)) < 1e-3
    assert res["per_encoder"][0]["norm_before_rescale"] == pytest.approx(float(raw.norm()), rel=1e-6)

    # CrossInit starts from the encoder's output for the init word: independent forward here
    from geomkit.models import load_encoder
    from geomkit.train.params import encoder_output

    enc = load_encoder(lm_dir)
    fox = enc.token_id("fox")
    ids = torch.tensor([enc.tokenizer(" fox")["input_ids"]])
    hidden = enc.model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
    pos = ids[0].tolist().index(fox)
    expect = hidden[pos] / enc.embed_scale
    assert torch.allclose(encoder_output(enc, "fox", fox), expect, atol=1e-5)
    res = run(lm_dir, tmp_path / "c", method="crossinit", steps=2, lr=1e-4)
    assert res["angle_from_init_deg"] < 5  # measured from the encoder output, not the table row


def test_multi_vector_names_rows_like_diffusers(lm_dir, tmp_path):
    res = run(lm_dir, tmp_path, method="dti", num_vectors=3, steps=2)
    assert learned(tmp_path).shape == (3, 32)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["tokens"] == [TOKEN, f"{TOKEN}_1", f"{TOKEN}_2"]
    assert len(res["per_encoder"][0]["row_norms"]) == 3


def test_results_json_has_the_fields_compare_reads(lm_dir, tmp_path):
    run(lm_dir, tmp_path, method="dti", steps=2, related=["animal", "snow"])
    res = json.loads((tmp_path / "results.json").read_text())
    for key in ("method", "objective", "model", "placeholder", "init_word", "m_star", "kappa", "lr", "steps",
                "batch_size", "final_loss", "final_norm", "angle_from_init_deg", "cos_to_prior", "seconds", "drift"):
        assert key in res
    assert res["objective"] == "lm"
    assert set(res["drift"]) == {"fox", "animal", "snow"}
    assert isinstance(res["m_star"], list) and isinstance(res["final_norm"], list)


def test_related_words_that_are_not_one_token_are_refused_before_training(lm_dir, tmp_path):
    with pytest.raises(GeomkitError, match=r"--related: 'notasingletokenxyzzy' is not one token"):
        run(lm_dir, tmp_path / "r", method="dti", steps=2, related=["animal", "notasingletokenxyzzy"])
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_lm_loss_is_the_models_own_loss_on_the_scored_tokens(lm_dir):
    from geomkit.hooks import inject
    from geomkit.train import objectives
    from geomkit.train.config import check
    from geomkit.train.params import add_placeholder, build_slot

    cfg = check(TrainConfig(method="ti", model=lm_dir, texts="glimmerfox", placeholder=TOKEN, init_word="fox", progress=False))
    obj = objectives.build(cfg, "lm", objectives.check_inputs(cfg, "lm"), torch.device("cpu"))
    enc = obj.encoders[0]
    slot = build_slot(enc, cfg, add_placeholder(enc, TOKEN, 1))
    obj.setup([slot])
    for step in (1, 2):
        ours = obj.loss([slot.vectors()], [slot], step)
        ids, mask, rows, pos, tgt = obj.batch(step)
        # nothing before the placeholder is scored, nor the placeholder itself
        assert not torch.isin(tgt, torch.tensor(slot.token_ids)).any()
        with inject(enc, slot.vectors(), token_ids=slot.token_ids):
            ref = enc.model(input_ids=ids, attention_mask=mask, labels=obj.labels(ids, rows, pos, tgt)).loss
        assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-5)


# ---- resume ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["dti", "ti", "dti-adamw"])
def test_resume_equals_uninterrupted_bit_for_bit(lm_dir, tmp_path, method):
    kw = dict(method=method, lr=0.02, seed=7)
    run(lm_dir, tmp_path / "a", steps=6, **kw)
    run(lm_dir, tmp_path / "b", steps=4, save_every=2, **kw)
    res = run(lm_dir, tmp_path / "b", steps=6, save_every=2, resume="latest", **kw)
    assert res["resumed_from"] == 4
    assert torch.equal(learned(tmp_path / "a"), learned(tmp_path / "b"))
    la, lb = log_of(tmp_path / "a"), log_of(tmp_path / "b")
    assert [x["loss"] for x in la] == [x["loss"] for x in lb]


def test_crash_then_resume_equals_uninterrupted(lm_dir, tmp_path, monkeypatch):
    from geomkit.train.objectives.lm import LMObjective

    kw = dict(method="ti", lr=0.02, steps=7, save_every=3)
    run(lm_dir, tmp_path / "a", **kw)
    real = LMObjective.loss

    def crash_at_5(self, vectors, slots, step, rank=0, world=1, part=None):
        if step == 5:
            raise KeyboardInterrupt
        return real(self, vectors, slots, step, rank, world, part=part)

    monkeypatch.setattr(LMObjective, "loss", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        run(lm_dir, tmp_path / "b", **kw)
    monkeypatch.setattr(LMObjective, "loss", real)
    assert [ln["step"] for ln in log_of(tmp_path / "b")] == [1, 2, 3, 4]  # the log reached the crash
    res = run(lm_dir, tmp_path / "b", resume="latest", **kw)
    assert res["resumed_from"] == 3
    assert torch.equal(learned(tmp_path / "a"), learned(tmp_path / "b"))
    assert [ln["step"] for ln in log_of(tmp_path / "b")] == list(range(1, 8))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(lm_dir, tmp_path, monkeypatch):
    from geomkit.train import checkpoint
    from geomkit.train.objectives.lm import LMObjective

    real = LMObjective.loss

    def nan_at_4(self, vectors, slots, step, rank=0, world=1, part=None):
        loss = real(self, vectors, slots, step, rank, world, part=part)
        return loss * float("nan") if step == 4 else loss

    monkeypatch.setattr(LMObjective, "loss", nan_at_4)
    with pytest.raises(GeomkitError, match=r"at step 4.*step-000003"):
        run(lm_dir, tmp_path, method="dti", steps=6, save_every=2)
    steps = [s for s, _ in checkpoint.complete(tmp_path / "checkpoints")]
    assert steps == [2, 3]
    meta, tensors = checkpoint.load(checkpoint.newest(tmp_path / "checkpoints"))
    assert torch.isfinite(tensors["param.0"]).all() and meta["step"] == 3
    assert not (tmp_path / "learned_embeds.safetensors").exists()
    monkeypatch.setattr(LMObjective, "loss", real)
    run(lm_dir, tmp_path / "ref", method="dti", steps=6)
    run(lm_dir, tmp_path, method="dti", steps=6, save_every=2, resume="latest")
    assert torch.equal(learned(tmp_path), learned(tmp_path / "ref"))


def test_checkpoints_hold_rng_and_optimizer_state(lm_dir, tmp_path):
    from geomkit.train import checkpoint

    run(lm_dir, tmp_path, method="ti", steps=2, save_every=1)
    meta, tensors = checkpoint.load(checkpoint.newest(tmp_path / "checkpoints"))
    assert {"python", "numpy", "torch"} <= set(meta["rng"])
    assert {"param.0", "opt.0.exp_avg", "opt.0.exp_avg_sq", "opt.0.step"} <= set(tensors)
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary files left behind


def test_fresh_run_refuses_a_used_folder_and_resume_refuses_another_run(lm_dir, tmp_path):
    run(lm_dir, tmp_path, method="dti", steps=2)
    with pytest.raises(GeomkitError, match="already holds a training run"):
        run(lm_dir, tmp_path, method="dti", steps=2)
    with pytest.raises(GeomkitError, match="different run.*--method was 'dti'"):
        run(lm_dir, tmp_path, method="ti", steps=3, resume="latest")
    # resume="latest" where no checkpoint was written yet (killed while loading): a fresh start, as the
    # diffusers scripts do, so a job wrapper that always asks to resume needs no special case
    run(lm_dir, tmp_path / "empty", method="dti", steps=2, resume="latest")
    assert [ln["step"] for ln in log_of(tmp_path / "empty")] == [1, 2]


# ---- bad input: one line, exit 2, no traceback --------------------------------------------------
def cli(capsys, *argv):
    from geomkit.cli import main

    code = main(["train", *argv])
    err = capsys.readouterr().err
    return code, err


@pytest.fixture
def base_args(lm_dir, tmp_path):
    return ["--model", lm_dir, "--texts", "glimmerfox", "--placeholder", TOKEN, "--init-word", "fox", "--steps", "2",
            "--out", str(tmp_path / "o"), "--quiet"]


def with_arg(args, flag, value):
    args = list(args)
    if flag in args:
        i = args.index(flag)
        del args[i : i + 2]
    return args + [f"{flag}={value}"]


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--init-word", "glimmering", r"--init-word glimmering: .*splits into \[.+, .+\]"),
        ("--placeholder", "fox", r"--placeholder fox: .*already (in the vocabulary|a token)"),
        ("--magnitude", "0", r"--magnitude 0: m\* must be a positive"),
        ("--magnitude", "-2", r"--magnitude -2: m\* must be a positive"),
        ("--magnitude", "mode", r"--magnitude mode: use mean, min, max"),
        ("--kappa", "-1e-4", r"--kappa -0.0001: the vMF concentration must be >= 0"),
        ("--texts", "nosuchfile.txt", r"--texts nosuchfile.txt: file not found"),
    ],
)
def test_bad_input_is_one_clear_line(capsys, base_args, flag, value, message):
    import re

    code, err = cli(capsys, *with_arg(base_args, flag, value))
    assert code == 2
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(message, lines[0]), err


def test_text_file_without_the_placeholder(capsys, base_args, tmp_path):
    f = tmp_path / "plain.txt"
    f.write_text("# comment <glimmerfox>\nA fox runs.\nSnow falls.\n")
    code, err = cli(capsys, *with_arg(base_args, "--texts", str(f)))
    assert code == 2 and "no line contains the placeholder '<glimmerfox>'" in err and str(f) in err
    assert len(err.strip().splitlines()) == 1


def test_placeholder_already_added_by_name(capsys, base_args, tmp_path):
    f = tmp_path / "sep.txt"
    f.write_text("The [SEP] is a token.\n")
    code, err = cli(capsys, *with_arg(with_arg(base_args, "--texts", str(f)), "--placeholder", "[SEP]"))
    assert code == 2 and "already in the vocabulary" in err


def test_cli_prints_a_summary(capsys, base_args):
    from geomkit.cli import main

    assert main(["train", *base_args, "--method", "dti", "--related", "animal,snow"]) == 0
    out = capsys.readouterr().out
    assert "final norm" in out and "drift (cosine to): fox" in out


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_float32_rows(lm_dir, tmp_path, precision):
    res = run(lm_dir, tmp_path, method="dti", steps=2, mixed_precision=precision)
    e = learned(tmp_path)
    assert e.dtype == torch.float32
    assert res["final_norm"][0] == pytest.approx(res["m_star"][0], rel=1e-6)


@pytest.mark.slow
def test_two_processes_under_torchrun(lm_dir, tmp_path):
    """The multi-process path (what `accelerate launch` runs): gradients averaged, main writes."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "geomkit", "train",
           "--model", lm_dir, "--texts", "glimmerfox", "--placeholder", TOKEN, "--init-word", "fox", "--steps", "3",
           "--batch-size", "2", "--save-every", "1", "--out", str(tmp_path), "--quiet"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("final norm") == 1  # only the main process reports
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["num_processes"] == 2
    assert [ln["step"] for ln in log_of(tmp_path)] == [1, 2, 3]
    assert float(learned(tmp_path).double().norm()) == pytest.approx(res["m_star"][0], rel=1e-6)
