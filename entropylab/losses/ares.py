"""ARES: difficulty-aware entropy reward on high-window-entropy (HWE) tokens, and dynamic KL.

Pipeline (all pure functions; the per-step state is a few small arrays the trainer carries):

1. Window entropy ``w_t = mean(H_{t+1..t+W})`` (``entropylab.ops.stats.window_entropy``, W = 4).
2. Threshold τ: per response the 95th percentile of its window entropies, the batch median of
   those, smoothed ``τ ← 0.99 τ + 0.01 · median`` (:func:`ares_threshold_update`; initial 1.5).
3. HWE count per response: trigger tokens (a curated reasoning-trigger vocabulary; pass their
   positions as ``trigger_mask``) whose ``w_t ≥ τ`` (:func:`ares_hwe_counts`).
4. Difficulty buckets from the group accuracy: easy ≥ 2/3 > medium ≥ 1/3 > hard
   (:func:`ares_difficulty_buckets`); target count per bucket ``round(mean count of the bucket)``
   (:func:`ares_bucket_targets`); per-bucket weight α_d updated by
   :func:`ares_update_alpha`.
5. Entropy reward (:func:`ares_entropy_reward`), ``R = accuracy + s_entropy``. With
   ``Δ = n_HWE − target``, margin ``m = max(1, f_d · target)``, Huber κ_d, sigmoid temperature
   s_d, ``cap = α_d · c_d``::

       correct, easy:    −min(cap, Hub_κ(max(Δ − m, 0)) / (m + κ) · cap)
       correct, medium:  −min(cap, Hub_κ(max(|Δ| − m, 0)) / (m + κ) · cap)
       correct, hard:    sig((Δ + m)/s) · cap                          if Δ ≥ −m
                         −min(cap, 0.5 · Hub_κ(−Δ − m) / (m + κ) · cap)   otherwise
       incorrect:        sig(max(Δ − m, 0)/s) · cap · g_d

   (f, κ, s, c, g) = (0.15, 2, 2, 1, 0.6) easy, (0.25, 3, 2.5, 1, 0.8) medium,
   (0.35, 4, 3, 1.2, 1.0) hard. Note sig(0) = 0.5: every incorrect answer gets ≥ 0.5·cap·g.
6. Dynamic KL (:class:`AresKLState`, :func:`ares_kl_update`): per-bucket β_d multiplying the
   ``low_var_kl`` coefficient (1e-2), adapted in log space toward a target per-token KL 0.01.

These follow the released code (``shawn0728/ARES``: ``examples/reward_function/aepo.py``,
``ray_trainer.py``, ``dp_actor.py``); the paper's README describes a token-wise KL budget
instead of per-bucket coefficients, and its exact reward equations were not available, so the
code's form is the only one implemented. The code's trigger string comes from the argmax of the
top-10 logprobs; here the caller decides which positions are triggers.

References: arXiv:2510.08457.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropylab.ops.masked import masked_count, masked_quantile, masked_sum
from entropylab.ops.stats import window_entropy, window_valid_mask

__all__ = [
    "AresKLState",
    "ares_bucket_targets",
    "ares_difficulty_buckets",
    "ares_entropy_reward",
    "ares_hwe_counts",
    "ares_kl_coefficients",
    "ares_kl_init",
    "ares_kl_update",
    "ares_threshold_update",
    "ares_update_alpha",
]

EASY, MEDIUM, HARD = 0, 1, 2
_MARGIN_F = (0.15, 0.25, 0.35)
_HUBER_K = (2.0, 3.0, 4.0)
_SIG_T = (2.0, 2.5, 3.0)
_CAP_MULT = (1.0, 1.0, 1.2)
_WRONG_MULT = (0.6, 0.8, 1.0)


def ares_difficulty_buckets(accuracy, *, easy: float = 2 / 3, hard: float = 1 / 3) -> jax.Array:
    """Bucket per prompt (or per sample): 0 easy (acc ≥ 2/3), 1 medium, 2 hard (acc < 1/3)."""
    if not 0 <= hard <= easy <= 1:
        raise ValueError(f"need 0 <= hard <= easy <= 1, got hard={hard}, easy={easy}")
    a = jnp.asarray(accuracy)
    return jnp.where(a >= easy, EASY, jnp.where(a >= hard, MEDIUM, HARD)).astype(jnp.int32)


def ares_hwe_counts(
    entropy, mask, trigger_mask, threshold, *, window: int = 4
) -> dict[str, jax.Array]:
    """HWE trigger counts per response.

    A position counts when it is a trigger token, its window (the ``window`` following valid
    tokens) is complete, and ``w_t ≥ τ``. Returns ``[B]`` arrays ``count`` (valid triggers),
    ``invalid`` (triggers with ``w_t < τ``) and ``soft_cost`` (``Σ max(0, w_t − τ)`` over
    triggers). No gradient.
    """
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    m = jnp.asarray(mask) != 0
    w = window_entropy(h, m, window=window)
    ok = window_valid_mask(m, window=window) & (jnp.asarray(trigger_mask) != 0)
    hi = ok & (w >= threshold)
    f = w.dtype
    return {
        "count": jnp.sum(hi, -1).astype(f),
        "invalid": jnp.sum(ok & ~hi, -1).astype(f),
        "soft_cost": jnp.sum(jnp.where(ok, jnp.maximum(w - threshold, 0.0), 0.0), -1),
    }


def ares_threshold_update(
    threshold,
    entropy,
    mask,
    *,
    window: int = 4,
    percentile: float = 0.95,
    ema: float = 0.99,
    axis_name=None,
) -> jax.Array:
    """``τ ← ema · τ + (1 − ema) · median_i Q_p(w_i)`` over responses with ≥ 1 complete window.

    ``Q_p`` is the per-response percentile (NumPy linear) of the complete windows; the median
    is over the global batch with ``axis_name``. No eligible response → τ unchanged.
    """
    if not 0 <= percentile <= 1 or not 0 <= ema <= 1:
        raise ValueError(f"percentile and ema must be in [0, 1], got {percentile}, {ema}")
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    m = jnp.asarray(mask) != 0
    w = window_entropy(h, m, window=window)
    ok = window_valid_mask(m, window=window)
    per_resp = jax.vmap(lambda v, k: masked_quantile(v, k, percentile))(w, ok)
    has = jnp.any(ok, -1)
    med = masked_quantile(per_resp, has, 0.5, axis_name=axis_name)
    n = masked_count(has, axis_name=axis_name)
    tau = jnp.asarray(threshold, med.dtype)
    return jnp.where(n > 0, ema * tau + (1.0 - ema) * med, tau)


def ares_bucket_targets(
    counts, buckets, valid=None, *, scale: float = 1.0, axis_name=None
) -> dict[str, jax.Array]:
    """Per-bucket mean HWE count and target ``round(scale · mean)`` (``[3]`` arrays).

    Also returns ``n`` (responses per bucket). Empty bucket → mean 0, target 0. Global over
    ``axis_name``.
    """
    c = jnp.asarray(counts).astype(jnp.float32)
    b = jnp.asarray(buckets)
    v = jnp.ones(c.shape, bool) if valid is None else jnp.asarray(valid) != 0
    sel = (b[None, :] == jnp.arange(3)[:, None]) & v[None, :]
    s = masked_sum(jnp.broadcast_to(c, sel.shape), sel, axis=-1, axis_name=axis_name)
    n = masked_count(sel, axis=-1, axis_name=axis_name)
    mean = jnp.where(n > 0, s / jnp.maximum(n, 1.0), 0.0)
    return {"mean": mean, "target": jnp.round(scale * mean), "n": n}


def ares_update_alpha(
    alpha,
    bucket_mean,
    target,
    present=None,
    *,
    step: float = 0.05,
    lo: float = 0.0,
    hi: float = 2.0,
) -> jax.Array:
    """``α_d ← clip(α_d + step · δ_d, lo, hi)``; δ = mean − target (easy, medium), target − mean
    (hard). Buckets not ``present`` keep α. Initial α_d = 0.5.

    Note (code): the target is the bucket mean itself, so δ ≈ 0 and α barely moves.
    """
    a = jnp.asarray(alpha, jnp.float32)
    d = jnp.asarray(bucket_mean) - jnp.asarray(target)
    d = d * jnp.array([1.0, 1.0, -1.0], d.dtype)
    new = jnp.clip(a + step * d, lo, hi)
    if present is not None:
        new = jnp.where(jnp.asarray(present) != 0, new, a)
    return new


def _huber(x, kappa):
    ax = jnp.abs(x)
    return jnp.where(ax <= kappa, 0.5 * x * x, kappa * (ax - 0.5 * kappa))


def ares_entropy_reward(
    hwe_counts, correct, buckets, target, alpha
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Hierarchical entropy reward ``s_entropy [B]`` (equations in the module docstring).

    Args:
      hwe_counts: ``[B]`` HWE counts. correct: ``[B]`` bool. buckets: ``[B]`` int in {0, 1, 2}.
      target: ``[3]`` per-bucket target counts. alpha: ``[3]`` per-bucket weights α_d.
    Returns:
      ``(s_entropy [B], metrics)``; add it to the accuracy reward.
    """
    n = jnp.asarray(hwe_counts).astype(jnp.float32)
    ok = jnp.asarray(correct) != 0
    b = jnp.clip(jnp.asarray(buckets).astype(jnp.int32), 0, 2)
    tgt = jnp.asarray(target, jnp.float32)[b]
    al = jnp.asarray(alpha, jnp.float32)[b]

    def pick(vals):
        return jnp.asarray(vals, jnp.float32)[b]

    f, kap, st = pick(_MARGIN_F), pick(_HUBER_K), pick(_SIG_T)
    cap = al * pick(_CAP_MULT)
    delta = n - tgt
    m = jnp.maximum(1.0, f * tgt)
    norm = m + kap
    easy = -jnp.minimum(cap, _huber(jnp.maximum(delta - m, 0.0), kap) / norm * cap)
    medium = -jnp.minimum(cap, _huber(jnp.maximum(jnp.abs(delta) - m, 0.0), kap) / norm * cap)
    hard = jnp.where(
        delta >= -m,
        jax.nn.sigmoid((delta + m) / st) * cap,
        -jnp.minimum(cap, 0.5 * _huber(-delta - m, kap) / norm * cap),
    )
    right = jnp.where(b == EASY, easy, jnp.where(b == MEDIUM, medium, hard))
    wrong = jax.nn.sigmoid(jnp.maximum(delta - m, 0.0) / st) * cap * pick(_WRONG_MULT)
    s = jnp.where(ok, right, wrong)
    return s, {"ares/entropy_reward_mean": jnp.mean(s), "ares/hwe_count_mean": jnp.mean(n)}


class AresKLState(NamedTuple):
    """Per-bucket dynamic-KL state: β_d, EMA of the per-token KL, EMA of the error, step count."""

    beta: jax.Array
    kl_ema: jax.Array
    err_ema: jax.Array
    step: jax.Array


def ares_kl_init(*, target_kl: float = 0.01) -> AresKLState:
    """Initial state: β = 1, KL EMA at the target (zero error), step 0."""
    return AresKLState(
        beta=jnp.ones(3, jnp.float32),
        kl_ema=jnp.full(3, target_kl, jnp.float32),
        err_ema=jnp.zeros(3, jnp.float32),
        step=jnp.zeros((), jnp.int32),
    )


def ares_kl_update(
    state: AresKLState,
    bucket_kl,
    present=None,
    *,
    target_kl: float = 0.01,
    kl_decay: float = 0.97,
    err_decay: float = 0.97,
    deadzone: float = 0.02,
    step_size: float = 0.05,
    max_err: float = 0.2,
    update_every: int = 100,
    beta_min: float = 1e-4,
    beta_max: float = 1e2,
) -> AresKLState:
    """One micro-batch of ARES' dynamic KL control (per difficulty bucket).

    ``KL_ema ← d·KL_ema + (1−d)·KL``; ``e = KL_ema / d_targ − 1``; ``E ← d_e·E + (1−d_e)·e``;
    every ``update_every`` calls, where ``|E| > deadzone``:
    ``log β ← log β + step_size · clip(E, ±max_err)``, β clipped to [β_min, β_max]. Buckets not
    ``present`` in the micro-batch are left unchanged. ``err_decay`` is not given separately in
    the release; we use the KL decay.
    """
    if not target_kl > 0:
        raise ValueError(f"target_kl must be > 0, got {target_kl}")
    if update_every < 1:
        raise ValueError(f"update_every must be >= 1, got {update_every}")
    kl = jnp.asarray(bucket_kl, jnp.float32)
    p = jnp.ones(3, bool) if present is None else jnp.asarray(present) != 0
    kl_ema = jnp.where(p, kl_decay * state.kl_ema + (1 - kl_decay) * kl, state.kl_ema)
    e = kl_ema / target_kl - 1.0
    err = jnp.where(p, err_decay * state.err_ema + (1 - err_decay) * e, state.err_ema)
    step = state.step + 1
    do = (step % update_every == 0) & (jnp.abs(err) > deadzone)
    log_b = jnp.log(state.beta) + jnp.where(do, step_size * jnp.clip(err, -max_err, max_err), 0)
    beta = jnp.clip(jnp.exp(log_b), beta_min, beta_max)
    return AresKLState(beta=beta, kl_ema=kl_ema, err_ema=err, step=step)


def ares_kl_coefficients(state: AresKLState, buckets, *, kl_coef: float = 1e-2) -> jax.Array:
    """Per-sample KL coefficient ``kl_coef · β_{bucket}`` → ``[B]`` (broadcast over tokens)."""
    b = jnp.clip(jnp.asarray(buckets).astype(jnp.int32), 0, 2)
    return kl_coef * state.beta[b]
