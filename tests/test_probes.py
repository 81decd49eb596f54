"""Probes on tiny random models: Effect I (position probe), Effect II (residual angles, Lemma 2,
Prop. 1), Lemma 1 (attenuation), semantic drift, and the three commands' bad-input handling.

Numbers from random models are never findings; these tests check properties that hold for any
weights (LayerNorm's scale invariance, the geometry of the bounds) and check every measurement
against an independent computation."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch

from geomkit.errors import GeomkitError
from geomkit.probes import attenuation as att
from geomkit.probes import position as pos
from geomkit.probes import residual as res
from geomkit.probes.prompts import Tokenized, read_prompts, split_prompts, tokenize

N_PROMPTS = 120  # a seeded subset of the packaged set keeps the probe tests fast


# ---- tiny models (d = 64: at d = 32 random position rows are too close to read reliably) -------
@pytest.fixture(scope="module")
def tiny64(tmp_path_factory):
    from geomkit import tiny
    from geomkit.models import load_encoder

    root = tmp_path_factory.mktemp("tiny64")
    built = {}

    def get(kind):
        if kind not in built:
            dest = root / kind
            {"clip": tiny.save_clip_text_model, "bert": tiny.save_bert_model}[kind](dest, hidden=64)
            built[kind] = load_encoder(str(dest))
        return built[kind]

    return get


@pytest.fixture(scope="module")
def probe_runs(tiny64):
    """One trained probe + evaluation per family, shared by several tests."""
    out = {}
    prompts = read_prompts()[:N_PROMPTS]
    train, test = split_prompts(prompts, 0.2, seed=0)
    for kind in ("clip", "bert"):
        enc = tiny64(kind)
        tr, te = tokenize(enc, train), tokenize(enc, test)
        site = pos.default_site(enc)
        result, probe = pos.run_position_probe(enc, tr, te, site, [1, 2, 4, 16, 64], epochs=30)
        out[kind] = (enc, tr, te, site, result, probe)
    return out


# ---- Effect I: position probe ----------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["clip", "bert"])
def test_probe_near_perfect_and_falls_with_scale(probe_runs, kind):
    enc, _, _, _, r, _ = probe_runs[kind]
    assert r.train_accuracy > 0.99
    assert r.baseline_accuracy > 0.97, r.baseline_accuracy
    assert r.baseline_all_tokens > 0.97
    # m = 1 replaces each token by itself: exactly the baseline
    assert r.accuracy[0] == pytest.approx(r.baseline_accuracy, abs=1e-12)
    # LayerNorm forgets p as m grows (Lemma 1): accuracy falls, and far towards chance
    assert all(b <= a + 0.02 for a, b in zip(r.accuracy, r.accuracy[1:])), r.accuracy
    assert r.accuracy[-2] < 0.6 * r.baseline_accuracy
    assert r.accuracy[-1] < 0.35
    assert r.chance == pytest.approx(1 / r.n_positions)


@pytest.mark.parametrize("kind", ["clip", "bert"])
def test_site_features_match_layernorm_from_weights(probe_runs, kind):
    """The captured LN(e + p) (and LN(m e + p) under inject) equals LayerNorm computed by hand."""
    enc, _, te, site, _, probe = probe_runs[kind]
    ids = te.ids[0]
    n = len(ids)
    from geomkit.hooks import resolve_site

    ln, _ = resolve_site(enc, site)
    e = enc.embedding_table()[ids].double()
    p = enc.position_table()[:n].double()
    extra = 0.0
    if kind == "bert":
        extra = enc.model.embeddings.token_type_embeddings.weight[0].double()

    def layer_norm(x):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight.double() + ln.bias.double()

    feats = pos.site_features(enc, Tokenized([ids], [te.special[0]]), site)
    assert torch.allclose(feats.x.double(), layer_norm(e + p + extra), atol=1e-5)
    # scaling the token at j by m through inject gives LN(m e_j + p_j)
    j, m = 2, 8.0
    from geomkit.hooks import inject, run_with_cache
    from geomkit.probes.prompts import pad_right

    ids_t, mask = pad_right([ids], 0)
    sel = torch.zeros(ids_t.shape, dtype=torch.bool)
    sel[0, j] = True
    with inject(enc, enc.embedding_table()[ids[j]][None] * m, mask=sel):
        _, cache = run_with_cache(enc, ids_t, mask, sites=[site], stop=True)
    want = layer_norm(m * e[j] + p[j] + extra)
    assert torch.allclose(cache[site][0, j].double(), want, atol=1e-5)
    # the other positions are untouched
    assert torch.allclose(cache[site][0, j + 1].double(), layer_norm(e[j + 1] + p[j + 1] + extra), atol=1e-5)


def test_early_stop_capture_equals_full_forward(probe_runs):
    from geomkit.hooks import run_with_cache

    enc, _, te, _, _, _ = probe_runs["clip"]
    ids = torch.as_tensor([te.ids[0]])
    out_stop, c1 = run_with_cache(enc, ids, None, sites=["blocks.0.ln1"], stop=True)
    out_full, c2 = run_with_cache(enc, ids, None, sites=["blocks.0.ln1"])
    assert out_stop is None and out_full is not None
    assert torch.equal(c1["blocks.0.ln1"], c2["blocks.0.ln1"])


def test_macro_accuracy_by_hand():
    pred = torch.tensor([0, 1, 1, 2, 0, 2])
    target = torch.tensor([0, 1, 2, 2, 0, 1])
    a = pos.macro_accuracy(pred, target)
    # position 0: 2/2, position 1: 1/2, position 2: 1/2 -> mean 2/3 (micro would be 4/6 too; make them differ)
    assert a.per_position == {0: 1.0, 1: 0.5, 2: 0.5}
    assert a.accuracy == pytest.approx(2 / 3)
    b = pos.macro_accuracy(torch.tensor([0, 0, 0, 1]), torch.tensor([0, 0, 0, 2]))
    assert b.accuracy == pytest.approx(0.5)  # micro accuracy would be 0.75


def test_learned_embedding_placement(probe_runs):
    """A learned vector equal to a scaled copy of a vocabulary row behaves like a scaled token
    of that size: near-natural norm recovers positions, a huge norm does not."""
    enc, tr, te, site, r, probe = probe_runs["clip"]
    table = enc.embedding_table()
    norms = table.norm(dim=1)
    row = table[enc.token_id("dog")]
    natural = row / row.norm() * float(norms[norms > 0].mean())
    learned = {"natural": natural[None], "inflated": (natural * 50)[None]}
    result, _ = pos.run_position_probe(enc, tr, te, site, [1.0], learned, probe=probe)
    assert result.embeddings["natural"] > 0.9
    assert result.embeddings["inflated"] < 0.35
    assert result.embedding_norm_ratio["inflated"] == pytest.approx(50 * result.embedding_norm_ratio["natural"], rel=1e-4)


def test_probe_save_load_roundtrip(probe_runs, tmp_path):
    enc, _, te, site, r, probe = probe_runs["bert"]
    folder = pos.save_probe(tmp_path / "p", probe, {"model": enc.name, "site": site})
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["n_positions"] == probe.n_positions and cfg["site"] == site
    loaded, _ = pos.load_probe(folder)
    x = torch.randn(50, enc.d_model)
    assert torch.equal(loaded.predict(x), probe.predict(x))
    with pytest.raises(GeomkitError):
        pos.load_probe(tmp_path / "nothing")


def test_training_is_deterministic():
    x = torch.randn(300, 16)
    y = torch.randint(0, 5, (300,))
    a = pos.train_probe(x, y, 5, hidden=16, epochs=3, seed=3)
    b = pos.train_probe(x, y, 5, hidden=16, epochs=3, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_rope_site_is_chosen_automatically(tiny_encoder):
    """RoPE has no LN(e + p): the default is the residual stream after 4 blocks (or the last block
    of a shallower model), and the reason names RoPE and the option that changes it."""
    enc = tiny_encoder("gemma3")
    site, why = pos.choose_site(enc)
    assert site == f"blocks.{min(3, enc.n_blocks - 1)}.resid_post" == pos.default_site(enc) == pos.rope_site(enc)
    assert "RoPE" in why and "--site blocks.K.resid_post" in why and site in why
    assert pos.choose_site(enc, "blocks.1.resid_post") == ("blocks.1.resid_post", None)
    with pytest.raises(GeomkitError):
        pos.default_site(enc, "blocks.7.resid_post")
    assert pos.default_probe_dir("runs/x") == Path("runs/x/probe")
    assert "/" not in pos.safe_name("org/model name")


# ---- Effect II: residual angles and bounds ------------------------------------------------------------
def test_lemma2_bound_geometry():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 16, generator=g, dtype=torch.float64)
    d = torch.randn(2000, 16, generator=g, dtype=torch.float64)
    d = d / d.norm(dim=1, keepdim=True) * torch.rand(2000, 1, generator=g, dtype=torch.float64) * 3
    from geomkit.geometry import angle_deg

    ang = angle_deg(x, x + d)
    bound = res.lemma2_bound_deg(d.norm(dim=1), x.norm(dim=1))
    assert bool((ang <= bound + 1e-9).all())
    # the bound is attained by the tangent update
    x0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    s = 0.6
    tangent = torch.tensor([-s * s, s * math.sqrt(1 - s * s)], dtype=torch.float64)  # |tangent| = s, x + t ⟂ t
    assert float(angle_deg(x0, x0 + tangent)) == pytest.approx(math.degrees(math.asin(s)), abs=1e-9)
    # B >= ||x|| is vacuous: an update can turn x by more than 90 degrees
    turn = float(angle_deg(x0, x0 + torch.tensor([-1.5, 0.5], dtype=torch.float64)))
    assert turn > 90
    assert float(res.lemma2_bound_deg(1.6, 1.0)) == 180.0


def test_prop1_bound_on_random_walks():
    from geomkit.geometry import angle_deg

    g = torch.Generator().manual_seed(1)
    b = [0.3, 0.5, 0.2, 0.4]
    for _ in range(200):
        x = torch.randn(8, generator=g, dtype=torch.float64)
        x = x / x.norm() * (sum(b) + 0.1 + 3 * float(torch.rand(1, generator=g)))
        x0 = x.clone()
        for bl in b:
            step = torch.randn(8, generator=g, dtype=torch.float64)
            x = x + step / step.norm() * bl * float(torch.rand(1, generator=g))
        bound = res.prop1_bound_deg(b, float(x0.norm()))
        assert bound is not None and float(angle_deg(x0, x)) <= bound + 1e-9
    assert res.prop1_bound_deg(b, sum(b)) is None
    # the closed form of the first display
    assert res.prop1_bound_deg([1.0, 1.0], 4.0) == pytest.approx(math.degrees(math.pi / 2 * (1 / 4 + 1 / 3)))


@pytest.fixture(scope="module")
def clip_angles(tiny64):
    enc = tiny64("clip")
    templates = read_prompts(default="eval_prompts.txt", placeholder=True)[:8]
    table = enc.embedding_table()
    learned = {"big": (table[enc.token_id("cat")] * 30)[None]}
    return enc, templates, res.run_residual_angles(enc, templates, ["dog", "cat"], [0.5, 1, 4, 64, 1024], learned)


def test_angles_match_hidden_states_of_an_edited_model(clip_angles):
    """Per-block angles at m = 4 equal those from transformers' own hidden_states of a COPY of the
    model whose embedding row for 'dog' is multiplied by 4 (no hooks involved)."""
    enc, templates, out = clip_angles
    row = next(r for r in out["rows"] if r["concept"] == "dog" and r["scale"] == 4.0)
    cp = res.place_word(enc, templates, "dog")
    model = copy.deepcopy(enc.model)
    with torch.no_grad():
        model.get_input_embeddings().weight[cp.token_id] *= 4.0
        hs = model(input_ids=cp.ids, attention_mask=cp.mask, output_hidden_states=True).hidden_states
    rows = torch.arange(len(cp.positions))
    per_block = []
    for i in range(enc.n_blocks):
        a = hs[i][rows, cp.positions].double()
        b = hs[i + 1][rows, cp.positions].double()
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        per_block.append(torch.rad2deg(torch.acos(cos.clamp(-1, 1))).mean().item())
    assert row["per_block_deg"] == pytest.approx(per_block, abs=1e-3)
    assert row["mean_angle_deg"] == pytest.approx(sum(per_block) / len(per_block), abs=1e-3)


def test_angles_never_exceed_lemma2_bounds(clip_angles):
    enc, _, out = clip_angles
    b_an = torch.as_tensor(out["B_analytic"])
    assert b_an is not None and len(b_an) == enc.n_blocks
    assert bool((torch.as_tensor(out["B_empirical"]) <= b_an).all())  # the true sup dominates what is seen
    for r in out["rows"]:
        assert r["violations"] == 0  # empirical-max B (by construction)
        assert r["violations_analytic"] == 0  # a true bound from the weights (a real test)
        assert all(a <= b + 1e-9 for a, b in zip(r["per_block_deg"], r["bound_analytic_deg"]))
        assert all(a <= b + 1e-9 for a, b in zip(r["per_block_deg"], r["bound_deg"]))
        assert r["update_over_analytic_max"] <= 1.0
        if r["scale"] is not None and r["scale"] >= 1:
            assert r["violations_vocab"] == 0  # B_l from natural tokens still bounds scaled tokens


def test_scaled_tokens_freeze_in_prenorm(clip_angles):
    """Corollary 1 on a pre-norm model: large m -> tiny per-block and total turning angles, and
    Prop. 1 applies and holds."""
    _, _, out = clip_angles
    by = {g["scale"]: g for g in out["by_scale"] if g["concept"] == "<vocabulary>"}
    assert by[1024.0]["mean_angle_deg"] < by[64.0]["mean_angle_deg"] < by[1.0]["mean_angle_deg"]
    assert by[1024.0]["mean_angle_deg"] < 0.1 * by[1.0]["mean_angle_deg"]
    assert by[1024.0]["total_angle_deg"] < 0.1 * by[1.0]["total_angle_deg"]
    big = [r for r in out["rows"] if r["scale"] == 1024.0]
    for r in big:
        assert r["nonvacuous_fraction"] == 1.0
        assert r["prop1_applicable"] == 1.0 and r["total_angle_deg"] <= r["prop1_bound_deg"]
        assert r["prop1_vocab_violations"] == 0
    learned = next(g for g in out["by_scale"] if g["concept"] == "big")
    assert learned["mean_angle_deg"] < by[1.0]["mean_angle_deg"]


def test_postnorm_bert_angles_do_not_depend_on_scale(tiny64):
    enc = tiny64("bert")
    templates = read_prompts(default="eval_prompts.txt", placeholder=True)[:6]
    out = res.run_residual_angles(enc, templates, ["dog"], [1, 16, 256])
    by = {g["scale"]: g for g in out["by_scale"]}
    assert out["B_analytic"] is None and out["prenorm"] is False
    # LN(m e + p + t) -> LN(e + t) as m grows: the block-0 input norm saturates, angles converge
    assert by[256.0]["x0_norm"] == pytest.approx(by[16.0]["x0_norm"], rel=0.02)
    assert by[256.0]["mean_angle_deg"] == pytest.approx(by[16.0]["mean_angle_deg"], abs=1.0)
    for r in out["rows"]:
        assert r["violations"] == 0


def test_gemma_sandwich_bound_holds(tiny_encoder):
    enc = tiny_encoder("gemma3")
    templates = read_prompts(default="eval_prompts.txt", placeholder=True)[:5]
    out = res.run_residual_angles(enc, templates, ["dog"], [1, 8])
    b_an = res.analytic_update_bound(enc)
    d = enc.d_model
    blk = enc.blocks[0]
    want = math.sqrt(d) * (
        float((1 + blk.post_attention_layernorm.weight).abs().max()) + float((1 + blk.post_feedforward_layernorm.weight).abs().max())
    )
    assert float(b_an[0]) == pytest.approx(want)
    for r in out["rows"]:
        assert r["violations_analytic"] == 0 and r["update_over_analytic_max"] <= 1.0


def test_place_word_errors(tiny64):
    enc = tiny64("clip")
    with pytest.raises(GeomkitError):
        res.place_word(enc, ["a photo of {}"], "xqzjvwk")  # not one token
    with pytest.raises(GeomkitError):
        res.place_word(enc, ["a photo of {}"], "")


# ---- Lemma 1: attenuation -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["clip", "bert"])
def test_attenuation_slope_and_first_order(tiny64, kind):
    enc = tiny64(kind)
    out = att.run_attenuation(enc, n_tokens=40, n_positions=8)
    assert out["applicable"]
    assert out["loglog_slope"] == pytest.approx(-1.0, abs=0.02)
    assert out["loglog_slope_scale_invariant"] == pytest.approx(-1.0, abs=0.02)
    assert out["measured_over_first_order_at_max_scale"] == pytest.approx(1.0, abs=1e-3)
    d = out["delta"]
    assert all(b < a for a, b in zip(d[3:], d[4:]))  # decreasing past the natural scale


def test_attenuation_delta_by_hand(tiny64):
    """One (token, position) pair computed with a plain LayerNorm formula, no geomkit code."""
    enc = tiny64("clip")
    ln = enc.blocks[0].layer_norm1
    v = enc.embedding_table()[enc.token_id("dog")].double()
    p = enc.position_table()[5].double()

    def layer_norm(x):
        mu = x.mean()
        return (x - mu) / torch.sqrt(((x - mu) ** 2).mean() + ln.eps) * ln.weight.double() + ln.bias.double()

    scales = [0.5, 3.0, 100.0]
    got = att.deltas(v[None], p[None], scales, att.module_norm(ln, "layernorm"))[:, 0, 0]
    want = torch.stack([(layer_norm(m * v + p) - layer_norm(m * v)).norm() for m in scales])
    assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
    si = att.scale_invariant_norm("layernorm")
    x = torch.randn(3, 64, dtype=torch.float64)
    assert torch.allclose(si(7.5 * x), si(x))  # scale invariance (App. B eq. 7)
    assert torch.allclose(si(x).norm(dim=-1), torch.full((3,), 8.0, dtype=torch.float64))  # sqrt(d)
    rms = att.scale_invariant_norm("rmsnorm")
    assert torch.allclose(rms(3 * x), rms(x))
    assert att.loglog_slope([1, 10, 100], [5, 0.5, 0.05]) == pytest.approx(-1.0)


def test_attenuation_not_applicable_under_rope(tiny_encoder):
    out = att.run_attenuation(tiny_encoder("gemma3"))
    assert out["applicable"] is False and "RoPE" in out["reason"] and out["loglog_slope"] is None


# ---- semantic drift --------------------------------------------------------------------------------------
def test_semantic_drift(tiny64):
    from geomkit.geometry import cosine
    from geomkit.probes.drift import mean_drift, semantic_drift

    enc = tiny64("bert")
    table = enc.embedding_table()
    dog = table[enc.token_id("dog")]
    rows = semantic_drift(enc, dog * 7, ["dog", "cat", "photograph"])
    assert rows[0]["cosine"] == pytest.approx(1.0)
    assert rows[1]["cosine"] == pytest.approx(float(cosine(dog, table[enc.token_id("cat")])))
    assert mean_drift(enc, dog, ["dog", "cat"]) == pytest.approx((1 + rows[1]["cosine"]) / 2)
    with pytest.raises(GeomkitError):
        semantic_drift(enc, torch.zeros(3), ["dog"])


# ---- the commands ------------------------------------------------------------------------------------------
def _cli(argv, capsys):
    from geomkit.cli import main

    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_commands_end_to_end(tiny64, tmp_path, capsys, monkeypatch):
    from geomkit.embeddings_io import save_learned

    enc = tiny64("clip")
    model_dir = enc.source
    emb = tmp_path / "tok.safetensors"
    save_learned(emb, "<tok>", enc.embedding_table()[enc.token_id("cat")][None] * 40)
    monkeypatch.chdir(tmp_path)

    rc, out, err = _cli(
        ["probe-position", "--model", model_dir, "--out", "pp", "--max-prompts", "60", "--epochs", "20", "--scales", "1,16", "--embedding", str(emb)],
        capsys,
    )
    assert rc == 0, err
    r = json.loads((tmp_path / "pp" / "results.json").read_text())
    assert {"model", "site", "n_positions", "chance", "baseline_accuracy", "scales", "accuracy", "embeddings"} <= set(r)
    assert r["site"] == "blocks.0.ln1" and r["scales"] == [1.0, 16.0] and set(r["embeddings"]) == {"<tok>"}
    assert (tmp_path / "pp" / "position_probe.png").stat().st_size > 0 and (tmp_path / "pp" / "accuracy.csv").exists()
    probe_dir = Path(r["probe_dir"])
    assert probe_dir == Path("pp/probe") and (tmp_path / probe_dir / "probe.safetensors").exists()
    assert r["site_chosen"].startswith("automatic") and "LN(e + p)" in r["site_chosen"]
    # a saved probe evaluates to the same numbers
    rc, _, err = _cli(
        ["probe-position", "--model", model_dir, "--out", "pp2", "--max-prompts", "60", "--scales", "1,16", "--load-probe", str(probe_dir)],
        capsys,
    )
    assert rc == 0, err
    r2 = json.loads((tmp_path / "pp2" / "results.json").read_text())
    assert r2["accuracy"] == r["accuracy"] and r2["baseline_accuracy"] == r["baseline_accuracy"]

    rc, out, err = _cli(
        ["residual-angles", "--model", model_dir, "--out", "ra", "--max-prompts", "4", "--words", "dog", "--scales", "1,8", "--embedding", str(emb)],
        capsys,
    )
    assert rc == 0, err
    r = json.loads((tmp_path / "ra" / "results.json").read_text())
    assert r["model"] and [row["scale"] for row in r["rows"]] == [1.0, 8.0, None]
    for row in r["rows"]:
        assert {"concept", "scale", "mean_angle_deg", "per_block_deg", "bound_deg"} <= set(row)
        assert len(row["per_block_deg"]) == len(row["bound_deg"]) == enc.n_blocks
    assert (tmp_path / "ra" / "residual_angles.png").exists() and (tmp_path / "ra" / "angles.csv").exists()

    rc, out, err = _cli(["attenuation", "--model", model_dir, "--out", "at", "--tokens", "20", "--positions", "4"], capsys)
    assert rc == 0, err
    r = json.loads((tmp_path / "at" / "results.json").read_text())
    assert {"scales", "delta", "loglog_slope"} <= set(r) and len(r["delta"]) == len(r["scales"])
    assert r["loglog_slope"] == pytest.approx(-1, abs=0.02)
    assert (tmp_path / "at" / "attenuation.png").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["probe-position", "--scales", "0,1"], "positive"),
        (["probe-position", "--scales", "1,abc"], "numbers"),
        (["residual-angles", "--scales", "-2"], "positive"),
        (["attenuation", "--scales", "nan,1"], "positive"),
        (["probe-position", "--scales", ","], "empty"),
        (["probe-position", "--site", "blocks.99.resid_post"], "blocks"),
        (["probe-position", "--site", "nowhere"], "does not exist"),
        (["probe-position", "--embedding", "WRONG_DIM"], "dimension"),
        (["residual-angles", "--embedding", "WRONG_DIM"], "dimension"),
        (["probe-position", "--prompts", "EMPTY"], "no usable prompts"),
        (["residual-angles", "--prompts", "EMPTY"], "no usable prompts"),
        (["residual-angles", "--prompts", "NO_PLACEHOLDER"], "no usable prompts"),
        (["probe-position", "--embedding", "MISSING"], "not found"),
        (["residual-angles", "--words", "xqzjvwk"], "single token"),
    ],
)
def test_bad_input_is_one_line(tiny64, tmp_path, capsys, argv, needle):
    from geomkit.embeddings_io import save_learned

    enc = tiny64("clip")
    wrong = tmp_path / "wrong.safetensors"
    save_learned(wrong, "<w>", torch.ones(1, enc.d_model + 3))
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n   \n")
    plain = tmp_path / "plain.txt"
    plain.write_text("a photo of a dog\n")
    subst = {"WRONG_DIM": str(wrong), "EMPTY": str(empty), "NO_PLACEHOLDER": str(plain), "MISSING": str(tmp_path / "nope.safetensors")}
    argv = [subst.get(a, a) for a in argv] + ["--model", enc.source, "--out", str(tmp_path / "o")]
    if argv[0] != "attenuation":
        argv += ["--max-prompts", "6"]
    rc, out, err = _cli(argv, capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and needle in lines[0], lines[0]


def test_rope_model_without_site_probes_after_blocks(tiny_dir, tmp_path, capsys, monkeypatch, one_thread):
    """The bare command works on a RoPE model: the site is chosen, said on stdout and in results.json."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = _cli(["probe-position", "--model", str(tiny_dir("gemma3")), "--out", "o", "--max-prompts", "30",
                         "--epochs", "3", "--scales", "1,4", "--hidden", "16"], capsys)
    assert rc == 0, err
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    assert r["site"].endswith(".resid_post") and r["positions"] == "rope"
    assert r["site_chosen"].startswith("automatic") and "RoPE" in r["site_chosen"]
    assert "site chosen automatically" in out and r["site"] in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # the probe too is inside --out
    assert (tmp_path / "o" / "probe" / "probe.safetensors").is_file()


def test_parse_scales():
    from geomkit.probes._args import parse_scales

    assert parse_scales("0.5, 1,2") == [0.5, 1.0, 2.0]
    for bad in ("0", "-1", "inf", "x", ""):
        with pytest.raises(GeomkitError):
            parse_scales(bad)
