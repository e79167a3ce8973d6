"""Verdict engine on planted-effect run directories written by the real Runner."""

import json
import math

import numpy as np
import pytest

from entropylab.study import Claim, Runner, analyse, evaluate_claims, load_jobs
from entropylab.study.analyse import BEGIN, END

from .synthetic import manipulation_claim, outcome_claim, planted_job, spec


def _run(tmp_path, n, claims, outcome, entropy, sd, **kw):
    sp = spec(n, claims=claims, arms=tuple(outcome))
    Runner(sp, planted_job(outcome, entropy, sd, **kw), tmp_path / "run").run(progress=False)
    return sp, tmp_path / "run"


def _verdicts(sp, out):
    jobs, _ = load_jobs(out)
    return evaluate_claims(sp.claims, jobs)


def test_planted_effect_is_reproduced_and_reported(tmp_path):
    claims = [manipulation_claim(), outcome_claim(preconditions=("manip",))]
    sp, out = _run(
        tmp_path, 10, claims, {"base": 0.0, "treat": 0.1}, {"base": 0.2, "treat": 0.6}, 0.02
    )
    readme = tmp_path / "README.md"
    readme.write_text(f"# study\n\n{BEGIN}\nold numbers\n{END}\n\ntail\n")
    summary = analyse(sp, out, readme=readme)
    res = summary["claims"]
    assert res["manip"]["verdict"] == "reproduced"
    assert res["outcome"]["verdict"] == "reproduced"
    assert res["outcome"]["label"] == "reproduced"  # 0.1 is not below the effect of interest
    assert res["outcome"]["estimate"] == pytest.approx(0.1, abs=0.02)
    assert res["outcome"]["n"] == 10 and res["outcome"]["p_value"] <= 2**-10 + 1e-12
    lo, hi = res["outcome"]["ci_low"], res["outcome"]["ci_high"]
    assert lo < 0.1 < hi and hi - lo < 0.05
    text = readme.read_text()
    assert "old numbers" not in text and text.endswith("tail\n") and "**reproduced**" in text
    results_md = (out / "RESULTS.md").read_text()
    assert "### outcome — reproduced" in results_md
    assert json.loads((out / "summary.json").read_text())["jobs_finished"] == 20
    assert (out / "plots" / "outcome.png").stat().st_size > 1000


def test_partial_run_analyses_but_never_writes_a_readme(tmp_path):
    sp = spec(4, claims=[outcome_claim()])
    job = planted_job({"base": 0.0, "treat": 0.1}, {"base": 0.2, "treat": 0.6}, 0.02)
    out = tmp_path / "run"
    Runner(sp, job, out).run(shard=(1, 2), progress=False)  # 4 of the 8 jobs
    readme = tmp_path / "README.md"
    readme.write_text(f"# study\n\n{BEGIN}\nold numbers\n{END}\n")
    with pytest.raises(ValueError, match="only 4 of 8 runs"):
        analyse(sp, out, readme=readme, plots=False)
    assert "old numbers" in readme.read_text() and not (out / "RESULTS.md").exists()
    summary = analyse(sp, out, plots=False)  # an interim look, labelled as such
    assert summary["jobs_finished"] == 4 and summary["jobs_expected"] == 8
    assert "4 of 8 (arm, init, seed) runs finished" in (out / "RESULTS.md").read_text()


def test_null_effect_is_not_reproduced(tmp_path):
    sp, out = _run(
        tmp_path,
        10,
        [outcome_claim()],
        {"base": 0.0, "treat": 0.0},
        {"base": 0.2, "treat": 0.2},
        0.02,
    )
    r = _verdicts(sp, out)["outcome"]
    assert r.verdict == "not reproduced"  # an effect of 0.05 is ruled out
    assert r.p_against < 0.05 and r.mde < 0.05


def test_underpowered_study_is_inconclusive_with_its_mde(tmp_path):
    sp, out = _run(
        tmp_path,
        4,
        [outcome_claim()],
        {"base": 0.0, "treat": 0.1},
        {"base": 0.2, "treat": 0.2},
        0.02,
    )
    r = _verdicts(sp, out)["outcome"]
    assert r.verdict == "inconclusive" and math.isinf(r.mde)
    assert "cannot reach" in r.reason and r.label() == "inconclusive (MDE ∞)"
    # noisy but large enough n for a finite MDE, still too noisy to decide
    sp, out = _run(
        tmp_path / "b",
        7,
        [outcome_claim()],
        {"base": 0.0, "treat": 0.03},
        {"base": 0.2, "treat": 0.2},
        0.3,
    )
    r = _verdicts(sp, out)["outcome"]
    assert r.verdict == "inconclusive" and 0.05 < r.mde < math.inf
    assert r.label().startswith("inconclusive (MDE 0.")


def test_failed_manipulation_check_blocks_the_outcome(tmp_path):
    claims = [manipulation_claim(), outcome_claim(preconditions=("manip",))]
    # a real outcome effect, but the arm did not move entropy: the outcome is not assessed
    sp, out = _run(
        tmp_path, 10, claims, {"base": 0.0, "treat": 0.1}, {"base": 0.2, "treat": 0.21}, 0.02
    )
    res = _verdicts(sp, out)
    assert res["manip"].verdict == "not reproduced"
    assert res["outcome"].verdict == "blocked"
    assert "manip: not reproduced" in res["outcome"].reason
    assert res["outcome"].label().startswith("blocked (manipulation check")


def test_non_inferiority_and_equivalence(tmp_path):
    ni = outcome_claim(name="ni", test="non_inferiority", margin=0.05, effect_of_interest=None)
    eq = outcome_claim(name="eq", test="equivalence", margin=0.05, effect_of_interest=None)
    sp, out = _run(
        tmp_path, 10, [ni, eq], {"base": 0.0, "treat": 0.0}, {"base": 0.2, "treat": 0.2}, 0.02
    )
    res = _verdicts(sp, out)
    assert res["ni"].verdict == "reproduced" and res["eq"].verdict == "reproduced"
    sp, out = _run(
        tmp_path / "b",
        10,
        [ni, eq],
        {"base": 0.0, "treat": -0.15},
        {"base": 0.2, "treat": 0.2},
        0.02,
    )
    res = _verdicts(sp, out)
    assert res["ni"].verdict == "not reproduced" and res["eq"].verdict == "not reproduced"


def test_trend_and_dose_response(tmp_path):
    trend = Claim(
        name="collapse",
        statement="entropy falls during RL",
        metric="rollout/entropy",
        test="trend",
        arm="base",
        direction="less",
        effect_of_interest=0.01,
    )
    dose = Claim(
        name="dose",
        statement="pass@1 rises with the dose",
        metric="eval/pass@1",
        test="dose_response",
        doses=(("base", 0.0), ("lo", 1.0), ("hi", 2.0)),
        effect_of_interest=0.02,
    )
    sp, out = _run(
        tmp_path,
        8,
        [trend, dose],
        {"base": 0.0, "lo": 0.05, "hi": 0.1},
        {"base": 0.2, "lo": 0.3, "hi": 0.4},
        0.01,
    )
    res = _verdicts(sp, out)
    assert res["collapse"].verdict == "reproduced" and res["collapse"].estimate < 0
    assert res["dose"].verdict == "reproduced"
    assert res["dose"].estimate == pytest.approx(0.05, abs=0.01)


def test_nonfinite_units_are_dropped_and_counted(tmp_path):
    sp, out = _run(
        tmp_path,
        9,
        [outcome_claim()],
        {"base": 0.0, "treat": 0.1},
        {"base": 0.2, "treat": 0.2},
        0.02,
        nan_inits=(2, 5),
    )
    r = _verdicts(sp, out)["outcome"]
    assert r.n == 7 and r.n_dropped == 2 and set(r.units) == {"0", "1", "3", "4", "6", "7", "8"}


def test_analyse_refuses_a_different_spec_and_flags_changed_claims(tmp_path):
    sp, out = _run(
        tmp_path,
        5,
        [outcome_claim()],
        {"base": 0.0, "treat": 0.1},
        {"base": 0.2, "treat": 0.2},
        0.02,
    )
    other = spec(5, claims=[outcome_claim()], steps=7)
    with pytest.raises(RuntimeError, match="was run with config"):
        analyse(other, out, plots=False)
    changed = spec(5, claims=[outcome_claim(effect_of_interest=0.2)])
    analyse(changed, out, plots=False)
    assert "claims were changed after the run started" in (out / "RESULTS.md").read_text()


def test_claim_validation():
    with pytest.raises(ValueError, match="test must be"):
        outcome_claim(test="bayes")
    with pytest.raises(ValueError, match="effect_of_interest"):
        outcome_claim(effect_of_interest=None)
    with pytest.raises(ValueError, match="margin must be > 0"):
        outcome_claim(test="equivalence")
    with pytest.raises(ValueError, match="must differ"):
        outcome_claim(baseline="treat")
    with pytest.raises(ValueError, match="mean_last"):
        outcome_claim(reduce="mean_last:x")
    with pytest.raises(TypeError, match="trend claim"):
        outcome_claim(test="trend", metric=lambda j: 1.0)
    with pytest.raises(ValueError, match="unknown preconditions"):
        evaluate_claims([outcome_claim(preconditions=("nope",))], [])
    cyc = [
        outcome_claim(name="a", preconditions=("b",)),
        outcome_claim(name="b", preconditions=("a",)),
    ]
    with pytest.raises(ValueError, match="cycle"):
        evaluate_claims(cyc, [])


def test_callable_metric_and_one_sample_claim(tmp_path):
    def final_entropy(job):
        return float(job.series("rollout/entropy")[1][-1])

    c = Claim(
        name="low",
        statement="base ends below 0.5 nats",
        metric=final_entropy,
        test="superiority",
        arm="base",
        null_value=0.5,
        direction="less",
        effect_of_interest=0.1,
    )
    sp, out = _run(tmp_path, 6, [c], {"base": 0.0, "treat": 0.0}, {"base": 0.2, "treat": 0.2}, 0.02)
    r = _verdicts(sp, out)["low"]
    assert r.verdict == "reproduced" and r.estimate == pytest.approx(
        np.mean([0.2 + 0.8 * np.exp(-2)] * 6) - 0.5
    )


def test_a_small_but_real_effect_is_reproduced_and_flagged_as_smaller(tmp_path):
    sp, out = _run(
        tmp_path,
        10,
        [outcome_claim()],
        {"base": 0.0, "treat": 0.02},
        {"base": 0.2, "treat": 0.2},
        0.002,
    )
    r = _verdicts(sp, out)["outcome"]
    assert r.verdict == "reproduced" and "smaller than the effect of interest 0.05" in r.reason
    # the README / RESULTS.md label says so too, not a bare "reproduced"
    assert r.below_interest and r.label() == "reproduced, below the effect of interest (0.05)"
    summary = analyse(sp, out, plots=False)
    assert summary["claims"]["outcome"]["label"] == r.label()
    assert "**reproduced, below the effect of interest (0.05)**" in (out / "RESULTS.md").read_text()


def test_verdict_engine_false_positive_rate_under_the_null():
    """400 null studies (n = 8 inits, exchangeable arms): 'reproduced' at about the test's size
    12/256 = 0.047 (binomial sd 0.011; bound 4 sd)."""
    from entropylab.study.claims import JobData, evaluate_claim

    rng = np.random.default_rng(11)
    claim = outcome_claim(n_boot=200)
    hits = 0
    for _ in range(400):
        vals = rng.normal(0.4, 0.05, size=(2, 8))
        jobs = [
            JobData(arm=a, init=i, seed=0, records=[{"step": 1, "eval/pass@1": vals[k, i]}])
            for k, a in enumerate(("base", "treat"))
            for i in range(8)
        ]
        hits += evaluate_claim(claim, jobs).verdict == "reproduced"
    assert abs(hits / 400 - 12 / 256) < 4 * math.sqrt(0.047 * 0.953 / 400)
