"""entropylab.study.stats: quantiles vs SciPy, exact sign-flip test, bootstrap, MDE, calibration."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from entropylab.study import stats


@pytest.mark.parametrize("df", [1, 2, 3, 7, 30, math.inf])
@pytest.mark.parametrize("p", [0.01, 0.2, 0.5, 0.8, 0.95, 0.999])
def test_t_quantiles_match_scipy(df, p):
    ref = sps.norm.ppf(p) if math.isinf(df) else sps.t.ppf(p, df)
    assert stats.t_ppf(p, df) == pytest.approx(ref, abs=1e-9, rel=1e-9)
    x = float(ref)
    ref_cdf = sps.norm.cdf(x) if math.isinf(df) else sps.t.cdf(x, df)
    assert stats.t_cdf(x, df) == pytest.approx(ref_cdf, abs=1e-12)


def test_quantile_bad_input():
    with pytest.raises(ValueError, match="p must be"):
        stats.t_ppf(1.0, 3)
    with pytest.raises(ValueError, match="df"):
        stats.t_cdf(0.0, 0)


def test_sign_flip_hand_cases():
    # all 3 differences positive: only the identity pattern reaches the observed mean -> 1/8
    assert stats.sign_flip_pvalue([1.0, 2.0, 3.0]) == pytest.approx(1 / 8)
    # [1, -1]: pattern means 0, -1, 1, 0 -> three of four are >= 0
    assert stats.sign_flip_pvalue([1.0, -1.0]) == pytest.approx(3 / 4)
    # "less" mirrors "greater"; the null shifts the data
    assert stats.sign_flip_pvalue([-1.0, -2.0, -3.0], alternative="less") == pytest.approx(1 / 8)
    assert stats.sign_flip_pvalue([11.0, 12.0, 13.0], null=10.0) == pytest.approx(1 / 8)
    assert stats.sign_flip_pvalue([1.0, 2.0, 3.0], alternative="less") == pytest.approx(1.0)


def test_sign_flip_matches_brute_force_and_monte_carlo():
    rng = np.random.default_rng(1)
    d = rng.normal(0.3, 1.0, size=9)
    obs = d.mean()
    brute = np.mean(
        [np.mean(np.array(s) * d) >= obs - 1e-12 for s in itertools.product([1, -1], repeat=9)]
    )
    assert stats.sign_flip_pvalue(d) == pytest.approx(brute)
    mc = stats.sign_flip_pvalue(d, exact_max_n=4, n_perm=40000, seed=3)
    assert abs(mc - brute) < 0.01
    batch = np.stack([d, -d, d + 1])
    p = stats.sign_flip_pvalue(batch)
    assert p.shape == (3,) and p[0] == pytest.approx(brute)


def test_nonfinite_and_bad_alternative_raise():
    with pytest.raises(ValueError, match="finite"):
        stats.sign_flip_pvalue([1.0, np.nan, 2.0])
    with pytest.raises(ValueError, match="alternative"):
        stats.sign_flip_pvalue([1.0, 2.0], alternative="two-sided")


def test_bootstrap_vectorised_equals_loop_and_is_seeded():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(3, 6))
    means = stats.bootstrap_means(d, n_boot=500, seed=7)
    idx = np.random.default_rng(7).integers(0, 6, size=(500, 6))
    for b in range(3):
        np.testing.assert_allclose(means[b], d[b][idx].mean(1))
    lo, hi = stats.bootstrap_ci(d[0], level=0.9, n_boot=500, seed=7)
    assert lo == pytest.approx(np.quantile(d[0][idx].mean(1), 0.05))
    assert hi == pytest.approx(np.quantile(d[0][idx].mean(1), 0.95))
    assert stats.bootstrap_ci(d[0], seed=7) == stats.bootstrap_ci(d[0], seed=7)


def test_mde_formula_and_floor():
    # (t_{0.95,9} + t_{0.8,9}) * 2 / sqrt(10) with SciPy's quantiles
    ref = (sps.t.ppf(0.95, 9) + sps.t.ppf(0.8, 9)) * 2.0 / math.sqrt(10)
    assert stats.mde(2.0, 10) == pytest.approx(ref, rel=1e-9)
    assert math.isinf(stats.mde(1.0, 4))  # 2^-4 = 0.0625 > 0.05: the test cannot reject
    assert math.isfinite(stats.mde(1.0, 5))
    assert math.isinf(stats.mde(1.0, 1))


def test_false_positive_rate_is_alpha_under_the_null():
    """20 000 null studies of n = 8 paired units: the rejection rate is the test's exact size.

    With 2^8 sign patterns, p < 0.05 <=> p <= 12/256, so the exact size is 12/256 = 0.0469;
    the binomial sd of the estimate is 0.0015, and the tolerance is 4 sd.
    """
    rng = np.random.default_rng(123)
    null = rng.standard_t(df=3, size=(20000, 8))  # heavy tails: the test needs only symmetry
    p = stats.sign_flip_pvalue(null)
    fpr = float(np.mean(p < 0.05))
    assert abs(fpr - 12 / 256) < 4 * math.sqrt(0.047 * 0.953 / 20000)


def test_power_at_the_reported_mde_is_near_nominal():
    """A true effect equal to the MDE (sd 1, n 10) is detected in about 80% of studies."""
    n, sd = 10, 1.0
    eff = stats.mde(sd, n)
    rng = np.random.default_rng(5)
    sims = rng.normal(eff, sd, size=(4000, n))
    power = float(np.mean(stats.sign_flip_pvalue(sims) < 0.05))
    assert 0.72 < power < 0.86, power


def test_ols_slope_and_holm():
    x = np.arange(5.0)
    assert stats.ols_slope(x, 3 * x + 1) == pytest.approx(3.0)
    np.testing.assert_allclose(stats.ols_slope(x, np.stack([x, -2 * x])), [1.0, -2.0])
    with pytest.raises(ValueError, match="vary"):
        stats.ols_slope(np.ones(3), np.arange(3.0))
    # Holm: sorted p (0.01, 0.02, 0.04) x (3, 2, 1) -> 0.03, 0.04, 0.04 (monotone)
    np.testing.assert_allclose(stats.holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])


def test_chunked_batches_equal_one_pass(monkeypatch):
    d = np.random.default_rng(9).normal(0.2, 1.0, size=(2, 5, 7))
    whole = stats.sign_flip_pvalue(d)
    monkeypatch.setattr(stats, "_CHUNK", 300)  # 2 rows of 128 patterns per chunk
    np.testing.assert_array_equal(stats.sign_flip_pvalue(d), whole)
    assert whole.shape == (2, 5)
