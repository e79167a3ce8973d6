"""Evaluation metrics of the RL engine: unbiased pass@k."""

from __future__ import annotations

import numpy as np

__all__ = ["pass_at_k"]


def pass_at_k(correct: np.ndarray, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, arXiv:2107.03374) averaged over problems.

    ``correct [P, n]`` booleans for n samples per problem: 1 − C(n−c, k) / C(n, k), computed as
    the product ``Π_{i=n−c+1}^{n} (1 − k/i)`` (the paper's numerically stable form).
    """
    correct = np.asarray(correct)
    if correct.ndim != 2:
        raise ValueError(f"correct must be [P, n], got shape {correct.shape}")
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    c = correct.sum(1)
    vals = []
    for ci in c:
        if n - ci < k:
            vals.append(1.0)
        else:
            vals.append(1.0 - float(np.prod(1.0 - k / np.arange(n - ci + 1, n + 1))))
    return float(np.mean(vals))
