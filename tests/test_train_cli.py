"""`geomkit train` from the command line (issue 13, trainer items): --resume takes the run's
settings from its own config.json, options that conflict with the run are refused, every bad
option is one line and exit 2 with nothing written, and `accelerate launch --num_processes 2`
without --multi_gpu says why it would run one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import assert_one_line_error, random_images, run_cli

TOKEN = "<glimmerfox>"
REPO = str(Path(__file__).resolve().parents[1])  # subprocesses import this checkout

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm_dir(tiny_dir):
    return str(tiny_dir("gemma3"))


def base(lm_dir, out, *extra):
    return ["train", "--model", lm_dir, "--texts", "glimmerfox", "--placeholder", TOKEN, "--init-word", "fox",
            "--method", "ti", "--lr", "0.02", "--seed", "7", "--batch-size", "2", "--out", str(out), "--quiet", *extra]


def learned(out):
    return load_file(str(out / "learned_embeds.safetensors"))[TOKEN]


def log_steps(out):
    return [json.loads(line)["step"] for line in (out / "train_log.jsonl").read_text().splitlines()]


# ---- --resume from the run's own settings -------------------------------------------------------
def test_resume_takes_the_runs_settings_from_its_config(lm_dir, tmp_path, capsys):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert run_cli(capsys, *base(lm_dir, ref, "--steps", "6", "--related", "animal"))[0] == 0
    assert run_cli(capsys, *base(lm_dir, out, "--steps", "4", "--save-every", "2", "--related", "animal"))[0] == 0
    code, stdout, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "6", "--quiet")
    assert code == 0, err
    assert "resuming from step 4" in err and "drift (cosine to): fox" in stdout and "animal" in stdout
    assert torch.equal(learned(out), learned(ref))
    assert log_steps(out) == list(range(1, 7))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "ti" and cfg["steps"] == 6 and cfg["seed"] == 7 and cfg["save_every"] == 2


def test_resume_may_turn_memory_options_off_and_the_result_holds(lm_dir, tmp_path, capsys):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert run_cli(capsys, *base(lm_dir, ref, "--steps", "4"))[0] == 0
    assert run_cli(capsys, *base(lm_dir, out, "--steps", "2", "--save-every", "2", "--gradient-checkpointing",
                                 "--micro-batch-size", "1"))[0] == 0
    assert json.loads((out / "config.json").read_text())["gradient_checkpointing"] is True
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "4", "--no-gradient-checkpointing",
                           "--micro-batch-size", "2", "--quiet")
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["gradient_checkpointing"] is False and cfg["micro_batch_size"] == 2
    torch.testing.assert_close(learned(out), learned(ref), rtol=1e-5, atol=1e-7)


def test_resume_accepts_the_objective_and_another_spelling_of_the_model_path(lm_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.chdir(Path(lm_dir).parent)  # a relative --model, recorded as an absolute path
    args = base(Path(lm_dir).name, out, "--steps", "2", "--save-every", "1", "--objective", "lm")
    assert run_cli(capsys, *args)[0] == 0
    assert json.loads((out / "config.json").read_text())["model"] == str(Path(lm_dir).absolute())
    monkeypatch.chdir(tmp_path)  # resumed from elsewhere, the run's own objective and model retyped
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "3", "--objective", "lm",
                           "--model", str(lm_dir) + "/", "--quiet")
    assert code == 0, err
    assert log_steps(out) == [1, 2, 3]


def test_resume_with_every_option_where_no_checkpoint_was_written_starts_afresh(lm_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()  # killed while loading: the folder exists, nothing in it
    code, _, err = run_cli(capsys, *base(lm_dir, out, "--steps", "2", "--resume"))
    assert code == 0, err
    assert "starting from step 0" in err and log_steps(out) == [1, 2]


def test_resume_with_a_batch_size_the_runs_micro_batch_does_not_divide(lm_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *base(lm_dir, out, "--steps", "2", "--save-every", "1", "--batch-size", "4",
                                 "--micro-batch-size", "2"))[0] == 0
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--steps", "3", "--batch-size", "3")
    assert_one_line_error(code, err, "the run's --micro-batch-size 2 (from")


def test_resume_accepts_the_runs_own_settings_retyped(lm_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *base(lm_dir, out, "--steps", "2", "--save-every", "1"))[0] == 0
    code, _, err = run_cli(capsys, *base(lm_dir, out, "--steps", "3", "--resume"))
    assert code == 0, err
    assert log_steps(out) == [1, 2, 3]


@pytest.mark.parametrize("option, value, shown", [
    ("--method", "dti", "--method dti (the run has 'ti')"),
    ("--init-word", "dog", "--init-word dog (the run has 'fox')"),
    ("--texts", "other.txt", "--texts other.txt"),
])
def test_resume_refuses_an_option_that_conflicts_with_the_run(lm_dir, tmp_path, capsys, option, value, shown):
    out = tmp_path / "run"
    assert run_cli(capsys, *base(lm_dir, out, "--steps", "2"))[0] == 0
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", option, value)
    assert_one_line_error(code, err, shown)
    assert "config.json" in err and "keeps its own setting" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_resume_of_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "none", "--resume")
    assert_one_line_error(code, err, "holds no run to resume")
    assert not (tmp_path / "none").exists()


def test_resume_while_the_first_run_is_still_starting_names_it(tmp_path, capsys):
    """Before the first run writes config.json, a --resume into its folder must name the live run
    (its lock), not claim there is no run."""
    import os

    from geomkit.runlock import acquire

    out = tmp_path / "starting"
    out.mkdir()
    with acquire(out, "train"):
        code, _, err = run_cli(capsys, "train", "--out", out, "--resume")
    assert_one_line_error(code, err, f"pid {os.getpid()}")
    assert sorted(p.name for p in out.iterdir()) == []  # the lock went with its holder; nothing written


def test_images_that_is_a_file_is_named_as_one(tmp_path, capsys):
    f = tmp_path / "my-style.pt"
    f.write_bytes(b"x")
    code, _, err = run_cli(capsys, "train", "--images", f, "--placeholder", "<t>", "--init-word", "dog",
                           "--out", tmp_path / "o")
    assert_one_line_error(code, err, "is a file; give a folder")
    assert not (tmp_path / "o").exists()


def test_fresh_run_needs_placeholder_and_init_word(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--texts", "glimmerfox", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "--placeholder and --init-word required")
    assert not (tmp_path / "o").exists()


# ---- bad input: one line, exit 2, nothing written -----------------------------------------------
def _not_a_model(tmp_path):
    folder = tmp_path / "notamodel"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello\n")
    return str(folder)


def _a_file(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_text("x")
    return str(f)


def _long_line(tmp_path):
    f = tmp_path / "long.txt"
    f.write_text("A <glimmerfox> runs.\none two three four five six seven eight nine ten eleven <glimmerfox> runs.\n")
    return str(f)


BAD = [
    (["--init-word", TOKEN], f"--placeholder {TOKEN}: equals --init-word"),
    (["--prior-word", TOKEN], f"--prior-word {TOKEN}: that is the new token itself"),
    (["--lr", "1e38"], "--lr 1e+38: must be a finite number > 0 and <= 10"),
    (["--weight-decay", "nan"], "--weight-decay nan: must be a finite number"),
    (["--kappa", "1e300"], "--kappa 1e+300: must be a finite number"),
    (["--crossinit-weight", "inf"], "--crossinit-weight inf: must be a finite number"),
    (["--magnitude", "1e300"], "--magnitude 1e300: m* must be a positive finite number up to 1e4"),
    (["--seed", "-1"], "--seed -1: must be between 0 and"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints 0: keep at least 1"),
    (["--num-vectors", "5000"], "--num-vectors 5000: must be between 1 and 1000"),
    (["--device", "nonsense"], "--device nonsense: not a device name"),
    (["--images", "."], "--images: only the diffusion objective reads it; this run's objective is lm"),
    (["--validation-prompt", "a <glimmerfox>"], "--validation-prompt: only the diffusion objective reads it"),
    (["--flip-p", "0.5"], "--flip-p: only the diffusion objective reads it"),
    (["--resolution", "512", "--templates", "style"], "--resolution, --templates: only the diffusion objective reads them"),
    (["--num-vectors", "70"], "--texts line 1 needs"),  # 70 vectors > --max-length 64: never all trained
    (["--max-length", "8"], "--texts line 2 needs"),  # the placeholder of line 2 lies beyond token 8
    (["--out", ""], "--out '': give the output folder"),
    (["--related", "animal,notasingletokenxyzzy"], "--related: 'notasingletokenxyzzy' is not one token"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_option_is_one_line_and_writes_nothing(lm_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "o"
    args = base(lm_dir, out, "--steps", "2")
    if extra[0] == "--init-word":
        args[args.index("--init-word") + 1] = extra[1]
        extra = []
    if "--max-length" in extra:
        args[args.index("--texts") + 1] = _long_line(tmp_path)
    if extra[:1] == ["--out"]:
        args[args.index("--out") + 1] = ""
        extra = []
        cwd_before = sorted(os.listdir("."))
    code, _, err = run_cli(capsys, *args, *extra)
    assert_one_line_error(code, err, message)
    assert not out.exists()
    if "--out" in message:
        assert sorted(os.listdir(".")) == cwd_before


def test_device_cuda_without_cuda_is_one_line(lm_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs the same on a GPU machine
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, *base(lm_dir, out, "--steps", "2", "--device", "cuda"))
    assert_one_line_error(code, err, "--device cuda: CUDA is not available on this machine")
    assert not out.exists()


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_model_that_is_not_a_model_is_named(tmp_path, capsys, kind):
    model = _not_a_model(tmp_path) if kind == "folder" else _a_file(tmp_path)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "train", "--model", model, "--placeholder", TOKEN, "--init-word", "fox",
                           "--out", out)  # no --texts: the model is still what is reported
    assert_one_line_error(code, err, f"--model {model}:")
    assert "--texts" not in err
    assert not out.exists()


def test_refused_run_leaves_an_existing_folder_as_it_was(lm_dir, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    code, _, err = run_cli(capsys, *base(lm_dir, out, "--steps", "2", "--num-vectors", "70"))
    assert_one_line_error(code, err, "--texts line 1 needs")
    assert list(out.iterdir()) == []


# ---- several processes --------------------------------------------------------------------------
def test_accelerate_launch_without_multi_gpu_says_why_one_process(lm_dir, tmp_path):
    out = tmp_path / "o"
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    assert os.path.exists(launcher), "accelerate is a dependency of geomkit: its launcher must sit beside this Python"
    proc = subprocess.run([launcher, "launch", "--num_processes", "2", "-m", "geomkit", *base(lm_dir, out, "--steps", "2")],
                          env=env, capture_output=True, text=True, timeout=300)
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("geomkit train:")]
    assert proc.returncode != 0
    assert len(ours) == 1 and "started only one process" in ours[0] and "--multi_gpu --num_processes 2" in ours[0], proc.stderr
    assert not out.exists()


@pytest.fixture(scope="module")
def sd_images(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("images"), [(32, 32)])


@pytest.mark.parametrize("extra, message", [
    (["--num-vectors", "80"], "more than the text encoder's limit of 77 tokens"),  # CLIP reads 77 tokens
    (["--texts", "glimmerfox"], "--texts: only the lm objective reads it; this run's objective is diffusion"),
    (["--max-length", "64"], "--max-length: only the lm objective reads it"),
])
def test_diffusion_bad_options_are_one_line(tiny_dir, sd_images, tmp_path, capsys, extra, message):
    model = str(tiny_dir("sd"))
    capsys.readouterr()
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "train", "--model", model, "--images", sd_images, "--placeholder", "<toy>",
                           "--init-word", "toy", "--resolution", "32", "--steps", "1", "--out", out, "--quiet", *extra)
    assert_one_line_error(code, err, message)
    assert not out.exists()


def test_resume_from_a_named_checkpoint_takes_its_settings(lm_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(capsys, *base(lm_dir, out, "--steps", "4", "--save-every", "2"))[0] == 0
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", out / "checkpoints" / "step-000002.json",
                           "--steps", "4", "--quiet")
    assert code == 0 and "resuming from step 2" in err, err
    assert log_steps(out) == [1, 2, 3, 4]
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", tmp_path / "nope.json")
    assert_one_line_error(code, err, "not a complete checkpoint")


def test_device_auto_is_the_default_device(lm_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, *base(lm_dir, out, "--steps", "1", "--device", "auto"))
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
