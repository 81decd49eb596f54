"""`geomkit train` for a newcomer (issue 19): a header before the progress bar that says what is
about to run, and `--report-to tensorboard` logging the same numbers as train_log.jsonl."""

from __future__ import annotations

import json

import pytest

from helpers import assert_one_line_error, run_cli

TOKEN = "<glimmerfox>"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm_dir(tiny_dir):
    return str(tiny_dir("gemma3"))


def base(lm_dir, out, *extra):
    return ["train", "--model", lm_dir, "--texts", "glimmerfox", "--placeholder", TOKEN, "--init-word", "fox",
            "--method", "dti", "--seed", "7", "--batch-size", "2", "--steps", "3", "--out", str(out), *extra]


def test_header_before_the_bar_says_device_data_mstar_batch_precision(lm_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, *base(lm_dir, tmp_path / "run", "--save-every", "2"))
    assert code == 0, err
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    head = [ln for ln in err.splitlines() if ln.startswith("geomkit train: ")]
    assert len(head) >= 3
    text = "\n".join(head[:3])
    assert "device cpu" in text and "3 steps" in text
    assert f"m* per text encoder: {res['m_star'][0]:.4g}" in text  # the run's own m*
    assert "sentences" in text and "batch 2" in text and "precision float32" in text
    assert "checkpoint every 2 steps" in text
    lines = err.splitlines()
    first_bar = next(i for i, ln in enumerate(lines) if ln.startswith("train dti:") and "|" in ln)
    assert first_bar > max(i for i, ln in enumerate(lines) if ln.startswith("geomkit train: train dti"))  # header first


def test_header_lines_on_plain_values():
    from geomkit.train.header import header_lines

    lines = header_lines(method="dti", objective="diffusion", model="sdxl", device="cuda:0", processes=2, steps=500, start=100,
                         batch_size=4, micro_batch=2, precision="bf16", m_stars=[0.3871, 0.6713],
                         described={"images": 5, "resolution": 1024, "sdxl": True}, flags=["gradient checkpointing"])
    text = "\n".join(lines)
    assert "steps 101..500 (resumed at 100)" in text and "x 2 processes" in text
    assert "5 images at 1024 px (SDXL: two text encoders)" in text and "0.3871, 0.6713" in text
    assert "batch 8 (4 x 2 processes), micro-batches of 2" in text and "precision bf16" in text and "gradient checkpointing" in text


def test_report_to_tensorboard_logs_the_log_lines(lm_dir, tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *base(lm_dir, out, "--quiet", "--report-to", "tensorboard"))
    assert code == 0, err
    log = [json.loads(ln) for ln in (out / "train_log.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(out / "logs"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/norm", "train/angle_from_init_deg", "train/lr"} <= tags
    loss = {e.step: e.value for e in acc.Scalars("train/loss")}
    assert sorted(loss) == [ln["step"] for ln in log]
    for ln in log:
        assert loss[ln["step"]] == pytest.approx(ln["loss"], rel=1e-6)
    assert all(e.value == pytest.approx(log[0]["norm"], rel=1e-6) for e in acc.Scalars("train/norm"))  # DTI keeps m*


def test_report_to_an_uninstalled_tracker_is_one_line(lm_dir, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *base(lm_dir, out, "--quiet", "--report-to", "wandb"))
    assert_one_line_error(code, err, "wandb package is not installed")
    assert not out.exists()


def test_an_empty_validation_prompt_is_refused(lm_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, *base(lm_dir, tmp_path / "run", "--validation-prompt", ""))
    assert_one_line_error(code, err, "empty validation prompt")
    assert not (tmp_path / "run").exists()


def test_tracker_scalars_take_the_log_numbers_only():
    from geomkit.train.tracking import scalars

    line = {"step": 3, "loss": 0.5, "norm": 1.0, "norm_2": 2.0, "lr": 1e-3, "step_s": 0.2, "flag": True}
    assert scalars(line) == {"train/loss": 0.5, "train/norm": 1.0, "train/norm_2": 2.0, "train/lr": 1e-3}
