"""Global-batch token selection helpers shared by Clip-Cov, KL-Cov and forking tokens (private).

Every selection is made on the *global* batch: with ``axis_name`` the per-device ``[B, T]``
arrays are all-gathered (as replicated values) into ``[D·B, T]``, the selection is computed
identically on every device, and each device keeps its own ``[B, T]`` slice. The result
equals one device holding the concatenated batch (shard order = device index order, as in
``shard_map`` / ``pmap``). Selections carry no gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def gather_global(x, axis_name):
    """``[B, ...]`` → ``[D·B, ...]`` replicated (identity without ``axis_name``)."""
    if axis_name is None:
        return x
    return jax.lax.all_gather(x, axis_name, tiled=True, to="invarying")


def local_slice(g, local_batch: int, axis_name):
    """This device's ``[B, ...]`` rows of a gathered ``[D·B, ...]`` array."""
    if axis_name is None:
        return g
    start = jax.lax.axis_index(axis_name) * local_batch
    return jax.lax.dynamic_slice_in_dim(g, start, local_batch, axis=0)


def count_floor(frac, n):
    """``floor(frac·n)`` robust to float rounding of the product (n ≥ 0 traced)."""
    return jnp.floor(frac * n * (1.0 + 1e-6) + 1e-6).astype(jnp.int32)


def count_ceil(frac, n):
    """``ceil(frac·n)`` robust to float rounding of the product."""
    return jnp.ceil(frac * n * (1.0 - 1e-6) - 1e-6).astype(jnp.int32)


def topk_mask(scores, valid, k, *, axis_name=None):
    """Mask of the ``k`` valid tokens with the largest ``scores`` over the global batch.

    Ties are broken by the lower global flat index (as ``jax.lax.top_k`` / ``torch.topk``
    on the flattened valid tokens). ``k`` may be traced; ``k ≥ #valid`` selects all valid.

    Args: scores ``[B, T]`` float; valid ``[B, T]`` bool; k int scalar.
    Returns: bool ``[B, T]`` (this device's slice).
    """
    scores = jax.lax.stop_gradient(jnp.asarray(scores))
    b = scores.shape[0]
    gs = gather_global(scores, axis_name)
    gv = gather_global(jnp.asarray(valid, bool), axis_name)
    s = gs.reshape(-1)
    v = gv.reshape(-1)
    s = jnp.where(v & ~jnp.isnan(s), s, -jnp.inf)
    # Primary key: invalid last; secondary: descending score; stable → lower index first.
    order = jnp.lexsort((-s, ~v))
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
    sel = (rank < k) & v
    return local_slice(sel.reshape(gs.shape), b, axis_name)


def random_subset_mask(candidates, n, key, *, axis_name=None):
    """Uniformly random subset of ``min(n, #candidates)`` global candidate tokens.

    Each global token position gets ``u ~ U(0, 1)`` from ``key`` (the same key on every
    device); the ``n`` candidates with the smallest ``u`` are chosen — a uniformly random
    subset (as ``torch.randperm`` over the candidate list). Deterministic given ``key`` and
    the global batch, whatever the device split.
    """
    candidates = jnp.asarray(candidates, bool)
    gshape = gather_global(candidates, axis_name).shape
    u = jax.random.uniform(key, gshape, jnp.float32)
    u = local_slice(u, candidates.shape[0], axis_name)
    return topk_mask(-u, candidates, n, axis_name=axis_name)
