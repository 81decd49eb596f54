"""Model-spec resolution: aliases, pipeline and model folders, and one-line errors."""

import json

import pytest

from geomkit.errors import GeomkitError
from geomkit.models import load_encoder, readable_token, resolve_spec


def test_sd_and_sdxl_folders_resolve_to_their_encoders(tiny_dir):
    sd = load_encoder(str(tiny_dir("sd")))
    assert sd.family.name == "clip-text" and sd.subfolder == "text_encoder" and sd.d_model == 32
    one = load_encoder(str(tiny_dir("sdxl")), encoder=1)
    two = load_encoder(str(tiny_dir("sdxl")), encoder=2)
    assert (one.d_model, two.d_model) == (32, 48)
    assert type(two.model).__name__ == "CLIPTextModelWithProjection"
    assert two.pipeline_dir == str(tiny_dir("sdxl"))


def test_same_spec_loads_once(tiny_dir):
    assert load_encoder(str(tiny_dir("bert"))) is load_encoder(str(tiny_dir("bert")))


def test_errors_are_one_line(tmp_path, tiny_dir):
    cases = {
        "no-such-model": "unknown model",
        str(tmp_path / "missing"): "folder not found",
        "someorg/not-cached-model": "local Hugging Face cache",
    }
    for spec, text in cases.items():
        with pytest.raises(GeomkitError, match=text) as err:
            resolve_spec(spec)
        assert "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeomkitError, match="neither model_index.json"):
        load_encoder(str(tmp_path / "empty"))
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(GeomkitError, match="not supported"):
        load_encoder(str(odd))
    with pytest.raises(GeomkitError, match="text_encoder_2"):
        load_encoder(str(tiny_dir("sd")), encoder=2)


def test_word_split_into_pieces_lists_them(tiny_encoder):
    enc = tiny_encoder("clip")
    assert enc.token_str(enc.token_id("apple")) == "apple</w>"
    with pytest.raises(GeomkitError, match="splits into") as err:
        enc.token_id("photosynthesizingly")
    assert "'" in str(err.value)


def test_readable_token_marks_invisible_characters():
    assert readable_token("\u2069") == "U+2069"
    assert readable_token("ab c") == "ab c"


def test_sana_style_pipeline_with_gemma2_text_encoder(tmp_path):
    """SANA folders hold a Gemma 2 text encoder under text_encoder/."""
    import torch
    from transformers import Gemma2Config, Gemma2Model

    from geomkit.hooks import run_with_cache
    from geomkit.tiny import minilm_tokenizer

    tok = minilm_tokenizer()
    torch.manual_seed(0)
    cfg = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=8, vocab_size=len(tok), pad_token_id=0)
    Gemma2Model(cfg).save_pretrained(tmp_path / "text_encoder")
    tok.save_pretrained(tmp_path / "tokenizer")
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "SanaPipeline",
        "text_encoder": ["transformers", "Gemma2Model"], "tokenizer": ["transformers", "BertTokenizerFast"]}))
    enc = load_encoder(str(tmp_path))
    assert enc.family.name == "gemma" and enc.subfolder == "text_encoder"
    batch = enc.encode(["a photo of a dog"])
    out, cache = run_with_cache(enc, batch["input_ids"], sites=["embed", "blocks.0.resid_pre", "blocks.1.resid_post"])
    hs = enc.forward(batch["input_ids"], output_hidden_states=True).hidden_states
    torch.testing.assert_close(cache["blocks.0.resid_pre"], hs[0], rtol=0, atol=0)
    # wherever the model applies its sqrt(d) factor, block 0 receives the raw row times sqrt(d)
    raw = enc.embedding_table()[batch["input_ids"]]
    torch.testing.assert_close(cache["blocks.0.resid_pre"], raw * 32**0.5, rtol=1e-3, atol=1e-5)
