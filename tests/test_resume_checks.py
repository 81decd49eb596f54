"""`train --resume` (issue 19, items 1 and 2): a checkpoint belongs to its run, a run cannot go
back in steps, a damaged config.json is blamed on the file and the field, and skipped checkpoints
are one line. Every refusal leaves both run folders byte for byte as they were."""

from __future__ import annotations

import json

import pytest

from helpers import assert_one_line_error, run_cli

TOKEN = "<glimmerfox>"
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm_dir(tiny_dir):
    return str(tiny_dir("gemma3"))


def args(lm_dir, out, *extra, token=TOKEN, init="fox"):
    return ["train", "--model", lm_dir, "--texts", "glimmerfox", "--placeholder", token, "--init-word", init,
            "--method", "ti", "--lr", "0.02", "--seed", "7", "--batch-size", "2", "--out", str(out), "--quiet", *extra]


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def two_runs(lm_dir, tmp_path_factory):
    """Run A (4 steps, checkpoints at 2 and 4) and run B (another token, 2 steps)."""
    from geomkit.cli import main

    root = tmp_path_factory.mktemp("resume-checks")
    a, b = root / "run-a", root / "run-b"
    assert main(args(lm_dir, a, "--steps", "4", "--save-every", "2")) == 0
    texts = root / "b.txt"
    texts.write_text("".join(f"the <other> sat by the {w}.\n" for w in ("river", "door", "tree", "wall")))
    assert main(["train", "--model", lm_dir, "--texts", str(texts), "--placeholder", "<other>", "--init-word", "cat",
                 "--method", "ti", "--steps", "2", "--batch-size", "2", "--out", str(b), "--quiet"]) == 0
    return a, b


def test_a_checkpoint_of_another_run_is_refused_and_nothing_changes(two_runs, capsys):
    a, b = two_runs
    before_a, before_b = snapshot(a), snapshot(b)
    ckpt_b = b / "checkpoints" / "step-000002.json"
    code, _, err = run_cli(capsys, "train", "--out", a, "--resume", ckpt_b, "--steps", "6", "--quiet")
    assert_one_line_error(code, err, "belongs to the run in")
    assert str(b) in err and "--out " + str(b) in err
    assert snapshot(a) == before_a and snapshot(b) == before_b  # no learned_embeds/config/results overwritten


def test_a_checkpoint_into_a_new_folder_is_refused_and_leaves_no_folder(two_runs, tmp_path, capsys):
    _, b = two_runs
    fresh = tmp_path / "fresh"
    code, _, err = run_cli(capsys, "train", "--out", fresh, "--resume", b / "checkpoints" / "step-000002.json", "--quiet")
    assert_one_line_error(code, err, "belongs to the run in")
    assert not fresh.exists()


def test_fewer_steps_than_done_is_refused(two_runs, capsys):
    a, _ = two_runs
    before = snapshot(a)
    code, _, err = run_cli(capsys, "train", "--out", a, "--resume", "--steps", "3", "--quiet")
    assert_one_line_error(code, err, "already holds 4 steps")
    assert snapshot(a) == before
    results = json.loads((a / "results.json").read_text())
    assert results["steps"] == 4  # the record still matches the embedding


def test_steps_equal_to_done_writes_the_outputs_again(two_runs, capsys):
    a, _ = two_runs
    embeds = (a / "learned_embeds.safetensors").read_bytes()
    code, _, err = run_cli(capsys, "train", "--out", a, "--resume", "--steps", "4", "--quiet")
    assert code == 0, err
    assert (a / "learned_embeds.safetensors").read_bytes() == embeds
    assert json.loads((a / "results.json").read_text())["steps"] == 4


@pytest.mark.parametrize("field,value,needle", [
    ("method", "lora", "field 'method' is 'lora', not one of"),
    ("steps", "many", "field 'steps' is 'many'"),
    ("lr", -1, "field 'lr' is -1"),
    ("related", "fox", "field 'related'"),
    ("validation_prompts", [1, 2], "field 'validation_prompts'"),
])
def test_a_damaged_config_is_blamed_on_the_file_and_field(two_runs, tmp_path, capsys, field, value, needle):
    import shutil

    a, _ = two_runs
    run = tmp_path / "copy"
    shutil.copytree(a, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg[field] = value
    (run / "config.json").write_text(json.dumps(cfg))
    before = snapshot(run)
    code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--steps", "6", "--quiet")
    assert_one_line_error(code, err, needle)
    assert str(run / "config.json") in err and "--method" not in err.split("config.json")[0]
    assert snapshot(run) == before


def test_an_unreadable_config_is_named_not_called_no_run(two_runs, tmp_path, capsys):
    import shutil

    a, _ = two_runs
    run = tmp_path / "copy"
    shutil.copytree(a, run)
    (run / "config.json").write_text('{"method": "ti",')
    code, _, err = run_cli(capsys, "train", "--out", run, "--resume", "--quiet")
    assert_one_line_error(code, err, "not readable JSON")
    assert "config.json" in err and "holds no run to resume" not in err


def test_resume_check_functions_on_plain_values(tmp_path):
    from geomkit.errors import GeomkitError
    from geomkit.train import resume_check

    resume_check.check_steps(4, 4)
    resume_check.check_steps(4, 9)
    with pytest.raises(GeomkitError, match="cannot go back"):
        resume_check.check_steps(5, 4)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    resume_check.check_owner(out, out / "checkpoints" / "step-000001.json", {"model": "m"}, {"model": "m"})
    with pytest.raises(GeomkitError, match="another run"):
        resume_check.check_owner(out, out / "checkpoints" / "step-000001.json", {"model": "m"}, {"model": "other"})
    with pytest.raises(GeomkitError, match="belongs to the run in"):
        resume_check.check_owner(out, tmp_path / "elsewhere" / "checkpoints" / "step-000001.json", None)
    assert resume_check.read_saved_config(tmp_path / "none.json") is None
    assert resume_check.check_saved_config({"method": "dti", "steps": 3, "prior_word": None}, "c")["steps"] == 3
