"""Entropy statistics over masked token batches: ARES window entropy and logging summaries.

Per-token entropies are ``[B, T]`` with a response mask ``[B, T]``. Everything here is exact
for empty masks (0, never NaN) and, where it reduces over the batch, accepts ``axis_name`` so
the answer inside ``jax.shard_map`` / ``jax.pmap`` equals one device on the concatenated batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.ops.masked import _as_mask, _safe_div, masked_count, masked_mean, masked_quantile

# Fraction of CoT tokens above this entropy is ~20% for Qwen3-8B (arXiv:2506.01939, §5.4 of
# reference/rl_entropy.md): the "forking token" threshold.
FORKING_THRESHOLD = 0.672


def _compact(x, mask):
    """Move the valid entries of each row to the front, keeping their order.

    Returns (compacted [B, T], rank [B, T] of each valid entry in its row, n [B]).
    """
    order = jnp.argsort(jnp.logical_not(mask), axis=-1, stable=True)
    compact = jnp.take_along_axis(jnp.where(mask, x, 0), order, axis=-1)
    rank = jnp.cumsum(mask, axis=-1) - 1
    return compact, rank, jnp.sum(mask, axis=-1)


def window_valid_mask(mask, *, window: int) -> jax.Array:
    """Positions whose ARES window (the ``window`` *following* valid tokens) is complete.

    With ``n_i`` valid tokens in row i and the valid token of rank r (0-based among the valid
    tokens), the window is complete iff ``r + window ≤ n_i − 1``. ``[B, T]`` bool.
    """
    if window < 1:
        raise ValueError(f"window must be an int >= 1, got {window}")
    m = jnp.asarray(mask) != 0
    rank = jnp.cumsum(m, axis=-1) - 1
    n = jnp.sum(m, axis=-1, keepdims=True)
    return m & (rank + window <= n - 1)


def window_entropy(entropy, mask, *, window: int = 4, partial: bool = False) -> jax.Array:
    """Sliding-window mean of per-token entropy over the *following* valid tokens (ARES HWE).

    For the valid token of rank r in a row (ranks count valid tokens only, so left padding and
    holes in the mask are skipped) with valid entropies h_0 … h_{n−1}:

        w_r = (1/W) Σ_{k=1..W} h_{r+k}        if r + W ≤ n − 1   (complete window)

    i.e. the mean of the W tokens *after* the current one, excluding it (ARES
    ``compute_reasoning_token_window_entropy``: ``mean(H[i+1 : i+1+W])`` and only when
    ``len − i − 1 ≥ W``). Positions without a complete window are 0 (ARES skips them; use
    :func:`window_valid_mask` to select the defined positions). With ``partial=True`` the mean is
    taken over the available following tokens instead (``min(W, n − 1 − r)`` of them) and only
    the last valid token of a row is 0. Masked-out positions are 0.

    Not reproduced: ARES' percentile-threshold helper pads incomplete windows with the running
    mean of earlier windows; compute thresholds with :func:`masked_quantile` over
    ``window_valid_mask`` instead.

    Args:
      entropy: ``[B, T]`` per-token entropy (any float dtype; computed in float32 or wider).
      mask: ``[B, T]`` valid-token mask (bool or 0/1).
      window: W ≥ 1 (ARES default 4).
      partial: average over a truncated window at the end of a row instead of returning 0.
    Returns:
      ``[B, T]`` window entropy. Differentiable in ``entropy``.

    References: ARES arXiv:2510.08457 (high-window-entropy tokens; window_size = 4).
    """
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an int >= 1, got {window!r}")
    h = jnp.asarray(entropy)
    if h.ndim != 2:
        raise ValueError(f"window_entropy expects entropy [B, T], got shape {h.shape}")
    h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
    m = _as_mask(mask, h)
    compact, rank, n = _compact(h, m)
    t = h.shape[-1]
    # s[r] = Σ_{k=1..W} compact[r + k]  (zeros past the end of the valid entries).
    padded = jnp.pad(compact, ((0, 0), (0, window)))
    s = jax.lax.reduce_window(padded, 0.0, jax.lax.add, (1, window), (1, 1), "VALID")
    s = s[:, 1 : t + 1]
    r = jnp.arange(t)[None, :]
    avail = jnp.clip(n[:, None] - 1 - r, 0, window).astype(h.dtype)
    if partial:
        w_c = _safe_div(s, avail)
    else:
        w_c = jnp.where(avail >= window, s / window, 0.0)
    w = jnp.take_along_axis(w_c, jnp.clip(rank, 0, t - 1), axis=-1)
    return jnp.where(m, w, 0.0)


def entropy_stats(
    entropy, mask, *, threshold: float = FORKING_THRESHOLD, axis_name=None
) -> dict[str, jax.Array]:
    """Summary statistics of per-token entropy over the valid tokens of the (global) batch.

    Keys (no namespace; prefix them when logging, e.g. ``actor/entropy/p95``):

    ==============  ===================================================================
    ``mean``        Σ m·H / Σ m  (token-mean, verl's ``actor/entropy`` under token-mean)
    ``p50``/``p80``/``p95``  quantiles of H over valid tokens (NumPy ``linear`` method)
    ``frac_above``  Σ m·1[H > threshold] / Σ m
    ==============  ===================================================================

    ``threshold`` defaults to 0.672 nats, the value above which only 20% of CoT tokens lie in
    the forking-tokens analysis (arXiv:2506.01939). With ``axis_name`` every statistic is over
    the global batch (quantiles all-gather the values). Empty mask → all zeros. The quantiles
    and ``frac_above`` carry no gradient; ``mean`` does.

    Args:
      entropy: ``[...]`` per-token entropy (typically ``[B, T]``). mask: broadcastable to it.
    Returns:
      dict of float32 scalars.
    """
    h = jnp.asarray(entropy)
    h = h.astype(jnp.promote_types(h.dtype, jnp.float32))
    m = _as_mask(mask, h)
    q = masked_quantile(h, m, jnp.array([0.5, 0.8, 0.95]), axis_name=axis_name)
    above = jnp.logical_and(m, jax.lax.stop_gradient(h) > threshold)
    frac = _safe_div(
        masked_count(above, axis_name=axis_name, dtype=h.dtype),
        masked_count(m, axis_name=axis_name, dtype=h.dtype),
    )
    return {
        "mean": masked_mean(h, m, axis_name=axis_name),
        "p50": q[0],
        "p80": q[1],
        "p95": q[2],
        "frac_above": frac,
    }
