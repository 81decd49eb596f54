"""README promises a newcomer relies on: every file a command writes lies inside its --out, a
repo id from the Hugging Face cache is labelled org/name (not its snapshot hash), `compare` names
its text metric and refuses mixed ones, one flag name for the image size (with the old alias),
tables aligned by display width. Tiny random models only: no number here is a finding."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from geomkit.cli import build_parser
from helpers import assert_one_line_error, run_cli


def _files(root: Path) -> set:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


# ---- --out holds everything a command writes ---------------------------------------------------
def test_commands_write_nothing_outside_out(tiny_dir, tiny_root, tmp_path, capsys, monkeypatch, one_thread):
    """Each command runs in an empty working folder with its inputs elsewhere: afterwards every new
    file is under its --out and the input folder is unchanged."""
    import numpy as np
    from PIL import Image

    from geomkit import tiny
    from geomkit.embeddings_io import save_learned
    from geomkit.models import load_encoder

    inputs, cwd = tmp_path / "inputs", tmp_path / "cwd"
    inputs.mkdir()
    cwd.mkdir()
    clip = str(tiny_dir("clip"))
    enc = load_encoder(clip)
    for name, word in (("a", "cat"), ("b", "dog")):
        save_learned(inputs / f"{name}.safetensors", f"<{name}>", enc.embedding_table()[enc.token_id(word)][None] * 3)
    a, b = inputs / "a.safetensors", inputs / "b.safetensors"
    refs = inputs / "refs"
    refs.mkdir()
    for i in range(2):
        Image.fromarray(np.full((24, 24, 3), 40 * (i + 1), dtype="uint8")).save(refs / f"r{i}.png")
    prompts = inputs / "prompts.txt"
    prompts.write_text("a {} on a table\na photo of {}\n")
    monkeypatch.chdir(cwd)
    commands = {
        "neighbors": ["neighbors", "cat", "--model", clip, "-k", "3", "--embedding", a],
        "norms": ["norms", "--model", clip, "--embedding", a],
        "probe-position": ["probe-position", "--model", clip, "--max-prompts", "30", "--epochs", "3", "--hidden", "16",
                           "--scales", "1,4", "--embedding", a],
        "probe-position-rope": ["probe-position", "--model", str(tiny_dir("gemma3")), "--max-prompts", "30", "--epochs", "3",
                                "--hidden", "16", "--scales", "1,4"],
        "residual-angles": ["residual-angles", "--model", clip, "--words", "dog", "--scales", "1,4", "--max-prompts", "2"],
        "attenuation": ["attenuation", "--model", clip, "--tokens", "8"],
        "interpolate": ["interpolate", a, b, "--ratios", "0,0.5,1"],
        "generate": ["generate", "--model", str(tiny_dir("sd")), "--embedding", a, "--prompt", "a {}", "--steps", "1",
                     "--seeds", "0", "--resolution", "32", "--no-progress"],
        "train": ["train", "--objective", "lm", "--method", "dti", "--model", str(tiny_dir("gemma3")), "--texts", "glimmerfox",
                  "--placeholder", "<glimmerfox>", "--init-word", "fox", "--steps", "2", "--batch-size", "1", "--quiet"],
        "compare": ["compare", _run_dir(inputs, "run-a", "clip-cosine"), _run_dir(inputs, "run-b", "clip-cosine")],
        "evaluate": ["evaluate", "--embedding", a, "--model", str(tiny_dir("sd")), "--reference", refs, "--class-word", "cat",
                     "--prompts", prompts, "--dino", tiny.cached_scorer_dir("dinov2", str(tiny_root)),
                     "--clip", tiny.cached_scorer_dir("clipmodel", str(tiny_root)), "--steps", "1", "--seeds", "0",
                     "--resolution", "32", "--no-progress"],
    }
    before_inputs = _files(inputs)
    for i, (name, argv) in enumerate(commands.items()):
        out = Path(f"out-{i}") / "nested"
        code, _, err = run_cli(capsys, *argv, "--out", out)
        assert code == 0, f"{name}: {err}"
        assert (cwd / out / "results.json").is_file()
        stray = [p for p in _files(cwd) if not str(p).startswith("out-")]
        assert not stray, f"{name} wrote outside --out: {stray}"
        assert {p.parts[0] for p in _files(cwd)} == {f"out-{j}" for j in range(i + 1)}
    assert _files(inputs) == before_inputs
    # probe-position keeps its probe inside --out (README: "Every command takes --out DIR")
    r = json.loads((cwd / "out-2" / "nested" / "results.json").read_text())
    assert Path(r["probe_dir"]) == Path("out-2/nested/probe") and (cwd / r["probe_dir"] / "probe.safetensors").is_file()


def test_probe_dir_still_goes_where_told(tiny_dir, tmp_path, capsys, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(capsys, "probe-position", "--model", tiny_dir("clip"), "--max-prompts", "30", "--epochs", "2",
                           "--hidden", "8", "--scales", "1", "--out", "o", "--probe-dir", "elsewhere/p")
    assert code == 0, err
    assert (tmp_path / "elsewhere" / "p" / "probe.safetensors").is_file() and not (tmp_path / "o" / "probe").exists()


def test_reproduce_out_names_both_folders():
    """`reproduce --out DIR` puts raw outputs in DIR/probes and figures in DIR/figures; explicit
    --results/--figures still win, and without any the committed layout (probes/, figures/) stays."""
    p = build_parser()
    args = p.parse_args(["reproduce", "--out", "somewhere"])
    assert args.out == "somewhere" and args.results is None and args.figures is None
    args = p.parse_args(["reproduce"])
    assert args.out is None


@pytest.mark.real
def test_reproduce_out_contains_everything(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "reproduce", "--quick", "--models", "minilm-l6", "--only", "neighbors", "--out", "r")
    assert code == 0, err
    assert (tmp_path / "r" / "probes" / "minilm-l6" / "neighbors" / "results.json").is_file()
    assert (tmp_path / "r" / "figures" / "REPORT.md").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# ---- repo ids found in the Hugging Face cache keep their name ----------------------------------
def _fake_hub(cache: Path, repo: str, src: Path) -> Path:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<hash>/...}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    shutil.copytree(src, root / "snapshots" / commit)
    return root / "snapshots" / commit


def test_cached_repo_id_is_labelled_org_name(tiny_dir, tmp_path, capsys, monkeypatch, one_thread):
    import huggingface_hub.constants as hub_constants

    from geomkit.models import hf_cache_repo_id, load_encoder

    cache = tmp_path / "hub"
    snap = _fake_hub(cache, "someorg/tiny-sd", tiny_dir("sd"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert hf_cache_repo_id(snap) == "someorg/tiny-sd" and hf_cache_repo_id(tiny_dir("sd")) is None
    enc = load_encoder("someorg/tiny-sd")
    assert enc.name == "someorg/tiny-sd/text_encoder" and Path(enc.pipeline_dir) == snap
    assert load_encoder(str(snap)).name == "someorg/tiny-sd/text_encoder"  # the snapshot path itself, too
    code, out, err = run_cli(capsys, "norms", "--model", "someorg/tiny-sd", "--out", tmp_path / "n")
    assert code == 0, err
    assert json.loads((tmp_path / "n" / "results.json").read_text())["model"] == "someorg/tiny-sd/text_encoder"
    assert "model: someorg/tiny-sd/text_encoder" in out and snap.name not in out


# ---- compare: the text metric comes from the data ----------------------------------------------
def _run_dir(root: Path, name: str, metric) -> Path:
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"method": "dti", "model": "sd", "placeholder": "<x>", "m_star": [0.4], "kappa": 1e-4,
                                                  "final_norm": [0.4], "steps": 10, "seconds": 1.0}))
    ev = {"image_similarity": 0.5, "text_alignment": 0.3, "n_images": 4, "per_prompt": []}
    if metric:
        ev["text_metric"] = metric
    (run / "eval" / "results.json").write_text(json.dumps(ev))
    return run


def test_compare_labels_text_metric_and_refuses_mixed(tmp_path, capsys):
    from geomkit.commands.compare import plot_scatter, text_axis_label

    a = _run_dir(tmp_path, "a", "clip-cosine")
    b = _run_dir(tmp_path, "b", "clip-cosine")
    c = _run_dir(tmp_path, "c", "siglip-sigmoid")
    code, out, err = run_cli(capsys, "compare", a, b, "--out", tmp_path / "ab")
    assert code == 0, err
    res = json.loads((tmp_path / "ab" / "results.json").read_text())
    assert res["text_metric"] == "clip-cosine" and "CLIP image-text cosine" in out
    assert "CLIP" in (tmp_path / "ab" / "compare.md").read_text()
    fig = plot_scatter(res["rows"], res["text_metric"])
    assert fig.axes[0].get_xlabel() == "text alignment (CLIP image-text cosine)" and "SigLIP" not in fig.axes[0].get_xlabel()
    assert text_axis_label("siglip-sigmoid") == "text alignment (SigLIP match probability)"
    assert text_axis_label(None) == "text alignment"

    code, _, err = run_cli(capsys, "compare", a, c, "--out", tmp_path / "ac")
    assert_one_line_error(code, err, "different text metrics")
    assert "clip-cosine: a" in err and "siglip-sigmoid: c" in err
    assert not (tmp_path / "ac").exists()  # refused before writing anything
    # an evaluation from before text_metric was recorded says nothing: no claim either way
    d = _run_dir(tmp_path, "d", None)
    code, _, err = run_cli(capsys, "compare", a, d, "--out", tmp_path / "ad")
    assert code == 0, err


# ---- one name for the image size ---------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--resolution", "--size"])
def test_image_size_flag_and_alias(flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # paths are checked as the command line is read: make them exist
    for d in ("m", "r", "ref", "d"):
        (tmp_path / d).mkdir()
    for f in ("a", "b"):
        (tmp_path / f).write_bytes(b"")
    p = build_parser()
    gen = p.parse_args(["generate", "--model", "m", "--prompt", "x", flag, "64"])
    itp = p.parse_args(["interpolate", "a", "b", flag, "64"])
    ev = p.parse_args(["evaluate", "--run", "r", "--reference", "ref", "--dino", "d", flag, "64"])
    assert gen.size == itp.size == ev.size == 64
    assert "--resolution" in p._subparsers._group_actions[0].choices["generate"].format_help()


def test_resolution_renders_that_size(tiny_dir, tmp_path, capsys):
    from PIL import Image

    from geomkit.embeddings_io import save_learned

    save_learned(tmp_path / "a.safetensors", "<a-tok>", torch.randn(1, 32) * 0.3)
    code, _, err = run_cli(capsys, "generate", "--model", tiny_dir("sd"), "--embedding", tmp_path / "a.safetensors",
                           "--prompt", "a photo of {}", "--steps", "1", "--seeds", "0", "--resolution", "40",
                           "--no-progress", "--out", tmp_path / "g")
    assert code == 0, err
    (img,) = sorted((tmp_path / "g" / "images").glob("*.png"))
    assert Image.open(img).size == (40, 40)
    assert json.loads((tmp_path / "g" / "results.json").read_text())["size"] == 40


# ---- tables line up by display width -----------------------------------------------------------
def test_table_columns_align_on_cjk_tokens():
    from geomkit.report import display_width, table_text

    assert display_width("apple") == 5 and display_width("苹果") == 4 and display_width("ｱ") == 1
    assert display_width("e\u0301") == 1  # a combining accent takes no column
    text = table_text([{"token": "苹果", "cosine": 0.5}, {"token": "apple", "cosine": 0.25}, {"token": "りんご", "cosine": 0.125}])
    lines = text.splitlines()
    starts = {display_width(ln[: ln.index("0.")]) for ln in lines[2:]}
    assert len(starts) == 1, text  # every number starts in the same terminal column
    assert display_width(lines[0].split("cosine")[0]) == starts.pop()


# ---- figures a person can read -----------------------------------------------------------------
def test_norm_histogram_zooms_on_a_narrow_vocabulary():
    """A vocabulary whose norms barely vary (Gemma: std/mean 5e-4) beside a TI token at 2x: a second
    panel shows the vocabulary's spread with its mean; without learned tokens, one panel as before."""
    from geomkit.commands.norms import plot, zoom_window

    g = torch.Generator().manual_seed(0)
    norms = 1.031 + 0.0005 * torch.randn(5000, generator=g, dtype=torch.float64)
    stats = {"mean": float(norms.mean()), "std": float(norms.std())}
    emb = {"<ti>": {"norm": 2.19, "ratio_to_mean": 2.12}, "<dti>": {"norm": 1.031, "ratio_to_mean": 1.0}}
    lo, hi = zoom_window(norms.numpy(), emb)
    assert lo < float(norms.quantile(0.01)) and hi > float(norms.quantile(0.99)) and hi - lo < 0.05
    fig = plot(norms, stats, emb, {}, "t", 200)
    main, zoom = fig.axes
    assert zoom.get_xlim()[1] - zoom.get_xlim()[0] < 0.05  # the close-up resolves the spread
    mean_lines = [ln for ax in (main, zoom) for ln in ax.get_lines() if ln.get_color() == "black"]
    assert len(mean_lines) == 2 and all(ln.get_zorder() > 3 for ln in mean_lines)  # drawn above the DTI line
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any(t.startswith("vocabulary mean") for t in labels) and sum("<" in t for t in labels) == 2
    assert zoom_window(norms.numpy(), {}) is None and len(plot(norms, stats, {}, {}, "t", 50).axes) == 1
    wide = torch.rand(5000, generator=g, dtype=torch.float64) + 0.2  # spread comparable to the range: no zoom
    assert zoom_window(wide.numpy(), {"<x>": {"norm": 1.5, "ratio_to_mean": 2.0}}) is None


def test_residual_angles_figure_tells_scales_tokens_and_bounds_apart():
    """Each panel (angles on the left, their Lemma 2 bounds on the right; scales split so a panel
    holds at most ~5 lines, learned tokens in their own row) gives every line its own colour and
    marker, and every bound line a legend entry naming its scale. tests/test_figures.py checks
    the layout rules themselves."""
    from matplotlib.colors import to_hex

    from geomkit.commands.residual_angles import plot

    blocks = 5
    groups = [{"concept": "<vocabulary>", "scale": m, "mean_angle_deg": 10.0 + i, "per_block_deg": [10.0 + i] * blocks,
               "bound_vocab_deg": [90.0 - i] * blocks} for i, m in enumerate([0.5, 1, 2, 4, 8, 16])]
    groups += [{"concept": c, "scale": None, "mean_angle_deg": 20.0, "per_block_deg": [20.0] * blocks}
               for c in ("<t> (train-ti)", "<t> (train-dti)")]
    fig = plot({"n_blocks": blocks, "by_scale": groups, "prenorm": True}, "t")
    angle_axes = fig.axes[0::2]
    bound_axes = fig.axes[1::2]
    scales_seen = []
    for ax in angle_axes:
        lines = ax.get_lines()
        assert len({to_hex(ln.get_color()) for ln in lines}) == len(lines) <= 5  # its own colour, few a panel
        scales_seen += [ln.get_label().split(":")[0] for ln in lines if ln.get_label().startswith("m = ")]
    assert scales_seen == [f"m = {m:g}" for m in [0.5, 1, 2, 4, 8, 16]]
    tokens = [ln for ln in angle_axes[-1].get_lines() if ln.get_label().startswith("<t>")]
    assert len(tokens) == 2 and tokens[0].get_marker() != tokens[1].get_marker()
    bound_labels = [t.get_text() for ax in bound_axes for t in ax.get_legend().get_texts()]
    assert all(lb.startswith("bound for ") for lb in bound_labels)
    assert {f"bound for m = {m:g}" for m in [0.5, 1, 2, 4, 8, 16]} <= {lb.split(":")[0] for lb in bound_labels}


def test_probe_position_xlabel_mentions_learned_tokens_only_when_plotted():
    from types import SimpleNamespace

    from geomkit.commands.probe_position import plot

    res = SimpleNamespace(scales=[1.0, 4.0], accuracy=[0.9, 0.4], baseline_accuracy=0.9, chance=0.05,
                          embeddings={}, embedding_norm_ratio={}, mean_vocab_norm=1.0)
    assert "learned" not in plot(res, "t").axes[0].get_xlabel()
    res.embeddings, res.embedding_norm_ratio = {"<x>": 0.3}, {"<x>": 8.0}
    assert "learned tokens" in plot(res, "t").axes[0].get_xlabel()


# ---- output noise ------------------------------------------------------------------------------
def test_bf16_unet_cast_is_silent_and_real_fp32_warnings_stay(tiny_dir):
    """diffusers logs 'modules ... should be kept in float32: []' on every dtype cast of a UNet with no
    such module; the trainer's cast is the same cast without it, and a model that has fp32 modules
    still gets diffusers' warning."""
    import logging

    from diffusers import UNet2DConditionModel

    from geomkit.train.objectives.diffusion import _frozen

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger("diffusers.models.modeling_utils")
    log.addHandler(handler)
    root = logging.getLogger("diffusers")
    level = root.level
    root.setLevel(logging.WARNING)  # the CLI quiets diffusers to ERROR; the Python API (train()) does not
    try:
        unet = UNet2DConditionModel.from_pretrained(tiny_dir("sd") / "unet")
        assert not unet._keep_in_fp32_modules
        frozen = _frozen(unet, "cpu", torch.bfloat16)
        assert {p.dtype for p in frozen.parameters()} == {torch.bfloat16} and not frozen.training
        assert not any("kept in float32" in r.getMessage() for r in records)
        other = UNet2DConditionModel.from_pretrained(tiny_dir("sd") / "unet")
        other._keep_in_fp32_modules = ["conv_in"]
        _frozen(other, "cpu", torch.bfloat16)
        assert any("kept in float32: ['conv_in']" in r.getMessage() for r in records)
    finally:
        log.removeHandler(handler)
        root.setLevel(level)


# ---- notebooks use only public, documented API -------------------------------------------------
def test_notebooks_use_only_documented_public_api():
    import re

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    api = readme[readme.index("## Python API"):]
    api = api[: api.index("\n## ", 10)]
    for nb_path in sorted((root / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
        used = []  # (module, name)
        for mod, names in re.findall(r"^\s*from (geomkit[\w.]*) import ([^\n#]+)", code, flags=re.M):
            for name in (n.strip().split(" as ")[0] for n in names.strip("() ").split(",")):
                used.append((mod, name))
        aliases = {alias: f"{mod}.{name}" for mod, names in re.findall(r"^\s*from (geomkit[\w.]*) import ([^\n#]+)", code, flags=re.M)
                   for name, alias in re.findall(r"(\w+) as (\w+)", names)}
        for alias, module in aliases.items():
            used += [(module, attr) for attr in re.findall(rf"\b{alias}\.(\w+)\(", code)]
        for mod, name in used:
            full = f"{mod}.{name}"
            assert not any(part.startswith("_") for part in full.split(".")), f"{nb_path.name}: private {full}"
            if nb_path.name[:2] in {"01", "02", "03", "04", "05"}:
                target = f"{mod}.{name}" if f"`{mod}.{name}`" in api else mod
                assert f"`{target}`" in api, f"{nb_path.name}: {mod} is not in the README's Python API section"
                if target == mod:
                    assert f"`{name}" in api, f"{nb_path.name}: {full} is not in the README's Python API section"


@pytest.mark.real
def test_bare_probe_position_on_real_gemma(gemma, tmp_path, capsys, monkeypatch):
    """The README's `geomkit probe-position` on the default model (Gemma 3, RoPE), made small."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "probe-position", "--max-prompts", "30", "--epochs", "3", "--scales", "1", "--out", "o")
    assert code == 0, err
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    assert r["model"] == "gemma3-270m" and r["site"] == "blocks.3.resid_post" and r["positions"] == "rope"
    assert r["site_chosen"].startswith("automatic") and "RoPE" in r["site_chosen"]
    assert "site chosen automatically" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"] and (tmp_path / "o" / "probe" / "probe.safetensors").is_file()
