"""Policy-gradient surrogate losses: PPO-clip (DAPO clip-higher, dual-clip), REINFORCE, GSPO, CISPO.

Signature convention (verl's argument order, JAX-style kw-only hyper-parameters)::

    fn(logp, old_logp, advantages, mask, *, hparams..., token_weights=None,
       loss_agg_mode="token-mean", loss_scale_factor=None, axis_name=None) -> (loss, metrics)

``logp`` (current policy, differentiated) and ``mask`` are ``[B, T]``; ``old_logp`` (behaviour
policy, data) is ``[B, T]`` or ``None`` (on-policy: ``stop_gradient(logp)``, tunix's and TRL's
convention); ``advantages`` is ``[B, T]`` or per-sequence ``[B]`` (broadcast over the tokens);
``token_weights`` (optional, ``[B, T]`` or ``[B]``, data) multiply the per-token loss before
aggregation, as tunix applies truncated importance-sampling weights. ``loss`` is a scalar reduced
with ``entropylab.ops.aggregate`` (verl's four ``loss_agg_mode`` names); ``metrics`` always holds
:data:`BASE_METRICS` (``pg/loss``, ``pg/clipfrac``, ``pg/clipfrac_lower``, ``pg/ppo_kl``; 0
where a loss has no such quantity) plus the method's own keys. With ``axis_name`` every reduction
is over the global batch, so inside ``jax.shard_map`` every device returns the one-device answer.

Building blocks (rlax-style: the ratio is a separate op, one clipped surrogate, one reduction);
every method in ``entropylab.losses`` is its distinctive piece composed around them:

* :func:`policy_batch` validates and normalises the inputs (the one ``loss_agg_mode`` check);
* :func:`log_ratio` / :func:`importance_ratio`: ``clip(logp − old_logp, ±c)`` and its ``exp``;
* :func:`clipped_surrogate`: PPO's clipped surrogate on a given ratio, with ε a scalar **or** a
  per-token array, clip-higher and dual clip;
* :func:`reduce_policy_loss`: token weights, aggregation, the NaN policy and the base metrics.

NaN policy (all losses alike): masked tokens are selected out first, so NaN/inf padding never
reaches a value or a gradient; a NaN in ``logp``, ``old_logp``, ``advantages`` or
``token_weights`` at a valid token makes the loss NaN and its gradient at that token NaN (never
a finite zero). The only NaN mapped to a number is ``inf − inf`` (both log-probs the same
infinity, e.g. ``−inf`` on a valid token under both policies): that log-ratio is 0. Log-ratios
are clamped to ``±log_ratio_clamp`` (verl: 20) before ``exp``, so ``old_logp = −inf`` gives
finite values and gradients.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from entropylab.losses.registry import register_policy_loss
from entropylab.ops.masked import AGG_MODES, aggregate, masked_mean

_sg = jax.lax.stop_gradient

__all__ = [
    "BASE_METRICS",
    "PolicyBatch",
    "check_loss_agg_mode",
    "cispo_loss",
    "clipped_surrogate",
    "gspo_loss",
    "importance_ratio",
    "log_ratio",
    "policy_batch",
    "ppo_clip_loss",
    "ppo_clip_per_token",
    "reduce_policy_loss",
    "reinforce_loss",
]

#: Metric keys every policy loss returns (0 where not applicable).
BASE_METRICS = ("pg/loss", "pg/clipfrac", "pg/clipfrac_lower", "pg/ppo_kl")


def check_loss_agg_mode(loss_agg_mode) -> None:
    """``ValueError`` unless ``loss_agg_mode`` is one of verl's four names (:data:`AGG_MODES`)."""
    if not isinstance(loss_agg_mode, str) or loss_agg_mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {AGG_MODES}, got {loss_agg_mode!r}")


class PolicyBatch(NamedTuple):
    """Validated per-token inputs of a policy loss (all ``[B, T]``; masked entries are 0).

    ``logp`` carries the gradient; ``old_logp`` (``stop_gradient(logp)`` when none was given),
    ``advantages`` and ``weights`` (``None`` = no token weights) are stop-gradient data;
    ``valid`` is the boolean mask.
    """

    logp: Any
    old_logp: Any
    advantages: Any
    valid: Any
    weights: Any


def _per_row(name, arg, x, shape):
    """``[B]`` → ``[B, T]`` (broadcast over tokens) or ``[B, T]`` as is; else a ``ValueError``."""
    x = jnp.asarray(x)
    if x.shape == shape:
        return x
    if x.shape in ((shape[0],), (shape[0], 1)):
        return jnp.broadcast_to(x.reshape(shape[0], 1), shape)
    raise ValueError(
        f"{name}: {arg} must be [B] = ({shape[0]},) or [B, T] = {shape}, got shape {x.shape}"
    )


def policy_batch(
    name: str,
    logp,
    old_logp,
    advantages,
    mask,
    *,
    token_weights=None,
    loss_agg_mode: str = "token-mean",
) -> PolicyBatch:
    """Check and normalise a policy loss's inputs (errors name ``name`` and the argument).

    ``logp`` ``[B, T]`` floating; ``mask`` ``[B, T]`` (nonzero = valid); ``old_logp`` ``[B, T]``
    or ``None``; ``advantages`` and ``token_weights`` ``[B]`` or ``[B, T]``. Masked entries are
    replaced by 0 with ``where`` (no value or gradient of padding survives).
    """
    check_loss_agg_mode(loss_agg_mode)
    logp = jnp.asarray(logp)
    if logp.ndim != 2:
        raise ValueError(f"{name}: logp must be [B, T], got shape {logp.shape}")
    if not jnp.issubdtype(logp.dtype, jnp.floating):
        raise TypeError(f"{name}: logp must be a floating array, got dtype {logp.dtype}")
    shape = logp.shape
    mask = jnp.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"{name}: mask must have logp's shape {shape}, got {mask.shape}")
    valid = mask if mask.dtype == jnp.bool_ else mask != 0
    if old_logp is None:
        old = _sg(logp)
    else:
        old = jnp.asarray(old_logp)
        if old.shape != shape:
            raise ValueError(f"{name}: old_logp must have logp's shape {shape}, got {old.shape}")
        old = _sg(old)
    adv = _per_row(name, "advantages", advantages, shape)
    w = None
    if token_weights is not None:
        w = _sg(_per_row(name, "token_weights", token_weights, shape))
        w = jnp.where(valid, w, 0).astype(jnp.result_type(w.dtype, logp.dtype))
    return PolicyBatch(
        logp=jnp.where(valid, logp, 0),
        old_logp=jnp.where(valid, old, 0).astype(old.dtype),
        advantages=jnp.where(valid, adv, 0).astype(adv.dtype),
        valid=valid,
        weights=w,
    )


def log_ratio(logp, old_logp, log_ratio_clamp: float = 20.0) -> jax.Array:
    """``clip(logp − old_logp, ±log_ratio_clamp)``.

    ``inf − inf`` (both the same infinity) is taken as 0 (no gradient there); any other NaN
    (a NaN input) stays NaN, so it reaches the loss instead of becoming a ratio of 1.
    """
    if not log_ratio_clamp > 0:
        raise ValueError(f"log_ratio_clamp must be > 0, got {log_ratio_clamp}")
    logp, old_logp = jnp.asarray(logp), jnp.asarray(old_logp)
    same_inf = jnp.isinf(logp) & (logp == old_logp)
    d = jnp.where(same_inf, 0.0, logp - old_logp)
    return jnp.clip(d, -log_ratio_clamp, log_ratio_clamp)


def importance_ratio(logp, old_logp, log_ratio_clamp: float = 20.0) -> jax.Array:
    """``r = exp(log_ratio(logp, old_logp, log_ratio_clamp))`` (see :func:`log_ratio`)."""
    return jnp.exp(log_ratio(logp, old_logp, log_ratio_clamp))


def _eps(value, name):
    """ε as a Python float (checked) or an array (checked when concrete)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        v = float(value)
        if not v >= 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
        return v
    arr = jnp.asarray(value)
    if not jnp.issubdtype(arr.dtype, jnp.floating):
        raise TypeError(f"{name} must be a float or a floating array, got dtype {arr.dtype}")
    if not isinstance(arr, jax.core.Tracer) and not bool(jnp.all(arr >= 0)):
        raise ValueError(f"{name} must be >= 0 everywhere (and not NaN)")
    return arr


def clipped_surrogate(
    ratio,
    advantages,
    *,
    clip_ratio_low=0.2,
    clip_ratio_high=None,
    clip_ratio_c: float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO's per-token clipped surrogate on a given ratio; ε a scalar **or** a per-token array.

    With ``ε_l = clip_ratio_low``, ``ε_h = clip_ratio_high`` (``None`` → ε_l), each a float or
    an array broadcastable to ``ratio`` (e.g. HAPO's per-token ranges)::

        ℓ₁ = −A·r,   ℓ₂ = −A·clip(r, 1 − ε_l, 1 + ε_h),   ℓ_clip = max(ℓ₁, ℓ₂)
        ℓ = min(ℓ_clip, −A·c)   if A < 0 and c is given   (dual clip)
        ℓ = ℓ_clip              otherwise

    The clip branch is active (``clipped``) where ``ℓ₂ > ℓ₁``: ``A > 0, r > 1 + ε_h``
    (``clipped_upper``) or ``A < 0, r < 1 − ε_l`` (``clipped_lower``); there the gradient is 0.
    ``dual_clipped`` marks ``A < 0`` tokens where ``ℓ_clip > −A·c`` (also zero gradient).
    ε = ``inf`` switches a side off. The ratio's gradient is whatever ``ratio`` carries (the
    token ratio of :func:`importance_ratio`, GSPO's sequence ratio, …).

    Returns ``(per_token_loss, info)`` with ``info`` = ``ratio``, ``clipped``,
    ``clipped_lower``, ``clipped_upper``, ``dual_clipped`` (bool), all ``ratio``'s shape.

    References: PPO arXiv:1707.06347; DAPO clip-higher arXiv:2503.14476; dual-clip
    arXiv:1912.09729; verl ``core_algos.compute_policy_loss_vanilla``; rlax
    ``clipped_surrogate_pg_loss`` (ratio from a separate op).
    """
    eps_l = _eps(clip_ratio_low, "clip_ratio_low")
    eps_h = eps_l if clip_ratio_high is None else _eps(clip_ratio_high, "clip_ratio_high")
    if clip_ratio_c is not None and not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1.0 or None (no dual clip), got {clip_ratio_c}")
    ratio = jnp.asarray(ratio)
    adv = jnp.asarray(advantages)
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


def _nan_probe(b: PolicyBatch, axis_name) -> jax.Array:
    """0, or NaN when a valid token has a NaN input; its gradient is NaN at exactly those tokens.

    Added to every loss so that a NaN is never dropped by a selection (a token mask, a detach,
    a normaliser over selected tokens): the NaN policy is the same for every method.
    """
    bad = jnp.isnan(b.logp) | jnp.isnan(b.old_logp) | jnp.isnan(b.advantages)
    if b.weights is not None:
        bad = bad | jnp.isnan(b.weights)
    bad = b.valid & bad
    lp = jnp.where(bad, b.logp, 0.0)
    poison = _sg(jnp.where(bad, jnp.nan, 0.0).astype(lp.dtype))
    probe = jnp.sum((lp - _sg(lp)) * poison)
    return probe if axis_name is None else jax.lax.psum(probe, axis_name)


def reduce_policy_loss(
    per_token_loss,
    b: PolicyBatch,
    *,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
    agg_mask=None,
    clipped=None,
    dual_clipped=None,
    clip_mask=None,
    log_ratio_values=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``loss = agg(w ⊙ ℓ, agg_mask)`` (``w`` = ``b.weights`` or 1; ``agg_mask`` = ``b.valid``
    unless a method normalises over a subset), with the NaN policy, and the base metrics.

    ``pg/clipfrac`` / ``pg/clipfrac_lower``: masked means of ``clipped`` / ``dual_clipped``
    over ``clip_mask`` (default the valid tokens; 0 when not given); ``pg/ppo_kl``: the mean of
    ``−log_ratio_values`` (default :func:`log_ratio` of the detached ``logp``) over the valid
    tokens, a k1 estimate of KL(π_old‖π_θ).
    """
    per_tok = jnp.asarray(per_token_loss)
    if b.weights is not None:
        per_tok = per_tok * b.weights
    m = b.valid if agg_mask is None else agg_mask
    loss = aggregate(
        per_tok, m, loss_agg_mode, loss_scale_factor=loss_scale_factor, axis_name=axis_name
    )
    loss = loss + _nan_probe(b, axis_name).astype(loss.dtype)
    f = loss.dtype
    cm = b.valid if clip_mask is None else clip_mask

    def frac(x):
        if x is None:
            return jnp.zeros((), f)
        return masked_mean(x.astype(f), cm, axis_name=axis_name)

    d = log_ratio(_sg(b.logp), b.old_logp) if log_ratio_values is None else log_ratio_values
    metrics = {
        "pg/loss": loss,
        "pg/clipfrac": frac(clipped),
        "pg/clipfrac_lower": frac(dual_clipped),
        "pg/ppo_kl": masked_mean(-_sg(d), b.valid, axis_name=axis_name).astype(f),
    }
    return loss, metrics


def ppo_clip_per_token(
    logp,
    old_logp,
    advantages,
    *,
    clip_ratio_low=0.2,
    clip_ratio_high=None,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = 20.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-token PPO clipped surrogate (verl ``vanilla``) from log-probs: :func:`clipped_surrogate`
    of ``r = exp(clip(logp − old_logp, ±log_ratio_clamp))`` (:func:`importance_ratio`).

    Args:
      logp, old_logp, advantages: equal shapes (usually ``[B, T]``); no masking.
      clip_ratio_low: ε_l ≥ 0. clip_ratio_high: ε_h ≥ 0, ``None`` → ε_l (DAPO uses 0.28);
      either may be a per-token array.
      clip_ratio_c: dual-clip constant c > 1 (verl's default 3.0), ``None`` disables dual-clip.
      log_ratio_clamp: clamp of the log-ratio before ``exp`` (verl: 20).
    Returns:
      ``(per_token_loss, info)`` as :func:`clipped_surrogate`.

    References: PPO arXiv:1707.06347; DAPO clip-higher arXiv:2503.14476; dual-clip
    arXiv:1912.09729; verl ``core_algos.compute_policy_loss_vanilla``.
    """
    ratio = importance_ratio(logp, old_logp, log_ratio_clamp)
    return clipped_surrogate(
        ratio,
        advantages,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
    )


@register_policy_loss("ppo_clip")
def ppo_clip_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_ratio_low=0.2,
    clip_ratio_high=None,
    clip_ratio_c: float | None = None,
    log_ratio_clamp: float = 20.0,
    token_weights=None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO clipped surrogate loss reduced with ``loss_agg_mode`` (verl ``vanilla`` policy loss).

    ``loss = agg(w ⊙ ℓ)`` with ℓ from :func:`clipped_surrogate` of the token ratio
    ``r = exp(clip(logp − old_logp, ±log_ratio_clamp))``. Metrics (masked token means over the
    global batch, verl semantics):

    * ``pg/loss``: the loss;
    * ``pg/clipfrac``: fraction of tokens where the clip branch is active (``ℓ₂ > ℓ₁``);
    * ``pg/clipfrac_lower``: fraction of tokens where the *dual* clip is active (verl's
      ``pg_clipfrac_lower``; 0 without ``clip_ratio_c``);
    * ``pg/ppo_kl``: ``mean(old_logp − logp)`` of the clamped log-ratio, a k1 estimate of
      KL(π_old‖π_θ).

    verl divides metric sums by ``Σm + 1e-8``; here an empty mask gives exactly 0 and otherwise
    the exact mean. Shapes and conventions: the module docstring (``[B]`` advantages,
    ``old_logp=None``, ``token_weights``, NaN policy).

    References: PPO arXiv:1707.06347; DAPO arXiv:2503.14476; dual-clip arXiv:1912.09729;
    Dr. GRPO (``seq-mean-token-sum-norm``) arXiv:2503.20783; checked against verl
    ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_vanilla`` at b178a3cd56f5
    (tests/losses/policy_test.py).
    """
    b = policy_batch(
        "ppo_clip_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    d = log_ratio(b.logp, b.old_logp, log_ratio_clamp)
    per_tok, info = clipped_surrogate(
        jnp.exp(d),
        b.advantages,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
    )
    return reduce_policy_loss(
        per_tok,
        b,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        axis_name=axis_name,
        clipped=info["clipped"],
        dual_clipped=info["dual_clipped"],
        log_ratio_values=d,
    )


@register_policy_loss("reinforce")
def reinforce_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    importance_sampling: bool = False,
    log_ratio_clamp: float = 20.0,
    token_weights=None,
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

    Metrics: the base set (``pg/clipfrac``, ``pg/clipfrac_lower`` are 0), and with importance
    sampling ``pg/is_ratio_mean``. Shapes: see the module docstring; outputs scalars.

    References: Williams 1992 (REINFORCE); GPG arXiv:2504.02546; checked against verl
    ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_gpg`` at b178a3cd56f5.
    """
    b = policy_batch(
        "reinforce_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    d = log_ratio(_sg(b.logp), b.old_logp, log_ratio_clamp)
    extra = {}
    if importance_sampling:
        ratio = jnp.exp(d)
        per_tok = -b.advantages * ratio * b.logp
        extra["pg/is_ratio_mean"] = masked_mean(ratio, b.valid, axis_name=axis_name)
    else:
        per_tok = -b.advantages * b.logp
    loss, metrics = reduce_policy_loss(
        per_tok,
        b,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        axis_name=axis_name,
        log_ratio_values=d,
    )
    return loss, {**metrics, **extra}


def gspo_token_ratio(b: PolicyBatch, log_ratio_clamp: float = 10.0):
    """GSPO-token ratio ``s_i,t`` ``[B, T]`` (value ``s_i``, gradient ``s_i·∇logp_t``) and the
    clamped token log-ratios ``δ`` (see :func:`gspo_loss`)."""
    d = log_ratio(b.logp, b.old_logp, 20.0)
    n = jnp.maximum(jnp.sum(b.valid, axis=-1), 1).astype(d.dtype)
    log_seq = jnp.sum(jnp.where(b.valid, d, 0.0), axis=-1) / n
    # logp − sg(logp) is 0 in value but carries ∇logp; keep a finite value for −inf logp.
    safe_logp = jnp.where(jnp.isinf(b.logp), 0.0, b.logp)
    log_tok = safe_logp - _sg(safe_logp) + _sg(log_seq)[:, None]
    return jnp.exp(jnp.minimum(log_tok, log_ratio_clamp)), log_seq, d


@register_policy_loss("gspo")
def gspo_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_ratio_low=3e-4,
    clip_ratio_high=4e-4,
    log_ratio_clamp: float = 10.0,
    token_weights=None,
    loss_agg_mode: str = "seq-mean-token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """GSPO: PPO clip on the length-normalised *sequence* ratio, token-level stop-gradient form.

    With ``δ_{i,t} = logp − old_logp`` and ``n_i = max(Σ_t m_{i,t}, 1)``::

        log s_i   = Σ_t m δ_{i,t} / n_i                 (s_i = (π_θ(y_i)/π_old(y_i))^{1/|y_i|})
        log s_i,t = min(logp_t − sg(logp_t) + sg(log s_i), log_ratio_clamp)
        ℓ_{i,t}   = max(−A·s_i,t, −A·clip(s_i,t, 1 − ε_l, 1 + ε_h))     (clipped_surrogate)

    ``s_i,t`` equals ``s_i`` in value, and ``∇s_i,t = s_i ∇logp_t``: GSPO-token, which reduces to
    GSPO (sequence gradient ``s_i·mean_t ∇logp_t``) when the advantage is constant over the
    sequence and the aggregation is ``seq-mean-token-mean`` (the default, as in verl). A whole
    sequence is clipped or not. Defaults are the paper's ``ε_l = 3e-4``, ``ε_h = 4e-4``; verl
    takes them from the actor config (``clip_ratio_low/high``). The upper clamp at 10 is verl's.

    Deviation (finite values for ``±inf`` log-probs): each token's ``δ`` is clamped to ±20
    before the sequence mean; verl averages unclamped ``δ``. Identical whenever ``|δ| ≤ 20``.

    Metrics: the base set (``pg/clipfrac``: token fraction with the clip branch active,
    ``pg/clipfrac_lower`` always 0 as in verl: no dual clip), ``pg/seq_ratio_mean`` (mean of
    s_i over sequences with tokens). Shapes: see the module docstring; outputs scalars.

    References: GSPO arXiv:2507.18071; checked against verl
    ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_gspo`` at b178a3cd56f5.
    """
    b = policy_batch(
        "gspo_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    ratio, log_seq, d = gspo_token_ratio(b, log_ratio_clamp)
    per_tok, info = clipped_surrogate(
        ratio, b.advantages, clip_ratio_low=clip_ratio_low, clip_ratio_high=clip_ratio_high
    )
    loss, metrics = reduce_policy_loss(
        per_tok,
        b,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        axis_name=axis_name,
        clipped=info["clipped"],
        log_ratio_values=d,
    )
    has_tok = jnp.any(b.valid, axis=-1)
    metrics["pg/seq_ratio_mean"] = masked_mean(
        jnp.exp(jnp.minimum(_sg(log_seq), log_ratio_clamp)), has_tok, axis_name=axis_name
    )
    return loss, metrics


@register_policy_loss("cispo")
def cispo_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    clip_ratio_low=None,
    clip_ratio_high=0.2,
    log_ratio_clamp: float = 20.0,
    token_weights=None,
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

    Metrics: the base set (``pg/clipfrac``: token fraction with ``r̂ ≠ r``, verl;
    ``pg/clipfrac_lower`` 0). Shapes: see the module docstring; outputs scalars.

    References: MiniMax-M1 arXiv:2506.13585; checked against verl
    ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_cispo`` at b178a3cd56f5.
    """
    b = policy_batch(
        "cispo_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    eps_h = _eps(clip_ratio_high, "clip_ratio_high")
    lo = -jnp.inf if clip_ratio_low is None else 1.0 - _eps(clip_ratio_low, "clip_ratio_low")
    d = log_ratio(_sg(b.logp), b.old_logp, log_ratio_clamp)
    ratio = jnp.exp(d)
    clipped_ratio = jnp.clip(ratio, lo, 1.0 + eps_h)
    per_tok = -clipped_ratio * b.advantages * b.logp
    return reduce_policy_loss(
        per_tok,
        b,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        axis_name=axis_name,
        clipped=ratio != clipped_ratio,
        log_ratio_values=d,
    )
