"""Masked reductions, quantiles and verl loss aggregation vs float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.ops import (
    AGG_MODES,
    aggregate,
    masked_count,
    masked_mean,
    masked_quantile,
    masked_sum,
    masked_var,
    masked_whiten,
)

# ---------------------------------------------------------------- float64 NumPy references


def np_mean(x, m):
    x, m = np.asarray(x, np.float64), np.asarray(m, bool)
    return x[m].mean() if m.any() else 0.0


def np_var(x, m, unbiased=True):
    sel = np.asarray(x, np.float64)[np.asarray(m, bool)]
    ddof = 1 if unbiased else 0
    return sel.var(ddof=ddof) if sel.size > ddof else 0.0


def np_whiten(x, m, shift_mean=True, eps=1e-8):
    x, m = np.asarray(x, np.float64), np.asarray(m, bool)
    mu, var = np_mean(x, m), np_var(x, m)
    out = (x - mu) / np.sqrt(var + eps)
    if not shift_mean:
        out = out + mu
    return np.where(m, out, 0.0)


def np_aggregate(x, m, mode, scale=None):
    x, m = np.asarray(x, np.float64), np.asarray(m, bool)
    b, t = x.shape
    seq_sum = np.array([x[i][m[i]].sum() for i in range(b)])
    n = m.sum(-1)
    if mode == "token-mean":
        return np_mean(x, m)
    if mode == "seq-mean-token-sum":
        return seq_sum[n > 0].mean() if (n > 0).any() else 0.0
    if mode == "seq-mean-token-mean":
        return (seq_sum[n > 0] / n[n > 0]).mean() if (n > 0).any() else 0.0
    if mode == "seq-mean-token-sum-norm":
        return seq_sum.sum() / (b * (t if scale is None else scale))
    raise AssertionError(mode)


def _data(seed, b=8, t=6, p=0.6):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, t)).astype(np.float32)
    m = rng.random((b, t)) < p
    m[0] = False  # always one empty row
    return x, m


_quantile = jax.jit(masked_quantile)
_agg = jax.jit(aggregate, static_argnames=("mode",))

# ---------------------------------------------------------------- hand-checkable cases

X34 = np.arange(1.0, 13.0, dtype=np.float32).reshape(3, 4)
M34 = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)


@pytest.mark.parametrize(
    "mode,want",
    [
        ("token-mean", 29 / 6),  # (1+2+5+6+7+8)/6
        ("seq-mean-token-sum", (3 + 26) / 2),  # empty row 3 excluded
        ("seq-mean-token-mean", (1.5 + 6.5) / 2),
        ("seq-mean-token-sum-norm", 29 / (3 * 4)),  # Σ / (B · T)
    ],
)
def test_aggregate_hand_3x4(mode, want):
    np.testing.assert_allclose(_agg(X34, M34, mode), want, rtol=1e-6)
    np.testing.assert_allclose(np_aggregate(X34, M34, mode), want, rtol=1e-12)


def test_aggregate_loss_scale_factor_and_errors():
    got = aggregate(X34, M34, "seq-mean-token-sum-norm", loss_scale_factor=10.0)
    np.testing.assert_allclose(got, 29 / 30, rtol=1e-6)
    # jit-traced scale factor is accepted
    f = jax.jit(lambda s: aggregate(X34, M34, "seq-mean-token-sum-norm", loss_scale_factor=s))
    np.testing.assert_allclose(f(10.0), 29 / 30, rtol=1e-6)
    with pytest.raises(ValueError, match="loss_scale_factor"):
        aggregate(X34, M34, "seq-mean-token-sum-norm", loss_scale_factor=0)
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(X34, M34, "mean")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        aggregate(X34[0], M34[0])


def test_hand_mean_var_quantile():
    np.testing.assert_allclose(masked_sum(X34, M34), 29.0)
    np.testing.assert_allclose(masked_count(M34), 6.0)
    np.testing.assert_allclose(masked_count(M34.astype(np.float32) * 0.5), 6.0)  # nonzero = 1
    np.testing.assert_allclose(masked_mean(X34, M34, axis=-1), [1.5, 6.5, 0.0])
    # selected 1,2,5,6,7,8: mean 29/6, unbiased var
    sel = np.array([1, 2, 5, 6, 7, 8.0])
    np.testing.assert_allclose(masked_var(X34, M34), sel.var(ddof=1), rtol=1e-6)
    np.testing.assert_allclose(masked_var(X34, M34, unbiased=False), sel.var(), rtol=1e-6)
    # median of 6 values: between 5 and 6; q=0.8 at position 4 → 7
    np.testing.assert_allclose(_quantile(X34, M34, jnp.array([0.5, 0.8, 0, 1])), [5.5, 7, 1, 8])


# ---------------------------------------------------------------- random cases vs NumPy


@jax.jit
def _random_case(x, m):
    return dict(
        mean=masked_mean(x, m),
        mean_b=masked_mean(x, m, axis=-1),
        var_t=masked_var(x, m, axis=0),
        var=masked_var(x, m),
        var_biased=masked_var(x, m, unbiased=False),
        whiten=masked_whiten(x, m),
        whiten_noshift=masked_whiten(x, m, shift_mean=False),
        agg=jnp.stack([aggregate(x, m, mode) for mode in AGG_MODES]),
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_random_vs_numpy(seed, x64):
    x, m = _data(seed)
    x = x.astype(np.float64)
    got = _random_case(x, m)
    assert got["mean"].dtype == jnp.float64
    np.testing.assert_allclose(got["mean"], np_mean(x, m), rtol=1e-12)
    np.testing.assert_allclose(got["mean_b"], [np_mean(x[i], m[i]) for i in range(len(x))], 1e-12)
    np.testing.assert_allclose(
        got["var_t"], [np_var(x[:, j], m[:, j]) for j in range(x.shape[1])], 1e-12
    )
    np.testing.assert_allclose(got["var"], np_var(x, m), rtol=1e-12)
    np.testing.assert_allclose(got["var_biased"], np_var(x, m, False), rtol=1e-12)
    np.testing.assert_allclose(got["whiten"], np_whiten(x, m), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        got["whiten_noshift"], np_whiten(x, m, False), rtol=1e-10, atol=1e-12
    )
    want = [np_aggregate(x, m, mode) for mode in AGG_MODES]
    np.testing.assert_allclose(got["agg"], want, rtol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantile_equals_numpy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    x = rng.normal(size=(n,)).astype(np.float32)
    m = rng.random(n) < 0.7
    m[rng.integers(n)] = True
    q = np.array([0.0, 0.1, 0.25, 0.5, 0.8, 0.95, 1.0])
    want = np.quantile(x[m].astype(np.float64), q)
    np.testing.assert_allclose(_quantile(x, m, q), want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_quantile(x, m, 0.3), np.quantile(x[m], 0.3), rtol=1e-6)
    # a NaN or inf under the mask is ignored
    x2 = np.where(m, x, np.nan)
    np.testing.assert_allclose(_quantile(x2, m, q), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="q must be"):
        masked_quantile(x, m, 1.5)


def test_quantile_bf16_and_no_gradient():
    x = jnp.asarray(np.linspace(0, 1, 9), jnp.bfloat16)
    np.testing.assert_allclose(masked_quantile(x, jnp.ones(9, bool), 0.5), 0.5, atol=1e-2)
    g = jax.grad(lambda v: masked_quantile(v, jnp.ones(9, bool), 0.5))(jnp.linspace(0.0, 1, 9))
    np.testing.assert_array_equal(g, 0.0)


# ---------------------------------------------------------------- empty masks, leaks, grads


@jax.jit
def _all_reductions(x, m):
    out = [masked_mean(x, m), masked_var(x, m), jnp.sum(masked_whiten(x, m))]
    out += [aggregate(x, m, mode) for mode in AGG_MODES]
    return jnp.stack(out).astype(jnp.float32)


_jac_all = jax.jit(jax.jacrev(_all_reductions))


def test_empty_mask_zero_value_and_grad():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32)
    m = jnp.zeros((3, 5), bool)
    np.testing.assert_array_equal(_all_reductions(x, m), 0.0)
    np.testing.assert_array_equal(masked_quantile(x, m, [0.1, 0.9]), 0.0)
    np.testing.assert_array_equal(_jac_all(x, m), 0.0)


def test_nan_under_mask_does_not_leak():
    x, m = _data(3)
    x = jnp.asarray(np.where(m, x, np.nan))
    assert np.all(np.isfinite(_all_reductions(x, m)))
    jac = np.asarray(_jac_all(x, m))
    assert np.all(np.isfinite(jac))
    np.testing.assert_array_equal(jac[:, ~m], 0.0)


def test_check_grads(x64):
    x, m = _data(4)
    x = x.astype(np.float64)
    agg = jax.jit(lambda v: jnp.stack([aggregate(v, m, mode) for mode in AGG_MODES]))
    check_grads(agg, (x,), order=1, modes=("fwd", "rev"))
    red = jax.jit(
        lambda v: (
            masked_mean(v, m, axis=-1),
            masked_var(v, m),
            masked_var(v, m, axis=0, unbiased=False),
            masked_whiten(v, m),
        )
    )
    check_grads(red, (x,), order=1, modes=("fwd", "rev"))


def test_jit():
    x, m = _data(6)
    f = jax.jit(lambda a, b: (_all_reductions(a, b), masked_quantile(a, b, 0.5)))
    r, q = f(x, m)
    np.testing.assert_allclose(r[0], np_mean(x, m), rtol=1e-5)
    np.testing.assert_allclose(q, np.quantile(x[m], 0.5), rtol=1e-5)


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1.0, 1e4]),
    bf16=st.booleans(),
    empty=st.booleans(),
)
def test_property_finite(seed, scale, bf16, empty):
    x, m = _data(seed)
    if empty:
        m[:] = False
    x = jnp.asarray(x * scale, jnp.bfloat16 if bf16 else jnp.float32)
    assert np.all(np.isfinite(np.asarray(_all_reductions(x, m))))
    assert np.all(np.isfinite(np.asarray(_jac_all(x, m), np.float32)))


# ---------------------------------------------------------------- axis_name equivalence


def test_distributed_equivalence():
    x, m = _data(7, b=16, t=5)

    def fn(a, b, axis_name):
        return {
            "sum": masked_sum(a, b, axis_name=axis_name),
            "mean": masked_mean(a, b, axis_name=axis_name),
            "mean_t": masked_mean(a, b, axis=0, axis_name=axis_name),
            "var": masked_var(a, b, axis_name=axis_name),
            "whiten": masked_whiten(a, b, axis_name=axis_name),
            "q": masked_quantile(a, b, jnp.array([0.2, 0.5, 0.95]), axis_name=axis_name),
            **{mode: aggregate(a, b, mode, axis_name=axis_name) for mode in AGG_MODES},
        }

    want = assert_matches_distributed(fn, (x, m), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(want["q"], np.quantile(x[m], [0.2, 0.5, 0.95]), rtol=1e-5)
    for mode in AGG_MODES:
        np.testing.assert_allclose(want[mode], np_aggregate(x, m, mode), rtol=1e-5)
