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
        assert r["agrees"].startswith(("yes", "no", "partly", "n/a", "untestable", "inconclusive"))
        assert r["claim"].replace("|", "\\|") in report  # markdown escapes pipes
    # the numbers in the report are the numbers in the step outputs
    lemma1 = [r for r in rows if r["claim"].startswith("Lemma 1") and r["model"] == "minilm-l6"][0]
    att = json.loads((results / "minilm-l6" / "attenuation" / "results.json").read_text())
    assert f"slope {att['loglog_slope']:.3f}" in lemma1["geomkit"]
    models = ("gemma3-270m", "minilm-l6", "whisper-tiny-en")
    for kind in ("probe-position", "probe-position-authors"):  # geomkit's protocol and the authors', per model
        assert all((figures / f"{kind}-{m}.png").is_file() for m in models)
    # trained tokens (issue 18): a small seeds experiment on Whisper with both controls, summarised,
    # and the claims cite its numbers with n
    seeds = json.loads((results / "whisper-tiny-en" / "trained-seeds" / "results.json").read_text())
    assert {r["method"] for r in seeds["runs"]} == {"ti", "ti-rescaled", "dti", "dti-kappa0"}
    assert len(seeds["runs"]) == 2 * 2 * 4 and all(r["position_accuracy"] is not None for r in seeds["runs"])
    whisper = {r["claim"]: r for r in rows if r["model"] == "whisper-tiny-en"}
    effect2 = whisper["Effect II: DTI tokens turn more per block than TI tokens"]
    ratio = seeds["summary"]["paired"]["angle_dti_over_ti"]
    assert f"{ratio['mean']:.2f} ({ratio['min']:.2f} to {ratio['max']:.2f}, n=4)" in effect2["geomkit"]
    fig2 = whisper["Fig. 2: TI tokens lose position, DTI tokens keep it"]
    assert "ti-rescaled" in fig2["geomkit"] and fig2["step"] == "trained-seeds"
    lemma2 = [r for r in rows if r["claim"].startswith("Lemma 2")]
    assert all(not r["agrees"].startswith("yes") or "where testable" in r["agrees"] for r in lemma2)
    assert not any("keeps interpolants at the inputs' norm" in r["claim"] for r in rows)  # true by construction
    assert (figures / "trained-norms-whisper-tiny-en.png").exists() and (figures / "trained-seeds-whisper-tiny-en.png").exists()
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
