"""Name registries of the config-selected objective: policy losses, regularizers, adv. shapers.

A component is a pure function registered under a name, with the keyword arguments it accepts
(validated when the objective is built), the :class:`~entropylab.losses.objective.ObjectiveInputs`
fields it needs, and optional state hooks (adaptive coefficients, anchors, controllers)::

    fn(inputs, ctx, **kwargs) -> (loss, metrics)           policy loss / regularizer
    fn(inputs, ctx, **kwargs) -> (advantages, metrics)     advantage shaper ([B, T], no gradient)

    init_state(kwargs) -> pytree                            (optional)
    update_state(slot, metrics, kwargs) -> (slot, info)     (optional; after each train step)

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
)


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
    needs: tuple = ()
    init_state: Callable | None = None
    update_state: Callable | None = None
    validate: Callable | None = None  # validate(kwargs) at build time; raises ValueError

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


def _register(kind, name, fn, *, accepts, needs, init_state, update_state, validate, required):
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} name must be a non-empty string, got {name!r}")
    if name in _REGISTRY[kind]:
        raise ValueError(f"{kind} {name!r} is already registered")
    bad = [n for n in needs if n not in INPUT_FIELDS and not n.startswith("extras.")]
    if bad:
        raise ValueError(f"{kind} {name!r}: needs {bad} not in {INPUT_FIELDS} or 'extras.<name>'")
    if accepts is None:
        params = list(inspect.signature(fn).parameters.values())
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            acc, req = None, frozenset()
        else:
            acc, req = kwargs_of(fn)
    else:
        acc, req = frozenset(accepts), frozenset()
    if required is not None:
        req = frozenset(required)
    _REGISTRY[kind][name] = ComponentSpec(
        name=name,
        kind=kind,
        fn=fn,
        accepts=acc,
        required=req,
        needs=tuple(needs),
        init_state=init_state,
        update_state=update_state,
        validate=validate,
    )
    return fn


def _decorator(kind):
    def register(
        name: str,
        fn: Callable | None = None,
        *,
        accepts: Iterable[str] | None = None,
        required: Iterable[str] | None = None,
        needs: Iterable[str] = (),
        init_state: Callable | None = None,
        update_state: Callable | None = None,
        validate: Callable | None = None,
    ):
        kw = dict(
            accepts=accepts,
            required=required,
            needs=tuple(needs),
            init_state=init_state,
            update_state=update_state,
            validate=validate,
        )
        if fn is not None:
            return _register(kind, name, fn, **kw)
        return lambda f: _register(kind, name, f, **kw)

    register.__name__ = f"register_{kind}"
    register.__doc__ = (
        f"Register a {kind.replace('_', ' ')} ``fn(inputs, ctx, **kwargs)`` under ``name``.\n\n"
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
