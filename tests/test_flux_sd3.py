"""T5 encoders, FLUX.1 and SD3.x on tiny random pipelines (locally trained T5 tokenizers): the T5
family's sites, the `--encoder N` numbering, the diagnostics on a T5 vocabulary; the trainer's
conditioning equals the pipelines' `encode_prompt` after the token is loaded per encoder; the
exported files load with diffusers; DTI's norm stays at each encoder's m*; resume is bit-exact;
micro-batches give the same result; bad input is one line, exit 2.

Random weights: every number here checks a mechanism, none is a finding about real T5 models."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from geomkit.train import TrainConfig, objectives, train
from geomkit.train.config import check
from geomkit.train.loop import Session, _Dist

from helpers import assert_one_line_error, random_images, run_cli

TOKEN = "<cat-toy>"
PROMPTS = ["a photo of a <cat-toy>", "a <cat-toy> on a table, a good photo of the dog"]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("flow-images"), [(32, 32), (40, 36), (36, 44)], seed=2)


@pytest.fixture(scope="module")
def models(tiny_dir):
    return {"flux": tiny_dir("flux"), "sd3": tiny_dir("sd3"), "sdxl": tiny_dir("sdxl")}


def config(kind, models, images, out, **kw):
    args = dict(model=str(models[kind]), images=str(images), placeholder=TOKEN, init_word="toy", steps=2, batch_size=2,
                lr=0.05, out=str(out), progress=False, seed=3, resolution=32, method="dti")
    args.update(kw)
    return TrainConfig(**args)


def session(cfg):
    cfg = check(cfg)
    cfg.objective = objectives.detect(cfg)
    torch.manual_seed(cfg.seed)
    return Session(cfg, objectives.check_inputs(cfg, cfg.objective), _Dist("cpu"))


def mean_norm(table):
    """m* computed here from the table (all-zero rows excluded), independently of geomkit.geometry."""
    n = table.detach().double().norm(dim=-1)
    return float(n[n > 0].mean())


# ---- the T5 family, the encoder numbering, the diagnostics ---------------------------------------
def test_t5_sites_are_the_encoders_own_hidden_states(tiny_encoder):
    from geomkit.hooks import run_with_cache

    enc = tiny_encoder("flux", encoder=2)
    assert enc.family.name == "t5-encoder" and enc.family.positions == "relative" and enc.position_table() is None
    sites = enc.sites()
    assert "pos_embed" not in sites and sites[0] == "embed" and sites[-1] == "final_norm"
    ids = enc.encode(["a photo of a dog", "a cat"])
    out = enc.model(ids["input_ids"], attention_mask=ids["attention_mask"], output_hidden_states=True)
    _, cache = run_with_cache(enc, ids["input_ids"], ids["attention_mask"],
                              sites=["embed"] + [f"blocks.{i}.resid_post" for i in range(enc.n_blocks)] + ["final_norm"])
    # transformers' hidden_states: the embedding, then every block's output except the last, which is normed
    assert torch.equal(cache["embed"], enc.model.shared(ids["input_ids"]))
    for i in range(enc.n_blocks - 1):
        assert torch.allclose(cache[f"blocks.{i}.resid_post"], out.hidden_states[i + 1], atol=1e-6)
    assert torch.allclose(cache["final_norm"], out.last_hidden_state, atol=1e-6)
    # blocks.0.ln1 is T5's RMSNorm (no mean subtraction, no bias): x / rms(x) * weight
    _, c2 = run_with_cache(enc, ids["input_ids"], sites=["blocks.0.resid_pre", "blocks.0.ln1"])
    x = c2["blocks.0.resid_pre"]
    ln = enc.blocks[0].layer[0].layer_norm
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + ln.variance_epsilon) * ln.weight
    assert torch.allclose(c2["blocks.0.ln1"], want, atol=1e-5)


def test_encoder_numbering_covers_every_text_encoder(tiny_encoder, models, capsys):
    from geomkit.errors import GeomkitError
    from geomkit.models import load_encoder, load_tokenizers

    assert [tiny_encoder("flux", k).family.name for k in (1, 2)] == ["clip-text", "t5-encoder"]
    sd3 = [tiny_encoder("sd3", k) for k in (1, 2, 3)]
    assert [e.family.name for e in sd3] == ["clip-text", "clip-text", "t5-encoder"]
    assert [e.d_model for e in sd3] == [32, 48, 96]
    assert len(load_tokenizers(str(models["sd3"]))) == 3
    with pytest.raises(GeomkitError, match="has no text_encoder_3"):
        load_encoder(str(models["flux"]), encoder=3)
    code, _, err = run_cli(capsys, "norms", "--model", models["flux"], "--encoder", "3", "--out", "/tmp/never-written")
    assert_one_line_error(code, err, "text_encoder_3")


def test_diagnostics_on_a_t5_vocabulary(tiny_encoder, models, tmp_path, capsys):
    enc = tiny_encoder("sd3", encoder=3)
    table = enc.embedding_table().double()
    code, out, _ = run_cli(capsys, "norms", "--model", models["sd3"], "--encoder", "3", "--out", tmp_path / "n")
    assert code == 0
    res = json.loads((tmp_path / "n" / "results.json").read_text())
    assert res["mean"] == pytest.approx(mean_norm(table), rel=1e-6) and res["count"] == table.shape[0]

    code, out, _ = run_cli(capsys, "neighbors", "dog", "--model", models["sd3"], "--encoder", "3", "-k", "5",
                           "--out", tmp_path / "nb")
    assert code == 0
    res = json.loads((tmp_path / "nb" / "results.json").read_text())
    dog = enc.token_id("dog")
    cos = torch.nn.functional.normalize(table, dim=-1) @ torch.nn.functional.normalize(table[dog], dim=0)
    cos[dog] = -2
    want = [enc.token_str(i) for i in cos.topk(5).indices.tolist()]
    assert [n["token"] for n in res["queries"]["dog"]["cosine"]] == want

    code, out, _ = run_cli(capsys, "attenuation", "--model", models["flux"], "--encoder", "2", "--out", tmp_path / "a")
    assert code == 0 and "relative position buckets" in out
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["applicable"] is False and "relative position buckets" in res["reason"]

    code, out, _ = run_cli(capsys, "probe-position", "--model", models["flux"], "--encoder", "2", "--max-prompts", "30",
                           "--epochs", "2", "--out", tmp_path / "p")
    assert code == 0 and "relative position buckets" in out
    res = json.loads((tmp_path / "p" / "results.json").read_text())
    assert res["site"] == "blocks.1.resid_post" and "no LN(e + p)" in res["site_chosen"] and res["positions"] == "relative"

    code, out, _ = run_cli(capsys, "residual-angles", "--model", models["sd3"], "--encoder", "3", "--max-prompts", "3",
                           "--scales", "1,4", "--out", tmp_path / "r")
    assert code == 0


# ---- conditioning equals the pipelines' encode_prompt ---------------------------------------------
def _rows(dims, seed=0, n=1):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, d, generator=g) for k, d in dims.items()}


def _flux_pipe(folder, parts):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder)
    if "clip_l" in parts:
        pipe.load_textual_inversion(parts["clip_l"], token=TOKEN, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    if "t5" in parts:
        pipe.load_textual_inversion(parts["t5"], token=TOKEN, text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    return pipe


@pytest.mark.parametrize("keys,n", [(("clip_l", "t5"), 1), (("clip_l", "t5"), 2), (("t5",), 1), (("t5",), 2)])
def test_flux_conditioning_equals_encode_prompt(models, tmp_path, keys, n):
    from geomkit.train import conditioning

    parts = {k: v for k, v in _rows({"clip_l": 32, "t5": 64}, n=n).items() if k in keys}
    save_file(parts, str(tmp_path / f"{TOKEN}.safetensors"))  # the file's stem names the token
    got = conditioning(str(models["flux"]), PROMPTS, tmp_path / f"{TOKEN}.safetensors")
    pipe = _flux_pipe(models["flux"], parts)
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, prompt_2=None)  # default max_sequence_length 512
        short, _, _ = pipe.encode_prompt(PROMPTS, prompt_2=None, max_sequence_length=77)
    assert got["prompt_embeds"].shape == embeds.shape == (2, 512, 64)
    assert torch.allclose(got["prompt_embeds"], embeds, atol=1e-5)
    assert torch.allclose(got["pooled_prompt_embeds"], pooled, atol=1e-5)
    assert torch.equal(got["text_ids"], text_ids)
    # no attention mask: the padded length changes every position's output, so it must be inference's
    assert (short[:, :5] - embeds[:, :5]).abs().max() > 1e-4
    # the learned rows matter (not the placeholder's sub-word pieces)
    other = pipe.text_encoder_2(pipe.tokenizer_2(["a photo of a toy"], return_tensors="pt").input_ids)[0]
    assert not torch.allclose(got["prompt_embeds"][0, :6], other[0, :6].expand(6, -1), atol=1e-3)
    if keys == ("t5",):  # CLIP-L read the placeholder as plain text, as the pipeline did
        assert TOKEN not in pipe.tokenizer.get_vocab()


def test_sd3_conditioning_equals_encode_prompt_with_rows_loaded_by_hand(models, tmp_path):
    from diffusers import StableDiffusion3Pipeline

    from geomkit.train import conditioning

    parts = _rows({"clip_l": 32, "clip_g": 48, "t5": 96}, seed=1)
    save_file(parts, str(tmp_path / f"{TOKEN}.safetensors"))
    got = conditioning(str(models["sd3"]), PROMPTS, tmp_path / f"{TOKEN}.safetensors")
    pipe = StableDiffusion3Pipeline.from_pretrained(models["sd3"])
    assert not hasattr(pipe, "load_textual_inversion")  # diffusers' SD3 has no TextualInversionLoaderMixin
    for key, (te, tk) in zip(("clip_l", "clip_g", "t5"), (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"),
                                                         ("text_encoder_3", "tokenizer_3"))):
        enc, tok = getattr(pipe, te), getattr(pipe, tk)
        tok.add_tokens([TOKEN])
        enc.resize_token_embeddings(len(tok))
        with torch.no_grad():
            enc.get_input_embeddings().weight[tok.convert_tokens_to_ids(TOKEN)] = parts[key][0]
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(PROMPTS, PROMPTS, PROMPTS, do_classifier_free_guidance=False)
    assert got["prompt_embeds"].shape == embeds.shape == (2, 77 + 256, 96)
    assert torch.allclose(got["prompt_embeds"], embeds, atol=1e-5)
    assert torch.allclose(got["pooled_prompt_embeds"], pooled, atol=1e-5)


# ---- training -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flux_run(models, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("flux-run") / "run"
    return out, train(config("flux", models, images, out, steps=2))


def test_flux_export_loads_with_diffusers_per_encoder(models, flux_run):
    out, res = flux_run
    state = load_file(str(out / "learned_embeds_flux.safetensors"))
    assert set(state) == {"clip_l", "t5"} and state["clip_l"].shape == (1, 32) and state["t5"].shape == (1, 64)
    for key in ("clip_l", "t5"):  # the per-encoder diffusers files hold the same rows
        one = load_file(str(out / f"learned_embeds_{key}.safetensors"))
        assert list(one) == [TOKEN] and torch.equal(one[TOKEN], state[key])
    pipe = _flux_pipe(models["flux"], state)
    for enc, tok, key in ((pipe.text_encoder, pipe.tokenizer, "clip_l"), (pipe.text_encoder_2, pipe.tokenizer_2, "t5")):
        row = enc.get_input_embeddings().weight[tok.convert_tokens_to_ids(TOKEN)]
        assert torch.equal(row, state[key][0])
    assert res["m_star"][1] == pytest.approx(mean_norm(pipe.text_encoder_2.get_input_embeddings().weight[:-1]), rel=1e-6)


@pytest.mark.parametrize("kind,encoders,labels", [("flux", None, ["clip_l", "t5"]), ("sd3", None, ["clip_l", "clip_g", "t5"]),
                                                   ("flux", "t5", ["t5"])])
def test_dti_norm_is_each_encoders_m_star_at_every_step(kind, encoders, labels, models, images, tmp_path):
    from geomkit.models import load_encoder

    sess = session(config(kind, models, images, tmp_path, encoders=encoders))
    assert sess.obj.encoder_labels == labels and len(sess.slots) == len(labels)
    order = {"flux": ["clip_l", "t5"], "sd3": ["clip_l", "clip_g", "t5"]}[kind]
    want = [mean_norm(load_encoder(str(models[kind]), encoder=order.index(lab) + 1).embedding_table()) for lab in labels]
    assert [s.m_star for s in sess.slots] == pytest.approx(want, rel=1e-6)
    start = [s.vectors().detach().clone() for s in sess.slots]
    for step in range(1, 4):
        sess.step(step)
        for s, m in zip(sess.slots, want):
            assert torch.allclose(s.vectors().detach().double().norm(dim=-1), torch.tensor(m, dtype=torch.float64), rtol=1e-5)
    assert all(not torch.allclose(s.vectors().detach(), a) for s, a in zip(sess.slots, start))  # it moved


def test_t5_only_flux_token_file_and_generate(models, images, tmp_path, capsys):
    out = tmp_path / "run"
    res = train(config("flux", models, images, out, encoders="t5"))
    state = load_file(str(out / "learned_embeds_flux.safetensors"))
    assert list(state) == ["t5"] and len(res["m_star"]) == 1
    code, _, err = run_cli(capsys, "generate", "--run", out, "--model", models["flux"], "--prompt", "a {} on a beach",
                           "--seeds", "0", "--steps", "2", "--resolution", "32", "--out", tmp_path / "g", "--no-progress")
    assert code == 0, err
    import numpy as np
    from PIL import Image

    (img,) = list((tmp_path / "g" / "images").glob("*.png"))
    # the same image from diffusers with the token loaded into T5 only (CLIP-L reads the placeholder as text)
    pipe = _flux_pipe(models["flux"], state)
    want = pipe("a <cat-toy> on a beach", num_inference_steps=2, height=32, width=32, guidance_scale=3.5,
                generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]
    got = np.asarray(Image.open(img)).astype(np.float64) / 255
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_resume_is_bit_exact(kind, models, images, tmp_path):
    stem = f"learned_embeds_{kind}.safetensors"
    train(config(kind, models, images, tmp_path / "a", steps=4, method="ti"))
    train(config(kind, models, images, tmp_path / "b", steps=2, save_every=2, method="ti"))
    train(config(kind, models, images, tmp_path / "b", steps=4, save_every=2, method="ti", resume="latest"))
    a, b = load_file(str(tmp_path / "a" / stem)), load_file(str(tmp_path / "b" / stem))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [json.loads(x)["loss"] for x in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x)["loss"] for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == 4


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_micro_batches_give_the_same_result(kind, models, images, tmp_path):
    def run(**kw):
        sess = session(config(kind, models, images, tmp_path, batch_size=4, **kw))
        for k in (1, 2):
            sess.step(k)
        return [s.param.detach().clone() for s in sess.slots]

    ref, got = run(), run(micro_batch_size=1)
    for a, b in zip(got, ref):
        assert float((a - b).norm() / b.norm()) <= 1e-5


def test_flux_loss_is_the_scripts_flow_matching_loss(models, images, tmp_path):
    """The loss computed here as diffusers' FLUX training script computes it, from the drawn batch."""
    from diffusers import FluxPipeline

    sess = session(config("flux", models, images, tmp_path))
    obj, slots = sess.obj, sess.slots
    part = obj.draw(1)
    vectors = [s.vectors() for s in slots]
    with torch.no_grad():
        loss = obj.loss(vectors, slots, 1, part=part)
        embeds, pooled = obj.condition([ids[part["which"]] for ids in obj.template_ids], vectors, slots)
        x = part["noisy"]
        b, c, h, w = x.shape
        pred = obj.transformer(
            hidden_states=FluxPipeline._pack_latents(x, b, c, h, w), timestep=part["t"] / 1000,
            guidance=torch.tensor([3.5]).expand(b), pooled_projections=pooled, encoder_hidden_states=embeds,
            txt_ids=torch.zeros(512, 3), img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
            return_dict=False)[0]
        pred = FluxPipeline._unpack_latents(pred, h * 2, w * 2, 2)
    assert obj.guidance == 3.5 and embeds.shape[1] == 512
    assert torch.allclose(loss, torch.nn.functional.mse_loss(pred, part["target"]), rtol=1e-6)


# ---- files: convert and inspect ---------------------------------------------------------------------
def test_convert_and_inspect_read_and_write_the_layouts(models, flux_run, tmp_path, capsys):
    out, _ = flux_run
    state = load_file(str(out / "learned_embeds_flux.safetensors"))
    code, _, err = run_cli(capsys, "convert", out / "learned_embeds_clip_l.safetensors", out / "learned_embeds_t5.safetensors",
                           "--to", "flux", "--out", tmp_path / "f.safetensors")
    assert code == 0, err
    back = load_file(str(tmp_path / "f.safetensors"))
    assert set(back) == {"clip_l", "t5"} and all(torch.equal(back[k], state[k]) for k in back)
    code, _, err = run_cli(capsys, "convert", out / "learned_embeds_flux.safetensors", "--to", "diffusers", "--encoder", "2",
                           "--token", TOKEN, "--out", tmp_path / "t5.safetensors")
    assert code == 0, err
    assert torch.equal(load_file(str(tmp_path / "t5.safetensors"))[TOKEN], state["t5"])
    save_file({"t5xxl": state["t5"], "clip_l": state["clip_l"]}, str(tmp_path / "forge.safetensors"))  # Forge's key
    from geomkit.embeddings_io import read_embedding

    ef = read_embedding(tmp_path / "forge.safetensors")
    assert ef.layout == "flux" and list(ef.parts) == ["clip_l", "t5"] and torch.equal(ef.parts["t5"], state["t5"])
    code, _, err = run_cli(capsys, "inspect", out / "learned_embeds_flux.safetensors", "--model", models["flux"],
                           "--no-effects", "--out", tmp_path / "i")
    assert code == 0, err
    rows = json.loads((tmp_path / "i" / "results.json").read_text())["tokens"]
    assert sorted(r["encoder"] for r in rows) == [1, 2]
    t5row = next(r for r in rows if r["encoder"] == 2)
    assert t5row["norm"] == pytest.approx(float(state["t5"].norm()), rel=1e-6)
    # --fix rescale keeps the FLUX layout: each part at its own encoder's m*
    ti = {"clip_l": state["clip_l"] * 3, "t5": state["t5"] * 0.5}
    save_file(ti, str(tmp_path / "ti.safetensors"))
    code, _, err = run_cli(capsys, "inspect", tmp_path / "ti.safetensors", "--model", models["flux"], "--no-effects",
                           "--fix", "rescale", "--out", tmp_path / "i2")
    assert code == 0, err
    fixed = load_file(str(tmp_path / "i2" / "ti-rescaled.safetensors"))
    from geomkit.models import load_encoder

    m = [mean_norm(load_encoder(str(models["flux"]), encoder=k).embedding_table()) for k in (1, 2)]
    assert set(fixed) == {"clip_l", "t5"}
    for key, mk in zip(("clip_l", "t5"), m):
        assert float(fixed[key].norm()) == pytest.approx(mk, rel=1e-5)
        assert torch.allclose(torch.nn.functional.normalize(fixed[key], dim=-1), torch.nn.functional.normalize(ti[key], dim=-1), atol=1e-6)


# ---- bad input: one line, exit 2 --------------------------------------------------------------------
def test_bad_input_is_one_line(models, images, flux_run, tmp_path, capsys):
    base = ["train", "--images", images, "--placeholder", TOKEN, "--init-word", "toy", "--steps", "1", "--resolution", "32",
            "--quiet"]
    broken = tmp_path / "flux-no-tok"
    shutil.copytree(models["flux"], broken)
    shutil.rmtree(broken / "tokenizer_2")
    code, _, err = run_cli(capsys, *base, "--model", broken, "--out", tmp_path / "o1")
    assert_one_line_error(code, err, "tokenizer_2")
    broken2 = tmp_path / "sd3-no-t5"
    shutil.copytree(models["sd3"], broken2)
    shutil.rmtree(broken2 / "text_encoder_3")
    code, _, err = run_cli(capsys, *base, "--model", broken2, "--out", tmp_path / "o2")
    assert_one_line_error(code, err, "text_encoder_3")
    code, _, err = run_cli(capsys, *base, "--model", models["flux"], "--encoders", "clip_g", "--out", tmp_path / "o3")
    assert_one_line_error(code, err, "--encoders clip_g")
    # a word the T5 tokenizer splits, where one token is needed
    code, _, err = run_cli(capsys, *base, "--model", models["flux"], "--encoders", "t5", "--init-word", "teddy",
                           "--out", tmp_path / "o4")
    assert_one_line_error(code, err, "not a single token")
    code, _, err = run_cli(capsys, *base, "--model", models["flux"], "--preset", "authors", "--out", tmp_path / "o5")
    assert_one_line_error(code, err, "--preset authors")
    code, _, err = run_cli(capsys, *base, "--model", models["sdxl"], "--encoders", "clip_l", "--out", tmp_path / "o6")
    assert_one_line_error(code, err, "--encoders clip_l")
    # a {clip_l, t5} file on an SDXL pipeline, and an SDXL pair on a FLUX pipeline
    gen = ["generate", "--prompt", "a {} on a beach", "--seeds", "0", "--steps", "1", "--resolution", "32", "--no-progress"]
    code, _, err = run_cli(capsys, *gen, "--embedding", flux_run[0] / "learned_embeds_flux.safetensors", "--model",
                           models["sdxl"], "--out", tmp_path / "g1")
    assert_one_line_error(code, err, "does not fit")
    save_file({"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 48)}, str(tmp_path / "sdxl.safetensors"))
    code, _, err = run_cli(capsys, *gen, "--embedding", tmp_path / "sdxl.safetensors", "--token", TOKEN, "--model",
                           models["flux"], "--out", tmp_path / "g2")
    assert_one_line_error(code, err, "SDXL")


# ---- the LoRA and DCO on the flow transformers --------------------------------------------------------
@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_lora_file_loads_into_diffusers_and_gives_the_trained_transformer(kind, models, images, tmp_path):
    import math

    from diffusers import FluxPipeline, StableDiffusion3Pipeline

    from geomkit.train import checkpoint

    out = tmp_path / "run"
    kw = dict(lora_rank=2, lora_alpha=3.0, lora_lr=0.05, loss="dco", steps=2)
    res = train(config(kind, models, images, out, **kw))
    first = json.loads((out / "train_log.jsonl").read_text().splitlines()[0])["loss"]
    assert first == pytest.approx(math.log(2), abs=1e-6)  # DCO starts at ln 2: the adapter starts at zero
    sess = session(config(kind, models, images, out, resume="latest", **kw))
    _, tensors = checkpoint.load(checkpoint.find(out, "latest"))
    sess.load_state_tensors(tensors)
    obj, part = sess.obj, sess.obj.draw(1)
    vectors = [s.vectors().detach() for s in sess.slots]
    with torch.no_grad():
        ours = obj.predict(part, vectors, sess.slots)
        obj.denoiser.disable_adapters()
        plain = obj.predict(part, vectors, sess.slots)
        obj.denoiser.enable_adapters()
    pipe = (FluxPipeline if kind == "flux" else StableDiffusion3Pipeline).from_pretrained(models[kind])
    pipe.load_lora_weights(str(out), weight_name="pytorch_lora_weights.safetensors")
    assert "pytorch_lora_weights.safetensors" in [p.split("/")[-1] for p in res["files"]]
    mine, obj.transformer = obj.transformer, pipe.transformer  # the same inputs through diffusers' loaded transformer
    try:
        with torch.no_grad():
            theirs = obj.predict(part, vectors, sess.slots)
    finally:
        obj.transformer = mine
    rel = lambda a, b: float((a.double() - b.double()).norm() / b.double().norm())  # noqa: E731
    assert rel(theirs, ours) <= 1e-5 and rel(plain, ours) > 1e-4


def test_generate_on_sd3_equals_diffusers_with_the_rows_by_hand(models, tmp_path, capsys):
    """SD3 has neither load_textual_inversion nor maybe_convert_prompt: geomkit writes the rows and
    expands a two-vector token in the prompt; the image equals diffusers' with the same done here."""
    import numpy as np
    from diffusers import StableDiffusion3Pipeline
    from PIL import Image

    parts = _rows({"clip_l": 32, "clip_g": 48, "t5": 96}, seed=4, n=2)
    save_file(parts, str(tmp_path / "tok.safetensors"))
    code, _, err = run_cli(capsys, "generate", "--embedding", tmp_path / "tok.safetensors", "--token", TOKEN, "--model",
                           models["sd3"], "--prompt", "a {} on a beach", "--seeds", "0", "--steps", "2", "--resolution", "32",
                           "--out", tmp_path / "g", "--no-progress")
    assert code == 0, err
    (img,) = list((tmp_path / "g" / "images").glob("*.png"))
    pipe = StableDiffusion3Pipeline.from_pretrained(models["sd3"])
    names = [TOKEN, TOKEN + "_1"]
    for key, (te, tk) in zip(("clip_l", "clip_g", "t5"), (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"),
                                                         ("text_encoder_3", "tokenizer_3"))):
        enc, tok = getattr(pipe, te), getattr(pipe, tk)
        tok.add_tokens(names)
        enc.resize_token_embeddings(len(tok))
        with torch.no_grad():
            for name, row in zip(names, parts[key]):
                enc.get_input_embeddings().weight[tok.convert_tokens_to_ids(name)] = row
    want = pipe(f"a {TOKEN} {TOKEN}_1 on a beach", num_inference_steps=2, height=32, width=32, guidance_scale=7.0,
                generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]
    got = np.asarray(Image.open(img)).astype(np.float64) / 255
    assert np.abs(got - want).max() <= 1 / 255 + 1e-6


def test_umt5_family_sites(tiny_encoder):
    """umT5 (Wan2.1's encoder): a relative position bias in every block, the same uniform sites."""
    from geomkit.hooks import run_with_cache

    enc = tiny_encoder("umt5")
    assert enc.family.name == "umt5-encoder" and enc.family.positions == "relative"
    assert all(b.layer[0].SelfAttention.has_relative_attention_bias for b in enc.blocks)
    ids = enc.encode(["a photo of a dog"])
    _, cache = run_with_cache(enc, ids["input_ids"], ids["attention_mask"], sites=["final_norm", "blocks.0.resid_pre"])
    out = enc.model(**ids)
    assert torch.allclose(cache["final_norm"], out.last_hidden_state, atol=1e-6)
    assert torch.equal(cache["blocks.0.resid_pre"], enc.model.shared(ids["input_ids"]))


def test_readme_flux_sd3_commands_parse(tmp_path, monkeypatch):
    """Every command of the README's FLUX/SD3 section parses with today's flags."""
    import shlex
    from pathlib import Path

    from geomkit.cli import build_parser

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## FLUX.1 and SD3.x (T5 encoders)")[1].split("\n## ")[0]
    block = section.split("```bash")[1].split("```")[0].replace("\\\n", " ")
    cmds = [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("geomkit ")]
    assert len(cmds) == 4
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my-dog").mkdir()
    (tmp_path / "runs" / "dog-flux").mkdir(parents=True)
    parser = build_parser()
    for argv in cmds:
        args = parser.parse_args(argv)
        if argv[0] == "train":
            assert args.placeholder == "<my-dog>"


def test_convert_to_sd3_orders_parts_by_dimension(tmp_path, capsys):
    g = torch.Generator().manual_seed(5)
    rows = {d: torch.randn(2, d, generator=g) for d in (96, 32, 48)}  # given out of order: T5, CLIP-L, CLIP-G
    files = []
    for d, v in rows.items():
        files.append(tmp_path / f"part{d}.safetensors")
        save_file({TOKEN: v}, str(files[-1]))
    code, _, err = run_cli(capsys, "convert", *files, "--to", "sd3", "--out", tmp_path / "sd3.safetensors")
    assert code == 0, err
    back = load_file(str(tmp_path / "sd3.safetensors"))
    assert set(back) == {"clip_l", "clip_g", "t5"}
    assert all(torch.equal(back[k], rows[d]) for k, d in (("clip_l", 32), ("clip_g", 48), ("t5", 96)))
    code, _, err = run_cli(capsys, "convert", tmp_path / "sd3.safetensors", "--to", "diffusers", "--out", tmp_path / "x.safetensors")
    assert_one_line_error(code, err, "--encoder")
    code, _, err = run_cli(capsys, "convert", *files, "--to", "sd3", "--encoder", "1", "--out", tmp_path / "w.safetensors")
    assert_one_line_error(code, err, "drop --encoder")
    code, _, err = run_cli(capsys, "convert", *files[:2], "--to", "sd3", "--out", tmp_path / "y.safetensors")
    assert_one_line_error(code, err, "one file per text encoder")
    save_file({"clip_l": rows[32], "t5": rows[96][:1]}, str(tmp_path / "uneven.safetensors"))
    code, _, err = run_cli(capsys, "convert", tmp_path / "uneven.safetensors", "--to", "flux", "--out", tmp_path / "z.safetensors")
    assert_one_line_error(code, err, "different numbers of vectors")


def test_committed_t5_random_report_is_its_raw_outputs():
    """figures/REPORT-T5-RANDOM.md (`geomkit reproduce --t5-random`) says random weights on every row, and
    its numbers are the committed step outputs' (the DTI token at m* at every logged step)."""
    from pathlib import Path

    from geomkit import reproduce_t5

    root = Path(__file__).resolve().parents[1]
    report = (root / "figures" / "REPORT-T5-RANDOM.md").read_text()
    assert "RANDOM weights" in report and "are not findings about real T5 models" in report
    rows = reproduce_t5.claims(root / "probes")
    assert len(rows) == 5
    for r in rows:
        assert r["agrees"].startswith("n/a (random weights") and "random weights" in r["model"]
        assert r["geomkit"].replace("|", "\\|") in report
    run = root / "probes" / reproduce_t5.T5_RANDOM / "train-dti"
    res = json.loads((run / "results.json").read_text())
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert len(log) == 20 and all(ln["norm"] == pytest.approx(res["m_star"][0], rel=1e-6) for ln in log)
    assert f"DTI {res['final_norm'][0]:.3f} (1.000x)" in report
    pp = json.loads((root / "probes" / reproduce_t5.T5_RANDOM / "probe-position" / "results.json").read_text())
    assert pp["positions"] == "relative" and pp["site_chosen"].startswith("automatic")
