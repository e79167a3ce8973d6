"""Pre-registered claims and the verdict engine.

A :class:`Claim` is written *before* the study runs and fixes everything the verdict depends on:
the metric (a logged per-step key and how it is reduced to one number per job, or a function of
the job's logs), the arms compared, the test, the direction, the margin, α, the power, the
smallest effect of interest and the manipulation checks that must pass first. ``evaluate_claims``
turns a loaded run directory into one :class:`ClaimResult` per claim with a verdict:

* **reproduced** — the exact one-sided test (``stats.sign_flip_pvalue``) rejects H0 at α in the
  claimed direction;
* **not reproduced** — the data rule out the claim at α: for superiority / trend /
  dose-response, an effect as large as ``effect_of_interest`` is rejected (one-sided test of
  H0: effect ≥ effect_of_interest); for non-inferiority, inferiority beyond the margin is shown;
  for equivalence, a difference beyond the margin is shown (either side, Bonferroni). A
  reproduced effect that is also significantly smaller than ``effect_of_interest`` stays
  *reproduced* (its direction holds) and the reason says it is smaller than claimed;
* **inconclusive** — neither; the result carries the MDE at the observed variance and n, so the
  reader sees how large an effect this study could have detected;
* **blocked** — a precondition (manipulation check) is not *reproduced*, so the outcome is not
  assessed: an intervention that did not move entropy says nothing about entropy's effect.

Units are initialisations: a job's value is averaged over its seeds within (arm, init), and arms
are paired within an init. Units whose value is not finite (a diverged run) are dropped from the
comparison in every arm and counted in ``n_dropped`` — never replaced by a number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from entropylab.study import stats

TESTS = ("superiority", "non_inferiority", "equivalence", "trend", "dose_response")
REDUCERS = ("last", "first", "mean", "max", "min")
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "blocked")


#: ``Claim(metric="result:<key>")`` reads ``<key>`` of the dict the job function returned
RESULT_PREFIX = "result:"


@dataclasses.dataclass(frozen=True)
class JobData:
    """What one finished job left: per-step records, per-problem eval outcomes, its result."""

    arm: str
    init: int
    seed: int
    records: list[dict]
    evals: list[dict] = dataclasses.field(default_factory=list)
    result: dict = dataclasses.field(default_factory=dict)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of ``key`` over the records that log it (None → NaN)."""
        rows = [(r["step"], r[key]) for r in self.records if key in r]
        if not rows:
            raise ValueError(
                f"metric {key!r} is not logged by job (arm={self.arm!r}, init={self.init}, "
                f"seed={self.seed})"
            )
        steps = np.array([s for s, _ in rows], np.float64)
        vals = np.array([np.nan if v is None else v for _, v in rows], np.float64)
        return steps, vals


@dataclasses.dataclass(frozen=True, kw_only=True)
class Claim:
    """One pre-registered claim.

    Args:
      name: short identifier (used by ``preconditions`` and in file names).
      statement: the claim in words, as the paper makes it.
      metric: a logged per-step key (e.g. ``"eval/pass@1"``), ``"result:<key>"`` (a value of
        the dict the job function returned, e.g. ``"result:heldout/ppl"``) or
        ``f(job: JobData) -> float``.
      reduce: how a logged key becomes one number per job: ``last``, ``first``, ``mean``, ``max``,
        ``min`` or ``mean_last:K`` (mean of the last K logged values). Ignored for ``trend``.
      test: ``superiority`` | ``non_inferiority`` | ``equivalence`` | ``trend`` | ``dose_response``.
      arm / baseline: the arms compared (treatment − baseline, paired by init). ``baseline=None``
        makes it a one-sample test of ``arm``'s value against ``null_value``. For ``trend``, the
        per-unit slope of the metric over steps (difference of slopes if a baseline is given).
      doses: for ``dose_response``: ``((arm, dose), ...)``; the per-unit OLS slope of the value
        on the dose is tested.
      direction: ``greater`` or ``less`` — the direction the paper claims.
      transform: ``none`` or ``log`` (values are logged first: a ratio claim such as "entropy ≥
        1.5× baseline" is superiority with ``transform="log"``, ``margin=log(1.5)``).
      margin: superiority: H0 effect ≤ margin (0 = plain superiority); non-inferiority: H0 effect
        ≤ −margin; equivalence: |effect| ≥ margin. In the claimed direction, transformed units.
      effect_of_interest: the smallest effect the paper's claim implies (the pre-registered
        MDE); "not reproduced" means an effect this large is ruled out.
      alpha, power: level of the one-sided tests and the power used for the reported MDE.
      preconditions: names of claims (manipulation checks) that must be *reproduced* first.
    """

    name: str
    statement: str
    metric: str | Callable[[JobData], float]
    test: str
    arm: str | None = None
    baseline: str | None = None
    doses: tuple[tuple[str, float], ...] = ()
    reduce: str = "last"
    direction: str = "greater"
    transform: str = "none"
    margin: float = 0.0
    null_value: float = 0.0
    effect_of_interest: float | None = None
    alpha: float = 0.05
    power: float = 0.8
    preconditions: tuple[str, ...] = ()
    kind: str = "outcome"
    n_boot: int = 10000
    seed: int = 0

    def __post_init__(self):
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"name must be a non-empty [A-Za-z0-9_-] word, got {self.name!r}")
        if self.test not in TESTS:
            raise ValueError(f"test must be one of {TESTS}, got {self.test!r}")
        if self.direction not in stats.ALTERNATIVES:
            raise ValueError(
                f"direction must be one of {stats.ALTERNATIVES}, got {self.direction!r}"
            )
        if self.transform not in ("none", "log"):
            raise ValueError(f"transform must be 'none' or 'log', got {self.transform!r}")
        if not (callable(self.metric) or isinstance(self.metric, str)):
            raise TypeError(f"metric must be a str or a callable, got {type(self.metric).__name__}")
        if self.test == "trend" and not isinstance(self.metric, str):
            raise TypeError("a trend claim needs a logged metric key, not a callable")
        if self.test == "trend" and self.metric.startswith(RESULT_PREFIX):
            raise ValueError("a trend claim needs a logged per-step key, not a 'result:' value")
        _parse_reduce(self.reduce)
        if not 0 < self.alpha < 0.5:
            raise ValueError(f"alpha must be in (0, 0.5), got {self.alpha}")
        if not 0 < self.power < 1:
            raise ValueError(f"power must be in (0, 1), got {self.power}")
        if self.kind not in ("outcome", "manipulation"):
            raise ValueError(f"kind must be 'outcome' or 'manipulation', got {self.kind!r}")
        if self.test == "dose_response":
            if len(self.doses) < 2 or len({d for _, d in self.doses}) < 2:
                raise ValueError("doses must list at least two arms with different doses")
        elif self.arm is None:
            raise ValueError(f"arm is required for a {self.test} claim")
        if self.test in ("non_inferiority", "equivalence") and not self.margin > 0:
            raise ValueError(f"margin must be > 0 for {self.test}, got {self.margin}")
        if self.test in ("superiority", "trend", "dose_response"):
            if self.effect_of_interest is None or not self.effect_of_interest > self.margin:
                raise ValueError(
                    f"effect_of_interest must be given and > margin for {self.test}, "
                    f"got {self.effect_of_interest}"
                )
        if self.baseline is not None and self.baseline == self.arm:
            raise ValueError(f"arm and baseline must differ, both are {self.arm!r}")
        if self.test in ("non_inferiority", "equivalence") and self.baseline is None:
            raise ValueError(f"baseline is required for a {self.test} claim")

    @property
    def arms(self) -> tuple[str, ...]:
        if self.test == "dose_response":
            return tuple(a for a, _ in self.doses)
        return tuple(a for a in (self.arm, self.baseline) if a is not None)


@dataclasses.dataclass(frozen=True)
class ClaimResult:
    claim: str
    verdict: str
    reason: str
    test: str
    estimate: float  # mean per-unit effect (original direction, transformed units)
    ci_low: float  # (1 − 2α) percentile bootstrap interval of the mean effect
    ci_high: float
    p_value: float  # one-sided p of the claim's test (TOST max for equivalence)
    p_against: float  # one-sided p of the test against the claim ("not reproduced")
    mde: float  # at the observed sd and n, level α, the claim's power
    n: int
    n_dropped: int
    alpha: float
    effect_of_interest: float | None
    margin: float
    units: dict[str, float]  # per-init effect values
    arm_means: dict[str, float]

    @property
    def below_interest(self) -> bool:
        """Reproduced, but the effect is also significantly *smaller* than the effect of
        interest (the test against the claim rejects too): real, yet smaller than claimed."""
        return (
            self.verdict == "reproduced"
            and self.test in ("superiority", "trend", "dose_response")
            and self.effect_of_interest is not None
            and self.p_against < self.alpha
        )

    def label(self) -> str:
        """``reproduced`` / ``reproduced, below the effect of interest (…)`` / ``not
        reproduced`` / ``inconclusive (MDE …)`` / ``blocked (…)``."""
        if self.verdict == "inconclusive":
            return f"inconclusive (MDE {_fmt(self.mde)})"
        if self.verdict == "blocked":
            return f"blocked ({self.reason})"
        if self.below_interest:
            return f"reproduced, below the effect of interest ({_fmt(self.effect_of_interest)})"
        return self.verdict


def _fmt(x: float) -> str:
    return "∞" if math.isinf(x) else f"{x:.3g}"


def _parse_reduce(reduce: str) -> tuple[str, int]:
    if reduce.startswith("mean_last:"):
        k = reduce.split(":", 1)[1]
        if not k.isdigit() or int(k) < 1:
            raise ValueError(f"reduce 'mean_last:K' needs an integer K >= 1, got {reduce!r}")
        return "mean_last", int(k)
    if reduce not in REDUCERS:
        raise ValueError(f"reduce must be one of {REDUCERS} or 'mean_last:K', got {reduce!r}")
    return reduce, 0


def job_value(job: JobData, metric, reduce: str = "last") -> float:
    """One number for a job: ``metric(job)``, ``job.result[key]`` for ``"result:<key>"`` (what
    the job function returned), or the reduced series of a logged key."""
    if callable(metric):
        return float(metric(job))
    if metric.startswith(RESULT_PREFIX):
        key = metric[len(RESULT_PREFIX) :]
        if key not in job.result:
            raise ValueError(
                f"metric {metric!r}: the job's result has no {key!r} (arm={job.arm!r}, "
                f"init={job.init}, seed={job.seed}; it has {sorted(job.result)})"
            )
        v = job.result[key]
        return math.nan if v is None else float(v)
    _, vals = job.series(metric)
    how, k = _parse_reduce(reduce)
    if how == "last":
        return float(vals[-1])
    if how == "first":
        return float(vals[0])
    if how == "mean_last":
        return float(np.mean(vals[-k:]))
    return float(getattr(np, how)(vals))  # mean / max / min; a NaN stays NaN


def _by_unit(jobs: Sequence[JobData], arm: str, fn: Callable[[JobData], float]) -> dict[int, float]:
    """Per-init value of ``fn`` in ``arm``, averaged over seeds."""
    acc: dict[int, list[float]] = {}
    for j in jobs:
        if j.arm == arm:
            acc.setdefault(j.init, []).append(fn(j))
    if not acc:
        raise ValueError(f"no finished job of arm {arm!r} in the run directory")
    return {i: float(np.mean(v)) for i, v in sorted(acc.items())}


def _unit_effects(claim: Claim, jobs: Sequence[JobData]) -> tuple[dict, dict, int]:
    """Per-init effect values (claim direction not applied), arm means, dropped-unit count."""

    def tr(v: float) -> float:
        if claim.transform == "log":
            return math.log(v) if v > 0 else math.nan
        return v

    if claim.test == "trend":

        def val(j):
            steps, vals = j.series(claim.metric)
            vals = np.array([tr(v) for v in vals])
            return float(stats.ols_slope(steps, vals)) if np.all(np.isfinite(vals)) else math.nan
    else:

        def val(j):
            return tr(job_value(j, claim.metric, claim.reduce))

    per_arm = {a: _by_unit(jobs, a, val) for a in claim.arms}
    inits = sorted(set.intersection(*(set(v) for v in per_arm.values())))
    ok = [i for i in inits if all(math.isfinite(per_arm[a][i]) for a in claim.arms)]
    dropped = len(set().union(*(set(v) for v in per_arm.values()))) - len(ok)
    if claim.test == "dose_response":
        doses = np.array([d for _, d in claim.doses])
        y = np.array([[per_arm[a][i] for a, _ in claim.doses] for i in ok])
        eff = stats.ols_slope(np.broadcast_to(doses, y.shape), y) if ok else np.array([])
    elif claim.baseline is None:
        eff = np.array([per_arm[claim.arm][i] - claim.null_value for i in ok])
    else:
        eff = np.array([per_arm[claim.arm][i] - per_arm[claim.baseline][i] for i in ok])
    means = {a: float(np.mean([per_arm[a][i] for i in ok])) if ok else math.nan for a in per_arm}
    return dict(zip((str(i) for i in ok), eff.tolist())), means, dropped


def evaluate_claim(claim: Claim, jobs: Sequence[JobData]) -> ClaimResult:
    """Verdict for one claim on the finished jobs (preconditions are handled by the caller)."""
    units, means, dropped = _unit_effects(claim, jobs)
    d = np.array(list(units.values()), np.float64)
    n = d.size
    s = 1.0 if claim.direction == "greater" else -1.0
    common = dict(
        claim=claim.name,
        test=claim.test,
        n=n,
        n_dropped=dropped,
        alpha=claim.alpha,
        effect_of_interest=claim.effect_of_interest,
        margin=claim.margin,
        units=units,
        arm_means=means,
    )
    if n < 2:
        return ClaimResult(
            verdict="inconclusive",
            reason=f"{n} usable unit(s) ({dropped} dropped): no test is possible",
            estimate=float(d.mean()) if n else math.nan,
            ci_low=math.nan,
            ci_high=math.nan,
            p_value=math.nan,
            p_against=math.nan,
            mde=math.inf,
            **common,
        )
    x = s * d  # effect in the claimed direction
    a = claim.alpha

    def p(null, alt):
        return float(stats.sign_flip_pvalue(x, null=null, alternative=alt, seed=claim.seed))

    sd = float(np.std(x, ddof=1))
    if claim.test == "non_inferiority":
        p_for, p_against = p(-claim.margin, "greater"), p(-claim.margin, "less")
        mde = stats.mde(sd, n, alpha=a, power=claim.power)
    elif claim.test == "equivalence":
        p_for = max(p(-claim.margin, "greater"), p(claim.margin, "less"))
        # a difference beyond the margin on either side: two one-sided tests, Bonferroni
        p_against = min(1.0, 2 * min(p(claim.margin, "greater"), p(-claim.margin, "less")))
        # smallest margin that equivalence could be shown for when the true difference is 0
        mde = stats.mde(sd, n, alpha=a, power=(1 + claim.power) / 2)
    else:  # superiority, trend, dose-response
        p_for, p_against = p(claim.margin, "greater"), p(claim.effect_of_interest, "less")
        mde = stats.mde(sd, n, alpha=a, power=claim.power)
    lo, hi = stats.bootstrap_ci(d, level=1 - 2 * a, n_boot=claim.n_boot, seed=claim.seed)
    if p_for < a:
        verdict, reason = "reproduced", f"one-sided p = {p_for:.3g} < α = {a}"
        if claim.test in ("superiority", "trend", "dose_response") and p_against < a:
            reason += (
                f"; but the effect is smaller than the effect of interest "
                f"{_fmt(claim.effect_of_interest)} (p = {p_against:.3g})"
            )
    elif p_against < a:
        verdict = "not reproduced"
        reason = f"the claimed effect is ruled out: p = {p_against:.3g} < α = {a}"
    else:
        verdict = "inconclusive"
        floor = stats.min_pvalue(n)
        reason = f"p = {p_for:.3g}, MDE {_fmt(mde)} at n = {n}" + (
            f" (n = {n} cannot reach α: smallest p is {floor:.3g})" if floor > a else ""
        )
    return ClaimResult(
        verdict=verdict,
        reason=reason,
        estimate=float(d.mean()),
        ci_low=float(lo),
        ci_high=float(hi),
        p_value=p_for,
        p_against=p_against,
        mde=float(mde),
        **common,
    )


def evaluate_claims(claims: Sequence[Claim], jobs: Sequence[JobData]) -> dict[str, ClaimResult]:
    """Evaluate claims in dependency order; a claim whose preconditions fail is ``blocked``."""
    by_name: dict[str, Claim] = {}
    for c in claims:
        if c.name in by_name:
            raise ValueError(f"claim name {c.name!r} is used twice")
        by_name[c.name] = c
    for c in claims:
        missing = [q for q in c.preconditions if q not in by_name]
        if missing:
            raise ValueError(f"claim {c.name!r} has unknown preconditions {missing}")
    results: dict[str, ClaimResult] = {}
    visiting: set[str] = set()

    def visit(name: str) -> ClaimResult:
        if name in results:
            return results[name]
        if name in visiting:
            raise ValueError(f"claim preconditions form a cycle through {name!r}")
        visiting.add(name)
        c = by_name[name]
        pre = {q: visit(q) for q in c.preconditions}
        res = evaluate_claim(c, jobs)
        failed = [q for q, r in pre.items() if r.verdict != "reproduced"]
        if failed:
            why = ", ".join(f"{q}: {pre[q].verdict}" for q in failed)
            res = dataclasses.replace(
                res, verdict="blocked", reason=f"manipulation check not passed ({why})"
            )
        visiting.discard(name)
        results[name] = res
        return res

    for c in claims:
        visit(c.name)
    return {c.name: results[c.name] for c in claims}


def result_dict(r: ClaimResult) -> dict[str, Any]:
    """JSON-ready dict (inf/NaN become the strings ``"inf"``/``"nan"``)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, Mapping):
            return {k: clean(x) for k, x in v.items()}
        return v

    return {**clean(dataclasses.asdict(r)), "label": r.label()}
