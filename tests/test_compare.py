"""`geomkit compare` over two REAL run folders made by `geomkit train` (LM objective on a tiny
random Gemma 3), one with an evaluation added, plus an SDXL-format run; semantic drift; errors."""

import json

import pandas as pd
import pytest
import torch

from geomkit.cli import main
from helpers import assert_one_line_error as _assert_one_line_error, run_cli as _run






@pytest.fixture(scope="module")
def runs(tiny_dir, tmp_path_factory):
    """DTI and TI trained by `geomkit train` on the same tiny Gemma for a few steps."""
    root = tmp_path_factory.mktemp("runs")
    model = str(tiny_dir("gemma3"))
    made = {}
    for method in ("dti", "ti"):
        out = root / method
        code = main(["train", "--method", method, "--objective", "lm", "--model", model, "--texts", "glimmerfox",
                     "--placeholder", "<glimmerfox>", "--init-word", "fox", "--related", "dog,cat", "--steps", "6",
                     "--batch-size", "2", "--lr", "0.05", "--out", str(out), "--quiet"])
        assert code == 0
        made[method] = out
    return made


def test_compare_tabulates_two_real_runs(runs, tmp_path, capsys):
    # an evaluation of the DTI run, as `geomkit evaluate --run` writes it (the LM runs have no pipeline)
    ev = runs["dti"] / "eval"
    ev.mkdir(exist_ok=True)
    (ev / "results.json").write_text(json.dumps(
        {"image_similarity": 0.45, "text_alignment": 0.52, "n_images": 140, "per_prompt": []}))
    out = tmp_path / "cmp"
    code, stdout, err = _run(capsys, "compare", runs["dti"], runs["ti"], "--out", out)
    assert code == 0, err
    src = {m: json.loads((runs[m] / "results.json").read_text()) for m in runs}
    frame = pd.read_csv(out / "compare.csv")
    assert list(frame["run"]) == ["dti", "ti"] and list(frame["method"]) == ["dti", "ti"]
    for col in ("run", "method", "model", "m*", "kappa", "lr", "final loss", "final norm", "image", "text", "steps", "time (s)"):
        assert col in frame.columns
    for i, m in enumerate(("dti", "ti")):
        assert frame["m*"][i] == pytest.approx(src[m]["m_star"][0], rel=1e-12)
        assert frame["final norm"][i] == pytest.approx(src[m]["final_norm"][0], rel=1e-12)
        if m == "dti":  # kappa is the vMF prior's: shown for the methods that have one, blank for TI
            assert frame["kappa"][i] == pytest.approx(src[m]["kappa"])
        else:
            assert pd.isna(frame["kappa"][i])
        assert frame["lr"][i] == pytest.approx(src[m]["lr"])
        assert frame["final loss"][i] == pytest.approx(src[m]["final_loss_mean10"])
        assert frame["steps"][i] == 6 and frame["time (s)"][i] == pytest.approx(src[m]["seconds"])
        assert frame["cos to prior"][i] == pytest.approx(src[m]["cos_to_prior"])
        for w in ("fox", "dog", "cat"):
            assert frame[f"cos {w}"][i] == pytest.approx(src[m]["drift"][w])
    # DTI keeps m*; TI's norm moves; only the evaluated run has scores
    assert frame["final norm"][0] == pytest.approx(frame["m*"][0], rel=1e-6)
    assert frame["final norm"][1] != pytest.approx(frame["m*"][1], rel=1e-6)
    assert frame["image"][0] == 0.45 and frame["text"][0] == 0.52 and pd.isna(frame["image"][1])
    md = (out / "compare.md").read_text()
    assert "| dti | dti |" in md and "Table 2 layout" in md and "Table 3 layout" in md and "| 0.450 | 0.520 |" in md
    assert (out / "scatter.png").stat().st_size > 0 and (out / "drift.png").stat().st_size > 0
    res = json.loads((out / "results.json").read_text())
    assert [r["evaluated"] for r in res["runs"]] == [True, False]
    assert "dti" in stdout and "semantic drift" in stdout


def test_related_words_match_an_independent_cosine(runs, tiny_dir, tmp_path, capsys):
    from geomkit.embeddings_io import read_tensors
    from geomkit.models import load_encoder

    code, _, err = _run(capsys, "compare", runs["ti"], "--related", "bird", "--out", tmp_path / "c")
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "c" / "compare.csv")
    enc = load_encoder(str(tiny_dir("gemma3")))
    vec = read_tensors(runs["ti"] / "learned_embeds.safetensors")["<glimmerfox>"][0].double()
    row = enc.embedding_table()[enc.token_id("bird")].double()
    assert frame["cos bird"][0] == pytest.approx(torch.nn.functional.cosine_similarity(vec, row, dim=0).item(), abs=1e-9)


def test_sdxl_run_format_and_table2_pivot(runs, tmp_path, capsys):
    """A run in the trainer's SDXL format: two m* and two final norms, one per text encoder."""
    sdxl = tmp_path / "sdxl-dti"
    sdxl.mkdir()
    results = {"method": "dti", "objective": "diffusion", "model": "stabilityai/stable-diffusion-xl-base-1.0",
               "placeholder": "<dog>", "init_word": "dog", "m_star": [0.3863, 0.5612], "kappa": 1e-4, "lr": 5e-3,
               "steps": 500, "batch_size": 4, "final_loss": 0.1, "final_norm": [0.3863, 0.5612],
               "angle_from_init_deg": 40.0, "cos_to_prior": 0.76, "seconds": 420.0, "drift": {"dog": 0.76}}
    (sdxl / "results.json").write_text(json.dumps(results))
    (sdxl / "eval").mkdir()
    (sdxl / "eval" / "results.json").write_text(json.dumps({"image_similarity": 0.5, "text_alignment": 0.6, "n_images": 160, "per_prompt": []}))
    code, stdout, err = _run(capsys, "compare", sdxl, runs["ti"], "--labels", "xl", "gemma", "--out", tmp_path / "c")
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "c" / "compare.csv")
    assert frame["m*"][0] == "0.3863 / 0.5612" and frame["final norm"][0] == "0.3863 / 0.5612"
    assert list(frame["run"]) == ["xl", "gemma"]
    md = (tmp_path / "c" / "compare.md").read_text()
    assert "stable-diffusion-xl-base-1.0 image" in md and "| dti | 0.500 | 0.600 |" in md


def test_bad_inputs_give_one_line(runs, tmp_path, capsys):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    out = tmp_path / "never"
    _assert_one_line_error(*_run(capsys, "compare", runs["dti"], empty, "--out", out)[::2], "no results.json")
    _assert_one_line_error(*_run(capsys, "compare", tmp_path / "missing", "--out", out)[::2], "not found")
    _assert_one_line_error(*_run(capsys, "compare", runs["dti"], "--labels", "a", "b", "--out", out)[::2], "--labels")
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"mode": "slerp", "ratios": [0, 1]}))
    _assert_one_line_error(*_run(capsys, "compare", other, "--out", out)[::2], "not the results of a `geomkit train` run")
    assert not out.exists()
