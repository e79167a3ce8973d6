"""Law vs linear-in-H vs time-only, leave-one-(group-)out."""

import numpy as np
import pytest

from entropylab.study import JobData, compare_law_models, law_advantage


def _law_data(rng, n=30):
    t = np.arange(n, dtype=float)
    h = 1.5 * np.exp(-t / 8) + 0.05 * rng.normal(size=n)  # entropy with its own noise
    r = -0.2 * np.exp(h) + 0.9  # performance follows the law exactly in H
    return h, r, t


def test_law_wins_when_performance_follows_the_law():
    h, r, t = _law_data(np.random.default_rng(0))
    sc = compare_law_models(h, r, t)
    assert sc["law"].loo_rmse < 1e-9 and sc["law"].r2 == pytest.approx(1.0)
    assert sc["linear_h"].loo_rmse > 1e-3 and sc["time"].loo_rmse > 1e-3
    assert sc["law"].n_folds == 30 and sc["law"].n_skipped == 0


def test_time_only_wins_when_entropy_is_unrelated():
    rng = np.random.default_rng(1)
    t = np.arange(40, dtype=float)
    h = rng.uniform(0.2, 1.5, size=40)  # entropy carries no information about R
    r = 0.1 + 0.05 * np.log1p(t)
    sc = compare_law_models(h, r, t)
    assert sc["time"].loo_rmse < 1e-9
    assert sc["law"].loo_rmse > 0.01 and sc["linear_h"].loo_rmse > 0.01


def test_leave_one_group_out_and_skipped_folds():
    h, r, t = _law_data(np.random.default_rng(2), n=12)
    groups = np.repeat([0, 1, 2], 4)
    sc = compare_law_models(h, r, t, groups=groups, models=("law", "linear_h"))
    assert set(sc) == {"law", "linear_h"} and sc["law"].n_folds == 3
    # a group of 10 leaves 2 points: that fold cannot be fitted and is skipped for every model
    groups = np.array([0] * 10 + [1, 2])
    sc = compare_law_models(h, r, t, groups=groups)
    assert sc["law"].n_skipped == 1 == sc["time"].n_skipped and sc["law"].n_folds == 2


def test_bad_inputs():
    with pytest.raises(ValueError, match="time_basis"):
        compare_law_models([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], time_basis="sqrt")
    with pytest.raises(ValueError, match="at least 4"):
        compare_law_models([1, 2, np.nan], [1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="one shape"):
        compare_law_models([1, 2, 3, 4], [1, 2, 3], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="rival"):
        law_advantage("law")


def test_law_advantage_claim_metric():
    h, r, t = _law_data(np.random.default_rng(3), n=12)
    recs = [{"step": int(s), "rollout/entropy": float(a)} for s, a in zip(t, h)]
    for rec, perf in zip(recs[::2], r[::2]):
        rec["eval/pass@1"] = float(perf)  # eval every other step
    job = JobData(arm="none", init=0, seed=0, records=recs)
    adv = law_advantage("linear_h")(job)
    assert adv > 0
    h6, r6, t6 = h[::2], r[::2], t[::2]
    sc = compare_law_models(h6, r6, t6, models=("law", "linear_h"))
    assert adv == pytest.approx(sc["linear_h"].loo_rmse - sc["law"].loo_rmse)
    short = JobData(arm="none", init=0, seed=0, records=recs[:5])
    assert np.isnan(law_advantage("time")(short))  # too few pairs: NaN, never a number
