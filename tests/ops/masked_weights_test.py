"""Non-binary masks weight like verl; out-of-range labels give NaN in dense and fused paths.

The NumPy float64 references are verl's formulas (verl ``torch_functional.masked_mean``:
``(x * mask).sum() / mask.sum()``; ``masked_var``: masked_mean of the squared deviation times
the Bessel factor ``mask.sum() / (mask.sum() - 1)``; ``core_algos.agg_loss``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropylab.ops import (
    aggregate,
    fused_logprobs_and_entropy,
    logprobs_and_entropy,
    masked_mean,
    masked_sum,
    masked_var,
    token_entropy,
)

X = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]], np.float32)
W = np.array([[1.0, 0.5, 0.0, 2.0], [0.0, 0.0, 1.0, 0.25]], np.float32)


def test_weighted_mask_hand_numbers():
    # Σ w x = 1 + 1 + 0 + 8 + 7 + 2 = 19;  Σ w = 4.75
    np.testing.assert_allclose(masked_sum(X, W), 19.0, rtol=1e-6)
    np.testing.assert_allclose(masked_mean(X, W), 19.0 / 4.75, rtol=1e-6)
    np.testing.assert_allclose(masked_mean(X, W, axis=-1), [10.0 / 3.5, 9.0 / 1.25], rtol=1e-6)
    x, w = X.astype(np.float64), W.astype(np.float64)
    mean = (x * w).sum() / w.sum()
    var = ((x - mean) ** 2 * w).sum() / w.sum() * (w.sum() / (w.sum() - 1))  # verl masked_var
    np.testing.assert_allclose(masked_var(X, W), var, rtol=1e-5)
    # agg_loss: token-mean = masked_mean; seq-mean-token-mean = mean_i (Σ_t w ℓ / Σ_t w)
    np.testing.assert_allclose(aggregate(X, W, "token-mean"), mean, rtol=1e-6)
    seq = (x * w).sum(-1) / w.sum(-1)
    np.testing.assert_allclose(aggregate(X, W, "seq-mean-token-mean"), seq.mean(), rtol=1e-6)
    np.testing.assert_allclose(
        aggregate(X, W, "seq-mean-token-sum"), (x * w).sum(-1).mean(), rtol=1e-6
    )
    # 0/1 masks are plain selection; bool masks likewise
    b = W > 0
    np.testing.assert_allclose(masked_mean(X, b), X[b].mean(), rtol=1e-6)
    np.testing.assert_allclose(masked_mean(X, b.astype(np.float32)), X[b].mean(), rtol=1e-6)


def test_weighted_mask_zero_weight_blocks_nan_and_nan_weight_propagates():
    x = X.copy()
    x[0, 2] = np.nan  # under weight 0
    assert np.isfinite(float(masked_mean(x, W)))
    g = jax.grad(lambda v: masked_mean(v, W))(jnp.asarray(x))
    assert np.all(np.isfinite(np.asarray(g)))
    w = jnp.asarray(W).at[1, 2].set(jnp.nan)
    assert np.isnan(float(jax.jit(masked_mean)(X, w)))  # traced: NaN propagates


@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_concrete_bad_weights_rejected(bad):
    w = W.copy()
    w[0, 0] = bad
    with pytest.raises(ValueError, match="mask must hold finite weights >= 0"):
        masked_mean(X, w)


def test_out_of_range_labels_nan_in_dense_and_fused():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(5, 3)).astype(np.float32)
    u = rng.normal(size=(3, 7)).astype(np.float32)
    labels = np.array([0, 6, -1, 7, -7], np.int32)
    lp_d, ent_d = logprobs_and_entropy(h @ u, labels)
    lp_f, ent_f = fused_logprobs_and_entropy(h, u, labels, vocab_block=4)
    for lp in (lp_d, lp_f):
        lp = np.asarray(lp)
        assert np.all(np.isfinite(lp[:2])) and np.all(np.isnan(lp[2:])), lp
    np.testing.assert_allclose(np.asarray(lp_d)[:2], np.asarray(lp_f)[:2], rtol=1e-5)
    np.testing.assert_allclose(ent_d, ent_f, rtol=1e-5)
    # the gradient of the valid positions is untouched by the invalid ones
    g = jax.grad(lambda z: jnp.sum(logprobs_and_entropy(z, labels)[0][:2]))(jnp.asarray(h @ u))
    assert np.all(np.isfinite(np.asarray(g)))


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.bool_])
def test_integer_logits_rejected(dtype):
    with pytest.raises(TypeError, match="logits must be floating point"):
        token_entropy(np.ones((2, 3), dtype))
    with pytest.raises(TypeError, match="logits must be floating point"):
        logprobs_and_entropy(np.ones((2, 3), dtype), np.zeros(2, np.int32))
