"""Entropy law fitting and covariance comparison against closed-form / NumPy references."""

import numpy as np
import pytest
from scipy import stats

from entropylab import laws


def test_recovers_a_b_from_synthetic_data():
    rng = np.random.default_rng(0)
    h = np.linspace(0.2, 1.5, 80)
    a, b = 0.3, 1.1
    r = -a * np.exp(h) + b + rng.normal(0, 0.01, h.size)
    fit = laws.fit_entropy_law(h, r)
    assert fit.a == pytest.approx(a, abs=0.01)
    assert fit.b == pytest.approx(b, abs=0.02)
    assert fit.ceiling == pytest.approx(b - a, abs=0.02)
    assert fit.r2 > 0.99 and fit.n == 80
    np.testing.assert_allclose(fit.predict([0.0]), [fit.b - fit.a])
    assert fit.valid and fit.reason == ""


def test_standard_errors_vs_scipy_and_covariance_matrix():
    # independent references: scipy.stats.linregress (slope/intercept SEs) and s²·(AᵀA)⁻¹ of the
    # uncentred design A = [x, 1] for the ceiling b − a = intercept + slope (line at x = 1)
    rng = np.random.default_rng(3)
    h = np.linspace(0.1, 1.2, 12)
    r = -0.4 * np.exp(h) + 1.5 + rng.normal(0, 0.05, h.size)
    fit = laws.fit_entropy_law(h, r)
    x = np.exp(h)
    ref = stats.linregress(x, r)
    assert fit.a == pytest.approx(-ref.slope, rel=1e-12)
    assert fit.b == pytest.approx(ref.intercept, rel=1e-12)
    assert fit.r2 == pytest.approx(ref.rvalue**2, rel=1e-12)
    assert fit.a_se == pytest.approx(ref.stderr, rel=1e-10)
    assert fit.b_se == pytest.approx(ref.intercept_stderr, rel=1e-10)
    a_mat = np.stack([x, np.ones_like(x)], 1)
    resid = r - a_mat @ np.array([ref.slope, ref.intercept])
    cov = resid @ resid / (h.size - 2) * np.linalg.inv(a_mat.T @ a_mat)
    assert fit.ceiling_se == pytest.approx(np.sqrt(cov.sum()), rel=1e-8)
    assert fit.valid


def test_degenerate_rising_data_is_flagged():
    # performance rising with entropy: a < 0 is still reported, but the fit is not a law fit
    h = np.linspace(0.2, 1.5, 10)
    r = 0.3 * np.exp(h) + 0.2 + np.random.default_rng(4).normal(0, 0.01, h.size)
    fit = laws.fit_entropy_law(h, r)
    assert fit.a == pytest.approx(-0.3, abs=0.02)
    assert not fit.valid and "rises with entropy" in fit.reason


def test_degenerate_b_nonpositive_is_flagged():
    h = np.linspace(0.2, 1.5, 6)
    fit = laws.fit_entropy_law(h, -0.5 * np.exp(h) - 0.1)
    assert fit.a == pytest.approx(0.5) and fit.b == pytest.approx(-0.1)
    assert not fit.valid and "b = " in fit.reason and "rises" not in fit.reason


def test_degenerate_near_constant_entropy_is_flagged():
    rng = np.random.default_rng(5)
    r = 0.5 + rng.normal(0, 0.01, 8)
    # spread within float32 round-off of the logged entropies: a, b arbitrary
    h = 0.7 + 1e-9 * np.arange(8)
    fit = laws.fit_entropy_law(h, r)
    assert not fit.valid and "float32 round-off" in fit.reason
    assert fit.a_se > abs(fit.a) / 2  # and the SE says so too
    # entropy spread fine but performance is noise around a constant: |a| <= 2 SE
    h2 = np.linspace(0.5, 0.6, 8)
    fit2 = laws.fit_entropy_law(h2, r)
    assert not fit2.valid and "not identified" in fit2.reason
    assert abs(fit2.a) <= 2 * fit2.a_se


@pytest.mark.parametrize("value,n", [(0.1, 7), (0.7, 6), (0.3, 5)])
def test_constant_performance_is_an_exact_fit(value, n):
    # R = value everywhere: R = −0·exp(H) + value is exact → R² = 1 (the old code gave −30.3,
    # −6.33 and 0.0 here: SS_tot was round-off of the mean). Not a law fit (a = 0).
    h = np.linspace(0.2, 1.4, n)
    fit = laws.fit_entropy_law(h, np.full(n, value))
    assert fit.r2 == 1.0 and fit.rmse == 0.0
    assert fit.a == 0.0 and fit.b == pytest.approx(value, rel=1e-15)
    assert fit.a_se == 0.0 and fit.b_se == 0.0
    assert not fit.valid and "constant" in fit.reason


def test_exact_fit_and_r2_reference():
    h = np.array([0.0, 0.5, 1.0, 1.5])
    r = -0.5 * np.exp(h) + 2.0
    fit = laws.fit_entropy_law(h, r)
    assert fit.a == pytest.approx(0.5) and fit.b == pytest.approx(2.0)
    assert fit.r2 == 1.0 and fit.rmse == pytest.approx(0.0, abs=1e-12)
    assert fit.a_se == pytest.approx(0.0, abs=1e-12) and fit.valid
    # R² against a reference computed by hand on noisy data
    r2 = r + np.array([0.1, -0.1, 0.05, 0.0])
    fit2 = laws.fit_entropy_law(h, r2)
    x = np.exp(h)
    slope, icpt = np.polyfit(x, r2, 1)
    pred = slope * x + icpt
    ref = 1 - np.sum((r2 - pred) ** 2) / np.sum((r2 - r2.mean()) ** 2)
    assert fit2.r2 == pytest.approx(ref) and fit2.a == pytest.approx(-slope)


def test_nonfinite_dropped_and_errors():
    fit = laws.fit_entropy_law([0.1, np.nan, 0.5, 0.9, 1.2], [1.0, 0.5, 0.8, 0.6, np.inf])
    assert fit.n == 3
    with pytest.raises(ValueError, match="at least 3"):
        laws.fit_entropy_law([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="equal"):
        laws.fit_entropy_law([0.3] * 5, [1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="same length"):
        laws.fit_entropy_law([0.3] * 5, [1, 2])


def test_prefix_prediction():
    h = np.linspace(1.5, 0.2, 60)
    r = -0.2 * np.exp(h) + 0.9
    fit, rmse = laws.fit_prefix(h, r, 20)
    assert rmse == pytest.approx(0.0, abs=1e-10) and fit.a == pytest.approx(0.2)
    with pytest.raises(ValueError, match="n_fit"):
        laws.fit_prefix(h, r, 60)


def test_binned_means():
    h = np.array([0.1, 0.2, 0.3, 0.4])
    r = np.array([1.0, 2.0, 3.0, 4.0])
    bh, br = laws.binned(h, r, 2)
    np.testing.assert_allclose(bh, [0.15, 0.35])
    np.testing.assert_allclose(br, [1.5, 3.5])


def test_compare_entropy_change():
    rng = np.random.default_rng(1)
    pred = rng.normal(size=50)
    obs = 0.5 * pred + 0.01 + rng.normal(0, 0.01, 50)
    c = laws.compare_entropy_change(pred, obs)
    assert c.pearson_r > 0.99 and c.slope == pytest.approx(0.5, abs=0.02)
    assert c.sign_agreement > 0.9 and c.n == 50
    ref_r = np.corrcoef(pred, obs)[0, 1]
    assert c.pearson_r == pytest.approx(ref_r)
    with pytest.raises(ValueError, match="vary"):
        laws.compare_entropy_change(np.zeros(5), np.arange(5.0))
