"""Advantage estimators: GRPO / Dr. GRPO group normalisation, RLOO, GAE (verl semantics).

Outcome estimators take one scalar reward per sequence ``rewards [B]`` and a grouping (the
responses sampled for the same prompt), given either as ``group_size`` (consecutive blocks of
``G`` rows, the usual layout: ``B = n_prompts · G``) or as integer ``group_ids [B]`` (any order,
any group sizes). With ``mask [B, T]`` the sequence advantage is broadcast over the response
tokens (``A[:, None] · m``, verl's ``scores.unsqueeze(-1) * response_mask``); without it the
result is ``[B]``.

Distributed: with ``group_size`` every group must lie on one device (shard the batch in whole
groups); ``axis_name`` is not needed. With ``group_ids`` and ``axis_name`` the ids and rewards
are all-gathered, so groups may be split across devices and each device still gets the global
group statistics for its rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from entropylab.ops.masked import masked_whiten

__all__ = [
    "broadcast_to_tokens",
    "dr_grpo_advantages",
    "gae_advantages",
    "grpo_advantages",
    "rloo_advantages",
]


def broadcast_to_tokens(seq_values, mask) -> jax.Array:
    """``A[:, None] · m``: a per-sequence value ``[B]`` on every response token ``[B, T]``."""
    seq_values = jnp.asarray(seq_values)
    m = jnp.asarray(mask)
    if seq_values.ndim != 1 or m.ndim != 2 or m.shape[0] != seq_values.shape[0]:
        raise ValueError(
            f"expected seq values [B] and mask [B, T], got {seq_values.shape} and {m.shape}"
        )
    return jnp.where(m != 0, seq_values[:, None], jnp.zeros((), seq_values.dtype))


def _group_stats(rewards, group_ids, group_size, axis_name):
    """Per-row group ``(sum, sum of squares about the mean, count)`` of the row's group."""
    r = jnp.asarray(rewards)
    if r.ndim != 1:
        raise ValueError(f"rewards must be [B] (one scalar per sequence), got shape {r.shape}")
    if not jnp.issubdtype(r.dtype, jnp.floating):
        r = r.astype(jnp.float32)
    if (group_ids is None) == (group_size is None):
        raise ValueError("give exactly one of group_ids [B] or group_size (int)")
    if group_size is not None:
        g = int(group_size)
        if g < 1 or r.shape[0] % g:
            raise ValueError(
                f"group_size must be >= 1 and divide the batch size {r.shape[0]}, got {group_size}"
            )
        rg = r.reshape(-1, g)
        n = jnp.full(rg.shape, g, r.dtype)
        mean = jnp.broadcast_to(jnp.mean(rg, axis=1, keepdims=True), rg.shape)
        ss = jnp.broadcast_to(jnp.sum(jnp.square(rg - mean), axis=1, keepdims=True), rg.shape)
        return r, mean.reshape(-1), ss.reshape(-1), n.reshape(-1)
    ids = jnp.asarray(group_ids)
    if ids.shape != r.shape:
        raise ValueError(f"group_ids must have the shape of rewards {r.shape}, got {ids.shape}")
    all_ids, all_r = ids, r
    if axis_name is not None:
        all_ids = jax.lax.all_gather(ids, axis_name, tiled=True)
        all_r = jax.lax.all_gather(r, axis_name, tiled=True)
    same = ids[:, None] == all_ids[None, :]  # [B_local, B_global]
    n = jnp.sum(same, axis=1).astype(r.dtype)
    mean = jnp.sum(jnp.where(same, all_r[None, :], 0), axis=1) / n
    ss = jnp.sum(jnp.where(same, jnp.square(all_r[None, :] - mean[:, None]), 0), axis=1)
    return r, mean, ss, n


def _finish(adv, mask):
    return adv if mask is None else broadcast_to_tokens(adv, mask)


def grpo_advantages(
    rewards,
    group_ids=None,
    *,
    group_size: int | None = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
    mask=None,
    axis_name=None,
) -> jax.Array:
    """GRPO outcome advantage ``A_i = (R_i − mean_g R) / (std_g R + eps)`` (verl semantics).

    ``std`` is the unbiased (n − 1) standard deviation (``torch.std``). A group with one member
    uses mean 0 and std 1, as verl does, so its advantage is ``R_i / (1 + eps)`` (not 0).
    ``norm_by_std=False`` gives Dr. GRPO's ``A_i = R_i − mean_g R`` (verl
    ``norm_adv_by_std_in_grpo=False``; a singleton group keeps ``R_i``).

    Shapes: ``rewards [B]``, ``group_ids [B]`` ints or ``group_size`` G with ``B % G == 0``;
    ``mask [B, T]`` optional. Returns ``[B]``, or ``[B, T]`` (zero off the mask) with ``mask``.

    References: DeepSeekMath/GRPO arXiv:2402.03300; Dr. GRPO arXiv:2503.20783; verl
    ``core_algos.compute_grpo_outcome_advantage``.
    """
    r, mean, ss, n = _group_stats(rewards, group_ids, group_size, axis_name)
    single = n <= 1
    mean = jnp.where(single, 0.0, mean)
    if norm_by_std:
        std = jnp.where(single, 1.0, jnp.sqrt(ss / jnp.where(single, 1.0, n - 1)))
        adv = (r - mean) / (std + eps)
    else:
        adv = r - mean
    return _finish(adv, mask)


def dr_grpo_advantages(
    rewards, group_ids=None, *, group_size=None, mask=None, axis_name=None
) -> jax.Array:
    """Dr. GRPO advantage ``A_i = R_i − mean_g R`` (no std division).

    Same as ``grpo_advantages(..., norm_by_std=False)``. Pair it with
    ``loss_agg_mode="seq-mean-token-sum-norm"`` and a constant ``loss_scale_factor``.

    References: Dr. GRPO arXiv:2503.20783.
    """
    return grpo_advantages(
        rewards,
        group_ids,
        group_size=group_size,
        norm_by_std=False,
        mask=mask,
        axis_name=axis_name,
    )


def rloo_advantages(
    rewards, group_ids=None, *, group_size=None, mask=None, axis_name=None
) -> jax.Array:
    """RLOO leave-one-out baseline ``A_i = R_i − Σ_{j≠i} R_j / (n − 1)`` within each group.

    Equivalently ``n/(n−1)·(R_i − mean_g R)`` (verl's form). A group with one member has no
    baseline: ``A_i = R_i`` (verl). Shapes as :func:`grpo_advantages`.

    References: RLOO arXiv:2402.14740 (Ahmadian et al.); Kool et al. 2019; verl
    ``core_algos.compute_rloo_outcome_advantage``.
    """
    r, mean, _, n = _group_stats(rewards, group_ids, group_size, axis_name)
    single = n <= 1
    scale = n / jnp.where(single, 1.0, n - 1)
    adv = jnp.where(single, r, (r - mean) * scale)
    return _finish(adv, mask)


def gae_advantages(
    rewards,
    values,
    mask,
    *,
    gamma: float = 1.0,
    lam: float = 1.0,
    whiten: bool = True,
    axis_name=None,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation over the response tokens (verl ``gae``).

    Backward over t (reverse ``lax.scan``), skipping positions with ``m_t = 0`` (their value and
    TD error do not enter, so the recursion jumps from one valid token to the next)::

        δ_t     = r_t + γ·V_next − V_t
        Â_t     = δ_t + γ·λ·Â_next                  (used only where m_t = 1)
        V_next  ← V_t if m_t else V_next;   Â_next ← Â_t if m_t else Â_next
        returns = Â + V

    With ``whiten=True`` (verl always whitens) the advantages are then whitened over the masked
    tokens of the (global, with ``axis_name``) batch: ``(Â − mean)/√(var + 1e-8)``, unbiased var.
    Returns are not whitened.

    Shapes: ``rewards, values, mask [B, T]`` (token-level rewards, usually the score on the last
    token). Returns ``(advantages [B, T], returns [B, T])``, zero off the mask (verl leaves the
    carried values at masked positions; they are never used by a masked loss).

    References: GAE arXiv:1506.02438; verl ``core_algos.compute_gae_advantage_return``.
    """
    rewards = jnp.asarray(rewards)
    values = jnp.asarray(values)
    m = jnp.asarray(mask) != 0
    if rewards.ndim != 2 or values.shape != rewards.shape or m.shape != rewards.shape:
        raise ValueError(
            "rewards, values, mask must all be [B, T], got "
            f"{rewards.shape}, {values.shape}, {jnp.shape(mask)}"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    dtype = jnp.result_type(rewards.dtype, values.dtype, jnp.float32)
    rewards = jnp.where(m, rewards, 0).astype(dtype)
    values = jnp.where(m, values, 0).astype(dtype)

    def step(carry, xs):
        next_v, next_a = carry
        r_t, v_t, m_t = xs
        delta = r_t + gamma * next_v - v_t
        a_t = delta + gamma * lam * next_a
        next_v = jnp.where(m_t, v_t, next_v)
        next_a = jnp.where(m_t, a_t, next_a)
        return (next_v, next_a), next_a

    zeros = jnp.zeros_like(rewards[:, 0])  # inherits the shard_map varying type of the batch
    xs = (rewards.T, values.T, m.T)
    _, adv_t = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
    adv = adv_t.T
    returns = jnp.where(m, adv + values, 0)
    if whiten:
        adv = masked_whiten(adv, m, axis_name=axis_name)
    else:
        adv = jnp.where(m, adv, 0)
    return adv, returns
