"""window_entropy (ARES convention) and entropy_stats vs float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.ops import FORKING_THRESHOLD, entropy_stats, window_entropy, window_valid_mask

# ---------------------------------------------------------------- float64 NumPy references


def np_window_entropy(h, m, window, partial=False):
    """ARES: for the i-th valid token, mean(H[i+1 : i+1+W]) over the row's valid tokens, only
    when len − i − 1 ≥ W (or over what is left with ``partial``)."""
    h, m = np.asarray(h, np.float64), np.asarray(m, bool)
    out = np.zeros(h.shape)
    valid = np.zeros(h.shape, bool)
    for b in range(h.shape[0]):
        pos = np.flatnonzero(m[b])
        ent = h[b, pos]
        for i, t in enumerate(pos):
            nxt = ent[i + 1 : i + 1 + window]
            if len(ent) - i - 1 >= window:
                out[b, t] = nxt.mean()
                valid[b, t] = True
            elif partial and len(nxt):
                out[b, t] = nxt.mean()
    return out, valid


def np_stats(h, m, threshold):
    sel = np.asarray(h, np.float64)[np.asarray(m, bool)]
    if sel.size == 0:
        return dict(mean=0.0, p50=0.0, p80=0.0, p95=0.0, frac_above=0.0)
    q = np.quantile(sel, [0.5, 0.8, 0.95])
    return dict(mean=sel.mean(), p50=q[0], p80=q[1], p95=q[2], frac_above=(sel > threshold).mean())


_win = jax.jit(window_entropy, static_argnames=("window", "partial"))
_stats = jax.jit(entropy_stats, static_argnames=("threshold",))

# ---------------------------------------------------------------- window entropy


def test_window_hand():
    # row 0: left padding 2, valid entropies 1..5; row 1: holes in the mask
    h = np.array([[9, 9, 1, 2, 3, 4, 5], [1, 2, 9, 3, 9, 4, 5]], np.float32)
    m = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 0, 1, 0, 1, 1]], bool)
    # W = 2, following tokens only: valid ranks 0..2 have a full window
    want = [[0, 0, 2.5, 3.5, 4.5, 0, 0], [2.5, 3.5, 0, 4.5, 0, 0, 0]]
    np.testing.assert_allclose(_win(h, m, window=2), want)
    want_partial = [[0, 0, 2.5, 3.5, 4.5, 5, 0], [2.5, 3.5, 0, 4.5, 0, 5, 0]]
    np.testing.assert_allclose(_win(h, m, window=2, partial=True), want_partial)
    np.testing.assert_array_equal(window_valid_mask(m, window=2), np.asarray(want) > 0)
    # W = 1 is the next token's entropy
    np.testing.assert_allclose(_win(h, m, window=1)[0], [0, 0, 2, 3, 4, 5, 0])


def test_window_too_short_rows_and_errors():
    h = np.ones((2, 4), np.float32)
    m = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(_win(h, m, window=4), 0.0)
    np.testing.assert_array_equal(window_valid_mask(m, window=4), False)
    with pytest.raises(ValueError, match="window"):
        window_entropy(h, m, window=0)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        window_entropy(h[0], m[0], window=2)


@pytest.mark.parametrize("seed,window", [(0, 4), (1, 3), (2, 1)])
def test_window_random_vs_numpy(seed, window, x64):
    rng = np.random.default_rng(seed)
    h = rng.gamma(1.0, size=(4, 13))
    m = rng.random((4, 13)) < 0.7
    m[0] = False
    for partial in (False, True):
        want, valid = np_window_entropy(h, m, window, partial)
        np.testing.assert_allclose(
            window_entropy(h, m, window=window, partial=partial), want, rtol=1e-12
        )
    np.testing.assert_array_equal(window_valid_mask(m, window=window), valid)


def test_window_grads(x64):
    rng = np.random.default_rng(3)
    h = rng.gamma(1.0, size=(3, 9))
    m = rng.random((3, 9)) < 0.8
    check_grads(jax.jit(lambda a: window_entropy(a, m, window=3)), (h,), order=1)
    check_grads(jax.jit(lambda a: window_entropy(a, m, window=3, partial=True)), (h,), order=1)


def test_window_bf16_and_nan_under_mask():
    h = np.random.default_rng(4).gamma(1.0, size=(2, 8)).astype(np.float32)
    m = np.ones((2, 8), bool)
    m[1, 3] = False
    hn = np.where(m, h, np.nan)
    out = _win(jnp.asarray(hn, jnp.bfloat16), m, window=2)
    assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
    want, _ = np_window_entropy(np.asarray(jnp.asarray(h, jnp.bfloat16), np.float64), m, 2)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    g = jax.jit(jax.grad(lambda a: jnp.sum(window_entropy(a, m, window=2))))(jnp.asarray(hn))
    assert np.all(np.isfinite(g))


# ---------------------------------------------------------------- entropy_stats


def test_stats_hand():
    h = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 99.0]], np.float32)
    m = np.array([[1, 1, 1, 1, 1, 0]], bool)
    s = _stats(h, m, threshold=1.5)
    assert set(s) == {"mean", "p50", "p80", "p95", "frac_above"}
    np.testing.assert_allclose(
        [s["mean"], s["p50"], s["p80"], s["p95"], s["frac_above"]], [2.0, 2.0, 3.2, 3.8, 0.6]
    )
    assert FORKING_THRESHOLD == 0.672
    np.testing.assert_allclose(entropy_stats(h, m)["frac_above"], 0.8)  # 1, 2, 3, 4 > 0.672


@pytest.mark.parametrize("seed", [0, 1])
def test_stats_random_vs_numpy(seed):
    rng = np.random.default_rng(seed)
    h = rng.gamma(0.5, size=(6, 11)).astype(np.float32)
    m = rng.random((6, 11)) < 0.6
    got = _stats(h, m, threshold=0.8)
    for k, v in np_stats(h, m, 0.8).items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_stats_empty_mask_and_grad():
    h = jnp.ones((2, 3))
    m = jnp.zeros((2, 3), bool)
    s = _stats(h, m, threshold=0.5)
    for v in s.values():
        assert v == 0.0
    g = jax.jit(jax.grad(lambda a: sum(entropy_stats(a, m).values())))(h)
    np.testing.assert_array_equal(g, 0.0)
    # mean carries the gradient; quantiles and frac_above do not
    m1 = jnp.ones((2, 3), bool)
    g = jax.jit(jax.grad(lambda a: sum(entropy_stats(a, m1).values())))(h)
    np.testing.assert_allclose(g, 1 / 6)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), p=st.sampled_from([0.0, 0.3, 1.0]), bf16=st.booleans())
def test_property_stats_and_window_finite(seed, p, bf16):
    rng = np.random.default_rng(seed)
    h = rng.gamma(1.0, size=(4, 9)) * 10.0 ** rng.integers(-3, 4)
    m = rng.random((4, 9)) < p
    h = jnp.asarray(np.where(m, h, np.inf), jnp.bfloat16 if bf16 else jnp.float32)
    s = _stats(h, m, threshold=FORKING_THRESHOLD)
    assert all(np.isfinite(v) for v in s.values())
    assert 0 <= s["frac_above"] <= 1 and s["p50"] <= s["p80"] <= s["p95"]
    assert np.all(np.isfinite(_win(h, m, window=4)))


# ---------------------------------------------------------------- axis_name equivalence


def test_stats_distributed_equivalence():
    rng = np.random.default_rng(7)
    h = rng.gamma(0.5, size=(16, 7)).astype(np.float32)
    m = rng.random((16, 7)) < 0.6

    def fn(a, b, axis_name):
        return entropy_stats(a, b, threshold=0.5, axis_name=axis_name), window_entropy(
            a, b, window=2
        )

    want = assert_matches_distributed(fn, (h, m), atol=1e-6, rtol=1e-6)
    for k, v in np_stats(h, m, 0.5).items():
        np.testing.assert_allclose(want[0][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
