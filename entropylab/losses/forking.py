"""High-entropy "forking" tokens: policy gradient on the top-ρ entropy tokens only (80/20 rule).

Paper objective (DAPO with a token mask)::

    J = 1/Σ_i|o_i| · Σ_i Σ_t 1[H_{i,t} ≥ τ_ρ^B] · min(r·A, clip(r, 1−ε_l, 1+ε_h)·A)

``τ_ρ^B`` is the entropy value with a fraction ρ of the batch's valid tokens above it. The
entropy is that of the current policy in the update pass; it only selects tokens (no gradient
flows through it), and low-entropy tokens get exactly zero policy gradient.

Paper vs code (reference sheet §5.5), both available:

* selection — ``"quantile"`` (paper, default): ``H ≥ Q_{1−ρ}(H)`` with NumPy's linear
  quantile over the valid tokens; ``"topk"`` (code ``get_global_entropy_top_mask``): the
  ``⌈ρ·N⌉`` valid tokens with the largest H, ties to the lower index.
* normalisation — ``"all_tokens"`` (paper, default): ``agg(M ⊙ ℓ, mask)``, the denominators count
  every valid token; ``"selected_tokens"`` (code): ``agg(ℓ, mask ⊙ M)``, they count only the
  selected tokens, so per-token gradients are ~1/ρ larger.
* scope — the paper's batch quantile; the code's is per micro-batch. Here: the tokens passed
  in, global across devices with ``axis_name``.

References: arXiv:2506.01939 (Wang et al., *Beyond the 80/20 Rule*); code
``Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR`` (≥ 137d8d1e, after the mask-index fix).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.losses._select import count_ceil, topk_mask
from entropylab.losses.policy import (
    clipped_surrogate,
    log_ratio,
    policy_batch,
    reduce_policy_loss,
)
from entropylab.losses.registry import register_policy_loss
from entropylab.ops.masked import masked_count, masked_mean, masked_quantile

__all__ = ["forking_token_loss", "forking_token_mask"]

SELECTIONS = ("quantile", "topk")
NORMALIZATIONS = ("all_tokens", "selected_tokens")


def _valid(mask):
    mask = jnp.asarray(mask)
    return mask if mask.dtype == jnp.bool_ else mask != 0


def forking_token_mask(
    entropy, mask, *, top_rho: float = 0.2, selection: str = "quantile", axis_name=None
) -> jax.Array:
    """Mask of the high-entropy ("forking") tokens: the top ρ of valid tokens by entropy.

    ``"quantile"``: ``M = valid ∧ H ≥ Q_{1−ρ}(H_valid)``; ``"topk"``: the ``⌈ρ·N⌉`` largest
    (``N`` = global valid count). Global over devices with ``axis_name``. ``ρ = 1`` keeps every
    valid token; ``ρ = 0`` keeps none. Shapes: ``[B, T]`` → bool ``[B, T]`` (no gradient).

    References: arXiv:2506.01939.
    """
    if not 0.0 <= top_rho <= 1.0:
        raise ValueError(f"top_rho must be in [0, 1], got {top_rho}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    valid = _valid(mask)
    if top_rho == 0.0:
        return jnp.zeros(h.shape, bool)
    if selection == "quantile":
        tau = masked_quantile(h, valid, 1.0 - top_rho, axis_name=axis_name)
        return valid & (h >= tau.astype(h.dtype))
    k = count_ceil(top_rho, masked_count(valid, axis_name=axis_name))
    return topk_mask(h, valid, k, axis_name=axis_name)


@register_policy_loss("forking", entropy_source="current")
def forking_token_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    entropy,
    top_rho: float = 0.2,
    selection: str = "quantile",
    normalization: str = "all_tokens",
    clip_ratio_low=0.2,
    clip_ratio_high=0.28,
    clip_ratio_c: float | None = 10.0,
    log_ratio_clamp: float = 20.0,
    token_weights=None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO/DAPO clipped loss on the top-ρ entropy tokens only (see the module docstring).

    The method's piece is the token mask ``M`` (:func:`forking_token_mask`) composed around the
    shared surrogate: ``agg(M ⊙ w ⊙ ℓ, mask)`` (``"all_tokens"``) or ``agg(w ⊙ ℓ, mask ∧ M)``
    (``"selected_tokens"``). ``entropy`` ``[B, T]``: per-token entropy of the current policy
    (its gradient is not used; ``entropylab.losses.token_entropy`` computes it from logits).
    Defaults are the paper's DAPO settings: ρ 0.2, ε 0.2/0.28, dual clip 10, token-mean.

    Metrics: the base set (``pg/clipfrac`` over selected tokens), ``entropy/fork_frac``
    (selected / valid), ``entropy/fork_threshold`` (smallest selected entropy),
    ``entropy/fork_selected_mean``, ``entropy/fork_unselected_mean``. Shapes and conventions:
    :mod:`entropylab.losses.policy`.

    References: arXiv:2506.01939; DAPO arXiv:2503.14476; checked against
    ``Shenzhi-Wang/Beyond-the-80-20-Rule-RLVR`` ``verl/trainer/ppo/core_algos.py`` and
    ``verl/workers/actor/dp_actor.py`` at 6f5dda6f70db (tests/losses/forking_test.py).
    """
    b = policy_batch(
        "forking_token_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
    if entropy is None or jnp.shape(entropy) != b.valid.shape:
        got = None if entropy is None else jnp.shape(entropy)
        raise ValueError(
            f"forking_token_loss: entropy must have logp's shape {b.valid.shape}, got {got}"
        )
    sel = forking_token_mask(
        entropy, b.valid, top_rho=top_rho, selection=selection, axis_name=axis_name
    )
    d = log_ratio(b.logp, b.old_logp, log_ratio_clamp)
    per_tok, info = clipped_surrogate(
        jnp.exp(d),
        b.advantages,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
    )
    if normalization == "all_tokens":
        per_tok, agg_mask = jnp.where(sel, per_tok, 0.0), None
    else:
        agg_mask = sel
    loss, metrics = reduce_policy_loss(
        per_tok,
        b,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        axis_name=axis_name,
        agg_mask=agg_mask,
        clipped=info["clipped"],
        dual_clipped=info["dual_clipped"],
        clip_mask=sel,
        log_ratio_values=d,
    )
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    thr = jnp.min(jnp.where(sel, h, jnp.inf))
    if axis_name is not None:
        thr = jax.lax.pmin(thr, axis_name)
    f = per_tok.dtype
    metrics.update(
        {
            "entropy/fork_frac": masked_mean(sel.astype(f), b.valid, axis_name=axis_name),
            "entropy/fork_threshold": jnp.where(jnp.isfinite(thr), thr, 0.0),
            "entropy/fork_selected_mean": masked_mean(h, sel, axis_name=axis_name),
            "entropy/fork_unselected_mean": masked_mean(h, b.valid & ~sel, axis_name=axis_name),
        }
    )
    return loss, metrics
