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
    (odd / "config.json").write_text(json.dumps({"model_type": "t5"}))
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
