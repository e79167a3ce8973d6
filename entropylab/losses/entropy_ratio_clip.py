"""Entropy Ratio Clipping (ERC; Su, Pan et al., "Entropy Ratio Clipping as a Soft Global
Constraint for Stable Reinforcement Learning", arXiv:2512.05591).

Per token, with ``H_t`` the current policy's and ``H^old_t`` the behaviour (old) policy's
full-vocabulary entropy at t, both at the rollout temperature::

    ρ_t   = (H_t + 1e-8) / (H^old_t + 1e-8)                        entropy ratio
    keep_t = β_low < ρ_t < β_high                                  (strict, both sides)
    ℓ_t   = ℓ^PPO_t            if keep_t                            (PPO/DAPO clipped surrogate)
            sg(ℓ^PPO_t)        otherwise                            (value kept, gradient 0)
    L     = agg(ℓ)                                                 over all valid tokens

ERC is a *bidirectional* clip on the entropy ratio: a token whose update has moved the whole
next-token distribution's entropy by more than the band (either way) contributes no gradient,
which PPO's ratio clip (on the sampled token only) cannot see. ``ℓ^PPO`` is DAPO's clipped
surrogate with dual clip (``clip_mode="dapo"``: ``clipped_surrogate`` with ε_l, ε_h, c), or
GPPO's gradient-preserving clip (``clip_mode="gppo"``: the clip bounds are
``(1 ∓ ε)·r/sg(r)``, equal to the DAPO bounds in value but passing the gradient
``−A(1 ± ε)∇log π`` through clipped tokens; GPPO is Kuaishou Klear's). The entropy
only selects; no gradient is taken through ``H``. Clipped tokens stay in the normaliser (the
loss value equals the plain surrogate's).

Released code checked against: ``Kwai-Klear/ERC`` ``verl/trainer/ppo/core_algos.py``
``compute_policy_loss_grpo_erc`` (``clip_mode="dapo"``) and ``compute_policy_loss_gppo_erc``
(``"gppo"``) at f1885c534f8d (tests/losses/entropy_ratio_clip_test.py ports both). Defaults are
the released DAPO-ERC run (``recipe/dapo/perf_run_dapo_ours_math_szp_ae_dapo_erc_1_05.sh``):
``β = 0.95 / 1.05`` (``entropy_mask_low/high``), ε 0.2 / 0.28, dual clip 3 (verl's default
``clip_ratio_c``), ``token-mean``; ``old_entropy`` is the rollout-time entropy (the release's
``entropys`` from the old-log-prob pass) and ``entropy`` the current one (update pass).
The release returns the fraction of kept tokens in the slot of ``pg_clipfrac_lower``; here it
is ``erc/keep_frac`` and ``pg/clipfrac_lower`` keeps its meaning (dual-clip fraction).
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
from entropylab.losses.registry import register_policy_loss
from entropylab.ops.masked import masked_mean

__all__ = ["entropy_ratio_keep_mask", "erc_loss"]

_sg = jax.lax.stop_gradient
_CLIP_MODES = ("dapo", "gppo")


def _check_bounds(low, high):
    if not (isinstance(low, (int, float)) and isinstance(high, (int, float))):
        raise TypeError(f"entropy_ratio_low/high must be numbers, got {low!r}, {high!r}")
    if not 0 <= low < 1 < high:
        raise ValueError(f"need 0 <= entropy_ratio_low < 1 < entropy_ratio_high, got {low}, {high}")


def entropy_ratio_keep_mask(
    entropy, old_entropy, mask, *, entropy_ratio_low: float = 0.95, entropy_ratio_high=1.05
) -> tuple[jax.Array, jax.Array]:
    """``(keep, ρ)``: ``keep = mask ∧ (β_low < ρ < β_high)``, ``ρ = (H + 1e-8)/(H_old + 1e-8)``.

    All ``[B, T]``; stop-gradient. A NaN entropy gives a NaN ``ρ`` and ``keep = False``
    (:func:`erc_loss` turns that into a NaN loss separately).
    """
    _check_bounds(entropy_ratio_low, entropy_ratio_high)
    h = _sg(jnp.asarray(entropy))
    h_old = _sg(jnp.asarray(old_entropy))
    m = jnp.asarray(mask)
    valid = m if m.dtype == jnp.bool_ else m != 0
    h = jnp.where(valid, h, 1.0)
    h_old = jnp.where(valid, h_old, 1.0)
    rho = (h + 1e-8) / (h_old + 1e-8)
    keep = valid & (rho > entropy_ratio_low) & (rho < entropy_ratio_high)
    return keep, rho


def _nan_probe(bad, logp, axis_name):
    """0, or NaN where ``bad``; gradient NaN at exactly those tokens (an incoming NaN entropy is
    never a finite loss or a zero gradient)."""
    lp = jnp.where(bad, logp, 0.0)
    poison = _sg(jnp.where(bad, jnp.nan, 0.0).astype(lp.dtype))
    probe = jnp.sum((lp - _sg(lp)) * poison)
    return probe if axis_name is None else jax.lax.psum(probe, axis_name)


def _check_entropy(name, arg, x, shape):
    if x is None or jnp.shape(x) != shape:
        got = None if x is None else jnp.shape(x)
        raise ValueError(f"{name}: {arg} must have logp's shape {shape}, got {got}")


@register_policy_loss("erc")
def erc_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    entropy,
    old_entropy,
    entropy_ratio_low: float = 0.95,
    entropy_ratio_high: float = 1.05,
    clip_mode: str = "dapo",
    clip_ratio_low=0.2,
    clip_ratio_high=0.28,
    clip_ratio_c: float | None = 3.0,
    log_ratio_clamp: float = 20.0,
    token_weights=None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Entropy Ratio Clipping on DAPO's (or GPPO's) clipped surrogate (module docstring).

    The method's piece is the token mask ``keep`` of :func:`entropy_ratio_keep_mask`: outside
    the band the per-token surrogate is detached. Composed around the shared surrogate
    (``clipped_surrogate``) and reduction (``reduce_policy_loss``).

    Args:
      logp, old_logp, advantages, mask: see :mod:`entropylab.losses.policy`.
      entropy: ``[B, T]`` current-policy token entropy (selection only, no gradient).
      old_entropy: ``[B, T]`` old (rollout) policy token entropy.
      entropy_ratio_low, entropy_ratio_high: the band ``0 ≤ β_low < 1 < β_high``.
      clip_mode: ``"dapo"`` (ERC-DAPO) or ``"gppo"`` (ERC-GPPO, gradient-preserving clip).
      clip_ratio_low, clip_ratio_high, clip_ratio_c: ε_l, ε_h (floats), dual clip c (or None).
    Returns:
      ``(loss, metrics)``: the base set (``pg/clipfrac``: PPO clip fraction, ``pg/clipfrac_lower``:
      dual-clip fraction), ``erc/keep_frac`` (valid tokens inside the band),
      ``erc/ratio_mean`` (mean ρ over valid tokens). A NaN in ``entropy``/``old_entropy`` at a
      valid token gives a NaN loss and a NaN gradient there.
    """
    if clip_mode not in _CLIP_MODES:
        raise ValueError(f"erc_loss: clip_mode must be one of {_CLIP_MODES}, got {clip_mode!r}")
    b = policy_batch(
        "erc_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    _check_entropy("erc_loss", "entropy", entropy, b.valid.shape)
    _check_entropy("erc_loss", "old_entropy", old_entropy, b.valid.shape)
    keep, rho = entropy_ratio_keep_mask(
        entropy,
        old_entropy,
        b.valid,
        entropy_ratio_low=entropy_ratio_low,
        entropy_ratio_high=entropy_ratio_high,
    )
    d = log_ratio(b.logp, b.old_logp, log_ratio_clamp)
    ratio = jnp.exp(d)
    if clip_mode == "dapo":
        eps_l, eps_h = clip_ratio_low, clip_ratio_high
    else:
        # GPPO: bounds (1 ∓ ε)·r/sg(r) — the DAPO bounds in value, with the ratio's gradient.
        for nm, v in (("clip_ratio_low", clip_ratio_low), ("clip_ratio_high", clip_ratio_high)):
            if not isinstance(v, (int, float)) or not v >= 0:
                raise ValueError(f"erc_loss: {nm} must be a float >= 0 with clip_mode='gppo'")
        # (value 1; a NaN ratio keeps scale 1 so the NaN reaches the loss, not the ε check)
        scale = jnp.where(jnp.isnan(ratio), 1.0, ratio / _sg(ratio))
        eps_l = 1.0 - (1.0 - clip_ratio_low) * scale
        eps_h = (1.0 + clip_ratio_high) * scale - 1.0
    per_tok, info = clipped_surrogate(
        ratio,
        b.advantages,
        clip_ratio_low=eps_l,
        clip_ratio_high=eps_h,
        clip_ratio_c=clip_ratio_c,
    )
    per_tok = jnp.where(keep, per_tok, _sg(per_tok))
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
    bad = b.valid & jnp.isnan(rho)
    loss = loss + _nan_probe(bad, b.logp, axis_name).astype(loss.dtype)
    metrics["pg/loss"] = loss
    f = loss.dtype
    metrics["erc/keep_frac"] = masked_mean(keep.astype(f), b.valid, axis_name=axis_name)
    metrics["erc/ratio_mean"] = masked_mean(rho.astype(f), b.valid, axis_name=axis_name)
    return loss, metrics
