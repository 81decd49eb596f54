"""A sweep of hostile and mistaken inputs across every geomkit command (issue 19), on tiny random
models: each case runs `geomkit` in-process and is classed as

- traceback     an exception other than GeomkitError escaped (or exit status 1);
- data_loss     a file that existed before the case (an input, another run's output) changed or vanished;
- left_behind   the case failed but left its --out folder, or files in the current folder;
- multi_line    the case failed with more (or less) than one line on stderr;
- handled_well  exit 2 with one line saying what was wrong, or exit 0 with a result (an unusual but
                valid input).

    .venv/bin/python benchmarks/sweep_bad_inputs.py [--json OUT.json] [--only SUBSTRING]

Prints the counts by class and every case that was not handled well; exit status 1 if any was not.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("GEOMKIT_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---- the world: files and folders the cases name -----------------------------------------------
def build_world(root: Path) -> dict:
    import pickle
    import struct
    import zlib

    import torch
    from PIL import Image

    from geomkit import tiny
    from geomkit.embeddings_io import save_learned, save_sdxl_pair

    w = {}
    models = root / "models"
    for kind in ("clip", "bert", "sd", "sdxl", "gemma3"):
        w[kind.upper()] = str(tiny.cached_dir(kind, str(models)))
    for kind in ("dinov2", "siglip", "clipmodel"):
        w[kind.upper()] = str(tiny.cached_scorer_dir(kind, str(models / "scorers")))
    emb = root / "emb"
    emb.mkdir()
    g = torch.Generator().manual_seed(0)

    def vec(d=32, n=1, m=0.4):
        v = torch.randn(n, d, generator=g)
        return v / v.norm(dim=-1, keepdim=True) * m

    save_learned(emb / "a.safetensors", "<a>", vec())
    save_learned(emb / "b.safetensors", "<b>", vec())
    save_learned(emb / "multi.safetensors", "<multi>", vec(n=3))
    save_sdxl_pair(emb / "pair.safetensors", vec(32), vec(48), token="<pair>")
    w.update(EMB=str(emb / "a.safetensors"), EMB2=str(emb / "b.safetensors"), MULTI=str(emb / "multi.safetensors"),
             PAIR=str(emb / "pair.safetensors"))
    torch.save({"string_to_param": {"*": vec()}, "name": "<a1111>", "step": 100}, emb / "a1111.pt")
    w["A1111"] = str(emb / "a1111.pt")

    bad = {}  # name -> path of an embedding file that must be refused (or, where noted, accepted)

    def st(name, tensors, meta=None):
        from safetensors.torch import save_file

        save_file(tensors, str(emb / name), metadata=meta)
        bad[name.split(".")[0].upper()] = str(emb / name)

    def pt(name, obj):
        torch.save(obj, emb / name)
        bad[name.split(".")[0].upper()] = str(emb / name)

    def raw(name, data: bytes):
        (emb / name).write_bytes(data)
        bad[name.split(".")[0].upper()] = str(emb / name)

    st("nan.safetensors", {"<x>": torch.full((1, 32), float("nan"))})
    st("inf.safetensors", {"<x>": torch.full((1, 32), float("inf"))})
    st("huge.safetensors", {"<x>": torch.full((1, 32), 1e30)})
    st("big.safetensors", {"<x>": torch.full((1, 32), 1e7)})
    st("zeros.safetensors", {"<x>": torch.zeros(1, 32)})
    st("onezero.safetensors", {"<x>": torch.cat([vec(), torch.zeros(1, 32)])})
    st("novectors.safetensors", {"<x>": torch.zeros(0, 32)})
    st("emptyvec.safetensors", {"<x>": torch.zeros(1, 0)})
    st("rank3.safetensors", {"<x>": torch.randn(1, 2, 32)})
    st("scalar.safetensors", {"<x>": torch.tensor(1.0)})
    st("wrongdim.safetensors", {"<x>": vec(7)})
    st("twokeys.safetensors", {"<x>": vec(), "<y>": vec()})
    st("empty-dict.safetensors", {})
    st("bool.safetensors", {"<x>": torch.ones(1, 32, dtype=torch.bool)})
    st("int.safetensors", {"<x>": torch.randint(1, 5, (1, 32))})
    st("fp16.safetensors", {"<x>": vec().half()})
    st("bf16.safetensors", {"<x>": vec().bfloat16()})
    st("float64.safetensors", {"<x>": vec().double()})
    st("ckpt.safetensors", {"param.0": vec()[0], "opt.0.step": torch.tensor(1.0)}, {"format": "geomkit-train-checkpoint", "step": "5"})
    st("ckpt-nometa.safetensors", {"param.0": vec()[0], "opt.0.exp_avg": vec()[0]})
    st("probe.safetensors", {"net.0.weight": torch.randn(4, 32)}, {"format": "geomkit-position-probe/1"})
    st("sdxl-half.safetensors", {"clip_l": vec(32)})
    st("sdxl-same-dims.safetensors", {"clip_l": vec(32), "clip_g": vec(32)})
    st("sdxl-count.safetensors", {"clip_l": vec(32, 2), "clip_g": vec(48)})
    st("emb-params-bad.safetensors", {"emb_params": torch.zeros(1, 32)})
    pt("tiny.pt", {"<x>": torch.full((1, 32), 1e-45, dtype=torch.float64)})
    pt("sparse.pt", {"<x>": torch.eye(1, 32).to_sparse()})
    pt("complex.pt", {"<x>": torch.randn(1, 32, dtype=torch.complex64)})
    pt("meta.pt", {"<x>": torch.empty(1, 32, device="meta")})
    pt("list.pt", [vec()])
    pt("int-obj.pt", 5)
    pt("str-val.pt", {"<x>": "not a tensor"})
    pt("nested.pt", {"<x>": {"deeper": vec()}})
    pt("a1111-empty.pt", {"string_to_param": {}})
    pt("a1111-two.pt", {"string_to_param": {"*": vec(), "+": vec()}})
    pt("a1111-notdict.pt", {"string_to_param": [vec()]})
    pt("bare-tensor.pt", vec())

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {root}/PWNED",))

    with open(emb / "evil.pt", "wb") as fh:
        pickle.dump({"<x>": Evil()}, fh)
    bad["EVIL"] = str(emb / "evil.pt")
    raw("empty.safetensors", b"")
    raw("garbage.safetensors", os.urandom(200))
    raw("truncated.safetensors", (emb / "a.safetensors").read_bytes()[:60])
    raw("header-huge.safetensors", (10 ** 9).to_bytes(8, "little") + b"{}")
    raw("header-notjson.safetensors", (5).to_bytes(8, "little") + b"{abc}")
    raw("garbage.pt", b"\x80\x04garbage")
    raw("zip-junk.pt", b"PK\x03\x04" + os.urandom(64))
    raw("text.safetensors", b"hello world\n")
    raw("results.json", json.dumps({"method": "dti", "model": "m", "placeholder": "<a>"}).encode())
    raw("config.json", json.dumps({"method": "dti"}).encode())
    raw("train_log.jsonl", b'{"step": 1, "loss": 1.0}\n')
    raw("step-000002.json", b'{"step": 2}')
    raw("image.png", b"\x89PNG\r\n\x1a\n")
    raw("utf16.safetensors", "{}".encode("utf-16"))
    w["BAD"] = bad

    (root / "file.txt").write_text("not a folder\n")
    w["FILE"] = str(root / "file.txt")
    (root / "folder").mkdir()
    w["DIR"] = str(root / "folder")
    os.symlink(root / "loop-b", root / "loop-a")
    os.symlink(root / "loop-a", root / "loop-b")
    w["LOOP"] = str(root / "loop-a")
    os.symlink(root / "nowhere", root / "dangling")
    w["DANGLING"] = str(root / "dangling")
    (root / "binary.txt").write_bytes(bytes(range(128, 256)))
    w["BINARY"] = str(root / "binary.txt")
    (root / "empty.txt").write_text("")
    w["EMPTY_TXT"] = str(root / "empty.txt")
    (root / "comments.txt").write_text("# only\n# comments\n")
    w["COMMENTS"] = str(root / "comments.txt")
    (root / "noslot.txt").write_text("a photo\nanother photo\n")
    w["NOSLOT"] = str(root / "noslot.txt")
    (root / "twoslots.txt").write_text("a {} and a {}\n")
    w["TWOSLOTS"] = str(root / "twoslots.txt")
    (root / "long-line.txt").write_text("a {} " + "word " * 5000 + "\n")
    w["LONGLINE"] = str(root / "long-line.txt")

    # model folders, damaged in the ways people damage them
    def model_copy(src, name, edit):
        d = root / "bad-models" / name
        shutil.copytree(w[src], d)
        edit(d)
        w[f"M_{name.upper().replace('-', '_')}"] = str(d)

    def cfg_edit(**kw):
        def edit(d):
            c = json.loads((d / "config.json").read_text())
            c.update(kw)
            (d / "config.json").write_text(json.dumps(c))
        return edit

    model_copy("CLIP", "badjson", lambda d: (d / "config.json").write_text("{"))
    model_copy("CLIP", "list-json", lambda d: (d / "config.json").write_text("[1, 2]"))
    model_copy("CLIP", "noweights", lambda d: [f.unlink() for f in d.glob("*.safetensors")])
    model_copy("CLIP", "garbage-weights", lambda d: (d / "model.safetensors").write_bytes(b"garbage"))
    model_copy("CLIP", "notokenizer", lambda d: [f.unlink() for f in d.iterdir() if f.name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json")])
    model_copy("CLIP", "unknown-type", cfg_edit(model_type="frobnicator"))
    model_copy("CLIP", "arch-tokenizer", cfg_edit(architectures=["CLIPTokenizer"]))
    model_copy("CLIP", "arch-string", cfg_edit(architectures="CLIPTextModel"))
    model_copy("CLIP", "zero-layers", cfg_edit(num_hidden_layers=0))
    model_copy("CLIP", "wrong-hidden", cfg_edit(hidden_size=48))
    model_copy("CLIP", "type-number", cfg_edit(model_type=5))
    model_copy("SD", "bad-index", lambda d: (d / "model_index.json").write_text('{"_class_name": '))
    model_copy("SD", "index-list", lambda d: (d / "model_index.json").write_text("[]"))
    model_copy("SD", "broken-unet", lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b""))
    model_copy("SD", "unet-badcfg", lambda d: (d / "unet" / "config.json").write_text("{"))
    model_copy("SD", "no-unet", lambda d: shutil.rmtree(d / "unet"))
    model_copy("SD", "no-tokenizer", lambda d: shutil.rmtree(d / "tokenizer"))
    model_copy("SD", "te-garbage", lambda d: (d / "text_encoder" / "model.safetensors").write_bytes(b"x" * 10))
    for kind, src in (("dino", "DINOV2"), ("siglip", "SIGLIP")):
        model_copy(src, f"{kind}-garbage", lambda d: [f.write_bytes(b"\x10" + b"\0" * 7 + b"{junk") for f in d.glob("*.safetensors")])
        model_copy(src, f"{kind}-badcfg", lambda d: (d / "config.json").write_text("{"))
        model_copy(src, f"{kind}-nopre", lambda d: (d / "preprocessor_config.json").unlink())

        def pickled(d):
            for f in d.glob("*.safetensors"):
                f.unlink()
            with open(d / "pytorch_model.bin", "wb") as fh:
                pickle.dump({"w": Evil()}, fh)
        model_copy(src, f"{kind}-pickle", pickled)
    model_copy("SIGLIP", "siglip-notok", lambda d: [f.unlink() for f in d.iterdir() if "token" in f.name or f.name.endswith((".model", "vocab.json"))])
    model_copy("SIGLIP", "siglip-as-dino", lambda d: None)

    # images
    imgs = root / "images"
    imgs.mkdir()
    Image.new("RGB", (16, 16), "red").save(imgs / "r.png")
    Image.new("RGB", (20, 12), "blue").save(imgs / "b.jpg")
    w["IMAGES"] = str(imgs)

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    for name, data in (
        ("bomb", b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0))
         + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")),
        ("broken", b"not an image"),
        ("truncated", (imgs / "r.png").read_bytes()[:30]),
        ("empty", b""),
    ):
        d = root / f"images-{name}"
        d.mkdir()
        (d / f"{name}.png").write_bytes(data)
        w[f"IMAGES_{name.upper()}"] = str(d)
    (root / "images-none").mkdir()
    (root / "images-none" / "readme.txt").write_text("no images here")
    w["IMAGES_NONE"] = str(root / "images-none")
    d = root / "images-tiny"
    d.mkdir()
    Image.new("RGB", (1, 1), "red").save(d / "p.png")
    Image.new("L", (8, 8), 3).save(d / "gray.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 0)).save(d / "alpha.png")
    w["IMAGES_ODD"] = str(d)

    # run folders with damaged or mistyped files
    def run_dir(name, results=None, files=True, ev=None, log=None, config=None):
        r = root / "runs" / name
        r.mkdir(parents=True)
        if files:
            save_learned(r / "learned_embeds.safetensors", "<r>", vec())
        if results is not None:
            (r / "results.json").write_text(results if isinstance(results, str) else json.dumps(results))
        if ev is not None:
            (r / "eval").mkdir()
            (r / "eval" / "results.json").write_text(ev if isinstance(ev, str) else json.dumps(ev))
        if log is not None:
            (r / "train_log.jsonl").write_text(log)
        if config is not None:
            (r / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
        w[f"RUN_{name.upper().replace('-', '_')}"] = str(r)

    ok = {"method": "dti", "model": w["CLIP"], "placeholder": "<r>", "init_word": "dog"}
    run_dir("good", ok)
    run_dir("good2", dict(ok, method="ti"))
    run_dir("no-results", None)
    run_dir("results-garbage", "{not json")
    run_dir("results-list", "[1, 2]")
    run_dir("results-missing-keys", {"method": "dti"})
    run_dir("no-embeds", ok, files=False)
    run_dir("kappa-text", dict(ok, kappa="high"))
    run_dir("mstar-dict", dict(ok, m_star={"a": 1}))
    run_dir("drift-list", dict(ok, drift=[1, 2]))
    run_dir("steps-text", dict(ok, steps="many"))
    run_dir("final-norm-text", dict(ok, final_norm="big"))
    run_dir("seconds-nan", '{"method": "dti", "model": "m", "placeholder": "<r>", "seconds": NaN}')
    run_dir("eval-text", ok, ev={"image_similarity": "good"})
    run_dir("eval-garbage", ok, ev="{x")
    run_dir("eval-list", ok, ev="[]")
    run_dir("log-garbage", ok, log="garbage\n{x\n")
    run_dir("log-text-step", ok, log='{"step": "one", "loss": 1}\n')
    run_dir("log-nosteps", ok, log='{"loss": 1}\n')
    run_dir("log-binary", ok, log="")
    (Path(w["RUN_LOG_BINARY"]) / "train_log.jsonl").write_bytes(b"\xff\xfe{not utf-8}\n")
    run_dir("config-list", ok, config="[]")
    run_dir("config-lr-text", ok, config={"lr": "fast"})
    run_dir("model-elsewhere", dict(ok, model="/nowhere/model"))
    run_dir("method-number", dict(ok, method=5))
    run_dir("placeholder-number", dict(ok, placeholder=7))
    run_dir("placeholder-list", dict(ok, placeholder=["<r>"]))
    run_dir("model-number", dict(ok, model=3))

    others = root / "other-runs"
    for name, files in (("norms", ["norms.csv"]), ("neighbors", ["neighbors.csv"]), ("train", ["train_log.jsonl"]),
                        ("inspect", ["inspect.png"])):
        d = others / name
        d.mkdir(parents=True)
        for f in files:
            (d / f).write_text("x")
        (d / "results.json").write_text("{}")
        w[f"OTHER_{name.upper()}"] = str(d)
    return w


# ---- the cases ----------------------------------------------------------------------------------
def cases(w: dict) -> list[tuple[str, list]]:
    out: list[tuple[str, list]] = []
    bad = w["BAD"]
    FAST = ["--steps", "1", "--size", "32", "--seeds", "0", "--no-progress"]

    def add(label, argv):
        out.append((label, [str(a) for a in argv]))

    # every bad embedding file through every command that reads one
    readers = {
        "neighbors": lambda f: ["neighbors", "--embedding", f, "--model", w["CLIP"]],
        "norms": lambda f: ["norms", "--embedding", f, "--model", w["CLIP"]],
        "inspect": lambda f: ["inspect", f, "--model", w["CLIP"], "--no-effects"],
        "interpolate": lambda f: ["interpolate", f, w["EMB2"]],
        "convert": lambda f: ["convert", f, "--to", "diffusers", "--out", "{OUT}.safetensors"],
        "generate": lambda f: ["generate", "--model", w["SD"], "--embedding", f, "--prompt", "a {}", *FAST],
        "residual-angles": lambda f: ["residual-angles", "--model", w["CLIP"], "--embedding", f, "--max-prompts", "2", "--scales", "1"],
    }
    for name, path in sorted(bad.items()):
        for cmd, make in readers.items():
            add(f"{cmd} embedding {name}", make(path))
    for name in ("NAN", "HUGE", "TINY", "CKPT", "EVIL", "SPARSE", "TRUNCATED", "RESULTS", "WRONGDIM"):
        add(f"probe-position embedding {name}", ["probe-position", "--model", w["CLIP"], "--embedding", bad[name], "--max-prompts", "8"])
        add(f"evaluate embedding {name}", ["evaluate", "--model", w["SD"], "--embedding", bad[name], "--class-word", "dog",
                                            "--reference", w["IMAGES"], "--dino", w["DINOV2"], "--siglip", w["SIGLIP"], *FAST])

    # output paths, for every command
    LONG = str(Path(tempfile.gettempdir()) / ("x" * 300))
    base = {
        "neighbors": ["neighbors", "apple", "--model", w["CLIP"]],
        "norms": ["norms", "--model", w["CLIP"]],
        "inspect": ["inspect", w["EMB"], "--model", w["CLIP"], "--no-effects"],
        "probe-position": ["probe-position", "--model", w["CLIP"], "--max-prompts", "8", "--epochs", "1"],
        "residual-angles": ["residual-angles", "--model", w["CLIP"], "--max-prompts", "2"],
        "attenuation": ["attenuation", "--model", w["CLIP"], "--tokens", "4"],
        "interpolate": ["interpolate", w["EMB"], w["EMB2"]],
        "generate": ["generate", "--model", w["SD"], "--embedding", w["EMB"], "--prompt", "a {}", *FAST],
        "evaluate": ["evaluate", "--model", w["SD"], "--embedding", w["EMB"], "--class-word", "dog", "--reference", w["IMAGES"],
                     "--dino", w["DINOV2"], "--siglip", w["SIGLIP"], *FAST],
        "compare": ["compare", w["RUN_GOOD"]],
        "train": ["train", "--model", w["GEMMA3"], "--texts", "glimmerfox", "--placeholder", "<glimmerfox>", "--init-word", "fox",
                  "--steps", "1", "--batch-size", "1", "--quiet"],
    }
    for cmd, argv in base.items():
        for label, target in (("long name", LONG), ("long nested", LONG + "/sub"), ("proc", "/proc/geomkit-x"),
                              ("sys", "/sys/geomkit-x"), ("dev", "/dev/geomkit-x"), ("a file", w["FILE"]),
                              ("under a file", w["FILE"] + "/sub"), ("empty", ""), ("dangling link", w["DANGLING"]),
                              ("link loop", w["LOOP"] + "/sub")):
            add(f"{cmd} --out {label}", [*argv, "--out", target])
    for cmd, other in (("neighbors", "OTHER_NORMS"), ("norms", "OTHER_NEIGHBORS"), ("inspect", "OTHER_TRAIN"),
                       ("attenuation", "OTHER_INSPECT"), ("compare", "OTHER_NORMS"), ("interpolate", "OTHER_NEIGHBORS"),
                       ("train", "OTHER_NORMS")):
        add(f"{cmd} --out another kind of run ({other})", [*base[cmd], "--out", w[other]])
    for label, target in (("long", LONG + ".safetensors"), ("proc", "/proc/x/o.safetensors"), ("folder", w["DIR"]),
                          ("under a file", w["FILE"] + "/o.safetensors"), ("dev null", "/dev/null"), ("not safetensors", "{OUT}.pt"),
                          ("itself", w["EMB"]), ("empty", "")):
        add(f"convert --out {label}", ["convert", w["EMB"], "--to", "diffusers", "--out", target])
    add("probe-position --probe-dir proc", [*base["probe-position"], "--probe-dir", "/proc/x"])
    add("probe-position --probe-dir long", [*base["probe-position"], "--probe-dir", LONG])
    add("reproduce --out long", ["reproduce", "--quick", "--out", LONG])
    add("reproduce --results proc", ["reproduce", "--quick", "--results", "/proc/x"])

    # input paths that are not what they claim
    for label, target in (("missing", "/nowhere/x"), ("long", LONG), ("folder", w["DIR"]), ("link loop", w["LOOP"]),
                          ("dangling", w["DANGLING"]), ("empty", ""), ("dev null", "/dev/null")):
        add(f"neighbors --embedding {label}", ["neighbors", "--embedding", target, "--model", w["CLIP"]])
        add(f"inspect FILE {label}", ["inspect", target, "--model", w["CLIP"]])
        add(f"residual-angles --prompts {label}", ["residual-angles", "--model", w["CLIP"], "--prompts", target])
        add(f"--model {label}", ["norms", "--model", target])
        add(f"compare RUN {label}", ["compare", target])
    for f in ("BINARY", "EMPTY_TXT", "COMMENTS", "NOSLOT", "TWOSLOTS", "LONGLINE"):
        add(f"residual-angles --prompts {f}", ["residual-angles", "--model", w["CLIP"], "--prompts", w[f], "--scales", "1"])
        add(f"probe-position --prompts {f}", ["probe-position", "--model", w["CLIP"], "--prompts", w[f], "--epochs", "1"])
        add(f"generate --prompts {f}", ["generate", "--model", w["SD"], "--embedding", w["EMB"], "--prompts", w[f], *FAST])
        add(f"evaluate --prompts {f}", [*base["evaluate"], "--prompts", w[f]])
        add(f"train --texts {f}", ["train", "--model", w["GEMMA3"], "--texts", w[f], "--placeholder", "<t>", "--init-word", "fox",
                                   "--steps", "1", "--quiet"])

    # model folders
    for key in sorted(k for k in w if k.startswith("M_") and not any(s in k for s in ("DINO", "SIGLIP"))):
        cmd = ["neighbors", "apple"] if "SD" not in key and "INDEX" not in key and "UNET" not in key else ["generate", "--embedding", w["EMB"], "--prompt", "a {}", *FAST]
        add(f"{cmd[0]} --model {key}", [*cmd, "--model", w[key]])
        add(f"norms --model {key}", ["norms", "--model", w[key]])
        if any(s in key for s in ("INDEX", "UNET", "TE_", "NO_")):
            add(f"train --model {key}", ["train", "--model", w[key], "--images", w["IMAGES"], "--placeholder", "<t>",
                                         "--init-word", "dog", "--steps", "1", "--quiet"])
    for key in sorted(k for k in w if k.startswith("M_") and ("DINO" in k or "SIGLIP" in k)):
        flag = "--siglip" if "SIGLIP" in key and "AS_DINO" not in key else "--dino"
        add(f"evaluate {flag} {key}", [*base["evaluate"], flag, w[key]])
    add("evaluate without --dino", ["evaluate", "--model", w["SD"], "--embedding", w["EMB"], "--class-word", "dog",
                                     "--reference", w["IMAGES"], "--siglip", w["SIGLIP"], *FAST])
    add("evaluate without a text scorer", ["evaluate", "--model", w["SD"], "--embedding", w["EMB"], "--class-word", "dog",
                                           "--reference", w["IMAGES"], "--dino", w["DINOV2"], *FAST])
    add("evaluate siglip as dino", [*base["evaluate"], "--dino", w["SIGLIP"]])

    # images
    for key in ("IMAGES_BOMB", "IMAGES_BROKEN", "IMAGES_TRUNCATED", "IMAGES_EMPTY", "IMAGES_NONE", "IMAGES_ODD"):
        add(f"train --images {key}", ["train", "--model", w["SD"], "--images", w[key], "--placeholder", "<t>", "--init-word", "dog",
                                      "--steps", "1", "--resolution", "32", "--quiet"])
        add(f"evaluate --reference {key}", [*base["evaluate"][:9], w[key], *base["evaluate"][10:]])

    # run folders
    runs = sorted(k for k in w if k.startswith("RUN_"))
    for key in runs:
        add(f"compare {key}", ["compare", w[key]])
        add(f"interpolate run {key}", ["interpolate", w[key], w["EMB2"]])
        add(f"generate --run {key}", ["generate", "--run", w[key], "--model", w["SD"], "--prompt", "a {}", *FAST])
    add("compare duplicate labels", ["compare", w["RUN_GOOD"], w["RUN_GOOD2"], "--labels", "x", "x"])
    add("compare wrong number of labels", ["compare", w["RUN_GOOD"], w["RUN_GOOD2"], "--labels", "x"])
    add("compare the same run twice", ["compare", w["RUN_GOOD"], w["RUN_GOOD"]])
    add("compare --related unknown word", ["compare", w["RUN_GOOD"], "--related", "\U0001F98A\U0001F98A"])

    # numbers, words and options
    numbers = ("0", "-1", "nan", "inf", "-inf", "1e300", "abc", "", "99999999999999999999", "1.5", "0x10")
    for opt, argv in (("-k", base["neighbors"]), ("--bins", base["norms"]), ("--tokens", base["attenuation"]),
                      ("--epochs", base["probe-position"]), ("--scales", base["residual-angles"]), ("--ratios", base["interpolate"]),
                      ("--guidance", base["generate"]), ("--seeds", base["generate"]), ("--held-out", base["probe-position"]),
                      ("--steps", base["train"]), ("--lr", base["train"]), ("--kappa", base["train"]), ("--resolution", base["generate"])):
        for value in numbers:
            add(f"{argv[0]} {opt} {value!r}", [*argv, opt, value])
    for word in ("", " ", "\U0001F98A", "狐", "a" * 3000, "\x00", "dog cat", "\u202edog", "<|endoftext|>", "[UNK]", "-dog"):
        add(f"neighbors word {word[:10]!r}", ["neighbors", word, "--model", w["CLIP"]])
        add(f"residual-angles --words {word[:10]!r}", ["residual-angles", "--model", w["CLIP"], "--words", word, "--max-prompts", "2"])
        add(f"interpolate --token {word[:10]!r}", ["interpolate", w["EMB"], w["EMB2"], "--token", word])
        add(f"convert --token {word[:10]!r}", ["convert", w["EMB"], "--to", "diffusers", "--token", word, "--out", "{OUT}.safetensors"])
        add(f"train --placeholder {word[:10]!r}", [*base["train"], "--placeholder", word])
    # options that would be ignored or merged
    add("probe-position --probe-dir with --load-probe", [*base["probe-position"][:5], "--load-probe", w["DIR"], "--probe-dir", "{OUT}-p"])
    add("inspect --word under --no-effects", [*base["inspect"], "--word", "cat"])
    add("inspect --templates under --no-effects", [*base["inspect"], "--templates", w["TWOSLOTS"]])
    add("inspect the same file twice", ["inspect", w["EMB"], w["EMB"], "--model", w["CLIP"], "--no-effects"])
    add("convert --token to a1111", ["convert", w["A1111"], "--to", "a1111", "--token", "<x>", "--out", "{OUT}.safetensors"])
    add("convert --encoder 2 one-encoder", ["convert", w["EMB"], "--to", "diffusers", "--encoder", "2", "--out", "{OUT}.safetensors"])
    add("convert --encoder with sdxl", ["convert", w["PAIR"], "--to", "sdxl", "--encoder", "1", "--out", "{OUT}.safetensors"])
    add("convert pair without --encoder", ["convert", w["PAIR"], "--to", "a1111", "--out", "{OUT}.safetensors"])
    add("convert two files to diffusers", ["convert", w["EMB"], w["EMB2"], "--to", "diffusers", "--out", "{OUT}.safetensors"])
    add("convert sdxl from same dims", ["convert", w["EMB"], w["EMB2"], "--to", "sdxl", "--out", "{OUT}.safetensors"])
    add("generate no {} slot", ["generate", "--model", w["SD"], "--embedding", w["EMB"], "--prompt", "a photo", *FAST])
    add("generate {5} slot", ["generate", "--model", w["SD"], "--embedding", w["EMB"], "--prompt", "a {5}", *FAST])
    add("generate same token twice", ["generate", "--model", w["SD"], "--embedding", w["EMB"], w["EMB"], "--prompt", "a {}", *FAST])
    add("generate --token count", ["generate", "--model", w["SD"], "--embedding", w["EMB"], "--token", "<x>", "<y>", "--prompt", "a {}", *FAST])
    add("generate no prompt", ["generate", "--model", w["SD"], "--embedding", w["EMB"], *FAST])
    add("generate text model", ["generate", "--model", w["CLIP"], "--embedding", w["EMB"], "--prompt", "a {}", *FAST])
    add("generate sdxl half token", ["generate", "--model", w["SDXL"], "--embedding", w["EMB"], "--prompt", "a {}", *FAST])
    add("train --validation-prompt empty", [*base["train"], "--validation-prompt", ""])
    add("train both objectives' options", [*base["train"], "--images", w["IMAGES"]])
    add("train --report-to bogus", [*base["train"], "--report-to", "bogus"])
    add("train --resume nothing", ["train", "--out", "{OUT}", "--resume"])
    add("interpolate antipodal slerp", ["interpolate", w["EMB"], "{NEG}"])
    add("interpolate antipodal lerp", ["interpolate", w["EMB"], "{NEG}", "--mode", "lerp"])
    add("interpolate same file", ["interpolate", w["EMB"], w["EMB"]])
    add("interpolate pair with single", ["interpolate", w["PAIR"], w["EMB"]])
    add("interpolate multi with single", ["interpolate", w["MULTI"], w["EMB"]])
    add("interpolate --model without --prompt", ["interpolate", w["EMB"], w["EMB2"], "--model", w["SD"]])
    add("interpolate --prompt without slot", ["interpolate", w["EMB"], w["EMB2"], "--model", w["SD"], "--prompt", "a cat"])
    add("reproduce unknown step", ["reproduce", "--only", "frobnicate", "--out", "{OUT}"])
    add("reproduce unknown model", ["reproduce", "--models", "gpt5", "--out", "{OUT}"])
    add("no command", [])
    add("unknown command", ["frobnicate"])
    add("unknown option", ["norms", "--frobnicate", "--model", w["CLIP"]])
    return out


# ---- running and classing -----------------------------------------------------------------------
def _digest(root: Path) -> dict:
    out = {}
    for p in root.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                out[str(p)] = hashlib.sha1(p.read_bytes()).hexdigest()
        except OSError:
            pass
    return out


def run_case(argv: list, out: Path, cwd: Path, world_root: Path, w: dict) -> dict:
    from geomkit.cli import main

    subst = {"{OUT}": str(out), "{NEG}": w["NEG"]}

    def fill(a):
        for k, v in subst.items():
            a = a.replace(k, v)
        return a

    argv = [fill(a) for a in argv]
    if argv and argv[0] not in ("reproduce", "convert", "frobnicate") and "--out" not in argv and argv[0] != "train" or (
            argv and argv[0] == "train" and "--out" not in argv):
        argv = [*argv, "--out", str(out)]
    before = _digest(world_root)
    err, std = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    t = time.perf_counter()
    tb = None
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(std):
            code = main(argv)
    except SystemExit as exc:  # noqa: PERF203
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001
        code, tb = 1, traceback.format_exc()
    finally:
        os.chdir(old)
    secs = time.perf_counter() - t
    after = _digest(world_root)
    changed = sorted(k for k in before if before[k] != after.get(k))
    added = sorted(k for k in after if k not in before)
    text = err.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    left = []
    if code != 0:
        if out.exists():
            left += [str(p) for p in out.rglob("*")] or [str(out)]
        for extra in (Path(str(out) + ".safetensors"), Path(str(out) + "-p")):
            if extra.exists():
                left.append(str(extra))
        left += [str(p) for p in cwd.rglob("*")]
        left += added
    if tb or code == 1 or "Traceback" in text:
        cls = "traceback"
    elif changed or (world_root / "PWNED").exists():
        cls = "data_loss"
    elif left:
        cls = "left_behind"
    elif code not in (0, 2):
        cls = "other_exit"
    elif code == 2 and len(lines) != 1:
        cls = "multi_line"
    else:
        cls = "handled_well"
    return {"argv": argv, "code": code, "class": cls, "stderr": text[-600:], "traceback": (tb or "")[-1500:],
            "changed": changed, "left": left[:5], "seconds": round(secs, 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write every case's outcome here")
    ap.add_argument("--only", default=None, help="run only the cases whose label holds this text")
    ap.add_argument("--keep", action="store_true", help="keep the temporary world")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="geomkit-sweep-"))
    try:
        t0 = time.perf_counter()
        w = build_world(tmp / "world")
        from geomkit.embeddings_io import read_embedding, save_learned

        save_learned(tmp / "world" / "emb" / "neg.safetensors", "<neg>", -next(iter(read_embedding(w["EMB"]).parts.values())))
        w["NEG"] = str(tmp / "world" / "emb" / "neg.safetensors")
        todo = [(label, a) for label, a in cases(w) if not args.only or args.only in label]
        print(f"{len(todo)} cases; world built in {time.perf_counter() - t0:.0f} s", flush=True)
        results = []
        for i, (label, a) in enumerate(todo):
            out, cwd = tmp / "cases" / f"{i:04d}" / "out", tmp / "cases" / f"{i:04d}" / "cwd"
            cwd.mkdir(parents=True)
            r = run_case(a, out, cwd, tmp / "world", w)
            r["label"] = label
            results.append(r)
            if r["class"] != "handled_well":
                print(f"  [{r['class']}] {label}: {(r['traceback'] or r['stderr']).strip().splitlines()[-1:] or r['left']}", flush=True)
            shutil.rmtree(tmp / "cases" / f"{i:04d}", ignore_errors=True)
        counts = {}
        for r in results:
            counts[r["class"]] = counts.get(r["class"], 0) + 1
        by_cmd = {}
        for r in results:
            cmd = r["argv"][0] if r["argv"] else "(none)"
            by_cmd[cmd] = by_cmd.get(cmd, 0) + 1
        print(f"\n{len(results)} cases in {time.perf_counter() - t0:.0f} s across {len(by_cmd)} commands: "
              + ", ".join(f"{k} {v}" for k, v in sorted(by_cmd.items())))
        for cls in ("traceback", "data_loss", "left_behind", "multi_line", "other_exit", "handled_well"):
            print(f"  {cls:13s} {counts.get(cls, 0)}")
        ok = sum(1 for r in results if r["code"] == 0)
        print(f"  (handled_well: {counts.get('handled_well', 0) - ok} refused in one line, {ok} accepted with a result)")
        if args.json:
            Path(args.json).write_text(json.dumps({"counts": counts, "by_command": by_cmd, "cases": results}, indent=1))
        return 0 if counts.get("handled_well", 0) == len(results) else 1
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
