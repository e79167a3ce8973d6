"""Entropy bonus, coefficient schedules and adaptive target-entropy control.

* :func:`entropy_bonus` — ``L_H = −c · agg(H)`` with verl's ``loss_agg_mode`` (added to the PG
  loss: ``L = L_PG + L_H``; verl ``actor.entropy_coeff``).
* :func:`entropy_coef_at` / :func:`entropy_coef_schedule` — the coefficient as a pure function
  of the step: ``constant``, ``linear``, ``cosine`` decay, each with an optional linear warm-up.
* :class:`AdaptiveEntropyConfig`, :func:`adaptive_entropy_init`, :func:`adaptive_entropy_update`
  — a coefficient raised when the measured entropy is below a target and lowered when above,
  clamped to ``[min_coef, max_coef]``; the state is a small pytree (checkpoint it with the
  optimizer state).

References: verl ``entropy_coeff``; arXiv:2505.22617 §2.5 of the reference sheet (bonus
ablation); Skywork-OR1 arXiv:2505.22312 (adaptive entropy control); SIREN arXiv:2509.25133
(``naive_entropy_reg_adaptive``); SAC temperature tuning arXiv:1812.05905.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropylab.losses.policy import check_loss_agg_mode
from entropylab.losses.registry import register_regularizer
from entropylab.ops.masked import AGG_MODES, aggregate

__all__ = [
    "SCHEDULE_KINDS",
    "ADAPTIVE_RULES",
    "AdaptiveEntropyConfig",
    "AdaptiveEntropyState",
    "adaptive_entropy_init",
    "adaptive_entropy_update",
    "entropy_bonus",
    "entropy_coef_at",
    "entropy_coef_schedule",
]

SCHEDULE_KINDS = ("constant", "linear", "cosine")
ADAPTIVE_RULES = ("step", "proportional", "log")


def entropy_bonus(
    entropy,
    mask,
    *,
    coef,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Plain entropy bonus ``L_H = −c · agg(H)`` (to be *added* to the policy-gradient loss).

    ``H[B, T]`` is the per-token full-vocabulary entropy of the **current** policy (with
    gradient); ``agg`` is :func:`entropylab.ops.aggregate` with the same ``loss_agg_mode`` as
    the PG loss (verl). ``coef`` may be a Python float or a traced scalar (a schedule or the
    adaptive controller's output). With ``axis_name`` the aggregate is over the global batch.

    Returns ``(loss, metrics)`` with ``entropy/mean`` (``agg(H)``, stop-gradient),
    ``entropy/coef`` and ``entropy/bonus_loss``.

    References: verl ``actor.entropy_coeff``; arXiv:2505.22617 (c ∈ {1e-4, 1e-3} barely moves
    entropy, 1e-2 makes it explode).
    """
    check_loss_agg_mode(loss_agg_mode)
    entropy = jnp.asarray(entropy)
    if entropy.ndim != 2 or jnp.shape(mask) != entropy.shape:
        raise ValueError(
            f"entropy and mask must both be [B, T], got {entropy.shape}, {jnp.shape(mask)}"
        )
    h = aggregate(
        entropy, mask, loss_agg_mode, loss_scale_factor=loss_scale_factor, axis_name=axis_name
    )
    coef = jnp.asarray(coef, h.dtype)
    loss = -coef * h
    metrics = {
        "entropy/mean": jax.lax.stop_gradient(h),
        "entropy/coef": jax.lax.stop_gradient(coef),
        "entropy/bonus_loss": jax.lax.stop_gradient(loss),
    }
    return loss, metrics


def entropy_coef_at(
    step,
    *,
    kind: str = "constant",
    init_value: float,
    end_value: float = 0.0,
    decay_steps: int = 1,
    warmup_steps: int = 0,
    warmup_init_value: float = 0.0,
) -> jax.Array:
    """Entropy coefficient at ``step`` (a pure, jit-able function of the integer step).

    With ``w = warmup_steps``, ``s = clip(step − w, 0, decay_steps)``, ``f = s / decay_steps``::

        step < w:     c = c_w0 + (c_0 − c_w0) · step / w                 (linear warm-up)
        constant:     c = c_0
        linear:       c = c_0 + (c_end − c_0) · f
        cosine:       c = c_end + (c_0 − c_end) · ½(1 + cos(π f))

    and ``c = c_end`` for decays after ``w + decay_steps``. (Names follow optax / TRL #5584:
    ``init_value``, ``end_value``, ``decay_steps``.)
    """
    _check_schedule(kind, decay_steps, warmup_steps)
    step = jnp.asarray(step, jnp.float32)
    c0, c_end, c_w0 = (jnp.float32(v) for v in (init_value, end_value, warmup_init_value))
    f = jnp.clip(step - warmup_steps, 0.0, float(decay_steps)) / float(decay_steps)
    if kind == "constant":
        c = c0 + 0.0 * f
    elif kind == "linear":
        c = c0 + (c_end - c0) * f
    else:
        c = c_end + (c0 - c_end) * 0.5 * (1.0 + jnp.cos(jnp.pi * f))
    if warmup_steps > 0:
        warm = c_w0 + (c0 - c_w0) * jnp.clip(step, 0.0, None) / float(warmup_steps)
        c = jnp.where(step < warmup_steps, warm, c)
    return c


def entropy_coef_schedule(**kwargs):
    """Return ``step -> coef`` (an optax-style schedule) with :func:`entropy_coef_at`'s kwargs."""
    _check_schedule(
        kwargs.get("kind", "constant"), kwargs.get("decay_steps", 1), kwargs.get("warmup_steps", 0)
    )
    return lambda step: entropy_coef_at(step, **kwargs)


def _check_schedule(kind, decay_steps, warmup_steps):
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
    if not decay_steps >= 1:
        raise ValueError(f"decay_steps must be >= 1, got {decay_steps}")
    if not warmup_steps >= 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdaptiveEntropyConfig:
    """Adaptive target-entropy control of the entropy-bonus coefficient.

    Update rules (``H`` = the measured entropy of this step, ``H*`` = ``target``)::

        step          c ← clip(c + Δ·sign(H* − H), c_min, c_max)        Skywork-OR1 / TRL
        proportional  c ← clip(c + Δ·(H* − H),     c_min, c_max)        SIREN naive_..._adaptive
        log           log c ← log c + Δ·(H* − H);  c clipped            SAC temperature (α)

    ``gate`` (Skywork-OR1): the coefficient *used this step* is ``c_k · 1[H_k ≤ H*]`` — the
    bonus is only active while entropy is at or below the target, so it never pushes entropy
    further up once above it. Without the gate the bonus is ``c_k`` always.

    Defaults: ``rule="step"`` with the gate is the Skywork-OR1 rule (arXiv:2505.22312 §3
    "adaptive entropy control"). The numbers are those of TRL's port of it (PR #6140,
    ``GRPOConfig``): target 0.2 nats, Δ = 0.005, c₀ = 0, c ∈ [0, 1]. The TRL names are
    ``entropy_target``, ``entropy_coef``, ``entropy_coef_{delta,min,max}``, and the update is
    ``c ← min(c + Δ, c_max)`` if H ≤ H* else ``max(c − Δ, c_min)``. The reference sheet does not
    record the report's own values, so TRL's are taken as the published implementation. TRL's
    docstring warns that target 0.2 acts only near a complete collapse: set it near
    the early-training entropy of your model. The SIREN variant ``c ← max(0, c +
    lr_c·(H_anchor − H))`` is ``rule="proportional", gate=False, min_coef=0``.
    """

    target: float = 0.2
    init_coef: float = 0.0
    min_coef: float = 0.0
    max_coef: float = 1.0
    delta: float = 0.005
    rule: str = "step"
    gate: bool = True

    def __post_init__(self):
        if self.rule not in ADAPTIVE_RULES:
            raise ValueError(f"rule must be one of {ADAPTIVE_RULES}, got {self.rule!r}")
        if not self.min_coef >= 0:
            raise ValueError(f"min_coef must be >= 0, got {self.min_coef}")
        if not self.max_coef >= self.min_coef:
            raise ValueError(f"max_coef must be >= min_coef, got {self.max_coef}")
        if not self.min_coef <= self.init_coef <= self.max_coef:
            raise ValueError(
                f"init_coef must be in [min_coef, max_coef], got {self.init_coef} not in "
                f"[{self.min_coef}, {self.max_coef}]"
            )
        if not self.delta > 0:
            raise ValueError(f"delta must be > 0, got {self.delta}")
        if self.rule == "log" and not self.min_coef > 0:
            raise ValueError("min_coef must be > 0 with rule='log' (the update is in log c)")
        if not math.isfinite(self.target):
            raise ValueError(f"target must be finite, got {self.target}")


class AdaptiveEntropyState(NamedTuple):
    """Controller state (a pytree of two scalars): the coefficient ``c_k`` and the step count."""

    coef: jax.Array
    count: jax.Array


def adaptive_entropy_init(config: AdaptiveEntropyConfig) -> AdaptiveEntropyState:
    """Initial state ``(c_0 = init_coef, count = 0)``."""
    return AdaptiveEntropyState(
        jnp.asarray(config.init_coef, jnp.float32), jnp.zeros((), jnp.int32)
    )


def adaptive_entropy_update(
    state: AdaptiveEntropyState, entropy, config: AdaptiveEntropyConfig
) -> tuple[jax.Array, AdaptiveEntropyState, dict[str, jax.Array]]:
    """One control step: ``(coef_to_use_now, next_state, metrics)``.

    ``entropy`` is the scalar entropy measured on this step's batch (e.g. the global token mean
    of the rollout entropies, ``masked_mean(H, mask, axis_name=...)``, which is identical on
    every device). ``coef_to_use_now = c_k · 1[H ≤ H*]`` with ``gate`` else ``c_k``; the state
    moves to ``c_{k+1}`` by the rule of :class:`AdaptiveEntropyConfig`. Jit-able; the entropy
    is stop-gradient. Metrics: ``entropy/coef`` (used now), ``entropy/coef_next``,
    ``entropy/target``, ``entropy/controlled`` (the measured H).

    References: arXiv:2505.22312 (Skywork-OR1); arXiv:2509.25133 (SIREN);
    arXiv:1812.05905 (SAC automatic temperature).
    """
    h = jax.lax.stop_gradient(jnp.asarray(entropy, jnp.float32))
    if h.ndim != 0:
        raise ValueError(f"entropy must be a scalar (the batch entropy), got shape {h.shape}")
    c = jnp.asarray(state.coef, jnp.float32)
    err = config.target - h
    if config.rule == "step":
        c_next = c + config.delta * jnp.sign(err)
    elif config.rule == "proportional":
        c_next = c + config.delta * err
    else:
        c_next = jnp.exp(jnp.log(jnp.maximum(c, config.min_coef)) + config.delta * err)
    c_next = jnp.clip(c_next, config.min_coef, config.max_coef)
    used = jnp.where(h <= config.target, c, 0.0) if config.gate else c
    metrics = {
        "entropy/coef": used,
        "entropy/coef_next": c_next,
        "entropy/target": jnp.float32(config.target),
        "entropy/controlled": h,
    }
    return used, AdaptiveEntropyState(c_next, state.count + 1), metrics


# ------------------------------------------------------------------ objective registration
def _entropy_bonus_component(
    inputs,
    ctx,
    *,
    coef=1e-3,
    entropy_agg_mode=None,
    schedule=None,
    end_coef=0.0,
    decay_steps=1,
    warmup_steps=0,
    warmup_init_coef=0.0,
):
    """``−c·agg(H)`` of ``inputs.entropy``; with ``schedule`` the coefficient is
    ``entropy_coef_at(inputs.step, …)``. ``entropy_agg_mode`` defaults to the objective's."""
    if inputs.entropy is None:
        raise ValueError("regularizer 'entropy_bonus' needs inputs.entropy (current policy)")
    if schedule is not None:
        if inputs.step is None:
            raise ValueError("regularizer 'entropy_bonus' with a schedule needs inputs.step")
        coef = entropy_coef_at(
            inputs.step,
            kind=schedule,
            init_value=coef,
            end_value=end_coef,
            decay_steps=decay_steps,
            warmup_steps=warmup_steps,
            warmup_init_value=warmup_init_coef,
        )
    loss, m = entropy_bonus(
        inputs.entropy,
        inputs.mask,
        coef=coef,
        loss_agg_mode=entropy_agg_mode or ctx.loss_agg_mode,
        loss_scale_factor=ctx.loss_scale_factor,
        axis_name=ctx.axis_name,
    )
    return loss, {"entropy/bonus_coef": m["entropy/coef"], "entropy/bonus_agg": m["entropy/mean"]}


def _validate_bonus(kw):
    if kw.get("entropy_agg_mode") not in (None, *AGG_MODES):
        raise ValueError(f"entropy_agg_mode must be one of {AGG_MODES} or None")
    if kw.get("schedule") is not None:
        entropy_coef_schedule(
            kind=kw["schedule"],
            init_value=kw.get("coef", 1e-3),
            decay_steps=kw.get("decay_steps", 1),
            warmup_steps=kw.get("warmup_steps", 0),
        )


register_regularizer(
    "entropy_bonus",
    _entropy_bonus_component,
    needs=lambda kw: ("entropy", "step") if kw.get("schedule") is not None else ("entropy",),
    validate=_validate_bonus,
)
