"""The key numbers the notebooks show, checked here so that a drift cannot hide in a picture.

Notebooks read the committed outputs of `geomkit reproduce` under probes/; these tests check the
same files against their invariants, and recompute the live numbers the notebooks compute."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.real
RESULTS = Path(__file__).resolve().parents[1] / "probes"


def _json(*parts):
    return json.loads(RESULTS.joinpath(*parts).read_text())


def test_01_gemma_rankings_coincide_minilm_differ(gemma, minilm):
    """Notebook 01: Gemma's near-constant norms make Euclidean and cosine neighbours identical."""
    from geomkit.geometry import nearest, norm_stats, row_norms

    for enc, same in ((gemma, True), (minilm, False)):
        table = enc.embedding_table()
        ids = [enc.token_id(w) for w in ("apple", "study", "writing")]
        cos, euc = nearest(table, table[ids], k=5, exclude=[[i] for i in ids])
        shared = [len(set(c.ids.tolist()) & set(e.ids.tolist())) for c, e in zip(cos, euc)]
        assert (shared == [5, 5, 5]) is same
    s = norm_stats(row_norms(gemma.embedding_table()))
    assert s["std"] / s["mean"] < 1e-3


def test_02_probe_numbers(minilm):
    """Notebook 02: perfect recovery at natural scale, collapse by m = 16 (live, MiniLM); the
    committed Gemma probe places DTI above TI."""
    from geomkit.probes import position as pos
    from geomkit.probes.prompts import read_prompts, split_prompts, tokenize

    train_p, test_p = split_prompts(read_prompts(), 0.2, seed=0)
    res, _ = pos.run_position_probe(minilm, tokenize(minilm, train_p), tokenize(minilm, test_p), "embed_norm", [1, 16], epochs=40, seed=0)
    assert res.baseline_accuracy >= 0.97 and res.accuracy[0] >= 0.97 and res.accuracy[1] < 0.5
    gemma = _json("gemma3-270m", "probe-position", "results.json")
    emb = gemma["embeddings"]
    ti = next(v for k, v in emb.items() if "train-ti" in k)
    dti = next(v for k, v in emb.items() if "train-dti" in k)
    assert dti > ti and gemma["accuracy"][-1] < gemma["baseline_accuracy"]


def test_03_residual_angle_numbers():
    """Notebook 03: in Whisper the per-block angle falls from m = 1 to m = 16; in Gemma it rises."""
    def by_m(model):
        rows = _json(model, "residual-angles", "results.json")["by_scale"]
        return {g["scale"]: g["mean_angle_deg"] for g in rows if g["concept"] == "<vocabulary>"}

    w, g = by_m("whisper-tiny-en"), by_m("gemma3-270m")
    assert w[16.0] < w[1.0] - 5
    assert g[16.0] > g[1.0]


def test_04_ti_vs_dti_numbers():
    """Notebook 04: DTI's norm is m* at every logged step; TI's grows past it; DTI stays nearer the prior."""
    runs = {m: RESULTS / "gemma3-270m" / f"train-{m}" for m in ("ti", "dti")}
    res = {m: json.loads((d / "results.json").read_text()) for m, d in runs.items()}
    log = [json.loads(l) for l in (runs["dti"] / "train_log.jsonl").read_text().splitlines()]
    m_star = res["dti"]["m_star"][0]
    assert all(abs(r["norm"] - m_star) < 1e-6 * m_star for r in log)
    assert res["ti"]["final_norm"][0] > 1.5 * m_star
    assert res["dti"]["cos_to_prior"] > res["ti"]["cos_to_prior"]
    from safetensors.torch import load_file

    dti = load_file(str(runs["dti"] / "learned_embeds.safetensors"))["<glimmerfox>"]
    assert float(dti.double().norm()) == pytest.approx(m_star, rel=1e-6)


def test_05_interpolation_numbers(gemma):
    """Notebook 05: the norms are the construction (slerp linear in t, lerp below it); the measured
    part is the path's cosine neighbours: DTI token -> 'wolf' changes its nearest token once, fox ->
    wolf between ratios 0.45 and 0.5, consecutive top-10 Jaccard >= 2/3, the angle to the start
    monotonic, and slerp and lerp show the same six neighbours at the notebook's ratios."""
    import torch
    from safetensors.torch import load_file

    from geomkit.geometry import angle_deg, lerp, slerp
    from geomkit.interpolation import neighbour_path, smoothness

    dti = load_file(str(RESULTS / "gemma3-270m" / "train-dti" / "learned_embeds.safetensors"))["<glimmerfox>"][0]
    wolf = gemma.embedding_table()[gemma.token_id("wolf")]
    for t in (0.25, 0.5, 0.75):
        expect = (1 - t) * dti.double().norm() + t * wolf.double().norm()
        assert float(slerp(dti, wolf, t).double().norm()) == pytest.approx(float(expect), rel=1e-5)
        assert float(lerp(dti, wolf, t).double().norm()) < float(expect)
    assert float(dti.double().norm()) == pytest.approx(float(wolf.double().norm()), rel=1e-4)  # "agree to 0.01%"
    ratios = [0, 0.25, 0.35, 0.45, 0.5, 0.55, 0.65, 0.75, 1]
    lists = {}
    for name, fn in (("slerp", slerp), ("lerp", lerp)):
        vs = [fn(dti, wolf, t) for t in ratios]
        nbs = neighbour_path(gemma, torch.stack(vs), k=10)
        lists[name] = [[r["id"] for r in nb] for nb in nbs]
        sm = smoothness(ratios, lists[name], [float(angle_deg(dti, v)) for v in vs], labels=[nb[0]["text"].strip() for nb in nbs])
        assert sm["top1_sequence"] == ["fox", "wolf"] and sm["top1_changes"] == 1
        assert sm["top1_changed"][ratios.index(0.45)] is True  # the switch: between 0.45 and 0.5
        assert sm["jaccard_min"] == pytest.approx(2 / 3) and sm["angle_to_a_monotonic"] is True
    assert [x[:6] for x in lists["slerp"]] == [x[:6] for x in lists["lerp"]]  # the six shown
    assert min(len(set(x) & set(y)) for x, y in zip(lists["slerp"], lists["lerp"])) >= 9


def test_06_trained_tokens_whisper_numbers():
    """Notebook 06: on the Whisper decoder DTI's norm is m* at every step, TI's grows and the high-lr
    TI passes 8 m*; the per-block angles, probe accuracies and the live recomputation agree with
    the committed trained-angles / trained-probe outputs."""
    import torch
    from safetensors.torch import load_file

    from geomkit.geometry import angle_deg
    from geomkit.hooks import capture, inject
    from geomkit.models import load_encoder

    model = "whisper-tiny-en"
    runs = {"ti": "train-ti", "dti": "train-dti", "high": "train-ti-highlr"}
    res = {k: _json(model, s, "results.json") for k, s in runs.items()}
    m_star = res["dti"]["m_star"][0]
    log = [json.loads(l) for l in (RESULTS / model / "train-dti" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == res["dti"]["steps"] >= 500
    assert all(abs(r["norm"] - m_star) < 1e-6 * m_star for r in log)
    assert res["ti"]["steps"] >= 500 and res["ti"]["lr"] == 5e-3 and res["ti"]["batch_size"] == 4
    assert res["ti"]["final_norm"][0] > 1.5 * m_star
    assert res["high"]["final_norm"][0] >= 8 * m_star
    ra = _json(model, "trained-angles", "results.json")
    ang = {k: next(r["mean_angle_deg"] for r in ra["rows"] if r["scale"] is None and r["concept"].endswith(f"({s})"))
           for k, s in runs.items()}
    assert ang["dti"] > 1.2 * ang["ti"] and ang["ti"] > ang["high"]  # Effect II: 61.3 > 47.5 > 27.8 deg
    pp = _json(model, "trained-probe", "results.json")
    acc = {k: next(v for n, v in pp["embeddings"].items() if n.endswith(f"({s})")) for k, s in runs.items()}
    assert acc["dti"] >= 0.95 and acc["ti"] <= 0.05 and acc["high"] <= 0.05 and pp["baseline_accuracy"] >= 0.95
    # the notebook's live cell: the same tokens on four prompts through the public API
    enc = load_encoder(model)
    batch = enc.encode(["a photo of a fox in the snow", "the fox ran into the forest", "a small fox with a silver tail",
                        "my friend saw a fox last night"])
    where = batch["input_ids"] == enc.token_id("fox")
    sites = [f"blocks.{i}.{s}" for i in range(enc.n_blocks) for s in ("resid_pre", "resid_post")]
    live = {}
    for k, s in runs.items():
        vec = load_file(str(RESULTS / model / s / "learned_embeds.safetensors"))["<glimmerfox>"].reshape(-1)
        with torch.no_grad(), inject(enc, vec, mask=where), capture(enc, sites) as cache:
            enc.forward(batch["input_ids"], batch["attention_mask"])
        live[k] = sum(angle_deg(cache[f"blocks.{i}.resid_pre"][where], cache[f"blocks.{i}.resid_post"][where]).mean().item()
                      for i in range(enc.n_blocks)) / enc.n_blocks
    assert live["dti"] > live["ti"] > live["high"]
    for k in runs:  # four prompts vs the committed 45 templates x 6 words: close, not equal
        assert live[k] == pytest.approx(ang[k], abs=3.0)
