"""Light-IF's loss-level pieces (Wang, Wen et al., "Light-IF: Endowing LLMs with Generalizable
Reasoning via Preview and Self-Checking for Complex Instruction Following", arXiv:2508.03178).

**Entropy-preserving SFT** (:func:`entropy_sft_loss`). Over the N valid target tokens of the
batch, with ``CE_t = −log π(y_t)`` and ``H_t`` the full-vocabulary entropy at t::

    δ_t = CE_t − c · H_t                                     (c = entropy_coef, release: 1.0)
    S   = the k = max(⌊ρ·N⌋, 1) tokens with the largest δ     (ρ = token_ratio, release: 0.2)
    L   = Σ_{t∈S} CE_t / k                                   (or / ⌊ρ·n_items⌋, see below)

Tokens the model already predicts well (low CE) *and* tokens where it is uncertain (high H) are
dropped, so SFT concentrates on confidently-wrong tokens and leaves the model's uncertainty
(entropy) where it is. The selection carries no gradient (``torch.topk`` indices); only the
selected CE terms do. The released ``build_entropy_loss_func`` (the one its SFT workflow
passes as ``compute_loss_func``) divides by ``int(num_items_in_batch · ρ)`` when the trainer
gives ``num_items_in_batch`` (gradient accumulation) and by k otherwise: ``num_items=None``
here is the latter, ``num_items=n`` the former. Ties in δ are broken by the lower flat token
index (``torch.topk(sorted=False)`` leaves tie order unspecified). It is a supervised loss
(for a warm start such as ``entropylab.rl.sft``), not a term of the RL objective, so it has no
registry name.

**TEA-RL token-wise entropy-adaptive regulariser** (:func:`tea_rl_entropy_loss`, registered as
the regularizer ``"tea_rl"``)::

    C_t  = (A_t − mean_m A) · (log π_t − mean_m sg(log π))      (batch means over valid tokens)
    w_t  = clip(α · softmax_t(C)_t, 0, u)                         (softmax over each response's
                                                                   valid tokens; α = 10, u = 5)
    L_TEA = −agg(w ⊙ H)                                           (added to the PG loss)

Tokens whose (advantage, log-prob) covariance is largest in their response get the largest
entropy bonus. As in the release, ``log π`` in ``C`` is *not* detached, so the gradient flows
through the weights as well as through ``H``. A response without valid tokens gets weight 0
(the release's softmax over an all ``−inf`` row gives NaN there).

Released code checked against: ``Qihoo360/Light-IF`` at 01e90034af6a (both files last changed
in 7068745826c7): ``coldstart/LLAMA-Factory/src/llamafactory/train/sft/custom_entropy_trainer.py``
(``build_entropy_loss_func``; defaults ``token_ratio=0.2``, ``entropy_coef=1.0`` from
``hparams/finetuning_args.py``) and ``rl/verl/verl/trainer/ppo/core_algos.py``
``compute_entropy_with_cov`` (``cov_alpha=10``, ``clip_cov_ub=5``), subtracted from the PG loss
with coefficient 1 in ``rl/verl/verl/workers/actor/dp_actor.py``. Note on the release: that
``dp_actor.py`` branch (``elif entropy_mode == "token-level-cov"``) follows ``if loss_mode ==
"vanilla"`` and reads an undefined ``entropy_mode``, so with the released scripts (vanilla loss,
``entropy_coeff=0``) the regulariser never runs; the paper's own TEA-RL equation was not
retrieved, so the function is the released
``compute_entropy_with_cov``, not a paper formula. The paper's dense constraint rewards are
reward-side and not implemented here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.losses._select import count_floor, topk_mask
from entropylab.losses.policy import check_loss_agg_mode
from entropylab.losses.registry import register_regularizer
from entropylab.ops.masked import aggregate, masked_count, masked_mean, masked_sum

__all__ = ["entropy_sft_loss", "entropy_sft_mask", "tea_rl_entropy_loss", "tea_rl_weights"]

_sg = jax.lax.stop_gradient


def _valid(name, x, mask):
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: logp must be [B, T], got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: logp must be a floating array, got dtype {x.dtype}")
    m = jnp.asarray(mask)
    if m.shape != x.shape:
        raise ValueError(f"{name}: mask must have logp's shape {x.shape}, got {m.shape}")
    return x, (m if m.dtype == jnp.bool_ else m != 0)


def _same_shape(name, arg, x, shape):
    if x is None or jnp.shape(x) != shape:
        got = None if x is None else jnp.shape(x)
        raise ValueError(f"{name}: {arg} must have logp's shape {shape}, got {got}")
    return jnp.asarray(x)


def _probe(bad, x, axis_name):
    """0, or NaN where ``bad`` (gradient NaN there): an incoming NaN never becomes finite."""
    lp = jnp.where(bad, x, 0.0)
    poison = _sg(jnp.where(bad, jnp.nan, 0.0).astype(lp.dtype))
    p = jnp.sum((lp - _sg(lp)) * poison)
    return p if axis_name is None else jax.lax.psum(p, axis_name)


def entropy_sft_mask(
    logp, entropy, mask, *, token_ratio: float = 0.2, entropy_coef: float = 1.0, axis_name=None
) -> tuple[jax.Array, jax.Array]:
    """``(selected [B, T] bool, k)``: the ``k = max(⌊ρ·N⌋, 1)`` valid tokens with the largest
    ``δ = −logp − c·H`` over the (global) batch; no gradient. ``N = 0`` selects nothing."""
    if not 0 < token_ratio <= 1:
        raise ValueError(f"token_ratio must be in (0, 1], got {token_ratio}")
    if not entropy_coef >= 0:
        raise ValueError(f"entropy_coef must be >= 0, got {entropy_coef}")
    lp, valid = _valid("entropy_sft_mask", logp, mask)
    h = _same_shape("entropy_sft_mask", "entropy", entropy, lp.shape)
    delta = _sg(-lp - entropy_coef * h)
    n = masked_count(valid, axis_name=axis_name)
    k = jnp.maximum(count_floor(token_ratio, n), 1)
    return topk_mask(delta, valid, k, axis_name=axis_name), k


def entropy_sft_loss(
    logp,
    entropy,
    mask,
    *,
    token_ratio: float = 0.2,
    entropy_coef: float = 1.0,
    num_items=None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Light-IF Entropy-SFT: mean cross-entropy over the selected tokens (module docstring).

    Args:
      logp: ``[B, T]`` log-probability of each target token (differentiated).
      entropy: ``[B, T]`` full-vocabulary entropy at each target position (selection only).
      mask: ``[B, T]`` valid target tokens.
      token_ratio: ρ ∈ (0, 1] (release default 0.2). entropy_coef: c ≥ 0 (release 1.0).
      num_items: ``None`` → divide by k; a token count n → divide by ``⌊ρ·n⌋`` (the release's
        gradient-accumulation normaliser, ``int(num_items_in_batch · ρ)``).
    Returns:
      ``(loss, metrics)``: ``sft/ce_all``, ``sft/entropy_all``, ``sft/ce_sel``,
      ``sft/entropy_sel`` (means), ``sft/n_tokens``, ``sft/n_selected`` (the release's logs).
      A NaN log-prob or entropy at a valid token gives a NaN loss (and a NaN gradient there).
    """
    lp, valid = _valid("entropy_sft_loss", logp, mask)
    h = _same_shape("entropy_sft_loss", "entropy", entropy, lp.shape)
    sel, k = entropy_sft_mask(
        lp, h, valid, token_ratio=token_ratio, entropy_coef=entropy_coef, axis_name=axis_name
    )
    ce = -jnp.where(valid, lp, 0.0)
    ce_sum = masked_sum(ce, sel, axis_name=axis_name)
    if num_items is None:
        den = jnp.sum(_sg(sel).astype(jnp.int32))
        den = den if axis_name is None else jax.lax.psum(den, axis_name)
    else:
        den = count_floor(token_ratio, num_items)
    loss = ce_sum / jnp.maximum(den, 1).astype(ce_sum.dtype)
    bad = valid & (jnp.isnan(lp) | jnp.isnan(h))
    loss = loss + _probe(bad, lp, axis_name).astype(loss.dtype)
    hs = _sg(jnp.where(valid, h, 0.0))
    metrics = {
        "sft/ce_all": masked_mean(_sg(ce), valid, axis_name=axis_name),
        "sft/entropy_all": masked_mean(hs, valid, axis_name=axis_name),
        "sft/ce_sel": masked_mean(_sg(ce), sel, axis_name=axis_name),
        "sft/entropy_sel": masked_mean(hs, sel, axis_name=axis_name),
        "sft/n_tokens": masked_count(valid, axis_name=axis_name),
        "sft/n_selected": masked_count(sel, axis_name=axis_name),
    }
    return loss, metrics


def tea_rl_weights(
    logp, advantages, mask, *, cov_alpha: float = 10.0, clip_cov_ub: float = 5.0, axis_name=None
) -> jax.Array:
    """TEA-RL token weights ``w = clip(α·softmax_row(C), 0, u)`` ``[B, T]`` (0 off the mask).

    ``C = (A − mean A)(logp − mean sg(logp))`` with means over the valid tokens of the (global)
    batch; the softmax runs over each row's valid tokens. The gradient flows through ``logp``
    (as in the release). ``advantages`` ``[B]`` or ``[B, T]``.
    """
    if not cov_alpha >= 0:
        raise ValueError(f"cov_alpha must be >= 0, got {cov_alpha}")
    if not clip_cov_ub >= 0:
        raise ValueError(f"clip_cov_ub must be >= 0, got {clip_cov_ub}")
    lp, valid = _valid("tea_rl_weights", logp, mask)
    adv = jnp.asarray(advantages)
    if adv.shape in ((lp.shape[0],), (lp.shape[0], 1)):
        adv = jnp.broadcast_to(adv.reshape(lp.shape[0], 1), lp.shape)
    elif adv.shape != lp.shape:
        raise ValueError(
            f"tea_rl_weights: advantages must be [B] = ({lp.shape[0]},) or [B, T] = {lp.shape}, "
            f"got shape {adv.shape}"
        )
    adv = _sg(jnp.where(valid, adv, 0.0)).astype(lp.dtype)
    lp = jnp.where(valid, lp, 0.0)
    a_mean = masked_mean(adv, valid, axis_name=axis_name)
    l_mean = masked_mean(_sg(lp), valid, axis_name=axis_name)
    cov = (adv - a_mean) * (lp - l_mean)
    cov = jnp.where(valid, cov, -jnp.inf)
    row_any = jnp.any(valid, axis=-1, keepdims=True)
    cov = jnp.where(row_any, cov, 0.0)  # an empty row: finite logits, weight set to 0 below
    w = jax.nn.softmax(cov, axis=-1)
    w = jnp.clip(w * cov_alpha, 0.0, clip_cov_ub)
    return jnp.where(valid, w, 0.0)


@register_regularizer("tea_rl", entropy_source="current")
def tea_rl_entropy_loss(
    logp,
    advantages,
    entropy,
    mask,
    *,
    cov_alpha: float = 10.0,
    clip_cov_ub: float = 5.0,
    loss_agg_mode: str = "token-mean",
    loss_scale_factor: float | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Light-IF TEA-RL regulariser ``L = −agg(w ⊙ H)`` (to be added to the PG loss).

    Args:
      logp: ``[B, T]`` current log-probs (the weights' gradient flows through them).
      advantages: ``[B]`` or ``[B, T]``. entropy: ``[B, T]`` current-policy entropy (gradient).
      mask: ``[B, T]``. cov_alpha, clip_cov_ub: α and u of :func:`tea_rl_weights` (release 10, 5).
    Returns:
      ``(loss, metrics)``: ``entropy/tea_rl_weight`` (``agg(w)``, the release's
      ``entropy_loss_cov`` log), ``entropy/tea_rl_bonus`` (``agg(w ⊙ H)``). A NaN in ``logp``,
      ``advantages`` or ``entropy`` at a valid token gives a NaN loss.
    """
    check_loss_agg_mode(loss_agg_mode)
    lp, valid = _valid("tea_rl_entropy_loss", logp, mask)
    h = _same_shape("tea_rl_entropy_loss", "entropy", entropy, lp.shape)
    w = tea_rl_weights(
        lp, advantages, valid, cov_alpha=cov_alpha, clip_cov_ub=clip_cov_ub, axis_name=axis_name
    )
    h = jnp.where(valid, h, 0.0)
    kw = dict(loss_scale_factor=loss_scale_factor, axis_name=axis_name)
    bonus = aggregate(w * h, valid, loss_agg_mode, **kw)
    w_agg = aggregate(_sg(w), valid, loss_agg_mode, **kw)
    return -bonus, {"entropy/tea_rl_weight": w_agg, "entropy/tea_rl_bonus": _sg(bonus)}
