"""HAPO (Heterogeneous Adaptive PO): token-entropy-aware sampling, advantages and clipping.

**The paper's reported numbers were produced by the released code, which computes the unsigned
ĥ ∈ [0, 1] (``negative_scale="code"`` here; see "Released-code mismatch" below).** The default
``"paper"`` is the signed score the method describes; pass ``negative_scale="code"`` (and
``fallback_scope="code"`` in :func:`hapo_token_group_advantages`) to reproduce the release.

Normalised entropy score ĥ (shared by the four components), over the valid tokens of a batch::

    ℓ_t = log max(H_t, 1e-8)
    μ   = Q_pivot(ℓ)                                pivot quantile (0.8), "nearest" interpolation
    σ   = sqrt(mean((ℓ − μ)²))                      RMS around the pivot
    h_t = (ℓ_t − μ) / σ
    ĥ_t = h_t / max_{h>0} h          if h_t > 0                 (∈ (0, 1])
    ĥ_t = h_t / |min_{h<0} h|        if h_t ≤ 0                 (∈ [−1, 0], paper)

Released-code mismatch: the code multiplies below-pivot tokens by ``1 / min_{h<0} h`` (a
negative number), so every token gets ĥ ≥ 0 and the low-entropy branches below only fire at the
pivot itself. ``negative_scale="code"`` reproduces that; the default ``"paper"`` gives
ĥ ∈ [−1, 1] as the method describes.

Components:

1. Adaptive Temperature Sampling (sampler): ``T'_t = T · (1 + τ · clamp(ĥ_t, −1, 1))`` with
   τ = 0.05 and the normalisation constants of the *previous* step's rollout batch
   (:func:`hapo_entropy_stats` → :func:`hapo_temperature`).
2. Token-Level Group Average (:func:`hapo_token_group_advantages`): length-weighted group mean and
   population std; groups with any |A| ≥ 5 fall back to standard GRPO.
3. Differential Advantage Redistribution: ``A^ent = A (1 + β ĥ)``; neutral band
   ``N = (1 − ε_l'/2, 1 + ε_h'/2)``; ĥ > 0: A^ent outside N, A inside; ĥ ≤ 0: A^ent inside N,
   A outside.
4. Asymmetric Adaptive Clipping: ĥ > 0: ``ε_h' = ε_h (1 + α ĥ)``; ĥ ≤ 0: ``ε_l' = ε_l (1 − α ĥ)``.

ĥ, clip ranges and advantages carry no gradient. In the loss ĥ is computed from the current
policy's token entropies over the whole (global with ``axis_name``) batch; the release uses the
micro-batch.

References: arXiv:2509.16591; released code ``starriver030515/HAPO`` @ 7671dde (2025-09-17):
``verl/trainer/ppo/core_algos.py`` (``compute_entropy_h``, ``torch_quantile``, ``ada_clip``,
``ada_advantage``, ``compute_hapo_outcome_advantage``, ``compute_grpo_outcome_advantage``,
``compute_policy_loss``) and ``vllm/v1/sample/sampler.py``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropylab.losses.policy import (
    clipped_surrogate,
    log_ratio,
    policy_batch,
    reduce_policy_loss,
)
from entropylab.losses.registry import register_advantage_shaper, register_policy_loss
from entropylab.ops.masked import masked_count, masked_mean, masked_quantile

__all__ = [
    "HapoEntropyStats",
    "hapo_adaptive_clip",
    "hapo_entropy_score",
    "hapo_entropy_stats",
    "hapo_loss",
    "hapo_redistribute_advantages",
    "hapo_score_from_stats",
    "hapo_temperature",
    "hapo_token_group_advantages",
]

_NEG_SCALES = ("paper", "code")
_FALLBACK_SCOPES = ("valid", "code")
_INTERP = ("nearest", "linear")


class HapoEntropyStats(NamedTuple):
    """Normalisation constants of ĥ: pivot μ, RMS σ, positive scale, |negative| scale (scalars)."""

    mu: jax.Array
    sigma: jax.Array
    max_pos: jax.Array
    min_neg: jax.Array


def _nearest_quantile(values, mask, q, axis_name):
    v = jax.lax.stop_gradient(jnp.asarray(values)).reshape(-1)
    m = (jnp.asarray(mask) != 0).reshape(-1)
    if axis_name is not None:
        v = jax.lax.all_gather(v, axis_name, tiled=True)
        m = jax.lax.all_gather(m, axis_name, tiled=True)
    srt = jnp.sort(jnp.where(m, v, jnp.inf))
    n = jnp.sum(m)
    idx = jnp.round(q * jnp.maximum(n - 1, 0).astype(jnp.float32)).astype(jnp.int32)
    res = srt[jnp.clip(idx, 0, v.shape[0] - 1)]
    return jnp.where(n > 0, res, jnp.zeros_like(res))


def hapo_entropy_stats(
    entropy, mask, *, pivot: float = 0.8, interpolation: str = "nearest", axis_name=None
) -> HapoEntropyStats:
    """Normalisation constants of ĥ from token entropies ``[B, T]`` (global with ``axis_name``).

    ``interpolation="nearest"`` is the release's ``torch.quantile(..., interpolation="nearest")``
    (round-half-to-even position, as NumPy); ``"linear"`` is NumPy's default. Empty mask →
    μ = 0, σ = 1 and unit scales.

    Checked against ``compute_entropy_h`` / ``torch_quantile`` in ``starriver030515/HAPO`` @
    7671dde ``verl/trainer/ppo/core_algos.py`` (there σ² is clamped at 1e-8 and the scales at
    ±1e-8 instead of falling back to 1; they differ only for a constant batch).
    """
    if not 0.0 <= pivot <= 1.0:
        raise ValueError(f"pivot must be in [0, 1], got {pivot}")
    if interpolation not in _INTERP:
        raise ValueError(f"interpolation must be one of {_INTERP}, got {interpolation!r}")
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    h = h.astype(jnp.result_type(h.dtype, jnp.float32))
    m = jnp.asarray(mask) != 0
    ell = jnp.log(jnp.maximum(h, 1e-8))
    if interpolation == "nearest":
        mu = _nearest_quantile(ell, m, pivot, axis_name).astype(ell.dtype)
    else:
        mu = masked_quantile(ell, m, pivot, axis_name=axis_name).astype(ell.dtype)
    sigma = jnp.sqrt(masked_mean(jnp.square(ell - mu), m, axis_name=axis_name))
    sigma = jnp.where(sigma > 0, sigma, 1.0)
    hz = jnp.where(m, (ell - mu) / sigma, 0.0)
    max_pos = jnp.max(jnp.where(m & (hz > 0), hz, 0.0))
    min_neg = jnp.min(jnp.where(m & (hz < 0), hz, 0.0))
    if axis_name is not None:
        max_pos = jax.lax.pmax(max_pos, axis_name)
        min_neg = jax.lax.pmin(min_neg, axis_name)
    max_pos = jnp.where(max_pos > 0, max_pos, 1.0)
    min_neg = jnp.where(min_neg < 0, -min_neg, 1.0)
    return HapoEntropyStats(mu=mu, sigma=sigma, max_pos=max_pos, min_neg=min_neg)


def hapo_score_from_stats(entropy, stats: HapoEntropyStats, *, negative_scale: str = "paper"):
    """ĥ of any entropy array given precomputed constants (elementwise; no gradient).

    ``"code"``: ``h · (1 / min_{h<0} h)`` for h ≤ 0 as ``compute_entropy_h`` of
    ``starriver030515/HAPO`` @ 7671dde (ĥ ≥ 0 everywhere); ``"paper"``: ``h / |min_{h<0} h|``.
    """
    if negative_scale not in _NEG_SCALES:
        raise ValueError(f"negative_scale must be one of {_NEG_SCALES}, got {negative_scale!r}")
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    h = h.astype(jnp.result_type(h.dtype, jnp.float32))
    hz = (jnp.log(jnp.maximum(h, 1e-8)) - stats.mu) / stats.sigma
    neg = hz / stats.min_neg if negative_scale == "paper" else -hz / stats.min_neg
    return jnp.where(hz > 0, hz / stats.max_pos, neg)


def hapo_entropy_score(
    entropy,
    mask,
    *,
    pivot: float = 0.8,
    negative_scale: str = "paper",
    interpolation: str = "nearest",
    axis_name=None,
) -> jax.Array:
    """Normalised entropy score ĥ ``[B, T]`` (0 on masked tokens). See the module docstring.

    With ``negative_scale="paper"`` ĥ ∈ [−1, 1] on the batch it was computed from; with
    ``"code"`` ĥ ∈ [0, 1] (the released ``compute_entropy_h``, ``starriver030515/HAPO`` @
    7671dde, which produced the paper's numbers).
    """
    stats = hapo_entropy_stats(
        entropy, mask, pivot=pivot, interpolation=interpolation, axis_name=axis_name
    )
    s = hapo_score_from_stats(entropy, stats, negative_scale=negative_scale)
    return jnp.where(jnp.asarray(mask) != 0, s, 0.0)


def hapo_temperature(
    entropy,
    stats: HapoEntropyStats | None,
    *,
    base_temperature: float = 1.0,
    tau: float = 0.05,
    negative_scale: str = "paper",
) -> jax.Array:
    """Adaptive Temperature Sampling: ``T' = T · (1 + τ · clamp(ĥ, −1, 1))``.

    ``entropy``: entropy of the next-token distribution at each decoding row (``[B]``), computed
    from the raw logits (before temperature) as the release does. ``stats``: constants from the
    previous step's rollout batch; ``None`` (first step) → no adaptation.

    Released code: the patched ``vllm/v1/sample/sampler.py`` of ``starriver030515/HAPO`` @
    7671dde (with its unsigned ĥ, ``negative_scale="code"``, T is only ever raised).
    """
    if not base_temperature > 0:
        raise ValueError(f"base_temperature must be > 0, got {base_temperature}")
    if not 0 <= tau < 1:
        raise ValueError(f"tau must be in [0, 1), got {tau}")
    h = jnp.asarray(entropy)
    dt = jnp.result_type(h.dtype, jnp.float32)
    if stats is None:
        return jnp.full(h.shape, base_temperature, dt)
    s = hapo_score_from_stats(h, stats, negative_scale=negative_scale)
    return (base_temperature * (1.0 + tau * jnp.clip(s, -1.0, 1.0))).astype(dt)


def hapo_token_group_advantages(
    rewards,
    mask,
    *,
    group_size: int,
    eps: float = 1e-6,
    fallback_threshold: float = 5.0,
    fallback_scope: str = "valid",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token-Level Group Average advantages, broadcast to ``[B, T]``.

    Groups are ``group_size`` consecutive rows. With n_i = Σ_t m_{i,t}::

        μ_g = Σ_i n_i R_i / Σ_i n_i,   σ_g = sqrt(Σ_i n_i (R_i − μ_g)² / Σ_i n_i)
        A_i = (R_i − μ_g) / (σ_g + eps)

    If any |A| ≥ ``fallback_threshold`` in a group (or the group has no valid token), that
    group uses the GRPO advantage ``(R_i − mean R) / (std_unbiased R + eps)`` (size 1: mean 0,
    std 1). Masked tokens get 0. Groups live on one device, so there is no ``axis_name``.

    ``fallback_scope`` says where |A| is tested:

    * ``"valid"`` (default, the method): on the valid tokens, i.e. the ``A_i`` of the responses
      with at least one valid token;
    * ``"code"`` (the release): on the padded ``[G, T]`` group tensor. The released
      ``compute_hapo_outcome_advantage`` normalises ``R_i · mask`` at every position, so a padded
      position carries ``(0 − μ_g)/(σ_g + eps)``; whenever the group has any padding, a group
      with ``|μ_g| ≥ 5 (σ_g + eps)`` (e.g. mostly correct with a rare wrong answer) falls back
      to GRPO although no response's own advantage reaches 5. How much padding a group has
      depends on the batch's padded length, so this behaviour is not a property of the group.

    Checked against ``compute_hapo_outcome_advantage`` and ``compute_grpo_outcome_advantage``
    in ``starriver030515/HAPO`` @ 7671dde ``verl/trainer/ppo/core_algos.py``.

    Shapes: ``rewards`` ``[B]``, ``mask`` ``[B, T]``; B a multiple of ``group_size``.
    """
    if fallback_scope not in _FALLBACK_SCOPES:
        raise ValueError(
            f"fallback_scope must be one of {_FALLBACK_SCOPES}, got {fallback_scope!r}"
        )
    r = jnp.asarray(rewards)
    r = r.astype(jnp.result_type(r.dtype, jnp.float32))
    m = jnp.asarray(mask) != 0
    if r.ndim != 1 or m.ndim != 2 or m.shape[0] != r.shape[0]:
        raise ValueError(f"rewards must be [B] and mask [B, T], got {r.shape}, {m.shape}")
    if group_size < 1 or r.shape[0] % group_size:
        raise ValueError(f"group_size must be >= 1 and divide B={r.shape[0]}, got {group_size}")
    g = r.reshape(-1, group_size)
    n = jnp.sum(m, -1).astype(r.dtype).reshape(-1, group_size)
    tot = jnp.sum(n, -1, keepdims=True)
    ok = tot > 0
    tot_s = jnp.where(ok, tot, 1.0)
    mu = jnp.sum(n * g, -1, keepdims=True) / tot_s
    sd = jnp.sqrt(jnp.sum(n * jnp.square(g - mu), -1, keepdims=True) / tot_s)
    a_tok = (g - mu) / (sd + eps)
    if group_size > 1:
        gm = jnp.mean(g, -1, keepdims=True)
        gs = jnp.std(g, -1, keepdims=True, ddof=1)
    else:
        gm, gs = jnp.zeros_like(g), jnp.ones_like(g)
    a_grpo = (g - gm) / (gs + eps)
    big = jnp.any((jnp.abs(a_tok) >= fallback_threshold) & (n > 0), -1, keepdims=True)
    if fallback_scope == "code":
        has_pad = jnp.any(~m.reshape(-1, group_size, m.shape[-1]), axis=(1, 2))[:, None]
        big = big | (has_pad & (jnp.abs(mu) / (sd + eps) >= fallback_threshold))
    fallback = (~ok) | big
    a = jnp.where(fallback, a_grpo, a_tok).reshape(-1)
    out = jnp.where(m, a[:, None], 0.0)
    return out, {"hapo/fallback_group_frac": jnp.mean(fallback.astype(r.dtype))}


def hapo_adaptive_clip(
    score, *, clip_ratio_low: float = 0.2, clip_ratio_high: float = 0.2, clip_alpha: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Asymmetric Adaptive Clipping: per-token ``(ε_l', ε_h')`` from ĥ.

    ĥ > 0: ``ε_h' = ε_h (1 + α ĥ)``, ``ε_l' = ε_l``; ĥ ≤ 0: ``ε_l' = ε_l (1 − α ĥ)``,
    ``ε_h' = ε_h``.

    Checked against ``ada_clip`` in ``starriver030515/HAPO`` @ 7671dde
    ``verl/trainer/ppo/core_algos.py``.
    """
    s = jax.lax.stop_gradient(jnp.asarray(score))
    pos = s > 0
    eps_h = jnp.where(pos, clip_ratio_high * (1.0 + clip_alpha * s), clip_ratio_high)
    eps_l = jnp.where(pos, clip_ratio_low, clip_ratio_low * (1.0 - clip_alpha * s))
    return eps_l, eps_h


def hapo_redistribute_advantages(
    advantages, score, ratio, eps_low, eps_high, *, adv_beta: float = 1.0
) -> jax.Array:
    """Differential Advantage Redistribution (no gradient through any input but A's value).

    ``A^ent = A (1 + β ĥ)``; inside = ``1 − ε_l'/2 < r < 1 + ε_h'/2``; ĥ > 0 uses A^ent outside
    the band, ĥ ≤ 0 uses A^ent inside it.

    Checked against ``ada_advantage`` in ``starriver030515/HAPO`` @ 7671dde
    ``verl/trainer/ppo/core_algos.py``.
    """
    s = jax.lax.stop_gradient(jnp.asarray(score))
    r = jax.lax.stop_gradient(jnp.asarray(ratio))
    adv = jnp.asarray(advantages)
    a_ent = adv * (1.0 + adv_beta * s)
    inside = (r > 1.0 - eps_low / 2.0) & (r < 1.0 + eps_high / 2.0)
    use_ent = jnp.where(s > 0, ~inside, inside)
    return jnp.where(use_ent, a_ent, adv)


@register_policy_loss("hapo", entropy_source="current")
def hapo_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    entropy,
    pivot: float = 0.8,
    adaptive_clip: bool = True,
    clip_alpha: float = 1.0,
    adaptive_advantage: bool = True,
    adv_beta: float = 1.0,
    negative_scale: str = "paper",
    interpolation: str = "nearest",
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float | None = 10.0,
    log_ratio_clamp: float = 20.0,
    token_weights=None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """HAPO policy loss: ĥ → adaptive clip ranges → redistributed advantages → PPO clip (+ dual).

    Per token, with ε_l', ε_h' from :func:`hapo_adaptive_clip` (or ε_l, ε_h if
    ``adaptive_clip=False``) and A' from :func:`hapo_redistribute_advantages` (or A)::

        ℓ = max(−A' r, −A' clip(r, 1 − ε_l', 1 + ε_h')),   ℓ = min(ℓ, −A' c) for A' < 0

    The method's pieces around the shared surrogate
    (:func:`~entropylab.losses.policy.clipped_surrogate`, which takes per-token ε arrays): the
    per-token clip ranges and the redistributed advantages. Defaults follow the release
    script: ε 0.2/0.2, c = 10, α = β = 1, pivot 0.8.

    Shapes and conventions (``[B]`` advantages, ``old_logp=None``, ``token_weights``, NaN policy,
    base metrics): :mod:`entropylab.losses.policy`; ``entropy`` ``[B, T]`` is the current
    policy's token entropy (no gradient).

    Checked against ``compute_policy_loss`` (with ``compute_entropy_h``, ``ada_clip``,
    ``ada_advantage``) in ``starriver030515/HAPO`` @ 7671dde ``verl/trainer/ppo/core_algos.py``
    (with ``negative_scale="code"``; the release computes ĥ per micro-batch).
    """
    b = policy_batch(
        "hapo_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 or None, got {clip_ratio_c}")
    if entropy is None or jnp.shape(entropy) != b.valid.shape:
        got = None if entropy is None else jnp.shape(entropy)
        raise ValueError(f"hapo_loss: entropy must have logp's shape {b.valid.shape}, got {got}")
    m = b.valid
    score = hapo_entropy_score(
        entropy,
        m,
        pivot=pivot,
        negative_scale=negative_scale,
        interpolation=interpolation,
        axis_name=axis_name,
    )
    if adaptive_clip:
        eps_l, eps_h = hapo_adaptive_clip(
            score,
            clip_ratio_low=clip_ratio_low,
            clip_ratio_high=clip_ratio_high,
            clip_alpha=clip_alpha,
        )
    else:
        eps_l = jnp.full(score.shape, clip_ratio_low, score.dtype)
        eps_h = jnp.full(score.shape, clip_ratio_high, score.dtype)
    d = log_ratio(b.logp, b.old_logp, log_ratio_clamp)
    ratio = jnp.exp(d)
    adv = b.advantages
    if adaptive_advantage:
        adv = hapo_redistribute_advantages(adv, score, ratio, eps_l, eps_h, adv_beta=adv_beta)
    adv = jax.lax.stop_gradient(adv)
    per_tok, info = clipped_surrogate(
        ratio, adv, clip_ratio_low=eps_l, clip_ratio_high=eps_h, clip_ratio_c=clip_ratio_c
    )
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
    f = loss.dtype
    n_pos = masked_count(m & (score > 0), axis_name=axis_name, dtype=f)
    metrics.update(
        {
            "hapo/score_mean": masked_mean(score, m, axis_name=axis_name),
            "hapo/high_entropy_frac": n_pos
            / jnp.maximum(masked_count(m, axis_name=axis_name), 1.0),
            "hapo/eps_high_mean": masked_mean(eps_h, m, axis_name=axis_name),
            "hapo/eps_low_mean": masked_mean(eps_l, m, axis_name=axis_name),
        }
    )
    return loss, metrics


# ------------------------------------------------------------------ objective registration
def _hapo_advantages_component(inputs, ctx, **kw):
    """HAPO token-level group average: advantages from ``extras["rewards"]`` ``[B]``
    (replacing ``inputs.advantages``), groups = ``group_size`` consecutive rows."""
    r = (inputs.extras or {}).get("rewards")
    if r is None:
        raise ValueError("advantage_shaper 'hapo_advantages' needs inputs.extras['rewards']")
    adv, m = hapo_token_group_advantages(r, inputs.mask, **kw)
    if ctx.axis_name is not None:  # group-local metrics → global means (equal local batches)
        m = {k: jax.lax.pmean(v, ctx.axis_name) for k, v in m.items()}
    return adv.astype(jnp.result_type(inputs.advantages)), m


def _hapo_advantages_kwargs():
    import inspect

    ps = inspect.signature(hapo_token_group_advantages).parameters.values()
    return frozenset(p.name for p in ps if p.kind is inspect.Parameter.KEYWORD_ONLY)


register_advantage_shaper(
    "hapo_advantages",
    _hapo_advantages_component,
    accepts=_hapo_advantages_kwargs(),
    required=("group_size",),
    needs=("extras.rewards",),
)
