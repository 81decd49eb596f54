"""The trainer on the real Gemma 3 270M (Q4_K_M weights, de-quantised): a few steps of TI and DTI
on the shipped concept corpus. Numbers here are properties (norms, a falling loss), not findings."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from geomkit.train import TrainConfig, train

pytestmark = pytest.mark.real
TOKEN = "<glimmerfox>"


def config(out, **kw):
    args = dict(model="gemma3-270m", texts="glimmerfox", placeholder=TOKEN, init_word="fox", batch_size=2,
                max_length=24, out=str(out), progress=False)
    args.update(kw)
    return TrainConfig(**args)


@torch.no_grad()
def held_losses(cfg, candidates, batches=range(101, 104)):
    """Mean loss on fixed batches (steps the run never drew) for each candidate learned row."""
    from geomkit.train import objectives
    from geomkit.train.config import check
    from geomkit.train.params import add_placeholder, build_slot

    cfg = check(cfg)
    obj = objectives.build(cfg, "lm", objectives.check_inputs(cfg, "lm"), torch.device("cpu"))
    slot = build_slot(obj.encoders[0], cfg, add_placeholder(obj.encoders[0], TOKEN, 1))
    obj.setup([slot])
    return [sum(float(obj.loss([rows], [slot], s)) for s in batches) / len(batches) for rows in candidates]


def test_gemma_dti_keeps_m_star_and_learns_ti_moves_the_norm(gemma, tmp_path):
    # DTI: every step at norm m* (Gemma's vocabulary mean, about 1.03), and the token learns
    cfg = config(tmp_path / "dti", method="dti", steps=12, lr=0.04)
    res = train(cfg)
    m = res["m_star"][0]
    norms = gemma.embedding_table().double().norm(dim=1)
    assert m == pytest.approx(float(norms[norms > 0].mean()), rel=1e-9)
    assert 0.9 < m < 1.2
    log = [json.loads(x) for x in (tmp_path / "dti" / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 12 and all(ln["norm"] == pytest.approx(m, rel=1e-6) for ln in log)
    e = load_file(str(tmp_path / "dti" / "learned_embeds.safetensors"))[TOKEN]
    assert e.shape == (1, 640) and float(e.double().norm()) == pytest.approx(m, rel=1e-6)
    fox = gemma.embedding_table()[gemma.token_id("fox")].float()[None]
    learned, start = held_losses(cfg, [e, fox / fox.norm() * m])
    assert learned < start

    # TI, 3 AdamW steps: the norm is free to leave m*; the frozen table is untouched
    before = gemma.embedding_table()[:1000].clone()
    res = train(config(tmp_path / "ti", method="ti", steps=3, lr=0.02))
    assert torch.equal(gemma.embedding_table()[:1000], before)
    assert res["final_norm"][0] != pytest.approx(m, rel=1e-3)
