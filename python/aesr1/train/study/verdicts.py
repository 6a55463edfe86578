"""Verdicts on a grid's claims, derived from the per-seed numbers by fixed rules.

For a check "a's <measure> is higher (lower) than b's" and the seeds where both values exist, the
paired differences d_s = a_s - b_s (b a number: d_s = a_s - b) give:

- k of n: the seeds in which the difference has the expected sign (0 counts against);
- mean difference ± sample standard deviation over seeds;
- the one-sided sign-test p-value P(K >= k) for K ~ Binomial(n, 1/2): with n = 3 seeds its
  smallest value is 0.125, so three seeds show a consistent direction, never significance at 5%.

A check holds "in all n seeds" (k = n), is "reversed in all n seeds" (k = 0) or is "mixed";
with fewer than 2 seeds it is "not testable". A claim is "consistent with the paper" when every one
of its checks holds in all seeds, "contradicted" when every one is reversed in all seeds, "not
testable" with fewer than 2 seeds, and "mixed" otherwise. A mean difference smaller than its
seed-to-seed standard deviation is flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from aesr1.train.study.grid import Check, Claim, Operand
from aesr1.train.study.measures import MEASURES

#: Per-seed values: seed -> {"sft": {measure: value}, "rapo": {measure: value}}.
SeedValues = dict[int, dict[str, dict[str, float]]]


@dataclass
class CheckResult:
    a: str
    b: str
    measure: str
    expect: str
    a_values: list[float]
    b_values: list[float]
    seeds: list[int]
    k: int
    n: int
    mean: float
    std: float
    p_sign: float
    status: str  # "holds", "reversed", "mixed", "not testable"

    def sentence(self) -> str:
        """One line of the report, e.g. "PLCC: error+rank > binary in 3 of 3 seeds, mean difference
        +0.0123 ± 0.0040 (sign test p = 0.125)"."""
        sign = ">" if self.expect == "higher" else "<"
        title = MEASURES[self.measure]
        if self.n == 0:
            return f"{title}: {self.a} {sign} {self.b}: no seed has both values"
        text = (
            f"{title}: {self.a} {sign} {self.b} in {self.k} of {self.n} seed{'s' if self.n != 1 else ''}, "
            f"mean difference {self.mean:+.4f}"
        )
        if self.n >= 2:
            text += f" ± {self.std:.4f} (sign test p = {self.p_sign:.3f})"
            if abs(self.mean) < self.std:
                text += "; the mean difference is smaller than its seed-to-seed spread"
        return text

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def sign_test(k: int, n: int) -> float:
    """One-sided P(K >= k), K ~ Binomial(n, 1/2)."""
    return math.fsum(math.comb(n, i) for i in range(k, n + 1)) / 2**n if n else math.nan


def _value(values: SeedValues, seed: int, operand: Operand | float, measure: str) -> float:
    if not isinstance(operand, Operand):
        return float(operand)
    value = values.get(operand.variant, {}).get(seed, {}).get(operand.stage, {}).get(measure, math.nan)
    return float(value) if value is not None else math.nan


def check_measure(check: Check, measure: str, values: dict[str, SeedValues]) -> CheckResult:
    """The per-seed comparison of one measure of `check` (module docstring); `values` maps a
    variant name to its per-seed values."""
    a_variant = values.get(check.a.variant, {})
    seeds, a_values, b_values = [], [], []
    for seed in sorted(a_variant):
        a = _value(values, seed, check.a, measure)
        b = _value(values, seed, check.b, measure)
        if math.isfinite(a) and math.isfinite(b):
            seeds.append(seed)
            a_values.append(a)
            b_values.append(b)
    diffs = [a - b for a, b in zip(a_values, b_values, strict=True)]
    n = len(diffs)
    k = sum(1 for d in diffs if (d > 0 if check.expect == "higher" else d < 0))
    mean = math.fsum(diffs) / n if n else math.nan
    std = math.sqrt(math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)) if n >= 2 else math.nan
    if n < 2:
        status = "not testable"
    elif k == n:
        status = "holds"
    elif k == 0:
        status = "reversed"
    else:
        status = "mixed"
    return CheckResult(
        a=str(check.a), b=str(check.b) if isinstance(check.b, Operand) else f"{check.b:g}", measure=measure,
        expect=check.expect, a_values=a_values, b_values=b_values, seeds=seeds, k=k, n=n, mean=mean,
        std=std, p_sign=sign_test(k, n), status=status,
    )  # fmt: skip


@dataclass
class ClaimResult:
    claim: Claim
    checks: list[CheckResult]
    verdict: str

    def to_dict(self) -> dict:
        return {
            "id": self.claim.id, "text": self.claim.text, "verdict": self.verdict,
            "checks": [c.to_dict() for c in self.checks],
        }  # fmt: skip

    def markdown(self) -> str:
        lines = [f"- **({self.claim.id}) {self.claim.text}**: {self.verdict}."]
        lines += [f"  - {c.sentence()}" for c in self.checks]
        return "\n".join(lines)


def judge(claim: Claim, values: dict[str, SeedValues]) -> ClaimResult:
    """Every check of `claim` on every measure it names, and the claim's verdict (module docstring)."""
    results = [check_measure(check, measure, values) for check in claim.checks for measure in check.measures]
    statuses = {r.status for r in results}
    if not results or "not testable" in statuses:
        verdict = "not testable (fewer than 2 seeds with both values)"
    elif statuses == {"holds"}:
        n = min(r.n for r in results)
        verdict = f"consistent with the paper in every check and every seed (n = {n}: a direction, not significance)"
    elif statuses == {"reversed"}:
        verdict = "contradicted: every check goes the other way in every seed"
    else:
        held = sum(r.status == "holds" for r in results)
        verdict = f"mixed: {held} of {len(results)} checks hold in every seed"
    return ClaimResult(claim, results, verdict)
