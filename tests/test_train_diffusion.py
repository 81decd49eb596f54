"""The trainer on tiny random SD and SDXL pipelines built from configs (`--objective diffusion`):
invariants, the ecosystem formats (diffusers `load_textual_inversion`, SDXL clip_l/clip_g),
conditioning identical to the pipelines' own `encode_prompt`, cached latents, resume, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from geomkit.errors import GeomkitError
from geomkit.train import TrainConfig, train

from helpers import random_images

TOKEN = "<cat-toy>"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = random_images(tmp_path_factory.mktemp("images"), [(40, 48), (36, 36), (32, 50)],
                           suffixes=(".png", ".jpg", ".webp"))
    (folder / "notes.txt").write_text("not an image")
    return folder


def run(pipe_dir, images, out, **kw):
    args = dict(model=str(pipe_dir), images=str(images), placeholder=TOKEN, init_word="toy", steps=3, batch_size=2,
                resolution=32, out=str(out), progress=False)
    args.update(kw)
    return train(TrainConfig(**args))


def log_of(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_sd_dti_norm_and_diffusers_loads_the_file(tiny_dir, images, tmp_path):
    from diffusers import StableDiffusionPipeline

    sd = tiny_dir("sd")
    res = run(sd, images, tmp_path, method="dti", lr=0.05)
    assert res["objective"] == "diffusion"
    m = res["m_star"][0]
    assert all(ln["norm"] == pytest.approx(m, rel=1e-6) for ln in log_of(tmp_path))
    e = load_file(str(tmp_path / "learned_embeds.safetensors"))[TOKEN]
    assert e.shape == (1, 32) and e.dtype == torch.float32

    pipe = StableDiffusionPipeline.from_pretrained(sd, safety_checker=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(tmp_path))  # the folder: diffusers finds learned_embeds.safetensors
    tid = pipe.tokenizer.convert_tokens_to_ids(TOKEN)
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[tid].detach(), e[0])

    # the trainer's conditioning (learned row injected) equals the pipeline's with the row loaded
    from geomkit.train import objectives
    from geomkit.train.config import check
    from geomkit.train.params import add_placeholder, build_slot

    cfg = check(TrainConfig(method="dti", model=str(sd), images=str(images), placeholder=TOKEN, init_word="toy",
                            resolution=32, progress=False))
    obj = objectives.build(cfg, "diffusion", objectives.check_inputs(cfg, "diffusion"), torch.device("cpu"))
    slot = build_slot(obj.encoders[0], cfg, add_placeholder(obj.encoders[0], TOKEN, 1))
    obj.setup([slot])
    ours, added = obj.condition([obj.template_ids[0][:3]], [e], [slot])
    theirs = pipe.encode_prompt(obj.prompts[:3], "cpu", 1, False)[0]
    assert added is None
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_sdxl_two_encoders_formats_and_conditioning(tiny_dir, images, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    sdxl = tiny_dir("sdxl")
    res = run(sdxl, images, tmp_path, method="dti", num_vectors=2, lr=0.05, steps=2)
    m1, m2 = res["m_star"]
    assert m1 != pytest.approx(m2, rel=1e-3)  # each encoder's own vocabulary
    for ln in log_of(tmp_path):
        assert ln["norm"] == pytest.approx(m1, rel=1e-6) and ln["norm_2"] == pytest.approx(m2, rel=1e-6)
    e1 = load_file(str(tmp_path / "learned_embeds.safetensors"))[TOKEN]
    e2 = load_file(str(tmp_path / "learned_embeds_2.safetensors"))[TOKEN]
    pair = load_file(str(tmp_path / "cat-toy.safetensors"))  # named after the token, as A1111/ComfyUI expect
    from geomkit.embeddings_io import read_embedding

    assert read_embedding(tmp_path / "cat-toy.safetensors").name == TOKEN  # the token travels in the metadata
    assert set(pair) == {"clip_l", "clip_g"} and e1.shape == (2, 32) and e2.shape == (2, 48)
    assert torch.equal(pair["clip_l"], e1) and torch.equal(pair["clip_g"], e2)
    assert torch.allclose(e2.double().norm(dim=-1), torch.full((2,), m2, dtype=torch.float64), rtol=1e-6)

    # the documented two-call way
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl)
    pipe.load_textual_inversion(pair["clip_l"], token=TOKEN, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(pair["clip_g"], token=TOKEN, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    for tok, te, rows in ((pipe.tokenizer, pipe.text_encoder, e1), (pipe.tokenizer_2, pipe.text_encoder_2, e2)):
        ids = tok.convert_tokens_to_ids([TOKEN, f"{TOKEN}_1"])
        assert torch.equal(te.get_input_embeddings().weight[ids].detach(), rows)

    # hidden_states[-2] of both encoders, pooled output of encoder 2, time ids: as encode_prompt
    from geomkit.train import objectives
    from geomkit.train.config import check
    from geomkit.train.params import add_placeholder, build_slot

    cfg = check(TrainConfig(method="dti", model=str(sdxl), images=str(images), placeholder=TOKEN, init_word="toy",
                            num_vectors=2, resolution=32, progress=False))
    obj = objectives.build(cfg, "diffusion", objectives.check_inputs(cfg, "diffusion"), torch.device("cpu"))
    slots = [build_slot(enc, cfg, add_placeholder(enc, TOKEN, 2)) for enc in obj.encoders]
    obj.setup(slots)
    ours, added = obj.condition([ids[:2] for ids in obj.template_ids], [e1, e2], slots)
    prompts = [t.format(TOKEN) for t in obj.templates[:2]]  # the pipeline expands <cat-toy> itself
    embeds, _, pooled, _ = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=False)
    assert torch.allclose(ours, embeds, atol=1e-5)
    assert torch.allclose(added["text_embeds"], pooled, atol=1e-5)
    assert added["time_ids"].tolist() == [[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]] * 2


def test_latents_are_encoded_once(tiny_dir, images, tmp_path, monkeypatch):
    from diffusers import AutoencoderKL

    calls = []
    real = AutoencoderKL.encode

    def counting(self, x, *a, **k):
        calls.append(x.shape[0])
        return real(self, x, *a, **k)

    monkeypatch.setattr(AutoencoderKL, "encode", counting)
    run(tiny_dir("sd"), images, tmp_path / "a", method="ti", steps=2)
    first = list(calls)
    run(tiny_dir("sd"), images, tmp_path / "b", method="ti", steps=6)
    assert sum(first) == 6  # 3 images and their mirror images, once
    assert calls[len(first):] == first  # more steps, no more encoding


@pytest.mark.parametrize("method", ["dti", "ti"])
def test_sd_resume_equals_uninterrupted(tiny_dir, images, tmp_path, method):
    sd = tiny_dir("sd")
    run(sd, images, tmp_path / "a", method=method, steps=4, lr=0.05)
    run(sd, images, tmp_path / "b", method=method, steps=2, save_every=2, lr=0.05)
    run(sd, images, tmp_path / "b", method=method, steps=4, save_every=2, lr=0.05, resume="latest")
    a = load_file(str(tmp_path / "a" / "learned_embeds.safetensors"))[TOKEN]
    b = load_file(str(tmp_path / "b" / "learned_embeds.safetensors"))[TOKEN]
    assert torch.equal(a, b)


def test_sdxl_resume_equals_uninterrupted(tiny_dir, images, tmp_path):
    sdxl = tiny_dir("sdxl")
    run(sdxl, images, tmp_path / "a", method="dti", steps=3)
    run(sdxl, images, tmp_path / "b", method="dti", steps=1, save_every=1)
    run(sdxl, images, tmp_path / "b", method="dti", steps=3, save_every=1, resume="latest")
    for name in ("learned_embeds.safetensors", "learned_embeds_2.safetensors"):
        assert torch.equal(load_file(str(tmp_path / "a" / name))[TOKEN], load_file(str(tmp_path / "b" / name))[TOKEN])


def test_ti_changes_only_new_rows_of_the_pipeline(tiny_dir, images, tmp_path):
    from geomkit.models import load_encoder

    enc = load_encoder(str(tiny_dir("sd")))
    before = enc.embedding_table().clone()
    run(tiny_dir("sd"), images, tmp_path, method="ti", steps=2, lr=0.05)
    assert torch.equal(enc.embedding_table(), before)
    assert enc.vocab_size == 49408  # never resized


def test_validation_images(tiny_dir, images, tmp_path):
    from PIL import Image

    run(tiny_dir("sd"), images, tmp_path, method="dti", steps=2, validation_prompts=[f"a photo of {TOKEN}"],
        validation_steps=1, validation_inference_steps=2)
    files = sorted(p.name for p in (tmp_path / "validation").glob("*.png"))
    assert files == ["step-000001-p0-0.png", "step-000002-p0-0.png"]
    assert Image.open(tmp_path / "validation" / files[0]).size == (32, 32)


def test_style_templates_and_v_prediction(tiny_dir, images, tmp_path):
    import shutil

    sd2 = tmp_path / "sd-v"
    shutil.copytree(tiny_dir("sd"), sd2)
    sched = sd2 / "scheduler" / "scheduler_config.json"
    sched.write_text(json.dumps(dict(json.loads(sched.read_text()), prediction_type="v_prediction")))  # as SD 2.x
    res = run(sd2, images, tmp_path / "o", method="dti-adamw", templates="style", steps=2)
    assert res["final_norm"][0] == pytest.approx(res["m_star"][0], rel=1e-6)
    cfg = json.loads((tmp_path / "o" / "config.json").read_text())
    assert cfg["objective"]["templates"] == 19 and cfg["objective"]["prediction_type"] == "v_prediction"


def test_empty_and_broken_image_folders(capsys, tiny_dir, tmp_path):
    from geomkit.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    base = ["train", "--model", str(tiny_dir("sd")), "--placeholder", TOKEN, "--init-word", "toy", "--quiet"]
    assert main(base + ["--images", str(empty), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err
    assert "no images in it" in err and str(empty) in err and "Traceback" not in err

    broken = tmp_path / "broken"
    broken.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(broken / "ok.png")
    (broken / "bad.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    assert main(base + ["--images", str(broken), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "cannot read" in err and str(broken / "bad.jpg") in err and len(err.strip().splitlines()) == 1


def test_lm_objective_refuses_a_pipeline_and_diffusion_needs_images(tiny_dir, tmp_path):
    with pytest.raises(GeomkitError, match="--images DIR"):
        train(TrainConfig(model=str(tiny_dir("sd")), placeholder=TOKEN, init_word="toy", out=str(tmp_path), progress=False))


@pytest.fixture(scope="module")
def sana_dir(tmp_path_factory):
    from geomkit import tiny

    return tiny.save_sana_pipeline(tmp_path_factory.mktemp("tiny-sana") / "sana")


def test_sana_flow_matching_conditioning_and_resume(sana_dir, images, tmp_path):
    from diffusers import SanaPipeline

    res = run(sana_dir, images, tmp_path / "a", method="dti", steps=3, lr=0.05, resolution=None)
    assert res["final_norm"][0] == pytest.approx(res["m_star"][0], rel=1e-6)
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["objective"]["prediction_type"] == "flow_matching" and cfg["objective"]["complex_human_instruction"]
    run(sana_dir, images, tmp_path / "b", method="dti", steps=2, save_every=2, lr=0.05, resolution=None)
    run(sana_dir, images, tmp_path / "b", method="dti", steps=3, save_every=2, lr=0.05, resolution=None, resume="latest")
    e = load_file(str(tmp_path / "a" / "learned_embeds.safetensors"))[TOKEN]
    assert torch.equal(e, load_file(str(tmp_path / "b" / "learned_embeds.safetensors"))[TOKEN])

    # the trainer's conditioning equals the pipeline's with the row written into a resized table
    from geomkit.train import objectives
    from geomkit.train.config import check
    from geomkit.train.params import add_placeholder, build_slot

    c = check(TrainConfig(method="dti", model=str(sana_dir), images=str(images), placeholder=TOKEN, init_word="toy",
                          progress=False))
    obj = objectives.build(c, "diffusion", objectives.check_inputs(c, "diffusion"), torch.device("cpu"))
    slot = build_slot(obj.encoders[0], c, add_placeholder(obj.encoders[0], TOKEN, 1))
    obj.setup([slot])
    ours, mask = obj.condition(obj.prompts[:2], [e], [slot])
    pipe = SanaPipeline.from_pretrained(sana_dir)
    pipe.tokenizer.add_tokens([TOKEN])
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    with torch.no_grad():
        pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(TOKEN)] = e[0]
    theirs, their_mask, _, _ = pipe.encode_prompt(obj.prompts[:2], do_classifier_free_guidance=False, device="cpu",
                                                  complex_human_instruction=obj.chi)
    assert torch.equal(mask, their_mask)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_sana_needs_a_lower_case_placeholder(sana_dir, images, tmp_path):
    with pytest.raises(GeomkitError, match="lower-case"):
        run(sana_dir, images, tmp_path, method="dti", placeholder="<Cat-Toy>", resolution=None)
