"""ETTRL: entropy-based advantage reshaping (EAR) and majority-vote rewards for test-time RL.

Test-time RL (TTRL) has no labels: the pseudo-label of a prompt is the majority answer of its G
samples, and a sample's reward is 1 if its answer matches it (:func:`majority_vote_rewards`).
Early in training the majority is often wrong and confidently so; EAR reshapes the advantages
with the responses' entropy to counter this over-confidence.

**Choice made (no formula available).** The exact EAR formula of arXiv:2508.11356 could not be
retrieved (no public code; only the abstract was readable). We implement the mechanism the
abstract describes as a group-relative response-entropy weight::

    H̄_i = mean_t H_{i,t}                          response entropy (valid tokens)
    w_i = clip((H̄_i / mean_{j∈g(i)} H̄_j)^κ, w_min, w_max)
    Â_i = w_i · A_i     for A_i > 0 (``apply_to="positive"``, default), or for every i ("all")

Confident (low-entropy) agreeing responses get a smaller push, uncertain ones a larger one, so
the policy is not sharpened around a possibly wrong pseudo-label; negative advantages are left
alone by default. κ = 1, [w_min, w_max] = [0.5, 2.0] are our defaults, not the paper's. The
Entropy-fork Tree Majority Rollout (ETMR) is a sampler feature and is not here.

References: arXiv:2508.11356 (ETTRL); TTRL arXiv:2504.16084.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.losses.registry import register_advantage_shaper

__all__ = ["ettrl_advantages", "majority_vote_rewards", "response_entropy"]

_APPLY = ("positive", "all")


def response_entropy(entropy, mask) -> jax.Array:
    """Mean token entropy of each response: ``[B, T]`` → ``[B]`` (0 for an empty row)."""
    h = jnp.asarray(entropy)
    m = jnp.asarray(mask) != 0
    n = jnp.sum(m, -1)
    s = jnp.sum(jnp.where(m, h, 0.0), -1)
    return jnp.where(n > 0, s / jnp.maximum(n, 1).astype(s.dtype), 0.0)


def majority_vote_rewards(answers, *, group_size: int, valid=None) -> tuple[jax.Array, jax.Array]:
    """TTRL pseudo-label rewards: 1 where a sample's answer equals its group's majority answer.

    Args:
      answers: ``[B]`` integer answer ids (B = groups × ``group_size``, consecutive groups).
      valid: optional ``[B]`` bool; invalid samples (no parsable answer) neither vote nor score.
    Returns:
      ``(rewards [B] float32, majority [B // group_size] int)``; ties go to the smallest answer
      id among the most frequent ones; a group with no valid sample has majority −1.

    TTRL's majority vote (arXiv:2504.16084); not checked against released code (the tie rule is
    ours).
    """
    a = jnp.asarray(answers)
    if a.ndim != 1 or group_size < 1 or a.shape[0] % group_size:
        raise ValueError(f"answers must be [B] with B a multiple of group_size={group_size}")
    v = jnp.ones(a.shape, bool) if valid is None else jnp.asarray(valid) != 0
    g = a.reshape(-1, group_size)
    vg = v.reshape(-1, group_size)
    same = (g[:, :, None] == g[:, None, :]) & vg[:, None, :] & vg[:, :, None]
    votes = jnp.sum(same, -1)  # [G, n]: how many valid samples share sample j's answer
    best = jnp.max(votes, -1, keepdims=True)
    big = jnp.iinfo(jnp.int32).max
    cand = jnp.where(vg & (votes == best), g.astype(jnp.int32), big)
    maj = jnp.min(cand, -1)
    maj = jnp.where(jnp.any(vg, -1), maj, -1)
    rew = (vg & (g == maj[:, None])).astype(jnp.float32).reshape(-1)
    return rew, maj


def ettrl_advantages(
    advantages,
    entropy,
    mask,
    *,
    group_size: int,
    kappa: float = 1.0,
    w_min: float = 0.5,
    w_max: float = 2.0,
    apply_to: str = "positive",
    eps: float = 1e-8,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Entropy-based Advantage Reshaping (our formulation; see the module docstring).

    Args:
      advantages: ``[B, T]`` (sequence advantages broadcast over tokens) or ``[B]``.
      entropy, mask: ``[B, T]`` token entropies (of π_old) and response mask.
      group_size: G; groups are consecutive rows (they live on one device: no ``axis_name``).
    Returns:
      ``(Â, metrics)`` with Â of the shape of ``advantages``; no gradient through entropy.

    Released code: none exists for ETTRL (arXiv:2508.11356); the formula is ours (module
    docstring) and is tested against hand-worked numbers.
    """
    if apply_to not in _APPLY:
        raise ValueError(f"apply_to must be one of {_APPLY}, got {apply_to!r}")
    if not 0 < w_min <= 1.0 <= w_max:
        raise ValueError(f"need 0 < w_min <= 1 <= w_max, got w_min={w_min}, w_max={w_max}")
    adv = jnp.asarray(advantages)
    hbar = jax.lax.stop_gradient(response_entropy(entropy, mask))
    b = hbar.shape[0]
    if group_size < 1 or b % group_size:
        raise ValueError(f"group_size must be >= 1 and divide B={b}, got {group_size}")
    hv = (jnp.sum(jnp.asarray(mask) != 0, -1) > 0).reshape(-1, group_size)
    hg = hbar.reshape(-1, group_size)
    cnt = jnp.sum(hv, -1, keepdims=True)
    gmean = jnp.sum(jnp.where(hv, hg, 0.0), -1, keepdims=True) / jnp.maximum(cnt, 1)
    ratio = jnp.where((gmean > eps) & hv, hg / jnp.where(gmean > eps, gmean, 1.0), 1.0)
    w = jnp.clip(jnp.power(jnp.maximum(ratio, eps), kappa), w_min, w_max).reshape(-1)
    w = jnp.where(jnp.isfinite(w), w, 1.0)
    wb = w[:, None] if adv.ndim == 2 else w
    seq_pos = adv > 0
    scaled = jnp.where(seq_pos, adv * wb, adv) if apply_to == "positive" else adv * wb
    return scaled.astype(adv.dtype), {
        "ettrl/weight_mean": jnp.mean(w),
        "ettrl/response_entropy_mean": jnp.mean(hbar),
    }


# ------------------------------------------------------------------ objective registration
_ETTRL_SOURCES = {"current": "entropy", "old": "old_entropy"}


def _ettrl_component(inputs, ctx, *, entropy_source="old", **kw):
    """ETTRL entropy-based advantage reshaping with the responses' (rollout) entropy."""
    field = _ETTRL_SOURCES[entropy_source]
    h = getattr(inputs, field)
    if h is None:
        raise ValueError(
            f"advantage_shaper 'ettrl' with entropy_source={entropy_source!r} needs inputs.{field}"
        )
    adv, m = ettrl_advantages(inputs.advantages, h, inputs.mask, **kw)
    if ctx.axis_name is not None:  # group-local metrics → global means (equal local batches)
        m = {k: jax.lax.pmean(v, ctx.axis_name) for k, v in m.items()}
    return adv, m


def _validate_ettrl(kw):
    if kw.get("entropy_source", "old") not in _ETTRL_SOURCES:
        got = kw["entropy_source"]
        raise ValueError(f"entropy_source must be one of {tuple(_ETTRL_SOURCES)}, got {got!r}")


register_advantage_shaper(
    "ettrl",
    _ettrl_component,
    accepts=frozenset({"group_size", "kappa", "w_min", "w_max", "apply_to", "eps"})
    | {"entropy_source"},
    required=("group_size",),
    needs=lambda kw: (_ETTRL_SOURCES.get(kw.get("entropy_source", "old"), "old_entropy"),),
    validate=_validate_ettrl,
)
