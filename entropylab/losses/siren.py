"""SIREN: selective, self-anchored entropy regularisation (top-p entropy on peak-entropy tokens).

1. **Top-p entropy** (action space, :func:`top_p_entropy`): at each position take the top-K
   logits, keep the nucleus of tokens whose cumulative probability stays *below* p (the token
   that crosses p is excluded; if the top-1 alone has ≥ p the set is empty and H^p = 0),
   renormalise on it and take its entropy ``H^p = −Σ_{v∈N} p̃_v log p̃_v``. The set selection is
   not differentiable; the renormalised probabilities are.
2. **Peak-entropy mask** (state space, :func:`peak_entropy_mask`): ``M_t = 1[H^p_t >
   Q_q(H^p_{i,·})]`` with the q = 0.8 quantile taken **per response** over its valid positions.
3. **Self-anchored regulariser**: ``H_sel`` aggregates ``H^p`` with the **peak mask M as the
   loss mask** (released ``dp_actor.py``: ``agg_loss(loss_mat=entropy, loss_mask=value_mask,
   loss_agg_mode=entropy_agg_mode)``). With the default ``seq-mean-token-mean``::

       H_sel = (1/B) Σ_i  [Σ_t M_it H^p_it / Σ_t M_it]        (a row with Σ_t M_it = 0 counts 0)

   i.e. per response the mean over its *selected* tokens, then the mean over the responses
   (B = rows with at least one valid token; the release has no empty rows). The loss is
   ``L = L_PG + c·(H_sel − sg(H_anchor))²``, where ``H_anchor`` is the same statistic on the
   rollout (old-policy) entropies at training step 1 (:func:`siren_anchor`), then frozen.
   The naive ablation ``−c·H_sel`` (``abla_wo_anchor``) is ``form="naive"``.

Defaults reproduce the released run: c = 0.005, p = 0.8, K = 10000, q = 0.8,
``entropy_agg_mode = seq-mean-token-mean``; PG side Dr.GRPO-like with
``loss_agg_mode = seq-mean-token-sum-norm`` and **ε 0.2/0.2 with dual clip c = 3**:
``exp_scripts/siren.sh`` passes ``clip_ratio=0.28``, but the bundled verl's
``ppo_trainer.yaml`` sets ``clip_ratio_low/high = 0.2`` and ``clip_ratio_c = 3.0``, which take
precedence in ``dp_actor.py``. The script's 0.28 is ``clip_ratio_low=clip_ratio_high=0.28``.

Released code checked against: ``Linn3a/siren`` @ fa59a8d (2025-12-10):
``verl/verl/workers/actor/dp_actor.py`` (``efficient_top_p_sampling``, ``mask_by_quantile``,
the ``siren`` branch of ``update_policy``), ``verl/verl/trainer/ppo/core_algos.py``
(``agg_loss``, ``compute_policy_loss``), ``verl/verl/trainer/ppo/ray_trainer.py`` (anchor at
``global_steps == 1``), ``verl/verl/trainer/config/ppo_trainer.yaml`` (clip), and
``exp_scripts/siren.sh``. The release applies ``mask_by_quantile`` twice (once when
``use_siren`` and again in the ``siren`` branch, on the already-masked entropy); for
non-negative entropies the second pass selects the same tokens, so it is applied once here.

Choices where paper and code may differ: the nucleus probabilities are the full-vocabulary
softmax (the paper's π; ``normalize_over="top_k"`` renormalises over the top-K logits first,
as a top-k-then-top-p sampler does); the code's ``+1e-12`` inside the log is replaced by an
exact log-softmax over the nucleus; the peak mask is ANDed with the response mask (the code
relies on padded entropies being 0).

References: arXiv:2509.25133 (Liu et al., SIREN); code ``Linn3a/siren`` @ fa59a8d.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.losses.policy import ppo_clip_loss
from entropylab.ops.masked import AGG_MODES, aggregate, masked_mean, masked_quantile

__all__ = [
    "peak_entropy_mask",
    "siren_anchor",
    "siren_loss",
    "siren_regularizer",
    "top_p_entropy",
]


def _valid(mask):
    mask = jnp.asarray(mask)
    return mask if mask.dtype == jnp.bool_ else mask != 0


def top_p_entropy(
    logits,
    *,
    top_p: float = 0.8,
    top_k: int = 10000,
    temperature: float = 1.0,
    normalize_over: str = "vocab",
) -> jax.Array:
    """Entropy of the renormalised top-p nucleus of ``softmax(logits / T)``.

    Args:
      logits: ``[..., V]`` (computed in float32 or wider). ``top_p`` ∈ (0, 1];
      ``top_k`` ≥ 1 (capped at V); ``normalize_over``: ``"vocab"`` (probabilities of the full
      softmax decide the nucleus) or ``"top_k"`` (softmax over the top-K logits).
    Returns:
      ``[...]`` entropy in nats; 0 where the nucleus is empty. Differentiable in the logits
      (through the renormalised probabilities). ``-inf`` logits are never in the nucleus.

    References: arXiv:2509.25133; checked against ``efficient_top_p_sampling`` in
    ``Linn3a/siren`` @ fa59a8d ``verl/verl/workers/actor/dp_actor.py`` (nucleus = the top-K
    positions before the first cumulative probability ≥ p; full-vocabulary softmax).
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not top_k >= 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if normalize_over not in ("vocab", "top_k"):
        raise ValueError(f"normalize_over must be 'vocab' or 'top_k', got {normalize_over!r}")
    z = jnp.asarray(logits)
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32)) / temperature
    k = min(int(top_k), z.shape[-1])
    vals, _ = jax.lax.top_k(z, k)  # sorted, descending
    finite = vals > -jnp.inf
    sg = jax.lax.stop_gradient
    src = sg(z) if normalize_over == "vocab" else sg(vals)
    lse = jax.nn.logsumexp(src, axis=-1, keepdims=True)
    lse = jnp.where(jnp.isfinite(lse), lse, 0.0)
    p = jnp.where(finite, jnp.exp(jnp.where(finite, sg(vals) - lse, 0.0)), 0.0)
    nucleus = finite & (jnp.cumsum(p, axis=-1) < top_p)
    m = sg(jnp.where(jnp.isfinite(vals[..., :1]), vals[..., :1], 0.0))
    zs = jnp.where(nucleus, vals - m, 0.0)
    e = jnp.where(nucleus, jnp.exp(zs), 0.0)
    s = jnp.sum(e, axis=-1)
    t = jnp.sum(e * zs, axis=-1)
    empty = s <= 0
    s_safe = jnp.where(empty, 1.0, s)
    return jnp.where(empty, 0.0, jnp.log(s_safe) - t / s_safe)


def peak_entropy_mask(entropy, mask, *, quantile: float = 0.8) -> jax.Array:
    """Per-response peak mask ``M_t = valid_t ∧ H_t > Q_q(H_{i, valid})`` (bool ``[B, T]``).

    ``Q_q`` is NumPy's linear quantile over each sequence's valid positions (torch
    ``nanquantile``); rows without valid tokens select nothing. No gradient.

    Checked against ``mask_by_quantile(x, response_mask, 1, q)`` in ``Linn3a/siren`` @ fa59a8d
    ``verl/verl/workers/actor/dp_actor.py`` (which does not AND with the response mask and
    relies on padded entropies being 0).
    """
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    valid = _valid(mask)
    q = jax.vmap(lambda x, m: masked_quantile(x, m, quantile))(h, valid)
    return valid & (h > q[:, None].astype(h.dtype))


def _h_sel(entropy_p, valid, mask_quantile, entropy_agg_mode, axis_name):
    """``agg(H^p, loss_mask=M)`` as SIREN's bundled verl ``agg_loss`` computes it (fa59a8d).

    ``token-mean``: Σ M H / Σ M. ``seq-mean-token-mean``: per row Σ_t M H / Σ_t M (0 when the
    row selects nothing), mean over rows. ``seq-mean-token-sum``: mean over rows of Σ_t M H.
    ``seq-mean-token-sum-norm``: Σ M H / (B·T). The row means run over the rows with at least
    one *valid* token (global with ``axis_name``); the bundled verl divides by the micro-batch
    size, which is the same when no row is empty.
    """
    sel = peak_entropy_mask(entropy_p, valid, quantile=mask_quantile)
    x = jnp.where(sel, entropy_p, 0.0)
    if entropy_agg_mode in ("token-mean", "seq-mean-token-sum-norm"):
        return aggregate(x, sel, entropy_agg_mode, axis_name=axis_name), sel
    row_sum = jnp.sum(x, axis=-1)
    if entropy_agg_mode == "seq-mean-token-mean":
        n_sel = jnp.sum(sel, axis=-1).astype(row_sum.dtype)
        row_sum = jnp.where(n_sel > 0, row_sum / jnp.maximum(n_sel, 1.0), 0.0)
    return masked_mean(row_sum, jnp.any(valid, axis=-1), axis_name=axis_name), sel


def siren_anchor(
    entropy_p,
    mask,
    *,
    mask_quantile: float = 0.8,
    entropy_agg_mode: str = "seq-mean-token-mean",
    axis_name=None,
) -> jax.Array:
    """``H_anchor``: ``H_sel`` of the step-1 rollout (old-policy top-p entropies), stop-gradient.

    Compute once at the first training step and keep it (checkpoint it: the released code
    loses it on resume). Same aggregation as the regulariser (peak mask as the loss mask),
    as ``ray_trainer.py`` of ``Linn3a/siren`` @ fa59a8d does at ``global_steps == 1``.
    """
    valid = _valid(mask)
    h, _ = _h_sel(entropy_p, valid, mask_quantile, entropy_agg_mode, axis_name)
    return jax.lax.stop_gradient(h)


def siren_regularizer(
    entropy_p,
    mask,
    *,
    anchor=None,
    coef: float = 0.005,
    mask_quantile: float = 0.8,
    entropy_agg_mode: str = "seq-mean-token-mean",
    form: str = "anchored",
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SIREN regulariser: ``c·(H_sel − sg(H_anchor))²`` (``anchored``) or ``−c·H_sel`` (``naive``).

    ``entropy_p`` ``[B, T]``: top-p entropy of the **current** policy (with gradient, e.g. from
    :func:`top_p_entropy`); the peak mask is computed on its detached value. Metrics:
    ``entropy/siren_sel`` (H_sel), ``entropy/siren_mse`` ((H_sel − H_anchor)²),
    ``entropy/siren_anchor``, ``entropy/siren_coef``, ``entropy/siren_sel_frac``.

    ``H_sel`` uses the peak mask as the loss mask (module docstring); checked against the
    ``siren`` / ``abla_wo_anchor`` branches of ``update_policy`` in ``Linn3a/siren`` @ fa59a8d
    ``verl/verl/workers/actor/dp_actor.py``.
    """
    if form not in ("anchored", "naive"):
        raise ValueError(f"form must be 'anchored' or 'naive', got {form!r}")
    if form == "anchored" and anchor is None:
        raise ValueError("form='anchored' needs `anchor` (see siren_anchor)")
    if entropy_agg_mode not in AGG_MODES:
        raise ValueError(f"entropy_agg_mode must be one of {AGG_MODES}, got {entropy_agg_mode!r}")
    valid = _valid(mask)
    entropy_p = jnp.asarray(entropy_p)
    h_sel, sel = _h_sel(entropy_p, valid, mask_quantile, entropy_agg_mode, axis_name)
    a = jax.lax.stop_gradient(jnp.asarray(0.0 if anchor is None else anchor, h_sel.dtype))
    mse = jnp.square(h_sel - a)
    loss = coef * mse if form == "anchored" else -coef * h_sel
    metrics = {
        "entropy/siren_sel": jax.lax.stop_gradient(h_sel),
        "entropy/siren_mse": jax.lax.stop_gradient(mse),
        "entropy/siren_anchor": a,
        "entropy/siren_coef": jnp.asarray(coef, h_sel.dtype),
        "entropy/siren_sel_frac": masked_mean(sel.astype(h_sel.dtype), valid, axis_name=axis_name),
    }
    return loss, metrics


def siren_loss(
    logp,
    old_logp,
    advantages,
    mask,
    *,
    entropy_p,
    anchor=None,
    coef: float = 0.005,
    mask_quantile: float = 0.8,
    entropy_agg_mode: str = "seq-mean-token-mean",
    form: str = "anchored",
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float | None = 0.2,
    clip_ratio_c: float | None = 3.0,
    log_ratio_clamp: float = 20.0,
    loss_agg_mode: str = "seq-mean-token-sum-norm",
    loss_scale_factor: float | None = None,
    axis_name=None,
    key=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """SIREN total loss ``L_PG + c·(H_sel − sg(H_anchor))²`` (see the module docstring).

    ``L_PG`` is :func:`entropylab.losses.ppo_clip_loss` with the released run's settings:
    ε 0.2/0.2, dual clip c = 3, ``seq-mean-token-sum-norm`` (pass ``clip_ratio_low=0.28,
    clip_ratio_high=0.28`` for the script's value that the yaml overrides). Returns the PG
    metrics (``pg/*``) and the regulariser's (``entropy/siren_*``) plus ``entropy/siren_loss``.
    ``key`` is unused.

    References: arXiv:2509.25133; released code ``Linn3a/siren`` @ fa59a8d
    (``dp_actor.py`` ``update_policy``, ``core_algos.py`` ``compute_policy_loss``,
    ``ppo_trainer.yaml``).
    """
    del key
    pg, metrics = ppo_clip_loss(
        logp,
        old_logp,
        advantages,
        mask,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
        log_ratio_clamp=log_ratio_clamp,
        loss_agg_mode=loss_agg_mode,
        loss_scale_factor=loss_scale_factor,
        axis_name=axis_name,
    )
    if jnp.shape(entropy_p) != jnp.shape(logp):
        raise ValueError(f"entropy_p must be [B, T] like logp, got {jnp.shape(entropy_p)}")
    reg, reg_metrics = siren_regularizer(
        entropy_p,
        mask,
        anchor=anchor,
        coef=coef,
        mask_quantile=mask_quantile,
        entropy_agg_mode=entropy_agg_mode,
        form=form,
        axis_name=axis_name,
    )
    metrics.update(reg_metrics)
    metrics["entropy/siren_loss"] = jax.lax.stop_gradient(reg)
    return pg + reg, metrics
