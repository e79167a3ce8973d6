"""Tests for entropylab.losses.siren: top-p entropy, peak mask, anchored regulariser, loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from jax.test_util import check_grads

from entropylab.losses.policy import ppo_clip_loss
from entropylab.losses.siren import (
    peak_entropy_mask,
    siren_anchor,
    siren_loss,
    siren_regularizer,
    top_p_entropy,
)


def np_top_p_entropy(z, top_p, top_k, over="vocab"):
    z = np.asarray(z, np.float64)
    out = np.zeros(z.shape[:-1])
    for idx in np.ndindex(*z.shape[:-1]):
        row = z[idx]
        order = np.argsort(-row, kind="stable")[: min(top_k, row.size)]
        vals = row[order]
        src = row if over == "vocab" else vals
        fin = src[np.isfinite(src)]
        if fin.size == 0:
            continue
        lse = fin.max() + np.log(np.exp(fin - fin.max()).sum())
        p = np.where(np.isfinite(vals), np.exp(vals - lse), 0.0)
        nuc = np.isfinite(vals) & (np.cumsum(p) < top_p)
        if nuc.any():
            q = np.exp(vals[nuc] - vals[nuc].max())
            q /= q.sum()
            out[idx] = -(q * np.log(q)).sum()
    return out


def np_peak(h, m, q):
    out = np.zeros_like(m)
    for i in range(h.shape[0]):
        if m[i].any():
            out[i] = m[i] & (h[i] > np.quantile(h[i][m[i]], q))
    return out


def np_h_sel(h, m, q):
    sel = np_peak(h, m, q)
    n = m.sum(1)
    ok = n > 0
    return (np.where(sel, h, 0).sum(1)[ok] / n[ok]).mean(), sel


def _batch(seed, b=16, t=10):
    rng = np.random.default_rng(seed)
    h = rng.exponential(0.7, (b, t))
    lp = -rng.uniform(0, 3, (b, t))
    old = lp + rng.normal(0, 0.2, (b, t))
    adv = np.repeat(rng.normal(0, 1, (b, 1)), t, 1)
    m = rng.uniform(size=(b, t)) < 0.8
    m[3] = False
    return lp, old, adv, m, h


# ----------------------------------------------------------------------------- top-p entropy
def test_top_p_entropy_hand_checked():
    z = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1], [0.9, 0.1, 1e-9, 1e-9]]))
    want = [-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)), 0.0]
    np.testing.assert_allclose(top_p_entropy(z, top_p=0.8), want, rtol=1e-6)
    # top_k = 1 → a single token → entropy 0
    np.testing.assert_allclose(top_p_entropy(z, top_p=0.95, top_k=1), [0.0, 0.0])


@pytest.mark.parametrize("over,top_k,top_p", [("vocab", 50, 0.8), ("top_k", 7, 0.9)])
def test_top_p_entropy_vs_numpy(x64, over, top_k, top_p):
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2.0, (3, 5, 50))
    z[0, 0, :10] = -np.inf
    z[1, 1, :] = -np.inf  # an all -inf row → 0
    got = top_p_entropy(z, top_p=top_p, top_k=top_k, normalize_over=over, temperature=0.7)
    np.testing.assert_allclose(got, np_top_p_entropy(z / 0.7, top_p, top_k, over), atol=1e-12)


def test_top_p_entropy_grads(x64):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (2, 3, 12))
    f = jax.jit(lambda x: top_p_entropy(x, top_p=0.7).sum())
    check_grads(f, (z,), order=1, modes=["rev"])
    z[0, 0, :4] = -np.inf
    z[1, 2, :] = -np.inf
    g = jax.jit(jax.grad(lambda x: top_p_entropy(x, top_p=0.9).sum()))(jnp.asarray(z))
    assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------------- peak mask, reg
def test_peak_mask_vs_numpy():
    _, _, _, m, h = _batch(0)
    h[5, :4] = h[5, 4]  # ties
    np.testing.assert_array_equal(peak_entropy_mask(h, m, quantile=0.8), np_peak(h, m, 0.8))
    with pytest.raises(ValueError, match="quantile"):
        peak_entropy_mask(h, m, quantile=1.2)


def test_regularizer_value_and_grad_vs_numpy(x64):
    _, _, _, m, h = _batch(1)
    anchor = 0.05
    f = lambda e, a: siren_regularizer(e, m, anchor=a, coef=0.3)  # noqa: E731
    vg = jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))
    (loss, met), (g, g_a) = vg(jnp.asarray(h), anchor)
    hs, sel = np_h_sel(h, m, 0.8)
    np.testing.assert_allclose(loss, 0.3 * (hs - anchor) ** 2, rtol=1e-10)
    n = m.sum(1)
    dhs = np.where(sel, 1.0, 0.0) / np.maximum(n, 1)[:, None] / (n > 0).sum()
    np.testing.assert_allclose(g, 2 * 0.3 * (hs - anchor) * dhs, atol=1e-12)
    assert g_a == 0.0  # the anchor is stop-gradient
    np.testing.assert_allclose(met["entropy/siren_sel"], hs, rtol=1e-10)
    np.testing.assert_allclose(siren_anchor(h, m), hs, rtol=1e-10)
    naive, _ = siren_regularizer(h, m, coef=0.3, form="naive")
    np.testing.assert_allclose(naive, -0.3 * hs, rtol=1e-10)
    with pytest.raises(ValueError, match="anchor"):
        siren_regularizer(h, m)
    with pytest.raises(ValueError, match="form"):
        siren_regularizer(h, m, anchor=0.1, form="l1")


def test_siren_loss_end_to_end_from_logits():
    lp, old, adv, m, _ = _batch(2, b=4, t=6)
    logits = np.random.default_rng(3).normal(0, 2, (4, 6, 32)).astype(np.float32)
    anchor = jax.jit(lambda lg: siren_anchor(top_p_entropy(lg), m))(logits)

    def f(lg, x):
        hp = top_p_entropy(lg)
        return siren_loss(x, old, adv, m, entropy_p=hp, anchor=anchor + 0.1, coef=1.0)

    (loss, met), (g_lg, g_lp) = jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))(logits, lp)
    pg, _ = ppo_clip_loss(
        lp,
        old,
        adv,
        m,
        clip_ratio_low=0.28,
        clip_ratio_high=0.28,
        loss_agg_mode="seq-mean-token-sum-norm",
    )
    np.testing.assert_allclose(loss, pg + met["entropy/siren_loss"], rtol=1e-6)
    np.testing.assert_allclose(met["entropy/siren_mse"], 0.01, rtol=1e-4)
    assert np.all(np.isfinite(g_lg)) and np.abs(g_lg).sum() > 0  # gradient reaches the logits
    assert np.all(np.isfinite(g_lp))


def test_empty_mask_and_jit():
    lp, old, adv, m, h = _batch(4)
    empty = np.zeros_like(m)
    f = jax.jit(lambda e: siren_loss(lp, old, adv, empty, entropy_p=e, anchor=0.3)[0])
    v, g = jax.value_and_grad(f)(jnp.asarray(h, jnp.float32))
    assert np.isclose(v, 0.005 * 0.09) and np.all(np.asarray(g) == 0)


def test_distributed():
    lp, old, adv, m, h = (np.asarray(x, np.float32) for x in _batch(5))

    def fn(lp, old, adv, m, h, *, axis_name=None):
        loss, met = siren_loss(
            lp, old, adv, m, entropy_p=h, anchor=0.2, coef=0.5, axis_name=axis_name
        )
        met["anchor"] = siren_anchor(h, m, axis_name=axis_name)
        return loss, met, peak_entropy_mask(h, m)

    assert_matches_distributed(fn, (lp, old, adv, m, h), {}, atol=2e-6, grad_argnums=(0, 4))
