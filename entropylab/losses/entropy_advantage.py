"""Entropy-based advantage shaping (Cheng et al., "Reasoning with Exploration: An Entropy
Perspective", arXiv:2506.14758).

Per token, with ``H_t`` the full-vocabulary entropy of the policy at t (detached)::

    ψ_t  = min(α · sg(H_t), |A_t| / κ)
    A'_t = A_t + ψ_t

``ψ_t ≥ 0`` always (H ≥ 0), and the clip ``|A|/κ`` bounds how far a negative advantage can
move: for ``A < 0``, ``A + ψ ≥ A (1 − 1/κ)``, so κ ≥ 1 never flips its sign (κ = 1 can bring it
to 0; κ < 1 can flip it). A token with ``A = 0`` gets no bonus. No gradient
flows through ``H`` (the paper's "gradient-detached" term: the policy-gradient direction is
unchanged, only its per-token magnitude).

Released code checked against: the paper's authors released none (the paper's page lists no
code). The one public implementation read is the ``baseline_entropy_adv`` baseline of SIREN
(``Linn3a/siren`` ``verl/verl/workers/actor/dp_actor.py`` at fa59a8dfbecf, update pass):
``advantages += torch.min(alpha * entropy.detach(), advantages.abs() / kappa)`` with
``alpha = actor.adv_alpha`` (default 0.4) and ``kappa = 1``, where ``entropy`` is the
**current** policy's per-token entropy in the update pass. This module follows that line: the
defaults are its ``α = 0.4, κ = 1`` (the paper's own α/κ values were not retrieved), and the
registered shaper reads the current entropy (``entropy_source="current"``; ``"old"`` reads the
rollout entropy instead).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.losses.registry import register_advantage_shaper
from entropylab.ops.masked import masked_mean

__all__ = ["entropy_advantage"]

_sg = jax.lax.stop_gradient


@register_advantage_shaper("entropy_advantage", entropy_source="current")
def entropy_advantage(
    advantages,
    entropy,
    mask,
    *,
    alpha: float = 0.4,
    kappa: float = 1.0,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``A' = A + min(α·sg(H), |A|/κ)`` per token (arXiv:2506.14758; see the module docstring).

    Args:
      advantages: ``[B, T]`` or per-sequence ``[B]`` (broadcast over the tokens).
      entropy: ``[B, T]`` per-token entropy (no gradient is taken through it).
      mask: ``[B, T]``; masked tokens keep ``A`` unchanged (their entropy is never read, so
        NaN/inf padding there is harmless).
      alpha: entropy scale α ≥ 0 (SIREN's port: 0.4).
      kappa: clip divisor κ > 0 (SIREN's port: 1).
    Returns:
      ``(A' [B, T], metrics)``: ``entadv/bonus_mean`` (mean ψ over valid tokens),
      ``entadv/clip_frac`` (fraction of valid tokens where ``|A|/κ`` is the smaller term).
      A NaN in ``A`` or ``H`` at a valid token stays NaN in ``A'``.
    """
    if not alpha >= 0:
        raise ValueError(f"entropy_advantage: alpha must be >= 0, got {alpha}")
    if not kappa > 0:
        raise ValueError(f"entropy_advantage: kappa must be > 0, got {kappa}")
    h = _sg(jnp.asarray(entropy))
    m = jnp.asarray(mask)
    if h.ndim != 2:
        raise ValueError(f"entropy_advantage: entropy must be [B, T], got shape {h.shape}")
    if m.shape != h.shape:
        raise ValueError(
            f"entropy_advantage: mask must have entropy's shape {h.shape}, got {m.shape}"
        )
    valid = m if m.dtype == jnp.bool_ else m != 0
    adv = jnp.asarray(advantages)
    if adv.shape in ((h.shape[0],), (h.shape[0], 1)):
        adv = jnp.broadcast_to(adv.reshape(h.shape[0], 1), h.shape)
    elif adv.shape != h.shape:
        raise ValueError(
            f"entropy_advantage: advantages must be [B] = ({h.shape[0]},) or [B, T] = {h.shape}, "
            f"got shape {adv.shape}"
        )
    dt = jnp.result_type(adv.dtype, h.dtype)
    adv = adv.astype(dt)
    ent = alpha * jnp.where(valid, h, 0).astype(dt)
    cap = jnp.abs(adv) / kappa
    psi = jnp.minimum(ent, cap)
    out = jnp.where(valid, adv + psi, adv)
    metrics = {
        "entadv/bonus_mean": masked_mean(_sg(psi), valid, axis_name=axis_name),
        "entadv/clip_frac": masked_mean((cap < ent).astype(dt), valid, axis_name=axis_name),
    }
    return out, metrics
