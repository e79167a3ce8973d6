"""ARES: difficulty-aware entropy reward on high-window-entropy (HWE) tokens, and dynamic KL.

Pipeline (all pure functions; the per-step state is a few small arrays the trainer carries):

1. Window entropy ``w_t = mean(H_{t+1..t+W})`` (``entropylab.ops.stats.window_entropy``, W = 4).
2. Threshold τ: per response the 95th percentile of its window entropies (positions without a
   complete window carry the mean of the complete ones, as the release pads them), the batch
   median of those; the first update sets ``τ ← median``, later ones smooth
   ``τ ← 0.99 τ + 0.01 · median`` (:func:`ares_threshold_init`, :func:`ares_threshold_update`;
   initial 1.5).
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
   (0.35, 4, 3, 1.2, 1.0) hard. ``Hub_κ`` is the release's ``_huber_penalty``, the Huber loss
   divided by κ (not the textbook Huber)::

       Hub_κ(x) = 0.5 x² / κ   if x ≤ κ,     x − κ/2   otherwise          (x ≥ 0)

   Note sig(0) = 0.5: every incorrect answer gets ≥ 0.5·cap·g.
6. Dynamic KL (:class:`AresKLState`, :func:`ares_kl_update`): per-bucket β_d multiplying the
   ``low_var_kl`` coefficient (1e-2), adapted in log space toward a target per-token KL 0.01
   (the bucket statistic is :func:`ares_bucket_kl`).

These follow the released code, ``shawn0728/ARES`` @ 146620e (2026-02-03):
``examples/reward_function/aepo.py`` (``compute_score``, ``_huber_penalty``),
``verl/trainer/ray_trainer.py`` (threshold EMA), ``verl/workers/actor/dp_actor.py``
(``_update_beta_per_bucket``), ``verl/workers/rollout/vllm_rollout_spmd.py``
(``compute_reasoning_token_window_entropy``,
``get_window_average_entropy_percentile_threshold_list``). The paper's README describes a
token-wise KL budget instead of per-bucket coefficients, and its exact reward equations were
not available, so the code's form is the only one implemented. The code's trigger string comes
from the argmax of the top-10 logprobs; here the caller decides which positions are triggers.

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
    "AresThresholdState",
    "ares_bucket_kl",
    "ares_bucket_targets",
    "ares_difficulty_buckets",
    "ares_entropy_reward",
    "ares_hwe_counts",
    "ares_kl_coefficients",
    "ares_kl_init",
    "ares_kl_update",
    "ares_threshold_init",
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

    Checked against ``compute_reasoning_token_window_entropy`` in ``shawn0728/ARES`` @ 146620e
    ``verl/workers/rollout/vllm_rollout_spmd.py`` (there ``entropy`` is the tail-corrected
    top-10 entropy).
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


class AresThresholdState(NamedTuple):
    """HWE threshold τ and whether it has been set from a training batch yet."""

    tau: jax.Array
    initialized: jax.Array


def ares_threshold_init(tau: float = 1.5) -> AresThresholdState:
    """Initial threshold (the release's ``meta_info`` default 1.5, or a validation estimate);
    the first :func:`ares_threshold_update` replaces it by the first batch median.

    Released code: ``high_entropy_threshold`` default in ``generate_sequences``
    (``verl/workers/rollout/vllm_rollout_spmd.py``) and ``_ema_entropy_threshold`` in
    ``verl/trainer/ray_trainer.py``, ``shawn0728/ARES`` @ 146620e."""
    return AresThresholdState(tau=jnp.asarray(float(tau)), initialized=jnp.zeros((), jnp.bool_))


def _response_percentiles(entropy, mask, window, percentile):
    """Per response, the release's ``get_window_average_entropy_percentile_threshold_list``:
    the window means of the complete windows, the positions without one padded with the mean
    of the complete windows (with the response's first entropy if it has none), then the
    percentile (NumPy linear) over all its positions. ``[B]``; rows without a valid token: 0."""
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    m = jnp.asarray(mask) != 0
    w = window_entropy(h, m, window=window)
    ok = window_valid_mask(m, window=window)
    n_ok = jnp.sum(ok, -1).astype(w.dtype)
    mean_w = jnp.sum(jnp.where(ok, w, 0.0), -1) / jnp.maximum(n_ok, 1.0)
    first = m & (jnp.cumsum(m, -1) == 1)
    h0 = jnp.sum(jnp.where(first, h, 0.0), -1).astype(w.dtype)
    fill = jnp.where(n_ok > 0, mean_w, h0)
    v = jnp.where(ok, w, fill[:, None])
    return jax.vmap(lambda x, k: masked_quantile(x, k, percentile))(v, m), jnp.any(m, -1)


def ares_threshold_update(
    threshold,
    entropy,
    mask,
    *,
    window: int = 4,
    percentile: float = 0.95,
    ema: float = 0.99,
    axis_name=None,
):
    """One training-batch update of the HWE threshold τ (released ``ray_trainer.py``).

    ``median = median_i Q_p(w_i)`` over the responses with ≥ 1 valid token (global with
    ``axis_name``), ``Q_p`` the per-response percentile of the padded window means (see the
    module docstring; pass the tail-free top-10 entropies, which the release uses here). Then

    * ``threshold`` an :class:`AresThresholdState` → a new state: the **first** update sets
      ``τ ← median`` (no blend), later ones ``τ ← ema·τ + (1 − ema)·median``;
    * ``threshold`` a bare τ (legacy, already initialised) → the blended τ.

    No eligible response → τ (and the state) unchanged.

    Checked against ``shawn0728/ARES`` @ 146620e: ``verl/trainer/ray_trainer.py`` (``if not
    hasattr(self, "_ema_entropy_threshold")`` → replace, else ``0.99·old + 0.01·median``) and
    ``get_window_average_entropy_percentile_threshold_list`` in
    ``verl/workers/rollout/vllm_rollout_spmd.py`` (called with ``percentile=95``).
    """
    if not 0 <= percentile <= 1 or not 0 <= ema <= 1:
        raise ValueError(f"percentile and ema must be in [0, 1], got {percentile}, {ema}")
    per_resp, has = _response_percentiles(entropy, mask, window, percentile)
    med = masked_quantile(per_resp, has, 0.5, axis_name=axis_name)
    n = masked_count(has, axis_name=axis_name)
    if isinstance(threshold, AresThresholdState):
        tau = jnp.asarray(threshold.tau, med.dtype)
        init = jnp.asarray(threshold.initialized, jnp.bool_)
        new = jnp.where(init, ema * tau + (1.0 - ema) * med, med)
        return AresThresholdState(
            tau=jnp.where(n > 0, new, tau).astype(jnp.asarray(threshold.tau).dtype),
            initialized=init | (n > 0),
        )
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
    """The release's ``_huber_penalty`` (Huber / κ): ``0.5 x²/κ`` for x ≤ κ, else ``x − κ/2``,
    with x clamped at 0 (``examples/reward_function/aepo.py`` @ 146620e)."""
    x = jnp.maximum(x, 0.0)
    return jnp.where(x <= kappa, 0.5 * x * x / kappa, x - 0.5 * kappa)


def ares_entropy_reward(
    hwe_counts, correct, buckets, target, alpha
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Hierarchical entropy reward ``s_entropy [B]`` (equations in the module docstring).

    Args:
      hwe_counts: ``[B]`` HWE counts. correct: ``[B]`` bool. buckets: ``[B]`` int in {0, 1, 2}.
      target: ``[3]`` per-bucket target counts. alpha: ``[3]`` per-bucket weights α_d.
    Returns:
      ``(s_entropy [B], metrics)``; add it to the accuracy reward.

    Checked against ``compute_score`` in ``shawn0728/ARES`` @ 146620e
    ``examples/reward_function/aepo.py`` (``correct`` is its ``accuracy_score == 1.0``; the
    release's margin ``max(1, f·max(target, 1))`` equals ``max(1, f·target)`` since f < 1).
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
    """Per-bucket dynamic-KL state: β_d, EMA of the per-token KL, EMA of the error, call count,
    and whether each bucket's KL EMA has been seeded by an observation (``None``: all seeded)."""

    beta: jax.Array
    kl_ema: jax.Array
    err_ema: jax.Array
    step: jax.Array
    seen: jax.Array | None = None


def ares_kl_init(*, target_kl: float = 0.01) -> AresKLState:
    """Initial state: β = 1, no KL observed yet (the KL EMA starts at the first observation),
    error EMA 0, step 0. ``target_kl`` only fills the unused KL EMA slot.

    Released code: ``_kl_state`` / ``_e_ema`` / ``_update_count`` set in
    ``DataParallelPPOActor.__init__``, ``verl/workers/actor/dp_actor.py``, ``shawn0728/ARES`` @
    146620e (``kl_beta_init`` 1.0, ``last_kl`` None)."""
    return AresKLState(
        beta=jnp.ones(3, jnp.float32),
        kl_ema=jnp.full(3, target_kl, jnp.float32),
        err_ema=jnp.zeros(3, jnp.float32),
        step=jnp.zeros((), jnp.int32),
        seen=jnp.zeros(3, jnp.bool_),
    )


def ares_bucket_kl(kl, mask, buckets, *, axis_name=None) -> tuple[jax.Array, jax.Array]:
    """The release's per-bucket KL statistic: the mean over a bucket's responses of each
    response's token-mean KL (``(Σ_t m·KL)/max(Σ_t m, 1)``).

    Args: ``kl`` ``[B, T]`` per-token (unscaled) KL; ``mask`` ``[B, T]``; ``buckets`` ``[B]``
    (0 easy, 1 medium, 2 hard). Returns ``(bucket_kl [3], present [3] bool)`` for
    :func:`ares_kl_update` (global with ``axis_name``). No gradient.

    Checked against ``update_policy`` → ``_update_beta_per_bucket`` in ``shawn0728/ARES`` @
    146620e ``verl/workers/actor/dp_actor.py`` (``seq_mean_kl`` then per-bucket
    ``sum(vals)/len(vals)``).
    """
    k = jax.lax.stop_gradient(jnp.asarray(kl))
    m = jnp.asarray(mask) != 0
    seq = jnp.sum(jnp.where(m, k, 0.0), -1) / jnp.maximum(jnp.sum(m, -1), 1).astype(k.dtype)
    b = jnp.asarray(buckets)
    sel = b[None, :] == jnp.arange(3)[:, None]
    s = masked_sum(jnp.broadcast_to(seq, sel.shape), sel, axis=-1, axis_name=axis_name)
    n = masked_count(sel, axis=-1, axis_name=axis_name, dtype=s.dtype)
    return jnp.where(n > 0, s / jnp.maximum(n, 1.0), 0.0), n > 0


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
    """One call of ARES' dynamic KL control (per difficulty bucket), as the release's
    ``_update_beta_per_bucket``:

    1. ``step ← step + 1`` (every call);
    2. for each ``present`` bucket: ``KL_ema ← KL`` on its first observation, else
       ``KL_ema ← d·KL_ema + (1−d)·KL``; the instantaneous error ``e = KL_ema/d_targ − 1``;
    3. only if ``|e| ≥ deadzone`` **and** ``step % update_every == 0``: the error EMA advances,
       ``E ← d_e·E + (1−d_e)·e``, and ``log β ← log β + step_size·clip(E, ±max_err)``, β kept
       in [β_min, β_max].

    Buckets not ``present`` are left unchanged. ``err_decay`` is the release's single
    ``kl_ema_decay`` (0.97) unless given. ``bucket_kl``: see :func:`ares_bucket_kl`.

    Checked against ``_update_beta_per_bucket`` in ``shawn0728/ARES`` @ 146620e
    ``verl/workers/actor/dp_actor.py`` (defaults ``kl_target_default`` 0.01,
    ``kl_ema_decay`` 0.97, ``kl_deadzone`` 0.02, ``kl_beta_lr`` 0.05, ``kl_beta_clip`` 0.2,
    ``kl_update_interval`` 100, ``kl_beta_min/max`` 1e-4/1e2).
    """
    if not target_kl > 0:
        raise ValueError(f"target_kl must be > 0, got {target_kl}")
    if update_every < 1:
        raise ValueError(f"update_every must be >= 1, got {update_every}")
    kl = jnp.asarray(bucket_kl, jnp.float32)
    p = jnp.ones(3, bool) if present is None else jnp.asarray(present) != 0
    seen = jnp.ones(3, bool) if state.seen is None else jnp.asarray(state.seen, bool)
    ema = jnp.where(seen, kl_decay * state.kl_ema + (1 - kl_decay) * kl, kl)
    kl_ema = jnp.where(p, ema, state.kl_ema)
    e = kl_ema / target_kl - 1.0
    step = state.step + 1
    do = p & (step % update_every == 0) & (jnp.abs(e) >= deadzone)
    err = jnp.where(do, err_decay * state.err_ema + (1 - err_decay) * e, state.err_ema)
    log_b = jnp.log(jnp.clip(state.beta, beta_min, beta_max))
    log_b = log_b + jnp.where(do, step_size * jnp.clip(err, -max_err, max_err), 0.0)
    beta = jnp.where(do, jnp.clip(jnp.exp(log_b), beta_min, beta_max), state.beta)
    return AresKLState(beta=beta, kl_ema=kl_ema, err_ema=err, step=step, seen=seen | p)


def ares_kl_coefficients(state: AresKLState, buckets, *, kl_coef: float = 1e-2) -> jax.Array:
    """Per-sample KL coefficient ``kl_coef · β_{bucket}`` → ``[B]`` (broadcast over tokens)."""
    b = jnp.clip(jnp.asarray(buckets).astype(jnp.int32), 0, 2)
    return kl_coef * state.beta[b]
