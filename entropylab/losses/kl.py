"""KL penalties to a reference policy from sampled-token log-probs, and KL-coefficient controllers.

Estimators of KL(π_θ‖π_ref) at a sampled token (Schulman's k1/k2/k3), with ``δ = ref_logp − logp``:

=======================  ============================================  ==========================
kind (verl alias)         per-token value                               note
=======================  ============================================  ==========================
``k1`` (``kl``)           ``logp − ref_logp = −δ``                      unbiased, can be negative
``abs``                   ``|logp − ref_logp|``
``k2`` (``mse``)          ``½ (logp − ref_logp)²``                      gradient = ∇ of true KL
``k3`` (``low_var_kl``)   ``clip(exp(δ') − δ' − 1, ±10)``, ``δ' = clip(δ, ±20)``   unbiased, ≥ 0
``k1+``, ``k3+``, …       value of k1/k3/…, gradient of k2             straight-through (verl)
=======================  ============================================  ==========================

verl's ``full`` estimator needs the whole next-token distribution, not sampled log-probs, so it is
not offered here (``ValueError``).

References: Schulman, "Approximating KL divergence" (2020) http://joschu.net/blog/kl-approx.html;
GRPO arXiv:2402.03300 (k3 in the loss); Ziegler et al. arXiv:1909.08593 (adaptive coefficient);
verl ``core_algos.kl_penalty``, ``AdaptiveKLController``, ``FixedKLController``.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropylab.losses.policy import check_loss_agg_mode
from entropylab.ops.masked import aggregate, masked_mean

__all__ = [
    "KL_KINDS",
    "AdaptiveKLController",
    "FixedKLController",
    "KLControllerState",
    "apply_kl_penalty",
    "kl_controller_init",
    "kl_controller_update",
    "kl_loss",
    "kl_penalty",
]

_ALIASES = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2"}
_ALIASES.update({"low_var_kl": "k3", "k3": "k3"})
KL_KINDS = tuple(_ALIASES) + tuple(f"{k}+" for k in _ALIASES)


def _canonical(kind: str) -> tuple[str, bool]:
    if not isinstance(kind, str) or kind.rstrip("+") not in _ALIASES or kind.count("+") > 1:
        raise ValueError(f"kind must be one of {KL_KINDS} ('full' needs full logits), got {kind!r}")
    return _ALIASES[kind.rstrip("+")], kind.endswith("+")


def _forward(logp, ref_logp, base: str) -> jax.Array:
    diff = logp - ref_logp
    if base == "k1":
        return diff
    if base == "abs":
        return jnp.abs(diff)
    if base == "k2":
        return 0.5 * jnp.square(diff)
    delta = jnp.clip(-diff, -20.0, 20.0)
    return jnp.clip(jnp.exp(delta) - delta - 1.0, -10.0, 10.0)


def kl_penalty(logp, ref_logp, *, kind: str = "low_var_kl") -> jax.Array:
    """Per-token KL estimate between the current and the reference policy (table above).

    Computed in at least float32. An ``inf − inf`` difference (both log-probs the same
    infinity, e.g. ``-inf`` padding) is taken as 0, with no gradient; a NaN input gives NaN
    (never a finite 0: the NaN policy of every loss here). ``kind`` ending in ``+``
    (e.g. ``"k3+"``) returns the estimator's value with the k2 gradient (verl's straight-through
    form: ``k2 − sg(k2) + sg(k)``, with the log-ratio in the k2 gradient carrier clamped to ±20
    so it stays finite); ``"k2+"``/``"mse+"`` equal ``"k2"``. ``k1``/``abs``/``k2`` of a ``−inf``
    log-prob are infinite, as the estimators are: mask such tokens out.

    Shapes: ``logp``, ``ref_logp`` any equal shape (usually ``[B, T]``); returns that shape.
    """
    base, straight_through = _canonical(kind)
    logp = jnp.asarray(logp)
    ref_logp = jnp.asarray(ref_logp)
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp and ref_logp shapes differ: {logp.shape} vs {ref_logp.shape}")
    dtype = jnp.result_type(logp.dtype, ref_logp.dtype, jnp.float32)
    logp = logp.astype(dtype)
    ref_logp = ref_logp.astype(dtype)
    bad = jnp.isinf(logp) & (logp == ref_logp)
    logp = jnp.where(bad, 0.0, logp)
    ref_logp = jnp.where(bad, 0.0, ref_logp)
    value = _forward(logp, ref_logp, base)
    if not straight_through or base == "k2":
        return value
    # Gradient carrier ½·clip(logp − ref_logp, ±20)²: finite for a −inf log-prob (verl leaves the
    # difference unclamped; identical whenever |logp − ref_logp| ≤ 20).
    k2 = 0.5 * jnp.square(jnp.clip(logp - ref_logp, -20.0, 20.0))
    return k2 - jax.lax.stop_gradient(k2) + jax.lax.stop_gradient(value)


def kl_loss(
    logp,
    ref_logp,
    mask,
    *,
    kind: str = "low_var_kl",
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """KL-to-reference loss term ``agg(kl_penalty(logp, ref_logp, kind))`` (verl ``use_kl_loss``).

    A NaN in ``logp``/``ref_logp`` at a valid token gives a NaN loss; masked tokens are
    ignored (any value). Unscaled: the trainer adds ``kl_coef · loss`` (verl ``kl_loss_coef``,
    default 1e-3, with ``kl_loss_type = low_var_kl``). Metrics: ``kl/<kind>`` = the loss
    (``kind`` as given).
    Shapes: ``[B, T]`` inputs; scalar outputs; global over ``axis_name``.

    References: GRPO arXiv:2402.03300; verl ``dp_actor`` (``kl_loss``).
    """
    check_loss_agg_mode(loss_agg_mode)
    logp, ref_logp = jnp.asarray(logp), jnp.asarray(ref_logp)
    if logp.ndim != 2:
        raise ValueError(f"kl_loss expects per-token arrays [B, T], got logp shape {logp.shape}")
    if jnp.shape(mask) != logp.shape:
        got = jnp.shape(mask)
        raise ValueError(f"kl_loss: mask must have logp's shape {logp.shape}, got {got}")
    # masked entries are selected out first: NaN/inf padding reaches no value and no gradient
    valid = jnp.asarray(mask) != 0
    kld = kl_penalty(jnp.where(valid, logp, 0.0), jnp.where(valid, ref_logp, 0.0), kind=kind)
    loss = aggregate(
        kld, mask, loss_agg_mode, loss_scale_factor=loss_scale_factor, axis_name=axis_name
    )
    return loss, {f"kl/{kind}": loss}


def apply_kl_penalty(
    token_scores, logp, ref_logp, mask, *, kl_coef, kind: str = "kl", axis_name=None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """In-reward KL penalty (verl ``apply_kl_penalty``): ``r_t = s_t − β·m_t·kl_t``.

    ``kl_t = kl_penalty(logp, ref_logp, kind)`` (verl's default ``kind`` here is ``kl`` = k1;
    ``logp`` is the rollout policy's). Also returns the controller input ``current_kl`` = mean
    over all B sequences of the per-sequence masked-mean KL (an empty sequence counts as 0), global
    over ``axis_name``; feed it to :func:`kl_controller_update` with ``n_steps = B``.

    Shapes: ``token_scores, logp, ref_logp, mask [B, T]``; ``kl_coef`` scalar (e.g. the
    controller state's ``value``). Returns ``(token_rewards [B, T], metrics)`` with metrics
    ``kl/reward_penalty`` (= current_kl) and ``kl/reward_penalty_coef`` (= β).
    """
    kld = kl_penalty(logp, ref_logp, kind=kind)
    if kld.ndim != 2:
        raise ValueError(f"apply_kl_penalty expects [B, T] arrays, got shape {kld.shape}")
    m = jnp.broadcast_to(jnp.asarray(mask) != 0, kld.shape)
    kld = jnp.where(m, kld, 0)
    beta = jnp.asarray(kl_coef, kld.dtype)
    rewards = jnp.asarray(token_scores) - beta * kld
    seq_kl = masked_mean(kld, m, axis=-1)
    current_kl = masked_mean(seq_kl, jnp.ones_like(seq_kl, bool), axis_name=axis_name)
    return rewards, {
        "kl/reward_penalty": jax.lax.stop_gradient(current_kl),
        "kl/reward_penalty_coef": beta,
    }


# ----------------------------------------------------------------------------- controllers
@dataclasses.dataclass(frozen=True, kw_only=True)
class FixedKLController:
    """Constant KL coefficient ``β = kl_coef`` (verl ``FixedKLController``)."""

    kl_coef: float = 1e-3

    def __post_init__(self):
        if not self.kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019; verl ``AdaptiveKLController``).

    ``e = clip(KL / target_kl − 1, −0.2, 0.2)``, ``β ← β · (1 + e · n_steps / horizon)``.
    """

    init_kl_coef: float = 1e-3
    target_kl: float = 0.1
    horizon: float = 10000.0

    def __post_init__(self):
        if not self.init_kl_coef >= 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {self.init_kl_coef}")
        if not self.target_kl > 0:
            raise ValueError(f"target_kl must be > 0, got {self.target_kl}")
        if not self.horizon > 0:
            raise ValueError(f"horizon must be > 0, got {self.horizon}")


class KLControllerState(NamedTuple):
    """Checkpointable controller state (a pytree): the current coefficient ``value`` (scalar)."""

    value: jax.Array


def kl_controller_init(controller: FixedKLController | AdaptiveKLController) -> KLControllerState:
    """Initial state: ``β₀ = kl_coef`` (fixed) or ``init_kl_coef`` (adaptive), float32 scalar."""
    if isinstance(controller, FixedKLController):
        return KLControllerState(value=jnp.asarray(controller.kl_coef, jnp.float32))
    if isinstance(controller, AdaptiveKLController):
        return KLControllerState(value=jnp.asarray(controller.init_kl_coef, jnp.float32))
    raise ValueError(
        f"controller must be FixedKLController or AdaptiveKLController, got {type(controller)}"
    )


def kl_controller_update(
    controller: FixedKLController | AdaptiveKLController,
    state: KLControllerState,
    current_kl,
    n_steps,
) -> KLControllerState:
    """One controller update; pure and jit-able (``controller`` is static configuration).

    Fixed: the state is returned unchanged. Adaptive: ``β ← β·(1 + clip(KL/target − 1, ±0.2) ·
    n_steps / horizon)``, where verl passes ``n_steps`` = the number of sequences in the batch
    and ``current_kl`` = the batch mean of per-sequence masked-mean token KL.

    References: Ziegler et al. arXiv:1909.08593 §2.2; verl ``AdaptiveKLController.update``.
    """
    if isinstance(controller, FixedKLController):
        return state
    if not isinstance(controller, AdaptiveKLController):
        raise ValueError(
            f"controller must be FixedKLController or AdaptiveKLController, got {type(controller)}"
        )
    value = jnp.asarray(state.value)
    err = jnp.clip(jnp.asarray(current_kl, value.dtype) / controller.target_kl - 1.0, -0.2, 0.2)
    mult = 1.0 + err * jnp.asarray(n_steps, value.dtype) / controller.horizon
    return KLControllerState(value=value * mult)
