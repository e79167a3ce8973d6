"""Fused unembedding → log-prob + entropy, streamed over vocabulary blocks (no ``[N, V]`` logits).

For hidden states ``h`` and an unembedding ``W`` the logits are ``z = (h W) / T``. Per row we keep
streaming accumulators over vocabulary blocks of width ``vocab_block``:

    m = max_v z_v,   s = Σ_v e^(z_v − m),   t = Σ_v e^(z_v − m)(z_v − m),   z_y,

rescaled exactly when the running max grows (s ← α s, t ← α (t + (m − m') s), α = e^(m − m')).
Then

    lse = m + log s,   log π(y) = z_y − lse,   H = log s − t/s,   μ = E_p[z] = m + t/s.

The backward (``jax.custom_vjp``) saves only ``m``, ``log s`` and ``t/s`` (three floats per row;
kept apart rather than summed into lse and μ so that z − μ = (z − m) − t/s stays exact at large
|z|) and recomputes each block: with p = e^(z − m − log s),

    dz = g_lp (onehot_y − p) − g_H p (z − μ),   dh = (dz/T) Wᵀ,   dW = hᵀ (dz/T),

accumulated block by block (``lax.fori_loop`` over vocabulary blocks, optionally inside a loop over
token chunks of ``chunk_size`` rows). So forward and backward hold ``O(chunk · vocab_block)``
temporaries instead of several ``N × V`` buffers.

Three forward formulations (``impl``), same residuals, same backward:

* ``"stream"`` — the running accumulators above, carried across blocks (a sequential dependency:
  block b's update needs the max of blocks < b).
* ``"parallel"`` — each block b computes its own partials with its own max m_b,
  s_b = Σ e^(z − m_b), t_b = Σ e^(z − m_b)(z − m_b), z_y (``lax.map`` over block indices,
  ``block_group`` blocks per step as one batched computation), and one reduction over the block
  axis combines them: m = max_b m_b, s = Σ_b e^(m_b − m) s_b, t = Σ_b e^(m_b − m)(t_b + (m_b − m)
  s_b). No block waits for another; the extra memory is four ``[n_blocks, chunk]`` floats.
* ``"pallas"`` — the same per-block partials from a Pallas kernel
  (:mod:`entropylab.ops.pallas_fused`) over a tokens × vocabulary grid (every cell independent;
  logits exist one ``[token_block, vocab_block]`` tile at a time), then the same combination.
  The backward is the XLA one above (no Pallas backward kernel yet). Tested on CPU in interpret
  mode and lowered for CUDA/TPU in the tests; on an H200, with its tuned default tile, its
  forward is correct and 2.0× dense's, fwd + bwd 2.0× dense against 1.53× for ``"parallel"``
  (``bench/README.md``), so it is opt-in.

``impl=None`` picks by backend (:func:`default_impl`): ``"stream"`` on CPU (the XLA two are
within measurement noise there, see ``bench/README.md``), ``"parallel"`` on GPU/TPU. On an H200
at N 8192 × D 1024 × V 131072 its forward is 1.16× the dense forward, and forward + backward
1.52× dense (``stream`` 1.55×), at 1/30 of dense's temporary memory: the recompute costs a 4th
vocabulary matmul against dense's 3, so a fused formulation can only win where dense is bound by
its ``N × V`` memory traffic. Not yet timed on a TPU.

Inside ``jax.shard_map(check_vma=True)`` the loop carries are typed like the local batch
(:func:`_vma_zero`) and an unvarying ``W`` is cast to the batch's varying type before the
``custom_vjp`` (:func:`_common_vma`), so ``dW`` is all-reduced by autodiff exactly as in the
dense path.

``-inf`` logits (a masked vocabulary entry) get p = 0 and contribute exactly 0 to H and to dz
(products are guarded, no 0·∞); only inputs that are themselves ±inf can produce them.

Numerics: matmuls accumulate in float32 (``preferred_element_type``); the temperature divides
*after* the upcast; the max uses the ``-inf`` identity (shift-invariant for all-negative logits);
a ragged last block (V not a multiple of ``vocab_block``) is an overlapping block ending at V whose
already-seen columns are masked to ``-inf``, and a ragged last token chunk likewise overlaps and
masks its already-done rows out of ``dW`` — nothing is padded or copied.

Design follows verl's ``linear_cross_entropy`` (saved residuals: max/sum-exp/Σp·z) and levanter's
blockwise cross-entropy (vocab-block ``fori_loop``, recomputing backward), extended with entropy.

References: arXiv:2411.09009 (Cut Cross-Entropy: never materialise logits); arXiv:2505.22617
(token entropy as the tracked quantity); verl ``verl/utils/kernel/linear_cross_entropy.py``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32


def _check_positive_int(name, value, allow_none=False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        allowed = "a positive int or None" if allow_none else "a positive int"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _acc_dtype(*xs):
    """float32, or float64 when an input is float64 (x64 mode)."""
    return jnp.promote_types(jnp.result_type(*xs), _F32)


def _vma_zero(dtype, *refs):
    """A scalar 0 of ``dtype`` that varies over every manual mesh axis any of ``refs`` varies over.

    Inside ``jax.shard_map`` with ``check_vma=True`` a loop carry must have the same
    varying-manual-axes type on entry and exit. A carry initialised from ``jnp.zeros`` is
    invariant, but the loop body mixes in the (varying) local batch, so the types differ and
    tracing fails. Adding this zero (``zeros_like`` inherits the type; no value is read, so a NaN
    or inf in ``refs`` does not leak) gives each initial carry the body's type. Outside
    ``shard_map`` it is a plain scalar 0.
    """
    z = jnp.zeros((), dtype)
    for r in refs:
        if r is not None:
            z = z + jnp.zeros_like(r, shape=(), dtype=dtype)
    return z


def _varying_axes(x):
    """The manual mesh axes ``x`` varies over inside ``shard_map`` (``None`` if JAX can't say)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # JAX >= 0.10
    if mat is not None:
        return frozenset(mat.varying)
    vma = getattr(aval, "vma", None)  # JAX 0.6-0.9
    return None if vma is None else frozenset(vma)


def _common_vma(*xs):
    """``xs`` cast to vary over the union of their varying manual axes (no-op outside shard_map).

    With ``check_vma=True`` a ``custom_vjp`` bwd must return a cotangent of its primal's type;
    an unvarying ``W`` used with a varying batch gets a varying ``dW``. Casting before the
    ``custom_vjp`` (adding a zero of the union type) moves the cast outside it, where autodiff
    transposes it into the ``psum`` of ``dW`` over the batch axes — the same collective the
    dense path gets.
    """
    axes = [_varying_axes(x) for x in xs]
    if all(a is not None for a in axes) and len(set(axes)) <= 1:
        return xs  # nothing to cast (the usual case, and always outside shard_map)
    zero = _vma_zero(_F32, *xs)
    return tuple(x + zero.astype(x.dtype) for x in xs)


def _block_logits(h, w_all, start, width, temp):
    """z = (h · W[:, start:start+width]) / T in float32 (or wider), shape ``[C, width]``."""
    acc = _acc_dtype(h, w_all)
    w = lax.dynamic_slice_in_dim(w_all, start, width, axis=1)
    z = jnp.dot(h, w, preferred_element_type=acc)
    if temp != 1.0:
        z = z / jnp.asarray(temp, acc)  # divide after the upcast
    return z, w


def _chunk_forward(h, y, w_all, *, block, temp, with_entropy):
    """Streaming (m, s, t, z_y) over vocabulary blocks for one token chunk ``h [C, D]``."""
    c = h.shape[0]
    v = w_all.shape[1]
    nb = -(-v // block)
    iota = lax.iota(jnp.int32, block)

    def body(b, carry):
        m, s, t, zy = carry
        lo = b * block
        start = jnp.minimum(lo, v - block)
        z, _ = _block_logits(h, w_all, start, block, temp)
        col = start + iota
        valid = (col >= lo)[None, :]  # overlapping last block: columns < lo were already seen
        z = jnp.where(valid, z, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(z, axis=1))
        m_ref = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        alpha = jnp.exp(m - m_ref)  # m = -inf on the first block -> 0
        zs = jnp.where(valid, z - m_ref[:, None], 0.0)
        e = jnp.where(valid, jnp.exp(zs), 0.0)
        s_new = alpha * s + jnp.sum(e, axis=1)
        if with_entropy:
            delta = jnp.where(s > 0, m - m_ref, 0.0)  # avoid (-inf) * 0
            t_new = alpha * (t + delta * s) + jnp.sum(jnp.where(e > 0, e * zs, 0.0), axis=1)
        else:
            t_new = t
        hit = valid & (col[None, :] == y[:, None])
        zy = zy + jnp.sum(jnp.where(hit, z, 0.0), axis=1)
        return m_new, s_new, t_new, zy

    acc = _acc_dtype(h, w_all)
    zero = _vma_zero(acc, h, y, w_all)  # carries typed like the body's output (shard_map)
    init = (
        jnp.full((c,), -jnp.inf, acc) + zero,
        jnp.zeros((c,), acc) + zero,
        jnp.zeros((c,), acc) + zero,
        jnp.zeros((c,), acc) + zero,
    )
    m, s, t, zy = lax.fori_loop(0, nb, body, init)
    log_s = jnp.log(s)
    in_range = (y >= 0) & (y < v)
    logp = jnp.where(in_range, (zy - m) - log_s, jnp.nan)
    if not with_entropy:
        return logp, None, m, log_s, None
    ratio = t / s
    # Residuals relative to m (not lse = m + log s, μ = m + t/s): z − μ = (z − m) − t/s keeps
    # precision when |z| is large and p is concentrated (rounding of μ at |z| ~ 1e4 is ~1e-3).
    return logp, log_s - ratio, m, log_s, ratio


def _block_partials(h, y, w_all, b, *, block, temp, with_entropy):
    """Partial statistics of vocabulary block ``b`` alone (no state from other blocks).

    With m_b = max over the block, zs = z − m_b:  s_b = Σ e^zs,  t_b = Σ e^zs·zs,  zy_b = z_y if
    y falls in the block (else 0). Masked columns and ``-inf`` logits contribute exactly 0.
    """
    v = w_all.shape[1]
    iota = lax.iota(jnp.int32, block)
    lo = b * block
    start = jnp.minimum(lo, v - block)
    z, _ = _block_logits(h, w_all, start, block, temp)
    col = start + iota
    valid = (col >= lo)[None, :]
    z = jnp.where(valid, z, -jnp.inf)
    mb = jnp.max(z, axis=1)
    m_ref = jnp.where(jnp.isfinite(mb), mb, 0.0)
    zs = z - m_ref[:, None]
    e = jnp.exp(zs)  # 0 where z = -inf (masked)
    s_b = jnp.sum(e, axis=1)
    if with_entropy:
        t_b = jnp.sum(jnp.where(e > 0, e * zs, 0.0), axis=1)
    else:
        t_b = jnp.zeros_like(s_b)
    hit = valid & (col[None, :] == y[:, None])
    zy = jnp.sum(jnp.where(hit, z, 0.0), axis=1)
    return mb, s_b, t_b, zy


def _chunk_forward_parallel(h, y, w_all, *, block, temp, with_entropy, group):
    """(m, s, t, z_y) with no sequential dependency across vocabulary blocks.

    Every block's partials (m_b, s_b, t_b, zy_b) are computed independently (``lax.map`` over
    block indices, ``group`` blocks at a time as one batched computation), then combined in one
    reduction over the block axis:

        m = max_b m_b,  α_b = e^(m_b − m),  s = Σ_b α_b s_b,  t = Σ_b α_b (t_b + (m_b − m) s_b).
    """
    v = w_all.shape[1]
    nb = -(-v // block)
    part = functools.partial(
        _block_partials, h, y, w_all, block=block, temp=temp, with_entropy=with_entropy
    )
    mb, sb, tb, zyb = lax.map(part, jnp.arange(nb, dtype=jnp.int32), batch_size=min(group, nb))
    return _combine_partials(mb, sb, tb, zyb, y, v, with_entropy)


def _combine_partials(mb, sb, tb, zyb, y, v, with_entropy):
    """(logp, H, m, log s, t/s) from per-block partials ``[n_blocks, C]`` (one reduction)."""
    m = jnp.max(mb, axis=0)
    m_ref = jnp.where(jnp.isfinite(m), m, 0.0)
    alpha = jnp.exp(mb - m_ref[None, :])  # blocks with m_b = -inf → 0
    s = jnp.sum(alpha * sb, axis=0)
    zy = jnp.sum(zyb, axis=0)
    log_s = jnp.log(s)
    in_range = (y >= 0) & (y < v)
    logp = jnp.where(in_range, (zy - m) - log_s, jnp.nan)
    if not with_entropy:
        return logp, None, m, log_s, None
    delta = jnp.where(alpha > 0, mb - m_ref[None, :], 0.0)
    t = jnp.sum(jnp.where(alpha > 0, alpha * (tb + delta * sb), 0.0), axis=0)
    ratio = t / s
    return logp, log_s - ratio, m, log_s, ratio


def _chunk_forward_pallas(
    h, y, w_all, *, block, temp, with_entropy, token_block, d_block, num_warps, num_stages
):
    """The block-parallel forward with the per-tile partials from the Pallas kernel.

    :func:`entropylab.ops.pallas_fused.block_stats` computes (m_b, s_b, t_b, zy_b) per
    vocabulary tile (tokens × vocabulary grid, both axes parallel); the combination is the one of
    :func:`_chunk_forward_parallel`. The kernel always computes t_b (``with_entropy=False`` only
    skips its combination).
    """
    from entropylab.ops import pallas_fused  # jax.experimental.pallas only when asked for

    mb, sb, tb, zyb = pallas_fused.block_stats(
        h,
        w_all,
        y,
        temp=temp,
        token_block=token_block,
        vocab_block=block,
        d_block=d_block,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return _combine_partials(mb, sb, tb, zyb, y, w_all.shape[1], with_entropy)


def _chunk_backward(h, y, w_all, m, log_s, ratio, g_lp, g_h, dw, row_keep, *, block, temp):
    """dh for chunk ``h [C, D]`` and dW accumulated into ``dw [D, V]`` (float32)."""
    v = w_all.shape[1]
    nb = -(-v // block)
    iota = lax.iota(jnp.int32, block)
    acc = _acc_dtype(h, w_all)
    h_dw = h if row_keep is None else jnp.where(row_keep[:, None], h, jnp.zeros((), h.dtype))

    def body(b, carry):
        dh, dw = carry
        lo = b * block
        start = jnp.minimum(lo, v - block)
        z, w = _block_logits(h, w_all, start, block, temp)
        col = start + iota
        valid = (col >= lo)[None, :]
        zm = jnp.where(valid, z - m[:, None], 0.0)
        p = jnp.where(valid, jnp.exp(zm - log_s[:, None]), 0.0)
        onehot = (valid & (col[None, :] == y[:, None])).astype(acc)
        dz = g_lp[:, None] * (onehot - p)
        if g_h is not None:
            # z − μ; p = 0 where masked or z = −inf (no 0·∞)
            dz = dz - g_h[:, None] * jnp.where(p > 0, p * (zm - ratio[:, None]), 0.0)
        if temp != 1.0:
            dz = dz / jnp.asarray(temp, acc)
        # dz Wᵀ and hᵀ dz as contractions (no transposed copies of h or W).
        dh = dh + lax.dot_general(dz, w.astype(acc), (((1,), (1,)), ((), ())))
        dw_blk = lax.dot_general(h_dw.astype(acc), dz, (((0,), (0,)), ((), ())))
        old = lax.dynamic_slice_in_dim(dw, start, block, axis=1)
        dw = lax.dynamic_update_slice_in_dim(dw, old + dw_blk, start, axis=1)
        return dh, dw

    zero = _vma_zero(acc, h, y, w_all, m, log_s, ratio, g_lp, g_h, dw)
    return lax.fori_loop(0, nb, body, (jnp.zeros(h.shape, acc) + zero, dw + zero))


def _chunk_starts(n, chunk):
    """(number of chunks, start of chunk c, first row chunk c owns) for overlapping chunks."""
    nc = -(-n // chunk)

    def starts(ci):
        lo = ci * chunk
        return jnp.minimum(lo, n - chunk), lo

    return nc, starts


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _fused(hidden, w, labels, temp, chunk, block, with_entropy, group, pallas):
    return _fused_fwd(hidden, w, labels, temp, chunk, block, with_entropy, group, pallas)[0]


def _fused_fwd(hidden, w, labels, temp, chunk, block, with_entropy, group, pallas):
    """Forward by ``pallas`` = (token_block, vocab_block, d_block, num_warps, num_stages): the
    Pallas kernel (its own vocabulary tile; ``block`` is then the backward's); else ``group`` =
    0: streaming (running max), ``group`` ≥ 1: block-parallel XLA."""
    n = hidden.shape[0]
    kw = dict(block=block if pallas is None else pallas[1], temp=temp, with_entropy=with_entropy)
    if pallas is not None:
        bt, _, bd, nw, ns = pallas
        fwd = functools.partial(
            _chunk_forward_pallas, token_block=bt, d_block=bd, num_warps=nw, num_stages=ns
        )
    elif group:
        fwd = functools.partial(_chunk_forward_parallel, group=group)
    else:
        fwd = _chunk_forward
    if chunk >= n:
        logp, ent, m, log_s, ratio = fwd(hidden, labels, w, **kw)
    else:
        nc, starts = _chunk_starts(n, chunk)

        def body(ci, carry):
            start, _ = starts(ci)
            h = lax.dynamic_slice_in_dim(hidden, start, chunk, axis=0)
            y = lax.dynamic_slice_in_dim(labels, start, chunk, axis=0)
            outs = fwd(h, y, w, **kw)
            # Rows of an overlapping last chunk are recomputed to identical values: overwrite.
            return tuple(
                c if o is None else lax.dynamic_update_slice_in_dim(c, o, start, axis=0)
                for c, o in zip(carry, outs)
            )

        acc = _acc_dtype(hidden, w)
        zeros = jnp.zeros((n,), acc) + _vma_zero(acc, hidden, labels, w)
        opt = zeros if with_entropy else None
        logp, ent, m, log_s, ratio = lax.fori_loop(0, nc, body, (zeros, opt, zeros, zeros, opt))
    out = (logp, ent) if with_entropy else logp
    return out, (hidden, w, labels, m, log_s, ratio)


def _fused_bwd(temp, chunk, block, with_entropy, group, pallas, res, g):
    # One backward for every forward (the Pallas path included: its residuals are the same).
    hidden, w, labels, m, log_s, ratio = res
    g_lp, g_h = g if with_entropy else (g, None)
    acc = _acc_dtype(hidden, w)
    g_lp = g_lp.astype(acc)
    g_h = None if g_h is None else g_h.astype(acc)
    n = hidden.shape[0]
    dw0 = jnp.zeros(w.shape, acc)
    kw = dict(block=min(block, w.shape[1]), temp=temp)
    if chunk >= n:
        dh, dw = _chunk_backward(hidden, labels, w, m, log_s, ratio, g_lp, g_h, dw0, None, **kw)
    else:
        nc, starts = _chunk_starts(n, chunk)
        rows = lax.iota(jnp.int32, chunk)

        def body(ci, carry):
            dh_all, dw = carry
            start, lo = starts(ci)

            def sl(x):
                return None if x is None else lax.dynamic_slice_in_dim(x, start, chunk, axis=0)

            keep = (start + rows) >= lo  # rows < lo belong to the previous chunk: not again in dW
            dh, dw = _chunk_backward(
                sl(hidden),
                sl(labels),
                w,
                sl(m),
                sl(log_s),
                sl(ratio),
                sl(g_lp),
                sl(g_h),
                dw,
                keep,
                **kw,
            )
            dh_all = lax.dynamic_update_slice_in_dim(dh_all, dh, start, axis=0)
            return dh_all, dw

        zero = _vma_zero(acc, hidden, labels, w, m, log_s, ratio, g_lp, g_h)
        dh, dw = lax.fori_loop(0, nc, body, (jnp.zeros(hidden.shape, acc) + zero, dw0 + zero))
    return dh.astype(hidden.dtype), dw.astype(w.dtype), None


_fused.defvjp(_fused_fwd, _fused_bwd)
# jit so that eager calls hit the compilation cache (the loop bodies are fresh closures per trace).
_fused_jit = jax.jit(_fused, static_argnums=(3, 4, 5, 6, 7, 8))


IMPLS = ("stream", "parallel", "pallas")
# vocabulary block of the XLA forwards by default, and of the backward of every impl (pallas too)
_BWD_BLOCK = 1024


def default_impl(backend: str | None = None) -> str:
    """Forward formulation used when ``impl=None``, by backend (``jax.default_backend()``).

    CPU: ``"stream"`` (measured no slower than ``"parallel"`` here; see ``bench/README.md``).
    GPU/TPU: ``"parallel"`` (no sequential dependency across vocabulary blocks). On an H200
    (``bench/README.md``) its forward is 1.16× dense's, and ``stream`` and the Pallas kernel
    (2.0× dense's forward with its tuned tile) are slower, so ``"pallas"`` is not picked here.
    TPU: not measured.
    """
    backend = jax.default_backend() if backend is None else backend
    return "stream" if backend == "cpu" else "parallel"


def fused_logprobs_and_entropy(
    hidden,
    unembedding,
    labels,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = None,
    vocab_block: int | None = None,
    with_entropy: bool = True,
    impl: str | None = None,
    block_group: int = 1,
    token_block: int | None = None,
    d_block: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """Log-prob of ``labels`` and full-vocabulary entropy from hidden states, without logits.

    z = (hidden · unembedding) / T,   log π(y) = z_y − logsumexp(z),
    H = logsumexp(z) − Σ_v softmax(z)_v z_v,

    computed by streaming over vocabulary blocks (see the module docstring), forward and backward
    (``jax.custom_vjp``), so no ``[N, V]`` array is ever materialised. Values and gradients
    w.r.t. ``hidden`` and ``unembedding`` equal those of
    ``logprobs_and_entropy(hidden @ unembedding, labels, temperature=T)`` up to float32 rounding.

    Args:
      hidden: ``[..., D]`` float (e.g. bf16 or f32); flattened to ``[N, D]`` internally.
      unembedding: ``[D, V]`` float (note: ``[D, V]``; pass ``lm_head.T`` for a ``[V, D]`` head).
      labels: int ``[...]`` matching ``hidden.shape[:-1]``, in ``[0, V)``. An out-of-range label
        gives a NaN log-prob (as the dense gather would fill); its entropy is still valid.
      temperature: static Python float T > 0 (no gradient flows to it).
      chunk_size: rows per token chunk (an outer loop), or ``None`` for one chunk of all rows.
        Temporaries scale as ``chunk_size × vocab_block``. A ragged last chunk is fine.
      vocab_block: vocabulary columns per block (clipped to V); ``None``: 1024 (512–1024 was
        fastest on CPU), or the backend's Pallas tile for ``impl="pallas"``. A ragged last block
        (V not a multiple) is fine.
      with_entropy: if False, skip the entropy accumulator (the no-entropy fast path).
      impl: forward formulation. ``"stream"``: running (m, s, t) carried across vocabulary blocks
        and rescaled when the max grows (a sequential dependency between blocks).
        ``"parallel"``: each block's partials (m_b, s_b, t_b, z_y) computed independently,
        ``block_group`` blocks per step as one batched computation, then combined in a single
        reduction over blocks (no cross-block dependency). ``None`` picks by backend
        (:func:`default_impl`). Both give the same values to float32 rounding and share the
        backward, the residuals and the ``custom_vjp`` contract.
        ``"pallas"``: the same block-parallel partials from a Pallas kernel over a tokens ×
        vocabulary grid (:mod:`entropylab.ops.pallas_fused`; interpret mode on CPU), combined
        by the same reduction; its backward is the XLA one (recomputing blocks of 1024
        columns, whatever the kernel's tile). Opt-in: never
        picked by ``None`` until ``bench/gpu_check.py`` has measured it on hardware.
      block_group: blocks per step of the ``"parallel"`` forward (temporaries grow as
        ``block_group × chunk × vocab_block``); ignored by ``"stream"`` and ``"pallas"``.
      token_block: ``"pallas"`` only: token rows per kernel tile (N is padded to a multiple).
        The vocabulary tile is ``vocab_block`` (V is padded to a multiple — one copy of the
        unembedding unless ``vocab_block`` divides V). GPU (Triton): powers of 2 ≥ 16; TPU:
        ``token_block % 8 == 0``, ``vocab_block % 128 == 0``.
      d_block: ``"pallas"`` only: the model dimension is contracted ``d_block`` columns at a
        time inside a tile when ``d_block`` divides D (pass D for one dot over D).
      num_warps, num_stages: ``"pallas"`` on GPU only: Triton's warps per program and
        software-pipelining depth.
        Each of the five Pallas arguments left ``None`` takes the backend's value in
        :data:`entropylab.ops.pallas_fused.DEFAULT_TILES`: on GPU the fastest configuration of
        a sweep on an H200 (256 × 64 tiles, D slices of 32, 4 warps, 3 stages); on TPU and
        CPU 64 × 1024 tiles, D slices of 64 (not tuned on hardware).

    Returns:
      Always a pair ``(logp, entropy)`` of float32 arrays of shape ``labels.shape``; ``entropy``
      is ``None`` when ``with_entropy=False``.

    Raises:
      ValueError: on shape mismatch, non-integer labels, non-float inputs, bad block/chunk size,
        or a non-static / non-positive temperature.

    References: arXiv:2411.09009 (Cut Cross-Entropy); arXiv:2505.22617; verl
    ``linear_cross_entropy`` (same outputs and saved residuals; verl uses a ``[V, D]`` weight and
    fuses in Triton — here plain XLA loops).
    """
    hidden = jnp.asarray(hidden)
    unembedding = jnp.asarray(unembedding)
    labels = jnp.asarray(labels)
    if unembedding.ndim != 2:
        raise ValueError(f"unembedding must be [D, V], got shape {unembedding.shape}")
    if hidden.ndim < 1 or hidden.shape[-1] != unembedding.shape[0]:
        raise ValueError(
            f"hidden last dim must equal unembedding.shape[0] (D = {unembedding.shape[0]}), "
            f"got hidden shape {hidden.shape}"
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(
            f"labels shape {labels.shape} must equal hidden.shape[:-1] = {hidden.shape[:-1]}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    for name, x in (("hidden", hidden), ("unembedding", unembedding)):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must be floating point, got dtype {x.dtype}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(
            f"temperature must be a static Python float > 0, got {type(temperature).__name__}"
        )
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite float > 0, got {temperature}")
    _check_positive_int("vocab_block", vocab_block, allow_none=True)
    _check_positive_int("chunk_size", chunk_size, allow_none=True)
    if not isinstance(with_entropy, bool):
        raise ValueError(f"with_entropy must be a bool, got {with_entropy!r}")
    if impl is None:
        impl = default_impl()
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}")
    _check_positive_int("block_group", block_group)
    for name, val in (
        ("token_block", token_block),
        ("d_block", d_block),
        ("num_warps", num_warps),
        ("num_stages", num_stages),
    ):
        _check_positive_int(name, val, allow_none=True)
    v = unembedding.shape[1]
    if v == 0:
        raise ValueError("unembedding must have V >= 1 columns")

    out_shape = labels.shape
    d = hidden.shape[-1]
    h = hidden.reshape(-1, d)
    y = labels.reshape(-1).astype(jnp.int32)
    n = h.shape[0]
    if n == 0:
        empty = jnp.zeros(out_shape, _acc_dtype(hidden, unembedding))
        return empty, (empty if with_entropy else None)
    chunk = n if chunk_size is None else min(chunk_size, n)
    group = block_group if impl == "parallel" else 0
    if impl == "pallas":
        from entropylab.ops.pallas_fused import default_tiles

        tiles = default_tiles()
        given = dict(token_block=token_block, vocab_block=vocab_block, d_block=d_block,
                     num_warps=num_warps, num_stages=num_stages)  # fmt: skip
        tiles.update({k: val for k, val in given.items() if val is not None})
        # The kernel's vocabulary tile is not clipped to V (tile shapes are backend-constrained;
        # V is padded instead). The backward is the XLA one, in its own blocks of _BWD_BLOCK
        # columns: in the kernel's 128-column tiles it took ≈ 84 ms of a 107 ms fwd + bwd on an
        # H200 (N 8192, D 1024, V 131072), in 1024-column blocks ≈ 34 ms of 52 ms.
        block = min(_BWD_BLOCK, v)
        pallas = (tiles["token_block"], tiles["vocab_block"], tiles["d_block"],
                  tiles.get("num_warps"), tiles.get("num_stages"))  # fmt: skip
    else:
        block, pallas = min(vocab_block or _BWD_BLOCK, v), None
    h, unembedding, y = _common_vma(h, unembedding, y)
    out = _fused_jit(
        h, unembedding, y, float(temperature), chunk, block, with_entropy, group, pallas
    )
    if with_entropy:
        logp, ent = out
        return logp.reshape(out_shape), ent.reshape(out_shape)
    return out.reshape(out_shape), None
