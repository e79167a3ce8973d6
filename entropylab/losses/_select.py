"""Global-batch token selection helpers shared by Clip-Cov, KL-Cov and forking tokens (private).

Every selection is made on the *global* batch: with ``axis_name`` the per-device ``[B, T]``
arrays are all-gathered (as replicated values) into ``[D·B, T]``, the selection is computed
identically on every device, and each device keeps its own ``[B, T]`` slice. The result
equals one device holding the concatenated batch (shard order = device index order, as in
``shard_map`` / ``pmap``). Selections carry no gradient.
"""

from __future__ import annotations

from fractions import Fraction

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


_I32_MAX = 2**31 - 1


def _rational(frac) -> tuple[int, int]:
    """``frac`` (a concrete number in [0, 1]) as a reduced fraction ``p/q`` with ``q < 2^31``.

    The shortest decimal spelling of the float is used when its denominator fits (``0.2`` →
    1/5, ``2e-3`` → 1/500, any value with ≤ 9 decimals), else the closest fraction with
    ``q < 2^31`` (``1/3`` → 1/3)."""
    try:
        f = float(frac)
    except (TypeError, jax.errors.ConcretizationTypeError) as e:
        raise TypeError(
            f"frac must be a concrete number (a static hyper-parameter), got {frac!r}"
        ) from e
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"frac must be in [0, 1], got {frac}")
    r = Fraction(repr(f))
    if r.denominator > _I32_MAX:
        r = Fraction(f).limit_denominator(_I32_MAX)
    return r.numerator, r.denominator


def _floor_div_mul(n, frac):
    """``(⌊n·p/q⌋, (n·p) mod q ≠ 0)`` in exact uint32 arithmetic for ``0 ≤ n < 2^31``.

    ``n = a·q + r`` gives ``n·p/q = a·p + r·p/q``; ``⌊r·p/q⌋`` (r, p < q < 2^31) is built bit by
    bit over the static ``p`` (binary long multiplication modulo q): every intermediate stays
    below ``2q < 2^32``, so nothing overflows and no float is involved.
    """
    p, q = _rational(frac)
    x = jnp.asarray(n)
    if jnp.issubdtype(x.dtype, jnp.floating):
        x = jnp.round(x)
    x = jnp.clip(x, 0, _I32_MAX).astype(jnp.uint32)
    if p == q:
        return x.astype(jnp.int32), jnp.zeros(x.shape, bool)
    uq = jnp.uint32(q)
    a, r = x // uq, x % uq
    quo = jnp.zeros_like(x)
    rem = jnp.zeros_like(x)
    for bit in bin(p)[2:] if p else "":
        quo, rem = quo * 2, rem * 2  # rem < q ≤ 2^31 - 1 → 2·rem < 2^32
        c = rem >= uq
        quo, rem = quo + c.astype(jnp.uint32), jnp.where(c, rem - uq, rem)
        if bit == "1":
            rem = rem + r  # < 2q
            c = rem >= uq
            quo, rem = quo + c.astype(jnp.uint32), jnp.where(c, rem - uq, rem)
    return (a * jnp.uint32(p) + quo).astype(jnp.int32), rem != 0


def count_floor(frac, n):
    """``⌊frac·n⌋`` as int32, integer-exact for any count ``0 ≤ n < 2^31``.

    ``frac`` is a static number in [0, 1], read as the fraction it spells (:func:`_rational`);
    ``n`` may be traced (int or float holding an integer). The product is never formed in
    floating point, so ``count_floor(0.2, 10**7) == 2_000_000`` and
    ``count_floor(0.2, 2**30) == 214_748_364`` (float32 gives 214_748_368)."""
    return _floor_div_mul(n, frac)[0]


def count_ceil(frac, n):
    """``⌈frac·n⌉`` as int32, integer-exact for any count ``0 ≤ n < 2^31`` (see
    :func:`count_floor`): ``count_ceil(0.2, 10**7) == 2_000_000``."""
    fl, inexact = _floor_div_mul(n, frac)
    return fl + inexact.astype(jnp.int32)


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
