"""`geomkit reproduce --quick` end to end on the real models (the CI run of the findings report)."""

import json

import pytest

from geomkit.cli import main

pytestmark = pytest.mark.real


def test_reproduce_quick_writes_report_and_resumes(tmp_path, capsys):
    results, figures = tmp_path / "probes", tmp_path / "figures"
    argv = ["reproduce", "--quick", "--results", str(results), "--figures", str(figures)]
    assert main(argv) == 0
    report = (figures / "REPORT.md").read_text()
    claims = json.loads((figures / "claims.json").read_text())
    assert claims["quick"] is True
    rows = claims["claims"]
    covered = {r["claim"].split(":")[0] for r in rows}
    assert {"Table 1/5", "Fig. 1a", "Fig. 1b", "Fig. 2", "Effect II", "Lemma 2", "Lemma 1", "Sec. 4.5"} <= covered
    assert {r["model"] for r in rows} == {"gemma3-270m", "minilm-l6", "whisper-tiny-en"}
    for r in rows:  # every row states agreement (or why it cannot) and the command that made it
        assert r["agrees"].startswith(("yes", "no", "partly", "n/a"))
        assert r["claim"].replace("|", "\\|") in report  # markdown escapes pipes
    # the numbers in the report are the numbers in the step outputs
    ti = json.loads((results / "gemma3-270m" / "train-ti" / "results.json").read_text())
    dti = json.loads((results / "gemma3-270m" / "train-dti" / "results.json").read_text())
    assert dti["final_norm"][0] == pytest.approx(dti["m_star"][0], rel=1e-6)
    assert f"DTI {dti['final_norm'][0]:.3f}" in report and f"TI {ti['final_norm'][0]:.3f}" in report
    lemma1 = [r for r in rows if r["claim"].startswith("Lemma 1") and r["model"] == "minilm-l6"][0]
    att = json.loads((results / "minilm-l6" / "attenuation" / "results.json").read_text())
    assert f"slope {att['loglog_slope']:.3f}" in lemma1["geomkit"]
    assert len(list(figures.glob("probe-position-*.png"))) == 3
    # trained tokens on Whisper (issue 10): the two claims have rows, and the numbers are the step outputs'
    whisper = {r["claim"]: r for r in rows if r["model"] == "whisper-tiny-en"}
    effect2 = whisper["Effect II: DTI tokens turn more per block than TI tokens"]
    fig2 = whisper["Fig. 2: TI tokens lose position, DTI tokens keep it"]
    ra = json.loads((results / "whisper-tiny-en" / "trained-angles" / "results.json").read_text())
    dti_angle = next(r["mean_angle_deg"] for r in ra["rows"] if r["scale"] is None and r["concept"].endswith("(train-dti)"))
    assert f"DTI {dti_angle:.2f} deg" in effect2["geomkit"] and effect2["step"] == "trained-angles"
    pp = json.loads((results / "whisper-tiny-en" / "trained-probe" / "results.json").read_text())
    dti_acc = next(v for k, v in pp["embeddings"].items() if k.endswith("(train-dti)"))
    assert f"DTI {dti_acc:.1%}" in fig2["geomkit"]
    wdti = [json.loads(line) for line in (results / "whisper-tiny-en" / "train-dti" / "train_log.jsonl").read_text().splitlines()]
    assert all(r["norm"] == pytest.approx(wdti[0]["norm"], rel=1e-6) for r in wdti)
    assert (figures / "trained-norms-whisper-tiny-en.png").exists()
    assert not (results / "gemma3-270m" / "train-ti-highlr").exists()  # too slow for --quick: not run there
    # resumable: a second run reuses every finished step
    capsys.readouterr()
    assert main(argv) == 0
    steps = json.loads((figures / "claims.json").read_text())["steps"]
    assert steps and all(s["status"] == "reused" for s in steps)


def test_reproduce_rejects_unknown_step(tmp_path, capsys):
    code = main(["reproduce", "--quick", "--only", "nonesuch", "--results", str(tmp_path / "r"), "--figures", str(tmp_path / "f")])
    assert code == 2
    assert "unknown step" in capsys.readouterr().err
