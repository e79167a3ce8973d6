"""EntroPIC: entropy stabilisation by proportional-integral control (Yang et al., "EntroPIC:
Towards Stable Long-Term Training of LLMs via Entropy Stabilization with Proportional-Integral
Control", arXiv:2511.15248).

A PI controller sets the coefficient α of an extra loss term on *high-probability* tokens, so
that the measured entropy tracks a target ``H*``. At each update, with ``H`` the measured
entropy (the release: ``agg(H_current, mask)`` with the PG loss's ``loss_agg_mode``)::

    e      = H − H*
    α      = clip(K_p · e + K_i · I, −α_max, α_max)        (I: the integral *before* this update)
    I     ← I + w · e                                      (w: the weight of this update)
    L_adj  = α · agg_{m ∧ [log π > log τ]}(−r · |A|)        (τ = 0.95; r = π_θ/π_old)

and the policy loss is PPO's (verl ``vanilla``, dual clip 3) plus ``L_adj``. When entropy is
above target (α > 0) the term raises the probability of tokens that are already likely (of
positive and negative samples alike, through ``|A|``), which lowers entropy; below target
(α < 0) it lowers them, which raises entropy. ``r`` carries the gradient; the selection
``log π > log τ`` uses the current log-prob.

Pure controller (like :func:`~entropylab.losses.entropy.adaptive_entropy_update`):
:class:`EntroPICConfig`, :func:`entropic_init`, :func:`entropic_update` (one PI step; jit-able;
the state is a two-scalar pytree), and the loss term :func:`entropic_adjustment_loss`. The
objective's stateful regularizer ``"entropic"`` (combine with ``policy_loss="ppo_clip"`` and
``clip_ratio_c=3.0`` for the release's loss) computes α from its state and this mini-batch's
measured entropy in the loss, and advances the integral once per train step from the
statistics of all mini-batches (``update_state_from_stats``).

Released code checked against: ``yk7333/EntroPIC`` at 2470730c345806 — ``dp_actor.py``
(``EntroPICDataParallelPPOActor.update_policy``: the PI rule, α clipped to ±1, the integral
advanced after each micro-batch by ``e · rows_micro / ppo_mini_batch_size``) and
``core_algos.py`` ``compute_policy_loss_entropic`` (the adjustment term, ``high_prob_thresh =
0.95``); gains ``K_p = 1``, ``K_i = 0.01`` (``config/entropic.yaml``), target 0.1 in
``run_entropic.sh`` (Qwen3-8B-Base at rollout temperature 0.6: set it for your model).
Differences, by construction of the objective's once-per-step state update: within one train
step the release's integral moves between micro-batches, here it is held and advanced once
after the step by the row-weighted mean error of the step's mini-batches times
``integral_weight`` (set it to the number of optimizer mini-batches per step to match the
release's per-step increment; the release run has one, ``ppo_mini_batch_size =
train_batch_size = 512``). The paper describes the controller as reweighting positive and
negative samples; the released loss (used here) is the single high-probability term above.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from entropylab.losses.policy import _nan_probe, log_ratio, policy_batch
from entropylab.losses.registry import SumCount, register_regularizer
from entropylab.ops.masked import aggregate, masked_mean

__all__ = [
    "EntroPICConfig",
    "EntroPICState",
    "entropic_adjustment_loss",
    "entropic_init",
    "entropic_update",
]

_sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True, kw_only=True)
class EntroPICConfig:
    """PI control of EntroPIC's coefficient α toward the target entropy ``target``.

    Fields: ``target`` H* ≥ 0 (release run 0.1), ``kp`` K_p ≥ 0 (release 1), ``ki`` K_i ≥ 0
    (release 0.01), ``alpha_max`` > 0 (the release clips α to ±1).
    """

    target: float = 0.1
    kp: float = 1.0
    ki: float = 0.01
    alpha_max: float = 1.0

    def __post_init__(self):
        if not (math.isfinite(self.target) and self.target >= 0):
            raise ValueError(f"target must be a finite entropy >= 0, got {self.target}")
        if not (math.isfinite(self.kp) and self.kp >= 0):
            raise ValueError(f"kp must be finite and >= 0, got {self.kp}")
        if not (math.isfinite(self.ki) and self.ki >= 0):
            raise ValueError(f"ki must be finite and >= 0, got {self.ki}")
        if not (math.isfinite(self.alpha_max) and self.alpha_max > 0):
            raise ValueError(f"alpha_max must be finite and > 0, got {self.alpha_max}")


class EntroPICState(NamedTuple):
    """Controller state: the integral of the entropy error ``I`` and the update count."""

    integral: jax.Array
    count: jax.Array


def entropic_init(config: EntroPICConfig) -> EntroPICState:
    """Initial state ``(I = 0, count = 0)`` (the release starts its accumulator at 0)."""
    if not isinstance(config, EntroPICConfig):
        raise TypeError(f"config must be an EntroPICConfig, got {type(config).__name__}")
    return EntroPICState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))


def _alpha(integral, entropy, config):
    h = _sg(jnp.asarray(entropy, jnp.float32))
    if h.ndim != 0:
        raise ValueError(f"entropy must be a scalar (the measured entropy), got shape {h.shape}")
    err = h - config.target
    a = config.kp * err + config.ki * jnp.asarray(integral, jnp.float32)
    return jnp.clip(a, -config.alpha_max, config.alpha_max), err, h


def entropic_update(
    state: EntroPICState, entropy, config: EntroPICConfig, *, weight=1.0
) -> tuple[jax.Array, EntroPICState, dict[str, jax.Array]]:
    """One PI step: ``(α to use now, next state, metrics)``.

    ``α = clip(K_p·(H − H*) + K_i·I, ±α_max)`` with the integral *before* the step, then
    ``I ← I + weight·(H − H*)``. ``entropy`` is the scalar measured entropy (stop-gradient);
    ``weight`` the step's weight (the release: rows of the micro-batch / mini-batch size).
    A NaN entropy makes α and the integral NaN (it is not hidden). Metrics:
    ``entropic/alpha``, ``entropic/error``, ``entropic/integral`` (after), ``entropic/target``.
    """
    a, err, _ = _alpha(state.integral, entropy, config)
    integral = jnp.asarray(state.integral, jnp.float32) + jnp.asarray(weight, jnp.float32) * err
    nxt = EntroPICState(integral, state.count + 1)
    metrics = {
        "entropic/alpha": a,
        "entropic/error": err,
        "entropic/integral": integral,
        "entropic/target": jnp.float32(config.target),
    }
    return a, nxt, metrics


def entropic_adjustment_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    alpha,
    high_prob_threshold: float = 0.95,
    log_ratio_clamp: float = 20.0,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``L_adj = α · agg(−r·|A|)`` over the valid tokens with ``log π > log τ`` (module docstring).

    Args:
      logp, old_logp, advantages, mask: as the policy losses (``old_logp=None`` on-policy,
        ``[B]`` or ``[B, T]`` advantages); ``r = exp(clip(logp − old_logp, ±20))``.
      alpha: the controller's coefficient (a scalar, no gradient).
      high_prob_threshold: τ ∈ (0, 1) (release 0.95); the selection is strict, on ``logp``.
    Returns:
      ``(L_adj, metrics)``: ``entropic/high_prob_frac`` (selected fraction of valid tokens),
      ``entropic/adjust_agg`` (``agg(−r·|A|)``). A NaN in ``logp``/``old_logp``/``advantages``
      at a valid token gives a NaN loss and a NaN gradient there.
    """
    if not 0 < high_prob_threshold < 1:
        raise ValueError(f"high_prob_threshold must be in (0, 1), got {high_prob_threshold}")
    b = policy_batch(
        "entropic_adjustment_loss",
        logp,
        old_logp,
        advantages,
        mask,
        loss_agg_mode=loss_agg_mode,
    )
    ratio = jnp.exp(log_ratio(b.logp, b.old_logp, log_ratio_clamp))
    high = b.valid & (_sg(b.logp) > math.log(high_prob_threshold))
    per_tok = -ratio * jnp.abs(b.advantages)
    agg = aggregate(
        per_tok, high, loss_agg_mode, loss_scale_factor=loss_scale_factor, axis_name=axis_name
    )
    a = _sg(jnp.asarray(alpha, agg.dtype))
    loss = a * agg + _nan_probe(b, axis_name).astype(agg.dtype)
    f = agg.dtype
    metrics = {
        "entropic/high_prob_frac": masked_mean(high.astype(f), b.valid, axis_name=axis_name),
        "entropic/adjust_agg": _sg(agg),
    }
    return loss, metrics


# ------------------------------------------------------------------ objective registration
_CFG_FIELDS = tuple(f.name for f in dataclasses.fields(EntroPICConfig))


def _cfg(kw) -> EntroPICConfig:
    return EntroPICConfig(**{k: v for k, v in kw.items() if k in _CFG_FIELDS})


def _measure(inputs, ctx):
    if inputs.entropy is None:
        raise ValueError("regularizer 'entropic' needs inputs.entropy (current policy)")
    h = _sg(jnp.asarray(inputs.entropy))
    m = jnp.asarray(inputs.mask) != 0
    h = jnp.where(m, h, 0.0)
    return aggregate(
        h,
        m,
        ctx.loss_agg_mode,
        loss_scale_factor=ctx.loss_scale_factor,
        axis_name=ctx.axis_name,
    )


def _entropic_component(
    inputs, ctx, *, high_prob_threshold=0.95, log_ratio_clamp=20.0, integral_weight=1.0, **kw
):
    """EntroPIC's ``L_adj`` with α from the state's integral and this mini-batch's entropy."""
    cfg = _cfg(kw)
    h = _sg(_measure(inputs, ctx))
    alpha, err, _ = _alpha(ctx.state.integral, h, cfg)
    loss, m = entropic_adjustment_loss(
        inputs.logp,
        inputs.old_logp,
        inputs.advantages,
        inputs.mask,
        alpha=alpha,
        high_prob_threshold=high_prob_threshold,
        log_ratio_clamp=log_ratio_clamp,
        loss_agg_mode=ctx.loss_agg_mode,
        loss_scale_factor=ctx.loss_scale_factor,
        axis_name=ctx.axis_name,
    )
    return loss, {
        **m,
        "entropic/alpha": alpha,
        "entropic/measured": h,
        "entropic/error": err,
        "entropic/integral": jnp.asarray(ctx.state.integral, jnp.float32),
        "entropic/target": jnp.float32(cfg.target),
    }


def _rows(inputs, ctx):
    b = jnp.asarray(inputs.mask).shape[0]
    n = jnp.asarray(b, jnp.float32)
    return n if ctx.axis_name is None else jax.lax.psum(n, ctx.axis_name)


def _entropic_stats(inputs, ctx, metrics, kw):
    """``{"entropy": (Σ rows·H_mb, Σ rows)}``: each mini-batch's measured entropy weighted by
    its number of rows (the release's ``rows / ppo_mini_batch_size`` weighting)."""
    return {"entropy": SumCount.from_mean(metrics["entropic/measured"], _rows(inputs, ctx))}


def _entropic_from_stats(state, stats, kw):
    st = stats["entropy"]
    _, nxt, info = entropic_update(
        state, st.mean(), _cfg(kw), weight=kw.get("integral_weight", 1.0)
    )
    keep = st.count > 0
    nxt = jax.tree.map(lambda a, b: jnp.where(keep, a, b), nxt, state)
    return nxt, {"entropic/integral": nxt.integral, "entropic/measured": st.mean()}


def _entropic_update(state, metrics, kw):
    _, nxt, _ = entropic_update(
        state, metrics["entropic/measured"], _cfg(kw), weight=kw.get("integral_weight", 1.0)
    )
    return nxt, {"entropic/integral": nxt.integral}


def _validate(kw):
    _cfg(kw)
    t = kw.get("high_prob_threshold", 0.95)
    if not 0 < t < 1:
        raise ValueError(f"high_prob_threshold must be in (0, 1), got {t}")
    w = kw.get("integral_weight", 1.0)
    if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
        raise ValueError(f"integral_weight must be a finite number >= 0, got {w!r}")
    if not kw.get("log_ratio_clamp", 20.0) > 0:
        raise ValueError("log_ratio_clamp must be > 0")


register_regularizer(
    "entropic",
    _entropic_component,
    accepts=set(_CFG_FIELDS) | {"high_prob_threshold", "log_ratio_clamp", "integral_weight"},
    needs=("entropy",),
    init_state=lambda kw: entropic_init(_cfg(kw)),
    update_state=_entropic_update,
    validate=_validate,
    stats=_entropic_stats,
    zero_stats=lambda kw: {"entropy": SumCount.zeros()},
    update_from_stats=_entropic_from_stats,
)
