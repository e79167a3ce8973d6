"""Entropy laws: the entropy–performance law and the covariance theory of entropy change.

Pure NumPy (float64); imports nothing from the layers above, so notebooks can use it on any logs.

* **Entropy–performance law** (Cui et al., arXiv:2505.22617 §2): validation performance R and
  policy entropy H logged at the same step follow R = −a·exp(H) + b with a, b > 0; the predicted
  ceiling when entropy is exhausted is R(H=0) = b − a. For fixed data the law is linear in
  x = exp(H), so ordinary least squares of R on x gives intercept b and slope −a (no nonlinear
  solver). ``fit_entropy_law`` reports a, b, R², the ceiling, the RMSE, the standard errors of
  a, b and the ceiling, and whether the fit is a valid law fit (``valid`` + ``reason``: a, b > 0
  and a identified); ``fit_prefix`` fits on the first steps and scores the prediction on the
  rest (the paper's early-prediction claim).
* **Covariance theorem** (same paper, §3): to first order the per-step entropy change is
  ΔH ≈ −η·Cov(log π, A) (natural PG) — ``compare_entropy_change`` correlates the predicted change
  with the observed one (Pearson r, OLS slope and intercept, sign agreement).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EntropyLawFit:
    """Fitted R = −a·exp(H) + b, with its uncertainty and whether it is a valid law fit.

    ``a``, ``b``, ``r2``, ``rmse``, ``n``, ``ceiling`` and ``predict`` are always the least-squares
    numbers, even when ``valid`` is False (so they can still be plotted); read ``valid`` /
    ``reason`` before quoting a, b or the ceiling as the law's parameters.

    Attributes:
      a, b: slope magnitude and intercept (R = −a·x + b, x = exp(H)).
      r2: coefficient of determination 1 − SS_res/SS_tot; 1.0 when the fit is exact (also when
        the performance is constant, where SS_tot = 0).
      rmse: √(SS_res / n).
      n: number of finite pairs used.
      a_se, b_se, ceiling_se: OLS standard errors, s·√((XᵀX)⁻¹) with s² = SS_res/(n − 2); 0 for
        an exact fit.
      valid: True iff a > 0, b > 0 (the law's claim) and a is identified (|a| > 2·a_se and the
        entropies span more than float32 round-off).
      reason: empty when valid, else why not ("; "-joined).
    """

    a: float
    b: float
    r2: float
    rmse: float
    n: int
    a_se: float = float("nan")
    b_se: float = float("nan")
    ceiling_se: float = float("nan")
    valid: bool = False
    reason: str = "not checked"

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


# Entropies are logged from float32 computations: spreads below this relative size are round-off.
_F32_EPS = float(np.finfo(np.float32).eps)
_F64_EPS = float(np.finfo(np.float64).eps)


def fit_entropy_law(entropy, performance) -> EntropyLawFit:
    """Least-squares fit of R = −a·exp(H) + b (linear in x = exp(H)), with its validity.

        x = exp(H);  slope = Σ(x − x̄)(R − R̄) / Σ(x − x̄)²,  a = −slope,  b = R̄ − slope·x̄
        s² = SS_res / (n − 2);  SE(a) = s/√Sxx;  SE(b) = s·√(1/n + x̄²/Sxx);
        SE(b − a) = s·√(1/n + (1 − x̄)²/Sxx)   (b − a is the fitted line at x = 1)

    The fit is computed on centred x (no ill-conditioned [x, 1] design). Degenerate data do not
    raise: the numbers are returned with ``valid=False`` and a ``reason``:

    * **rising data** (performance increases with entropy): a ≤ 0 — the law (a > 0) does not hold
      and the ceiling b − a is meaningless;
    * **b ≤ 0**: the paper's law has b > 0;
    * **near-constant entropy**: the spread of exp(H) is within 64·eps(float32) of its size
      (entropies are logged from float32), or |a| ≤ 2·SE(a): a (hence b and the ceiling) is not
      identified by the data;
    * **constant performance**: R has no spread beyond float64 round-off; the fit R = R̄
      (a = 0, b = R̄) is exact, so R² = 1 and the SEs are 0, and a = 0 makes it invalid.

    Args:
      entropy: ``[n]`` policy entropy per step (token mean over the training rollouts, nats).
      performance: ``[n]`` validation performance at the same steps.
    Returns:
      :class:`EntropyLawFit` (a, b, R², RMSE, n, standard errors, valid, reason). Non-finite
      pairs are dropped.
    Raises:
      ValueError: fewer than 3 finite pairs, or all entropies exactly equal (no slope at all).

    References: arXiv:2505.22617 (Eq. 1; a, b > 0). No released fitting code: OLS by hand.
    """
    h, r = _clean_pairs(entropy, performance)
    n = h.size
    if n < 3:
        raise ValueError(f"need at least 3 finite (entropy, performance) pairs, got {n}")
    x = np.exp(h)
    if np.ptp(x) == 0:
        raise ValueError("all entropies are equal: the law's slope is undefined")
    xm = float(np.mean(x))
    xc = x - xm
    sxx = float(np.sum(xc * xc))
    r_scale = float(np.max(np.abs(r)))
    constant_r = float(np.ptp(r)) <= 4.0 * _F64_EPS * r_scale
    if constant_r:
        slope, intercept, ss_res, ss_tot = 0.0, float(np.mean(r)), 0.0, 0.0
    else:
        rm = float(np.mean(r))
        slope = float(np.sum(xc * (r - rm)) / sxx)
        intercept = rm - slope * xm
        ss_res = float(np.sum((r - (slope * x + intercept)) ** 2))
        ss_tot = float(np.sum((r - rm) ** 2))
    # exact up to round-off of the data → R² = 1 (not 1 − noise/0)
    exact = ss_res <= (4.0 * _F64_EPS * max(r_scale, 1e-300)) ** 2 * n
    r2 = 1.0 if (exact or ss_tot == 0.0) else 1.0 - ss_res / ss_tot
    s2 = 0.0 if exact else ss_res / (n - 2)
    a_se = float(np.sqrt(s2 / sxx))
    b_se = float(np.sqrt(s2 * (1.0 / n + xm * xm / sxx)))
    c_se = float(np.sqrt(s2 * (1.0 / n + (1.0 - xm) ** 2 / sxx)))
    a, b = -slope, intercept

    reasons = []
    if constant_r:
        reasons.append("performance is constant: a = 0, no entropy dependence to fit")
    elif a <= 0:
        reasons.append(f"a = {a:.4g} <= 0: performance rises with entropy, the law does not hold")
    if not constant_r and b <= 0:
        reasons.append(f"b = {b:.4g} <= 0 (the law has b > 0)")
    if np.ptp(x) <= 64.0 * _F32_EPS * float(np.max(np.abs(x))):
        reasons.append("entropy spread is within float32 round-off: a, b are not identified")
    elif not constant_r and not abs(a) > 2.0 * a_se:
        reasons.append(f"|a| = {abs(a):.3g} <= 2·SE(a) = {2 * a_se:.3g}: a is not identified")
    return EntropyLawFit(
        a=float(a),
        b=float(b),
        r2=float(r2),
        rmse=float(np.sqrt(ss_res / n)),
        n=int(n),
        a_se=a_se,
        b_se=b_se,
        ceiling_se=c_se,
        valid=not reasons,
        reason="; ".join(reasons),
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
