"""`geomkit probe-position --norm-mode multiply|absolute --protocol content|single` on tiny
random models (issue 18).

Numbers from random models are never findings: these tests check what reaches the model (the
vector that replaces the token, the slots that are read) against independent computations, that
the default mode is today's code bit for bit, and the command's handling of the two options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from geomkit.errors import GeomkitError
from geomkit.hooks import _hidden_from_call
from geomkit.probes import position as pos
from geomkit.probes.prompts import read_prompts, split_prompts, tokenize

N_PROMPTS = 40


@pytest.fixture(scope="module")
def clip64(tmp_path_factory):
    from geomkit import tiny
    from geomkit.models import load_encoder

    dest = tmp_path_factory.mktemp("clip64") / "clip"
    tiny.save_clip_text_model(dest, hidden=64)
    return load_encoder(str(dest))


@pytest.fixture(scope="module")
def clip_probe(clip64):
    enc = clip64
    train, test = split_prompts(read_prompts()[:N_PROMPTS], 0.25, seed=0)
    tr, te = tokenize(enc, train), tokenize(enc, test)
    site = pos.default_site(enc)
    probe, _, _, _ = pos.fit_position_probe(enc, tr, site, epochs=15, hidden=64)
    return enc, tr, te, site, probe


class BlockInputs:
    """Records the input of block 0 (the embedding output the model really sees, Gemma's
    sqrt(d) and CLIP's position row included) of every forward inside the block."""

    def __init__(self, enc):
        self.enc, self.seen = enc, []

    def __enter__(self):
        def pre(mod, args, kwargs):
            self.seen.append(_hidden_from_call(args, kwargs).detach().to(torch.float64).clone())

        self.handle = self.enc.blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _raw_vectors(enc, x, positions):
    """Block-0 inputs back in raw-table space: minus the position row (learned positions), over
    the embedding scale (Gemma's sqrt(d))."""
    table = enc.position_table()
    if table is not None:  # CLIP: block 0 sees e + p
        x = x - table[positions].to(torch.float64)
    return x / float(enc.embed_scale)


# ---- --norm-mode ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["clip", "gemma3"])
@pytest.mark.parametrize("protocol", ["content", "single"])
def test_absolute_mode_gives_the_replaced_vector_norm_m(tiny_encoder, one_thread, kind, protocol):
    """Through the hooking layer, as the model sees it: at every evaluated slot the vector entering
    block 0 is the token's own direction at norm m exactly (an independent float64 computation from
    the table), and every other position is the clean embedding."""
    enc = tiny_encoder(kind)
    te = tokenize(enc, read_prompts()[:6])
    probe = pos.PositionProbe(enc.d_model, 24, hidden=8)
    table = enc.embedding_table().to(torch.float64)
    if protocol == "content":
        tok, slots = te, pos.content_slots(te, probe.n_positions)
    else:
        single = pos.single_token_inputs(enc, draws=20, seed=3)
        tok, slots = single.tok, single.slots
    site = f"blocks.{enc.n_blocks - 1}.resid_post"
    for m in (0.37, 5.0):
        with BlockInputs(enc) as rec:
            clean = pos.evaluate_replaced(enc, probe, tok, site, None, slots=slots, batch_size=len(slots))
            pos.evaluate_replaced(enc, probe, tok, site, pos.scaled_replacement(enc, m, "absolute"), slots=slots, batch_size=len(slots))
        x_clean, x_abs = rec.seen  # one batch each
        rows = torch.arange(len(slots))
        cols = torch.as_tensor([j for _, j in slots])
        got = _raw_vectors(enc, x_abs[rows, cols], cols)
        ids = torch.as_tensor([tok.ids[r][j] for r, j in slots])
        want = table[ids] / table[ids].norm(dim=1, keepdim=True) * m
        assert torch.allclose(got.norm(dim=1), torch.full((len(slots),), m, dtype=torch.float64), rtol=2e-6, atol=0)
        assert torch.allclose(got, want, rtol=0, atol=5e-6 * m)
        # nothing else moved: away from the slot, the replaced run equals the clean one
        off = torch.ones(x_abs.shape[:2], dtype=torch.bool)
        off[rows, cols] = False
        assert torch.equal(x_abs[off], x_clean[off])
        assert clean.count == len(slots)


def test_absolute_mode_ignores_the_rows_own_norm(clip64):
    """absolute: the vector depends on the row's direction only; multiply keeps the row's norm."""
    enc = clip64
    table = enc.embedding_table()
    a, b = enc.token_id("dog"), enc.token_id("cat")
    f_abs, f_mul = pos.scaled_replacement(enc, 2.5, "absolute"), pos.scaled_replacement(enc, 2.5, "multiply")
    assert float(f_abs(a).norm()) == pytest.approx(2.5, rel=1e-6) and float(f_abs(b).norm()) == pytest.approx(2.5, rel=1e-6)
    assert float(f_mul(a).norm()) == pytest.approx(2.5 * float(table[a].norm()), rel=1e-6)
    assert torch.nn.functional.cosine_similarity(f_abs(a), table[a].float(), dim=0) > 1 - 1e-6


def test_command_constants_match_the_module():
    """The command keeps its own copies (so --help need not import torch): they must agree."""
    from geomkit.commands import probe_position as cmd

    assert (cmd.NORM_MODES, cmd.PROTOCOLS, cmd.SINGLE_DRAWS) == (pos.NORM_MODES, pos.PROTOCOLS, pos.SINGLE_DRAWS)
    assert cmd.NORM_MODES[0] == "multiply" and cmd.PROTOCOLS[0] == "content"  # the defaults are today's behaviour


def test_absolute_mode_refuses_an_all_zero_row():
    class Fake:
        def embedding_table(self):
            t = torch.randn(5, 8)
            t[2] = 0
            return t

    f = pos.scaled_replacement(Fake(), 3.0, "absolute")
    assert float(f(1).norm()) == pytest.approx(3.0, rel=1e-6)
    with pytest.raises(GeomkitError, match="all-zero"):
        f(2)


def test_multiply_mode_is_todays_code_bit_for_bit(clip_probe):
    """The default (multiply, content) gives exactly what the code before the options gave: the
    replacement `table[id].to(float32) * m` at every content slot of the held-out prompts."""
    enc, tr, te, site, probe = clip_probe
    scales = [0.5, 1.0, 4.0, 16.0]
    r_default, _ = pos.run_position_probe(enc, tr, te, site, scales, probe=probe)
    r_mul, _ = pos.run_position_probe(enc, tr, te, site, scales, probe=probe, norm_mode="multiply", protocol="content")
    table = enc.embedding_table()
    slots = pos.content_slots(te, probe.n_positions)
    for i, m in enumerate(scales):
        old = pos.evaluate_replaced(enc, probe, te, site, lambda t, m=m: table[t].to(torch.float32) * float(m), slots=slots)
        assert r_default.accuracy[i] == r_mul.accuracy[i] == old.accuracy
        assert r_default.per_position[repr(m)] == r_mul.per_position[repr(m)] == old.per_position
        for t in (5, 300, 1000):
            assert torch.equal(pos.scaled_replacement(enc, m)(t), table[t].to(torch.float32) * float(m))
    assert r_default.baseline_accuracy == r_mul.baseline_accuracy
    js = r_default.results_json()
    assert js["norm_mode"] == "multiply" and js["protocol"] == "content" and "single" not in js
    assert js["scales_axis"] == "scale m (row x m)" == pos.scale_axis_label("multiply")
    assert pos.scale_axis_label("absolute") == "norm m (||e|| = m)"
    assert js["counts"]["heldout_slots"] == len(slots)


# ---- --protocol single -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind, position, trail", [("clip", 1, 1), ("bert", 1, 1), ("gemma3", 1, 1)])  # the tiny Gemma carries a BERT tokenizer ([CLS] x [SEP])
def test_single_inputs_follow_the_tokenizers_template(tiny_encoder, kind, position, trail):
    enc = tiny_encoder(kind)
    s = pos.single_token_inputs(enc, draws=50, seed=7)
    one = tokenize(enc, ["a"])
    assert s.position == position and len(s.template) == position + 1 + trail
    assert s.template[position] is None
    lead = one.ids[0][:position]
    assert s.template[:position] == lead and all(one.special[0][:position])
    specials = set(enc.tokenizer.all_special_ids)
    table = enc.embedding_table()
    for r, (ids, spec) in enumerate(zip(s.tok.ids, s.tok.special)):
        assert ids[:position] == lead and ids[position] == s.token_ids[r] and len(ids) == len(s.template)
        assert spec == [True] * position + [False] + [True] * trail
        assert s.token_ids[r] not in specials and float(table[s.token_ids[r]].abs().max()) > 0
    assert s.slots == [(r, position) for r in range(50)]
    # seeded: the same seed draws the same ids, another seed others
    assert pos.single_token_inputs(enc, draws=50, seed=7).token_ids == s.token_ids
    assert pos.single_token_inputs(enc, draws=50, seed=8).token_ids != s.token_ids
    assert len(set(s.token_ids)) > 40  # uniform over a large candidate set
    ok = table.abs().amax(dim=1) > 0
    ok[[i for i in specials if i < table.shape[0]]] = False
    assert s.candidates == int(ok.sum())


def test_single_protocol_reads_exactly_its_slots(clip_probe, monkeypatch):
    """Every forward of the single protocol holds the one-token inputs, the replacement mask is
    True at (row, first content position) only, and the probe reads that vector: the baseline
    equals an independent read of those slots."""
    enc, tr, te, site, probe = clip_probe
    seen_masks, seen_ids = [], []
    real_inject, real_run = pos.inject, pos.run_with_cache

    def inject(enc_, vecs, mask=None, **kw):
        seen_masks.append(mask.clone())
        return real_inject(enc_, vecs, mask=mask, **kw)

    def run(enc_, ids, attn, **kw):
        seen_ids.append(ids.clone())
        return real_run(enc_, ids, attn, **kw)

    monkeypatch.setattr(pos, "inject", inject)
    monkeypatch.setattr(pos, "run_with_cache", run)
    draws = 130  # over two batches of 64
    r, _ = pos.run_position_probe(enc, tr, te, site, [1.0, 8.0], probe=probe, protocol="single", single_draws=draws, single_seed=5)
    monkeypatch.undo()
    s = pos.single_token_inputs(enc, draws=draws, seed=5)
    want_ids = torch.as_tensor(s.tok.ids)
    singles = [i for i in seen_ids if i.shape[1] == want_ids.shape[1]]
    # the baseline, two scales: 3 passes over the draws, in batches of 64
    assert torch.equal(torch.cat(singles), torch.cat([want_ids] * 3))
    assert len(seen_masks) == 2 * 3
    for mask in seen_masks:
        assert mask.shape[1] == want_ids.shape[1]
        assert mask.sum() == mask.shape[0] and mask[:, s.position].all()
    assert set(r.per_position_baseline) == {s.position} and r.n_heldout_slots == draws
    # independent: the probe on the clean one-token inputs, read at the slot
    feats = pos.site_features(enc, s.tok, site)
    at = feats.position == s.position
    assert r.baseline_accuracy == pytest.approx(float((probe.predict(feats.x[at]) == s.position).double().mean()), abs=1e-12)
    # m = 1 in multiply mode replaces each token by itself
    assert r.accuracy[0] == pytest.approx(r.baseline_accuracy, abs=1e-12)
    js = r.results_json()
    assert js["protocol"] == "single" and js["single"]["token_ids"] == s.token_ids and js["single"]["position"] == s.position
    assert js["single"]["draws"] == draws and js["single"]["seed"] == 5


def test_bad_values_in_code_are_one_line(clip_probe):
    enc, tr, te, site, probe = clip_probe
    with pytest.raises(GeomkitError, match="--norm-mode 'divide': choose one of multiply, absolute"):
        pos.run_position_probe(enc, tr, te, site, [1.0], probe=probe, norm_mode="divide")
    with pytest.raises(GeomkitError, match="--protocol 'first': choose one of content, single"):
        pos.run_position_probe(enc, tr, te, site, [1.0], probe=probe, protocol="first")
    with pytest.raises(GeomkitError):
        pos.scaled_replacement(enc, 2.0, "Absolute")


# ---- the command -------------------------------------------------------------------------------------
def _cli(argv, capsys):
    from geomkit.cli import main

    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("argv, needle", [
    (["--norm-mode", "divide"], ["--norm-mode: invalid choice: 'divide'", "multiply", "absolute"]),
    (["--norm-mode", ""], ["--norm-mode: invalid choice"]),
    (["--protocol", "first"], ["--protocol: invalid choice: 'first'", "content", "single"]),
    (["--protocol"], ["--protocol: expected one argument"]),
])
def test_bad_option_values_are_one_line_exit_2(clip64, tmp_path, capsys, argv, needle):
    rc, out, err = _cli(["probe-position", "--model", clip64.source, "--out", str(tmp_path / "o"), "--max-prompts", "6", *argv], capsys)
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and all(n in lines[0] for n in needle), lines[0]
    assert not (tmp_path / "o").exists()


def test_command_with_both_options_and_load_probe(clip64, tmp_path, capsys, monkeypatch, one_thread):
    """--norm-mode absolute --protocol single trains, writes norm_mode/protocol/site_chosen and the
    draws; a saved probe evaluated again with both options gives the same numbers, and with the
    defaults the content protocol's numbers."""
    from geomkit.embeddings_io import save_learned

    enc = clip64
    emb = tmp_path / "tok.safetensors"
    learned = enc.embedding_table()[enc.token_id("cat")][None] * 40
    save_learned(emb, "<tok>", learned)
    monkeypatch.chdir(tmp_path)
    base = ["probe-position", "--model", enc.source, "--max-prompts", "40", "--scales", "0.5,2", "--seed", "4"]
    rc, out, err = _cli(base + ["--out", "a", "--epochs", "10", "--hidden", "32", "--norm-mode", "absolute",
                                "--protocol", "single", "--embedding", str(emb)], capsys)
    assert rc == 0, err
    r = json.loads(Path("a/results.json").read_text())
    assert r["norm_mode"] == "absolute" and r["protocol"] == "single" and r["scales_axis"] == "norm m (||e|| = m)"
    assert r["site_chosen"].startswith("automatic") and "LN(e + p)" in r["site_chosen"]
    assert r["single"]["draws"] == pos.SINGLE_DRAWS == r["counts"]["heldout_slots"] and r["single"]["seed"] == 4
    assert r["single"]["token_ids"] == pos.single_token_inputs(enc, seed=4).token_ids
    assert set(r["per_position_baseline"]) == {"1"} and "position 1" in r["averaging"]
    # learned embeddings are placed as they are: its norm is reported unchanged
    assert r["embedding_norm_ratio"]["<tok>"] * r["mean_vocab_norm"] == pytest.approx(float(learned.norm()), rel=1e-5)
    assert "norm m (||e|| = m)" in out and "protocol: single" in out
    csv = Path("a/accuracy.csv").read_text()
    assert "norm," in csv and "scaled," not in csv

    rc, out, err = _cli(base + ["--out", "b", "--norm-mode", "absolute", "--protocol", "single", "--embedding", str(emb),
                                "--load-probe", "a/probe"], capsys)
    assert rc == 0, err
    r2 = json.loads(Path("b/results.json").read_text())
    for k in ("accuracy", "baseline_accuracy", "embeddings", "single", "norm_mode", "protocol", "site_chosen", "per_position"):
        assert r2[k] == r[k], k
    assert r2["probe_dir"] == "a/probe"

    # the same probe under the defaults: content protocol, multiply mode
    rc, out, err = _cli(base + ["--out", "c", "--load-probe", "a/probe"], capsys)
    assert rc == 0, err
    r3 = json.loads(Path("c/results.json").read_text())
    assert r3["norm_mode"] == "multiply" and r3["protocol"] == "content" and "single" not in r3
    assert r3["scales_axis"] == "scale m (row x m)" and r3["site_chosen"] == r["site_chosen"]
    assert r3["counts"]["heldout_slots"] > 0 and len(r3["per_position_baseline"]) > 1
