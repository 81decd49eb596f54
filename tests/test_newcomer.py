"""What a newcomer trips on (issue 19): files other tools can read (umask permissions, the SDXL
file named after its token, the token in its metadata), runs of different kinds kept apart,
output paths the OS refuses checked before any work, tokens shown decoded with wide characters
aligned, progress for long phases, and the small ones (guidance recorded, a loaded probe's
accuracy, reproduce stopped by SIGTERM)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from helpers import assert_one_line_error, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _vec(d, seed, m=0.4):
    v = torch.randn(1, d, generator=torch.Generator().manual_seed(seed))
    return v / v.norm() * m


@pytest.fixture()
def umask027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


# ---- files other tools can read ----------------------------------------------------------------
def test_every_written_file_gets_the_umask_permissions(tiny_dir, tmp_path, capsys, umask027):
    """Results, CSVs, PNGs, safetensors (which safetensors' writer creates 0600), probes,
    checkpoints: all 0o666 & ~umask, folders 0o777 & ~umask."""
    from geomkit.embeddings_io import save_learned

    clip, lm = str(tiny_dir("clip")), str(tiny_dir("gemma3"))
    save_learned(tmp_path / "a.safetensors", "<a>", _vec(32, 0))
    save_learned(tmp_path / "b.safetensors", "<b>", _vec(32, 1))
    runs = [
        ["neighbors", "apple", "--model", clip, "--embedding", tmp_path / "a.safetensors", "--out", tmp_path / "o" / "nb"],
        ["inspect", tmp_path / "a.safetensors", "--model", clip, "--no-effects", "--fix", "rescale", "--out", tmp_path / "o" / "ins"],
        ["convert", tmp_path / "a.safetensors", "--to", "a1111", "--out", tmp_path / "o" / "cv" / "a.safetensors"],
        ["interpolate", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--ratios", "0,0.5,1", "--out", tmp_path / "o" / "mix"],
        ["probe-position", "--model", clip, "--max-prompts", "12", "--epochs", "1", "--scales", "1,4", "--out", tmp_path / "o" / "pp"],
        ["train", "--model", lm, "--texts", "glimmerfox", "--placeholder", "<glimmerfox>", "--init-word", "fox", "--steps", "2",
         "--batch-size", "2", "--save-every", "1", "--quiet", "--out", tmp_path / "o" / "tr"],
    ]
    for argv in runs:
        code, _, err = run_cli(capsys, *argv)
        assert code == 0, (argv[0], err)
    kinds = set()
    for p in (tmp_path / "o").rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        want = 0o777 & ~umask027 if p.is_dir() else 0o666 & ~umask027
        assert mode == want, (str(p), oct(mode))
        kinds.add(p.suffix)
    assert {".json", ".csv", ".png", ".safetensors", ".md", ".jsonl"} <= kinds


def test_sdxl_pair_carries_its_token_and_is_named_after_it(tiny_dir, tmp_path, capsys):
    from safetensors import safe_open

    from geomkit.embeddings_io import read_embedding, save_sdxl_pair
    from geomkit.generation import run_token
    from geomkit.train.exports import export, sdxl_name

    l, g = _vec(32, 1), _vec(48, 2)
    written = export(tmp_path / "run", "<my-dog>", [l, g])
    assert [p.name for p in written] == ["learned_embeds.safetensors", "learned_embeds_2.safetensors", "my-dog.safetensors"]
    with safe_open(str(tmp_path / "run" / "my-dog.safetensors"), framework="pt") as fh:
        assert fh.metadata()["token"] == "<my-dog>"
    ef = read_embedding(tmp_path / "run" / "my-dog.safetensors")
    assert ef.name == "<my-dog>" and ef.is_pair and torch.equal(ef.parts["clip_g"], g)
    # names that would collide with the run's own files, or leave nothing, keep the old name
    assert sdxl_name("<learned_embeds>") == "learned_embeds_sdxl.safetensors" and sdxl_name("<>") == "learned_embeds_sdxl.safetensors"
    assert sdxl_name("<a/b:c>") == "abc.safetensors" and sdxl_name("<t>", "learned_embeds_unrescaled") == "t_unrescaled.safetensors"
    # a run written before keeps its old file name: still read, named by results.json
    old = tmp_path / "old-run"
    old.mkdir()
    save_sdxl_pair(old / "learned_embeds_sdxl.safetensors", l, g)
    (old / "results.json").write_text(json.dumps({"method": "dti", "model": "m", "placeholder": "<old>"}))
    tok = run_token(old)
    assert tok.name == "<old>" and torch.equal(tok.parts["clip_l"], l)
    # convert --to sdxl records the token too
    code, _, err = run_cli(capsys, "convert", tmp_path / "run" / "learned_embeds.safetensors", tmp_path / "run" / "learned_embeds_2.safetensors",
                           "--to", "sdxl", "--out", tmp_path / "c" / "dog.safetensors")
    assert code == 0, err
    assert read_embedding(tmp_path / "c" / "dog.safetensors").name == "<my-dog>"


# ---- runs of different kinds ------------------------------------------------------------------
def test_a_folder_of_another_kind_of_run_is_refused_and_kept(tiny_dir, tmp_path, capsys):
    clip = str(tiny_dir("clip"))
    out = tmp_path / "shared"
    assert run_cli(capsys, "norms", "--model", clip, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(capsys, "neighbors", "apple", "--model", clip, "--out", out)
    assert_one_line_error(code, err, "holds the output of `geomkit norms`")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # the same kind reuses its folder as before
    assert run_cli(capsys, "norms", "--model", clip, "--out", out)[0] == 0


# ---- output paths ----------------------------------------------------------------------------
def test_path_problem_names_what_the_os_would_refuse(tmp_path, monkeypatch):
    from geomkit.report import path_problem

    assert path_problem(tmp_path / "fine" / "deeper") is None
    assert "300 bytes" in path_problem(tmp_path / ("é" * 150))  # bytes, not characters
    assert path_problem(tmp_path / ("x" * 255)) is None
    assert "proc" in path_problem("/proc/self/geomkit")
    assert "sysfs" in path_problem("/sys/geomkit/out")
    assert "4095" in path_problem("/" + "/".join(["d" * 200] * 25))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p) == str(tmp_path) else real(p, mode, *a, **k))
    assert "not writable" in path_problem(tmp_path / "new" / "out")


def test_an_unwritable_folder_is_one_line_before_any_work(tiny_dir, tmp_path, capsys, monkeypatch):
    """probe-position --probe-dir under a folder this user cannot write: refused when the command
    line is read (it used to fail after training, leaving an empty --out)."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if str(p) == str(locked) else real(p, mode, *a, **k))
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "probe-position", "--model", str(tiny_dir("clip")), "--probe-dir", locked / "probe", "--out", out)
    assert_one_line_error(code, err, "not writable")
    assert not out.exists() and not any(locked.iterdir())
    code, _, err = run_cli(capsys, "convert", tmp_path / "x.safetensors", "--to", "a1111", "--out", locked / "x.safetensors")
    assert code == 2 and "Traceback" not in err


# ---- tokens shown decoded -----------------------------------------------------------------------
def test_tokens_are_shown_decoded(tiny_dir):
    from geomkit.models import byte_level_text, load_encoder

    enc = load_encoder(str(tiny_dir("clip")))
    for i in range(enc.vocab_size):
        raw = enc.tokenizer.convert_ids_to_tokens(i)
        if raw.endswith("</w>") and raw[:-4].isascii() and raw[:-4].isalpha():
            assert enc.token_text(i) == raw[:-4]  # no </w>
            break
    assert byte_level_text("Ġfox") == " fox"
    assert byte_level_text("çĭĲ") == "狐"  # byte-level BPE mojibake back to the character
    assert byte_level_text("æ") == "\\xe6"  # a lone lead byte: shown as a byte, not as a replacement character
    assert byte_level_text("<my-token>") == "<my-token>"


def test_tables_align_wide_characters():
    from geomkit.report import display_width, table_text

    text = table_text([{"token": "狐", "score": 0.5}, {"token": "fox", "score": 0.25}])
    rows = text.splitlines()
    assert len({display_width(r.split("0.")[0]) for r in rows[2:]}) == 1  # the score column starts at one place


def test_neighbors_table_and_csv_show_decoded_tokens(tiny_dir, tmp_path, capsys):
    import pandas as pd

    code, out, _ = run_cli(capsys, "neighbors", "apple", "--model", str(tiny_dir("clip")), "-k", "20", "--out", tmp_path / "o")
    assert code == 0
    frame = pd.read_csv(tmp_path / "o" / "neighbors.csv", keep_default_na=False)
    shown = list(frame["cosine"]) + list(frame["euclidean"])
    assert not any("</w>" in str(t) for t in shown)
    assert "</w>" not in out.split("\n", 2)[2]
    raw = json.loads((tmp_path / "o" / "results.json").read_text())["queries"]["apple"]["cosine"]
    assert any(e["token"].endswith("</w>") for e in raw)  # results.json keeps the raw pieces


# ---- progress ---------------------------------------------------------------------------------
def test_long_phases_show_progress_that_says_what_happens(tiny_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "probe-position", "--model", str(tiny_dir("clip")), "--max-prompts", "12", "--epochs", "2",
                           "--scales", "1,4", "--out", tmp_path / "pp")
    assert code == 0
    assert "training the position probe" in err and "probing the scaled tokens" in err
    code, _, err = run_cli(capsys, "residual-angles", "--model", str(tiny_dir("clip")), "--max-prompts", "3", "--scales", "1,2",
                           "--words", "dog", "--out", tmp_path / "ra")
    assert code == 0 and "residual angles over" in err


def test_progress_can_be_turned_off(tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GEOMKIT_PROGRESS", "0")
    code, _, err = run_cli(capsys, "residual-angles", "--model", str(tiny_dir("clip")), "--max-prompts", "3", "--scales", "1",
                           "--words", "dog", "--out", tmp_path / "ra")
    assert code == 0 and "residual angles over" not in err


# ---- small ones -------------------------------------------------------------------------------
def test_a_loaded_probe_prints_no_nan_accuracy(tiny_dir, tmp_path, capsys):
    clip = str(tiny_dir("clip"))
    base = ["probe-position", "--model", clip, "--max-prompts", "12", "--scales", "1"]
    assert run_cli(capsys, *base, "--epochs", "1", "--out", tmp_path / "a")[0] == 0
    code, out, err = run_cli(capsys, *base, "--load-probe", tmp_path / "a" / "probe", "--out", tmp_path / "b")
    assert code == 0, err
    assert "nan%" not in out and "loaded from" in out
    # a training option beside --load-probe would be ignored: refused
    code, _, err = run_cli(capsys, *base, "--epochs", "3", "--load-probe", tmp_path / "a" / "probe", "--out", tmp_path / "c")
    assert_one_line_error(code, err, "drop --epochs")


def test_generate_records_the_guidance_it_used(tiny_dir, tmp_path, capsys):
    from geomkit.embeddings_io import save_learned

    save_learned(tmp_path / "t.safetensors", "<t>", _vec(32, 3))
    code, _, err = run_cli(capsys, "generate", "--model", str(tiny_dir("sd")), "--embedding", tmp_path / "t.safetensors",
                           "--prompt", "a {}", "--steps", "1", "--size", "32", "--seeds", "0", "--no-progress", "--out", tmp_path / "g")
    assert code == 0, err
    assert json.loads((tmp_path / "g" / "results.json").read_text())["guidance"] == 7.5  # SD 1.x's default, not null


def test_reproduce_stopped_by_sigterm_exits_143(tmp_path, monkeypatch, capsys):
    from geomkit.reproduce import Step, StepStopped, run_steps

    with pytest.raises(StepStopped) as stopped:
        run_steps([Step("train-ti", "m", ["train"])], tmp_path / "r", tmp_path / "f", runner=lambda argv: 143, log=lambda *a: None)
    assert stopped.value.code == 143
    import geomkit.reproduce as rep

    def fake(*a, **k):
        raise StepStopped(143, "train-ti on gemma3-270m")

    monkeypatch.setattr(rep, "run_steps", fake)
    code, _, err = run_cli(capsys, "reproduce", "--quick", "--only", "neighbors", "--out", tmp_path / "q")
    assert code == 143 and "SIGTERM" in err


def test_interpolate_near_but_not_antipodal_is_a_defined_result(tmp_path, capsys):
    from geomkit.embeddings_io import read_embedding, save_learned

    a = _vec(32, 5)
    b = -a.clone()
    b[0, 0] += 0.05  # 179.x degrees: a unique great circle exists
    save_learned(tmp_path / "a.safetensors", "<a>", a)
    save_learned(tmp_path / "b.safetensors", "<b>", b)
    code, _, err = run_cli(capsys, "interpolate", tmp_path / "a.safetensors", tmp_path / "b.safetensors", "--ratios", "0,0.5,1",
                           "--token", "<mix>", "--out", tmp_path / "o")
    assert code == 0, err
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    mid = read_embedding(tmp_path / "o" / res["files"][1]).parts[res["files"][1]]
    assert float(mid.norm()) == pytest.approx((float(a.norm()) + float(b.norm())) / 2, rel=1e-5)
    assert res["angles_deg"][1][0] == pytest.approx(res["angle_ab_deg"][0] / 2, abs=1e-3)
