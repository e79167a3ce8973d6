"""Dense token entropy, log-probs and attention entropy vs float64 NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.ops import attention_entropy, logprobs, logprobs_and_entropy, token_entropy

# ---------------------------------------------------------------- float64 NumPy references


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    fin = np.isfinite(z)
    m = np.max(np.where(fin, z, -np.inf), axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.where(fin, np.exp(np.where(fin, z - m, 0.0)), 0.0)
    s = e.sum(-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(fin, z - m - np.log(s), -np.inf)


def np_entropy(z):
    lp = np_log_softmax(z)
    p = np.exp(lp)
    return -np.sum(np.where(p > 0, p * np.where(p > 0, lp, 0.0), 0.0), axis=-1)


def np_attention_entropy(p, m, normalize=False):
    p = np.asarray(p, np.float64)
    m = np.broadcast_to(np.asarray(m, bool), p.shape)
    out = np.zeros(p.shape[:-1])
    for idx in np.ndindex(*p.shape[:-1]):
        row = p[idx][m[idx] & (p[idx] > 0)]
        h = -np.sum(row * np.log(row))
        n = m[idx].sum()
        out[idx] = (h / math.log(n) if n > 1 else 0.0) if normalize else h
    return out


def _logits(seed, shape=(2, 3, 7), scale=3.0):
    return (np.random.default_rng(seed).normal(size=shape) * scale).astype(np.float32)


_ent = jax.jit(token_entropy)
_lpe = jax.jit(logprobs_and_entropy)
_att = jax.jit(attention_entropy, static_argnames=("normalize", "from_logits"))

# ---------------------------------------------------------------- hand-checkable cases


def test_uniform_is_log_v_and_one_hot_is_zero():
    for v in (1, 2, 7, 50):
        np.testing.assert_allclose(_ent(jnp.zeros((3, v))), math.log(v), rtol=1e-6, atol=1e-7)
    one_hot = jnp.full((2, 5), -jnp.inf).at[:, 2].set(1.3)
    np.testing.assert_array_equal(_ent(one_hot), 0.0)
    # a finite but overwhelming logit gap is also ~0 (no overflow)
    peaked = jnp.array([[1e4, 0.0, -1e4, 0.0]])
    np.testing.assert_allclose(_ent(peaked), 0.0, atol=1e-6)
    # two equal logits + the rest -inf → ln 2; all -inf → 0
    two = jnp.array([[0.5, -jnp.inf, 0.5, -jnp.inf], [-jnp.inf] * 4])
    np.testing.assert_allclose(_ent(two), [math.log(2), 0.0], rtol=1e-6)


def test_logprobs_hand():
    z = jnp.log(jnp.array([[0.5, 0.25, 0.25]]))
    lp, h = _lpe(z, jnp.array([1]))
    np.testing.assert_allclose(lp, [math.log(0.25)], rtol=1e-6)
    np.testing.assert_allclose(h, [1.5 * math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(logprobs(z, jnp.array([0])), [math.log(0.5)], rtol=1e-6)


def test_temperature():
    z = _logits(0)
    ent_t = jax.jit(lambda a, t: token_entropy(a, temperature=t))
    for t in (0.5, 1.0, 2.0):
        np.testing.assert_allclose(ent_t(z, t), np_entropy(z / t), rtol=1e-5, atol=1e-6)
    # the python-float path (validated, not traced) once
    np.testing.assert_allclose(token_entropy(z, temperature=2.0), np_entropy(z / 2), rtol=1e-5)
    t_arr = np.array([0.7, 1.3], np.float32)[:, None] * np.ones((1, 3), np.float32)
    np.testing.assert_allclose(ent_t(z, t_arr), np_entropy(z / t_arr[..., None]), rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(z, temperature=0.0)


def test_input_validation():
    z = _logits(1)
    with pytest.raises(ValueError, match="labels shape"):
        logprobs_and_entropy(z, jnp.zeros((2,), jnp.int32))
    with pytest.raises(ValueError, match="integers"):
        logprobs_and_entropy(z, jnp.zeros((2, 3), jnp.float32))
    with pytest.raises(ValueError, match="Tq, Tk"):
        attention_entropy(jnp.ones((4,)))


# ---------------------------------------------------------------- random cases vs NumPy


@pytest.mark.parametrize("seed", [0, 1])
def test_random_vs_numpy(seed, x64):
    z = _logits(seed).astype(np.float64)
    z[0, 0, :3] = -np.inf  # masked vocabulary entries
    labels = np.random.default_rng(seed).integers(3, 7, size=(2, 3))
    lp, h = _lpe(z, labels)
    np.testing.assert_allclose(h, np_entropy(z), rtol=1e-12, atol=1e-12)
    want_lp = np.take_along_axis(np_log_softmax(z), labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(lp, want_lp, rtol=1e-12)
    assert h.dtype == jnp.float64


def test_bf16_input_computed_in_f32():
    z = _logits(2)
    zb = jnp.asarray(z, jnp.bfloat16)
    h = _ent(zb)
    assert h.dtype == jnp.float32
    np.testing.assert_allclose(h, np_entropy(np.asarray(zb, np.float64)), rtol=1e-5, atol=1e-6)


def test_nan_logits_propagate():
    z = jnp.array([[0.0, jnp.nan, 1.0], [0.0, 1.0, 2.0]])
    h = _ent(z)
    assert np.isnan(h[0]) and np.isfinite(h[1])


# ---------------------------------------------------------------- gradients


def test_check_grads(x64):
    z = _logits(3, scale=1.0).astype(np.float64)
    labels = np.random.default_rng(3).integers(0, 7, size=(2, 3))
    check_grads(jax.jit(token_entropy), (z,), order=2, modes=("rev",))
    check_grads(jax.jit(lambda a: logprobs_and_entropy(a, labels, temperature=0.7)), (z,), order=1)


def test_grad_with_neg_inf_logits_is_finite_and_zero_there():
    z = jnp.asarray(_logits(4))
    z = z.at[0, :, :4].set(-jnp.inf).at[1, 0, :].set(-jnp.inf)  # incl. an all -inf row
    labels = jnp.full((2, 3), 5)

    def f(a):
        lp, h = logprobs_and_entropy(a, labels)
        return jnp.sum(jnp.where(jnp.isfinite(lp), lp, 0.0)) + jnp.sum(h)

    g = jax.jit(jax.grad(f))(z)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(g)[~np.isfinite(np.asarray(z))], 0.0)
    # grad of H is p (E_p[z] − z) — check against NumPy on the finite entries
    gh = jax.jit(jax.grad(lambda a: jnp.sum(token_entropy(a))))(z)
    p = np.exp(np_log_softmax(z))
    zf = np.where(np.isfinite(z), z, 0.0)
    want = p * ((p * zf).sum(-1, keepdims=True) - zf)
    np.testing.assert_allclose(gh, want, atol=1e-5)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    n_inf=st.integers(0, 7),
    bf16=st.booleans(),
)
def test_property_finite(seed, scale, n_inf, bf16):
    z = _logits(seed, shape=(2, 3, 7), scale=scale)
    z[..., :n_inf] = -np.inf
    z = jnp.asarray(z, jnp.bfloat16 if bf16 else jnp.float32)
    labels = jnp.full((2, 3), 6)
    lp, h = _lpe(z, labels)
    assert np.all(np.isfinite(h)) and np.all(h >= -1e-5) and np.all(h <= math.log(7) + 1e-5)
    assert np.all(np.isfinite(lp)) == (n_inf < 7)
    g = _grad_h(z)
    assert np.all(np.isfinite(np.asarray(g, np.float32)))


_grad_h = jax.jit(jax.grad(lambda a: jnp.sum(token_entropy(a))))


# ---------------------------------------------------------------- attention entropy


def _causal(t):
    return np.tril(np.ones((t, t), bool))


def test_attention_uniform_causal_is_log_i():
    t = 6
    m = _causal(t)
    p = m / m.sum(-1, keepdims=True)
    want = np.log(np.arange(1, t + 1))
    np.testing.assert_allclose(_att(p, m), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(_att(p, m, normalize=True), [0] + [1] * (t - 1), rtol=1e-6)
    # from logits: zeros under the causal mask give the same uniform rows
    z = np.zeros((t, t), np.float32)
    np.testing.assert_allclose(_att(z, m, from_logits=True), want, rtol=1e-6, atol=1e-7)
    # without a mask every key is visible: uniform over Tk
    np.testing.assert_allclose(_att(np.full((2, 4), 0.25)), [math.log(4)] * 2, rtol=1e-6)


def test_attention_padding_and_one_hot():
    p = np.array([[0.5, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], np.float32)
    pad = np.array([True, True, True, False])  # 3 valid keys
    np.testing.assert_allclose(_att(p, pad), [math.log(2), 0.0], atol=1e-7)
    np.testing.assert_allclose(
        _att(p, pad, normalize=True), [math.log(2) / math.log(3), 0.0], rtol=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_attention_random_vs_numpy(seed, x64):
    rng = np.random.default_rng(seed)
    b, h, t = 2, 3, 5
    z = rng.normal(size=(b, h, t, t)) * 2
    m = _causal(t)[None, None] & (rng.random((b, 1, 1, t)) < 0.8)
    m[..., 0] = True
    p = np.exp(np_log_softmax(np.where(m, z, -np.inf)))
    for norm in (False, True):
        want = np_attention_entropy(p, m, norm)
        np.testing.assert_allclose(_att(p, m, normalize=norm), want, atol=1e-12)
        got = _att(z, m, normalize=norm, from_logits=True)
        np.testing.assert_allclose(got, want, atol=1e-12)


def test_attention_bf16_and_fully_masked_rows():
    rng = np.random.default_rng(5)
    z = jnp.asarray(rng.normal(size=(2, 4, 4)), jnp.bfloat16)
    m = np.ones((2, 4, 4), bool)
    m[0, 1] = False  # a query that sees no key
    h = _att(z, m, from_logits=True)
    assert h.dtype == jnp.float32 and np.all(np.isfinite(h)) and h[0, 1] == 0
    g = jax.jit(jax.grad(lambda a: jnp.sum(attention_entropy(a, m, from_logits=True))))(z)
    assert np.all(np.isfinite(np.asarray(g, np.float32)))
    p = jax.nn.softmax(z.astype(jnp.float32), -1).astype(jnp.bfloat16)
    want = np_attention_entropy(np.asarray(p, np.float64), m)
    np.testing.assert_allclose(_att(p, m), want, rtol=1e-5, atol=1e-6)


def test_attention_check_grads(x64):
    rng = np.random.default_rng(6)
    m = _causal(4)
    z = rng.normal(size=(2, 4, 4))
    p = rng.random((2, 4, 4)) + 0.1  # strictly positive: p ln p is smooth there
    check_grads(
        jax.jit(lambda a: attention_entropy(a, m, normalize=True, from_logits=True)),
        (z,),
        order=1,
    )
    check_grads(jax.jit(lambda a: attention_entropy(a, m)), (p,), order=1)
