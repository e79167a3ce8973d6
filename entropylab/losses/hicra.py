"""HICRA (Hierarchy-Aware Credit Assignment): amplify the advantage on planning tokens.

Paper::

    Â_{i,t} = A_{i,t} + α · |A_{i,t}|     on planning tokens,   A_{i,t} elsewhere    (α = 0.2)

i.e. positive advantages ×(1 + α), negative ones ×(1 − α) on planning tokens. The paper's planning
tokens are the tokens inside "strategic grams" (clustered n-grams; a data-side step outside the
loss: pass them as ``planning_mask``). Without a planning mask the high-entropy tokens of each
response stand in for them (the port's proxy, :func:`hicra_planning_mask`): per response the
threshold is the entropy at ascending rank ``⌊(1 − ρ)·n_i⌋`` of its ``n_i`` valid tokens
(ρ = ``entropy_top_ratio`` = 0.3) and the tokens strictly above it are selected (about the top
ρ − 1/n_i of the response).

Port option (``correct_and_long_only=True``), the rule of the TRL port that states it follows the
authors' VeRL code: within each group that has a correct response, a response is *amplified*
if its mean advantage is > 0 and its length exceeds the group's mean length (all responses).
Without ``planning_mask`` the high-entropy tokens of amplified responses get ``A·(1 + α)``; with
``planning_mask`` the tokens that are high-entropy-in-an-amplified-response **or** planning
tokens (of any response of such a group) get ``A·(1 + α·sign(A))``.

Released code: the official repository (``TIGER-AI-Lab/Hierarchical-Reasoner`` @ 964c429) holds
only a README. Checked against the port ``huggingface/trl`` @ 4915fb2
``trl/trainer/hicra_trainer.py`` (``_topk_threshold``, ``modify_advantages_hicra``), with two
differences: the port computes ``int((1 − k)·n)`` in floating point, which is one lower for
some lengths (n = 90, 170, 180, … at k = 0.3); here the rank is integer-exact. And the port's
chained boolean indexing ``advantages[group][mask] *= …`` writes into a copy (a no-op in
PyTorch); here the evident intent is applied.

:func:`semantic_entropy` is the paper's "strategic exploration" metric: the Shannon entropy of
the strategic-gram frequency distribution.

References: arXiv:2509.03646.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.losses._select import count_floor
from entropylab.losses.registry import register_advantage_shaper
from entropylab.ops.masked import masked_count, masked_mean

__all__ = ["hicra_advantages", "hicra_planning_mask", "semantic_entropy"]


def hicra_planning_mask(entropy, mask, *, entropy_top_ratio: float = 0.3) -> jax.Array:
    """Per-sequence high-entropy tokens: ``H_{i,t} > thr_i``, ``thr_i`` the valid entropy at
    ascending rank ``⌊(1 − ρ)·n_i⌋`` (clamped to ``n_i − 1``).

    Shapes: ``[B, T]`` → bool ``[B, T]`` (False on masked tokens and on empty rows). Per-sequence
    statistic, so there is no ``axis_name``. Checked against ``_topk_threshold`` and
    ``normalized_entropies > 0`` in ``huggingface/trl`` @ 4915fb2
    ``trl/trainer/hicra_trainer.py`` (module docstring for the one difference).
    """
    if not 0.0 < entropy_top_ratio <= 1.0:
        raise ValueError(f"entropy_top_ratio must be in (0, 1], got {entropy_top_ratio}")
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    m = jnp.asarray(mask) != 0
    n = jnp.sum(m, -1).astype(jnp.int32)
    idx = jnp.clip(count_floor(1.0 - entropy_top_ratio, n), 0, jnp.maximum(n - 1, 0))
    asc = jnp.sort(jnp.where(m, h, jnp.inf), axis=-1)
    thr = jnp.take_along_axis(asc, idx[:, None], axis=-1)
    return m & (h > thr) & (n > 0)[:, None]


def hicra_advantages(
    advantages,
    mask,
    *,
    planning_mask=None,
    entropy=None,
    alpha: float = 0.2,
    entropy_top_ratio: float = 0.3,
    correct_and_long_only: bool = False,
    group_size: int | None = None,
    axis_name=None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """HICRA advantages ``Â = A + α|A|`` on planning tokens (see the module docstring).

    Args:
      advantages, mask: ``[B, T]``.
      planning_mask: ``[B, T]`` planning (strategic-gram) tokens; if None, ``entropy`` is used.
      entropy: ``[B, T]`` token entropy for the high-entropy proxy.
      correct_and_long_only: the port's rule (module docstring); needs ``group_size``
        (consecutive rows).
    Returns:
      ``(Â [B, T], metrics)``; metrics ``hicra/planning_token_ratio``,
      ``hicra/planning_advantage_mean``, ``hicra/execution_advantage_mean`` (global over
      ``axis_name``). Â has no gradient path through entropy or masks.

    The paper rule has no released code (``TIGER-AI-Lab/Hierarchical-Reasoner`` @ 964c429 is
    README-only); the port rule is checked against ``modify_advantages_hicra`` of
    ``huggingface/trl`` @ 4915fb2 ``trl/trainer/hicra_trainer.py``.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    adv = jnp.asarray(advantages)
    m = jnp.asarray(mask) != 0
    if adv.ndim != 2 or adv.shape != m.shape:
        raise ValueError(f"advantages and mask must be [B, T] of one shape, got {adv.shape}")
    if planning_mask is None and entropy is None:
        raise ValueError("hicra_advantages needs planning_mask or entropy")
    if planning_mask is not None:
        plan = (jnp.asarray(planning_mask) != 0) & m
    else:
        plan = hicra_planning_mask(entropy, m, entropy_top_ratio=entropy_top_ratio)
    if correct_and_long_only:
        if group_size is None or group_size < 1 or adv.shape[0] % group_size:
            raise ValueError(
                f"correct_and_long_only needs group_size dividing B={adv.shape[0]}, "
                f"got {group_size}"
            )
        n = jnp.sum(m, -1).astype(jnp.float32)
        mean_len = jnp.repeat(jnp.mean(n.reshape(-1, group_size), -1), group_size)
        seq_adv = jnp.sum(jnp.where(m, adv, 0), -1) / jnp.maximum(n, 1.0)
        correct = seq_adv > 0
        group_ok = jnp.repeat(jnp.any(correct.reshape(-1, group_size), -1), group_size)
        amplify = correct & (n > mean_len)
        if entropy is not None:
            high = hicra_planning_mask(entropy, m, entropy_top_ratio=entropy_top_ratio)
            high = high & amplify[:, None]
        else:
            high = jnp.zeros_like(m)
        if planning_mask is None:
            plan = high
            out = jnp.where(plan, adv * (1.0 + alpha), adv)
        else:
            plan = (high | plan) & group_ok[:, None]
            out = jnp.where(plan, adv * (1.0 + alpha * jnp.sign(adv)), adv)
    else:
        out = jnp.where(plan, adv + alpha * jnp.abs(adv), adv)
    f = jnp.result_type(adv.dtype, jnp.float32)
    n_plan = masked_count(plan, axis_name=axis_name, dtype=f)
    n_all = masked_count(m, axis_name=axis_name, dtype=f)
    metrics = {
        "hicra/planning_token_ratio": jnp.where(n_all > 0, n_plan / jnp.maximum(n_all, 1), 0.0),
        "hicra/planning_advantage_mean": masked_mean(out, plan, axis_name=axis_name),
        "hicra/execution_advantage_mean": masked_mean(out, m & ~plan, axis_name=axis_name),
    }
    return out, metrics


def semantic_entropy(counts, *, axis_name=None) -> jax.Array:
    """Shannon entropy (nats) of a frequency distribution ``counts [K]`` (e.g. strategic grams).

    ``H = −Σ_k p_k log p_k``, ``p = counts / Σ counts``; zero counts contribute 0; all-zero → 0.
    With ``axis_name`` the counts are summed across devices first.

    No released code computes it from the authors (README-only repository); the TRL port logs
    the same quantity as ``hicra/semantic_entropy``.
    """
    c = jnp.asarray(counts)
    c = c.astype(jnp.result_type(c.dtype, jnp.float32))
    if axis_name is not None:
        c = jax.lax.psum(c, axis_name)
    tot = jnp.sum(c)
    p = c / jnp.where(tot > 0, tot, 1.0)
    pos = p > 0
    return -jnp.sum(jnp.where(pos, p * jnp.log(jnp.where(pos, p, 1.0)), 0.0))


# ------------------------------------------------------------------ objective registration
# Bound by name: ``planning_mask`` from ``inputs.extras`` if given (it wins), else the
# per-response top-ρ tokens of the entropy picked by ``entropy_source`` (default: rollout).
register_advantage_shaper(
    "hicra",
    hicra_advantages,
    extras=("planning_mask",),
    entropy_source="old",
    needs=lambda kw: (
        ("entropy" if kw.get("entropy_source", "old") == "current" else "old_entropy")
        + "|extras.planning_mask",
    ),
)
