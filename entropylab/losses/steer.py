"""STEER: per-token reweighting of the PPO loss by the predicted entropy change.

Per token (no gradient), with ``p = clip(π_θ(o_t), 1e-8, 1−1e-8)``,
``p_old = max(π_old(o_t), 1e-8)`` and ``H_t`` the **old** policy's entropy at t::

    Ω_t = (A_t / p_old) · p·(1 − p) · (log p + H_t)        (= A·r·(1−p)·(log p + H))

a first-order estimate of the token's contribution to the entropy change; non-finite values
are set to 0. Tokens whose |Ω| is large get a smaller weight λ_t:

* ``mode="exp"`` (paper's ``λ = exp(−k|Ω|)``; ``run_exp.sh``, default):
  ``k = −ln λ_min / max(max|Ω|, 0.02)`` (code's normalisation, so the largest |Ω| gets
  exactly λ_min) or a fixed ``k`` (``k=...``, the paper's free-k form);
  ``λ = clip(exp(−k|Ω|), λ_min, λ_max)``.
* ``mode="linear"`` (``run_linear.sh``): ``λ = λ_max − (|Ω| − min|Ω|)·(λ_max − λ_min) /
  (max|Ω| − min|Ω|)`` clipped to ``[λ_min, λ_max]``; ``(λ_min + λ_max)/2`` if max = min.

Loss: ``agg(sg(λ) ⊙ ℓ_PPO)`` with clip-higher and dual clip. Defaults from the released
scripts: exp mode ``[λ_min, λ_max] = [0.8, 1.0]``; linear ``[0.8, 1.2]``; ε 0.2/0.28,
dual clip 10. max/min |Ω| are over the valid tokens of the global batch (the code: the
micro-batch). Weights are not renormalised: mean λ < 1 lowers the effective step size.

References: arXiv:2510.10150 (Hao et al., STEER); code ``zz-haooo/STEER``
``compute_token_weights`` / ``compute_policy_loss_with_entropy``.
"""

from __future__ import annotations

import math

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

__all__ = ["steer_loss", "steer_omega", "steer_weights"]

MODES = ("exp", "linear")


def _valid(mask):
    mask = jnp.asarray(mask)
    return mask if mask.dtype == jnp.bool_ else mask != 0


def steer_omega(logp, old_logp, advantages, mask, *, entropy) -> jax.Array:
    """Ω_t (stop-gradient, 0 on masked/non-finite tokens); see the module docstring."""
    valid = _valid(mask)
    sg = jax.lax.stop_gradient
    lp = sg(jnp.asarray(logp))
    p = jnp.clip(jnp.exp(lp), 1e-8, 1.0 - 1e-8)
    p_old = jnp.maximum(jnp.exp(sg(jnp.asarray(old_logp))).astype(p.dtype), 1e-8)
    h = sg(jnp.asarray(entropy)).astype(p.dtype)
    a = sg(jnp.asarray(advantages)).astype(p.dtype)
    omega = (a / p_old) * p * (1.0 - p) * (jnp.log(p) + h)
    return jnp.where(valid & jnp.isfinite(omega), omega, 0.0)


def steer_weights(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    entropy,
    mode: str = "exp",
    weight_min: float = 0.8,
    weight_max: float | None = None,
    k: float | None = None,
    omega_floor: float = 0.02,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Token weights λ ``[B, T]`` (stop-gradient; 1 on masked tokens) and their metrics.

    ``weight_max`` defaults to 1.0 (exp) / 1.2 (linear). Metrics: ``steer/weights_mean``,
    ``steer/weights_min``, ``steer/weights_max``, ``steer/omega_abs_max``,
    ``steer/omega_mean`` (over valid tokens, global with ``axis_name``).

    References: arXiv:2510.10150.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    lam_max = (1.0 if mode == "exp" else 1.2) if weight_max is None else weight_max
    if not 0.0 < weight_min <= lam_max:
        raise ValueError(f"need 0 < weight_min <= weight_max, got {weight_min}, {lam_max}")
    if k is not None and not k >= 0:
        raise ValueError(f"k must be >= 0 or None, got {k}")
    if not omega_floor > 0:
        raise ValueError(f"omega_floor must be > 0, got {omega_floor}")
    valid = _valid(mask)
    omega = steer_omega(logp, old_logp, advantages, valid, entropy=entropy)
    a = jnp.abs(omega)
    mx = jnp.max(jnp.where(valid, a, -jnp.inf))
    mn = jnp.min(jnp.where(valid, a, jnp.inf))
    if axis_name is not None:
        mx, mn = jax.lax.pmax(mx, axis_name), jax.lax.pmin(mn, axis_name)
    mx = jnp.where(jnp.isfinite(mx), mx, 0.0)
    mn = jnp.where(jnp.isfinite(mn), mn, 0.0)
    if mode == "exp":
        kk = -math.log(weight_min) / jnp.maximum(mx, omega_floor) if k is None else k
        lam = jnp.clip(jnp.exp(-kk * a), weight_min, lam_max)
    else:
        span = mx - mn
        safe = jnp.where(span > 0, span, 1.0)
        lam = lam_max - (a - mn) * (lam_max - weight_min) / safe
        lam = jnp.where(span > 0, lam, 0.5 * (weight_min + lam_max))
        lam = jnp.clip(lam, weight_min, lam_max)
    lam = jax.lax.stop_gradient(jnp.where(valid, lam, 1.0))
    big = jnp.where(valid, lam, jnp.inf)
    lo, hi = jnp.min(big), jnp.max(jnp.where(valid, lam, -jnp.inf))
    if axis_name is not None:
        lo, hi = jax.lax.pmin(lo, axis_name), jax.lax.pmax(hi, axis_name)
    metrics = {
        "steer/weights_mean": masked_mean(lam, valid, axis_name=axis_name),
        "steer/weights_min": jnp.where(jnp.isfinite(lo), lo, 0.0),
        "steer/weights_max": jnp.where(jnp.isfinite(hi), hi, 0.0),
        "steer/omega_abs_max": mx,
        "steer/omega_mean": masked_mean(omega, valid, axis_name=axis_name),
    }
    return lam, metrics


@register_policy_loss("steer", entropy_source="old")
def steer_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    entropy,
    mode: str = "exp",
    weight_min: float = 0.8,
    weight_max: float | None = None,
    k: float | None = None,
    omega_floor: float = 0.02,
    clip_ratio_low=0.2,
    clip_ratio_high=0.28,
    clip_ratio_c: float | None = 10.0,
    log_ratio_clamp: float = 20.0,
    token_weights=None,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """STEER loss ``agg(sg(λ) ⊙ w ⊙ ℓ_PPO)``; ``entropy`` = π_old's per-token entropy ``[B, T]``.

    The method's piece is the token weight λ (:func:`steer_weights`) on the shared surrogate.
    Metrics: the base set and the ``steer/*`` metrics of :func:`steer_weights`. Shapes and
    conventions: :mod:`entropylab.losses.policy`.

    References: arXiv:2510.10150; checked against ``zz-haooo/STEER``
    ``verl/trainer/ppo/core_algos.py`` (``compute_token_weights``,
    ``compute_policy_loss_with_entropy``) at b31df71652cd (tests/losses/steer_test.py).
    """
    b = policy_batch(
        "steer_loss",
        logp,
        old_logp,
        advantages,
        mask,
        token_weights=token_weights,
        loss_agg_mode=loss_agg_mode,
    )
    if entropy is None or jnp.shape(entropy) != b.valid.shape:
        got = None if entropy is None else jnp.shape(entropy)
        raise ValueError(f"steer_loss: entropy must have logp's shape {b.valid.shape}, got {got}")
    lam, steer_metrics = steer_weights(
        b.logp,
        b.old_logp,
        b.advantages,
        b.valid,
        entropy=entropy,
        mode=mode,
        weight_min=weight_min,
        weight_max=weight_max,
        k=k,
        omega_floor=omega_floor,
        axis_name=axis_name,
    )
    d = log_ratio(b.logp, b.old_logp, log_ratio_clamp)
    per_tok, info = clipped_surrogate(
        jnp.exp(d),
        b.advantages,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
    )
    loss, metrics = reduce_policy_loss(
        lam * per_tok,
        b,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        axis_name=axis_name,
        clipped=info["clipped"],
        dual_clipped=info["dual_clipped"],
        log_ratio_values=d,
    )
    return loss, {**steer_metrics, **metrics}
