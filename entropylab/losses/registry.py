"""Name registries of the config-selected objective: policy losses, regularizers, adv. shapers.

A component is a pure function registered under a name, with the keyword arguments it accepts
(validated when the objective is built), the :class:`~entropylab.losses.objective.ObjectiveInputs`
fields it needs, and optional state hooks (adaptive coefficients, anchors, controllers)::

    fn(inputs, ctx, **kwargs) -> (loss, metrics)           policy loss / regularizer
    fn(inputs, ctx, **kwargs) -> (advantages, metrics)     advantage shaper ([B, T], no gradient)

    init_state(kwargs) -> pytree                            (optional)
    update_state(slot, metrics, kwargs) -> (slot, info)     (optional; legacy, from metrics)
    stats(inputs, ctx, metrics, kwargs) -> pytree of SumCount   (optional; per mini-batch)
    zero_stats(kwargs) -> the same pytree, all zeros         (required with ``stats``)
    update_from_stats(slot, stats, kwargs) -> (slot, info)  (optional; once per train step)

A stateful component's controller input (a measured entropy, a KL, …) is a :class:`SumCount`
``(sum, count)``: a caller adds the statistics of several mini-batches elementwise and the
component's ``update_from_stats`` reads ``sum / count``, so the update sees the statistic of the
whole batch, however it was split. ``stats`` receives the metrics its ``fn`` just returned (so
nothing is computed twice). Statistics are global over ``ctx.axis_name``.

**Binding by name.** A function whose first two parameters are not ``(inputs, ctx)`` is a
library function: the objective calls it with its parameters bound by name, e.g. the
decorated ``ppo_clip_loss(logp, old_logp, advantages, mask, *, clip_ratio_low, …,
token_weights=None, loss_agg_mode, loss_scale_factor, axis_name)``:

* a parameter named like an input field (:data:`BOUND_FIELDS`: ``logp``, ``old_logp``,
  ``advantages``, ``mask``, ``entropy``, ``ref_logp``, ``key``, ``token_weights``, …) gets that
  field of the inputs (a required one the inputs lack → ``ValueError`` naming it; an optional
  one is left at its default when the field is ``None``); one listed in ``extras=`` gets
  ``inputs.extras[name]``;
* ``loss_agg_mode``, ``loss_scale_factor``, ``axis_name`` come from the objective;
* every other keyword-only parameter is a hyper-parameter (set in the config);
* with ``entropy_source="current"|"old"`` the ``entropy`` parameter reads ``inputs.entropy`` or
  ``inputs.old_entropy`` (the given default; the config may override it with an
  ``entropy_source`` argument).

So a method is registered where it is defined (tunix-style), under one name that is unique
across the three kinds.

``ctx`` (:class:`ComponentContext`) carries the objective's ``loss_agg_mode``,
``loss_scale_factor``, ``axis_name`` and the component's own state slot. The built-in
components are registered in :mod:`entropylab.losses.components`; users register their own with
the decorators below. Registering a name twice raises ``ValueError``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

__all__ = [
    "SumCount",
    "ComponentContext",
    "ComponentSpec",
    "KINDS",
    "get_component",
    "register_advantage_shaper",
    "register_policy_loss",
    "register_regularizer",
    "registered_names",
]

KINDS = ("policy_loss", "regularizer", "advantage_shaper")

# Inputs a component may declare in ``needs`` (``extras.<name>`` for method-specific inputs).
INPUT_FIELDS = (
    "entropy",
    "old_entropy",
    "ref_logp",
    "logits",
    "key",
    "step",
    "group_ids",
    "token_weights",
)
# ObjectiveInputs fields a bound library function's parameters may be named after.
BOUND_FIELDS = ("logp", "old_logp", "advantages", "mask", *INPUT_FIELDS)
_CTX_PARAMS = ("loss_agg_mode", "loss_scale_factor", "axis_name")
_SOURCES = {"current": "entropy", "old": "old_entropy"}


class SumCount(NamedTuple):
    """A typed additive statistic: ``sum`` and ``count`` (float32 arrays of equal shape).

    Two mini-batches' statistics combine by elementwise addition (``jax.tree.map(jnp.add, a,
    b)``); :meth:`mean` is ``sum / count`` (0 where ``count == 0``).
    """

    sum: Any
    count: Any

    def mean(self):
        import jax.numpy as jnp

        s, c = jnp.asarray(self.sum), jnp.asarray(self.count)
        return jnp.where(c > 0, s / jnp.where(c > 0, c, 1), jnp.zeros_like(s))

    @classmethod
    def from_mean(cls, mean, count) -> SumCount:
        """``(mean·count, count)`` as float32 (``count`` 0 gives ``(0, 0)``)."""
        import jax.numpy as jnp

        c = jnp.asarray(count, jnp.float32)
        m = jnp.asarray(mean, jnp.float32)
        return cls(jnp.where(c > 0, m * c, 0.0), c)

    @classmethod
    def zeros(cls, shape=()) -> SumCount:
        import jax.numpy as jnp

        return cls(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))


class ComponentContext(NamedTuple):
    """What the objective passes to every component besides the inputs and its kwargs."""

    loss_agg_mode: str
    loss_scale_factor: float | None
    axis_name: Any
    state: Any  # this component's state slot (None when it has no state)

    @property
    def agg_kw(self) -> dict:
        """``loss_agg_mode``/``loss_scale_factor``/``axis_name`` as keyword arguments."""
        return dict(
            loss_agg_mode=self.loss_agg_mode,
            loss_scale_factor=self.loss_scale_factor,
            axis_name=self.axis_name,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComponentSpec:
    """A registered component (see the module docstring)."""

    name: str
    kind: str
    fn: Callable
    accepts: frozenset | None  # allowed kwargs; None = anything (fn takes **kwargs)
    required: frozenset = frozenset()
    needs: tuple | Callable = ()  # or needs(kwargs) -> tuple, resolved per configuration
    init_state: Callable | None = None
    update_state: Callable | None = None
    validate: Callable | None = None  # validate(kwargs) at build time; raises ValueError
    stats: Callable | None = None
    zero_stats: Callable | None = None
    update_from_stats: Callable | None = None

    def needs_for(self, kwargs: dict) -> tuple:
        """The inputs this component reads with ``kwargs``. An entry ``"a|b"`` means either
        (the first is the one a trainer normally supplies)."""
        return tuple(self.needs(dict(kwargs)) if callable(self.needs) else self.needs)

    def check_kwargs(self, kwargs: dict) -> None:
        """Raise ``ValueError`` for unknown or missing keyword arguments (and bad values)."""
        if self.accepts is not None:
            bad = sorted(set(kwargs) - self.accepts)
            if bad:
                raise ValueError(
                    f"{self.kind} {self.name!r}: unknown argument(s) {bad}; "
                    f"accepted: {sorted(self.accepts)}"
                )
        missing = sorted(self.required - set(kwargs))
        if missing:
            raise ValueError(f"{self.kind} {self.name!r}: missing required argument(s) {missing}")
        if self.validate is not None:
            self.validate(dict(kwargs))


_REGISTRY: dict[str, dict[str, ComponentSpec]] = {k: {} for k in KINDS}


def kwargs_of(fn: Callable, exclude: Iterable[str] = ()) -> tuple[frozenset, frozenset]:
    """Keyword-argument names ``fn`` accepts beyond its leading positional ones, and the required.

    Used to derive a component's ``accepts``/``required`` from the library function it wraps.
    """
    exclude = set(exclude)
    accepts, required = set(), set()
    for p in inspect.signature(fn).parameters.values():
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in exclude:
            accepts.add(p.name)
            if p.default is inspect.Parameter.empty:
                required.add(p.name)
    return frozenset(accepts), frozenset(required)


def _check_need_names(kind, name, needs):
    alts = [a for n in needs for a in n.split("|")]
    bad = [n for n in alts if n not in INPUT_FIELDS and not n.startswith("extras.")]
    if bad:
        raise ValueError(f"{kind} {name!r}: needs {bad} not in {INPUT_FIELDS} or 'extras.<name>'")


def _is_context_protocol(fn) -> bool:
    params = list(inspect.signature(fn).parameters)
    return params[:2] == ["inputs", "ctx"]


def _bind(kind, name, fn, extras, entropy_source):
    """Wrap a library function into ``adapter(inputs, ctx, **hparams)`` (binding by name)."""
    extras = tuple(extras)
    if entropy_source is not None and entropy_source not in _SOURCES:
        raise ValueError(f"entropy_source must be one of {tuple(_SOURCES)}, got {entropy_source!r}")
    data, ctx_params, hyper, required_hyper = [], [], set(), set()
    var_kw = False
    for p in inspect.signature(fn).parameters.values():
        required = p.default is inspect.Parameter.empty
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            var_kw = True
        elif p.kind is inspect.Parameter.VAR_POSITIONAL:
            raise ValueError(f"{kind} {name!r}: *args cannot be bound by name")
        elif p.name in BOUND_FIELDS or p.name in extras:
            positional = p.kind is not inspect.Parameter.KEYWORD_ONLY
            data.append((p.name, required, positional))
        elif p.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise ValueError(
                f"{kind} {name!r}: positional parameter {p.name!r} is not an input field "
                f"({BOUND_FIELDS}) or a declared extra"
            )
        elif p.name in _CTX_PARAMS:
            ctx_params.append(p.name)
        else:
            hyper.add(p.name)
            if required:
                required_hyper.add(p.name)
    has_entropy = any(n == "entropy" for n, _, _ in data)
    if entropy_source is not None and not has_entropy:
        raise ValueError(f"{kind} {name!r}: entropy_source given but no `entropy` parameter")

    def field_of(pname, kw):
        if pname in extras:
            return f"extras.{pname}"
        if pname == "entropy" and entropy_source is not None:
            return _SOURCES[kw.get("entropy_source", entropy_source)]
        return pname

    def adapter(inputs, ctx, **kw):
        args = {}
        for pname, required, positional in data:
            field = field_of(pname, kw)
            if field.startswith("extras."):
                v = (inputs.extras or {}).get(pname)
            else:
                v = getattr(inputs, field, None)
            if v is None and required and not positional:
                what = f"inputs.extras[{pname!r}]" if pname in extras else f"inputs.{field}"
                raise ValueError(f"{kind} {name!r} needs {what}")
            if v is not None or positional:
                args[pname] = v
        for c in ctx_params:
            args[c] = getattr(ctx, c)
        hp = {k: v for k, v in kw.items() if k != "entropy_source"}
        return fn(**args, **hp)

    def needs(kw):
        base = ("logp", "old_logp", "advantages", "mask")
        return tuple(field_of(p, kw) for p, required, _ in data if required and p not in base)

    accepts = (
        None if var_kw else frozenset(hyper | ({"entropy_source"} if entropy_source else set()))
    )

    def validate_source(kw):
        if "entropy_source" in kw and kw["entropy_source"] not in _SOURCES:
            got = kw["entropy_source"]
            raise ValueError(f"entropy_source must be one of {tuple(_SOURCES)}, got {got!r}")

    adapter.__name__ = f"bound_{getattr(fn, '__name__', name)}"
    adapter.__doc__ = fn.__doc__
    adapter.__wrapped__ = fn
    return adapter, accepts, frozenset(required_hyper), needs, validate_source


def _register(
    kind,
    name,
    fn,
    *,
    accepts,
    needs,
    init_state,
    update_state,
    validate,
    required,
    stats=None,
    zero_stats=None,
    update_from_stats=None,
    extras=(),
    entropy_source=None,
):
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    for k, reg in _REGISTRY.items():
        if name in reg:
            where = "" if k == kind else f" (as a {k}; names are unique across kinds)"
            raise ValueError(f"{kind} {name!r} is already registered{where}")
    target = fn
    if not _is_context_protocol(fn):
        fn, acc_b, req_b, needs_b, val_b = _bind(kind, name, fn, extras, entropy_source)
        accepts = acc_b if accepts is None else accepts
        required = req_b if required is None else required
        needs = needs_b if not needs else needs
        if validate is None:
            validate = val_b
        else:
            user_validate = validate

            def validate(kw, _a=val_b, _b=user_validate):
                _a(kw)
                _b(kw)
    elif extras or entropy_source is not None:
        raise ValueError(f"{kind} {name!r}: extras/entropy_source are for functions bound by name")
    if not callable(needs):
        needs = tuple(needs)
        _check_need_names(kind, name, needs)
    if (stats is None) != (zero_stats is None):
        raise ValueError(f"{kind} {name!r}: `stats` and `zero_stats` go together")
    if update_from_stats is not None and init_state is None:
        raise ValueError(f"{kind} {name!r}: `update_from_stats` needs `init_state`")
    if accepts is None and target is fn:
        params = list(inspect.signature(fn).parameters.values())
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            acc, req = None, frozenset()
        else:
            acc, req = kwargs_of(fn)
    else:
        acc, req = (None if accepts is None else frozenset(accepts)), frozenset()
    if required is not None:
        req = frozenset(required)
    _REGISTRY[kind][name] = ComponentSpec(
        name=name,
        kind=kind,
        fn=fn,
        accepts=acc,
        required=req,
        needs=needs,
        init_state=init_state,
        update_state=update_state,
        validate=validate,
        stats=stats,
        zero_stats=zero_stats,
        update_from_stats=update_from_stats,
    )
    return target


def _decorator(kind):
    def register(
        name: str,
        fn: Callable | None = None,
        *,
        accepts: Iterable[str] | None = None,
        required: Iterable[str] | None = None,
        needs: Iterable[str] | Callable = (),
        init_state: Callable | None = None,
        update_state: Callable | None = None,
        validate: Callable | None = None,
        stats: Callable | None = None,
        zero_stats: Callable | None = None,
        update_from_stats: Callable | None = None,
        extras: Iterable[str] = (),
        entropy_source: str | None = None,
    ):
        kw = dict(
            extras=tuple(extras),
            entropy_source=entropy_source,
            accepts=accepts,
            required=required,
            needs=needs if callable(needs) else tuple(needs),
            init_state=init_state,
            update_state=update_state,
            validate=validate,
            stats=stats,
            zero_stats=zero_stats,
            update_from_stats=update_from_stats,
        )
        if fn is not None:
            return _register(kind, name, fn, **kw)
        return lambda f: _register(kind, name, f, **kw)

    register.__name__ = f"register_{kind}"
    register.__doc__ = (
        f"Register a {kind.replace('_', ' ')} under ``name`` (unique across kinds): either\n"
        "``fn(inputs, ctx, **kwargs)`` or a library function bound by name (module docstring;\n"
        "``extras=`` names parameters read from ``inputs.extras``, ``entropy_source=`` makes\n"
        "``entropy`` selectable). Returns ``fn`` unchanged, so it works as a decorator.\n\n"
        "Use as ``@register_...(name, needs=(...))`` or ``register_...(name, fn)``. ``accepts``\n"
        "lists the keyword arguments (default: ``fn``'s keyword-only parameters, or anything if\n"
        "it takes ``**kwargs``); ``needs`` the ``ObjectiveInputs`` fields it reads\n"
        "(``'extras.<name>'`` for method-specific inputs). Raises ``ValueError`` if ``name`` is\n"
        "taken."
    )
    return register


register_policy_loss = _decorator("policy_loss")
register_regularizer = _decorator("regularizer")
register_advantage_shaper = _decorator("advantage_shaper")


def get_component(kind: str, name: str) -> ComponentSpec:
    """The spec registered under ``name``; ``ValueError`` listing the valid names otherwise."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    try:
        return _REGISTRY[kind][name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown {kind} {name!r}; registered: {sorted(_REGISTRY[kind])}"
        ) from None


def registered_names() -> dict[str, tuple[str, ...]]:
    """``{kind: sorted names}`` for the three registries."""
    return {k: tuple(sorted(v)) for k, v in _REGISTRY.items()}
