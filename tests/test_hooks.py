"""The hooking layer on tiny random CLIP (SD and SDXL folder layouts), Gemma 3 and BERT models."""

import pytest
import torch

from geomkit.hooks import capture, inject, run_with_cache

KINDS = [("clip", 1), ("sd", 1), ("sdxl", 1), ("sdxl", 2), ("gemma3", 1), ("bert", 1)]
PROMPTS = ["a photo of a cat on a red sofa", "an apple"]


def _count_hooks(model):
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(getattr(m, "_forward_hooks_with_kwargs", {}))
        for m in model.modules()
    )


@pytest.mark.parametrize("kind,which", KINDS)
def test_captured_sites_equal_model_hidden_states(tiny_encoder, kind, which):
    enc = tiny_encoder(kind, which)
    batch = enc.encode(PROMPTS)
    out, cache = run_with_cache(enc, batch["input_ids"], batch["attention_mask"], sites=enc.sites())
    ref = enc.forward(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
    hs = ref.hidden_states
    # hidden_states[0] is what enters block 0 (for Gemma: after the sqrt(d) scale), [i+1] leaves block i
    for i in range(enc.n_blocks):
        torch.testing.assert_close(cache[f"blocks.{i}.resid_pre"], hs[i], rtol=0, atol=0)
        if i + 1 < enc.n_blocks or kind != "gemma3":
            torch.testing.assert_close(cache[f"blocks.{i}.resid_post"], hs[i + 1], rtol=0, atol=0)
    if "final_norm" in cache and kind != "bert":
        torch.testing.assert_close(cache["final_norm"], ref.last_hidden_state, rtol=0, atol=0)
    if kind in ("clip", "sd", "sdxl"):
        # CLIP: block 0's input is token + position embedding, and ln1 is LayerNorm of it
        torch.testing.assert_close(cache["blocks.0.resid_pre"], cache["embed"] + cache["pos_embed"])
        ln = enc.blocks[0].layer_norm1
        torch.testing.assert_close(cache["blocks.0.ln1"], ln(cache["blocks.0.resid_pre"]))
    if kind == "bert":
        torch.testing.assert_close(cache["embed_norm"], hs[0], rtol=0, atol=0)
    if kind == "gemma3":
        # Gemma 3 multiplies by sqrt(d) inside its embedding module: the embed site carries it
        raw = enc.embedding_table()[batch["input_ids"]]
        torch.testing.assert_close(cache["embed"], raw * enc.embed_scale)
        assert enc.embed_scale == pytest.approx(enc.d_model**0.5, rel=1e-3)


def test_hooks_removed_on_exit_and_on_exception(tiny_encoder):
    enc = tiny_encoder("clip")
    before = _count_hooks(enc.model)
    batch = enc.encode(PROMPTS)
    with capture(enc, enc.sites()):
        assert _count_hooks(enc.model) > before
        enc.forward(batch["input_ids"])
    assert _count_hooks(enc.model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with capture(enc, enc.sites()), inject(enc, torch.zeros(1, enc.d_model), token_ids=[320]):
            enc.forward(batch["input_ids"])
            raise RuntimeError("boom")
    assert _count_hooks(enc.model) == before
    # and an exception inside the forward itself
    with pytest.raises(Exception):  # noqa: B017 (whatever the model raises, the hooks must go)
        with capture(enc, ["blocks.0.resid_post"]):
            enc.forward(torch.full((1, 3), 10**9))
    assert _count_hooks(enc.model) == before


@pytest.mark.parametrize("kind,which", [("sd", 1), ("sdxl", 2), ("gemma3", 1), ("bert", 1)])
def test_injected_vectors_get_gradients_and_nothing_else(tiny_encoder, kind, which):
    enc = tiny_encoder(kind, which)
    new_id = enc.vocab_size + 3  # beyond the table, like a freshly added placeholder token
    batch = enc.encode(["a photo of a cat", "a cat"])
    ids = batch["input_ids"].clone()
    ids[:, 1] = new_id
    vec = torch.randn(1, enc.d_model, requires_grad=True)
    for p in enc.model.parameters():
        p.requires_grad_(True)
        p.grad = None
    try:
        with inject(enc, vec, token_ids=[new_id]), capture(enc, ["embed"], detach=False) as cache:
            out = enc.forward(ids, batch["attention_mask"])
            hidden = out.last_hidden_state
            hidden.pow(2).sum().backward()
        assert vec.grad is not None and vec.grad.abs().sum() > 0
        table = enc.embedding_module().weight
        assert table.grad is None or table.grad.abs().sum() == 0
        # the injected rows are exactly the vector (times the model's own embedding scale)
        torch.testing.assert_close(cache["embed"][:, 1], (vec * enc.embed_scale).expand(2, -1))
        other = {n: p.grad for n, p in enc.model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        # with the model trainable, weights downstream do get gradients; the table never does
        assert not any("embed_tokens" in n or "token_embedding" in n or "word_embeddings" in n for n in other)
    finally:
        enc.model.requires_grad_(False)
        enc.model.zero_grad(set_to_none=True)


def test_inject_with_frozen_model_only_vector_has_grad(tiny_encoder):
    enc = tiny_encoder("sd")
    vec = torch.randn(1, enc.d_model, requires_grad=True)
    new_id = 49410
    ids = enc.encode(["a photo of a dog"])["input_ids"]
    ids[0, 4] = new_id
    with inject(enc, vec, token_ids=[new_id]):
        enc.forward(ids).last_hidden_state.sum().backward()
    assert vec.grad is not None
    assert all(p.grad is None for p in enc.model.parameters())


@pytest.mark.parametrize("kind", ["sdxl", "sdxl-eos49407"])
def test_clip_pools_where_the_model_with_the_token_added_pools(tiny_encoder, kind):
    """An injected new id (beyond the table) gives exactly the outputs, pooled one included, of the
    same model with that row really added to its table, as `load_textual_inversion` does at
    inference. Under `eos_token_id: 2` (the released configs) CLIP pools at the argmax of the
    ids, i.e. at the new token; under 49407 at the first EOS: both must agree."""
    import copy

    enc = tiny_encoder(kind, 2)
    ids = enc.encode(["a photo of a dog"])["input_ids"]
    new_id = enc.vocab_size  # the id the tokenizer gives the first added token
    placeholder_ids = ids.clone()
    placeholder_ids[0, 4] = new_id
    row = torch.randn(1, enc.d_model, generator=torch.Generator().manual_seed(3)) * 0.4
    with inject(enc, row, token_ids=[new_id]):
        a = enc.forward(placeholder_ids)
    grown = copy.deepcopy(enc.model)
    grown.resize_token_embeddings(new_id + 1)
    with torch.no_grad():
        grown.get_input_embeddings().weight[new_id] = row[0]
    b = grown(input_ids=placeholder_ids)
    torch.testing.assert_close(a.text_embeds, b.text_embeds)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state)
    # and where it pools differs between the two config styles
    h = a.last_hidden_state[0]
    pooled_at = 4 if kind == "sdxl" else int((ids[0] == 49407).nonzero()[0])
    torch.testing.assert_close(grown.text_projection(h[pooled_at]), a.text_embeds[0])  # last_hidden_state is after the final LN


@pytest.mark.parametrize("kind,which", [("sd", 1), ("gemma3", 1)])
def test_inject_on_a_forward_without_the_token_changes_nothing(tiny_encoder, kind, which):
    """No placeholder in the batch: the output equals a plain forward's (inject no longer checks
    `hit.any()`, a device sync on GPUs, and relies on torch.where instead)."""
    enc = tiny_encoder(kind, which)
    ids = enc.encode(PROMPTS)["input_ids"]
    vec = torch.randn(1, enc.d_model, requires_grad=True)
    with inject(enc, vec, token_ids=[enc.embedding_table().shape[0] + 5]):
        a = enc.forward(ids).last_hidden_state
    torch.testing.assert_close(a, enc.forward(ids).last_hidden_state, rtol=0, atol=0)
    a.sum().backward()
    assert vec.grad is None or not vec.grad.any()


def test_inject_by_mask_scales_one_position(tiny_encoder):
    enc = tiny_encoder("clip")
    batch = enc.encode(["a photo of a cat"])
    ids = batch["input_ids"]
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, 3] = True
    scaled = enc.embedding_table()[ids[0, 3]] * 8
    with inject(enc, scaled[None], mask=mask), capture(enc, ["embed"]) as cache:
        enc.forward(ids)
    torch.testing.assert_close(cache["embed"][0, 3], scaled)
    torch.testing.assert_close(cache["embed"][0, 2], enc.embedding_table()[ids[0, 2]])


def test_unknown_site_is_one_line_error(tiny_encoder):
    from geomkit.errors import GeomkitError

    enc = tiny_encoder("bert")
    with pytest.raises(GeomkitError, match="blocks"):
        with capture(enc, ["blocks.99.resid_post"]):
            pass
    with pytest.raises(GeomkitError, match="final_norm"):
        with capture(enc, ["final_norm"]):
            pass


def test_inject_own_row_is_exact_in_bf16_gemma(tiny_dir):
    """Gemma multiplies by sqrt(d) in the model's dtype; an injected copy of a row must match it exactly."""
    from geomkit.models import load_encoder

    enc = load_encoder(str(tiny_dir("gemma3")), dtype=torch.bfloat16)
    ids = enc.encode(["a photo of a dog"])["input_ids"]
    tid = int(ids[0, 3])
    with capture(enc, ["embed"]) as plain:
        enc.forward(ids)
    with inject(enc, enc.embedding_table()[tid][None], token_ids=[tid]), capture(enc, ["embed"]) as injected:
        enc.forward(ids)
    assert torch.equal(plain["embed"], injected["embed"])
