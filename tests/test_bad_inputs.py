"""Bad input to every command except `train`: exit status 2, exactly one line on stderr that says
what was wrong, no traceback, and nothing written: neither in the --out folder nor in the
current folder. One table of cases over tiny random models (each case takes well under a second
once the fixtures are built)."""

import json
import os
import shutil

import pytest
import torch

from helpers import run_cli

OUT = "OUT"  # the case's --out folder (must not exist afterwards)


@pytest.fixture(scope="module")
def world(tiny_dir, tmp_path_factory):
    """Files and folders the cases refer to by name."""
    from geomkit.embeddings_io import save_learned

    root = tmp_path_factory.mktemp("bad-inputs")
    w = {"CLIP": str(tiny_dir("clip")), "BERT": str(tiny_dir("bert")), "SD": str(tiny_dir("sd"))}
    v = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    save_learned(root / "a.safetensors", "<a>", v / v.norm() * 0.4)
    w["EMB"] = str(root / "a.safetensors")
    u = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    save_learned(root / "b.safetensors", "<b>", u / u.norm() * 0.4)
    w["EMB2"] = str(root / "b.safetensors")
    (root / "file.txt").write_text("not a folder\n")
    w["FILE"] = str(root / "file.txt")
    (root / "folder").mkdir()
    w["DIR"] = str(root / "folder")
    # a model folder whose config.json is not JSON
    bad = root / "badjson"
    shutil.copytree(w["CLIP"], bad)
    (bad / "config.json").write_text('{"model_type": "clip_text_model",')
    w["BADJSON"] = str(bad)
    weights = root / "badweights"
    shutil.copytree(w["CLIP"], weights)
    (weights / "model.safetensors").write_bytes(b"garbage")
    w["BADWEIGHTS"] = str(weights)
    # a pipeline's text_encoder folder on its own: config.json, no tokenizer
    w["TEXT_ENCODER"] = str(tiny_dir("sd") / "text_encoder")
    # a pipeline folder whose component folders were not copied
    bare = root / "bare-pipeline"
    bare.mkdir()
    shutil.copy(tiny_dir("sd") / "model_index.json", bare)
    w["BARE_SD"] = str(bare)
    # a pipeline whose UNet weights are damaged: found only when it loads, after the run lock is taken
    broken = root / "sd-broken-unet"
    shutil.copytree(w["SD"], broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    w["SD_BROKEN_UNET"] = str(broken)
    # references: one unreadable image
    refs = root / "refs"
    refs.mkdir()
    (refs / "broken.png").write_bytes(b"not a png")
    w["BAD_REFS"] = str(refs)
    good = root / "good-refs"
    good.mkdir()
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(good / "r.png")
    w["REFS"] = str(good)
    # scorer folders: enough for the checks that run before any scorer loads
    for kind in ("dinov2", "siglip"):
        f = root / kind
        f.mkdir()
        (f / "config.json").write_text(json.dumps({"model_type": kind}))
        (f / "preprocessor_config.json").write_text("{}")
        w[kind.upper()] = str(f)
        w[f"{kind.upper()}_NO_WEIGHTS"] = str(f)
        f = root / f"{kind}-weights"
        shutil.copytree(root / kind, f)
        (f / "model.safetensors").write_bytes(b"")
        w[kind.upper()] = str(f)
    (root / "plain-prompts.txt").write_text("a {} in the rain\n")
    (root / "binary.txt").write_bytes(bytes(range(128, 256)))
    w["BINARY"] = str(root / "binary.txt")
    probe = root / "damaged-probe"
    probe.mkdir()
    (probe / "config.json").write_text('{"d_model": 32')
    (probe / "probe.safetensors").write_bytes(b"x")
    w["DAMAGED_PROBE"] = str(probe)
    w["PLAIN_PROMPTS"] = str(root / "plain-prompts.txt")
    _issue19_world(w, root, tiny_dir, v)
    # a finished training run whose log is garbage
    run = root / "run-garbage-log"
    run.mkdir()
    save_learned(run / "learned_embeds.safetensors", "<a>", v)
    (run / "results.json").write_text(json.dumps({"method": "dti", "model": w["CLIP"], "placeholder": "<a>", "init_word": "dog"}))
    (run / "train_log.jsonl").write_text("garbage\n{also garbage\n" + json.dumps({"step": 1, "loss": 1.0}) + "\n")
    w["RUN_GARBAGE_LOG"] = str(run)
    return w


def _issue19_world(w, root, tiny_dir, v):
    """Files for the cases of issue 19: geomkit's own files given as embeddings, values outside the
    float32-safe range, tensors that are not dense and real, damaged pipelines and scorers, run
    files of the wrong types, antipodal tokens, a folder of another kind of run."""
    import pickle

    from geomkit import tiny
    from geomkit.embeddings_io import save_learned
    from geomkit.train import checkpoint

    # a training checkpoint (safetensors with geomkit's metadata) and its JSON sidecar
    ck = root / "run-ckpt" / "checkpoints"
    checkpoint.save(ck, 2, {"param.0": v / v.norm(), "opt.0.step": torch.tensor(2.0)}, {"config": {}, "log": []})
    w["CKPT"] = str(ck / "step-000002.safetensors")
    w["CKPT_JSON"] = str(ck / "step-000002.json")
    (root / "results.json").write_text(json.dumps({"method": "dti", "model": "m", "placeholder": "<a>"}))
    w["RESULTS_JSON"] = str(root / "results.json")
    # values outside the float32-safe range, and tensors that are not dense real ones
    save_learned(root / "huge.safetensors", "<huge>", torch.full((1, 32), 1e30))
    w["HUGE"] = str(root / "huge.safetensors")
    torch.save({"<tiny>": torch.full((1, 32), 1e-45, dtype=torch.float64)}, root / "tiny.pt")
    w["TINY_VALUES"] = str(root / "tiny.pt")
    torch.save({"<sp>": torch.eye(1, 32).to_sparse()}, root / "sparse.pt")
    w["SPARSE"] = str(root / "sparse.pt")
    torch.save({"<c>": torch.randn(1, 32, dtype=torch.complex64)}, root / "complex.pt")
    w["COMPLEX"] = str(root / "complex.pt")
    torch.save({"<m>": torch.empty(1, 32, device="meta")}, root / "meta.pt")
    w["META"] = str(root / "meta.pt")
    # the same token in two files for one encoder; an antipodal token
    save_learned(root / "a-again.safetensors", "<a>", v / v.norm() * 0.3 + 0.01)
    w["EMB_SAME_NAME"] = str(root / "a-again.safetensors")
    save_learned(root / "neg.safetensors", "<neg>", -(v / v.norm() * 0.4))
    w["EMB_NEG"] = str(root / "neg.safetensors")
    # damaged pipelines for train
    bad_index = root / "sd-bad-index"
    shutil.copytree(w["SD"], bad_index)
    (bad_index / "model_index.json").write_text('{"_class_name": ')
    w["SD_BAD_INDEX"] = str(bad_index)
    zero = root / "clip-zero-layers"
    shutil.copytree(w["CLIP"], zero)
    cfg = json.loads((zero / "config.json").read_text())
    cfg["num_hidden_layers"] = 0
    (zero / "config.json").write_text(json.dumps(cfg))
    w["CLIP_ZERO_LAYERS"] = str(zero)
    # an image whose header claims 10^10 pixels (a decompression bomb)
    import struct
    import zlib

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    bomb = root / "bomb-images"
    bomb.mkdir()
    (bomb / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
                                 + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))
    w["BOMB_IMAGES"] = str(bomb)
    # scorers: real tiny ones, then damaged copies (garbage weights, a refused pickle, no tokenizer)
    scorers = root / "scorers"
    real = {k: tiny.cached_scorer_dir(k, str(scorers)) for k in ("dinov2", "siglip")}
    w["REAL_DINO"], w["REAL_SIGLIP"] = str(real["dinov2"]), str(real["siglip"])
    garbage = root / "dino-garbage"
    shutil.copytree(real["dinov2"], garbage)
    (garbage / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    w["DINO_GARBAGE"] = str(garbage)
    evil = root / "dino-pickle"
    shutil.copytree(real["dinov2"], evil)
    (evil / "model.safetensors").unlink()

    class Boom:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned > /tmp/geomkit-pwned",))

    with open(evil / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": Boom()}, fh)
    w["DINO_PICKLE"] = str(evil)
    notok = root / "siglip-no-tokenizer"
    shutil.copytree(real["siglip"], notok)
    for f in notok.iterdir():
        if f.name in ("tokenizer.json", "tokenizer_config.json", "spiece.model", "special_tokens_map.json", "vocab.json",
                      "tokenizer.model"):
            f.unlink()
    w["SIGLIP_NO_TOKENIZER"] = str(notok)
    # run files of the wrong types
    for name, results, ev, log in (
        ("kappa-text", {"kappa": "high"}, None, None),
        ("drift-list", {"drift": [1, 2]}, None, None),
        ("eval-text", {}, {"image_similarity": "good"}, None),
        ("log-text", {}, None, [{"step": "one", "loss": 1.0}]),
    ):
        r = root / f"run-{name}"
        r.mkdir()
        save_learned(r / "learned_embeds.safetensors", "<a>", v)
        (r / "results.json").write_text(json.dumps({"method": "dti", "model": w["CLIP"], "placeholder": "<a>", **results}))
        if ev is not None:
            (r / "eval").mkdir()
            (r / "eval" / "results.json").write_text(json.dumps(ev))
        if log is not None:
            (r / "train_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log))
        w[f"RUN_{name.upper().replace('-', '_')}"] = str(r)
    good = root / "run-good"
    good.mkdir()
    save_learned(good / "learned_embeds.safetensors", "<a>", v)
    (good / "results.json").write_text(json.dumps({"method": "dti", "model": w["CLIP"], "placeholder": "<a>"}))
    w["RUN_GOOD"] = str(good)
    # a folder that already holds another kind of run's output
    other = root / "norms-run"
    other.mkdir()
    (other / "norms.csv").write_text("id,token,norm\n")
    (other / "results.json").write_text("{}")
    w["NORMS_RUN"] = str(other)
    from safetensors.torch import save_file

    save_file({"clip_l": torch.randn(1, 32)}, str(root / "sdxl-half.safetensors"))
    w["SDXL_HALF"] = str(root / "sdxl-half.safetensors")
    save_file({"clip_l": torch.randn(2, 32), "clip_g": torch.randn(1, 48)}, str(root / "sdxl-count.safetensors"))
    w["SDXL_COUNT"] = str(root / "sdxl-count.safetensors")
    w["LONG"] = str(root / ("x" * 300))
    w["PROC"] = "/proc/geomkit-nowhere/out"
    w["PROC_FILE"] = "/proc/geomkit-nowhere/out.safetensors"


FAST = ["--steps", "1", "--size", "32", "--no-progress"]
GEN = ["generate", "--model", "SD", "--embedding", "EMB", "--prompt", "a photo of {}", *FAST]
EVAL = ["evaluate", "--model", "SD", "--embedding", "EMB", "--class-word", "dog", "--reference", "REFS",
        "--dino", "DINOV2", "--siglip", "SIGLIP", *FAST]
INTERP = ["interpolate", "EMB", "EMB2"]

CASES = [
    # ---- argparse: one line, a usage block never
    (["frobnicate"], "invalid choice"),
    (["neighbors", "apple", "--model", "CLIP", "--top-k"], "expected one argument"),
    (["neighbors", "apple", "--model", "CLIP", "--bogus"], "unrecognized arguments"),
    (["evaluate", "--model", "SD"], "required"),
    # ---- numbers: type, range, finiteness
    (["neighbors", "apple", "--model", "CLIP", "-k", "0"], "at least 1"),
    (["neighbors", "apple", "--model", "CLIP", "-k", "ten"], "not an integer"),
    (["neighbors", "apple", "--model", "CLIP", "-k", "100000"], "vocabulary"),
    (["norms", "--model", "CLIP", "--bins", "0"], "at least 1"),
    (["norms", "--model", "CLIP", "--extremes", "-1"], "at least 0"),
    (["probe-position", "--model", "CLIP", "--scales", "-1,2"], "positive"),
    (["probe-position", "--model", "CLIP", "--scales", "1e300"], "overflow"),
    (["residual-angles", "--model", "CLIP", "--scales", "1,nan"], "positive finite"),
    (["attenuation", "--model", "CLIP", "--scales", "0.5,inf"], "positive finite"),
    (["attenuation", "--model", "CLIP", "--tokens", "0"], "at least 1"),
    (["probe-position", "--model", "CLIP", "--held-out", "1.5"], "outside"),
    (["probe-position", "--model", "CLIP", "--epochs", "-3"], "at least 1"),
    (["probe-position", "--model", "CLIP", "--seed", "-1"], "at least 0"),
    (["residual-angles", "--model", "CLIP", "--words", "dog,,cat"], "empty item"),
    ([*GEN, "--guidance", "nan"], "finite"),
    ([*GEN, "--guidance", "1e300"], "outside"),
    ([*GEN, "--cell", "0"], "at least 16"),
    ([*GEN, "--seeds", "-1"], "at least 0"),
    ([*GEN, "--size", "33"], "multiple of 8"),
    ([*GEN, "--device", "gpu"], "use auto, cpu"),
    ([*GEN, "--dtype", "int8"], "use auto, float32"),
    ([*INTERP, "--ratios", "0,nan"], "finite"),
    ([*INTERP, "--cell", "0", "--model", "SD", "--prompt", "a {}"], "at least 16"),
    ([*EVAL, "--eval-batch-size", "0"], "at least 1"),
    # ---- paths: empty, a file for a folder and the reverse
    (["neighbors", "apple", "--model", "CLIP", "--out", ""], "empty folder name"),
    (["neighbors", "apple", "--model", "CLIP", "--out", "FILE"], "is a file"),
    (["neighbors", "apple", "--model", "FILE"], "is a file"),
    (["norms", "--model", "CLIP", "--embedding", "DIR"], "is a folder"),
    (["probe-position", "--model", "CLIP", "--probe-dir", "FILE"], "is a file"),
    (["probe-position", "--model", "CLIP", "--load-probe", "FILE"], "is a file"),
    (["probe-position", "--model", "CLIP", "--prompts", "DIR"], "is a folder"),
    ([*EVAL, "--reference", "FILE"], "is a file"),
    (["compare", "FILE"], "is a file"),
    (["reproduce", "--results", "FILE"], "--results"),
    (["reproduce", "--figures", "FILE"], "--figures"),
    # ---- accepted though meaningless, now refused
    (["neighbors", "\U0001F98A", "--model", "BERT"], "unknown token"),
    (["neighbors", "a" * 5000, "--model", "BERT"], "unknown token"),
    (["neighbors", "apple", "--related", "\U0001F98A", "--model", "BERT"], "unknown token"),
    (["neighbors", "", "--model", "CLIP"], "empty word"),
    ([*INTERP, "--token", ""], "empty token name"),
    ([*INTERP, "--token", "dog"], "ordinary word"),
    ([*INTERP, "--token", "dog", "--model", "SD", "--prompt", "a {}"], "already a token"),
    ([*GEN, "--token", "dog"], "already a token"),
    ([*EVAL, "--class-word", ""], "empty class word"),
    ([*EVAL, "--prompt-set", "live", "--prompts", "PLAIN_PROMPTS"], "drop --prompt-set"),
    (["compare", "RUN_GARBAGE_LOG"], "damaged"),
    (["probe-position", "--model", "CLIP", "--min-support", "1000", "--max-prompts", "6"], "training prompts"),
    (["interpolate", "EMB", "EMB"], "same vectors"),
    (["generate", "--model", "SD", "--prompt", "a photo of {}", *FAST], "no learned token"),
    (["neighbors", "apple", "apple", "--model", "CLIP"], "given twice"),
    (["norms", "--model", "CLIP", "--embedding", "EMB", "EMB"], "given twice"),
    (["residual-angles", "--model", "CLIP", "--words", "dog,dog"], "given twice"),
    (["compare", "RUN_GARBAGE_LOG", "RUN_GARBAGE_LOG"], "given twice"),
    (["norms", "--model", "CLIP", "--extremes", "5000"], "at most 1000"),
    (["reproduce", "--only", "train-ti", "--models", "minilm-l6", "--results", "OUT", "--figures", "OUT"], "no step"),
    # ---- what only a model load reveals
    (["neighbors", "apple", "--model", "BADJSON"], "not valid JSON"),
    (["probe-position", "--model", "BADJSON"], "not valid JSON"),
    (["residual-angles", "--model", "BADJSON"], "not valid JSON"),
    (["norms", "--model", "TEXT_ENCODER"], "no tokenizer files"),
    (["neighbors", "apple", "--model", "BADWEIGHTS"], "could not load"),
    (["generate", "--model", "BARE_SD", "--prompt", "x", *FAST], "lacks the component"),
    (["generate", "--model", "SD_BROKEN_UNET", "--embedding", "EMB", "--prompt", "a photo of {}", *FAST], "not a readable safetensors file"),
    (["train", "--model", "BARE_SD", "--images", "REFS", "--placeholder", "<t>", "--init-word", "dog"], "lacks the component"),
    (["evaluate", "--model", "BARE_SD", "--embedding", "EMB", "--class-word", "dog", "--reference", "REFS",
      "--dino", "DINOV2", "--siglip", "SIGLIP"], "lacks the component"),
    # ---- checked before anything is rendered or written
    ([*EVAL, "--reference", "BAD_REFS"], "not a readable image"),
    ([*EVAL, "--dino", "DINOV2_NO_WEIGHTS"], "no weights"),
    (["generate", "--model", "SD", "--embedding", "EMB", "--prompts", "BINARY", *FAST], "UTF-8"),
    ([*EVAL, "--prompts", "BINARY"], "UTF-8"),
    (["residual-angles", "--model", "CLIP", "--prompts", "BINARY"], "UTF-8"),
    (["probe-position", "--model", "CLIP", "--load-probe", "DAMAGED_PROBE", "--max-prompts", "6"], "not a readable saved probe"),
    ([*INTERP, "--model", "SD", "--prompt", "a {}", "--dtype", "int8"], "float32"),
    # ---- inspect and convert (the files users download)
    (["inspect", "DIR", "--model", "CLIP"], "is a folder"),
    (["inspect", "EMB", "--model", "CLIP", "--probe-dir", "FILE"], "is a file"),
    (["inspect", "EMB", "--model", "CLIP", "-k", "0"], "at least 1"),
    (["inspect", "FILE", "--model", "CLIP"], "not a readable safetensors file"),
    (["convert", "DIR", "--to", "diffusers"], "is a folder"),
    (["convert", "EMB", "--to", "diffusers", "--token", ""], "empty"),
    (["convert", "EMB", "--to", "diffusers", "--out", "OUT"], "name it *.safetensors"),
    (["convert", "EMB", "--to", "sdxl", "--out", "OUT.safetensors"], "needs the token for both SDXL text encoders"),
]
# ---- issue 19: every traceback and silent mix-up found, as a case -------------------------------
REAL_EVAL = ["evaluate", "--model", "SD", "--embedding", "EMB", "--class-word", "dog", "--reference", "REFS",
             "--dino", "REAL_DINO", "--siglip", "REAL_SIGLIP", *FAST]
TRAIN = ["train", "--images", "REFS", "--placeholder", "<t>", "--init-word", "dog", "--steps", "1", "--quiet"]
CASES += [
    # 3. output paths the OS cannot create: checked before any work, for every command
    *[([*argv, "--out", "LONG"], "255 bytes") for argv in (
        ["neighbors", "apple", "--model", "CLIP"], ["norms", "--model", "CLIP"], ["inspect", "EMB", "--model", "CLIP"],
        ["probe-position", "--model", "CLIP"], ["residual-angles", "--model", "CLIP"], ["attenuation", "--model", "CLIP"],
        INTERP, GEN, EVAL, ["compare", "RUN_GOOD"], ["train", "--model", "SD", *TRAIN[1:]])],
    (["reproduce", "--out", "LONG"], "255 bytes"),
    (["convert", "EMB", "--to", "diffusers", "--out", "LONG"], "255 bytes"),
    (["convert", "EMB", "--to", "diffusers", "--out", "PROC_FILE"], "special file system"),
    (["neighbors", "apple", "--model", "CLIP", "--out", "PROC"], "special file system"),
    (["probe-position", "--model", "CLIP", "--max-prompts", "6", "--probe-dir", "PROC"], "special file system"),
    (["train", "--model", "SD", *TRAIN[1:], "--out", "PROC"], "special file system"),
    # 4. the run's own files are not learned embeddings
    *[(argv, "training checkpoint") for argv in (
        ["neighbors", "--embedding", "CKPT", "--model", "CLIP"], ["norms", "--embedding", "CKPT", "--model", "CLIP"],
        ["inspect", "CKPT", "--model", "CLIP"], ["interpolate", "CKPT", "EMB2"], ["convert", "CKPT", "--to", "a1111", "--out", "OUT.safetensors"],
        ["generate", "--model", "SD", "--embedding", "CKPT", "--prompt", "a {}", *FAST],
        ["evaluate", "--model", "SD", "--embedding", "CKPT", "--class-word", "dog", "--reference", "REFS", "--dino", "DINOV2",
         "--siglip", "SIGLIP", *FAST],
        ["probe-position", "--model", "CLIP", "--embedding", "CKPT"], ["residual-angles", "--model", "CLIP", "--embedding", "CKPT"])],
    (["inspect", "CKPT_JSON", "--model", "CLIP"], "sidecar"),
    (["norms", "--embedding", "RESULTS_JSON", "--model", "CLIP"], "not an embedding"),
    # 5. values outside the float32-safe range; tensors that are not dense and real
    (["neighbors", "--embedding", "HUGE", "--model", "CLIP"], "float32-safe range"),
    (["inspect", "HUGE", "--model", "CLIP", "--no-effects"], "float32-safe range"),
    (["interpolate", "HUGE", "EMB"], "float32-safe range"),
    ([*GEN[:4], "HUGE", *GEN[5:]], "float32-safe range"),
    (["norms", "--embedding", "TINY_VALUES", "--model", "CLIP"], "float32-safe range"),
    (["convert", "TINY_VALUES", "--to", "diffusers", "--out", "OUT.safetensors"], "float32-safe range"),
    (["norms", "--embedding", "SPARSE", "--model", "CLIP"], "dense"),
    (["inspect", "COMPLEX", "--model", "CLIP"], "complex"),
    (["neighbors", "--embedding", "META", "--model", "CLIP"], "meta tensor"),
    # 6. pipeline and model folders: one check for train and the rest
    (["train", "--model", "SD_BAD_INDEX", *TRAIN[1:]], "not valid JSON"),
    (["train", "--model", "SD_BROKEN_UNET", *TRAIN[1:]], "not a readable safetensors file"),
    (["generate", "--model", "SD_BAD_INDEX", "--embedding", "EMB", "--prompt", "a {}", *FAST], "not valid JSON"),
    (["train", "--model", "SD", "--images", "BOMB_IMAGES", *TRAIN[3:]], "decompression bomb"),
    (["neighbors", "apple", "--model", "CLIP_ZERO_LAYERS"], "no layers"),
    (["residual-angles", "--model", "CLIP_ZERO_LAYERS"], "no layers"),
    # 7. scorer folders checked before anything is generated
    ([*REAL_EVAL, "--dino", "DINO_GARBAGE"], "not a readable safetensors file"),
    ([*REAL_EVAL, "--dino", "DINO_PICKLE"], "safe loader refuses"),
    ([*REAL_EVAL, "--siglip", "SIGLIP_NO_TOKENIZER"], "no tokenizer files"),
    (["evaluate", "--model", "SD", "--embedding", "EMB", "--class-word", "dog", "--reference", "REFS", "--siglip", "REAL_SIGLIP"],
     "README"),
    # 8. compare reads run files of the wrong types
    (["compare", "RUN_KAPPA_TEXT"], "field 'kappa'"),
    (["compare", "RUN_DRIFT_LIST"], "field 'drift'"),
    (["compare", "RUN_EVAL_TEXT"], "field 'image_similarity'"),
    (["compare", "RUN_LOG_TEXT"], "field 'step'"),
    (["interpolate", "RUN_KAPPA_TEXT", "EMB2"], "field 'kappa'"),  # every reader of a run's results.json checks it
    # 9. options that were ignored or merged
    (["probe-position", "--model", "CLIP", "--load-probe", "DAMAGED_PROBE", "--probe-dir", "DIR"], "drop --probe-dir"),
    (["inspect", "EMB", "--model", "CLIP", "--no-effects", "--word", "cat"], "--no-effects"),
    (["inspect", "EMB", "EMB", "--model", "CLIP"], "given twice"),
    (["convert", "EMB", "--to", "a1111", "--token", "<x>", "--out", "OUT.safetensors"], "file name"),
    (["convert", "EMB", "--to", "diffusers", "--encoder", "2", "--out", "OUT.safetensors"], "drop --encoder"),
    (["convert", "EMB", "--to", "diffusers", "--token", "a b", "--out", "OUT.safetensors"], "spaces"),
    (["compare", "RUN_GOOD", "RUN_GARBAGE_LOG", "--labels", "x", "x"], "given twice"),
    (["generate", "--model", "SD", "--embedding", "EMB", "EMB_SAME_NAME", "--prompt", "a {}", *FAST], "both carry the token"),
    (["generate", "--model", "SD", "--embedding", "EMB", "--prompt", "a photo", *FAST], "neither a '{}' slot"),
    (["train", "--model", "SD", *TRAIN[1:], "--validation-prompt", ""], "empty validation prompt"),
    (["convert", "EMB", "--to", "diffusers", "--token", "\u202edog", "--out", "OUT.safetensors"], "invisible character"),
    ([*INTERP, "--token", "<a\x00>"], "invisible character"),
    # found by the sweep: half an SDXL pair read as a token named clip_l; a pair whose parts differ in count
    (["norms", "--embedding", "SDXL_HALF", "--model", "CLIP"], "holds only clip_l"),
    (["inspect", "SDXL_COUNT", "--model", "CLIP"], "same count"),
    # 10. antipodal tokens
    (["interpolate", "EMB", "EMB_NEG"], "opposite directions"),
    (["interpolate", "EMB", "EMB_NEG", "--mode", "lerp"], "opposite directions"),
    # runs of different kinds do not mix in one folder
    (["neighbors", "apple", "--model", "CLIP", "--out", "NORMS_RUN"], "holds the output of `geomkit norms`"),
    (["train", "--model", "SD", *TRAIN[1:], "--out", "NORMS_RUN"], "holds the output of `geomkit norms`"),  # overwrote its results.json
]
if not torch.cuda.is_available():
    CASES += [
        ([*GEN, "--device", "cuda"], "CUDA is not available"),
        ([*INTERP, "--model", "SD", "--prompt", "a {}", "--device", "cuda"], "CUDA is not available"),
        ([*EVAL, "--device", "cuda"], "CUDA is not available"),
    ]


def _id(case):
    argv, needle = case
    return f"{argv[0]}:{needle}"


@pytest.mark.parametrize("argv,needle", CASES, ids=[_id(c) for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(world, tmp_path, monkeypatch, capsys, argv, needle, one_thread):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    subst = dict(world, OUT=str(out), **{"OUT.safetensors": str(out) + ".safetensors"})
    before = _snapshot(world)
    argv = [subst.get(a, a) for a in argv]
    if argv[0] not in ("reproduce", "frobnicate") and "--out" not in argv:
        argv += ["--out", str(out)]
    code, _stdout, err = run_cli(capsys, *argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err)
    assert len(lines) == 1, err
    assert "Traceback" not in err and needle in lines[0], lines[0]
    assert lines[0].startswith(f"geomkit {argv[0]}: error: " if argv[0] != "frobnicate" else "geomkit: error: ")
    assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    assert not any(cwd.iterdir()), sorted(p.name for p in cwd.rglob("*"))
    assert _snapshot(world) == before  # nothing of the inputs changed, nothing added beside them
    assert not os.path.exists("/tmp/geomkit-pwned")  # no pickle ran


def _snapshot(world) -> dict:
    """Every file under the world's folders: path -> (size, mtime)."""
    from pathlib import Path

    root = Path(world["EMB"]).parent
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_reproduce_redoes_a_step_whose_results_are_damaged(tmp_path):
    """A finished step whose results.json is unreadable is run again, not a crash."""
    from geomkit.reproduce import Step, run_steps

    root, figures = tmp_path / "probes", tmp_path / "figures"
    steps = [Step("neighbors", "minilm-l6", ["neighbors", "apple"]), Step("norms", "minilm-l6", ["norms"])]
    for s in steps:
        (root / s.model / s.name).mkdir(parents=True)
        (root / s.model / s.name / "results.json").write_text("{}")
    (root / "minilm-l6" / "norms" / "results.json").write_text('{"cut off')
    (root / "minilm-l6" / "norms" / "step.json").write_text("garbage")
    ran = []

    def runner(argv):
        out = argv[argv.index("--out") + 1]
        ran.append(argv[0])
        (tmp_path / "probes" / "minilm-l6" / argv[0]).mkdir(parents=True, exist_ok=True)
        with open(f"{out}/results.json", "w") as f:
            f.write("{}")
        return 0

    status = run_steps(steps, root, figures, runner=runner, log=lambda *a: None)
    assert ran == ["norms"]
    assert [s["status"] for s in status] == ["reused", "ran"]
    assert json.loads((root / "minilm-l6" / "norms" / "results.json").read_text()) == {}


def test_negative_looking_values_reach_the_option(capsys):
    """`--scales -1,2` is a value (refused by the option's check), not an unknown option."""
    from geomkit.cli import build_parser

    args = build_parser().parse_args(["attenuation", "--scales", "0.5,2"])
    assert args.scales == [0.5, 2.0]
    code, _, err = run_cli(capsys, "attenuation", "--scales", "-1,2")
    assert code == 2 and "expected one argument" not in err and "positive" in err
