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

    # per step, over any mini-batch split (see Objective):
    stats = objective.zero_stats()
    loss, metrics, s = objective.loss_and_stats(mb, state)  # per mini-batch (differentiate loss)
    stats = objective.add_stats(stats, s)
    state, info = objective.update_state_from_stats(state, stats)  # once, after the last step
    diag = objective.diagnostics(batch)                     # once, on the whole batch

``objective.needs`` / ``objective.needs_logits`` say which inputs to compute.
(``objective.update_state(state, metrics)`` is the older per-metrics form, still supported.)

Components are bound by name (:mod:`entropylab.losses.registry`): a registered library function
gets ``inputs.<field>`` for each parameter named after a field (``entropy``, ``ref_logp``,
``token_weights``, …), ``inputs.extras[name]`` for its declared extras, and the objective's
``loss_agg_mode``/``loss_scale_factor``/``axis_name``; the config's kwargs are the rest.
``inputs.old_logp=None`` means on-policy, ``[B]`` advantages are broadcast over the tokens.

Metrics are namespaced: ``pg/*`` (policy loss; always ``pg/loss``, ``pg/clipfrac``,
``pg/clipfrac_lower``, ``pg/ppo_kl``), ``kl/*``, ``entropy/*``, ``cov/*``, ``<method>/*``,
``loss/policy``, ``loss/kl``, ``loss/<regularizer>``, ``loss/total``. All are stop-gradient.
Diagnostics (unless ``loss(..., diagnostics=False)`` or ``config.diagnostics=False``):
``entropy/{mean,p50,p80,p95,frac_above}`` (of ``inputs.entropy``, else of
``inputs.old_entropy``, when one is given), ``cov/*`` of :func:`covariance_stats` on the shaped
advantages, ``kl/<k1|k2|k3|abs>`` whenever ``ref_logp`` is given. A component's own metric wins
over a diagnostic of the same name; two components emitting one key is an error.

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
from entropylab.losses.covariance import covariance_stats, predicted_entropy_change
from entropylab.losses.kl import (
    KL_KINDS,
    AdaptiveKLController,
    KLControllerState,
    kl_controller_update,
    kl_loss,
)
from entropylab.losses.registry import ComponentContext, SumCount, get_component
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

    Shapes: ``logp, old_logp, mask, entropy, old_entropy, ref_logp`` ``[B, T]``;
    ``advantages`` and ``token_weights`` ``[B, T]`` or per-sequence ``[B]``; ``logits``
    ``[B, T, V]``; ``group_ids`` ``[B]``; ``key`` a PRNG key (replicated); ``step`` an int
    scalar. ``old_logp=None`` means on-policy (``stop_gradient(logp)``); ``token_weights``
    (optional) multiply the policy loss's per-token terms before aggregation (e.g. truncated
    importance-sampling weights). ``logp``, ``entropy`` and ``logits`` carry the gradient; the
    rest is data.
    ``extras`` is a dict of method-specific arrays (e.g. ``temp_logp``/``temp_rewards``/
    ``temp_mask`` for AEPO, ``planning_mask`` for HICRA, ``rewards`` ``[B]`` for HAPO's group
    advantages, ``difficulty`` ``[B]`` for ARES' KL, ``entropy_p``/``old_entropy_p`` for SIREN).
    """

    logp: Any
    old_logp: Any = None
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
    token_weights: Any = None


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


def _present(inputs, name):
    if name.startswith("extras."):
        return name[7:] in (inputs.extras or {})
    return getattr(inputs, name) is not None


def _check_needs(spec, kw, inputs):
    for n in spec.needs_for(kw):
        alts = n.split("|")
        if not any(_present(inputs, a) for a in alts):
            what = " or ".join(
                f"inputs.extras[{a[7:]!r}]" if a.startswith("extras.") else f"inputs.{a}"
                for a in alts
            )
            raise ValueError(f"{spec.kind} {spec.name!r} needs {what}")


_BASE_NEEDS = frozenset({"logp", "old_logp", "advantages", "mask"})


@dataclasses.dataclass(frozen=True)
class Objective:
    """A built objective (see :func:`build_objective`); hashable, holds only the config.

    Per training step (the RL engine's loop)::

        stats = obj.zero_stats()                                   # scan carry
        for mb in minibatches:                                     # any split, any epochs
            loss, metrics, s = obj.loss_and_stats(mb, state)       # differentiate ``loss``
            stats = jax.tree.map(jnp.add, stats, s)                # or Objective.add_stats
        state, info = obj.update_state_from_stats(state, stats)    # pure, jit-able
        diag = obj.diagnostics(full_batch)                         # once, on the whole batch

    ``stats`` is a pytree of :class:`~entropylab.losses.registry.SumCount` ``(sum, count)``
    pairs, one per stateful part: ``{"kl": …}`` (adaptive KL controller: Σ of per-sequence mean
    KL, number of sequences), ``{"regularizers": {"adaptive_entropy": {"entropy": (Σ H, tokens)},
    "siren": {"anchor": (Σ_rows H_sel, rows)}, "ares_kl": {"kl": (Σ_responses KL [3], responses
    [3])}}}``.
    Added over mini-batches it holds the statistic of the whole batch, and each controller
    then makes **one** update from ``sum / count``: the adaptive entropy coefficient moves on the
    token-mean entropy of all mini-batches, the adaptive KL β on the mean per-sequence KL over
    all sequences with ``n_steps`` = their number (verl's whole-batch ``current_kl``), ARES'
    per-bucket β on each bucket's mean of per-response token-mean KL (one controller call per
    step; the release calls it per micro-batch), SIREN's anchor on the row-weighted mean of the
    first step's candidates. A part with ``count == 0`` (nothing added) leaves its state
    unchanged. The statistics are global over ``axis_name`` (identical on every device).
    """

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

    # ------------------------------------------------------------------------ introspection
    @property
    def needs(self) -> frozenset:
        """Inputs the loss reads: ``ObjectiveInputs`` field names and ``"extras.<name>"``.

        Always ``logp, old_logp, advantages, mask``; ``ref_logp`` when a KL term is on; each
        component's own (with its configured ``entropy_source`` etc.). Where a component
        accepts either of two inputs (SIREN: ``logits`` or ``extras.entropy_p``; HICRA: the
        entropy or ``extras.planning_mask``) the one a trainer normally supplies (the first)
        is listed. Diagnostics read ``entropy``/``old_entropy``/``ref_logp`` only if given.
        """
        out = set(_BASE_NEEDS)
        if self.config.uses_kl:
            out.add("ref_logp")
        for _, _, (spec, kw) in self._slots():
            out.update(n.split("|")[0] for n in spec.needs_for(kw))
        return frozenset(out)

    @property
    def needs_logits(self) -> bool:
        """Whether the loss reads ``inputs.logits`` ``[B, T, V]`` (e.g. SIREN's top-p entropy)."""
        return "logits" in self.needs

    # ------------------------------------------------------------------------ state
    def init_state(self) -> dict:
        """Initial state pytree, holding only the components with state (``{}`` if none).

        Layout: ``{"policy": …, "kl": β, "regularizers": {name: …},
        "advantage_shapers": {name: …}}``.
        """
        state = self._per_slot("init_state")
        if self.config.kl_controller == "adaptive":
            state["kl"] = jnp.asarray(self.config.kl_coef, jnp.float32)
        return state

    def _per_slot(self, hook: str) -> dict:
        """``spec.<hook>(kwargs)`` of every component that has the hook, in the state layout
        (``{"policy": …, group: {name: …}}``)."""
        out: dict = {}
        for group, name, (spec, kw) in self._slots():
            fn = getattr(spec, hook)
            if fn is None:
                continue
            if group == "policy":
                out["policy"] = fn(kw)
            else:
                out.setdefault(group, {})[name] = fn(kw)
        return out

    @staticmethod
    def _slot(state, group, name):
        if group == "policy":
            return state.get("policy")
        return state.get(group, {}).get(name)

    def zero_stats(self) -> dict:
        """The all-zero statistics pytree (same structure, shapes and dtypes as the ``stats``
        of :meth:`loss_and_stats`); use it as the accumulator / ``lax.scan`` carry."""
        out = self._per_slot("zero_stats")
        if self.config.kl_controller == "adaptive":
            out["kl"] = SumCount.zeros()
        return out

    @staticmethod
    def add_stats(a, b):
        """Elementwise sum of two statistics pytrees (what accumulating mini-batches means)."""
        return jax.tree.map(jnp.add, a, b)

    # ------------------------------------------------------------------------ loss
    def loss(self, inputs: ObjectiveInputs, state=None, *, axis_name=_UNSET, diagnostics=True):
        """``(total_loss, metrics)``; pure and jit-able (config static, ``state`` a pytree).

        ``diagnostics=False`` skips the ``entropy/*``, ``cov/*`` and diagnostic ``kl/<k>``
        statistics (take them once per step on the whole batch with :meth:`diagnostics`);
        ``config.diagnostics=False`` skips them too.
        """
        total, metrics, _ = self._run(inputs, state, axis_name, diagnostics, False)
        return total, metrics

    def loss_and_stats(
        self, inputs: ObjectiveInputs, state=None, *, axis_name=_UNSET, diagnostics=False
    ):
        """``(total_loss, metrics, stats)``: :meth:`loss` plus this mini-batch's controller
        statistics (see the class docstring; the structure is :meth:`zero_stats`'s). The
        diagnostics are off by default here (they belong to :meth:`diagnostics`)."""
        return self._run(inputs, state, axis_name, diagnostics, True)

    def _run(self, inputs, state, axis_name, diagnostics, with_stats):
        c = self.config
        ax = c.axis_name if axis_name is _UNSET else axis_name
        state = {} if state is None else state
        inputs = self._check_shapes(inputs)
        (pspec, pkw), regs, shapers = self._parts()
        metrics, owners = {}, {}

        def ctx(group, name):
            return ComponentContext(
                c.loss_agg_mode, c.loss_scale_factor, ax, self._slot(state, group, name)
            )

        inputs, m = self._shape(inputs, state, ax)
        _merge(metrics, m, "advantage_shapers", owners)
        adv = inputs.advantages

        _check_needs(pspec, pkw, inputs)
        pg, m = pspec.fn(inputs, ctx("policy", pspec.name), **pkw)
        _merge(metrics, m, f"policy_loss {pspec.name!r}", owners)
        total = pg
        parts = {"loss/policy": pg}
        comp_metrics = {("policy", pspec.name): m}

        kl_key = f"kl/{_KL_CANON[c.kl_kind.rstrip('+')]}"
        if c.uses_kl and inputs.ref_logp is None:
            raise ValueError("kl_coef > 0 (or an adaptive KL controller) needs inputs.ref_logp")
        want_diag = bool(diagnostics) and c.diagnostics
        if inputs.ref_logp is not None and (c.uses_kl or want_diag):
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
            _check_needs(spec, kw, inputs)
            r, m = spec.fn(inputs, ctx("regularizers", spec.name), **kw)
            _merge(metrics, m, f"regularizer {spec.name!r}", owners)
            comp_metrics[("regularizers", spec.name)] = m
            total = total + r
            parts[f"loss/{spec.name}"] = r
        _merge(metrics, parts, "objective", owners)
        metrics["loss/total"] = total

        if want_diag:
            for k, v in self._diag(inputs, adv, ax).items():
                metrics.setdefault(k, v)
        metrics = jax.lax.stop_gradient(metrics)
        if not with_stats:
            return total, metrics, None

        stats: dict = {}
        for group, name, (spec, kw) in self._slots():
            if spec.stats is None:
                continue
            sm = jax.lax.stop_gradient(comp_metrics.get((group, name), {}))
            st = spec.stats(inputs, ctx(group, name), sm, kw)
            if group == "policy":
                stats["policy"] = st
            else:
                stats.setdefault(group, {})[name] = st
        if c.kl_controller == "adaptive":
            stats["kl"] = SumCount.from_mean(metrics["kl/seq_mean"], metrics["kl/n_seq"])
        stats = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), stats)
        return total, metrics, stats

    @staticmethod
    def _check_shapes(inputs):
        """Shape checks; ``[B]`` advantages are broadcast to ``[B, T]`` (returns the inputs)."""
        shape = jnp.shape(inputs.logp)
        if len(shape) != 2:
            raise ValueError(f"inputs.logp must be [B, T], got shape {shape}")
        for f in ("old_logp", "mask", "entropy", "old_entropy", "ref_logp"):
            v = getattr(inputs, f)
            if v is not None and jnp.shape(v) != shape:
                raise ValueError(f"inputs.{f} must have logp's shape {shape}, got {jnp.shape(v)}")
        if inputs.mask is None:
            raise ValueError("inputs.mask is required ([B, T], nonzero = valid token)")
        out = {}
        for f in ("advantages", "token_weights"):
            v = getattr(inputs, f)
            if v is None:
                if f == "advantages":
                    raise ValueError("inputs.advantages is required ([B] or [B, T])")
                continue
            if jnp.shape(v) in ((shape[0],), (shape[0], 1)):
                out[f] = jnp.broadcast_to(jnp.reshape(v, (shape[0], 1)), shape)
            elif jnp.shape(v) != shape:
                raise ValueError(
                    f"inputs.{f} must be [B] = ({shape[0]},) or [B, T] = {shape}, "
                    f"got {jnp.shape(v)}"
                )
        return dataclasses.replace(inputs, **out) if out else inputs

    def _shape(self, inputs, state, ax):
        """Apply the advantage shapers in order; ``(inputs with shaped advantages, metrics)``."""
        c = self.config
        _, _, shapers = self._parts()
        metrics, owners = {}, {}
        adv = jnp.asarray(inputs.advantages)
        for spec, kw in shapers:
            _check_needs(spec, kw, inputs)
            sctx = ComponentContext(
                c.loss_agg_mode,
                c.loss_scale_factor,
                ax,
                self._slot(state, "advantage_shapers", spec.name),
            )
            adv, m = spec.fn(dataclasses.replace(inputs, advantages=adv), sctx, **kw)
            adv = jax.lax.stop_gradient(adv)
            _merge(metrics, m, f"advantage_shaper {spec.name!r}", owners)
        return dataclasses.replace(inputs, advantages=adv), metrics

    def _diag(self, inputs, adv, ax):
        c = self.config
        diag = {}
        h = inputs.entropy if inputs.entropy is not None else inputs.old_entropy
        if h is not None:
            st = entropy_stats(jax.lax.stop_gradient(h), inputs.mask, axis_name=ax)
            diag.update({f"entropy/{k}": v for k, v in st.items()})
        if inputs.old_entropy is not None:
            diag["entropy/old_mean"] = masked_mean(inputs.old_entropy, inputs.mask, axis_name=ax)
        diag.update(
            covariance_stats(
                inputs.logp, adv, inputs.mask, top_fraction=c.cov_top_fraction, axis_name=ax
            )
        )
        return diag

    def diagnostics(
        self, inputs: ObjectiveInputs, state=None, *, axis_name=None, learning_rate=1.0
    ) -> dict:
        """Once-per-step diagnostics of a (whole) batch, all stop-gradient; pure, jit-able.

        ``entropy/{mean,p50,p80,p95,frac_above}`` of ``inputs.entropy`` (else
        ``inputs.old_entropy``) and ``entropy/old_mean`` when given; ``cov/*`` of
        :func:`covariance_stats` on the shaped advantages (the advantage shapers are applied,
        with ``state``'s slots); ``cov/predicted_dH`` = :func:`predicted_entropy_change` with
        ``learning_rate`` (natural-PG form, ``−η·Cov(log π, A)``); ``kl/<k>`` (the configured
        estimator, ``loss_agg_mode``-aggregated) when ``inputs.ref_logp`` is given.
        Independent of ``config.diagnostics``. ``axis_name``: ``None`` (one device) by default.
        """
        c = self.config
        state = {} if state is None else state
        inputs = self._check_shapes(inputs)
        inputs, _ = self._shape(inputs, state, axis_name)
        out = self._diag(inputs, inputs.advantages, axis_name)
        out["cov/predicted_dH"] = predicted_entropy_change(
            inputs.logp,
            inputs.advantages,
            inputs.mask,
            learning_rate=learning_rate,
            axis_name=axis_name,
        )
        if inputs.ref_logp is not None:
            kl_key = f"kl/{_KL_CANON[c.kl_kind.rstrip('+')]}"
            out[kl_key] = kl_loss(
                inputs.logp,
                inputs.ref_logp,
                inputs.mask,
                kind=c.kl_kind,
                loss_agg_mode=c.kl_agg_mode or c.loss_agg_mode,
                loss_scale_factor=c.loss_scale_factor,
                axis_name=axis_name,
            )[0]
        return jax.lax.stop_gradient(out)

    # ------------------------------------------------------------------------ updates
    def _kl_controller(self):
        c = self.config
        return AdaptiveKLController(
            init_kl_coef=c.kl_coef, target_kl=c.kl_target, horizon=c.kl_horizon
        )

    def _kl_update(self, beta, current_kl, n_seq):
        st = kl_controller_update(
            self._kl_controller(),
            KLControllerState(value=jnp.asarray(beta, jnp.float32)),
            current_kl,
            n_seq,
        )
        return st.value

    def update_state_from_stats(self, state, stats):
        """``(next_state, info)`` from the statistics accumulated over this step's mini-batches.

        Pure and jit-able (no Python control flow on values). Each stateful part makes one
        update from its ``sum / count`` (see the class docstring); the adaptive KL coefficient
        uses :func:`~entropylab.losses.kl.kl_controller_update` with ``current_kl`` = the mean
        per-sequence KL and ``n_steps`` = the number of sequences. ``info`` holds the next
        values (``kl/coef_next``, ``entropy/adaptive_coef_next``, ``entropy/adaptive_measured``,
        ``entropy/siren_anchor``, ``ares/beta_next_<bucket>``) and ``kl/current`` (the KL the
        controller saw).
        """
        new = dict(state)
        info = {}
        for group, name, (spec, kw) in self._slots():
            if spec.init_state is None:
                continue
            if spec.update_from_stats is None:
                if spec.update_state is None:
                    continue
                raise ValueError(
                    f"{spec.kind} {name!r} has state but no update_from_stats hook; "
                    "use update_state(state, metrics) for it"
                )
            sub = stats["policy"] if group == "policy" else stats[group][name]
            slot, i = spec.update_from_stats(self._slot(state, group, name), sub, kw)
            if group == "policy":
                new["policy"] = slot
            else:
                new[group] = {**new.get(group, {}), name: slot}
            info.update(i)
        if self.config.kl_controller == "adaptive":
            st = stats["kl"]
            new["kl"] = self._kl_update(state["kl"], st.mean(), st.count)
            info["kl/coef_next"] = new["kl"]
            info["kl/current"] = st.mean()
        return new, info

    def update_state(self, state, metrics):
        """``(next_state, info)`` from one step's metrics (legacy; pure, jit-able).

        Kept for callers that average the metrics of their mini-batches; prefer
        :meth:`loss_and_stats` + :meth:`update_state_from_stats`, which weight every token and
        sequence of the step equally.
        """
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
        if self.config.kl_controller == "adaptive":
            new["kl"] = self._kl_update(state["kl"], metrics["kl/seq_mean"], metrics["kl/n_seq"])
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
        if spec.stats is not None and spec.init_state is None:
            raise ValueError(f"{spec.kind} {spec.name!r}: `stats` without `init_state`")
    return obj
