"""Policy-gradient surrogate losses: PPO-clip (DAPO clip-higher, dual-clip), REINFORCE, GSPO, CISPO.

Signature convention (verl's argument order, JAX-style kw-only hyper-parameters)::

    fn(logp, old_logp, advantages, mask, *, hparams..., loss_agg_mode="token-mean",
       loss_scale_factor=None, axis_name=None) -> (loss, metrics)

``logp`` (current policy, differentiated), ``old_logp`` (behaviour policy), ``advantages`` and
``mask`` are ``[B, T]`` (sequence advantages are broadcast over the response tokens by the
caller, see ``advantages.broadcast_to_tokens``). ``loss`` is a scalar reduced with
``entropylab.ops.aggregate`` (verl's four ``loss_agg_mode`` names); ``metrics`` is a dict of
scalar arrays. With ``axis_name`` every reduction (loss and metrics) is taken over the global
batch, so inside ``jax.shard_map`` / ``jax.pmap`` every device returns the one-device answer.

Log-ratios are clamped to ``±log_ratio_clamp`` (verl: 20) before ``exp``, so ``old_logp = -inf``
or huge differences give finite values and finite gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.ops.masked import AGG_MODES, aggregate, masked_mean

_sg = jax.lax.stop_gradient

__all__ = [
    "cispo_loss",
    "gspo_loss",
    "ppo_clip_loss",
    "ppo_clip_per_token",
    "reinforce_loss",
]


def _check_mode(loss_agg_mode: str) -> None:
    if loss_agg_mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {AGG_MODES}, got {loss_agg_mode!r}")


def _check_shapes(name: str, *arrays) -> None:
    shapes = [jnp.shape(a) for a in arrays]
    if len(shapes[0]) != 2:
        raise ValueError(f"{name}: expected per-token arrays [B, T], got logp shape {shapes[0]}")
    for s in shapes[1:]:
        if s != shapes[0]:
            raise ValueError(f"{name}: all inputs must have shape {shapes[0]}, got {shapes}")


def _clamped_log_ratio(logp, old_logp, log_ratio_clamp: float) -> jax.Array:
    """``clip(logp − old_logp, ±c)``; an ``inf − inf`` NaN is mapped to 0 (and gets no gradient)."""
    d = jnp.asarray(logp) - jnp.asarray(old_logp)
    d = jnp.where(jnp.isnan(d), 0.0, d)
    return jnp.clip(d, -log_ratio_clamp, log_ratio_clamp)


def ppo_clip_per_token(
    logp,
    old_logp,
    advantages,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = 20.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token PPO clipped surrogate (verl ``vanilla``), with clip-higher and dual-clip.

    With ``r = exp(clip(logp − old_logp, ±log_ratio_clamp))``, ``ε_l = clip_ratio_low``,
    ``ε_h = clip_ratio_high`` (defaults to ``ε_l``)::

        ℓ₁ = −A·r,   ℓ₂ = −A·clip(r, 1 − ε_l, 1 + ε_h),   ℓ_clip = max(ℓ₁, ℓ₂)
        ℓ = min(ℓ_clip, −A·c)   if A < 0 and c is given   (dual clip)
        ℓ = ℓ_clip              otherwise

    The clip branch is active (``clipped``) where ``ℓ₂ > ℓ₁``: ``A > 0, r > 1 + ε_h``
    (``clipped_upper``) or ``A < 0, r < 1 − ε_l`` (``clipped_lower``); there the gradient is 0.
    ``dual_clipped`` marks ``A < 0`` tokens where ``ℓ_clip > −A·c`` (also zero gradient).

    Args:
      logp, old_logp, advantages: ``[B, T]`` (any equal shapes work).
      clip_ratio_low: ε_l ≥ 0. clip_ratio_high: ε_h ≥ 0, ``None`` → ε_l (DAPO uses 0.28).
      clip_ratio_c: dual-clip constant c > 1 (verl's default 3.0), ``None`` disables dual-clip.
      log_ratio_clamp: clamp of the log-ratio before ``exp`` (verl: 20).
    Returns:
      ``(per_token_loss, info)`` with ``info`` = ``ratio`` (float), ``clipped``,
      ``clipped_lower``, ``clipped_upper``, ``dual_clipped`` (bool), all the input's shape.

    References: PPO arXiv:1707.06347; DAPO clip-higher arXiv:2503.14476; dual-clip
    arXiv:1912.09729; verl ``core_algos.compute_policy_loss_vanilla``.
    """
    eps_l = float(clip_ratio_low)
    eps_h = eps_l if clip_ratio_high is None else float(clip_ratio_high)
    if eps_l < 0 or eps_h < 0:
        raise ValueError(
            f"clip_ratio_low/clip_ratio_high must be >= 0, got {clip_ratio_low}, {clip_ratio_high}"
        )
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1.0 or None (no dual clip), got {clip_ratio_c}")
    if not log_ratio_clamp > 0:
        raise ValueError(f"log_ratio_clamp must be > 0, got {log_ratio_clamp}")

    adv = jnp.asarray(advantages)
    ratio = jnp.exp(_clamped_log_ratio(logp, old_logp, log_ratio_clamp))
    loss1 = -adv * ratio
    loss2 = -adv * jnp.clip(ratio, 1.0 - eps_l, 1.0 + eps_h)
    clipped = loss2 > loss1
    loss_clip = jnp.maximum(loss1, loss2)
    neg = adv < 0
    if clip_ratio_c is not None:
        loss3 = -adv * clip_ratio_c
        dual = neg & (loss_clip > loss3)
        loss = jnp.where(neg, jnp.minimum(loss_clip, loss3), loss_clip)
    else:
        dual = jnp.zeros_like(clipped)
        loss = loss_clip
    info = {
        "ratio": ratio,
        "clipped": clipped,
        "clipped_lower": clipped & neg,
        "clipped_upper": clipped & (adv > 0),
        "dual_clipped": dual,
    }
    return loss, info


def ppo_clip_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float | None = None,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = 20.0,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO clipped surrogate loss reduced with ``loss_agg_mode`` (verl ``vanilla`` policy loss).

    ``loss = agg(ℓ)`` with ℓ from :func:`ppo_clip_per_token`. Metrics (masked token means over
    the global batch, verl semantics):

    * ``pg/loss``: the loss;
    * ``pg/clipfrac``: fraction of tokens where the clip branch is active (``ℓ₂ > ℓ₁``);
    * ``pg/clipfrac_lower``: fraction of tokens where the *dual* clip is active (verl's
      ``pg_clipfrac_lower``; 0 without ``clip_ratio_c``);
    * ``pg/ppo_kl``: ``mean(old_logp − logp)`` of the clamped log-ratio, a k1 estimate of
      KL(π_old‖π_θ).

    verl divides metric sums by ``Σm + 1e-8``; here an empty mask gives exactly 0 and otherwise
    the exact mean.

    Shapes: all inputs ``[B, T]``; ``loss`` and metrics are scalars.

    References: PPO arXiv:1707.06347; DAPO arXiv:2503.14476; dual-clip arXiv:1912.09729;
    Dr. GRPO (``seq-mean-token-sum-norm``) arXiv:2503.20783.
    """
    _check_mode(loss_agg_mode)
    _check_shapes("ppo_clip_loss", logp, old_logp, advantages, mask)
    per_tok, info = ppo_clip_per_token(
        logp,
        old_logp,
        advantages,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
        log_ratio_clamp=log_ratio_clamp,
    )
    loss = aggregate(
        per_tok, mask, loss_agg_mode, loss_scale_factor=loss_scale_factor, axis_name=axis_name
    )
    neg_log_ratio = -_clamped_log_ratio(logp, old_logp, log_ratio_clamp)
    metrics = {
        "pg/loss": loss,
        "pg/clipfrac": masked_mean(info["clipped"].astype(loss.dtype), mask, axis_name=axis_name),
        "pg/clipfrac_lower": masked_mean(
            info["dual_clipped"].astype(loss.dtype), mask, axis_name=axis_name
        ),
        "pg/ppo_kl": jax.lax.stop_gradient(masked_mean(neg_log_ratio, mask, axis_name=axis_name)),
    }
    return loss, metrics


def _ppo_kl(logp, old_logp, mask, log_ratio_clamp, axis_name):
    """``mean_m(old_logp − logp)`` of the clamped log-ratio (k1 estimate of KL(π_old‖π_θ))."""
    d = _clamped_log_ratio(_sg(jnp.asarray(logp)), old_logp, log_ratio_clamp)
    return masked_mean(-d, mask, axis_name=axis_name)


def reinforce_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    importance_sampling: bool = False,
    log_ratio_clamp: float = 20.0,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """REINFORCE / vanilla policy gradient ``ℓ = −A·log π_θ`` (verl ``gpg`` loss).

    ``∇ℓ = −A·∇log π_θ``: the on-policy score-function estimator (Williams 1992), with whatever
    baseline is already folded into ``A`` (GRPO, RLOO, …). ``old_logp`` is not used in the loss
    by default (it only feeds the ``pg/ppo_kl`` metric), which is exactly verl's ``gpg``.

    Decision on importance sampling: with ``importance_sampling=True`` the loss is
    ``ℓ = −A·sg(r)·log π_θ``, ``r = exp(clip(logp − old_logp, ±log_ratio_clamp))``: an
    unclipped, unbiased off-policy correction whose gradient ``−A·r·∇log π_θ`` equals that of
    ``−A·r`` (the PPO surrogate without clipping). It is off by default because the estimator is
    on-policy by definition and an unclipped weight has unbounded variance; for a clipped weight
    use :func:`cispo_loss` (or :func:`ppo_clip_loss`).

    Metrics: ``pg/loss``, ``pg/ppo_kl``, and with importance sampling ``pg/is_ratio_mean``.
    Shapes: inputs ``[B, T]``; outputs scalars.

    References: Williams 1992 (REINFORCE); GPG arXiv:2504.02546; verl
    ``core_algos.compute_policy_loss_gpg``.
    """
    _check_mode(loss_agg_mode)
    _check_shapes("reinforce_loss", logp, old_logp, advantages, mask)
    logp = jnp.asarray(logp)
    adv = jnp.asarray(advantages)
    metrics = {}
    if importance_sampling:
        ratio = _sg(jnp.exp(_clamped_log_ratio(logp, old_logp, log_ratio_clamp)))
        per_tok = -adv * ratio * logp
        metrics["pg/is_ratio_mean"] = masked_mean(ratio, mask, axis_name=axis_name)
    else:
        per_tok = -adv * logp
    loss = aggregate(
        per_tok, mask, loss_agg_mode, loss_scale_factor=loss_scale_factor, axis_name=axis_name
    )
    metrics["pg/loss"] = loss
    metrics["pg/ppo_kl"] = _ppo_kl(logp, old_logp, mask, log_ratio_clamp, axis_name)
    return loss, metrics


def gspo_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_ratio_low: float = 3e-4,
    clip_ratio_high: float | None = 4e-4,
    log_ratio_clamp: float = 10.0,
    loss_agg_mode: str = "seq-mean-token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GSPO: PPO clip on the length-normalised *sequence* ratio, token-level stop-gradient form.

    With ``δ_{i,t} = logp − old_logp`` and ``n_i = max(Σ_t m_{i,t}, 1)``::

        log s_i   = Σ_t m δ_{i,t} / n_i                 (s_i = (π_θ(y_i)/π_old(y_i))^{1/|y_i|})
        log s_i,t = min(logp_t − sg(logp_t) + sg(log s_i), log_ratio_clamp)
        ℓ_{i,t}   = max(−A·s_i,t, −A·clip(s_i,t, 1 − ε_l, 1 + ε_h))

    ``s_i,t`` equals ``s_i`` in value, and ``∇s_i,t = s_i ∇logp_t``: GSPO-token, which reduces to
    GSPO (sequence gradient ``s_i·mean_t ∇logp_t``) when the advantage is constant over the
    sequence and the aggregation is ``seq-mean-token-mean`` (the default, as in verl). A whole
    sequence is clipped or not. Defaults are the paper's ``ε_l = 3e-4``, ``ε_h = 4e-4``; verl
    takes them from the actor config (``clip_ratio_low/high``). The upper clamp at 10 is verl's.

    Deviation (finite values for ``±inf`` log-probs): each token's ``δ`` is clamped to ±20
    before the sequence mean; verl averages unclamped ``δ``. Identical whenever ``|δ| ≤ 20``.

    Metrics: ``pg/loss``, ``pg/clipfrac`` (token fraction with the clip branch active),
    ``pg/clipfrac_lower`` (always 0, as in verl: no dual clip), ``pg/ppo_kl``,
    ``pg/seq_ratio_mean`` (mean of s_i over sequences with tokens).
    Shapes: inputs ``[B, T]``; outputs scalars.

    References: GSPO arXiv:2507.18071; verl ``core_algos.compute_policy_loss_gspo``.
    """
    _check_mode(loss_agg_mode)
    _check_shapes("gspo_loss", logp, old_logp, advantages, mask)
    eps_l = float(clip_ratio_low)
    eps_h = eps_l if clip_ratio_high is None else float(clip_ratio_high)
    if eps_l < 0 or eps_h < 0:
        raise ValueError(
            f"clip_ratio_low/clip_ratio_high must be >= 0, got {clip_ratio_low}, {clip_ratio_high}"
        )
    logp = jnp.asarray(logp)
    adv = jnp.asarray(advantages)
    m = jnp.broadcast_to(jnp.asarray(mask) != 0, logp.shape)
    d = _clamped_log_ratio(logp, old_logp, 20.0)
    n = jnp.maximum(jnp.sum(m, axis=-1), 1).astype(d.dtype)
    log_seq = jnp.sum(jnp.where(m, d, 0.0), axis=-1) / n
    # logp − sg(logp) is 0 in value but carries ∇logp; keep a finite value for −inf logp.
    safe_logp = jnp.where(jnp.isfinite(logp), logp, 0.0)
    log_tok = safe_logp - _sg(safe_logp) + _sg(log_seq)[:, None]
    ratio = jnp.exp(jnp.minimum(log_tok, log_ratio_clamp))
    loss1 = -adv * ratio
    loss2 = -adv * jnp.clip(ratio, 1.0 - eps_l, 1.0 + eps_h)
    per_tok = jnp.maximum(loss1, loss2)
    loss = aggregate(
        per_tok, m, loss_agg_mode, loss_scale_factor=loss_scale_factor, axis_name=axis_name
    )
    has_tok = jnp.any(m, axis=-1)
    metrics = {
        "pg/loss": loss,
        "pg/clipfrac": masked_mean((loss2 > loss1).astype(loss.dtype), m, axis_name=axis_name),
        "pg/clipfrac_lower": jnp.zeros((), loss.dtype),
        "pg/ppo_kl": masked_mean(-_sg(d), m, axis_name=axis_name),
        "pg/seq_ratio_mean": masked_mean(
            jnp.exp(jnp.minimum(_sg(log_seq), log_ratio_clamp)), has_tok, axis_name=axis_name
        ),
    }
    return loss, metrics


def cispo_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_ratio_low: float | None = None,
    clip_ratio_high: float = 0.2,
    log_ratio_clamp: float = 20.0,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CISPO: REINFORCE weighted by a clipped, stop-gradient importance ratio.

    ``r = exp(clip(logp − old_logp, ±log_ratio_clamp))``,
    ``r̂ = clip(r, 1 − ε_l, 1 + ε_h)``, ``ℓ = −sg(r̂)·A·log π_θ``.

    Unlike PPO, no token's gradient is dropped: a clipped token still contributes
    ``−r̂·A·∇log π_θ``. The paper (MiniMax-M1, eq. 4–5) sets no lower bound ("ε_low large") and
    tunes only ε_h, so the default ``clip_ratio_low=None`` means no lower clip; verl's ``cispo``
    reads both bounds from the actor config (``clip_ratio_low = clip_ratio_high = 0.2``): pass
    ``clip_ratio_low=0.2`` for verl's behaviour. The paper normalises by the total token count
    (``token-mean``, the default).

    Metrics: ``pg/loss``, ``pg/clipfrac`` (token fraction with ``r̂ ≠ r``, verl),
    ``pg/ppo_kl``. Shapes: inputs ``[B, T]``; outputs scalars.

    References: MiniMax-M1 arXiv:2506.13585; verl ``core_algos.compute_policy_loss_cispo``.
    """
    _check_mode(loss_agg_mode)
    _check_shapes("cispo_loss", logp, old_logp, advantages, mask)
    if (clip_ratio_low is not None and clip_ratio_low < 0) or clip_ratio_high < 0:
        raise ValueError(
            f"clip_ratio_low/clip_ratio_high must be >= 0, got {clip_ratio_low}, {clip_ratio_high}"
        )
    logp = jnp.asarray(logp)
    adv = jnp.asarray(advantages)
    d = _clamped_log_ratio(_sg(logp), old_logp, log_ratio_clamp)
    ratio = jnp.exp(d)
    lo = -jnp.inf if clip_ratio_low is None else 1.0 - clip_ratio_low
    clipped_ratio = jnp.clip(ratio, lo, 1.0 + clip_ratio_high)
    per_tok = -clipped_ratio * adv * logp
    loss = aggregate(
        per_tok, mask, loss_agg_mode, loss_scale_factor=loss_scale_factor, axis_name=axis_name
    )
    metrics = {
        "pg/loss": loss,
        "pg/clipfrac": masked_mean(
            (ratio != clipped_ratio).astype(loss.dtype), mask, axis_name=axis_name
        ),
        "pg/ppo_kl": masked_mean(-d, mask, axis_name=axis_name),
    }
    return loss, metrics
