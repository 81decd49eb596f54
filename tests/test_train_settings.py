"""Training settings by source: the README's settings table is the code's, presets set what they say
(and typed options win), --scale-lr's rate is the one logged, CrossInit's two reductions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from geomkit.errors import GeomkitError
from geomkit.train import TrainConfig, train
from geomkit.train.presets import SETTINGS, apply_preset, geomkit_default, preset_values, settings_markdown

from helpers import assert_one_line_error, random_images, run_cli

README = Path(__file__).resolve().parent.parent / "README.md"
pytestmark = pytest.mark.usefixtures("one_thread")


def test_readme_settings_table_is_the_codes():
    assert settings_markdown() in README.read_text(), "README's settings table differs from geomkit.train.presets"


def test_geomkit_default_column_reads_trainconfig():
    d = TrainConfig()
    cells = {field: geomkit_default(field) for *_, field in SETTINGS if field}
    assert cells["lr"] == f"{d.lr:g}" and cells["steps"] == str(d.steps) and cells["batch_size"] == str(d.batch_size)
    assert cells["flip_p"] == f"{d.flip_p:g}" and cells["crop"] == d.crop and cells["kappa"] == f"{d.kappa:g}"
    assert cells["scale_lr"] == ("on" if d.scale_lr else "off") and cells["crossinit_reduction"] == d.crossinit_reduction
    assert cells["weight_decay"] == f"{d.weight_decay:g}" and cells["crossinit_weight"] == f"{d.crossinit_weight:g}"
    for *_, field in SETTINGS:  # every field the table names exists
        assert field is None or hasattr(d, field)


def test_presets_set_only_untyped_defaults():
    cfg = TrainConfig(method="dti", preset="authors", steps=123)
    changed = apply_preset(cfg, "sdxl", given={"steps"})
    assert cfg.steps == 123 and "steps" not in changed  # set in Python / typed: kept
    assert (cfg.lr, cfg.scale_lr, cfg.resolution, cfg.flip_p, cfg.crop, cfg.kappa) == (0.01, True, 768, 0.0, "random", 1e-4)
    sana = TrainConfig(method="ti", preset="authors")
    apply_preset(sana, "sana")
    assert (sana.lr, sana.kappa, sana.resolution, sana.weight_decay, sana.steps) == (5e-3, 5e-5, 1024, 0.0, 500)
    paper = TrainConfig(preset="paper")
    apply_preset(paper, "sdxl")
    assert (paper.lr, paper.steps, paper.batch_size, paper.kappa, paper.scale_lr) == (5e-3, 500, 4, 1e-4, False)
    with pytest.raises(GeomkitError, match="diffusion models only"):
        preset_values("authors", "lm", "dti")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return random_images(tmp_path_factory.mktemp("img"), [(40, 48), (36, 36)])


def test_scale_lr_is_the_rate_used_and_logged(tiny_dir, images, tmp_path):
    res = train(TrainConfig(model=str(tiny_dir("sd")), images=str(images), placeholder="<t>", init_word="toy", steps=2,
                            batch_size=2, resolution=32, lr=0.01, scale_lr=True, out=str(tmp_path), progress=False))
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(ln["lr"] == pytest.approx(0.02) for ln in log)
    assert res["lr_used"] == pytest.approx(0.02) and res["lr"] == 0.01
    # DTI turns each vector by exactly atan(lr used) per step
    ang = [ln["angle_from_init_deg"] for ln in log]
    import math

    assert ang[0] == pytest.approx(math.degrees(math.atan(0.02)), rel=1e-4)


def test_preset_authors_on_sdxl_run(tiny_dir, images, tmp_path):
    res = train(TrainConfig(model=str(tiny_dir("sdxl")), images=str(images), placeholder="<t>", init_word="toy", steps=2,
                            batch_size=2, resolution=32, preset="authors", out=str(tmp_path), progress=False))
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["preset"] == "authors" and cfg["crop"] == "random" and cfg["flip_p"] == 0.0 and cfg["scale_lr"] is True
    assert cfg["resolution"] == 32 and cfg["steps"] == 2  # typed values win over the preset's 768 px / 400 steps
    assert res["lr_used"] == pytest.approx(0.02)


def test_crossinit_reductions(tiny_dir, images, tmp_path):
    from geomkit.train.loop import crossinit_penalty

    slot = type("S", (), {"init": torch.zeros(2, 4)})()
    v = torch.ones(2, 4) * 3
    assert float(crossinit_penalty([v], [slot], "sum")) == 72.0
    assert float(crossinit_penalty([v], [slot], "mean")) == 9.0


@pytest.mark.parametrize("args,msg", [
    (["--crop", "left"], "--crop"),
    (["--preset", "fast"], "--preset"),
    (["--scale-lr", "--lr", "3", "--batch-size", "4"], "--scale-lr"),
    (["--crossinit-reduction", "max"], "--crossinit-reduction"),
])
def test_bad_settings_are_one_line(tiny_dir, images, tmp_path, capsys, args, msg):
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "train", "--model", tiny_dir("sd"), "--images", images, "--placeholder", "<t>",
                           "--init-word", "toy", "--out", out, *args)
    assert_one_line_error(code, err, msg)
    assert not out.exists()
