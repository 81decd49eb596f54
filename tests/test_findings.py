"""The findings layer: one verdict rule, the seeds summary, Lemma 2 graded only where it can fail,
and the README's findings table re-derived from the committed outputs under probes/."""

import json
from pathlib import Path

import pytest

from geomkit import findings, reproduce_seeds as rs, verdicts

ROOT = Path(__file__).resolve().parent.parent


def test_grade_needs_every_value_for_yes():
    assert verdicts.grade("table1", [0.0, 0.2]) == "yes"
    assert verdicts.grade("table1", [0.2, 0.7, 0.5]) == "partly"  # mean 0.47 < 0.75, not all < 0.25
    assert verdicts.grade("table1", [1.0, 1.0]) == "no"
    assert verdicts.grade("angle_ratio", [1.2, 1.3]) == "yes"
    assert verdicts.grade("angle_ratio", [1.2, 0.9]) == "partly"
    assert verdicts.grade("angle_ratio", []) == "n/a"
    # the rule is one table: every key has a printed grading
    assert {r["rule"] for r in verdicts.rules_table()} == set(verdicts.RULES)


def _rows():
    rows = []
    for c in ("a", "b"):
        for s in (1, 2):
            for m, angle, pos, norm in (("ti", 40.0, 0.0, 4.0), ("ti-rescaled", 50.0 + s, 0.8, 1.0),
                                        ("dti", 60.0, 1.0, 1.0), ("dti-kappa0", 60.0, 1.0, 1.0)):
                rows.append({"concept": c, "seed": s, "method": m, "norm_ratio": norm, "angle_deg": angle,
                             "position_accuracy": pos, "steps": 10, "cos_to_prior": 0.9 if m.startswith("dti") else 0.3,
                             "related_cosine": 0.5, "angle_from_init_deg": 10.0, "final_loss_mean10": 4.0})
    return rows


def test_seed_summary_statistics_and_pairs():
    s = rs.summarise(_rows())
    assert s["n_pairs"] == 4 and s["concepts"] == ["a", "b"] and s["seeds"] == [1, 2]
    assert s["by_method"]["ti"]["norm_ratio"] == {"mean": 4.0, "min": 4.0, "max": 4.0, "n": 4}
    p = s["paired"]["angle_ti_rescaled_over_ti"]
    assert p["n"] == 4 and p["min"] == pytest.approx(51 / 40) and p["max"] == pytest.approx(52 / 40)
    assert s["paired"]["position_dti_minus_ti_rescaled"]["mean"] == pytest.approx(0.2)
    assert s["paired"]["cos_to_prior_dti_minus_dti_kappa0"]["mean"] == pytest.approx(0.0)
    # a metric that is null for every run (no absolute positions) has n 0, not a number
    rows = [dict(r, position_accuracy=None) for r in _rows()]
    assert rs.summarise(rows)["paired"]["position_dti_minus_ti"] == {
        "mean": None, "min": None, "max": None, "n": 0, "compares": "position_accuracy: dti - ti per (concept, seed)"}


def test_lemma2_never_yes_on_a_bound_that_cannot_fail():
    g = {"concept": "<vocabulary>", "scale": 1.0, "n_measurements": 100, "violations_vocab": 3, "violations_analytic": 0,
         "nonvacuous_analytic_fraction": 0.0, "nonvacuous_vocab_fraction": 0.4}
    text, verdict = findings.lemma2_text({"prenorm": True, "by_scale": [g]})
    assert verdict.startswith("untestable") and "exceeded 3 times" in text and "3 exceedances" in verdict
    # informative somewhere: still a true sup, so 0 violations check the code and are never a "yes"
    g2 = dict(g, nonvacuous_analytic_fraction=0.25)
    v2 = findings.lemma2_text({"prenorm": True, "by_scale": [g2]})[1]
    assert v2.startswith("n/a (holds by construction") and "25.0%" in v2
    assert findings.lemma2_text({"prenorm": True, "by_scale": [dict(g2, violations_analytic=2)]})[1].startswith("no")
    assert findings.lemma2_text({"prenorm": False, "by_scale": [g]})[1] == "n/a (post-norm)"


def test_probe_that_does_not_generalise_is_inconclusive():
    pp = {"baseline_accuracy": 0.196, "train_accuracy": 0.999, "chance": 0.031}
    assert findings.probe_inconclusive(pp).startswith("inconclusive")
    assert findings.probe_inconclusive(dict(pp, baseline_accuracy=0.97)) is None


# ---- every number in the README's findings comes from a committed file ----------------------------
def test_readme_findings_block_is_derived_from_probes():
    """The README's findings table and its notes are exactly what the committed outputs under
    probes/ give (regenerate with `geomkit reproduce`, which reuses finished steps)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = findings.readme_block(ROOT / "probes")
    assert findings.README_BEGIN in readme and findings.README_END in readme
    shown = readme[readme.index(findings.README_BEGIN): readme.index(findings.README_END) + len(findings.README_END)]
    assert shown == block


def test_trained_seeds_results_have_the_promised_shape():
    for model, n_concepts in (("whisper-tiny-en", 3), ("gemma3-270m", 1)):
        res = json.loads((ROOT / "probes" / model / "trained-seeds" / "results.json").read_text())
        runs = res["runs"]
        assert {r["method"] for r in runs} == {"ti", "dti", "ti-rescaled", "dti-kappa0"}
        assert len({r["concept"] for r in runs}) >= n_concepts and len({r["seed"] for r in runs}) >= 3
        for r in runs:
            assert {"concept", "seed", "method", "norm_ratio", "angle_deg", "position_accuracy", "steps"} <= set(r)
            if r["method"] in ("dti", "dti-kappa0", "ti-rescaled"):
                assert r["norm_ratio"] == pytest.approx(1.0, abs=1e-5)
            assert (r["position_accuracy"] is None) == (model == "gemma3-270m")  # RoPE: no absolute positions
        # the summary is the summary of these runs
        assert res["summary"] == json.loads(json.dumps(rs.summarise(runs)))


def test_inspect_examples_in_the_readme_come_from_committed_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    gem = json.loads((ROOT / "probes" / "gemma3-270m" / "inspect" / "results.json").read_text())
    lines = [line.split() for line in readme.splitlines()]
    for t in gem["tokens"]:  # the transcript's table row of each token: norm, m*, norm/m*, percentile, angles
        want = [f"{t['norm']:.3f}", f"{t['m_star']:.3f}", f"{t['norm_ratio']:.3f}", f"{t['norm_percentile']:.3f}",
                f"{t['residual_angle_deg']:.3f}", f"{t['vocab_residual_angle_deg']:.3f}"]
        assert any(all(w in f for w in want) for f in lines), want
    river = json.loads((ROOT / "probes" / "minilm-l6" / "inspect-river-x8" / "results.json").read_text())
    orig, fixed = river["tokens"]
    for text in (f"norm {orig['norm_ratio']:.2f}x m* (m* {orig['m_star']:.4f})", f"position read {orig['position_accuracy']:.1%}",
                 f"vs {orig['position_accuracy_normal']:.1%} for normal tokens", f"copy: {fixed['position_accuracy']:.1%}"):
        assert text in readme, text


def test_update_readme_refuses_bad_folders_in_one_line(tmp_path):
    """`python -m geomkit.findings DIR`: no README, a README without the block, or no probes/ is one
    line naming the problem, and the README is left as it was."""
    from geomkit.errors import GeomkitError

    with pytest.raises(GeomkitError, match="cannot be read"):
        findings.update_readme(tmp_path / "README.md", tmp_path / "probes")
    (tmp_path / "README.md").write_text("no block here\n")
    with pytest.raises(GeomkitError, match="no generated findings block"):
        findings.update_readme(tmp_path / "README.md", tmp_path / "probes")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (tmp_path / "README.md").write_text(text, encoding="utf-8")
    with pytest.raises(GeomkitError, match="no reproduce outputs"):
        findings.update_readme(tmp_path / "README.md", tmp_path / "probes")
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == text
