"""Tests for entropylab.ops.fused (fused log-prob + entropy, no [N, V] logits)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.ops import fused as fused_mod
from entropylab.ops import fused_logprobs_and_entropy, logprobs_and_entropy

# ----------------------------------------------------------------------------- float64 reference


def np_reference(h, w, y, temperature=1.0, a=None, b=None):
    """Float64 NumPy: logp, H and the gradients of Σ a·logp + Σ b·H w.r.t. h and w."""
    h = np.asarray(h, np.float64)
    w = np.asarray(w, np.float64)
    y = np.asarray(y)
    z = h @ w / temperature
    m = z.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
    p = np.exp(z - lse[:, None])
    logp = z[np.arange(len(y)), y] - lse
    ent = lse - (p * z).sum(axis=1)
    if a is None:
        return logp, ent
    onehot = np.zeros_like(z)
    onehot[np.arange(len(y)), y] = 1.0
    mu = (p * z).sum(axis=1, keepdims=True)
    # d logp_i / dz = onehot - p ;  d H_i / dz = -p (z - mu)
    dz = a[:, None] * (onehot - p) - b[:, None] * p * (z - mu)
    dz = dz / temperature
    return logp, ent, dz @ w.T, h.T @ dz


def _inputs(n, d, v, seed=0, scale=1.0, dtype=jnp.float32):
    """NumPy-drawn inputs (no per-shape jax.random compiles)."""
    rng = np.random.default_rng(seed)
    h = jnp.asarray(scale * rng.standard_normal((n, d)), dtype)
    w = jnp.asarray(rng.standard_normal((d, v)), dtype)
    y = jnp.asarray(rng.integers(0, v, size=n), jnp.int32)
    return h, w, y


def _weights(n):
    a = np.linspace(0.3, 1.2, n)
    b = np.linspace(-1.0, 0.7, n)
    return a, b


def _fused_loss(a, b, **kw):
    def loss(h, w, y):
        logp, ent = fused_logprobs_and_entropy(h, w, y, **kw)
        return jnp.sum(a * logp) + jnp.sum(b * ent)

    return loss


def _values_and_grads(fn, a, b):
    """One jitted call: (logp, H, d/dh, d/dw) of Σ a·logp + Σ b·H for ``fn(h, w, y)``."""

    def loss(h, w, y):
        logp, ent = fn(h, w, y)
        return jnp.sum(a * logp) + jnp.sum(b * ent), (logp, ent)

    @jax.jit
    def run(h, w, y):
        (_, (logp, ent)), (gh, gw) = jax.value_and_grad(loss, (0, 1), has_aux=True)(h, w, y)
        return logp, ent, gh, gw

    return run


# ----------------------------------------------------------------------------- hand-checked


def test_hand_checked_two_tokens():
    # z = [0, ln 3] -> p = [1/4, 3/4]
    h = jnp.array([[1.0], [2.0]])
    w = jnp.array([[0.0, math.log(3.0)]])
    y = jnp.array([1, 0])
    logp, ent = fused_logprobs_and_entropy(h, w, y, vocab_block=1)
    h0 = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    # row 2: z = [0, 2 ln 3] -> p = [1/10, 9/10]
    h1 = -(0.1 * math.log(0.1) + 0.9 * math.log(0.9))
    np.testing.assert_allclose(logp, [math.log(0.75), math.log(0.1)], rtol=1e-6)
    np.testing.assert_allclose(ent, [h0, h1], rtol=1e-6)


def test_uniform_logits_give_log_v():
    h = jnp.zeros((3, 4))
    w = jnp.ones((4, 7))
    logp, ent = fused_logprobs_and_entropy(h, w, jnp.array([0, 3, 6]), vocab_block=3)
    np.testing.assert_allclose(ent, np.full(3, math.log(7)), rtol=1e-6)
    np.testing.assert_allclose(logp, np.full(3, -math.log(7)), rtol=1e-6)


# ----------------------------------------------------------------------------- random vs refs

CASES = [
    # n, d, v, vocab_block, chunk_size, temperature
    (13, 8, 64, 16, None, 1.0),  # even blocks
    (37, 16, 100, 32, 10, 0.7),  # ragged last block and ragged last chunk
    (8, 4, 5, 8, 3, 2.0),  # block > V, chunk ragged
    (50, 8, 257, 64, 16, 1.3),  # ragged by one column
    (6, 3, 1, 4, None, 1.0),  # V = 1: logp = 0, H = 0
]


# the block-parallel forwards on the cases with ragged blocks/chunks (+ block > V, V = 1); the
# Pallas kernel (interpret mode on CPU) pads N to token_block = 8 and V to vocab_block
PARALLEL_CASES = [(*CASES[1], "parallel", 2), (*CASES[4], "parallel", 1)]
PALLAS_CASES = [(*CASES[1], "pallas", 1)]  # V < tile: see test_out_of_range_label_gives_nan


@pytest.mark.parametrize(
    "n,d,v,block,chunk,temp,impl,group",
    [(*c, "stream", 1) for c in CASES] + PARALLEL_CASES + PALLAS_CASES,
)
def test_matches_float64_reference_and_dense(n, d, v, block, chunk, temp, impl, group):
    h, w, y = _inputs(n, d, v, seed=n + v)
    a, b = _weights(n)
    kw = dict(temperature=temp, vocab_block=block, chunk_size=chunk, impl=impl, block_group=group)
    kw.update(token_block=8, d_block=8)  # Pallas only: with D = 16, two D slices per tile
    fused = _values_and_grads(lambda h, w, y: fused_logprobs_and_entropy(h, w, y, **kw), a, b)
    logp, ent, gh, gw = fused(h, w, y)
    assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32

    r_logp, r_ent, r_gh, r_gw = np_reference(h, w, y, temp, a, b)
    np.testing.assert_allclose(logp, r_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, r_ent, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gh, r_gh, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gw, r_gw, rtol=1e-4, atol=1e-5)

    dense = _values_and_grads(
        lambda h, w, y: logprobs_and_entropy(h @ w, y, temperature=temp), a, b
    )
    d_logp, d_ent, d_gh, d_gw = dense(h, w, y)
    np.testing.assert_allclose(logp, d_logp, atol=2e-5)
    np.testing.assert_allclose(ent, d_ent, atol=2e-5)
    np.testing.assert_allclose(gh, d_gh, atol=2e-5)
    np.testing.assert_allclose(gw, d_gw, atol=2e-5)


def test_leading_dims_are_flattened():
    h, w, y = _inputs(24, 8, 40)
    logp, ent = fused_logprobs_and_entropy(
        h.reshape(2, 3, 4, 8), w, y.reshape(2, 3, 4), vocab_block=16, chunk_size=5
    )
    assert logp.shape == (2, 3, 4) and ent.shape == (2, 3, 4)
    r_logp, r_ent = np_reference(h, w, y)
    np.testing.assert_allclose(logp.reshape(-1), r_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent.reshape(-1), r_ent, rtol=1e-5, atol=1e-5)


def test_layouts_agree():
    """Token chunking and block width change the loop, not the answer."""
    h, w, y = _inputs(30, 8, 90)
    base = fused_logprobs_and_entropy(h, w, y, vocab_block=90)
    for block, chunk in [(7, None), (89, 29), (1, 30)]:
        out = fused_logprobs_and_entropy(h, w, y, vocab_block=block, chunk_size=chunk)
        np.testing.assert_allclose(out[0], base[0], atol=1e-5)
        np.testing.assert_allclose(out[1], base[1], atol=1e-5)


@pytest.mark.parametrize("impl", ["stream", "pallas"])  # pallas: the shared partials combine
def test_no_entropy_fast_path(impl):
    h, w, y = _inputs(21, 8, 70)
    a, _ = _weights(21)
    kw = dict(impl=impl, token_block=8)
    logp, ent = fused_logprobs_and_entropy(
        h, w, y, vocab_block=16, chunk_size=8, with_entropy=False, **kw
    )
    assert ent is None
    r_logp, _, r_gh, r_gw = np_reference(h, w, y, 1.0, a, np.zeros(21))
    np.testing.assert_allclose(logp, r_logp, rtol=1e-5, atol=1e-5)

    def loss(h, w):
        lp, _ = fused_logprobs_and_entropy(h, w, y, vocab_block=16, with_entropy=False, **kw)
        return jnp.sum(a * lp)

    gh, gw = jax.jit(jax.grad(loss, argnums=(0, 1)))(h, w)
    np.testing.assert_allclose(gh, r_gh, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gw, r_gw, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["stream", "pallas"])
def test_bf16_inputs(impl):
    h, w, y = _inputs(40, 32, 300, dtype=jnp.bfloat16)
    a, b = _weights(40)
    kw = dict(vocab_block=64, temperature=0.9, impl=impl, block_group=2, token_block=16)
    fused = _values_and_grads(lambda h, w, y: fused_logprobs_and_entropy(h, w, y, **kw), a, b)
    logp, ent, gh, gw = fused(h, w, y)
    assert logp.dtype == jnp.float32 and ent.dtype == jnp.float32
    assert gh.dtype == jnp.bfloat16 and gw.dtype == jnp.bfloat16
    # Reference on the bf16-rounded inputs, exact arithmetic: only output rounding differs.
    r_logp, r_ent, r_gh, r_gw = np_reference(
        np.asarray(h.astype(jnp.float32)), np.asarray(w.astype(jnp.float32)), y, 0.9, a, b
    )
    for x in (logp, ent, gh, gw):
        assert np.all(np.isfinite(np.asarray(x, np.float32)))
    np.testing.assert_allclose(logp, r_logp, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(ent, r_ent, rtol=1e-4, atol=1e-3)
    scale_h = np.abs(r_gh).max()
    scale_w = np.abs(r_gw).max()
    np.testing.assert_allclose(np.asarray(gh, np.float32), r_gh, atol=1e-2 * scale_h)
    np.testing.assert_allclose(np.asarray(gw, np.float32), r_gw, atol=1e-2 * scale_w)


def test_check_grads_x64(x64):
    h, w, y = _inputs(7, 3, 11, dtype=jnp.float64)
    a, b = _weights(7)
    for kw in (
        dict(vocab_block=4, chunk_size=3, temperature=1.7),
        dict(vocab_block=5, with_entropy=False),
    ):

        def f(h, w, kw=kw):
            lp, en = fused_logprobs_and_entropy(h, w, y, **kw)
            return jnp.sum(a * lp) + (0.0 if en is None else jnp.sum(b * en))

        f = jax.jit(f)
        assert f(h, w).dtype == jnp.float64
        check_grads(f, (h, w), order=1, modes=("rev",))


@pytest.mark.parametrize("impl", ["stream", "parallel", "pallas"])
def test_x64_matches_reference_tightly(impl, x64):
    h, w, y = _inputs(9, 5, 23, dtype=jnp.float64)
    a, b = _weights(9)
    kw = dict(vocab_block=6, chunk_size=4, temperature=0.8, impl=impl, block_group=3)
    kw["token_block"] = 8
    fused = _values_and_grads(lambda h, w, y: fused_logprobs_and_entropy(h, w, y, **kw), a, b)
    logp, ent, gh, gw = fused(h, w, y)
    ref = np_reference(h, w, y, 0.8, a, b)
    for got, want in zip((logp, ent, gh, gw), ref):
        np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("impl,group", [("stream", 1), ("parallel", 2)])
def test_jit_and_no_nv_buffer(impl, group):
    n, d, v = 256, 16, 4096
    h, w, y = _inputs(n, d, v)
    a, b = _weights(n)
    loss = _fused_loss(a, b, vocab_block=256, impl=impl, block_group=group)
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    compiled = grad.lower(h, w, y).compile()
    hlo = compiled.as_text()
    assert f"[{n},{v}]" not in hlo and f"[{v},{n}]" not in hlo
    # temporaries must be far below one [N, V] float32 buffer (4 MiB here); they grow with the
    # number of blocks the parallel forward processes per step
    assert compiled.memory_analysis().temp_size_in_bytes < group * n * v * 4 / 4
    val, (gh, gw) = compiled(h, w, y)
    eager_val = loss(h, w, y)
    np.testing.assert_allclose(val, eager_val, rtol=1e-5)
    r_logp, r_ent, r_gh, r_gw = np_reference(h, w, y, 1.0, a, b)
    np.testing.assert_allclose(gw, r_gw, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["stream", "parallel", "pallas"])
def test_extreme_values_are_finite(impl):
    # |h·W| ~ 1e4: shift by the running (or per-block) max must keep everything finite.
    h = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]]) * 1e4
    w = jnp.array([[1.0, -1.0, 0.5, 0.999, 0.0], [-1.0, 0.2, 1.0, -0.3, 0.0]])
    y = jnp.array([0, 1, 3, 4])
    a, b = _weights(4)
    fused = _values_and_grads(
        lambda h, w, y: fused_logprobs_and_entropy(
            h, w, y, vocab_block=2, impl=impl, token_block=8
        ),
        a,
        b,
    )
    logp, ent, gh, gw = fused(h, w, y)
    for x in (logp, ent, gh, gw):
        assert np.all(np.isfinite(x))
    r_logp, r_ent, r_gh, r_gw = np_reference(h, w, y, 1.0, a, b)
    np.testing.assert_allclose(logp, r_logp, rtol=1e-5, atol=1e-2)
    np.testing.assert_allclose(ent, r_ent, atol=1e-3)
    np.testing.assert_allclose(gh, r_gh, atol=1e-4)
    np.testing.assert_allclose(gw, r_gw, atol=1e-3)


@pytest.mark.parametrize("impl", ["stream"])
def test_all_negative_logits_shift_invariant(impl):
    """A 0 identity for the max (verl PR #7439) would break this; −inf does not."""
    h, w, y = _inputs(10, 4, 30)
    shift = jnp.concatenate([h, jnp.ones((10, 1))], axis=1)
    w_shift = jnp.concatenate([w, jnp.full((1, 30), -500.0)], axis=0)
    kw = dict(vocab_block=8, impl=impl, token_block=8)
    base = fused_logprobs_and_entropy(h, w, y, **kw)
    out = fused_logprobs_and_entropy(shift, w_shift, y, **kw)
    np.testing.assert_allclose(out[0], base[0], atol=1e-3)
    np.testing.assert_allclose(out[1], base[1], atol=1e-3)


@pytest.mark.parametrize("impl", ["stream", "parallel", "pallas"])
def test_out_of_range_label_gives_nan_logp_only(impl):
    # labels are traced values, so no path can raise on them: every impl gives the dense
    # gather's NaN log-prob (13 is inside the Pallas path's padded vocabulary tile [12, 16)).
    # Same shapes and options as the NaN test below: one forward compilation per impl.
    h, w, _ = _inputs(5, 4, 12, seed=11)
    y = jnp.array([1, 12, -1, 13, 40])
    logp, ent = fused_logprobs_and_entropy(h, w, y, vocab_block=8, impl=impl, token_block=8)
    assert np.isfinite(logp[0]) and np.all(np.isnan(logp[1:]))
    r_logp, r_ent = np_reference(h, w, np.array([1, 0, 0, 0, 0]))
    np.testing.assert_allclose(logp[0], r_logp[0], rtol=1e-5)
    np.testing.assert_allclose(ent, r_ent, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["stream", "parallel", "pallas"])
def test_nan_input_propagates_never_a_finite_zero(impl):
    # A NaN in one row of h makes that row's logp and H NaN (other rows unaffected) and dW NaN
    # (every row contributes to it); a NaN in one column of W poisons every row's logsumexp.
    h, w, y = _inputs(5, 4, 12, seed=11)
    kw = dict(vocab_block=8, impl=impl, token_block=8)
    h_nan = h.at[2, 1].set(jnp.nan)
    logp, ent = fused_logprobs_and_entropy(h_nan, w, y, **kw)
    assert np.isnan(logp[2]) and np.isnan(ent[2])
    r_logp, r_ent = np_reference(h, w, y)
    keep = np.arange(5) != 2
    np.testing.assert_allclose(np.asarray(logp)[keep], r_logp[keep], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ent)[keep], r_ent[keep], rtol=1e-5, atol=1e-6)

    def loss(h, w):
        lp, en = fused_logprobs_and_entropy(h, w, y, **kw)
        return jnp.sum(lp) + jnp.sum(en)

    gh, gw = jax.jit(jax.grad(loss, (0, 1)))(h_nan, w)
    assert np.all(np.isnan(np.asarray(gh)[2])) and np.all(np.isfinite(np.asarray(gh)[keep]))
    assert np.all(np.isnan(gw))
    logp, ent = fused_logprobs_and_entropy(h, w.at[3, 9].set(jnp.nan), y, **kw)
    assert np.all(np.isnan(logp)) and np.all(np.isnan(ent))


# (stream, 3) runs the token-chunk loop around the block loops; (parallel, None) the unchunked
# forward and backward
@pytest.mark.parametrize("impl,chunk", [("stream", 3), ("parallel", None)])
def test_shard_map_with_check_vma(impl, chunk):
    # Regression: under jax.shard_map(check_vma=True) the loop carries (initialised invariant,
    # updated from the varying local batch) failed to trace, and the custom_vjp returned a
    # varying dW for an unvarying W. Rows sharded over 2 devices, W replicated: the values and
    # gradients (dW all-reduced by autodiff) equal the unsharded call.
    # (impl="pallas" cannot run here: JAX 0.10.2's interpret mode re-checks the kernel body at
    # lowering and rejects it under check_vma; see entropylab.ops.pallas_fused.)
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    mesh = Mesh(np.array(jax.devices()[:2]), ("data",))
    h, w, y = _inputs(8, 4, 10, seed=5)
    a, b = _weights(8)
    kw = dict(vocab_block=4, impl=impl, chunk_size=chunk, block_group=2)

    def local(h, w, y):
        return fused_logprobs_and_entropy(h, w, y, **kw)

    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P("data"), P(), P("data")),
        out_specs=(P("data"), P("data")),
        check_vma=True,
    )
    got = _values_and_grads(sharded, a, b)(h, w, y)
    want = np_reference(h, w, y, 1.0, a, b)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["stream", "parallel", "pallas"])
def test_minus_inf_logits_are_masked_vocabulary(impl):
    # −inf logits (a masked vocabulary entry: a −inf weight on a constant-1 feature) have p = 0
    # and contribute exactly 0 to H; the old streaming forward gave NaN entropy (0·(−inf)).
    # A whole vocabulary block of −inf (block 2 = columns 8..11) exercises m_b = −inf.
    h, w, y = _inputs(6, 3, 14, seed=3)
    h = jnp.concatenate([h, jnp.ones((6, 1))], axis=1)
    bias = np.zeros(14, np.float32)
    bias[[1, 8, 9, 10, 11, 13]] = -np.inf
    w = jnp.concatenate([w, jnp.asarray(bias)[None, :]], axis=0)
    y = jnp.array([0, 2, 3, 5, 12, 7], jnp.int32)
    a, b = _weights(6)
    logp, ent = fused_logprobs_and_entropy(h, w, y, vocab_block=4, impl=impl, token_block=8)
    z = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
    keep = np.isfinite(z[0])
    r_logp, r_ent = np_reference(np.eye(6), z[:, keep], np.searchsorted(np.flatnonzero(keep), y))
    np.testing.assert_allclose(logp, r_logp, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ent, r_ent, rtol=1e-5, atol=1e-5)
    # gradients w.r.t. the finite features and head rows: masked columns get exactly 0 in dW,
    # and the reference is the float64 law on the unmasked columns only
    hf, wf = h[:, :3], w[:3]

    def loss(hf, wf):
        hh = jnp.concatenate([hf, h[:, 3:]], 1)
        lp, en = fused_logprobs_and_entropy(
            hh, jnp.concatenate([wf, w[3:]], 0), y, vocab_block=4, impl=impl, token_block=8
        )
        return jnp.sum(a * lp) + jnp.sum(b * en)

    gh, gw = jax.jit(jax.grad(loss, (0, 1)))(hf, wf)
    y_kept = np.searchsorted(np.flatnonzero(keep), y)
    _, _, r_gh, r_gw = np_reference(hf, np.asarray(wf)[:, keep], y_kept, 1.0, a, b)
    np.testing.assert_allclose(gh, r_gh, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(gw)[:, keep], r_gw, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(gw)[:, ~keep] == 0.0)


def test_block_partials_are_independent_and_combine():
    # the parallel forward's per-block partials depend on their block only: (m_b, s_b, t_b)
    # equal a float64 computation on that block's logits, and their one-step combination equals
    # the full-vocabulary logsumexp / entropy.
    h, w, y = _inputs(5, 4, 10, seed=7)
    z = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
    block = 4  # blocks [0,4), [4,8), ragged last block = columns 6..9 with 6, 7 masked
    partials = jax.jit(
        lambda b: fused_mod._block_partials(h, y, w, b, block=block, temp=1.0, with_entropy=True)
    )
    for bi, cols in enumerate([range(0, 4), range(4, 8), range(8, 10)]):
        mb, sb, tb, zy = partials(bi)
        zb = z[:, list(cols)]
        m_ref = zb.max(1)
        e = np.exp(zb - m_ref[:, None])
        np.testing.assert_allclose(mb, m_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sb, e.sum(1), rtol=1e-5)
        np.testing.assert_allclose(tb, (e * (zb - m_ref[:, None])).sum(1), rtol=1e-5, atol=1e-6)
        in_b = np.isin(np.asarray(y), list(cols))
        np.testing.assert_allclose(zy, np.where(in_b, z[np.arange(5), y], 0.0), atol=1e-6)
    logp, ent, *_ = jax.jit(
        lambda: fused_mod._chunk_forward_parallel(
            h, y, w, block=block, temp=1.0, with_entropy=True, group=2
        )
    )()
    r_logp, r_ent = np_reference(h, w, y)
    np.testing.assert_allclose(logp, r_logp, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ent, r_ent, rtol=1e-5, atol=1e-6)


def test_pallas_tile_statistics_match_float64():
    # The kernel's per-tile outputs on their own: N = 13 padded to token_block 8 (two token
    # tiles), V = 20 padded to vocab_block 8 (tiles [0,8), [8,16), [16,20) + 4 masked columns),
    # D = 8 contracted in two slices of d_block 4, temperature 0.5.
    from entropylab.ops import pallas_fused

    h, w, y = _inputs(13, 8, 20, seed=2)
    m, s, t, zy = pallas_fused.block_stats(
        h, w, y, temp=0.5, token_block=8, vocab_block=8, d_block=4
    )
    assert m.shape == (3, 13) and m.dtype == jnp.float32
    z = np.asarray(h, np.float64) @ np.asarray(w, np.float64) / 0.5
    for j, cols in enumerate([range(0, 8), range(8, 16), range(16, 20)]):
        zb = z[:, list(cols)]
        m_ref = zb.max(1)
        e = np.exp(zb - m_ref[:, None])
        np.testing.assert_allclose(m[j], m_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s[j], e.sum(1), rtol=1e-5)
        np.testing.assert_allclose(t[j], (e * (zb - m_ref[:, None])).sum(1), rtol=1e-5, atol=1e-6)
        in_j = np.isin(np.asarray(y), list(cols))
        np.testing.assert_allclose(zy[j], np.where(in_j, z[np.arange(13), y], 0.0), atol=1e-5)


def test_pallas_backend_block_constraints():
    from entropylab.ops import pallas_fused

    pallas_fused._check_blocks("gpu", 64, 128, 64)
    pallas_fused._check_blocks("tpu", 8, 128, 1024)
    with pytest.raises(ValueError, match="vocab_block % 128"):
        pallas_fused._check_blocks("tpu", 8, 64, 64)
    with pytest.raises(ValueError, match="token_block a power of 2"):
        pallas_fused._check_blocks("gpu", 48, 128, 64)
    assert pallas_fused.resolve_d_block(1024, 64) == 64
    assert pallas_fused.resolve_d_block(100, 64) == 100  # does not divide D: one dot over D


@pytest.mark.parametrize(
    ("backend", "platform", "target", "tiles"),
    [
        # the GPU tiles bench/gpu_check.py times, one with the whole of D in one dot, and a
        # ragged N and V (padded by block_stats)
        (
            "gpu",
            "cuda",
            "xla.gpu.triton",
            [
                (64, 128, 64),
                (64, 256, 64),
                (64, 128, None),
                (128, 256, 32, 8, 4),
                (256, 64, 32, 4, 3),  # the GPU default (DEFAULT_TILES["gpu"])
                (512, 64, 32, 8, 3),
                (1024, 64, 16, 16, 3),
            ],
        ),
        ("tpu", "tpu", "tpu_custom_call", [(256, 512, 1024), (128, 1024, 256, 8, 4)]),
    ],
)
def test_pallas_kernel_lowers_for_accelerators_without_one(backend, platform, target, tiles):
    # Cross-platform lowering builds the Triton (GPU) and Mosaic (TPU) kernels on this CPU, so a
    # kernel body the compiled backends reject fails here, not first on a lent accelerator. This
    # caught the H200 failure of 2026-11-29: ``pl.multiple_of`` on the first slice's Python-int
    # offset (0) has no defining op to annotate in Triton ("'TypedInt' object has no attribute
    # 'owner'"); interpret mode runs it fine.
    from entropylab.ops import pallas_fused

    for n, v in [(512, 4096), (500, 4000)]:
        args = (
            jax.ShapeDtypeStruct((n, 1024), jnp.float32),
            jax.ShapeDtypeStruct((1024, v), jnp.float32),
            jax.ShapeDtypeStruct((n,), jnp.int32),
        )
        for bt, bv, bd, *triton in tiles:  # + (num_warps, num_stages): Triton only
            kw = dict(zip(("num_warps", "num_stages"), triton))
            fn = jax.jit(
                lambda h, w, y, bt=bt, bv=bv, bd=bd, kw=kw: pallas_fused.block_stats(
                    h, w, y, token_block=bt, vocab_block=bv, d_block=bd, backend=backend, **kw
                )
            )
            text = fn.trace(*args).lower(lowering_platforms=(platform,)).as_text()
            assert target in text, (backend, n, v, bt, bv, bd)
            if triton and backend == "gpu":  # the launch configuration reaches the Triton call
                assert f"num_warps = {triton[0]} : i32" in text, (bt, bv, bd, triton)
                assert f"num_stages = {triton[1]} : i32" in text, (bt, bv, bd, triton)


def test_pallas_tiles_default_by_backend_and_arguments_override(monkeypatch):
    # impl="pallas" with no tile arguments takes the backend's DEFAULT_TILES entry (on GPU the
    # tuned Triton launch configuration too); each argument given replaces its default alone.
    from entropylab.ops import pallas_fused

    assert pallas_fused.default_tiles("gpu") == {
        "token_block": 256,
        "vocab_block": 64,
        "d_block": 32,
        "num_warps": 4,
        "num_stages": 3,
    }
    assert pallas_fused.default_tiles("cpu")["vocab_block"] == 1024
    seen = []
    real = pallas_fused.block_stats

    def spy(h, w, y, **kw):
        seen.append(kw)
        return real(h, w, y, temp=kw["temp"], token_block=8, vocab_block=8, d_block=None)

    monkeypatch.setattr(pallas_fused, "block_stats", spy)
    monkeypatch.setattr(pallas_fused, "default_tiles", lambda: dict(DEFAULT_GPU))
    h, w, y = _inputs(11, 5, 19, seed=3)  # a shape no other test traces (the op is jitted)
    ref = np_reference(h, w, y)
    got = fused_logprobs_and_entropy(h, w, y, impl="pallas")
    got2 = fused_logprobs_and_entropy(h, w, y, impl="pallas", token_block=16, num_stages=2)
    for out in (got, got2):
        np.testing.assert_allclose(out[0], ref[0], rtol=1e-5, atol=2e-5)
    assert seen[0] == {"temp": 1.0, **DEFAULT_GPU}
    assert seen[1] == {"temp": 1.0, **DEFAULT_GPU, "token_block": 16, "num_stages": 2}


DEFAULT_GPU = dict(token_block=256, vocab_block=128, d_block=32, num_warps=8, num_stages=3)


def test_default_impl_by_backend():
    assert fused_mod.default_impl("cpu") == "stream"
    assert fused_mod.default_impl("gpu") == "parallel"
    assert fused_mod.default_impl("tpu") == "parallel"
    h, w, y = _inputs(4, 3, 9)
    np.testing.assert_array_equal(
        fused_logprobs_and_entropy(h, w, y, vocab_block=4)[1],
        fused_logprobs_and_entropy(h, w, y, vocab_block=4, impl=fused_mod.default_impl())[1],
    )


@settings(max_examples=5, deadline=None)
@given(
    n=st.integers(1, 12),
    v=st.integers(1, 40),
    block=st.integers(1, 48),
    chunk=st.one_of(st.none(), st.integers(1, 12)),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(n, v, block, chunk, seed):
    h, w, y = _inputs(n, 4, v, seed=seed, scale=2.0)
    logp, ent = fused_logprobs_and_entropy(h, w, y, vocab_block=block, chunk_size=chunk)
    r_logp, r_ent = np_reference(h, w, y)
    np.testing.assert_allclose(logp, r_logp, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(ent, r_ent, rtol=1e-5, atol=2e-5)
    assert np.all(np.asarray(logp) <= 1e-5) and np.all(np.asarray(ent) >= -1e-5)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(h=jnp.zeros((4, 3))), "hidden last dim"),
        (dict(w=jnp.zeros((5,))), r"unembedding must be \[D, V\]"),
        (dict(y=jnp.zeros((5,), jnp.int32)), "labels shape"),
        (dict(y=jnp.zeros((4,), jnp.float32)), "labels must be integers"),
        (dict(h=jnp.zeros((4, 5), jnp.int32)), "hidden must be floating"),
        (dict(vocab_block=0), "vocab_block"),
        (dict(vocab_block=2.5), "vocab_block"),
        (dict(chunk_size=-1), "chunk_size"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=jnp.float32(1.0)), "temperature"),
        (dict(with_entropy="yes"), "with_entropy"),
        (dict(impl="triton"), "impl"),
        (dict(impl="parallel", block_group=0), "block_group"),
        (dict(impl="pallas", token_block=0), "token_block"),
        (dict(impl="pallas", d_block=1.5), "d_block"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = dict(h=jnp.zeros((4, 5)), w=jnp.zeros((5, 9)), y=jnp.zeros((4,), jnp.int32))
    opts = {}
    for k, val in kwargs.items():
        (args if k in args else opts)[k] = val
    with pytest.raises(ValueError, match=match):
        fused_logprobs_and_entropy(args["h"], args["w"], args["y"], **opts)


def test_pallas_backward_blocks_do_not_follow_the_kernel_tile(monkeypatch):
    # The Pallas forward's vocabulary tile is small on GPU (64 columns); the shared XLA backward
    # runs in its own 1024-column blocks (clipped to V). Tied to a 128-column tile it took 84 of
    # 107 ms of fwd + bwd on an H200. Values and gradients stay those of the dense path.
    seen = []
    real = fused_mod._chunk_backward

    def spy(*a, **kw):
        seen.append(kw["block"])
        return real(*a, **kw)

    monkeypatch.setattr(fused_mod, "_chunk_backward", spy)
    h, w, y = _inputs(9, 6, 37, seed=5)  # a shape no other test traces (the op is jitted)

    def loss(fn):
        def f(h, w):
            lp, en = fn(h, w)
            return jnp.sum(lp) + 0.3 * jnp.sum(en)

        return jax.grad(f, (0, 1))

    got = loss(
        lambda h, w: fused_logprobs_and_entropy(
            h, w, y, impl="pallas", token_block=8, vocab_block=8
        )
    )(h, w)
    want = loss(lambda h, w: logprobs_and_entropy(h @ w, y))(h, w)
    assert seen == [37]  # min(1024, V), not the kernel's 8
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
