"""Entropy laws: the entropy–performance law and the covariance theory of entropy change.

Pure NumPy (float64); imports nothing from the layers above, so notebooks can use it on any logs.

* **Entropy–performance law** (Cui et al., arXiv:2505.22617 §2): validation performance R and
  policy entropy H logged at the same step follow R = −a·exp(H) + b with a, b > 0; the predicted
  ceiling when entropy is exhausted is R(H=0) = b − a. For fixed data the law is linear in
  x = exp(H), so ordinary least squares of R on x gives intercept b and slope −a (no nonlinear
  solver). ``fit_entropy_law`` reports a, b, R², the ceiling and the RMSE; ``fit_prefix`` fits on
  the first steps and scores the prediction on the rest (the paper's early-prediction claim).
* **Covariance theorem** (same paper, §3): to first order the per-step entropy change is
  ΔH ≈ −η·Cov(log π, A) (natural PG) — ``compare_entropy_change`` correlates the predicted change
  with the observed one (Pearson r, OLS slope and intercept, sign agreement).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EntropyLawFit:
    """Fitted R = −a·exp(H) + b."""

    a: float
    b: float
    r2: float
    rmse: float
    n: int

    @property
    def ceiling(self) -> float:
        """Predicted performance at zero entropy, R(0) = b − a."""
        return self.b - self.a

    def predict(self, entropy) -> np.ndarray:
        return -self.a * np.exp(np.asarray(entropy, np.float64)) + self.b


def _clean_pairs(entropy, performance):
    h = np.asarray(entropy, np.float64).reshape(-1)
    r = np.asarray(performance, np.float64).reshape(-1)
    if h.shape != r.shape:
        raise ValueError(
            f"entropy and performance must have the same length, got {h.shape} vs {r.shape}"
        )
    ok = np.isfinite(h) & np.isfinite(r)
    return h[ok], r[ok]


def fit_entropy_law(entropy, performance) -> EntropyLawFit:
    """Least-squares fit of R = −a·exp(H) + b (linear in exp(H)).

    Args:
      entropy: ``[n]`` policy entropy per step (token mean over the training rollouts, nats).
      performance: ``[n]`` validation performance at the same steps.
    Returns:
      :class:`EntropyLawFit` with a, b, R² (coefficient of determination of the fit), RMSE and
      the number of finite pairs used. Non-finite pairs are dropped.
    Raises:
      ValueError: fewer than 3 finite pairs, or all entropies equal (the slope is undefined).

    References: arXiv:2505.22617 (Eq. 1).
    """
    h, r = _clean_pairs(entropy, performance)
    if h.size < 3:
        raise ValueError(f"need at least 3 finite (entropy, performance) pairs, got {h.size}")
    x = np.exp(h)
    if np.ptp(x) == 0:
        raise ValueError("all entropies are equal: the law's slope is undefined")
    design = np.stack([x, np.ones_like(x)], axis=1)
    (slope, intercept), *_ = np.linalg.lstsq(design, r, rcond=None)
    pred = slope * x + intercept
    ss_res = float(np.sum((r - pred) ** 2))
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res == 0 else 0.0)
    return EntropyLawFit(
        a=float(-slope), b=float(intercept), r2=r2, rmse=float(np.sqrt(ss_res / h.size)), n=h.size
    )


def fit_prefix(entropy, performance, n_fit: int) -> tuple[EntropyLawFit, float]:
    """Fit on the first ``n_fit`` pairs; return (fit, RMSE of its prediction on the remaining)."""
    h, r = _clean_pairs(entropy, performance)
    if not 3 <= n_fit < h.size:
        raise ValueError(f"n_fit must be in [3, {h.size}) for {h.size} pairs, got {n_fit}")
    fit = fit_entropy_law(h[:n_fit], r[:n_fit])
    rest = fit.predict(h[n_fit:]) - r[n_fit:]
    return fit, float(np.sqrt(np.mean(rest**2)))


def binned(entropy, performance, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean (H, R) in ``n_bins`` equal-count bins of H (smooths noisy per-step rewards)."""
    h, r = _clean_pairs(entropy, performance)
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    order = np.argsort(h)
    chunks = [c for c in np.array_split(order, min(n_bins, h.size)) if c.size]
    return np.array([h[c].mean() for c in chunks]), np.array([r[c].mean() for c in chunks])


@dataclasses.dataclass(frozen=True)
class EntropyChangeComparison:
    """Predicted vs observed per-step entropy change."""

    pearson_r: float
    slope: float
    intercept: float
    sign_agreement: float
    n: int


def compare_entropy_change(predicted, observed) -> EntropyChangeComparison:
    """Compare the covariance-predicted per-step entropy change with the observed one.

    ``predicted[k]`` is the first-order prediction −η·Cov(log π, A) (or any estimate of ΔH) for
    step k, and ``observed[k] = H_{k+1} − H_k``. Reports Pearson correlation, the OLS fit
    observed ≈ slope·predicted + intercept, and the fraction of steps where the signs agree
    (over steps where both are non-zero). Requires ≥ 3 finite pairs with non-constant values.

    References: arXiv:2505.22617 (Theorem: ΔH ≈ −Cov(log π, Δz)).
    """
    p, o = _clean_pairs(predicted, observed)
    if p.size < 3:
        raise ValueError(f"need at least 3 finite pairs, got {p.size}")
    if np.ptp(p) == 0 or np.ptp(o) == 0:
        raise ValueError("predicted and observed changes must both vary to compare them")
    r = float(np.corrcoef(p, o)[0, 1])
    slope, intercept = np.polyfit(p, o, 1)
    nz = (p != 0) & (o != 0)
    sign = float(np.mean(np.sign(p[nz]) == np.sign(o[nz]))) if nz.any() else float("nan")
    return EntropyChangeComparison(
        pearson_r=r, slope=float(slope), intercept=float(intercept), sign_agreement=sign, n=p.size
    )
