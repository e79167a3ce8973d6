"""Register entropylab policy losses as tunix policy losses (google/tunix, checked on 0.1.7).

::

    from entropylab.integrations import tunix as el_tunix
    from entropylab.losses import forking_token_loss

    el_tunix.register("entropylab_forking", forking_token_loss, top_rho=0.2)
    config = GRPOConfig(policy_loss_fn="entropylab_forking", ...)   # tunix's GRPOLearner

``register(name, loss, *, use_tunix_clip=False, use_tunix_agg=False, **hparams)`` takes a
registered entropylab policy loss (``ppo_clip_loss``, ``clip_cov_loss``, ``kl_cov_loss``,
``forking_token_loss``, … — anything decorated with ``register_policy_loss``) with its
hyper-parameters, **or** an :class:`~entropylab.losses.ObjectiveConfig` (policy loss +
regularizers + advantage shapers). tunix is imported only when ``register`` is called.

What tunix's ``GRPOLearner`` passes and what the registered function does with it (tunix 0.1.7
``tunix/rl/algo_core.py`` ``grpo_loss_fn``, ``tunix/rl/grpo/grpo_learner.py``)::

    fn(model, train_example, algo_config, pad_id, eos_id) -> (loss, aux)

* ``logp`` and the logits: ``tunix.rl.common.compute_per_token_logps`` (as tunix's own loss,
  with ``algo_config.temperature``), in float32; the per-token entropy of those logits
  (``entropylab.ops.token_entropy``) is the ``entropy`` input (forking tokens read it);
* ``old_logp``: ``train_example.old_per_token_logps``, ``None`` on-policy (then
  ``stop_gradient(logp)``, tunix's convention); ``advantages``: tunix's per-sequence ``[B]``
  (or ``[B, T]``); ``mask``: ``completion_mask``; ``token_weights``: tunix's truncated
  importance-sampling ``sampler_is_weights`` (multiplied before aggregation, as tunix does);
* the KL to the reference stays tunix's: when tunix computed ``ref_per_token_logps`` (its
  ``beta != 0``), ``beta · aggregate(compute_kl_divergence(logp, ref, kl_loss_mode))`` is added
  with tunix's own functions and aggregation mode, exactly as its built-in loss;
* ``aux`` has tunix's keys (``pg_loss``, ``pg_clipfrac``, ``ppo_kl``, ``pg_clipfrac_lower``,
  ``kl``, ``kl_loss``, ``entropy``; tunix raises ``KeyError`` on a missing one it logs) from
  our base metrics, plus every entropylab metric under its own name (``pg/*``, ``cov/*``, …).

**Defaults.** Each method keeps its own defaults (e.g. forking's ε 0.2/0.28 with dual clip 10,
its ``token-mean`` aggregation); tunix's ``GRPOConfig`` values are used only when asked:

* ``use_tunix_clip=True``: ``clip_ratio_low = epsilon``, ``clip_ratio_high = epsilon_high``
  (``epsilon`` when the config has none), ``clip_ratio_c = epsilon_c`` (``None`` = no dual clip)
  — read from the config at each call; passing one of those three as well is a ``ValueError``;
* ``use_tunix_agg=True``: ``loss_agg_mode`` from ``algo_config.loss_agg_mode`` through
  :data:`TUNIX_AGG_MODES` (an exact table; a mode without an exact equivalent raises).

With both flags, ``register(name, ppo_clip_loss, use_tunix_clip=True, use_tunix_agg=True)``
is tunix's built-in ``grpo`` loss (loss and gradients; ``tests/integrations/tunix_test.py``).

**Aggregation names** (tunix → entropylab, each checked numerically against tunix's
``common.aggregate_loss``): ``token-mean`` → ``token-mean``; ``sequence-mean-token-mean`` →
``seq-mean-token-mean``; ``seq-mean-token-sum`` → ``seq-mean-token-sum``;
``sequence-mean-token-sum-norm`` → **``seq-mean-token-sum``** (tunix divides the total by the
number of non-empty rows; our ``seq-mean-token-sum-norm`` is Dr. GRPO's total / (B·T), a
different number); ``sequence-mean-token-scale`` (total / (T · non-empty rows)) has no exact
equivalent (ours divides by B·T: equal only when no row is empty) and raises.

**What cannot carry over.**

* Stateful coefficients (adaptive entropy coefficient, adaptive KL, ARES' controllers, …): a
  tunix loss function is pure and has no state slot between steps, so an objective whose
  ``init_state()`` is non-empty is refused (``ValueError``). Use a fixed coefficient, or
  entropylab's own trainer.
* Statistics are per call: tunix calls the loss once per micro-batch under gradient
  accumulation, so batch statistics inside a loss (Clip-Cov/KL-Cov covariance ranking and
  quantiles, forking's entropy quantile, the ``token-mean`` denominator) are taken over each
  micro-batch, not over the whole batch, and tunix averages the micro-batch gradients
  (``optax.MultiSteps``).
  (tunix jits the loss on globally sharded arrays, so under data parallelism they are taken
  over the micro-batch of all devices; only a 1×1 mesh was tested.)
* Inputs tunix does not provide (``ref_logp`` for our own KL term, ``group_ids``, ``step``,
  ``old_entropy``, method extras such as AEPO's ``temp_logp``) are refused at ``register`` time,
  naming the input; set the KL through tunix's ``beta``/``kl_loss_mode`` instead.
* Clip-Cov's random selection uses its documented data-derived key (tunix passes no RNG).
* tunix's ``loss_algo="gspo-token"`` switch belongs to its own loss; with a registered
  entropylab loss it raises (register ``gspo_loss`` instead).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from entropylab.losses import ObjectiveConfig, ObjectiveInputs, build_objective
from entropylab.losses.registry import get_component, registered_names
from entropylab.ops import token_entropy

__all__ = ["TUNIX_AGG_MODES", "register", "tunix_agg_mode"]

#: tunix ``loss_agg_mode`` → entropylab ``loss_agg_mode``; ``None``: no exact equivalent.
TUNIX_AGG_MODES: dict[str, str | None] = {
    "token-mean": "token-mean",
    "sequence-mean-token-mean": "seq-mean-token-mean",
    "seq-mean-token-sum": "seq-mean-token-sum",
    "sequence-mean-token-sum-norm": "seq-mean-token-sum",
    "sequence-mean-token-scale": None,
}

_CLIP = ("clip_ratio_low", "clip_ratio_high", "clip_ratio_c")
_SUPPLIED = frozenset(
    {"logp", "old_logp", "advantages", "mask", "entropy", "logits", "key", "token_weights"}
)
_AUX = {
    "pg_loss": "pg/loss",
    "pg_clipfrac": "pg/clipfrac",
    "ppo_kl": "pg/ppo_kl",
    "pg_clipfrac_lower": "pg/clipfrac_lower",
}


def tunix_agg_mode(mode: str) -> str:
    """The entropylab name of tunix's aggregation ``mode`` (``ValueError`` if none is exact)."""
    if mode not in TUNIX_AGG_MODES:
        raise ValueError(
            f"loss_agg_mode: unknown tunix aggregation mode {mode!r}; "
            f"known: {sorted(TUNIX_AGG_MODES)}"
        )
    ours = TUNIX_AGG_MODES[mode]
    if ours is None:
        raise ValueError(
            f"loss_agg_mode: tunix's {mode!r} (sum / (T · non-empty rows)) has no exact "
            "entropylab equivalent (seq-mean-token-sum-norm divides by B·T); pass "
            "loss_agg_mode=... explicitly instead of use_tunix_agg=True"
        )
    return ours


def _policy_name(loss: Callable) -> str:
    """Registered policy-loss name of the library function ``loss``."""
    for name in registered_names()["policy_loss"]:
        fn = get_component("policy_loss", name).fn
        if fn is loss or getattr(fn, "__wrapped__", None) is loss:
            return name
    raise TypeError(
        f"loss: {getattr(loss, '__name__', loss)!r} is not a registered entropylab policy loss "
        "(decorate it with entropylab.losses.register_policy_loss, or pass an ObjectiveConfig)"
    )


def _base_config(loss, hparams: dict) -> ObjectiveConfig:
    if isinstance(loss, ObjectiveConfig):
        if hparams:
            raise ValueError(
                f"hparams {sorted(hparams)}: with an ObjectiveConfig, put the hyper-parameters in "
                "its policy_kwargs"
            )
        return loss
    if not callable(loss):
        raise TypeError(
            f"loss must be an entropylab policy loss or an ObjectiveConfig, got {type(loss)}"
        )
    name = _policy_name(loss)
    hp = dict(hparams)
    fn = get_component("policy_loss", name).fn
    sig = inspect.signature(getattr(fn, "__wrapped__", fn)).parameters
    agg = hp.pop("loss_agg_mode", None)
    if agg is None:  # the method's own default aggregation, not ObjectiveConfig's
        p = sig.get("loss_agg_mode")
        agg = p.default if p is not None and p.default is not inspect.Parameter.empty else None
    scale = hp.pop("loss_scale_factor", None)
    kw: dict[str, Any] = {"policy_loss": name, "policy_kwargs": hp, "diagnostics": False}
    if agg is not None:
        kw["loss_agg_mode"] = agg
    if scale is not None:
        kw["loss_scale_factor"] = scale
    return ObjectiveConfig(**kw)


def _resolve(base: ObjectiveConfig, algo_config, use_tunix_clip, use_tunix_agg):
    """The ObjectiveConfig for one call: tunix's clip / aggregation applied when opted into."""
    kw: dict[str, Any] = {}
    if use_tunix_clip:
        eps = float(algo_config.epsilon)
        eps_high = getattr(algo_config, "epsilon_high", None)
        eps_c = getattr(algo_config, "epsilon_c", None)
        pk = dict(base.policy_kwargs)
        pk.update(
            clip_ratio_low=eps,
            clip_ratio_high=eps if eps_high is None else float(eps_high),
            clip_ratio_c=None if eps_c is None else float(eps_c),
        )
        kw["policy_kwargs"] = pk
    if use_tunix_agg:
        kw["loss_agg_mode"] = tunix_agg_mode(algo_config.loss_agg_mode)
    return dataclasses.replace(base, **kw) if kw else base


def _check(cfg: ObjectiveConfig, where: str):
    objective = build_objective(cfg)  # ValueError for unknown names / kwargs
    if objective.init_state():
        raise ValueError(
            f"{where}: the objective has state (adaptive coefficients/controllers: "
            f"{sorted(objective.init_state())}); a tunix loss function has no state between "
            "steps, so it cannot carry over — use fixed coefficients"
        )
    missing = sorted(set(objective.needs) - _SUPPLIED)
    if missing:
        raise ValueError(
            f"{where}: the objective needs {missing}, which tunix's loss function does not "
            "provide (the KL to the reference: use tunix's beta/kl_loss_mode)"
        )
    return objective


def register(
    name: str,
    loss: Callable | ObjectiveConfig,
    *,
    use_tunix_clip: bool = False,
    use_tunix_agg: bool = False,
    **hparams,
) -> Callable:
    """Register ``loss`` (with ``hparams``) as tunix policy loss ``name``; return the function.

    ``loss``: a registered entropylab policy loss (e.g. ``ppo_clip_loss``) or an
    ``ObjectiveConfig``. ``hparams``: that loss's keyword arguments (entropylab names, incl.
    ``loss_agg_mode``/``loss_scale_factor``). ``use_tunix_clip`` / ``use_tunix_agg``: take the
    clip ratios / aggregation from tunix's ``GRPOConfig`` instead of the method's defaults (see
    the module docstring). Errors (unknown hyper-parameters, stateful objectives, inputs tunix
    does not provide, a clip ratio given twice) are raised here, not inside tunix's ``jit``.
    Registering an existing name replaces it (tunix logs a warning).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    for flag, v in (("use_tunix_clip", use_tunix_clip), ("use_tunix_agg", use_tunix_agg)):
        if not isinstance(v, bool):
            raise TypeError(f"{flag} must be a bool, got {v!r}")
    base = _base_config(loss, hparams)
    if use_tunix_clip:
        given = sorted(set(_CLIP) & set(dict(base.policy_kwargs)))
        if given:
            raise ValueError(
                f"use_tunix_clip=True takes {list(_CLIP)} from tunix's config; "
                f"{given} given as well"
            )
        spec = get_component("policy_loss", base.policy_loss)
        if spec.accepts is not None and not set(_CLIP) <= set(spec.accepts):
            raise ValueError(
                f"use_tunix_clip=True: policy loss {base.policy_loss!r} has no "
                f"{sorted(set(_CLIP) - set(spec.accepts))}"
            )
    if use_tunix_agg and "loss_agg_mode" in hparams:
        raise ValueError("use_tunix_agg=True takes loss_agg_mode from tunix's config; given too")
    _check(base, f"register({name!r})")  # the method's own settings build and are stateless

    from flax import nnx
    from tunix.rl import common, function_registry  # lazy: tunix is not a dependency

    def policy_loss_fn(model, train_example, algo_config, pad_id, eos_id, **kwargs):
        loss_algo = getattr(algo_config, "loss_algo", "grpo")
        if loss_algo != "grpo":  # tunix's GSPO switch lives inside its own grpo loss only
            raise ValueError(
                f"tunix policy loss {name!r}: algo_config.loss_algo={loss_algo!r} is not applied "
                "by entropylab losses; register entropylab's gspo_loss for GSPO instead"
            )
        cfg = _resolve(base, algo_config, use_tunix_clip, use_tunix_agg)
        objective = _check(cfg, f"tunix policy loss {name!r}")
        graphdef, state = nnx.split(model)
        logp, logits = common.compute_per_token_logps(
            graphdef,
            state,
            prompt_tokens=train_example.prompt_ids,
            completion_tokens=train_example.completion_ids,
            pad_id=pad_id,
            eos_id=eos_id,
            stop_gradient=False,
            return_logits=True,
            segment_ids=getattr(train_example, "segment_ids", None),
            segment_positions=getattr(train_example, "segment_positions", None),
            temperature=algo_config.temperature,
        )
        logp = logp.astype(jnp.float32)
        logits = logits.astype(jnp.float32)
        mask = train_example.completion_mask
        old = train_example.old_per_token_logps
        weights = getattr(train_example, "sampler_is_weights", None)
        entropy = token_entropy(logits)
        inputs = ObjectiveInputs(
            logp=logp,
            old_logp=None if old is None else old.astype(jnp.float32),
            advantages=train_example.advantages.astype(jnp.float32),
            mask=mask,
            entropy=entropy,
            logits=logits if objective.needs_logits else None,
            token_weights=None if weights is None else weights.astype(jnp.float32),
        )
        loss_value, metrics = objective.loss(inputs, {}, diagnostics=False)
        mode = algo_config.loss_agg_mode
        aux = {k: metrics[v] for k, v in _AUX.items()}
        aux["kl"] = jnp.float32(0.0)
        aux["kl_loss"] = jnp.float32(0.0)
        ref = train_example.ref_per_token_logps
        if ref is not None:  # tunix's KL term, with tunix's own functions (as its grpo loss)
            kl = common.compute_kl_divergence(
                logp,
                ref,
                algo_config.kl_loss_mode,
                clamp_value=getattr(algo_config, "kl_clamp_value", None),
            )
            aux["kl"] = (kl * mask).sum() / jnp.clip(mask.sum(), min=1)
            aux["kl_loss"] = common.aggregate_loss(kl, mask, mode)
            beta = getattr(algo_config, "beta", None)
            if beta is not None and beta != 0.0:
                loss_value = loss_value + beta * aux["kl_loss"]
        aux["entropy"] = common.aggregate_loss(jax.lax.stop_gradient(entropy), mask, mode)
        aux.update(metrics)
        return loss_value, aux

    policy_loss_fn.__name__ = f"entropylab_{name}"
    function_registry.register_policy_loss_fn(name)(policy_loss_fn)
    return policy_loss_fn
