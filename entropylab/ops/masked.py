"""Masked reductions and verl-compatible loss aggregation.

Every reduction here is exact and NaN-free when the mask is empty (the result is 0, and the
gradient is 0), and accepts ``axis_name`` so that inside ``jax.shard_map`` / ``jax.pmap`` the
statistic is taken over the *global* batch: the answer equals one device holding the
concatenated batch.

Shapes: ``values`` and ``mask`` broadcast together; per-token arrays are ``[B, T]``.

**Masks are weights, as in verl.** A bool mask selects; a numeric mask ``w ≥ 0`` weights each
entry: ``masked_sum = Σ w·x``, ``masked_mean = Σ w·x / Σ w``, ``masked_var = Σ w(x − x̄)² /
(Σ w − 1)`` (unbiased, verl's Bessel factor Σw/(Σw − 1)) and :func:`aggregate` uses the same
sums (verl ``masked_mean`` / ``agg_loss`` multiply by the mask). For 0/1 masks that is plain
selection. Entries with ``w == 0`` are *selected out* (a NaN or inf there does not leak into the
value or the gradient). A NaN weight propagates (NaN result). :func:`masked_count`,
:func:`masked_quantile` and the selection in :func:`masked_whiten`'s output use ``w != 0``.
Concrete (non-traced) masks are checked: a negative or non-finite weight raises ``ValueError``;
under ``jit`` the values cannot be checked, so pass weights ≥ 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _psum(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _check_weights(mask) -> None:
    """Reject negative / non-finite weights when the mask is concrete (not traced)."""
    if isinstance(mask, jax.core.Tracer) or mask.dtype == jnp.bool_:
        return
    import numpy as np

    host = np.asarray(mask)
    if host.size and (not np.all(np.isfinite(host)) or np.any(host < 0)):
        raise ValueError(
            "mask must hold finite weights >= 0 (bool or 0/1 to select), got values in "
            f"[{np.nanmin(host)}, {np.nanmax(host)}]" + (" and NaN" if np.isnan(host).any() else "")
        )


def _weights(mask, like) -> jax.Array:
    """``mask`` as weights in ``like``'s float dtype (bool -> 0/1), broadcast to its shape."""
    mask = jnp.asarray(mask)
    _check_weights(mask)
    like = jnp.asarray(like)
    dt = like.dtype if jnp.issubdtype(like.dtype, jnp.floating) else jnp.float32
    return jnp.broadcast_to(mask.astype(dt), like.shape)


def _as_mask(mask, like) -> jax.Array:
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        mask = mask != 0
    return jnp.broadcast_to(mask, jnp.shape(like))


def _safe_div(num, den):
    """``num / den`` with 0 where ``den == 0`` (double-where, so gradients stay finite)."""
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), jnp.zeros_like(num))


def masked_sum(values, mask, axis=None, *, axis_name=None) -> jax.Array:
    """Σ w·x over ``axis`` (and over devices when ``axis_name`` is given); w = mask weights.

    Entries with w = 0 are *selected out* (``where``), so a NaN or inf under a zero mask does not
    leak into the sum or its gradient.
    """
    values = jnp.asarray(values)
    mask = jnp.asarray(mask)
    if mask.dtype == jnp.bool_:
        m = jnp.broadcast_to(mask, values.shape)
        return _psum(jnp.sum(jnp.where(m, values, 0), axis=axis), axis_name)
    w = _weights(mask, values)
    return _psum(jnp.sum(jnp.where(w != 0, values * w, 0), axis=axis), axis_name)


def masked_weight(mask, axis=None, *, axis_name=None, dtype=jnp.float32) -> jax.Array:
    """Σ w over ``axis`` (global over ``axis_name``): the denominator of :func:`masked_mean`."""
    mask = jnp.asarray(mask)
    _check_weights(mask)
    return _psum(jnp.sum(mask.astype(dtype), axis=axis), axis_name)


def masked_count(mask, axis=None, *, axis_name=None, dtype=jnp.float32) -> jax.Array:
    """Σ m over ``axis`` (global over ``axis_name``); any nonzero mask entry counts as 1."""
    return _psum(jnp.sum((jnp.asarray(mask) != 0).astype(dtype), axis=axis), axis_name)


def masked_mean(values, mask, axis=None, *, axis_name=None) -> jax.Array:
    """Σ w·x / Σ w (w = mask weights; 0/1 for bool), defined as 0 where Σ w = 0."""
    values = jnp.asarray(values)
    mask = jnp.broadcast_to(jnp.asarray(mask), values.shape)
    num = masked_sum(values, mask, axis, axis_name=axis_name)
    den = masked_weight(mask, axis, axis_name=axis_name, dtype=num.dtype)
    return _safe_div(num, den)


def masked_var(values, mask, axis=None, *, unbiased=True, axis_name=None) -> jax.Array:
    """Masked variance Σ w(x − x̄)² / (n − 1) (``unbiased``, verl's default) or / n, n = Σ w.

    Returns 0 when n ≤ 1 (unbiased) or n = 0.
    """
    values = jnp.asarray(values)
    w = jnp.broadcast_to(jnp.asarray(mask), values.shape)
    m = _as_mask(w, values)
    mean = masked_mean(values, w, axis, axis_name=axis_name)
    if axis is not None:
        mean = jnp.expand_dims(mean, axis)
    # Select *before* squaring: a NaN/inf under a zero mask must not reach the gradient
    # (0 · ∂(x − x̄)² = 0 · NaN otherwise).
    sq = masked_sum(jnp.square(jnp.where(m, values - mean, 0)), w, axis, axis_name=axis_name)
    n = masked_weight(w, axis, axis_name=axis_name, dtype=sq.dtype)
    den = jnp.where(n > 1, n - 1, 0) if unbiased else n
    return _safe_div(sq, den)


def masked_whiten(values, mask, *, shift_mean=True, eps=1e-8, axis_name=None) -> jax.Array:
    """(x − x̄)/√(var + eps) over the masked elements (verl ``masked_whiten``; unbiased var).

    With ``shift_mean=False`` the mean is added back (verl's option). Masked-out entries are
    returned as 0.
    """
    values = jnp.asarray(values)
    w = jnp.broadcast_to(jnp.asarray(mask), values.shape)
    m = _as_mask(w, values)
    mean = masked_mean(values, w, axis_name=axis_name)
    var = masked_var(values, w, axis_name=axis_name)
    out = jnp.where(m, values - mean, 0) * jax.lax.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return jnp.where(m, out, 0)


def masked_quantile(values, mask, q, *, axis_name=None) -> jax.Array:
    """Quantile(s) ``q`` ∈ [0, 1] of the masked elements, NumPy's default ``linear`` method.

    With n selected values sorted as v₀ ≤ … ≤ v_{n−1}, the quantile is the linear interpolation at
    position q·(n − 1). Taken over all elements of ``values`` (flattened); with ``axis_name`` the
    values are all-gathered so the result is the global-batch quantile. Returns 0 for an empty
    mask. Not differentiable (quantiles are used for selection thresholds and logging); the
    result carries ``stop_gradient``.

    Args:
      values: any shape. mask: broadcastable to ``values``. q: scalar or 1-D array.
    Returns:
      scalar (scalar ``q``) or ``[len(q)]``.
    """
    if isinstance(q, (int, float)) and not 0 <= q <= 1:
        raise ValueError(f"q must be in [0, 1], got {q}")
    values = jax.lax.stop_gradient(jnp.asarray(values))
    m = _as_mask(mask, values)
    v = values.reshape(-1)
    m = m.reshape(-1)
    if axis_name is not None:
        v = jax.lax.all_gather(v, axis_name, tiled=True, to="invarying")
        m = jax.lax.all_gather(m, axis_name, tiled=True, to="invarying")
    q = jnp.asarray(q, dtype=jnp.result_type(v.dtype, jnp.float32))
    big = jnp.array(jnp.inf, v.dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v.max()
    srt = jnp.sort(jnp.where(m, v, big))
    n = jnp.sum(m)
    pos = q * jnp.maximum(n - 1, 0).astype(q.dtype)
    lo = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, v.shape[0] - 1)
    hi = jnp.clip(jnp.minimum(lo + 1, n - 1), 0, v.shape[0] - 1)
    frac = (pos - lo).astype(q.dtype)
    vlo, vhi = srt[lo].astype(q.dtype), srt[hi].astype(q.dtype)
    # frac == 0 when lo == hi; avoid inf*0 when an unselected +inf sneaks in.
    res = jnp.where(frac > 0, vlo + frac * (vhi - vlo), vlo)
    return jnp.where(n > 0, res, jnp.zeros_like(res))


def aggregate(
    values,
    mask,
    mode: str = "token-mean",
    *,
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> jax.Array:
    """Reduce a per-token loss ``ℓ[B, T]`` to a scalar with verl's ``loss_agg_mode`` names.

    ===========================  ==========================================================
    ``token-mean``               Σ_{i,t} m ℓ / Σ_{i,t} m                         (DAPO)
    ``seq-mean-token-sum``       mean_{i: n_i>0} Σ_t m ℓ
    ``seq-mean-token-mean``      mean_{i: n_i>0} (Σ_t m ℓ / n_i)                 (GRPO)
    ``seq-mean-token-sum-norm``  Σ_{i,t} m ℓ / (B · loss_scale_factor)           (Dr. GRPO)
    ===========================  ==========================================================

    ``n_i = Σ_t m_{i,t}`` (m = mask weights, as verl multiplies by the mask). Sequences with
    no valid token are excluded from the sequence means
    (current verl, ``seq_mask = n_i > 0``). ``loss_scale_factor`` defaults to the padded length T
    (verl's default, the constant normaliser of Dr. GRPO). With ``axis_name`` every sum and count
    is global, so the result equals the one-device result on the concatenated batch. An
    all-masked batch gives 0 (and zero gradient).

    References: verl ``core_algos.agg_loss``; Dr. GRPO arXiv:2503.20783; DAPO arXiv:2503.14476.
    """
    values = jnp.asarray(values)
    if values.ndim != 2:
        raise ValueError(f"aggregate expects per-token values [B, T], got shape {values.shape}")
    w = _weights(mask, values)
    if mode == "token-mean":
        return masked_mean(values, w, axis_name=axis_name)
    seq_sum = jnp.sum(jnp.where(w != 0, values * w, 0), axis=-1)
    n_i = jnp.sum(w, axis=-1).astype(seq_sum.dtype)
    seq_valid = n_i > 0
    if mode == "seq-mean-token-sum":
        return masked_mean(seq_sum, seq_valid, axis_name=axis_name)
    if mode == "seq-mean-token-mean":
        return masked_mean(_safe_div(seq_sum, n_i), seq_valid, axis_name=axis_name)
    if mode == "seq-mean-token-sum-norm":
        scale = values.shape[-1] if loss_scale_factor is None else loss_scale_factor
        if isinstance(scale, (int, float)) and scale <= 0:
            raise ValueError(f"loss_scale_factor must be > 0, got {scale}")
        total = _psum(jnp.sum(seq_sum), axis_name)
        n_seq = _psum(jnp.asarray(values.shape[0], seq_sum.dtype), axis_name)
        return total / (n_seq * scale)
    raise ValueError(f"unknown loss aggregation mode {mode!r}; expected one of {AGG_MODES}")
