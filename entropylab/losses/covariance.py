"""Covariance-based entropy control: Clip-Cov, KL-Cov, covariance diagnostics (arXiv:2505.22617).

The per-token centred covariance between the (detached) log-probability of the sampled token
and its advantage, with means over the valid tokens of the **global** batch::

    Cov_t = (log π_θ(o_t) − mean_valid sg(log π_θ)) · (A_t − mean_valid A)

Its batch mean is the covariance term of the paper's first-order entropy theorem (§4.2 of the
reference sheet): under natural policy gradient on a softmax policy,
``H(π^{k+1}) − H(π^k) ≈ −η·Cov(log π, A)``. Tokens with large positive ``Cov_t`` (confident and
rewarded, or unlikely and penalised) are the ones that drive entropy down.

Scope: the paper takes the statistics over "the batch"; the released code (and verl) takes
them per **micro-batch**. Here they are over whatever is passed in, made global across devices
with ``axis_name`` — pass the whole train batch to get the paper's scope.

References: arXiv:2505.22617 (Cui et al., *The Entropy Mechanism of RL for Reasoning LMs*);
``PRIME-RL/Entropy-Mechanism-of-RL`` and verl ``compute_policy_loss_{clip_cov,kl_cov}``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.losses._select import count_floor, random_subset_mask, topk_mask
from entropylab.losses.policy import (
    clipped_surrogate,
    log_ratio,
    policy_batch,
    ppo_clip_per_token,
    reduce_policy_loss,
)
from entropylab.losses.registry import register_policy_loss
from entropylab.ops.masked import masked_count, masked_mean, masked_quantile

__all__ = [
    "clip_cov_loss",
    "clip_cov_mask",
    "data_key",
    "kl_cov_mask",
    "covariance_stats",
    "kl_cov_loss",
    "predicted_entropy_change",
    "token_covariance",
]


def _valid(mask):
    mask = jnp.asarray(mask)
    return mask if mask.dtype == jnp.bool_ else mask != 0


def token_covariance(logp, advantages, mask, *, axis_name=None) -> jax.Array:
    """Per-token centred covariance ``Cov_t`` (stop-gradient), 0 on masked tokens.

    ``Cov_t = (logp_t − l̄)(A_t − Ā)`` with ``l̄, Ā`` the masked means over the global batch.
    Shapes: ``[B, T]`` → ``[B, T]``. References: arXiv:2505.22617 (Clip-Cov/KL-Cov estimator).
    """
    valid = _valid(mask)
    lp = jax.lax.stop_gradient(jnp.asarray(logp))
    adv = jax.lax.stop_gradient(jnp.asarray(advantages)).astype(lp.dtype)
    lp = jnp.where(valid, lp, 0.0)  # -inf log-probs on padding must not poison the means
    adv = jnp.where(valid, adv, 0.0)
    cov = (lp - masked_mean(lp, valid, axis_name=axis_name)) * (
        adv - masked_mean(adv, valid, axis_name=axis_name)
    )
    return jnp.where(valid, cov, 0.0)


def covariance_stats(
    logp, advantages, mask, *, top_fraction: float = 2e-3, axis_name=None
) -> dict[str, jax.Array]:
    """Global-batch summary of ``Cov_t``: mean, std, min, max, quantiles, top-fraction mean.

    Keys: ``cov/mean`` (= the batch covariance Cov(log π, A), population form),
    ``cov/std``, ``cov/min``, ``cov/max``, ``cov/p50``, ``cov/p95``, ``cov/p99``,
    ``cov/pos_frac`` (fraction of tokens with Cov_t > 0), ``cov/top_mean`` (mean of the top
    ``max(1, ⌊top_fraction·N⌋)`` tokens, the KL-Cov selection). All 0 for an empty mask.
    """
    valid = _valid(mask)
    cov = token_covariance(logp, advantages, valid, axis_name=axis_name)
    mean = masked_mean(cov, valid, axis_name=axis_name)
    var = masked_mean(jnp.square(cov - mean), valid, axis_name=axis_name)
    n = masked_count(valid, axis_name=axis_name)
    mx, mn = jnp.max(jnp.where(valid, cov, -jnp.inf)), jnp.min(jnp.where(valid, cov, jnp.inf))
    if axis_name is not None:
        mx, mn = jax.lax.pmax(mx, axis_name), jax.lax.pmin(mn, axis_name)
    q = masked_quantile(cov, valid, jnp.array([0.5, 0.95, 0.99]), axis_name=axis_name)
    k = jnp.where(n > 0, jnp.maximum(1, count_floor(top_fraction, n)), 0)
    top = topk_mask(cov, valid, k, axis_name=axis_name)
    return {
        "cov/mean": mean,
        "cov/std": jnp.sqrt(var),
        "cov/min": jnp.where(n > 0, mn, 0.0),
        "cov/max": jnp.where(n > 0, mx, 0.0),
        "cov/p50": q[0],
        "cov/p95": q[1],
        "cov/p99": q[2],
        "cov/pos_frac": masked_mean((cov > 0).astype(cov.dtype), valid, axis_name=axis_name),
        "cov/top_mean": masked_mean(cov, top, axis_name=axis_name),
    }


def predicted_entropy_change(
    logp, advantages, mask, *, learning_rate=1.0, update: str = "natural", axis_name=None
) -> jax.Array:
    """First-order entropy change predicted by the covariance theorem (arXiv:2505.22617 §4.2).

    For a softmax policy ``π(a|s) ∝ exp z_{s,a}`` and a logit update ``Δz``,
    ``ΔH(s) ≈ −Cov_{a∼π(·|s)}(log π(a|s), Δz_{s,a})``. With step size η:

    * ``update="natural"`` (natural PG, ``Δz = η·A``):  ``ΔH ≈ −η · Cov(log π, A)``;
    * ``update="vanilla"`` (tabular softmax PG, ``Δz = η·π·A``): ``ΔH ≈ −η · Cov(log π, π·A)``.

    Estimator (assumptions): the per-state covariance over actions ``a ∼ π(·|s)`` is replaced
    by the covariance over the batch's sampled tokens with batch-wide means (the token
    estimator of the released code, so it mixes states; with one response per batch and a
    sequence-level advantage it is 0), π is the sampling policy (on-policy), the update is
    the tabular-logit one (a real network's logits move through shared parameters, so η is an
    effective step size, and the sign and relative size are what the theorem predicts).
    Returns a scalar (stop-gradient); 0 for an empty mask.
    """
    if update not in ("natural", "vanilla"):
        raise ValueError(f"update must be 'natural' or 'vanilla', got {update!r}")
    valid = _valid(mask)
    lp = jax.lax.stop_gradient(jnp.where(valid, jnp.asarray(logp), 0.0))
    a = jax.lax.stop_gradient(jnp.asarray(advantages)).astype(lp.dtype)
    if update == "vanilla":
        a = jnp.exp(lp) * a
    return -learning_rate * masked_mean(
        token_covariance(lp, a, valid, axis_name=axis_name), valid, axis_name=axis_name
    )


def data_key(old_logp, advantages, mask, *, axis_name=None) -> jax.Array:
    """A PRNG key derived from the batch, for Clip-Cov when the caller has no key.

    ``key = fold_in(key(0), Σ_valid (bits(old_logp) + 31·bits(A)) mod 2³²)``, where ``bits`` is
    the float32 bit pattern read as an int32. The wrapping integer sum is exact and
    order-free, so the key is identical on every device and for any sharding of the batch
    (summed over ``axis_name``), deterministic for a given batch, and different for
    different batches. It is not independent of the data (the selection is a function of the
    batch), which is harmless for a uniform subset of the candidates.
    """
    valid = _valid(mask)
    bits = lambda x: jax.lax.bitcast_convert_type(  # noqa: E731
        jax.lax.stop_gradient(jnp.asarray(x)).astype(jnp.float32), jnp.int32
    )
    h = jnp.where(valid, bits(old_logp) + jnp.int32(31) * bits(advantages), 0)
    h = jnp.sum(h, dtype=jnp.int32)
    if axis_name is not None:
        h = jax.lax.psum(h, axis_name)
    return jax.random.fold_in(jax.random.key(0), h)


def _fraction(value, units, name):
    if units not in ("fraction", "percent"):
        raise ValueError(f"ratio_units must be 'fraction' or 'percent', got {units!r}")
    frac = value / 100.0 if units == "percent" else value
    if not 0.0 <= frac <= 1.0:
        raise ValueError(f"{name} must give a fraction in [0, 1], got {value} ({units})")
    return frac


def clip_cov_mask(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    key=None,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    ratio_units: str = "fraction",
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = 20.0,
    exclude_clipped: bool = True,
    axis_name=None,
) -> tuple[jax.Array, jax.Array]:
    """Clip-Cov's token selection ``(selected, candidates)``, bool ``[B, T]`` (steps 2–3 of
    :func:`clip_cov_loss`; same arguments). Deterministic given ``key`` and the global batch;
    ``key=None`` uses :func:`data_key` of the batch."""
    if key is None:
        key = data_key(old_logp, advantages, mask, axis_name=axis_name)
    if not clip_cov_lb <= clip_cov_ub:
        raise ValueError(f"clip_cov_lb must be <= clip_cov_ub, got {clip_cov_lb}, {clip_cov_ub}")
    frac = _fraction(clip_cov_ratio, ratio_units, "clip_cov_ratio")
    valid = _valid(mask)
    cov = token_covariance(logp, advantages, valid, axis_name=axis_name)
    cand = valid & (cov >= clip_cov_lb) & (cov <= clip_cov_ub)
    if exclude_clipped:
        _, info = ppo_clip_per_token(
            jax.lax.stop_gradient(logp),
            old_logp,
            advantages,
            clip_ratio_low=clip_ratio_low,
            clip_ratio_high=clip_ratio_high,
            clip_ratio_c=clip_ratio_c,
            log_ratio_clamp=log_ratio_clamp,
        )
        cand = cand & ~info["clipped"] & ~info["dual_clipped"]
    n = masked_count(valid, axis_name=axis_name)
    n_sel = jnp.where(n > 0, jnp.maximum(1, count_floor(frac, n)), 0)
    return random_subset_mask(cand, n_sel, key, axis_name=axis_name), cand


def kl_cov_mask(
    logp, advantages, mask, *, kl_cov_ratio: float = 2e-3, ratio_units="fraction", axis_name=None
) -> jax.Array:
    """KL-Cov's selection: the top ``max(1, ⌊k·N⌋)`` valid tokens by ``Cov_t`` (bool ``[B, T]``,
    global batch, ties → lower index). See :func:`kl_cov_loss`."""
    frac = _fraction(kl_cov_ratio, ratio_units, "kl_cov_ratio")
    valid = _valid(mask)
    cov = token_covariance(logp, advantages, valid, axis_name=axis_name)
    n = masked_count(valid, axis_name=axis_name)
    k = jnp.where(n > 0, jnp.maximum(1, count_floor(frac, n)), 0)
    return topk_mask(cov, valid, k, axis_name=axis_name)


@register_policy_loss("clip_cov")
def clip_cov_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    key=None,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    ratio_units: str = "fraction",
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = 20.0,
    exclude_clipped: bool = True,
    detach_mode: str = "stop_gradient",
    token_weights=None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Clip-Cov: PPO-clip loss with the gradient of a random set of high-covariance tokens cut.

    1. ``ℓ_t`` = PPO clipped surrogate (:func:`entropylab.losses.policy.clipped_surrogate`).
    2. Candidates ``C = {t valid : ω_low ≤ Cov_t ≤ ω_high}``, minus tokens whose PPO clip
       (or dual clip) is already active when ``exclude_clipped`` (code; they have no gradient).
    3. ``S`` = uniformly random subset of ``C`` of size ``min(|C|, max(1, ⌊r·N⌋))``, drawn from
       ``key`` over the global batch (``N`` = global valid-token count); :func:`clip_cov_mask`.
    4. ``ℓ_t ← sg(ℓ_t)`` on ``S`` (``detach_mode="stop_gradient"``, the paper's "detach":
       the loss value is unchanged, the gradient is 0) or ``ℓ_t ← 0`` (``"zero"``, the code's
       ``pg_losses * corr``, which also drops the value); ``loss = agg(w ⊙ ℓ)``.

    Defaults: ``r = 2e-4`` (a fraction; ``ratio_units="percent"`` reads it as percent),
    ``[ω_low, ω_high] = [1, 5]``, PPO ε 0.2 and no dual clip (verl). The paper's scripts set
    ``clip_ratio_low = clip_ratio_high = 1``. The band is closed here (the code's is open; it
    differs only on exact ties). At small batch sizes ``max(1, ⌊r·N⌋)`` pins the count to 1
    token: rescale ``r``.

    ``key``: a PRNG key (the same on every device). ``None`` (a framework's loss function often
    gets no RNG) uses :func:`data_key`, a key derived from the batch: deterministic, identical
    for every sharding, different for different batches.

    Metrics: the base set (``pg/clipfrac`` PPO clip, ``pg/clipfrac_lower`` dual clip),
    ``cov/mean``, ``cov/clip_cov_frac`` (fraction of valid tokens detached),
    ``cov/clip_cov_candidates``. Shapes and conventions: :mod:`entropylab.losses.policy`.

    References: arXiv:2505.22617 (Clip-Cov); checked against ``verl/trainer/ppo/core_algos.py``
    ``compute_policy_loss_clip_cov`` of verl (b178a3cd56f5) and of
    ``PRIME-RL/Entropy-Mechanism-of-RL`` (88505792fd97) (tests/losses/covariance_test.py).
    """
    b = policy_batch(
        "clip_cov_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    if detach_mode not in ("stop_gradient", "zero"):
        raise ValueError(f"detach_mode must be 'stop_gradient' or 'zero', got {detach_mode!r}")
    ppo_kw = dict(
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
    )
    sel, cand = clip_cov_mask(
        b.logp,
        b.old_logp,
        b.advantages,
        b.valid,
        key=key,
        clip_cov_ratio=clip_cov_ratio,
        clip_cov_lb=clip_cov_lb,
        clip_cov_ub=clip_cov_ub,
        ratio_units=ratio_units,
        exclude_clipped=exclude_clipped,
        log_ratio_clamp=log_ratio_clamp,
        axis_name=axis_name,
        **ppo_kw,
    )
    d = log_ratio(b.logp, b.old_logp, log_ratio_clamp)
    per_tok, info = clipped_surrogate(jnp.exp(d), b.advantages, **ppo_kw)
    cut = jax.lax.stop_gradient(per_tok) if detach_mode == "stop_gradient" else 0.0
    per_tok = jnp.where(sel, cut, per_tok)
    loss, metrics = reduce_policy_loss(
        per_tok,
        b,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        axis_name=axis_name,
        clipped=info["clipped"],
        dual_clipped=info["dual_clipped"],
        log_ratio_values=d,
    )
    f32 = per_tok.dtype
    cov = token_covariance(b.logp, b.advantages, b.valid, axis_name=axis_name)
    metrics.update(
        {
            "cov/mean": masked_mean(cov, b.valid, axis_name=axis_name),
            "cov/clip_cov_frac": masked_mean(sel.astype(f32), b.valid, axis_name=axis_name),
            "cov/clip_cov_candidates": masked_mean(cand.astype(f32), b.valid, axis_name=axis_name),
        }
    )
    return loss, metrics


@register_policy_loss("kl_cov")
def kl_cov_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    kl_cov_ratio: float = 2e-3,
    ppo_kl_coef: float = 1.0,
    ratio_units: str = "fraction",
    clip_ratio_low: float | None = None,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = 20.0,
    token_weights=None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """KL-Cov: ``|log r|`` penalty on the top-k covariance tokens, no PPO clip.

    With ``d_t = clip(logp − old_logp, ±20)`` and ``r_t = e^{d_t}``::

        ℓ_t = −A_t·r_t + β·|d_t|·1[t ∈ TopK(Cov)],   K = max(1, ⌊k·N⌋),   loss = agg(w ⊙ ℓ)

    ``TopK`` is over the valid tokens of the global batch (:func:`kl_cov_mask`; selection
    detached; ties → lower index). ``|d|`` is differentiated as ``sign(d)·∇d`` (gradient 0 at
    ``d = 0``, as ``torch.abs``): on the first, on-policy mini-batch the penalty does nothing
    (PRIME-RL issue #1). ``old_logp`` is data (stop-gradient).

    Units and defaults (§4.7 of the reference sheet): ``kl_cov_ratio`` is a **fraction** by
    default with the paper's 7B value ``k = 2e-3`` (32B: 2e-4) and ``β = 1`` (paper and
    original repo). The original repo's ``k_percent`` (0.2 = 0.2 %) is
    ``ratio_units="percent"``; verl's defaults are a fraction ``2e-4`` and ``ppo_kl_coef=0.1``.
    ``clip_ratio_low=None`` (default) means no clip and no dual clip (paper and code); passing
    it turns on the PPO clip (:func:`~entropylab.losses.policy.clipped_surrogate`) as an option.

    Metrics: the base set (``pg/ppo_kl`` = k1 ``mean(−d)``; clip fractions 0 without a clip),
    ``cov/kl_cov_abs_kl`` (``mean |d|``, the code's redefined ``ppo_kl``), ``cov/mean``,
    ``cov/kl_cov_frac``. Shapes and conventions: :mod:`entropylab.losses.policy`.

    References: arXiv:2505.22617 (KL-Cov); checked against ``verl/trainer/ppo/core_algos.py``
    ``compute_policy_loss_kl_cov`` of verl (b178a3cd56f5) and of
    ``PRIME-RL/Entropy-Mechanism-of-RL`` (88505792fd97) (tests/losses/covariance_test.py).
    """
    b = policy_batch(
        "kl_cov_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    if not ppo_kl_coef >= 0:
        raise ValueError(f"ppo_kl_coef must be >= 0, got {ppo_kl_coef}")
    no_clip = clip_ratio_low is None
    d = log_ratio(b.logp, b.old_logp, log_ratio_clamp)
    per_tok, info = clipped_surrogate(
        jnp.exp(d),
        b.advantages,
        clip_ratio_low=float("inf") if no_clip else clip_ratio_low,
        clip_ratio_high=float("inf") if no_clip else clip_ratio_high,
        clip_ratio_c=None if no_clip else clip_ratio_c,
    )
    abs_d = jax.lax.stop_gradient(jnp.sign(d)) * d
    sel = kl_cov_mask(
        b.logp,
        b.advantages,
        b.valid,
        kl_cov_ratio=kl_cov_ratio,
        ratio_units=ratio_units,
        axis_name=axis_name,
    )
    per_tok = per_tok + jnp.where(sel, ppo_kl_coef * abs_d, 0.0)
    loss, metrics = reduce_policy_loss(
        per_tok,
        b,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        axis_name=axis_name,
        clipped=info["clipped"],
        dual_clipped=info["dual_clipped"],
        log_ratio_values=d,
    )
    f32 = per_tok.dtype
    sg_d = jax.lax.stop_gradient(d)
    cov = token_covariance(b.logp, b.advantages, b.valid, axis_name=axis_name)
    metrics.update(
        {
            "cov/kl_cov_abs_kl": masked_mean(jnp.abs(sg_d), b.valid, axis_name=axis_name),
            "cov/mean": masked_mean(cov, b.valid, axis_name=axis_name),
            "cov/kl_cov_frac": masked_mean(sel.astype(f32), b.valid, axis_name=axis_name),
        }
    )
    return loss, metrics
