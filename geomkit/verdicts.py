"""One rule for every graded verdict of the findings report (REPORT.md, claims.json, README).

A claim's measurement is a list of values (one per model run, seed or concept; a single
measurement is a list of one). Each claim names two thresholds on the side the paper claims:

- **yes**: every value is beyond the `yes` threshold (so n and the range both support it);
- **partly**: the mean is beyond the `partly` threshold, but not every value passes `yes`;
- **no**: otherwise.

The thresholds live in `RULES`, once, and apply to every model alike; REPORT.md prints the table.
A verdict that cannot fail (a bound that is 180 deg wherever it is evaluated, a property that
holds by construction) is not graded: the caller says "untestable" or "n/a" and why. The
thresholds say whether an effect is there, not whether it is as large as the paper's CLIP/SDXL
number, which each report row shows beside geomkit's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Rule:
    what: str  # the measured quantity, as the report names it
    side: str  # "above" or "below": where the paper's claim lies
    yes: float
    partly: float

    def passes(self, x: float, t: float) -> bool:
        return x > t if self.side == "above" else x < t

    def text(self) -> str:
        s = ">" if self.side == "above" else "<"
        return f"yes: every value {s} {self.yes:g}; partly: mean {s} {self.partly:g}"


RULES = {
    "table1": Rule("share of a word's top-10 cosine neighbours that are also its Euclidean ones", "below", 0.25, 0.5),
    "norm_inflation": Rule("TI norm / m*", "above", 3.0, 1.2),
    "drift": Rule("mean cosine to the concept's related words, DTI minus TI", "above", 0.05, 0.0),
    "probe_baseline": Rule("position-probe accuracy on clean held-out prompts", "above", 0.95, 0.5),
    "probe_collapse": Rule("accuracy at the largest m / accuracy on clean inputs", "below", 0.5, 0.8),
    "position_kept": Rule("position accuracy, DTI minus TI (fraction)", "above", 0.05, 0.0),
    "angle_shrinks": Rule("per-block angle of scaled words, at the largest m / at m = 1", "below", 0.5, 0.9),
    "angle_ratio": Rule("per-block angle, DTI / TI", "above", 1.05, 1.025),
    "lemma1_slope": Rule("|log-log slope + 1|", "below", 0.1, 0.25),
    "prior_pull": Rule("cosine to the prior word, DTI minus DTI with kappa 0", "above", 0.01, 0.001),
}


def grade(key: str, values: Iterable[float]) -> str:
    """'yes', 'partly' or 'no' for `values` under RULES[key]; 'n/a' when there are none."""
    rule = RULES[key]
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return "n/a"
    if all(rule.passes(x, rule.yes) for x in xs):
        return "yes"
    if rule.passes(sum(xs) / len(xs), rule.partly):
        return "partly"
    return "no"


def rules_table() -> list[dict]:
    """The rules as report rows."""
    return [{"rule": k, "measured": r.what, "grading": r.text()} for k, r in RULES.items()]
