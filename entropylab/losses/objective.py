"""Config-selected RL objective: policy loss + KL to a reference + regularizers, by registered name.

::

    A'     = shaper_k ∘ … ∘ shaper_1 (A)                       advantage shapers, in order
    L      = L_policy(logp, old_logp, A', mask)                   registered ``policy_loss``
           + β · agg(KL_kind(logp ‖ ref_logp))                     if ``kl_coef > 0`` (or adaptive)
           + Σ_j L_reg_j                                           ``regularizers``

Usage (the RL trainer's interface)::

    cfg = ObjectiveConfig(policy_loss="ppo_clip", policy_kwargs={"clip_ratio_high": 0.28},
                          regularizers=(("entropy_bonus", {"coef": 1e-3}),))
    objective = build_objective(cfg)          # ValueError for unknown names / kwargs
    state = objective.init_state()            # pytree ({} if nothing is adaptive)
    loss, metrics = objective.loss(inputs, state)          # pure, jit-able, differentiable
    state, info = objective.update_state(state, metrics)   # after the optimiser step

Metrics are namespaced: ``pg/*`` (policy loss), ``kl/*``, ``entropy/*``, ``cov/*``, ``<method>/*``,
``loss/policy``, ``loss/kl``, ``loss/<regularizer>``, ``loss/total``. All are stop-gradient.
Diagnostics always present: ``entropy/{mean,p50,p80,p95,frac_above}`` (of ``inputs.entropy``,
else of ``inputs.old_entropy``, when one is given), ``cov/*`` of :func:`covariance_stats` on the
shaped advantages, ``kl/<k1|k2|k3|abs>`` whenever ``ref_logp`` is given. A component's own
metric wins over a diagnostic of the same name; two components emitting one key is an error.

Distributed: ``axis_name`` (a config field; ``loss(..., axis_name=...)`` overrides it) is passed
to every component, so inside ``jax.shard_map`` each device returns the one-device answer.
State and ``key``/``step`` must be replicated; group-based shapers need whole groups per device.

References: verl ``dp_actor.update_policy`` (policy loss + ``kl_loss_coef``·KL − entropy_coeff·H).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from entropylab.losses import components as _components  # noqa: F401  (registers built-ins)
from entropylab.losses.covariance import covariance_stats
from entropylab.losses.kl import KL_KINDS, kl_loss
from entropylab.losses.registry import ComponentContext, get_component
from entropylab.ops.masked import AGG_MODES, masked_mean
from entropylab.ops.stats import entropy_stats

__all__ = ["Objective", "ObjectiveConfig", "ObjectiveInputs", "build_objective"]

_KL_CONTROLLERS = ("fixed", "adaptive")
_KL_CANON = {"kl": "k1", "k1": "k1", "abs": "abs", "mse": "k2", "k2": "k2"}
_KL_CANON.update({"low_var_kl": "k3", "k3": "k3"})
_UNSET = object()


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class ObjectiveInputs:
    """Per-step batch for :meth:`Objective.loss` (a pytree; all fields are data).

    Shapes: ``logp, old_logp, advantages, mask, entropy, old_entropy, ref_logp`` ``[B, T]``;
    ``logits`` ``[B, T, V]``; ``group_ids`` ``[B]``; ``key`` a PRNG key (replicated); ``step``
    an int scalar. ``logp``, ``entropy`` and ``logits`` carry the gradient; the rest is data.
    ``extras`` is a dict of method-specific arrays (e.g. ``temp_logp``/``temp_rewards``/
    ``temp_mask`` for AEPO, ``planning_mask`` for HICRA, ``rewards`` ``[B]`` for HAPO's group
    advantages, ``difficulty`` ``[B]`` for ARES' KL, ``entropy_p``/``old_entropy_p`` for SIREN).
    """

    logp: Any
    old_logp: Any
    advantages: Any
    mask: Any
    entropy: Any = None
    old_entropy: Any = None
    ref_logp: Any = None
    logits: Any = None
    key: Any = None
    step: Any = None
    group_ids: Any = None
    extras: Any = None


def _freeze(value, where):
    """Hashable copy of a kwarg value (lists → tuples, dicts → sorted item tuples)."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v, where)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v, where) for v in value)
    try:
        hash(value)
    except TypeError:
        raise ValueError(f"{where}: value {value!r} is not hashable (use Python scalars)") from None
    if isinstance(value, jax.Array):
        raise ValueError(f"{where}: pass Python scalars, not arrays ({value!r})")
    return value


def _freeze_kwargs(kwargs, where):
    if kwargs is None:
        return ()
    if isinstance(kwargs, Mapping):
        items = kwargs.items()
    else:
        items = tuple(kwargs)
        if not all(isinstance(it, tuple) and len(it) == 2 for it in items):
            raise ValueError(f"{where}: expected a mapping of keyword arguments, got {kwargs!r}")
    out = []
    for k, v in items:
        if not isinstance(k, str):
            raise ValueError(f"{where}: argument names must be strings, got {k!r}")
        out.append((k, _freeze(v, f"{where}[{k!r}]")))
    return tuple(sorted(out))


def _freeze_components(entries, field):
    """``(("name", {kw}), "name", …)`` → ``(("name", ((k, v), …)), …)``; duplicates raise."""
    if isinstance(entries, (str, Mapping)):
        raise ValueError(f"{field} must be a sequence of (name, kwargs) pairs, got {entries!r}")
    out, seen = [], set()
    for e in entries:
        if isinstance(e, str):
            name, kw = e, None
        elif isinstance(e, (tuple, list)) and len(e) in (1, 2) and isinstance(e[0], str):
            name, kw = e[0], (e[1] if len(e) == 2 else None)
        else:
            raise ValueError(f"{field}: each entry must be 'name' or (name, kwargs), got {e!r}")
        if name in seen:
            raise ValueError(f"{field}: duplicate name {name!r} (each may appear once)")
        seen.add(name)
        out.append((name, _freeze_kwargs(kw, f"{field}[{name!r}]")))
    return tuple(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    """Which registered components make the objective, and their hyper-parameters.

    Hashable (mappings are stored as sorted ``(key, value)`` tuples), so it can be a static jit
    argument. Fields:

    * ``policy_loss`` / ``policy_kwargs``: a registered policy loss and its keyword arguments.
    * ``loss_agg_mode`` (verl names) and ``loss_scale_factor``: forwarded to every component.
    * ``kl_coef``, ``kl_kind`` (``k1|k2|k3|abs`` or verl aliases, ``+`` = straight-through),
      ``kl_agg_mode`` (default ``loss_agg_mode``): ``β·agg(KL)`` when ``kl_coef > 0`` or
      ``kl_controller="adaptive"`` (β in the state, updated with ``kl_target``/``kl_horizon``
      by Ziegler et al.'s rule); needs ``inputs.ref_logp``.
    * ``regularizers`` / ``advantage_shapers``: sequences of ``name`` or ``(name, kwargs)``.
    * ``diagnostics``: compute the ``entropy/*``, ``cov/*`` and ``kl/*`` statistics.
    * ``axis_name``: mesh axis for global-batch statistics (``None`` on one device).
    """

    policy_loss: str = "ppo_clip"
    policy_kwargs: Any = ()
    loss_agg_mode: str = "token-mean"
    loss_scale_factor: float | None = None
    kl_coef: float = 0.0
    kl_kind: str = "low_var_kl"
    kl_agg_mode: str | None = None
    kl_controller: str = "fixed"
    kl_target: float = 0.1
    kl_horizon: float = 10000.0
    regularizers: Any = ()
    advantage_shapers: Any = ()
    diagnostics: bool = True
    cov_top_fraction: float = 2e-3
    axis_name: Hashable | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if not isinstance(self.policy_loss, str):
            raise ValueError(f"policy_loss must be a registered name, got {self.policy_loss!r}")
        set_("policy_kwargs", _freeze_kwargs(self.policy_kwargs, "policy_kwargs"))
        set_("regularizers", _freeze_components(self.regularizers, "regularizers"))
        set_("advantage_shapers", _freeze_components(self.advantage_shapers, "advantage_shapers"))
        if self.loss_agg_mode not in AGG_MODES:
            got = self.loss_agg_mode
            raise ValueError(f"loss_agg_mode must be one of {AGG_MODES}, got {got!r}")
        if self.kl_agg_mode is not None and self.kl_agg_mode not in AGG_MODES:
            raise ValueError(f"kl_agg_mode must be one of {AGG_MODES} or None")
        if self.kl_kind not in KL_KINDS:
            raise ValueError(f"kl_kind must be one of {KL_KINDS}, got {self.kl_kind!r}")
        if not self.kl_coef >= 0:
            raise ValueError(f"kl_coef must be >= 0, got {self.kl_coef}")
        if self.kl_controller not in _KL_CONTROLLERS:
            raise ValueError(f"kl_controller must be one of {_KL_CONTROLLERS}")
        if not (self.kl_target > 0 and self.kl_horizon > 0):
            raise ValueError("kl_target and kl_horizon must be > 0")
        if not 0 < self.cov_top_fraction <= 1:
            raise ValueError(f"cov_top_fraction must be in (0, 1], got {self.cov_top_fraction}")
        hash(self)

    @property
    def uses_kl(self) -> bool:
        return self.kl_coef > 0 or self.kl_controller == "adaptive"


def _merge(into, new, who, owners):
    for k, v in new.items():
        if k in owners:
            raise ValueError(f"metric {k!r} emitted by both {owners[k]} and {who}")
        owners[k] = who
        into[k] = v


def _check_needs(spec, inputs):
    for n in spec.needs:
        if n.startswith("extras."):
            if n[7:] not in (inputs.extras or {}):
                raise ValueError(f"{spec.kind} {spec.name!r} needs inputs.extras[{n[7:]!r}]")
        elif getattr(inputs, n) is None:
            raise ValueError(f"{spec.kind} {spec.name!r} needs inputs.{n}")


@dataclasses.dataclass(frozen=True)
class Objective:
    """A built objective (see :func:`build_objective`); hashable, holds only the config."""

    config: ObjectiveConfig

    def _parts(self):
        c = self.config
        pol = (get_component("policy_loss", c.policy_loss), dict(c.policy_kwargs))
        regs = [(get_component("regularizer", n), dict(kw)) for n, kw in c.regularizers]
        shp = [(get_component("advantage_shaper", n), dict(kw)) for n, kw in c.advantage_shapers]
        return pol, regs, shp

    def _slots(self):
        pol, regs, shp = self._parts()
        yield "policy", pol[0].name, pol
        for s in shp:
            yield "advantage_shapers", s[0].name, s
        for r in regs:
            yield "regularizers", r[0].name, r

    def init_state(self) -> dict:
        """Initial state pytree, holding only the components with state (``{}`` if none).

        Layout: ``{"policy": …, "kl": β, "regularizers": {name: …},
        "advantage_shapers": {name: …}}``.
        """
        state: dict = {}
        for group, name, (spec, kw) in self._slots():
            if spec.init_state is None:
                continue
            if group == "policy":
                state["policy"] = spec.init_state(kw)
            else:
                state.setdefault(group, {})[name] = spec.init_state(kw)
        if self.config.kl_controller == "adaptive":
            state["kl"] = jnp.asarray(self.config.kl_coef, jnp.float32)
        return state

    @staticmethod
    def _slot(state, group, name):
        if group == "policy":
            return state.get("policy")
        return state.get(group, {}).get(name)

    def loss(self, inputs: ObjectiveInputs, state=None, *, axis_name=_UNSET):
        """``(total_loss, metrics)``; pure and jit-able (config static, ``state`` a pytree)."""
        c = self.config
        ax = c.axis_name if axis_name is _UNSET else axis_name
        state = {} if state is None else state
        if jnp.ndim(inputs.logp) != 2:
            raise ValueError(f"inputs.logp must be [B, T], got shape {jnp.shape(inputs.logp)}")
        for f in ("old_logp", "advantages", "mask", "entropy", "old_entropy", "ref_logp"):
            v = getattr(inputs, f)
            if v is not None and jnp.shape(v) != jnp.shape(inputs.logp):
                raise ValueError(f"inputs.{f} must have logp's shape {jnp.shape(inputs.logp)}")
        (pspec, pkw), regs, shapers = self._parts()
        metrics, owners = {}, {}

        def ctx(group, name):
            return ComponentContext(
                c.loss_agg_mode, c.loss_scale_factor, ax, self._slot(state, group, name)
            )

        adv = jnp.asarray(inputs.advantages)
        for spec, kw in shapers:
            _check_needs(spec, inputs)
            adv, m = spec.fn(
                dataclasses.replace(inputs, advantages=adv),
                ctx("advantage_shapers", spec.name),
                **kw,
            )
            adv = jax.lax.stop_gradient(adv)
            _merge(metrics, m, f"advantage_shaper {spec.name!r}", owners)
        inputs = dataclasses.replace(inputs, advantages=adv)

        _check_needs(pspec, inputs)
        pg, m = pspec.fn(inputs, ctx("policy", pspec.name), **pkw)
        _merge(metrics, m, f"policy_loss {pspec.name!r}", owners)
        total = pg
        parts = {"loss/policy": pg}

        kl_key = f"kl/{_KL_CANON[c.kl_kind.rstrip('+')]}"
        if c.uses_kl and inputs.ref_logp is None:
            raise ValueError("kl_coef > 0 (or an adaptive KL controller) needs inputs.ref_logp")
        if inputs.ref_logp is not None and (c.uses_kl or c.diagnostics):
            kl_val, _ = kl_loss(
                inputs.logp,
                inputs.ref_logp,
                inputs.mask,
                kind=c.kl_kind,
                loss_agg_mode=c.kl_agg_mode or c.loss_agg_mode,
                loss_scale_factor=c.loss_scale_factor,
                axis_name=ax,
            )
            beta = state["kl"] if c.kl_controller == "adaptive" else c.kl_coef
            if c.uses_kl:
                total = total + beta * kl_val
                parts["loss/kl"] = beta * kl_val
                kl_m = {
                    "kl/coef": jnp.asarray(beta, kl_val.dtype),
                    "kl/seq_mean": _seq_kl(inputs, c, ax),
                    "kl/n_seq": _n_seq(inputs, ax),
                }
                _merge(metrics, kl_m, "kl", owners)
            _merge(metrics, {kl_key: kl_val}, "kl", owners)

        for spec, kw in regs:
            _check_needs(spec, inputs)
            r, m = spec.fn(inputs, ctx("regularizers", spec.name), **kw)
            _merge(metrics, m, f"regularizer {spec.name!r}", owners)
            total = total + r
            parts[f"loss/{spec.name}"] = r
        _merge(metrics, parts, "objective", owners)
        metrics["loss/total"] = total

        if c.diagnostics:
            diag = {}
            h = inputs.entropy if inputs.entropy is not None else inputs.old_entropy
            if h is not None:
                st = entropy_stats(jax.lax.stop_gradient(h), inputs.mask, axis_name=ax)
                diag.update({f"entropy/{k}": v for k, v in st.items()})
            if inputs.old_entropy is not None:
                diag["entropy/old_mean"] = masked_mean(
                    inputs.old_entropy, inputs.mask, axis_name=ax
                )
            diag.update(
                covariance_stats(
                    inputs.logp, adv, inputs.mask, top_fraction=c.cov_top_fraction, axis_name=ax
                )
            )
            for k, v in diag.items():
                metrics.setdefault(k, v)
        return total, jax.lax.stop_gradient(metrics)

    def update_state(self, state, metrics):
        """``(next_state, info)`` from this step's metrics (pure, jit-able)."""
        c = self.config
        new = jax.tree_util.tree_map(lambda x: x, dict(state))
        info = {}
        for group, name, (spec, kw) in self._slots():
            if spec.update_state is None:
                continue
            slot, i = spec.update_state(self._slot(state, group, name), metrics, kw)
            if group == "policy":
                new["policy"] = slot
            else:
                new[group] = {**new.get(group, {}), name: slot}
            info.update(i)
        if c.kl_controller == "adaptive":
            beta = jnp.asarray(state["kl"], jnp.float32)
            err = jnp.clip(metrics["kl/seq_mean"] / c.kl_target - 1.0, -0.2, 0.2)
            new["kl"] = beta * (1.0 + err * metrics["kl/n_seq"] / c.kl_horizon)
            info["kl/coef_next"] = new["kl"]
        return new, info


def _seq_kl(inputs, c, ax):
    """Controller input (verl): mean over sequences of the per-sequence masked-mean k of KL."""
    from entropylab.losses.kl import kl_penalty

    k = jax.lax.stop_gradient(kl_penalty(inputs.logp, inputs.ref_logp, kind=c.kl_kind))
    seq = masked_mean(k, inputs.mask, axis=-1)
    return masked_mean(seq, jnp.ones_like(seq, bool), axis_name=ax)


def _n_seq(inputs, ax):
    n = jnp.float32(jnp.shape(inputs.logp)[0])
    return n if ax is None else jax.lax.psum(n, ax)


def build_objective(config: ObjectiveConfig) -> Objective:
    """Resolve every name and validate every keyword argument of ``config``.

    Raises ``ValueError`` listing the registered names for an unknown name, and the accepted
    arguments for an unknown keyword argument (or a bad value where it can be checked early).
    """
    if not isinstance(config, ObjectiveConfig):
        raise ValueError(f"build_objective expects an ObjectiveConfig, got {type(config)}")
    obj = Objective(config)
    for _, _, (spec, kw) in obj._slots():
        spec.check_kwargs(kw)
    return obj
