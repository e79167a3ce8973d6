"""Pallas kernel: per-tile log-sum-exp / entropy partial statistics of ``z = (h W) / T``.

The forward of ``fused_logprobs_and_entropy(..., impl="pallas")``. The grid tiles tokens ×
vocabulary; grid cell (i, j) reads the token tile ``h[i·bt : (i+1)·bt, :]`` and the vocabulary tile
``W[:, j·bv : (j+1)·bv]``, computes the logits tile ``z = (h W) / T`` ``[bt, bv]`` in float32
(accumulated over ``bd``-wide slices of the model dimension D), and writes, per token row,

    m_j = max_v z_v,   s_j = Σ_v e^(z_v − m_j),   t_j = Σ_v e^(z_v − m_j)(z_v − m_j),
    zy_j = z_y if the label y falls in tile j, else 0,

to four ``[n_vocab_tiles, N, 1]`` float32 outputs. No cell depends on another (both grid axes are
parallel), and the ``[N, V]`` logits exist only one ``[bt, bv]`` tile at a time in registers /
VMEM. The caller combines the tiles in one reduction (:func:`entropylab.ops.fused` does:
m = max_j m_j, s = Σ_j e^(m_j − m) s_j, t = Σ_j e^(m_j − m)(t_j + (m_j − m) s_j), then
log π(y) = z_y − m − log s and H = log s − t/s) — the same combination as the XLA
block-parallel path, so both share one backward.

Numerics (as the XLA paths): the matmul accumulates in float32 (``preferred_element_type``), the
temperature divides after the upcast, columns past V (padding of a ragged last tile) are set to
−inf before the max, a tile whose logits are all −inf has m_j = −inf and contributes s_j = t_j = 0
(the shift uses 0 instead of −inf, so no −inf − (−inf)), and e·(z − m) is guarded where e = 0 so a
−inf logit adds exactly 0. A NaN logit makes s_j NaN whatever the max does with it (exp(NaN) is
NaN), so NaN in ``h`` or ``W`` reaches log π and H.

Block shapes. Token rows are padded to a multiple of ``bt`` and vocabulary columns to a multiple
of ``bv`` by the caller-facing :func:`block_stats` (zero rows / zero columns, masked in the
kernel); the D axis is one block (the full dimension). Constraints of the compiled backends,
checked when not in interpret mode: TPU (Mosaic) needs ``bt % 8 == 0`` and ``bv % 128 == 0``
(the label / statistic blocks are ``[bt, 1]`` columns: last dim = the full dim 1); GPU (Triton)
needs powers of two ≥ 16 for ``bt``, ``bv`` and ``bd``. On CPU the kernel runs with
``interpret=True`` (slow: for tests at toy shapes only).

Status: tested on CPU in interpret mode (equality with a float64 NumPy reference, adversarial
numerics) and lowered for CUDA (Triton) and TPU (Mosaic) on CPU in the tests. On an NVIDIA H200
it compiles and is correct (max |Δ| 1.5e-4 vs dense: the Triton dot takes float32 inputs at
TF32), also under ``shard_map(check_vma=True)``. Tuned there (2026-11-30, three rounds of
``bench/gpu_check.py --only pallas_tune``, N 8192 × D 1024 × V 131072 float32): the default GPU
tile went from 64 × 128 × 64 at Triton's defaults (55 ms, 6.0× XLA's ``logsumexp(h @ W)``) to
256 × 64 × 32 at 4 warps and 3 stages (17 ms, 1.9×); the forward is still 2.0× the dense forward
and 1.7× the XLA block-parallel one, and fwd + bwd 2.0× dense against 1.5× for the XLA path. It
stays opt-in; ``parallel`` stays the GPU default. Not yet run on a TPU.

No released kernel computes exactly this (entropy needs the third statistic t); the tiling is the
one of Cut Cross-Entropy (arXiv:2411.09009, apple/ml-cross-entropy) and of verl's Triton
``linear_cross_entropy`` (per-tile max / sum-exp / Σ p·z), written here from the equations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl


def _finite(x):
    """isfinite as two comparisons (lowers on every Pallas backend; NaN → False)."""
    return (x > -jnp.inf) & (x < jnp.inf)


def _kernel(h_ref, w_ref, y_ref, m_ref, s_ref, t_ref, zy_ref, *, v, bv, bd, temp, acc):
    d = h_ref.shape[1]
    bt = h_ref.shape[0]

    def dot_slice(k):
        # the first slice has a Python-int offset: Triton's lowering of multiple_of needs a traced
        # value (a constant has no defining op to annotate), so hint only the loop's offsets
        off = 0 if isinstance(k, int) else pl.multiple_of(k * bd, bd)
        hk = h_ref[:, pl.ds(off, bd)]
        wk = w_ref[pl.ds(off, bd), :]
        return jnp.dot(hk, wk, preferred_element_type=acc)

    if bd >= d:
        z = jnp.dot(h_ref[...], w_ref[...], preferred_element_type=acc)
    else:
        z = lax.fori_loop(1, d // bd, lambda k, zk: zk + dot_slice(k), dot_slice(0))
    if temp != 1.0:
        z = z / jnp.asarray(temp, acc)  # after the (float32) accumulation
    col = pl.program_id(1) * bv + lax.broadcasted_iota(jnp.int32, (bt, bv), 1)
    z = jnp.where(col < v, z, -jnp.inf)  # padded columns past V
    mb = jnp.max(z, axis=1, keepdims=True)  # [bt, 1]
    shift = jnp.where(_finite(mb), mb, 0.0)
    zs = z - shift
    e = jnp.exp(zs)  # 0 where z = -inf
    m_ref[...] = mb
    s_ref[...] = jnp.sum(e, axis=1, keepdims=True)
    t_ref[...] = jnp.sum(jnp.where(e > 0, e * zs, 0.0), axis=1, keepdims=True)
    hit = col == y_ref[...]  # [bt, bv] vs [bt, 1]; labels >= V never hit a valid column
    zy_ref[...] = jnp.sum(jnp.where(hit & (col < v), z, 0.0), axis=1, keepdims=True)


def _vma_kwargs(*xs):
    """``ShapeDtypeStruct`` keyword giving the outputs the inputs' varying manual axes.

    Inside ``jax.shard_map(check_vma=True)`` a ``pallas_call`` must be told how its outputs vary
    over the mesh; each output row depends on every input, so it varies wherever an input does.
    (This gets the call past tracing. JAX 0.10.2's *interpret* mode then still fails at lowering
    — it re-evaluates the kernel with varying refs, and every literal in it is invariant — so the
    CPU tests cannot run the kernel under ``shard_map(check_vma=True)``; compiled GPU/TPU
    lowering does not re-check the kernel body: on an H200 the compiled kernel ran forward and
    backward under ``check_vma=True``.)
    """
    mats = [getattr(jax.typeof(x), "manual_axis_type", None) for x in xs]  # JAX >= 0.10
    if all(m is not None for m in mats):
        out = mats[0]
        for m in mats[1:]:
            out = out.update(varying=out.varying | m.varying)
        return {"manual_axis_type": out} if out.varying else {}
    vmas = [getattr(jax.typeof(x), "vma", None) for x in xs]  # JAX 0.6-0.9
    if all(v is not None for v in vmas):
        union = frozenset().union(*vmas)
        return {"vma": union} if union else {}
    return {}


def _check_blocks(backend, bt, bv, bd):
    if backend == "tpu":
        if bt % 8 or bv % 128:
            raise ValueError(
                f"pallas on TPU needs token_block % 8 == 0 and vocab_block % 128 == 0, "
                f"got token_block={bt}, vocab_block={bv}"
            )
    elif backend == "gpu":
        for name, b in (("token_block", bt), ("vocab_block", bv), ("d_block", bd)):
            if b < 16 or b & (b - 1):
                raise ValueError(f"pallas on GPU (Triton) needs {name} a power of 2 >= 16, got {b}")


# Default tiles of ``fused_logprobs_and_entropy(impl="pallas")`` per backend (an argument left
# ``None`` takes the backend's value). GPU: the fastest Triton configuration of a tuning sweep
# on an NVIDIA H200 (2026-11-30, ``bench/gpu_check.py --only pallas_tune``, N 8192 × D 1024 ×
# V 131072 float32; see ``PALLAS_TUNE`` there): 256 × 64 tiles, D in slices of 32, 4 warps,
# 3 stages ran the kernel in 17 ms against 55 ms for the first 64 × 128 × 64 default, still
# 1.7× XLA's ``logsumexp(h @ W)``. TPU and CPU (interpret mode): 64 × 1024 × 64, not tuned.
DEFAULT_TILES = {
    "gpu": {"token_block": 256, "vocab_block": 64, "d_block": 32, "num_warps": 4, "num_stages": 3},
    "tpu": {"token_block": 64, "vocab_block": 1024, "d_block": 64},
    "cpu": {"token_block": 64, "vocab_block": 1024, "d_block": 64},
}


def default_tiles(backend: str | None = None) -> dict:
    """The default Pallas tile keywords for ``backend`` (default ``jax.default_backend()``)."""
    return dict(DEFAULT_TILES.get(backend or jax.default_backend(), DEFAULT_TILES["cpu"]))


def resolve_d_block(d: int, d_block: int | None) -> int:
    """The D slice width: ``d_block`` if it divides D, else D (one dot over the whole of D)."""
    if d_block is None or d_block >= d or d % d_block:
        return d
    return d_block


@functools.partial(
    jax.jit,
    static_argnames=(
        "temp",
        "token_block",
        "vocab_block",
        "d_block",
        "backend",
        "num_warps",
        "num_stages",
    ),
)
def block_stats(
    h,
    w,
    y,
    *,
    temp=1.0,
    token_block=128,
    vocab_block=512,
    d_block=None,
    backend=None,
    num_warps=None,
    num_stages=None,
):
    """Per-vocabulary-tile partials ``(m_j, s_j, t_j, zy_j)``, each ``[n_tiles, N]``.

    float32 (float64 when an input is float64 — x64 mode, interpret-only: GPU/TPU kernels have
    no float64).

    ``h [N, D]``, ``w [D, V]`` float (any float dtype; float32 accumulation), ``y [N]`` int.
    ``token_block`` / ``vocab_block`` / ``d_block``: the tile sizes bt, bv, bd (see the module
    docstring for the backend constraints). Runs in interpret mode on CPU.
    ``backend``: "cpu" (interpret mode), "gpu" or "tpu"; default ``jax.default_backend()``. Name
    another backend only to *lower* the kernel for it without its hardware
    (``jit(...).trace(...).lower(lowering_platforms=("cuda",))`` with ``backend="gpu"`` builds the
    Triton module on a CPU machine; that is how the tests check the GPU lowering).
    ``num_warps`` / ``num_stages``: Triton's warps per program and software-pipelining depth on
    GPU (default: Triton's, 4 and 3); ignored on other backends.
    """
    backend = backend or jax.default_backend()
    interpret = backend == "cpu"
    n, d = h.shape
    v = w.shape[1]
    bt, bv = token_block, vocab_block
    bd = resolve_d_block(d, d_block)
    if not interpret:
        _check_blocks(backend, bt, bv, bd)
    n_pad = -(-n // bt) * bt
    v_pad = -(-v // bv) * bv
    if n_pad != n:
        h = jnp.pad(h, ((0, n_pad - n), (0, 0)))
        y = jnp.pad(y, (0, n_pad - n))
    if v_pad != v:
        # one copy of W; choose vocab_block dividing V (e.g. a power of 2) to avoid it
        w = jnp.pad(w, ((0, 0), (0, v_pad - v)))
    nvt = v_pad // bv
    acc = jnp.promote_types(jnp.result_type(h, w), jnp.float32)  # float64 only in x64 tests
    kernel = functools.partial(_kernel, v=v, bv=bv, bd=bd, temp=float(temp), acc=acc)
    y = y.astype(jnp.int32)[:, None]
    stat = jax.ShapeDtypeStruct((nvt, n_pad, 1), acc, **_vma_kwargs(h, w, y))
    stat_spec = pl.BlockSpec((pl.squeezed, bt, 1), lambda i, j: (j, i, 0))
    params = None
    if backend == "tpu":  # no grid cell depends on another: let megacore split both axes
        from jax.experimental.pallas import tpu as pltpu

        params = pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
    elif backend == "gpu":  # Triton, by name: JAX's default GPU Pallas backend varies by version
        from jax.experimental.pallas import triton as pltriton

        tri = {"num_warps": num_warps, "num_stages": num_stages}
        params = pltriton.CompilerParams(**{k: v for k, v in tri.items() if v is not None})
    outs = pl.pallas_call(
        kernel,
        out_shape=(stat, stat, stat, stat),
        grid=(n_pad // bt, nvt),
        in_specs=[
            pl.BlockSpec((bt, d), lambda i, j: (i, 0)),
            pl.BlockSpec((d, bv), lambda i, j: (0, j)),
            pl.BlockSpec((bt, 1), lambda i, j: (i, 0)),
        ],
        out_specs=(stat_spec, stat_spec, stat_spec, stat_spec),
        interpret=interpret,
        compiler_params=params,
        name="fused_entropy_block_stats",
    )(h, w, y)
    return tuple(o[:, :n, 0] for o in outs)
