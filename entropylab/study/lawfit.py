"""Does the entropy–performance law beat simpler models? Leave-one-out comparison.

The law of arXiv:2505.22617 (Eq. 1), R = −a·exp(H) + b, fitted by ``entropylab.laws.
fit_entropy_law``, is a claim about *entropy*: performance is a function of H. A high in-sample
R² does not show that — during RL both H and R move monotonically with the step, so any smooth
monotone function of H, or of the step alone, fits as well. This module scores three models by
their out-of-sample prediction error:

* ``law``       R = −a·exp(H) + b                           (the paper's law)
* ``linear_h``  R = c·H + d                                 (a straight line in H)
* ``time``      R = c·log(1 + t) + d  (or c·t + d)          (no entropy at all: the step only)

``compare_law_models`` returns, per model, the in-sample R² and the leave-one-out RMSE (leave
one *group* out when ``groups`` is given, e.g. one initialisation at a time: the honest test of
"the law fitted on some runs predicts another run"). Folds in which any model cannot be fitted
(fewer than 3 points, constant H) are skipped for every model, so all models are scored on the
same folds. ``law_advantage`` turns this into a per-job number for a claim: the LOO RMSE of a
rival minus that of the law (> 0: the law predicts better).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from entropylab import laws

MODELS = ("law", "linear_h", "time")


@dataclasses.dataclass(frozen=True)
class LawModelScore:
    model: str
    r2: float  # in-sample coefficient of determination on all points
    loo_rmse: float  # root mean squared out-of-fold prediction error
    n_folds: int  # folds used (same folds for every model)
    n_skipped: int  # folds where some model could not be fitted


def _ols(x, y):
    x = np.asarray(x, np.float64)
    if x.size < 3 or np.ptp(x) == 0:
        raise ValueError("need >= 3 points with a varying regressor")
    design = np.stack([x, np.ones_like(x)], axis=1)
    (slope, icpt), *_ = np.linalg.lstsq(design, y, rcond=None)
    return lambda z: slope * np.asarray(z, np.float64) + icpt


def _fit(model: str, h, t, r, time_basis: str):
    """A predictor ``(h, t) -> r`` fitted on the given points."""
    if model == "law":
        fit = laws.fit_entropy_law(h, r)
        return lambda hh, tt: fit.predict(hh)
    if model == "linear_h":
        f = _ols(h, r)
        return lambda hh, tt: f(hh)
    tx = np.log1p(t) if time_basis == "log" else np.asarray(t, np.float64)
    f = _ols(tx, r)
    return lambda hh, tt: f(np.log1p(tt) if time_basis == "log" else tt)


def _r2(r, pred) -> float:
    ss_res = float(np.sum((r - pred) ** 2))
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def compare_law_models(
    entropy,
    performance,
    steps,
    *,
    groups=None,
    time_basis: str = "log",
    models: Sequence[str] = MODELS,
) -> dict[str, LawModelScore]:
    """In-sample R² and leave-one-(group-)out RMSE of each model (see the module docstring).

    Args:
      entropy, performance, steps: ``[n]`` paired values (non-finite triples are dropped).
      groups: optional ``[n]`` labels; folds leave one label out instead of one point.
      time_basis: ``log`` (R linear in log(1 + step)) or ``linear``.
    """
    if time_basis not in ("log", "linear"):
        raise ValueError(f"time_basis must be 'log' or 'linear', got {time_basis!r}")
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ValueError(f"models must be a non-empty subset of {MODELS}, got {list(models)}")
    h = np.asarray(entropy, np.float64).reshape(-1)
    r = np.asarray(performance, np.float64).reshape(-1)
    t = np.asarray(steps, np.float64).reshape(-1)
    g = np.arange(h.size) if groups is None else np.asarray(groups).reshape(-1)
    if not h.shape == r.shape == t.shape == g.shape:
        raise ValueError(
            f"entropy, performance, steps (and groups) need one shape, got "
            f"{h.shape}, {r.shape}, {t.shape}, {g.shape}"
        )
    ok = np.isfinite(h) & np.isfinite(r) & np.isfinite(t)
    h, r, t, g = h[ok], r[ok], t[ok], g[ok]
    if h.size < 4:
        raise ValueError(f"need at least 4 finite points, got {h.size}")
    full = {m: _fit(m, h, t, r, time_basis) for m in models}
    errs = {m: [] for m in models}
    skipped = 0
    for label in np.unique(g):
        test = g == label
        train = ~test
        try:
            fits = {m: _fit(m, h[train], t[train], r[train], time_basis) for m in models}
        except ValueError:
            skipped += 1
            continue
        for m in models:
            errs[m].extend((fits[m](h[test], t[test]) - r[test]).tolist())
    n_folds = len(np.unique(g)) - skipped
    if n_folds == 0:
        raise ValueError("no fold could be fitted by every model")
    return {
        m: LawModelScore(
            model=m,
            r2=_r2(r, full[m](h, t)),
            loo_rmse=float(np.sqrt(np.mean(np.square(errs[m])))),
            n_folds=n_folds,
            n_skipped=skipped,
        )
        for m in models
    }


def paired_points(job, entropy_key: str = "rollout/entropy", perf_key: str = "eval/pass@1"):
    """``(H, R, step)`` arrays from one job's records: steps logging both keys."""
    rows = [
        (r[entropy_key], r[perf_key], r["step"])
        for r in job.records
        if r.get(entropy_key) is not None and r.get(perf_key) is not None
    ]
    if not rows:
        raise ValueError(f"no step logs both {entropy_key!r} and {perf_key!r}")
    h, p, s = (np.array(x, np.float64) for x in zip(*rows))
    return h, p, s


def law_advantage(
    rival: str = "linear_h",
    *,
    entropy_key: str = "rollout/entropy",
    perf_key: str = "eval/pass@1",
    time_basis: str = "log",
):
    """A claim metric ``job -> LOO-RMSE(rival) − LOO-RMSE(law)`` on the job's own (H, R) pairs.

    Positive: the law predicts held-out steps better than ``rival``. NaN when the job has too
    few pairs to fit (the verdict engine drops such units and counts them).
    """
    if rival not in MODELS or rival == "law":
        raise ValueError(f"rival must be 'linear_h' or 'time', got {rival!r}")

    def metric(job) -> float:
        h, p, s = paired_points(job, entropy_key, perf_key)
        try:
            sc = compare_law_models(h, p, s, time_basis=time_basis, models=("law", rival))
        except ValueError:
            return float("nan")
        return sc[rival].loo_rmse - sc["law"].loo_rmse

    metric.__name__ = f"law_advantage_over_{rival}"
    return metric
