"""`geomkit generate` and `geomkit evaluate` end to end on tiny random SD / SDXL pipelines and tiny
random DINOv2 / SigLIP / CLIP models, scores checked against an independent computation on the
same images; resume; the prompt sets; one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import assert_one_line_error as _assert_one_line_error, run_cli as _run
from geomkit.embeddings_io import save_learned, save_sdxl_pair

FAST = ["--steps", "2", "--size", "32", "--no-progress"]






@pytest.fixture(scope="module")
def scorers(tiny_root):
    from geomkit import tiny

    return {k: tiny.cached_scorer_dir(k, str(tiny_root)) for k in ("dinov2", "siglip", "clipmodel")}


@pytest.fixture()
def refs(tmp_path):
    folder = tmp_path / "refs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray((rng.random((40, 48, 3)) * 255).astype("uint8")).save(folder / f"ref{i}.jpg")
    return folder


def _vec(d, seed, m=0.4):
    v = torch.randn(1, d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * m


def _pixels(folder, name):
    return np.asarray(Image.open(folder / name)).astype(int)


# ---- generate --------------------------------------------------------------------------------
def test_generate_sd_pngs_grid_and_resume(tiny_dir, tmp_path, capsys):
    save_learned(tmp_path / "tok.safetensors", "<my-cat>", _vec(32, 0))
    save_learned(tmp_path / "other.safetensors", "<other>", _vec(32, 1))
    out = tmp_path / "g"
    args = ["generate", "--model", tiny_dir("sd"), "--embedding", tmp_path / "tok.safetensors", tmp_path / "other.safetensors",
            "--prompt", "a photo of {} in the snow", "--prompt", "a photo of {1}", "--seeds", "0,1", "--out", out, *FAST]
    code, stdout, err = _run(capsys, *args)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["prompts"] == ["a photo of <my-cat> in the snow", "a photo of <other>"]
    assert res["n_images"] == 4 and res["n_generated"] == 4 and res["scheduler"] == "ddim"
    files = [f for row in res["images"] for f in row]
    assert all((out / f).is_file() for f in files)
    assert Image.open(out / files[0]).size == (32, 32)
    assert Image.open(out / "grid.png").size[0] >= 2 * 32
    # different seeds and different tokens give different pictures
    assert np.abs(_pixels(out, files[0]) - _pixels(out, files[1])).max() > 0
    assert np.abs(_pixels(out, files[0]) - _pixels(out, files[2])).max() > 0
    before = {f: (out / f).read_bytes() for f in files}
    # resume: nothing regenerated, nothing changed; one more seed adds only its images
    code, stdout, _ = _run(capsys, *args[:-len(FAST) - 2], "--seeds", "0,1,2", "--out", out, *FAST)
    res2 = json.loads((out / "results.json").read_text())
    assert code == 0 and res2["n_generated"] == 2 and res2["n_images"] == 6
    assert all((out / f).read_bytes() == b for f, b in before.items())
    # other settings are refused (one line), unless --overwrite
    code, _, err = _run(capsys, *args[:-len(FAST)], "--steps", "3", "--size", "32", "--no-progress")
    _assert_one_line_error(code, err, "other settings")


def test_generate_sdxl_pair_file_equals_two_diffusers_files(tiny_dir, tmp_path, capsys):
    """The SDXL clip_l/clip_g file (two load_textual_inversion calls) and the two diffusers files of
    a run (learned_embeds + learned_embeds_2) load the same vectors: the same images."""
    l, g = _vec(32, 3), _vec(48, 4)
    save_sdxl_pair(tmp_path / "pair.safetensors", l, g)
    save_learned(tmp_path / "learned_embeds.safetensors", "<tok>", l)
    save_learned(tmp_path / "learned_embeds_2.safetensors", "<tok>", g)
    common = ["generate", "--model", tiny_dir("sdxl"), "--prompt", "a {} on the beach", "--seeds", "5", *FAST]
    code, _, err = _run(capsys, *common, "--embedding", tmp_path / "pair.safetensors", "--token", "<tok>", "--out", tmp_path / "a")
    assert code == 0, err
    code, _, err = _run(capsys, *common, "--embedding", tmp_path / "learned_embeds_2.safetensors",
                        tmp_path / "learned_embeds.safetensors", "--out", tmp_path / "b")
    assert code == 0, err
    ra = json.loads((tmp_path / "a" / "results.json").read_text())
    rb = json.loads((tmp_path / "b" / "results.json").read_text())
    assert ra["tokens"]["<tok>"]["dims"] == [32, 48] and sorted(rb["tokens"]["<tok>"]["dims"]) == [32, 48]
    ia = _pixels(tmp_path / "a", ra["images"][0][0])
    ib = _pixels(tmp_path / "b", rb["images"][0][0])
    assert np.abs(ia - ib).max() <= 1


# ---- evaluate --------------------------------------------------------------------------------
def _independent_scores(out, res, refs, scorers, class_word):
    """DINOv2 / SigLIP / CLIP scores recomputed from the PNGs with the models' own forward
    (pooler outputs, logits), not with geomkit.evaluation."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    items = [(e["prompt"], f) for e in res["per_prompt"] for f in e["images"]]
    gen = [Image.open(out / f).convert("RGB") for _, f in items]
    ref = [Image.open(p).convert("RGB") for p in sorted(refs.iterdir())]
    texts = [p.replace("{}", class_word) + "." for p, _ in items]
    d = str(scorers["dinov2"])
    dino, proc = AutoModel.from_pretrained(d), AutoImageProcessor.from_pretrained(d)
    with torch.no_grad():
        fg = dino(**proc(images=gen, return_tensors="pt")).pooler_output.double()
        fr = dino(**proc(images=ref, return_tensors="pt")).pooler_output.double()
    image = torch.nn.functional.cosine_similarity(fg[:, None], fr[None], dim=-1).mean().item()
    s = str(scorers["siglip"])
    sig, sproc, stok = AutoModel.from_pretrained(s), AutoImageProcessor.from_pretrained(s), AutoTokenizer.from_pretrained(s)
    with torch.no_grad():
        o = sig(input_ids=stok(texts, padding="max_length", max_length=64, return_tensors="pt")["input_ids"],
                pixel_values=sproc(images=gen, return_tensors="pt")["pixel_values"])
    text = torch.sigmoid(o.logits_per_image.diagonal().double()).mean().item()
    c = str(scorers["clipmodel"])
    clip, cproc, ctok = AutoModel.from_pretrained(c), AutoImageProcessor.from_pretrained(c), AutoTokenizer.from_pretrained(c)
    with torch.no_grad():
        o = clip(**ctok(texts, padding=True, return_tensors="pt"), pixel_values=cproc(images=gen, return_tensors="pt")["pixel_values"])
    clip_cos = (o.logits_per_image.diagonal() / clip.logit_scale.exp()).double().mean().item()
    return image, text, clip_cos


def test_evaluate_sd_matches_independent_scores(tiny_dir, scorers, refs, tmp_path, capsys):
    save_learned(tmp_path / "tok.safetensors", "<my-teapot>", _vec(32, 7))
    out = tmp_path / "ev"
    code, stdout, err = _run(
        capsys, "evaluate", "--embedding", tmp_path / "tok.safetensors", "--model", tiny_dir("sd"), "--reference", refs,
        "--class-word", "teapot", "--dino", scorers["dinov2"], "--siglip", scorers["siglip"], "--clip", scorers["clipmodel"],
        "--seeds", "0", "--batch-size", "12", "--out", out, *FAST,
    )
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert {"image_similarity", "text_alignment", "n_images", "per_prompt"} <= set(res)
    # teapot is an object: the DreamBooth object list + the complex prompts, one seed
    assert res["prompt_set"] == "object" and res["n_prompts"] == 35 and res["n_images"] == 35 == len(res["per_prompt"])
    assert "a {} with the Eiffel Tower in the background" in [e["prompt"] for e in res["per_prompt"]]
    assert "a {} wearing a santa hat" not in [e["prompt"] for e in res["per_prompt"]]
    assert res["per_prompt"][0]["generation_prompt"] == "a <my-teapot> in the jungle"
    assert res["per_prompt"][0]["scored_text"] == "a teapot in the jungle."
    assert -1 <= res["image_similarity"] <= 1 and 0 < res["text_alignment"] < 1 and -1 <= res["text_cosine"] <= 1
    assert res["text_metric"] == "siglip-sigmoid"
    image, text, clip_cos = _independent_scores(out, res, refs, scorers, "teapot")
    assert res["image_similarity"] == pytest.approx(image, abs=1e-5)
    assert res["text_alignment"] == pytest.approx(text, abs=1e-5)
    assert res["clip_text_cosine"] == pytest.approx(clip_cos, abs=1e-5)
    per = np.mean([e["image_similarity"] for e in res["per_prompt"]])
    assert res["image_similarity"] == pytest.approx(per, abs=1e-9)  # equal seeds per prompt
    assert (out / "scores.csv").is_file() and (out / "grid.png").is_file()


def _fixture_run(folder, pipeline, placeholder="<my-dog>", init_word="dog"):
    """A run folder in exactly the trainer's format (SDXL: three embedding files)."""
    folder.mkdir(parents=True)
    l, g = _vec(32, 11), _vec(48, 12)
    save_learned(folder / "learned_embeds.safetensors", placeholder, l)
    save_learned(folder / "learned_embeds_2.safetensors", placeholder, g)
    save_sdxl_pair(folder / "learned_embeds_sdxl.safetensors", l, g)
    results = {"method": "dti", "objective": "diffusion", "model": str(pipeline), "placeholder": placeholder,
               "init_word": init_word, "m_star": [0.4, 0.4], "kappa": 1e-4, "lr": 5e-3, "steps": 2, "batch_size": 1,
               "final_loss": 0.1, "final_norm": [0.4, 0.4], "angle_from_init_deg": 1.0, "cos_to_prior": 0.99,
               "seconds": 1.0, "drift": {init_word: 0.99}}
    (folder / "results.json").write_text(json.dumps(results))
    (folder / "config.json").write_text(json.dumps({"method": "dti", "model": str(pipeline)}))
    return folder


def test_evaluate_run_sdxl_defaults_and_resume(tiny_dir, scorers, refs, tmp_path, capsys):
    run = _fixture_run(tmp_path / "run", tiny_dir("sdxl"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# mine\n#@ both\na {} in the snow\n#@ live\na {} wearing a hat\n#@ object\na shiny {}\n#@ complex\na {} on the moon, oil painting\n")
    args = ["evaluate", "--run", run, "--reference", refs, "--dino", scorers["dinov2"], "--clip", scorers["clipmodel"],
            "--prompts", prompts, "--seeds", "0,1", *FAST]
    code, stdout, err = _run(capsys, *args)
    assert code == 0, err
    res = json.loads((run / "eval" / "results.json").read_text())  # output defaults to RUN_DIR/eval
    # dog is a live subject: both + live + complex sections; token and class word from the run
    assert [e["prompt"] for e in res["per_prompt"]] == ["a {} in the snow", "a {} wearing a hat", "a {} on the moon, oil painting"]
    assert res["token"] == "<my-dog>" and res["class_word"] == "dog" and res["n_images"] == 6
    assert res["text_metric"] == "clip-cosine" and -1 <= res["text_alignment"] <= 1
    assert res["text_alignment"] == pytest.approx(res["text_cosine"], abs=1e-12)
    assert res["n_generated"] == 6
    code, _, err = _run(capsys, *args)
    again = json.loads((run / "eval" / "results.json").read_text())
    assert code == 0 and again["n_generated"] == 0  # every image reused
    assert again["image_similarity"] == pytest.approx(res["image_similarity"], abs=1e-9)


def test_prompt_sets():
    from geomkit.evaluation import select_prompts

    name, obj = select_prompts("auto", "teapot")
    assert name == "object" and len(obj) == 35
    name, live = select_prompts("auto", "dog")
    assert name == "live" and len(live) == 35
    _, every = select_prompts("all")
    assert len(every) == 45 and set(obj) | set(live) == set(every)
    assert len(set(obj) & set(live)) == 25  # 15 shared DreamBooth prompts + 10 complex
    assert obj[:3] == ["a {} in the jungle", "a {} in the snow", "a {} on the beach"] and obj[24] == "a cube shaped {}"
    assert live[10] == "a {} wearing a red hat" and live[20] == "a red {}"


def test_a_prompt_file_without_sections_is_used_whole(tmp_path):
    from geomkit.evaluation import select_prompts

    f = tmp_path / "p.txt"
    f.write_text("# comment\na {} in the rain\n\na photo of {}\n")
    assert select_prompts("live", "dog", f) == ("file", ["a {} in the rain", "a photo of {}"])


def test_bad_inputs_give_one_line(tiny_dir, scorers, refs, tmp_path, capsys):
    save_learned(tmp_path / "tok.safetensors", "<t>", _vec(32, 0))
    save_learned(tmp_path / "wide.safetensors", "<w>", _vec(64, 0))
    out = tmp_path / "never"
    base = ["evaluate", "--model", tiny_dir("sd"), "--class-word", "dog", "--dino", scorers["dinov2"],
            "--siglip", scorers["siglip"], "--out", out, *FAST]
    tok = ["--embedding", tmp_path / "tok.safetensors"]
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    _assert_one_line_error(*_run(capsys, *base, *tok, "--reference", tmp_path / "missing")[::2], "folder not found")
    _assert_one_line_error(*_run(capsys, *base, *tok, "--reference", empty)[::2], "no images")
    _assert_one_line_error(*_run(capsys, *base, "--embedding", tmp_path / "wide.safetensors", "--reference", refs)[::2],
                           "another text encoder")
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a dog\n")
    _assert_one_line_error(*_run(capsys, *base, *tok, "--reference", refs, "--prompts", bad)[::2], "placeholder")
    no_run = tmp_path / "not-a-run"
    no_run.mkdir()
    _assert_one_line_error(*_run(capsys, "evaluate", "--run", no_run, "--reference", refs, "--dino", scorers["dinov2"],
                                 "--siglip", scorers["siglip"], *FAST)[::2], "no results.json")
    _assert_one_line_error(*_run(capsys, "evaluate", *tok, "--model", tiny_dir("sd"), "--class-word", "dog", "--reference", refs,
                                 "--dino", scorers["dinov2"], "--out", out, *FAST)[::2], "--siglip")
    _assert_one_line_error(*_run(capsys, "evaluate", *tok, "--model", tiny_dir("sd"), "--class-word", "dog", "--reference", refs,
                                 "--dino", scorers["siglip"], "--siglip", scorers["siglip"], "--out", out, *FAST)[::2], "expected dinov2")
    _assert_one_line_error(*_run(capsys, "generate", "--model", tiny_dir("sdxl"), *tok, "--prompt", "{}", "--out", out, *FAST)[::2],
                           "both text encoders")
    _assert_one_line_error(*_run(capsys, "generate", "--model", tmp_path, *tok, "--prompt", "{}", "--out", out, *FAST)[::2],
                           "not a diffusers pipeline")
    assert not out.exists()


def test_evaluate_scores_a_lora_run_with_its_lora(tiny_dir, scorers, refs, tmp_path, capsys):
    """A run trained with --lora-rank is evaluated with its LoRA loaded: other images (and scores)
    than the same token without it."""
    import shutil

    from geomkit.train import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(model=str(tiny_dir("sd")), images=str(refs), placeholder="<my-dog>", init_word="dog", steps=2,
                      batch_size=2, resolution=32, lora_rank=2, lora_lr=0.05, out=str(run), progress=False))
    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "pytorch_lora_weights.safetensors").unlink()
    res = json.loads((bare / "results.json").read_text())  # a run without a LoRA records none
    res.pop("lora", None)
    (bare / "results.json").write_text(json.dumps(res))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("#@ both\na {} in the snow\na {} on a table\n")
    scores = {}
    for name, folder in (("lora", run), ("bare", bare)):
        code, _, err = _run(capsys, "evaluate", "--run", folder, "--reference", refs, "--dino", scorers["dinov2"],
                            "--clip", scorers["clipmodel"], "--prompts", prompts, "--seeds", "0", *FAST)
        assert code == 0, err
        scores[name] = json.loads((folder / "eval" / "results.json").read_text())
    assert scores["lora"]["lora"].endswith("pytorch_lora_weights.safetensors") and scores["bare"]["lora"] is None
    assert scores["lora"]["image_similarity"] != scores["bare"]["image_similarity"]
