"""`geomkit inspect`: its numbers against independent computations (brute-force neighbours, numpy
percentiles, hand-built LN(e + p) for the position probe, the model's own hidden states for the
residual angle), --fix rescale, SDXL pairs on both encoders, RoPE models, bad input."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from geomkit import inspection as ins
from helpers import assert_one_line_error, run_cli

D = 32
FAST = ["--max-prompts", "80", "--max-templates", "6"]


def brute_neighbours(table, v, k):
    t, q = table.double(), v.double()
    cos = (t @ q) / (t.norm(dim=1) * q.norm())
    dist = (t - q).norm(dim=1)
    return cos.topk(k).indices.tolist(), dist.topk(k, largest=False).indices.tolist(), cos, dist


def hidden_state_angles(enc, cp, word_id, vector=None):
    """Mean angle(h_l, h_{l+1}) at the word's place, from the model's own output_hidden_states on a
    copy whose table row for the word is `vector`: no hooks, no geomkit code."""
    model = copy.deepcopy(enc.model)
    if vector is not None:
        with torch.no_grad():
            model.get_input_embeddings().weight[word_id] = vector
    with torch.no_grad():
        hs = model(input_ids=cp.ids, attention_mask=cp.mask, output_hidden_states=True).hidden_states
    rows = torch.arange(cp.ids.shape[0])
    angles = []
    for layer in range(enc.n_blocks):
        a, b = hs[layer][rows, cp.positions].double(), hs[layer + 1][rows, cp.positions].double()
        cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
        angles.append(torch.rad2deg(torch.acos(cos.clamp(-1, 1))))
    return float(torch.stack(angles, 1).mean())


def test_inspect_numbers_match_independent_computations(tiny_dir, tiny_encoder, tmp_path, capsys, one_thread):
    enc = tiny_encoder("clip")
    table = enc.embedding_table().detach()
    torch.manual_seed(3)
    vec = torch.randn(1, D) * 0.6
    f = tmp_path / "tok.safetensors"
    save_file({"<tok>": vec}, str(f))
    code, out, _ = run_cli(capsys, "inspect", f, "--model", tiny_dir("clip"), "--out", tmp_path / "o", *FAST)
    assert code == 0 and "verdict" in out
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    (row,) = res["tokens"]
    keys = {"token", "file", "encoder", "norm", "m_star", "norm_ratio", "norm_percentile", "cosine_neighbors",
            "euclidean_neighbors", "position_accuracy", "residual_angle_deg", "vocab_residual_angle_deg", "verdict"}
    assert set(res) >= {"model", "tokens"} and set(row) >= keys
    assert row["token"] == "<tok>" and row["encoder"] == 1 and row["file"] == str(f)

    norms = np.linalg.norm(table.double().numpy(), axis=1)
    live = norms[norms > 0]
    n = float(np.linalg.norm(vec.double().numpy()))
    assert row["norm"] == pytest.approx(n, rel=1e-12)
    assert row["m_star"] == pytest.approx(live.mean(), rel=1e-12)
    assert row["norm_ratio"] == pytest.approx(n / live.mean(), rel=1e-12)
    assert row["norm_percentile"] == pytest.approx(100 * np.mean(live <= n), abs=1e-9)

    cos_ids, euc_ids, cos, dist = brute_neighbours(table, vec[0], 10)
    assert [nb["id"] for nb in row["cosine_neighbors"]] == cos_ids
    assert [nb["id"] for nb in row["euclidean_neighbors"]] == euc_ids
    assert [nb["token"] for nb in row["cosine_neighbors"]] == [enc.token_str(i) for i in cos_ids]
    assert row["cosine_neighbors"][0]["score"] == pytest.approx(float(cos[cos_ids[0]]), abs=1e-5)
    assert row["euclidean_neighbors"][0]["score"] == pytest.approx(float(dist[euc_ids[0]]), rel=1e-5)

    # the residual angles, from the model's own hidden states with the word's row replaced
    from geomkit.probes.prompts import EVAL_PROMPTS, read_prompts
    from geomkit.probes._args import subsample

    templates = subsample(read_prompts(None, default=EVAL_PROMPTS, placeholder=True), 6, 0)
    rs = ins.residual_setup(enc, templates, "dog")
    assert row["residual_prompts"] == len(rs.prompts.positions)
    assert row["vocab_residual_angle_deg"] == pytest.approx(hidden_state_angles(enc, rs.prompts, rs.prompts.token_id), abs=1e-3)
    assert row["residual_angle_deg"] == pytest.approx(hidden_state_angles(enc, rs.prompts, rs.prompts.token_id, vec[0]), abs=1e-3)

    assert 0 <= row["position_accuracy"] <= 1 and row["position_accuracy_normal"] > 0.5  # the probe reads positions
    assert (tmp_path / "o" / "inspect.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "o" / "report.md").read_text()
    assert row["verdict"] in md and row["cosine_neighbors"][0]["token"] in md


def test_position_accuracy_matches_a_hand_built_probe_input(tiny_encoder, one_thread):
    """The probe reads LN(e + p) at block 0: rebuild it by hand (table row, position row, the
    block's LayerNorm module called directly) and score the same probe."""
    from geomkit.probes.prompts import read_prompts

    enc = tiny_encoder("clip")
    setup = ins.position_setup(enc, read_prompts()[:80], seed=0, epochs=5)
    assert setup.site == "blocks.0.ln1"
    torch.manual_seed(0)
    table, pos_tab, ln = enc.embedding_table().detach(), enc.position_table().detach(), enc.blocks[0].layer_norm1
    for v in (torch.randn(D) * 0.2, torch.randn(D) * 50):
        preds, targets = [], []
        with torch.no_grad():
            for r, j in setup.slots:
                ids = torch.tensor(setup.heldout.ids[r])
                e = table[ids].clone()
                e[j] = v
                preds.append(int(setup.probe.predict(ln(e + pos_tab[: len(ids)])[j][None])[0]))
                targets.append(j)
        preds, targets = np.array(preds), np.array(targets)
        expect = np.mean([np.mean(preds[targets == p] == p) for p in sorted(set(targets))])
        assert ins.position_accuracy(enc, setup, v) == pytest.approx(expect, abs=1e-12)
    # Lemma 1: a 50x-scaled vector leaves LN(e + p) nearly position-free: near chance
    assert ins.position_accuracy(enc, setup, table[enc.token_id("dog")] * 1e4) <= 2 * setup.chance + 1e-9


def test_fix_rescale_keeps_the_direction_at_m_star(tiny_dir, tiny_encoder, tmp_path, capsys, one_thread):
    enc = tiny_encoder("clip")
    m = ins.vocab_norms(enc.embedding_table()).m_star
    torch.manual_seed(1)
    vec = torch.randn(2, D)
    vec = vec / vec.norm(dim=1, keepdim=True) * m * torch.tensor([[40.0], [25.0]])  # a TI-like inflated token
    torch.save({"string_to_param": {"*": vec}, "name": "inflated", "step": 5}, tmp_path / "inflated.pt")
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "inflated.pt", "--model", tiny_dir("clip"), "--out", tmp_path / "o",
                           "--fix", "rescale", *FAST)
    assert code == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    orig = [t for t in res["tokens"] if not t["fixed"]]
    fixed = [t for t in res["tokens"] if t["fixed"] == "rescale"]
    assert [t["token"] for t in orig] == ["inflated[0]", "inflated[1]"] and len(fixed) == 2
    assert [t["norm_ratio"] for t in orig] == pytest.approx([40.0, 25.0], rel=1e-5)
    assert all(t["norm_percentile"] == 100.0 and "drown" in t["verdict"] for t in orig)
    assert all(t["position_accuracy"] < t["position_accuracy_normal"] for t in orig)
    (f,) = res["rescaled_files"]
    new = load_file(f)["inflated"].double()
    assert torch.allclose(new.norm(dim=1), torch.full((2,), m, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(torch.nn.functional.cosine_similarity(new, vec.double(), dim=1), torch.ones(2, dtype=torch.float64))
    assert all(t["norm_ratio"] == pytest.approx(1.0, rel=1e-6) and "drown" not in t["verdict"] for t in fixed)
    # rescaling keeps the direction, so the cosine neighbours are unchanged
    assert [nb["id"] for nb in fixed[0]["cosine_neighbors"]] == [nb["id"] for nb in orig[0]["cosine_neighbors"]]
    # a file already at m* (a DTI token, or the copy just written) gets no second copy
    code, _, _ = run_cli(capsys, "inspect", f, "--model", tiny_dir("clip"), "--out", tmp_path / "o2", "--fix", "rescale", "--no-effects")
    res = json.loads((tmp_path / "o2" / "results.json").read_text())
    assert code == 0 and res["already_at_m_star"] == [f] and res["rescaled_files"] == [] and len(res["tokens"]) == 2


def test_sdxl_pair_is_inspected_on_both_encoders(tiny_dir, tiny_encoder, tmp_path, capsys, one_thread):
    torch.manual_seed(2)
    l, g = torch.randn(1, 32), torch.randn(1, 48)
    torch.save({"clip_l": l, "clip_g": g}, tmp_path / "pair.pt")
    sdxl = tiny_dir("sdxl")
    code, _, _ = run_cli(capsys, "inspect", tmp_path / "pair.pt", "--model", sdxl, "--out", tmp_path / "o", "--no-effects")
    assert code == 0
    rows = json.loads((tmp_path / "o" / "results.json").read_text())["tokens"]
    assert [r["encoder"] for r in rows] == [1, 2]
    for r, part, i in zip(rows, (l, g), (1, 2)):
        enc = tiny_encoder("sdxl", encoder=i)
        assert r["norm"] == pytest.approx(float(part.double().norm()), rel=1e-12)
        assert r["m_star"] == pytest.approx(ins.vocab_norms(enc.embedding_table()).m_star, rel=1e-12)
        assert [nb["id"] for nb in r["cosine_neighbors"]] == brute_neighbours(enc.embedding_table(), part[0], 10)[0]
        assert r["position_accuracy"] is None and r["position_note"] == "not measured (--no-effects)"
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "pair.pt", "--model", sdxl, "--encoder", "2", "--out", tmp_path / "o2", "--no-effects")
    assert "part clip_l (32-d) not inspected (--encoder 2)" in out
    assert code == 0 and [r["encoder"] for r in json.loads((tmp_path / "o2" / "results.json").read_text())["tokens"]] == [2]
    # a one-part file goes to the encoder of its dimension
    save_file({"<g>": g}, str(tmp_path / "g.safetensors"))
    assert run_cli(capsys, "inspect", tmp_path / "g.safetensors", "--model", sdxl, "--out", tmp_path / "o3", "--no-effects")[0] == 0
    assert [r["encoder"] for r in json.loads((tmp_path / "o3" / "results.json").read_text())["tokens"]] == [2]


def test_rope_model_has_no_position_accuracy(tiny_dir, tmp_path, capsys, one_thread):
    save_file({"<t>": torch.randn(1, 32)}, str(tmp_path / "t.safetensors"))
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "t.safetensors", "--model", tiny_dir("gemma3"), "--out", tmp_path / "o", *FAST)
    assert code == 0
    (row,) = json.loads((tmp_path / "o" / "results.json").read_text())["tokens"]
    assert row["position_accuracy"] is None and "no absolute position embeddings" in row["position_note"]
    assert row["residual_angle_deg"] is not None and math.isfinite(row["residual_angle_deg"])
    assert "position read" not in row["verdict"]


def test_bad_input_is_one_line_and_writes_nothing(tiny_dir, tmp_path, capsys):
    save_file({"<w>": torch.randn(1, 40)}, str(tmp_path / "w.safetensors"))
    save_file({"<z>": torch.zeros(1, 32)}, str(tmp_path / "z.safetensors"))
    save_file({"<t>": torch.randn(1, 32)}, str(tmp_path / "t.safetensors"))
    cases = [
        (["w.safetensors", "--model", tiny_dir("clip")], "fits no text encoder"),
        (["w.safetensors", "--model", tiny_dir("sdxl")], "encoder 1: 32, encoder 2: 48"),
        (["z.safetensors", "--model", tiny_dir("clip")], "all zeros"),
        (["t.safetensors", "--model", tiny_dir("clip"), "--encoder", "2"], "needs a diffusers pipeline folder"),
        (["t.safetensors", "--model", tiny_dir("clip"), "--probe-dir", str(tmp_path / "nope")], "--probe-dir"),
        (["missing.pt", "--model", tiny_dir("clip")], "not found"),
    ]
    for i, (argv, needle) in enumerate(cases):
        argv = [str(tmp_path / argv[0])] + argv[1:]
        assert_one_line_error(*run_cli(capsys, "inspect", *argv, "--out", tmp_path / f"o{i}", "--no-effects")[::2], needle)
        assert not any((tmp_path / f"o{i}").glob("*.json"))


def test_verdict_thresholds():
    base = {"norm_percentile": 50.0, "position_accuracy": None, "position_accuracy_normal": None,
            "residual_angle_deg": None, "vocab_residual_angle_deg": None}
    assert ins.verdict({**base, "norm_ratio": 1.0}).endswith("healthy")
    v = ins.verdict({**base, "norm_ratio": 27.4, "norm_percentile": 100.0})
    assert v.startswith("norm 27.4x m*, beyond every vocabulary token") and "drown position and the rest of the prompt" in v
    measured = {**base, "norm_ratio": 3.0, "norm_percentile": 100.0, "position_accuracy": 0.2, "position_accuracy_normal": 0.9,
                "residual_angle_deg": 1.0, "vocab_residual_angle_deg": 5.0, "residual_word": "dog"}
    v = ins.verdict(measured)
    assert "position read 20% vs 90%" in v and "Effect I" in v and "Effect II" in v and "consider DTI or --fix rescale" in v
    # inflated, but nothing measured beyond the thresholds
    v = ins.verdict({**measured, "position_accuracy": 0.85, "residual_angle_deg": 4.0})
    assert "no measured effect" in v
    assert "under-weighted" in ins.verdict({**base, "norm_ratio": 0.3, "norm_percentile": 0.0})
    assert ins.rescale(torch.tensor([[3.0, 4.0]]), 2.0).tolist()[0] == pytest.approx([1.2, 1.6], rel=1e-6)
    assert ins.norm_percentile(2.0, torch.tensor([1.0, 2.0, 3.0, 4.0])) == 50.0


def test_figure_breaks_the_axis_for_far_out_tokens():
    from geomkit.commands.inspect import plot

    live = np.random.default_rng(0).normal(1.0, 0.01, 5000)
    near = {"live": live, "m_star": 1.0, "tokens": [{"label": "a", "norm": 1.0, "ratio": 1.0}], "title": "t"}
    far = {**near, "tokens": [{"label": "a", "norm": 1.0, "ratio": 1.0}, {"label": "b", "norm": 27.0, "ratio": 27.0}]}
    fig = plot([near], "x")
    assert len(fig.axes) == 1
    fig = plot([far], "x")
    main, side = fig.axes
    assert main.get_xlim()[1] < 1.1 and side.get_xlim()[0] < 27.0 < side.get_xlim()[1]


@pytest.mark.real
def test_inspect_on_minilm(minilm, tmp_path, capsys):
    """Real model with absolute positions: a vocabulary word's embedding scaled 8x loses its
    position at LN(e + p) (Lemma 1); rescaled to m* it is read like the other words."""
    vec = minilm.embedding_table()[minilm.token_id("river")].float() * 8
    save_file({"<river8>": vec[None].contiguous()}, str(tmp_path / "r.safetensors"))
    code, out, _ = run_cli(capsys, "inspect", tmp_path / "r.safetensors", "--model", "minilm-l6", "--out", tmp_path / "o",
                           "--fix", "rescale", "--max-prompts", "150", "--max-templates", "8")
    assert code == 0
    orig, fixed = json.loads((tmp_path / "o" / "results.json").read_text())["tokens"]
    assert orig["norm_ratio"] > 2 and "drown" in orig["verdict"]
    assert orig["position_accuracy"] < orig["position_accuracy_normal"] - 0.1
    assert fixed["position_accuracy"] > orig["position_accuracy"]
    assert fixed["cosine_neighbors"][0]["token"] == "river"
