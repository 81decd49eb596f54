"""The foundation on the real models that install from the package registry."""

import json

import pytest
import torch

from geomkit.cli import main

pytestmark = pytest.mark.real


def test_gemma_loads_with_known_geometry(gemma):
    assert gemma.family.name == "gemma" and gemma.n_blocks == 18 and gemma.d_model == 640
    assert gemma.vocab_size == 262144
    # Gemma 3 scales embeddings by sqrt(d) inside the embedding module
    assert gemma.embed_scale == pytest.approx(640**0.5, rel=1e-4)
    from geomkit.geometry import norm_stats, row_norms

    stats = norm_stats(row_norms(gemma.embedding_table()))
    # FACTS: de-quantised Gemma 3 270M token norms are almost constant (mean 1.031, std 0.0005)
    assert stats["mean"] == pytest.approx(1.031, abs=0.002)
    assert stats["std"] < 0.01


def test_gemma_capture_matches_hidden_states(gemma):
    from geomkit.hooks import run_with_cache

    batch = gemma.encode(["a photo of an apple on a table"])
    out, cache = run_with_cache(gemma, batch["input_ids"], batch["attention_mask"], sites=["blocks.0.resid_pre", "blocks.5.resid_post"])
    ref = gemma.forward(batch["input_ids"], batch["attention_mask"], output_hidden_states=True).hidden_states
    torch.testing.assert_close(cache["blocks.0.resid_pre"], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(cache["blocks.5.resid_post"], ref[6], rtol=0, atol=0)


def test_gemma_neighbors_command(gemma, tmp_path, capsys):
    assert main(["neighbors", "apple", "--model", "gemma3-270m", "--out", str(tmp_path), "-k", "5"]) == 0
    res = json.loads((tmp_path / "results.json").read_text())["queries"]["apple"]
    cos = [e["token"].lstrip("▁").lower() for e in res["cosine"]]
    assert "apples" in cos  # a trained vocabulary: the plural is a close direction
    assert res["cosine"][0]["score"] > 0.5


def test_minilm_neighbors_and_norms(minilm, tmp_path, capsys):
    assert minilm.family.name == "bert" and minilm.vocab_size == 30522 and minilm.d_model == 384
    assert main(["neighbors", "writing", "--model", "minilm-l6", "--out", str(tmp_path / "n"), "-k", "5"]) == 0
    res = json.loads((tmp_path / "n" / "results.json").read_text())["queries"]["writing"]
    assert {"write", "written"} <= {e["token"] for e in res["cosine"]}
    assert main(["norms", "--model", "minilm-l6", "--out", str(tmp_path / "m")]) == 0
    stats = json.loads((tmp_path / "m" / "results.json").read_text())
    assert stats["count"] == 30522 and 0.9 < stats["mean"] < 1.2
    assert stats["min"] <= stats["median"] <= stats["max"]


def test_whisper_decoder_loads_and_hooks():
    from geomkit.hooks import run_with_cache
    from geomkit.models import load_encoder

    enc = load_encoder("whisper-tiny-en")
    assert enc.family.name == "whisper-decoder" and enc.n_blocks == 4 and enc.d_model == 384
    assert enc.vocab_size == 51864 and enc.position_table().shape == (448, 384)
    batch = enc.encode(["a photo of an apple on a table"])
    _, cache = run_with_cache(enc, batch["input_ids"], batch["attention_mask"], sites=enc.sites())
    ref = enc.forward(batch["input_ids"], batch["attention_mask"], output_hidden_states=True).hidden_states
    for i in range(enc.n_blocks):
        torch.testing.assert_close(cache[f"blocks.{i}.resid_pre"], ref[i], rtol=0, atol=0)
    # pre-norm with learned absolute positions: block 0 receives token + position embeddings
    torch.testing.assert_close(cache["blocks.0.resid_pre"], cache["embed"] + cache["pos_embed"])
    # trained vocabulary: norms about 0.44, like CLIP's ~0.4 (converter's own report)
    from geomkit.geometry import norm_stats, row_norms

    assert 0.40 < norm_stats(row_norms(enc.embedding_table()))["mean"] < 0.48
