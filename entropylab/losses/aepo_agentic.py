"""Agentic AEPO (Entropy-Balanced PO): gradient-preserving high clip, entropy-aware advantages.

Also the rollout-budget rule.

Policy side (arXiv:2510.14545)::

    z_t  = sg((H_t − mean H) / std H)                     over the valid tokens of the batch
    Ã_t  = A_t · (1 + α · z_t)                            entropy-aware advantage (α = 0.2)

    r_t  = π_θ / π_old,   ℓ = max(−Ã r, −Ã · clip(r, 1 − ε_l, F_t)),  dual clip for Ã < 0
    F_t  = (1 + ε_h) · r_t / sg(r_t)                      entropy-balanced upper bound

``F_t`` has the forward value ``1 + ε_h`` (so the loss value equals PPO-clip), but where the
upper clip is active (``Ã > 0, r > 1 + ε_h``) the token keeps the gradient
``−Ã (1 + ε_h) ∇log π`` instead of 0: the clipped high-entropy exploration tokens are not silenced
and their gradient is rescaled to the clip boundary.

Which tokens get ``F_t`` (``gradient_preserving``):

* ``"all"`` (default, the paper: the stop-gradient sits in the high-clip term, the term where
  high-entropy tokens are clipped);
* ``"high_entropy"``: only tokens with ``z_t > 0``;
* ``"low_entropy"``: only tokens with ``z_t ≤ 0`` — what the ARLArena port
  (``compute_policy_loss_aepo``) does, the opposite of the paper's stated aim;
* ``"none"``: standard PPO-clip (ablation).

The std is the unbiased (n − 1) one, as the port (``torch.std``); std = 0 → 1. Statistics are
taken over the global batch when ``axis_name`` is given (the port: the micro-batch).

Rollout side: :func:`aepo_global_budget` is the entropy pre-monitoring rule
``m = k · σ(β (H_root − H̄_tool))``. The consecutive-branch penalty's exact form was not
retrievable and is not implemented.

References: arXiv:2510.14545; gradient-preserving clip: CE-GPPO arXiv:2509.20712.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.losses.policy import (
    clipped_surrogate,
    log_ratio,
    policy_batch,
    reduce_policy_loss,
)
from entropylab.losses.registry import register_advantage_shaper, register_policy_loss
from entropylab.ops.masked import masked_mean, masked_var

__all__ = ["aepo_agentic_loss", "aepo_global_budget", "entropy_aware_advantages"]

_GP_MODES = ("all", "high_entropy", "low_entropy", "none")


def _entropy_z(entropy, mask, axis_name):
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    m = jnp.asarray(mask) != 0
    mean = masked_mean(h, m, axis_name=axis_name)
    std = jnp.sqrt(masked_var(h, m, unbiased=True, axis_name=axis_name))
    std = jnp.where(std > 0, std, 1.0)
    return jnp.where(m, (h - mean) / std, 0.0), mean, std


@register_advantage_shaper("entropy_aware_advantages", entropy_source="current")
def entropy_aware_advantages(
    advantages, entropy, mask, *, alpha: float = 0.2, axis_name=None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Entropy-aware advantage ``Ã = A · (1 + α · sg(z))``, z = batch z-score of token entropy.

    Shapes: ``advantages``, ``entropy``, ``mask`` ``[B, T]`` → ``[B, T]`` (masked tokens keep A).
    Returns ``(Ã, metrics)``; ``Ã`` carries no gradient through the entropy.

    References: arXiv:2510.14545 (entropy-aware advantage estimation); α = 0.2 as in the
    ARLArena port.
    """
    z, mean, std = _entropy_z(entropy, mask, axis_name)
    adv = jnp.asarray(advantages)
    out = adv * (1.0 + alpha * z.astype(adv.dtype))
    return out, {"aepo/entropy_mean": mean, "aepo/entropy_std": std}


@register_policy_loss("aepo_agentic", entropy_source="current")
def aepo_agentic_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    entropy,
    alpha: float = 0.2,
    gradient_preserving: str = "all",
    clip_ratio_low=0.2,
    clip_ratio_high=None,
    clip_ratio_c: float | None = 3.0,
    log_ratio_clamp: float = 20.0,
    token_weights=None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Entropy-Balanced Policy Optimization loss (see the module docstring for the equations).

    The method's pieces around the shared surrogate: the advantage reshaping
    ``Ã = A·(1 + α·z)`` and, on the selected upper-clipped tokens, the gradient-preserving bound
    ``F_t`` in place of the clipped term.

    Args:
      logp, old_logp, advantages, mask: see :mod:`entropylab.losses.policy`.
      entropy: ``[B, T]`` token entropy of the current policy (no gradient is taken through it).
      alpha: entropy-aware advantage scale (0 disables it).
      gradient_preserving: ``"all" | "high_entropy" | "low_entropy" | "none"``.
    Returns:
      ``(loss, metrics)``; metrics: the base set, ``aepo/clip_upper_frac`` (tokens whose
      gradient was preserved), ``aepo/entropy_mean``, ``aepo/entropy_std``.

    References: arXiv:2510.14545; the authors' repository (``dongguanting/ARPO``) was read for
    its scripts only; the loss is checked against the ARLArena port ``WillDreamer/ARLArena``
    ``verl/trainer/ppo/core_algos.py`` ``compute_policy_loss_aepo`` at dc1da9f717d1
    (tests/losses/aepo_agentic_test.py).
    """
    if gradient_preserving not in _GP_MODES:
        raise ValueError(
            f"gradient_preserving must be one of {_GP_MODES}, got {gradient_preserving!r}"
        )
    b = policy_batch(
        "aepo_agentic_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    if entropy is None or jnp.shape(entropy) != b.valid.shape:
        got = None if entropy is None else jnp.shape(entropy)
        raise ValueError(
            f"aepo_agentic_loss: entropy must have logp's shape {b.valid.shape}, got {got}"
        )
    z, mean, std = _entropy_z(entropy, b.valid, axis_name)
    adv = b.advantages * (1.0 + alpha * z.astype(b.advantages.dtype))
    eps_h = clip_ratio_low if clip_ratio_high is None else clip_ratio_high
    d = log_ratio(b.logp, b.old_logp, log_ratio_clamp)
    per_tok, info = clipped_surrogate(
        jnp.exp(d),
        adv,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
    )
    if gradient_preserving == "all":
        sel = jnp.ones(z.shape, bool)
    elif gradient_preserving == "high_entropy":
        sel = z > 0
    elif gradient_preserving == "low_entropy":
        sel = z <= 0
    else:
        sel = jnp.zeros(z.shape, bool)
    upper = info["clipped_upper"] & sel
    # (1 + ε_h) · r / sg(r) = (1 + ε_h) · exp(logp − sg(logp)): value 1 + ε_h, gradient ∇log π.
    # logp is made finite first so that a −inf log-prob elsewhere cannot put NaN in the graph.
    lp_safe = jnp.where(upper, b.logp, 0.0)
    bound = (1.0 + eps_h) * jnp.exp(lp_safe - jax.lax.stop_gradient(lp_safe))
    per_tok = jnp.where(upper, -adv * bound, per_tok)
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
    metrics.update(
        {
            "aepo/clip_upper_frac": masked_mean(upper.astype(f), b.valid, axis_name=axis_name),
            "aepo/entropy_mean": mean,
            "aepo/entropy_std": std,
        }
    )
    return loss, metrics


def aepo_global_budget(
    total_budget: int, root_entropy, tool_entropies, tool_mask=None, *, beta: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """Entropy pre-monitoring: split a rollout budget k into m global and k − m branch samples.

    ``m = round(k · σ(β · (H_root − H̄_tool)))``, ``H̄_tool = mean_i H_i^tool`` over the tool calls
    (masked by ``tool_mask``; with no tool call, H̄_tool = H_root so m = round(k/2)).

    Shapes: ``root_entropy`` scalar or ``[P]``; ``tool_entropies`` ``[..., N]`` (last axis = tool
    calls) with ``tool_mask`` alike. Returns ``(m int32, k − m int32)``. Rounding to nearest is
    our choice (the paper states the real-valued rule).

    References: arXiv:2510.14545 (Dynamic entropy-balanced rollout, entropy pre-monitoring).
    """
    if total_budget < 0:
        raise ValueError(f"total_budget must be >= 0, got {total_budget}")
    h_root = jnp.asarray(root_entropy, jnp.float32)
    ht = jnp.asarray(tool_entropies, jnp.float32)
    tm = jnp.ones(ht.shape, bool) if tool_mask is None else jnp.asarray(tool_mask) != 0
    n = jnp.sum(tm, axis=-1)
    mean_tool = jnp.where(n > 0, jnp.sum(jnp.where(tm, ht, 0.0), -1) / jnp.maximum(n, 1), h_root)
    m = jnp.round(total_budget * jax.nn.sigmoid(beta * (h_root - mean_tool))).astype(jnp.int32)
    m = jnp.clip(m, 0, total_budget)
    return m, total_budget - m
