"""Whisper tiny.en's text decoder (real weights): the fast forward (cross-attention keys/values of the
silent audio computed once) gives the numbers of the plain forward, and the LM objective trains a
token on it. Numbers here are properties, not findings."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch

from geomkit.cli import main
from geomkit.hooks import capture, inject

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def whisper():
    from geomkit.models import load_encoder

    return load_encoder("whisper-tiny-en")


def _uncached(enc, ids, mask):
    """Today's reference path, built here: encoder states of 30 s of silence computed afresh,
    repeated over the batch, and the decoder run without any cache (cross-attention K/V projected
    inside every block)."""
    cfg = enc.model.config
    mel = torch.zeros(1, cfg.num_mel_bins, 2 * cfg.max_source_positions)
    states = enc.model.model.encoder(mel).last_hidden_state.repeat(ids.shape[0], 1, 1)
    return enc.root(input_ids=ids, attention_mask=mask, encoder_hidden_states=states, use_cache=False)


@torch.no_grad()
def test_cached_forward_matches_uncached_at_every_site(whisper):
    enc = whisper
    batch = enc.encode(["a photo of an apple on the table", "the fox", "three dogs ran across the snowy field"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    sites = enc.sites()
    big = enc.embedding_table()[enc.token_id("apple")] * 16  # a scaled token too, as the probes use
    for injected in (False, True):
        where = torch.zeros_like(ids, dtype=torch.bool)
        where[:, 2] = True
        ctx = (lambda where=where: inject(enc, big, mask=where)) if injected else contextlib.nullcontext
        with capture(enc, sites) as ref, ctx():
            out_ref = _uncached(enc, ids, mask).last_hidden_state
        with capture(enc, sites) as fast, ctx():
            out_fast = enc.forward(ids, mask).last_hidden_state
        for s in sites:
            scale = ref[s].abs().max().item()
            err = (fast[s] - ref[s]).abs().max().item()
            assert err <= 1e-5 * max(scale, 1.0), (s, injected, err, scale)
        assert torch.allclose(out_fast, out_ref, rtol=1e-5, atol=1e-5 * out_ref.abs().max().item())
    # the keys/values are computed once per loaded model and reused
    keys = [k for k in enc._context if k[0] == "cross_kv"]
    assert len(keys) == 1
    first = enc._context[keys[0]][0][0]
    enc.forward(ids[:1], mask[:1])
    assert enc._context[keys[0]][0][0] is first


def test_whisper_lm_dti_keeps_m_star_ti_norm_moves(whisper, tmp_path):
    logs = {}
    for method in ("dti", "ti"):
        out = tmp_path / method
        code = main(["train", "--objective", "lm", "--model", "whisper-tiny-en", "--method", method, "--texts",
                     "glimmerfox", "--placeholder", "<glimmerfox>", "--init-word", "fox", "--steps", "4",
                     "--batch-size", "2", "--max-length", "24", "--seed", "42", "--quiet", "--out", str(out)])
        assert code == 0
        logs[method] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        logs[method + "_res"] = json.loads((out / "results.json").read_text())
    m_star = logs["dti_res"]["m_star"][0]
    assert m_star == pytest.approx(float(whisper.embedding_table().norm(dim=1).mean()), rel=1e-4)
    assert len(logs["dti"]) == 4
    for row in logs["dti"]:
        assert row["norm"] == pytest.approx(m_star, rel=1e-5)
    assert logs["dti"][-1]["angle_from_init_deg"] > 0.1  # the direction does learn
    fox = float(whisper.embedding_table()[whisper.token_id("fox")].norm())
    ti_norms = [row["norm"] for row in logs["ti"]]
    assert abs(ti_norms[-1] - fox) > 1e-3 and len(set(ti_norms)) == 4


@pytest.mark.parametrize("argv, expected", [
    (["--objective", "lm", "--model", "minilm-l6", "--texts", "glimmerfox"], "needs a causal language model"),
    (["--objective", "diffusion", "--model", "whisper-tiny-en", "--images", "IMG"], "needs a diffusers pipeline folder"),
])
def test_unsupported_model_objective_pair_is_one_line(argv, expected, tmp_path, capsys):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "img" / "a.png")
    argv = [a.replace("IMG", str(tmp_path / "img")) for a in argv]
    out = tmp_path / "out"
    code = main(["train", *argv, "--placeholder", "<glimmerfox>", "--init-word", "fox", "--steps", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


@torch.no_grad()
def test_whisper_lm_loss_equals_the_models_own_loss(whisper):
    """The objective's loss (head on the scored positions only) is the CE of the full
    WhisperForConditionalGeneration forward on the silent audio, with the other labels -100."""
    import torch.nn.functional as F

    from geomkit.train import TrainConfig, objectives
    from geomkit.train.config import check
    from geomkit.train.params import add_placeholder, build_slot

    cfg = check(TrainConfig(model="whisper-tiny-en", texts="glimmerfox", placeholder="<glimmerfox>", init_word="fox",
                            batch_size=2, max_length=24, out="unused", progress=False))
    obj = objectives.build(cfg, "lm", objectives.check_inputs(cfg, "lm"), torch.device("cpu"))
    slot = build_slot(obj.encoders[0], cfg, add_placeholder(obj.encoders[0], "<glimmerfox>", 1))
    obj.setup([slot])
    vec = whisper.embedding_table()[whisper.token_id("wolf")][None].clone()
    ours = float(obj.loss([vec], [slot], 3))
    ids, mask, rows, pos, tgt = obj.batch(3)
    labels = torch.full_like(ids, -100)
    labels[rows, pos] = tgt  # Whisper's own loss does not shift: label t is the target of logit t
    cfgm = whisper.model.config
    states = whisper.model.model.encoder(torch.zeros(1, cfgm.num_mel_bins, 2 * cfgm.max_source_positions)).last_hidden_state
    with inject(obj.enc, vec, token_ids=slot.token_ids):
        logits = whisper.model(encoder_outputs=(states.repeat(ids.shape[0], 1, 1),), decoder_input_ids=ids,
                               decoder_attention_mask=mask, use_cache=False).logits
    theirs = float(F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100))
    assert ours == pytest.approx(theirs, rel=1e-4)
