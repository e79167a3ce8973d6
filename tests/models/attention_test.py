"""Attention core (entropylab.models.attention) against an independent float64 NumPy reference."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.models.attention import attend as _attend_eager
from entropylab.models.attention import attention_mask

# One compile per shape instead of op-by-op dispatch (the suite shares 2 CPU cores).
attend = jax.jit(_attend_eager, static_argnames=("softcap", "return_entropy"))


def np_attention(q, k, v, allowed, scale, softcap=None):
    """float64 reference: per query head h uses kv head h // G; returns out, entropy [B,H,T]."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, h, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = h // hkv
    scale = np.broadcast_to(np.asarray(scale, np.float64), (b, h, t))
    out = np.zeros((b, t, h, d))
    ent = np.zeros((b, h, t))
    for bi in range(b):
        for hi in range(h):
            for ti in range(t):
                vis = [j for j in range(s) if allowed[bi, ti, j]]
                if not vis:
                    continue
                z = np.array([q[bi, ti, hi] @ k[bi, hi // g, j] for j in vis]) * scale[bi, hi, ti]
                if softcap is not None:
                    z = softcap * np.tanh(z / softcap)
                p = np.exp(z - z.max())
                p /= p.sum()
                out[bi, ti, hi] = sum(p[n] * v[bi, hi // g, j] for n, j in enumerate(vis))
                ent[bi, hi, ti] = -np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-300)), 0))
    return out, ent


def _inputs(seed, b=2, t=5, s=5, h=4, hkv=2, d=8, dtype=jnp.float32):
    rs = np.random.RandomState(seed)  # NumPy RNG: no per-shape threefry compile
    q = jnp.asarray(rs.standard_normal((b, t, h, d)), dtype)
    k = jnp.asarray(rs.standard_normal((b, hkv, s, d)), dtype)
    v = jnp.asarray(rs.standard_normal((b, hkv, s, d)), dtype)
    return q, k, v


def test_attention_mask_hand_case():
    q_slot = jnp.array([[0, 1, 2]])
    valid = jnp.array([[False, True, True]])
    m = np.asarray(attention_mask(q_slot, valid, 3))
    expected = np.array([[[0, 0, 0], [0, 1, 0], [0, 1, 1]]], bool)
    np.testing.assert_array_equal(m, expected)


@pytest.mark.parametrize("softcap", [None, 2.0])
def test_attend_matches_numpy_gqa_padding(softcap):
    q, k, v = _inputs(0)
    b, t, h, d = q.shape
    valid = np.array([[True] * 5, [False, False, True, True, True]])  # left padding
    slots = np.broadcast_to(np.arange(t), (b, t))
    allowed = np.asarray(attention_mask(slots, valid, 5))
    scale = np.linspace(0.2, 0.6, h, dtype=np.float32)[None, :, None] * np.ones(
        (b, h, t), np.float32
    )

    @jax.jit
    def run(q, k, v):
        out, ent = _attend_eager(
            q, k, v, allowed=allowed, logit_scale=scale, softcap=softcap, return_entropy=True
        )
        out2, none = _attend_eager(q, k, v, allowed=allowed, logit_scale=scale, softcap=softcap)
        assert none is None
        return out, ent, out2

    out, ent, out2 = run(q, k, v)
    ref_out, ref_ent = np_attention(q, k, v, np.asarray(allowed), scale, softcap)
    rows = np.asarray(allowed).any(-1)  # [B, T] rows with a visible key
    np.testing.assert_allclose(np.asarray(out)[rows], ref_out[rows], atol=1e-5)
    np.testing.assert_allclose(np.asarray(ent), ref_ent, atol=1e-5)
    # Padded query rows (no visible key): finite output, zero entropy, no NaN.
    assert np.all(np.isfinite(np.asarray(out))) and np.all(
        np.asarray(ent).transpose(0, 2, 1)[~rows] == 0
    )
    assert (~rows).sum() == 2
    np.testing.assert_allclose(np.asarray(out2)[rows], ref_out[rows], atol=1e-5)


def test_uniform_attention_entropy_is_log_visible_count():
    q, k, v = _inputs(1, b=1, t=6, s=6)
    q = jnp.zeros_like(q)  # every logit 0 -> uniform over the visible keys
    slots = jnp.arange(6)[None]
    _, ent = attend(
        q, k, v, allowed=attention_mask(slots, None, 6), logit_scale=1.0, return_entropy=True
    )
    expected = np.log(np.arange(1, 7))
    np.testing.assert_allclose(np.asarray(ent)[0], np.broadcast_to(expected, (4, 6)), atol=1e-6)


def test_temperature_monotone_in_entropy():
    """Dividing logits by a larger temperature τ raises entropy; τ → ∞ gives ln(#keys)."""
    q, k, v = _inputs(2, b=1, t=4, s=4)
    allowed = attention_mask(jnp.arange(4)[None], None, 4)
    taus = jnp.array([0.1, 0.5, 1.0, 4.0, 1e6])
    f = jax.vmap(lambda c: attend(q, k, v, allowed=allowed, logit_scale=c, return_entropy=True)[1])
    ents = np.asarray(f(1.0 / (math.sqrt(8) * taus)))[:, 0, :, -1]
    assert np.all(np.diff(ents, axis=0) > -1e-6)
    np.testing.assert_allclose(ents[-1], np.log(4), atol=1e-4)


def test_gradients_x64_and_finite_under_masks(x64):
    q, k, v = _inputs(3, b=1, t=3, s=3, h=2, hkv=1, d=4, dtype=jnp.float64)
    valid = jnp.array([[False, True, True]])
    allowed = attention_mask(jnp.arange(3)[None], valid, 3)

    def f(q, k, v):
        out, ent = attend(q, k, v, allowed=allowed, logit_scale=0.5, return_entropy=True)
        return jnp.sum(out * jnp.arange(4.0)) + jnp.sum(ent)

    # Row 0 sees nothing (uniform weights, entropy 0): gradients must stay finite.
    check_grads(jax.jit(f), (q, k, v), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)
    grads = jax.grad(f, argnums=(0, 1, 2))(q, k, v)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_jit_and_bf16_finite():
    q, k, v = _inputs(4, dtype=jnp.bfloat16)
    allowed = attention_mask(jnp.broadcast_to(jnp.arange(5), (2, 5)), None, 5)
    out, ent = attend(q, k, v, allowed=allowed, logit_scale=0.3, return_entropy=True)
    assert out.dtype == jnp.bfloat16 and ent.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out, np.float32))) and np.all(np.isfinite(ent))
    ref_out, ref_ent = np_attention(
        q.astype(jnp.float32),
        k.astype(jnp.float32),
        v.astype(jnp.float32),
        np.asarray(allowed),
        0.3,
    )
    np.testing.assert_allclose(np.asarray(ent), ref_ent, atol=2e-2)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 30.0))
def test_property_entropy_bounds(seed, scale):
    """0 ≤ H_i ≤ ln(#visible keys) for every row, any scale."""
    t = 4
    q, k, v = _inputs(seed, b=1, t=t, s=t, h=4, hkv=2, d=4)
    allowed = attention_mask(jnp.arange(t)[None], None, t)
    _, ent = attend(q, k, v, allowed=allowed, logit_scale=scale, return_entropy=True)
    ent = np.asarray(ent)[0]
    assert np.all(ent >= -1e-6)
    assert np.all(ent <= np.log(np.arange(1, t + 1))[None] + 1e-5)


@pytest.mark.parametrize("block", [1, 3, 4])
def test_attend_causal_blocks_equal_full_attention(block):
    """Query-blocked causal attention (keys after a block's last query dropped) == attend, for
    outputs, entropies and gradients, with left padding and a ragged last block."""
    from entropylab.models.attention import attend_causal

    q, k, v = _inputs(5, b=2, t=7, s=7)
    valid = np.array([[True] * 7, [False, False] + [True] * 5])
    slots = np.broadcast_to(np.arange(7), (2, 7))
    allowed = attention_mask(slots, valid, 7)
    scale = np.linspace(0.2, 0.6, 4, dtype=np.float32)[None, :, None] * np.ones((2, 4, 7))

    def full(q, k, v):
        return _attend_eager(q, k, v, allowed=allowed, logit_scale=scale, return_entropy=True)

    def blocked(q, k, v):
        return attend_causal(
            q, k, v, allowed=allowed, logit_scale=scale, block=block, return_entropy=True
        )

    (o1, e1), (o2, e2) = jax.jit(full)(q, k, v), jax.jit(blocked)(q, k, v)
    # Rows with no visible key (the 2 left-padded queries) are meaningless by contract (uniform
    # weights over whatever keys the call sees); they are masked out, as any loss masks them.
    rows = np.asarray(allowed).any(-1)
    assert (~rows).sum() == 2
    np.testing.assert_allclose(np.asarray(o2)[rows], np.asarray(o1)[rows], atol=1e-6)
    np.testing.assert_allclose(np.asarray(e2), np.asarray(e1), atol=1e-6)
    w = jnp.asarray(rows, jnp.float32)[:, :, None, None]

    def loss(f):
        return lambda q, k, v: jnp.sum(w * jnp.sin(f(q, k, v)[0])) + jnp.sum(f(q, k, v)[1])

    g1 = jax.jit(jax.grad(loss(full), argnums=(0, 1, 2)))(q, k, v)
    g2 = jax.jit(jax.grad(loss(blocked), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(g2, g1, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
