"""Entropy law fitting and covariance comparison against closed-form / NumPy references."""

import numpy as np
import pytest

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


def test_exact_fit_and_r2_reference():
    h = np.array([0.0, 0.5, 1.0, 1.5])
    r = -0.5 * np.exp(h) + 2.0
    fit = laws.fit_entropy_law(h, r)
    assert fit.a == pytest.approx(0.5) and fit.b == pytest.approx(2.0)
    assert fit.r2 == pytest.approx(1.0) and fit.rmse == pytest.approx(0.0, abs=1e-12)
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
