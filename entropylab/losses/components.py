"""Stateful objective adapters (adaptive entropy, SIREN anchor, ARES dynamic KL), and the index.

Every method registers itself where it is defined, under one name unique across the three kinds
(:mod:`entropylab.losses.registry`); importing this module imports them all:

================  ===============================================  ======================
kind              name → function                                  reads (besides logp …)
================  ===============================================  ======================
policy_loss       ``ppo_clip`` → :func:`ppo_clip_loss`
                  ``reinforce`` → :func:`reinforce_loss`
                  ``gspo`` → :func:`gspo_loss`
                  ``cispo`` → :func:`cispo_loss`
                  ``clip_cov`` → :func:`clip_cov_loss`              key (optional)
                  ``kl_cov`` → :func:`kl_cov_loss`
                  ``forking`` → :func:`forking_token_loss`          entropy
                  ``steer`` → :func:`steer_loss`                    old_entropy
                  ``aepo_agentic`` → :func:`aepo_agentic_loss`      entropy
                  ``hapo`` → :func:`hapo_loss`                      entropy
                  ``aepo`` → :func:`aepo_loss` (+ pooled option)    extras.temp_*
                  ``erc`` → :func:`erc_loss`                        entropy, old_entropy
regularizer       ``entropy_bonus`` (entropy.py), ``adaptive_entropy`` (state), ``siren``
                  (anchor in state), ``aepo_reinforce`` (AEPO's α·REINFORCE term, the paper's
                  non-pooled form), ``ares_kl`` (per-bucket dynamic KL, state),
                  ``entropic`` (EntroPIC's PI-controlled term, state; entropic.py),
                  ``tea_rl`` (Light-IF's TEA-RL entropy weights; light_if.py)
advantage_shaper  ``hicra``, ``ettrl``, ``hapo_advantages`` (from ``extras.rewards``),
                  ``entropy_aware_advantages`` (aepo_agentic.py), ``entropy_advantage``
                  (entropy_advantage.py)
================  ===============================================  ======================

This module holds only the **stateful adapters** (``adaptive_entropy``, ``siren``, ``ares_kl``:
their ``init_state``, per-mini-batch ``stats`` and ``update_from_stats``).

``entropy_source`` (``"current"``/``"old"``) picks ``inputs.entropy`` (current policy) or
``inputs.old_entropy`` (rollout) where a method reads entropy only as a selector or weight; the
default is the paper's choice (forking, agentic AEPO, HAPO: current; STEER, HICRA, ETTRL: old).

Reward-side methods (PEAR, DAPO overlong shaping, ARES entropy reward, TTRL majority vote) act
before the advantages are computed and live in :mod:`entropylab.losses.rewards` /
:mod:`entropylab.losses.ares` / :mod:`entropylab.losses.ettrl`; they are not objective terms.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from entropylab.losses import aepo as _aepo  # noqa: F401  (registers itself)
from entropylab.losses import aepo_agentic as _aepo_agentic  # noqa: F401  (registers itself)
from entropylab.losses import ares as _ares
from entropylab.losses import covariance as _covariance  # noqa: F401  (registers itself)
from entropylab.losses import entropy as _ent
from entropylab.losses import ettrl as _ettrl  # noqa: F401  (registers itself)
from entropylab.losses import forking as _forking  # noqa: F401  (registers itself)
from entropylab.losses import hapo as _hapo  # noqa: F401  (registers itself)
from entropylab.losses import hicra as _hicra  # noqa: F401  (registers itself)
from entropylab.losses import kl as _kl
from entropylab.losses import policy as _policy  # noqa: F401  (registers itself)
from entropylab.losses import siren as _siren_mod
from entropylab.losses import steer as _steer  # noqa: F401  (registers itself)
from entropylab.losses.registry import (
    SumCount,
    kwargs_of,
    register_regularizer,
)
from entropylab.ops.masked import AGG_MODES, aggregate, masked_count, masked_mean, masked_sum

_sg = jax.lax.stop_gradient
_SOURCES = ("current", "old")
_FIELD = {"current": "entropy", "old": "old_entropy"}


def _tree_where(cond, new, old):
    return jax.tree.map(lambda a, b: jnp.where(cond, a, b), new, old)


def _entropy(inputs, source, who):
    if source not in _SOURCES:
        raise ValueError(f"{who}: entropy_source must be one of {_SOURCES}, got {source!r}")
    h = inputs.entropy if source == "current" else inputs.old_entropy
    if h is None:
        field = "entropy" if source == "current" else "old_entropy"
        raise ValueError(f"{who} with entropy_source={source!r} needs inputs.{field}")
    return h


def _extra(inputs, name, who, optional=False):
    ex = inputs.extras or {}
    if name not in ex:
        if optional:
            return None
        raise ValueError(f"{who} needs inputs.extras[{name!r}]")
    return ex[name]


# ------------------------------------------------------------------------------ regularizers
_ADAPT = tuple(f.name for f in dataclasses.fields(_ent.AdaptiveEntropyConfig))


def _adaptive_cfg(kw):
    return _ent.AdaptiveEntropyConfig(**{k: v for k, v in kw.items() if k in _ADAPT})


def _adaptive_entropy(inputs, ctx, *, measure="current", entropy_agg_mode=None, **kw):
    """Entropy bonus whose coefficient ``c`` is the controller's (gated) value for this step.

    The controlled entropy is the stop-gradient token mean of ``inputs.entropy`` (``measure=
    "current"``) or ``inputs.old_entropy`` (``"old"``) over the global batch.
    """
    cfg = _adaptive_cfg(kw)
    if inputs.entropy is None:
        raise ValueError("regularizer 'adaptive_entropy' needs inputs.entropy (current policy)")
    h_meas = _sg(
        masked_mean(
            _entropy(inputs, measure, "adaptive_entropy"), inputs.mask, axis_name=ctx.axis_name
        )
    )
    used, nxt, m = _ent.adaptive_entropy_update(ctx.state, h_meas, cfg)
    loss, mb = _ent.entropy_bonus(
        inputs.entropy,
        inputs.mask,
        coef=used,
        loss_agg_mode=entropy_agg_mode or ctx.loss_agg_mode,
        loss_scale_factor=ctx.loss_scale_factor,
        axis_name=ctx.axis_name,
    )
    return loss, {
        "entropy/adaptive_coef": used,
        "entropy/adaptive_coef_next": nxt.coef,
        "entropy/adaptive_target": m["entropy/target"],
        "entropy/adaptive_measured": h_meas,
        "entropy/adaptive_agg": mb["entropy/mean"],
    }


def _adaptive_update(state, metrics, kw):
    _, nxt, _ = _ent.adaptive_entropy_update(
        state, metrics["entropy/adaptive_measured"], _adaptive_cfg(kw)
    )
    return nxt, {"entropy/adaptive_coef_next": nxt.coef}


def _adaptive_stats(inputs, ctx, metrics, kw):
    """``{"entropy": (Σ H, Σ mask)}`` of the measured entropy (global over ``axis_name``)."""
    h = _sg(_entropy(inputs, kw.get("measure", "current"), "adaptive_entropy"))
    return {
        "entropy": SumCount(
            masked_sum(h.astype(jnp.float32), inputs.mask, axis_name=ctx.axis_name),
            masked_count(inputs.mask, axis_name=ctx.axis_name),
        )
    }


def _adaptive_from_stats(state, stats, kw):
    """One controller step on the token mean of the measured entropy over everything added
    into ``stats``; no tokens (count 0) leaves the state unchanged."""
    st = stats["entropy"]
    _, nxt, _ = _ent.adaptive_entropy_update(state, st.mean(), _adaptive_cfg(kw))
    nxt = _tree_where(st.count > 0, nxt, state)
    return nxt, {"entropy/adaptive_coef_next": nxt.coef, "entropy/adaptive_measured": st.mean()}


def _validate_adaptive(kw):
    _adaptive_cfg(kw)
    if kw.get("measure", "current") not in _SOURCES:
        raise ValueError(f"measure must be one of {_SOURCES}, got {kw['measure']!r}")
    if kw.get("entropy_agg_mode") not in (None, *AGG_MODES):
        raise ValueError(f"entropy_agg_mode must be one of {AGG_MODES} or None")


register_regularizer(
    "adaptive_entropy",
    _adaptive_entropy,
    accepts=set(_ADAPT) | {"measure", "entropy_agg_mode"},
    needs=lambda kw: ("entropy", "old_entropy") if kw.get("measure") == "old" else ("entropy",),
    init_state=lambda kw: _ent.adaptive_entropy_init(_adaptive_cfg(kw)),
    update_state=_adaptive_update,
    validate=_validate_adaptive,
    stats=_adaptive_stats,
    zero_stats=lambda kw: {"entropy": SumCount.zeros()},
    update_from_stats=_adaptive_from_stats,
)


def _siren(
    inputs,
    ctx,
    *,
    anchor=None,
    top_p=0.8,
    top_k=10000,
    temperature=1.0,
    normalize_over="vocab",
    **kw,
):
    """SIREN ``c·(H_sel − sg(H_anchor))²`` on the top-p entropy of the current policy.

    ``H^p`` is ``inputs.extras["entropy_p"]`` if given, else :func:`top_p_entropy` of
    ``inputs.logits``. The anchor is ``anchor`` if given, else the state's (set by
    ``update_state`` from the first step's ``H_sel`` of the rollout top-p entropies:
    ``extras["old_entropy_p"]``, or the detached current ones, equal on the first on-policy
    mini-batch). ``entropy_agg_mode`` defaults to SIREN's ``seq-mean-token-mean``.
    """
    ex = inputs.extras or {}
    if "entropy_p" in ex:
        ep = ex["entropy_p"]
    elif inputs.logits is not None:
        ep = _siren_mod.top_p_entropy(
            inputs.logits,
            top_p=top_p,
            top_k=top_k,
            temperature=temperature,
            normalize_over=normalize_over,
        )
    else:
        raise ValueError("regularizer 'siren' needs inputs.logits or inputs.extras['entropy_p']")
    st = ctx.state
    if anchor is not None:
        a = anchor
    elif kw.get("form", "anchored") == "anchored":
        old = ex.get("old_entropy_p", _sg(ep))
        now = _siren_mod.siren_anchor(
            old,
            inputs.mask,
            mask_quantile=kw.get("mask_quantile", 0.8),
            entropy_agg_mode=kw.get("entropy_agg_mode", "seq-mean-token-mean"),
            axis_name=ctx.axis_name,
        )
        a = jnp.where(st["initialized"], st["anchor"].astype(now.dtype), now)
    else:
        a = None
    return _siren_mod.siren_regularizer(ep, inputs.mask, anchor=a, axis_name=ctx.axis_name, **kw)


def _siren_update(state, metrics, kw):
    anchor = jnp.where(
        state["initialized"], state["anchor"], metrics["entropy/siren_anchor"].astype(jnp.float32)
    )
    return {"anchor": anchor, "initialized": jnp.ones((), bool)}, {"entropy/siren_anchor": anchor}


def _siren_stats(inputs, ctx, metrics, kw):
    """``{"anchor": (Σ_rows H_anchor, rows)}``: this mini-batch's anchor candidate weighted by its
    number of responses with a valid token (count 0 when the anchor is not learned)."""
    rows = masked_count(jnp.any(jnp.asarray(inputs.mask) != 0, axis=-1), axis_name=ctx.axis_name)
    if kw.get("anchor") is not None or kw.get("form", "anchored") != "anchored":
        rows = jnp.zeros((), jnp.float32)
    return {"anchor": SumCount.from_mean(metrics["entropy/siren_anchor"], rows)}


def _siren_from_stats(state, stats, kw):
    """Set the anchor once, from the row-weighted mean of the first step's candidates."""
    st = stats["anchor"]
    keep = state["initialized"] | (st.count <= 0)
    anchor = jnp.where(keep, state["anchor"], st.mean())
    init = state["initialized"] | (st.count > 0)
    return {"anchor": anchor, "initialized": init}, {"entropy/siren_anchor": anchor}


_SIREN_ACCEPTS = kwargs_of(_siren_mod.siren_regularizer, ("anchor", "axis_name"))[0] | {
    "anchor",
    "top_p",
    "top_k",
    "temperature",
    "normalize_over",
}


register_regularizer(
    "siren",
    _siren,
    accepts=_SIREN_ACCEPTS,
    init_state=lambda kw: {
        "anchor": jnp.zeros((), jnp.float32),
        "initialized": jnp.zeros((), bool),
    },
    update_state=_siren_update,
    needs=("logits|extras.entropy_p",),
    stats=_siren_stats,
    zero_stats=lambda kw: {"anchor": SumCount.zeros()},
    update_from_stats=_siren_from_stats,
)


_BUCKETS = ("easy", "medium", "hard")


def _ares_update_kw(kw):
    return {k: v for k, v in kw.items() if k not in ("kl_coef", "kind")}


def _ares_kl(inputs, ctx, *, kl_coef=1e-2, kind="low_var_kl", **kw):
    """ARES dynamic KL: ``agg(kl_coef · β_{d(i)} · KL_kind)``, β per difficulty bucket (state).

    ``extras["difficulty"]`` ``[B]`` holds each sample's bucket (0 easy, 1 medium, 2 hard,
    :func:`ares_difficulty_buckets`). Use instead of ``kl_coef`` in the config.
    """
    b = jnp.asarray(_extra(inputs, "difficulty", "regularizer 'ares_kl'"))
    coefs = _ares.ares_kl_coefficients(ctx.state, b, kl_coef=kl_coef)
    valid = jnp.asarray(inputs.mask) != 0  # padding (any value) reaches no value or gradient
    k = _kl.kl_penalty(
        jnp.where(valid, inputs.logp, 0.0), jnp.where(valid, inputs.ref_logp, 0.0), kind=kind
    )
    loss = aggregate(
        coefs[:, None].astype(k.dtype) * k,
        inputs.mask,
        ctx.loss_agg_mode,
        loss_scale_factor=ctx.loss_scale_factor,
        axis_name=ctx.axis_name,
    )
    # the release's per-bucket statistic: mean over the bucket's responses of each response's
    # token-mean KL (ares_bucket_kl)
    bkl, _ = _ares.ares_bucket_kl(k, valid, b, axis_name=ctx.axis_name)
    m = {}
    for d, nm in enumerate(_BUCKETS):
        m[f"ares/kl_{nm}"] = bkl[d]
        m[f"ares/responses_{nm}"] = masked_count(b == d, axis_name=ctx.axis_name)
        m[f"ares/beta_{nm}"] = ctx.state.beta[d]
    return loss, m


def _ares_kl_update(state, metrics, kw):
    kl = jnp.stack([metrics[f"ares/kl_{n}"] for n in _BUCKETS])
    present = jnp.stack([metrics[f"ares/responses_{n}"] > 0 for n in _BUCKETS])
    new = _ares.ares_kl_update(state, kl, present, **_ares_update_kw(kw))
    return new, {f"ares/beta_next_{n}": new.beta[d] for d, n in enumerate(_BUCKETS)}


def _ares_kl_stats(inputs, ctx, metrics, kw):
    """``{"kl": (Σ_responses mean-token KL, responses)}`` per bucket ``[3]`` (easy, medium,
    hard), global: added over mini-batches it is :func:`ares_bucket_kl` of the whole batch."""
    kl = jnp.stack([metrics[f"ares/kl_{n}"] for n in _BUCKETS])
    cnt = jnp.stack([metrics[f"ares/responses_{n}"] for n in _BUCKETS])
    return {"kl": SumCount.from_mean(kl, cnt)}


def _ares_kl_from_stats(state, stats, kw):
    """One :func:`ares_kl_update` call on the per-bucket KL of everything added into ``stats``
    (the release's mean of per-response means; buckets with no response are not present; no
    response at all: no call)."""
    st = stats["kl"]
    new = _ares.ares_kl_update(state, st.mean(), st.count > 0, **_ares_update_kw(kw))
    new = _tree_where(jnp.any(st.count > 0), new, state)
    return new, {f"ares/beta_next_{n}": new.beta[d] for d, n in enumerate(_BUCKETS)}


def _validate_ares(kw):
    _kl.kl_penalty(jnp.zeros(1), jnp.zeros(1), kind=kw.get("kind", "low_var_kl"))
    if not kw.get("kl_coef", 1e-2) >= 0:
        raise ValueError(f"kl_coef must be >= 0, got {kw['kl_coef']}")


register_regularizer(
    "ares_kl",
    _ares_kl,
    accepts=kwargs_of(_ares.ares_kl_update)[0] | {"kl_coef", "kind"},
    needs=("ref_logp", "extras.difficulty"),
    init_state=lambda kw: _ares.ares_kl_init(target_kl=kw.get("target_kl", 0.01)),
    update_state=_ares_kl_update,
    validate=_validate_ares,
    stats=_ares_kl_stats,
    zero_stats=lambda kw: {"kl": SumCount.zeros((3,))},
    update_from_stats=_ares_kl_from_stats,
)
