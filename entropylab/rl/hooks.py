"""Named hooks of the RL trainer: sampler temperature hooks and objective-input (extras) providers.

**Temperature hooks** (``RLConfig.temperature_hook = "hapo"``): a per-token temperature function
for the sampler with a state carried between steps (part of the checkpointed trainer state)::

    hook.init(kwargs) -> state                        before the first step
    hook.fn(entropy_at_base_T [B], state) -> T [B]    inside the sampler, every decoded token
    hook.update(state, rollout, kwargs) -> state      after each training rollout (jittable)

``hapo``: HAPO's Adaptive Temperature Sampling ``T' = T·(1 + τ·clamp(ĥ, −1, 1))`` with ĥ
normalised by the previous rollout batch's entropy statistics (:func:`hapo_temperature`,
arXiv:2509.16591); the first step samples at the base temperature. The statistics come from the
recorded rollout entropies (at the temperature used), where the release recomputes them from the
raw logits; with ``T = 1`` and small τ the two are close.

**Extras providers**: an objective component that declares ``needs=("extras.<name>", ...)`` gets
``ObjectiveInputs.extras[name]`` from the provider registered under ``name`` here (one
``[B, ...]`` array per training sample). ``register_extra`` adds one; the trainer raises a
``ValueError`` at construction for a need no provider covers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from entropylab.losses import hapo as hapo_lib
from entropylab.losses.ares import ares_difficulty_buckets

__all__ = [
    "EXTRAS",
    "TEMPERATURE_HOOKS",
    "ExtrasContext",
    "TemperatureHook",
    "register_extra",
    "register_temperature_hook",
]


# ------------------------------------------------------------------------- temperature hooks
@dataclasses.dataclass(frozen=True)
class TemperatureHook:
    name: str
    init: Callable
    fn: Callable  # (entropy [B], state, **kwargs) -> T [B]
    update: Callable


TEMPERATURE_HOOKS: dict[str, TemperatureHook] = {}


def register_temperature_hook(hook: TemperatureHook) -> TemperatureHook:
    if hook.name in TEMPERATURE_HOOKS:
        raise ValueError(f"temperature hook {hook.name!r} is already registered")
    TEMPERATURE_HOOKS[hook.name] = hook
    return hook


_HAPO_T = ("tau", "negative_scale")
_HAPO_S = ("pivot", "interpolation")


def _hapo_init(kw):
    one = jnp.ones((), jnp.float32)
    stats = hapo_lib.HapoEntropyStats(mu=0 * one, sigma=one, max_pos=one, min_neg=one)
    return {"stats": stats, "ready": jnp.zeros((), bool)}


def _hapo_fn(entropy, state, *, base_temperature, **kw):
    t = hapo_lib.hapo_temperature(entropy, state["stats"], base_temperature=base_temperature, **kw)
    return jnp.where(state["ready"], t, jnp.full_like(t, base_temperature))


def _hapo_update(state, rollout, kw):
    stats = hapo_lib.hapo_entropy_stats(rollout.entropy, rollout.response_mask, **kw)
    return {"stats": stats, "ready": jnp.ones((), bool)}


register_temperature_hook(TemperatureHook("hapo", _hapo_init, _hapo_fn, _hapo_update))


def split_hook_kwargs(name: str, kwargs: dict) -> tuple[dict, dict]:
    """``(fn kwargs, update kwargs)`` of a hook's config; ``ValueError`` for unknown ones."""
    if name == "hapo":
        bad = sorted(set(kwargs) - set(_HAPO_T) - set(_HAPO_S))
        if bad:
            raise ValueError(
                f"temperature hook 'hapo': unknown argument(s) {bad}; "
                f"accepted: {sorted(_HAPO_T + _HAPO_S)}"
            )
        return (
            {k: v for k, v in kwargs.items() if k in _HAPO_T},
            {k: v for k, v in kwargs.items() if k in _HAPO_S},
        )
    return dict(kwargs), {}


# ------------------------------------------------------------------------- extras providers
@dataclasses.dataclass(frozen=True)
class ExtrasContext:
    """What a provider sees: the rollout, rewards ``[B]`` (NumPy), the problem of each row, the
    group size and the trainer (for extra sampling, e.g. AEPO's temperature samples)."""

    rollout: object
    rewards: np.ndarray
    problems: list
    group_size: int
    step: int
    trainer: object


EXTRAS: dict[str, Callable] = {}
# provider name -> the extras keys it fills (a provider may fill several at once)
_FILLS: dict[str, tuple[str, ...]] = {}


def register_extra(name: str, fn: Callable, *, fills: tuple[str, ...] | None = None):
    """Register ``fn(ctx: ExtrasContext) -> {key: [B, ...] array}`` providing ``fills``."""
    fills = (name,) if fills is None else tuple(fills)
    for key in fills:
        if key in _FILLS:
            raise ValueError(f"an extras provider for {key!r} is already registered")
    EXTRAS[name] = fn
    for key in fills:
        _FILLS[key] = name
    return fn


def provider_for(key: str) -> str | None:
    """Name of the provider filling ``extras[key]`` (``None`` if none)."""
    return _FILLS.get(key)


def _rewards(ctx):
    return {"rewards": jnp.asarray(ctx.rewards, jnp.float32)}


def _difficulty(ctx):
    """ARES bucket of each sample from its group's accuracy (reward == 1): 0 easy, 1 medium,
    2 hard (:func:`ares_difficulty_buckets`, thresholds 2/3 and 1/3)."""
    acc = (ctx.rewards == 1.0).reshape(-1, ctx.group_size).mean(1)
    return {"difficulty": jnp.repeat(ares_difficulty_buckets(acc), ctx.group_size)}


def _temperature_samples(ctx):
    """AEPO's extra samples: one per training sample, same prompts, drawn at ``T_high`` if the
    rollout entropy is below ``RLConfig.aepo_target_entropy`` else ``T_low`` (the paper's
    switch, arXiv:2510.08141); rewards from the same verifier. Their log-probs under the current
    params (``temp_logp``) are computed inside the update."""
    return ctx.trainer.temperature_samples(ctx)


register_extra("rewards", _rewards)
register_extra("difficulty", _difficulty)
register_extra(
    "temperature_samples",
    _temperature_samples,
    fills=("temp_logp", "temp_rewards", "temp_mask", "temp_tokens", "temp_full_mask"),
)


def tree_rows(tree) -> set:
    return {np.shape(x)[0] for x in jax.tree.leaves(tree)}


@dataclasses.dataclass(frozen=True)
class HookTemperatureFn:
    """Hashable ``(entropy, state) -> T`` for the sampler (static under jit, equal by value)."""

    hook: str
    base_temperature: float
    kwargs: tuple = ()

    def __call__(self, entropy, state):
        return TEMPERATURE_HOOKS[self.hook].fn(
            entropy, state, base_temperature=self.base_temperature, **dict(self.kwargs)
        )
