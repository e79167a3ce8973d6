"""Attention-entropy regulariser (arXiv:2501.03489) vs float64 NumPy references written here:
the paper's Algorithm-1 averaging and a port of the released ``EntropyRegularization.compute_loss``
(Nandan91/entropy-guided-attention-llm ``entropy_regularization.py`` @8592b75), with gradients to
the learnable thresholds."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropylab.losses.attention import attention_entropy_regularizer


def np_paper(ent, theta, mask, ctx, gamma, lam):
    """Algorithm 1: per-head mean entropy over valid rows (and batch), one penalty per head."""
    n_l, _, n_h, _ = ent.shape
    e_max = math.log(ctx)
    total = 0.0
    for li in range(n_l):
        layer = 0.0
        for hi in range(n_h):
            e = np.sum(ent[li, :, hi, :] * mask) / np.sum(mask)
            d = e - theta[li, hi] * e_max
            layer += d * d if abs(d) > gamma * e_max else 0.0
        total += layer / n_h
    return lam * total / n_l


def np_released(ent, theta, mask, ctx, gamma, lam):
    """Port of the released loop: per-row penalty, summed over batch and rows, / heads, / layers."""
    n_l, _, n_h, _ = ent.shape
    e_max = math.log(ctx)
    total = 0.0
    for li in range(n_l):
        layer = 0.0
        for hi in range(n_h):
            dev = ent[li, :, hi, :] - theta[li, hi] * e_max
            pen = np.where(np.abs(dev) > gamma * e_max, dev, 0.0) ** 2
            layer += np.sum(pen * mask)
        total += layer / n_h
    return lam * total / n_l


def test_hand_case():
    # L=1, B=1, H=2, T=2; E_max = ln 4 = 1.3862944, tol = 0.2·E_max = 0.2772589, θ·E_max = 0.6931472
    ent = np.array([[[[0.5, 0.7], [1.2, 1.0]]]])
    theta = np.array([[0.5, 0.5]])
    loss, m = attention_entropy_regularizer(ent, theta, context_size=4, coeff=1.0)
    # paper: head means 0.6 (|δ| = 0.0931 inside) and 1.1 (δ = 0.4068528 → δ² = 0.1655292); / 2
    assert float(loss) == pytest.approx(0.0827646083, rel=1e-6)
    assert float(m["attn_reg/frac_outside"]) == 0.5
    np.testing.assert_allclose(m["attn_reg/head_entropy"], [[0.6, 1.1]], rtol=1e-6)
    # released: rows of head 1: δ = 0.5068528 and 0.3068528, both outside → 0.2569. + 0.0941587
    loss, m = attention_entropy_regularizer(
        ent, theta, context_size=4, coeff=1.0, reduction="released"
    )
    assert float(loss) == pytest.approx(0.1755292167, rel=1e-6)
    assert float(m["attn_reg/frac_outside"]) == 0.5
    # λ scales linearly; default λ = 1e-5, default context size = T
    loss, _ = attention_entropy_regularizer(ent, theta, context_size=4)
    assert float(loss) == pytest.approx(0.0827646083e-5, rel=1e-6)
    loss_t, _ = attention_entropy_regularizer(ent, theta, coeff=1.0)  # E_max = ln 2
    assert float(loss_t) == pytest.approx(np_paper(ent, theta, np.ones((1, 2)), 2, 0.2, 1.0))


@pytest.mark.parametrize("reduction", ["paper", "released"])
def test_random_inputs_and_threshold_gradients(x64, reduction):
    rs = np.random.RandomState(0)
    n_l, b, h, t = 3, 2, 4, 6
    ent = rs.uniform(0.0, math.log(t), (n_l, b, h, t))
    theta = rs.uniform(0.0, 1.0, (n_l, h))
    # head (0, 0): every row at exactly its target → inside the dead zone, zero gradient
    ent[0, :, 0, :] = 1.0
    theta[0, 0] = 1.0 / math.log(8)
    mask = np.ones((b, t))
    mask[1, :2] = 0.0
    ref = np_paper if reduction == "paper" else np_released
    kw = dict(context_size=8, tolerance=0.1, coeff=1e-2, reduction=reduction)
    loss, _ = attention_entropy_regularizer(ent, theta, mask, **kw)
    want = ref(ent, theta, mask, 8, 0.1, 1e-2)
    assert want > 0
    np.testing.assert_allclose(float(loss), want, rtol=1e-12)

    def f(th, e):
        return attention_entropy_regularizer(e, th, mask, **kw)[0]

    g_th, g_e = jax.grad(f, argnums=(0, 1))(jnp.asarray(theta), jnp.asarray(ent))
    # central differences of the NumPy reference (float64); no threshold sits on the dead-zone edge
    eps = 1e-6
    num = np.zeros_like(theta)
    for idx in np.ndindex(theta.shape):
        tp, tm = theta.copy(), theta.copy()
        tp[idx] += eps
        tm[idx] -= eps
        num[idx] = (ref(ent, tp, mask, 8, 0.1, 1e-2) - ref(ent, tm, mask, 8, 0.1, 1e-2)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(g_th), num, rtol=1e-6, atol=1e-12)
    assert np.abs(num).max() > 0 and num[0, 0] == 0 and np.asarray(g_th)[0, 0] == 0
    # entropy gradient: zero on masked rows, matches finite differences on one valid entry
    assert np.all(np.asarray(g_e)[:, 1, :, :2] == 0)
    idx = (1, 0, 2, 3)
    ep, em = ent.copy(), ent.copy()
    ep[idx] += eps
    em[idx] -= eps
    num_e = (ref(ep, theta, mask, 8, 0.1, 1e-2) - ref(em, theta, mask, 8, 0.1, 1e-2)) / (2 * eps)
    np.testing.assert_allclose(float(g_e[idx]), num_e, rtol=1e-6, atol=1e-12)


def test_shared_threshold_vector_and_released_scales_with_batch():
    rs = np.random.RandomState(1)
    ent = rs.uniform(0, 3, (2, 1, 3, 5)).astype(np.float32)
    th = np.array([0.1, 0.5, 0.9], np.float32)
    a, _ = attention_entropy_regularizer(ent, th, coeff=1.0)
    b, _ = attention_entropy_regularizer(ent, np.stack([th, th]), coeff=1.0)
    assert float(a) == float(b)
    # duplicating the batch: paper's mean unchanged, released sum doubles
    ent2 = np.concatenate([ent, ent], axis=1)
    for red, factor in (("paper", 1.0), ("released", 2.0)):
        one, _ = attention_entropy_regularizer(ent, th, coeff=1.0, reduction=red)
        two, _ = attention_entropy_regularizer(ent2, th, coeff=1.0, reduction=red)
        np.testing.assert_allclose(float(two), factor * float(one), rtol=1e-5)


def test_nan_propagates_and_bad_inputs_raise():
    ent = np.full((1, 1, 2, 3), 0.5, np.float32)
    th = np.zeros((1, 2), np.float32)
    ent_nan = ent.copy()
    ent_nan[0, 0, 1, 2] = np.nan
    for red in ("paper", "released"):
        loss, _ = attention_entropy_regularizer(ent_nan, th, reduction=red)
        assert np.isnan(float(loss))
        # a NaN on a masked-out row is excluded
        loss, _ = attention_entropy_regularizer(ent_nan, th, np.array([[1, 1, 0]]), reduction=red)
        assert np.isfinite(float(loss))
    bad = [
        (dict(entropy=ent[0]), "entropy must be"),
        (dict(entropy=np.ones((1, 1, 2, 3), np.int32)), "float"),
        (dict(thresholds=np.zeros(3)), "thresholds"),
        (dict(mask=np.ones((1, 2))), "mask"),
        (dict(context_size=1), "context_size"),
        (dict(context_size=4.0), "context_size"),
        (dict(tolerance=-0.1), "tolerance"),
        (dict(tolerance=float("nan")), "tolerance"),
        (dict(coeff=float("inf")), "coeff"),
        (dict(coeff=np.array([1e-5, 1e-5])), "coeff"),
        (dict(reduction="sum"), "reduction"),
    ]
    for kw, match in bad:
        args = {"entropy": ent, "thresholds": th, **kw}
        with pytest.raises(ValueError, match=match):
            attention_entropy_regularizer(**args)
