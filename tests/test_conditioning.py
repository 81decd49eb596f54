"""The trainer conditions the denoiser exactly as inference will (`geomkit.train.conditioning`).

Compared with each pipeline's own `encode_prompt` after the token is loaded the way users load
it (SD: `load_textual_inversion`; SDXL: one call per encoder; SANA, which has no loader: the row
added to the Gemma table by hand). Both CLIP config styles are covered: `eos_token_id: 2` (the
released SD/SDXL configs, which pool at the argmax of the ids, i.e. at the new token) and 49407
(pooling at the first EOS). Also SDXL's per-example micro-conditioning and --crop random."""

from __future__ import annotations

import pytest
import torch

from geomkit.embeddings_io import save_learned, save_sdxl_pair
from geomkit.train import conditioning

from helpers import random_images

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "<cat-toy>"
PROMPTS = ["a photo of a <cat-toy>", "a <cat-toy> on the beach, detailed", "<cat-toy>"]


def _rows(n, d, seed, scale=0.4):
    v = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=-1, keepdim=True) * scale


@pytest.mark.parametrize("kind", ["sd", "sd-eos49407"])
@pytest.mark.parametrize("n", [1, 2])
def test_sd_conditioning_equals_encode_prompt(tiny_dir, tmp_path, kind, n):
    from diffusers import StableDiffusionPipeline

    folder = tiny_dir(kind)
    rows = _rows(n, 32, 0)
    path = save_learned(tmp_path / "tok.safetensors", TOKEN, rows)
    ours = conditioning(str(folder), PROMPTS, str(path))
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(path))
    theirs = pipe.encode_prompt(PROMPTS, "cpu", 1, False)[0]
    assert set(ours) == {"prompt_embeds"}
    torch.testing.assert_close(ours["prompt_embeds"], theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["sdxl", "sdxl-eos49407"])
@pytest.mark.parametrize("n", [1, 2])
def test_sdxl_conditioning_and_pooled_equal_encode_prompt(tiny_dir, tmp_path, kind, n):
    from diffusers import StableDiffusionXLPipeline

    folder = tiny_dir(kind)
    l, g = _rows(n, 32, 1), _rows(n, 48, 2, scale=0.6)
    path = save_sdxl_pair(tmp_path / "tok_sdxl.safetensors", l, g)
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    pipe.load_textual_inversion(l, token=TOKEN, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(g, token=TOKEN, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    ours = _sdxl_conditioning(folder, path, tmp_path)
    torch.testing.assert_close(ours["prompt_embeds"], embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["pooled_prompt_embeds"], pooled, rtol=1e-5, atol=1e-5)


def _sdxl_conditioning(folder, pair_path, tmp_path):
    """conditioning() for a clip_l/clip_g file, the token named <cat-toy> (the file's stem names it)."""
    import shutil

    named = tmp_path / f"{TOKEN}.safetensors"
    shutil.copy(pair_path, named)
    return conditioning(str(folder), PROMPTS, str(named))


def test_sana_conditioning_equals_encode_prompt(tiny_dir, tmp_path):
    from diffusers import SanaPipeline
    from transformers import AddedToken

    folder = tiny_dir("sana")
    token = "<cat-toy>"
    rows = _rows(1, 16, 4, scale=1.0)
    path = save_learned(tmp_path / "tok.safetensors", token, rows)
    ours = conditioning(str(folder), PROMPTS, str(path))
    pipe = SanaPipeline.from_pretrained(folder)
    pipe.tokenizer.add_tokens([AddedToken(token, lstrip=True, rstrip=False, normalized=False)])
    tid = pipe.tokenizer.convert_tokens_to_ids(token)
    pipe.text_encoder.resize_token_embeddings(tid + 1)
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[tid] = rows[0]
    import inspect

    chi = inspect.signature(SanaPipeline.__call__).parameters["complex_human_instruction"].default
    assert chi  # what pipe(prompt) passes to encode_prompt at inference
    embeds, mask, _, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False, device="cpu",
                                            complex_human_instruction=chi)
    assert set(ours) == {"prompt_embeds", "prompt_attention_mask"}
    torch.testing.assert_close(ours["prompt_embeds"], embeds, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours["prompt_attention_mask"], mask)


def test_conditioning_refuses_a_token_for_another_pipeline(tiny_dir, tmp_path):
    from geomkit.errors import GeomkitError

    path = save_learned(tmp_path / "tok.safetensors", TOKEN, _rows(1, 48, 0))
    with pytest.raises(GeomkitError, match="does not fit"):
        conditioning(str(tiny_dir("sd")), PROMPTS, str(path))


# ---- SDXL micro-conditioning from the real images ------------------------------------------------
@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("odd"), [(40, 56), (64, 36), (33, 33)])


def _objective(folder, images, **kw):
    from geomkit.train import TrainConfig, objectives
    from geomkit.train.config import check
    from geomkit.train.params import add_placeholder, build_slot

    cfg = check(TrainConfig(method="dti", model=str(folder), images=str(images), placeholder=TOKEN, init_word="toy",
                            resolution=32, batch_size=3, progress=False, **kw))
    obj = objectives.build(cfg, "diffusion", objectives.check_inputs(cfg, "diffusion"), torch.device("cpu"))
    slots = [build_slot(enc, cfg, add_placeholder(enc, TOKEN, 1)) for enc in obj.encoders]
    obj.setup(slots)
    return obj, slots


def test_sdxl_time_ids_come_from_each_image_and_its_crop(tiny_dir, odd_images):
    from PIL import Image

    obj, slots = _objective(tiny_dir("sdxl"), odd_images, flip_p=0.0)
    sizes = {}
    for f in obj.files:
        with Image.open(f) as im:
            sizes[f.name] = (im.height, im.width)
    seen = set()
    for step in range(1, 5):
        part = obj.draw(step)
        ids = obj.time_ids(part["crops"])
        for row in ids.tolist():
            h, w, top, left, th, tw = row
            assert (th, tw) == (32.0, 32.0)
            assert (int(h), int(w)) in sizes.values()
            # centre crop of the image resized to a shorter side of 32
            rh, rw = (32, round(w * 32 / h)) if h <= w else (round(h * 32 / w), 32)
            assert (top, left) == (round((rh - 32) / 2), round((rw - 32) / 2))
            seen.add((int(h), int(w)))
    assert len(seen) == 3  # one per image: not one constant
    cond, added = obj.condition([ids_[part["which"]] for ids_ in obj.template_ids], [s.vectors() for s in slots], slots,
                                part["crops"])
    # the order diffusers' SDXL pipeline itself builds: original_size + crops_coords_top_left + target_size
    h, w, top, left = (int(x) for x in part["crops"][0].tolist())
    want = obj.pipeline()._get_add_time_ids((h, w), (top, left), (32, 32), dtype=torch.float32,
                                            text_encoder_projection_dim=int(obj.encoders[1].model.config.projection_dim))
    assert torch.equal(added["time_ids"][0], want[0])


def test_random_crops_vary_per_step_and_are_reproducible(tiny_dir, odd_images):
    obj, _ = _objective(tiny_dir("sdxl"), odd_images, crop="random", flip_p=0.5)
    a = [obj.draw(s)["crops"] for s in (1, 2, 3, 4)]
    b = [obj.draw(s)["crops"] for s in (1, 2, 3, 4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # a pure function of (seed, step, rank)
    offsets = {tuple(r[2:].tolist()) for x in a for r in x}
    assert len(offsets) > 2  # different crops, not the centre each time
    assert obj.latents.cached_rows == 0 and obj.vae.encoder is not None  # the encoder stays: crops are encoded per step
    centre, _ = _objective(tiny_dir("sdxl"), odd_images, crop="center", flip_p=0.5)
    # the other random draws are the same as under --crop center
    for s in (1, 2):
        x, y = obj.draw(s), centre.draw(s)
        assert torch.equal(x["t"], y["t"]) and torch.equal(x["which"], y["which"])
