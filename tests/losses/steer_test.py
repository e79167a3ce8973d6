"""Tests for entropylab.losses.steer: Ω estimator, exp/linear token weights, weighted PPO loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed

from entropylab.losses.steer import steer_loss, steer_omega, steer_weights


def np_omega(lp, old, a, h, m):
    p = np.clip(np.exp(lp), 1e-8, 1 - 1e-8)
    p_old = np.maximum(np.exp(old), 1e-8)
    with np.errstate(all="ignore"):
        om = a / p_old * p * (1 - p) * (np.log(p) + h)
    return np.where(m & np.isfinite(om), om, 0.0)


def np_weights(om, m, mode, lmin, lmax, k=None, floor=0.02):
    a = np.abs(om)
    mx, mn = (a[m].max(), a[m].min()) if m.any() else (0.0, 0.0)
    if mode == "exp":
        kk = -math.log(lmin) / max(mx, floor) if k is None else k
        lam = np.clip(np.exp(-kk * a), lmin, lmax)
    elif mx > mn:
        lam = np.clip(lmax - (a - mn) * (lmax - lmin) / (mx - mn), lmin, lmax)
    else:
        lam = np.full_like(a, 0.5 * (lmin + lmax))
    return np.where(m, lam, 1.0)


def np_dapo(lp, old, a, el=0.2, eh=0.28, c=10.0):
    r = np.exp(np.clip(lp - old, -20, 20))
    l1, l2 = -a * r, -a * np.clip(r, 1 - el, 1 + eh)
    lc = np.maximum(l1, l2)
    loss = np.where(a < 0, np.minimum(lc, -a * c), lc)
    active = (l1 >= l2) & ~((a < 0) & (lc > -a * c))
    return loss, np.where(active, -a * r, 0.0)


def _batch(seed, b=16, t=8):
    rng = np.random.default_rng(seed)
    lp = -rng.exponential(1.0, (b, t))
    old = lp + rng.normal(0, 0.1, (b, t))
    adv = np.repeat(rng.normal(0, 1, (b, 1)), t, 1)
    h = rng.uniform(0, 2.5, (b, t))
    m = rng.uniform(size=(b, t)) < 0.8
    return lp, old, adv, m, h


def test_hand_checked():
    lp = jnp.log(jnp.array([[0.5, 0.5]]))
    a = jnp.array([[1.0, 0.0]])
    h = jnp.ones((1, 2))
    m = jnp.ones((1, 2), bool)
    om = steer_omega(lp, lp, a, m, entropy=h)
    np.testing.assert_allclose(om, [[0.5 * (1 - math.log(2)), 0.0]], rtol=1e-6)
    lam, met = steer_weights(lp, lp, a, m, entropy=h)
    np.testing.assert_allclose(lam, [[0.8, 1.0]], rtol=1e-6)  # max |Ω| gets exactly λ_min
    lam, _ = steer_weights(lp, lp, a, m, entropy=h, mode="linear")
    np.testing.assert_allclose(lam, [[0.8, 1.2]], rtol=1e-6)
    lam, _ = steer_weights(lp, lp, jnp.zeros((1, 2)), m, entropy=h, mode="linear")
    np.testing.assert_allclose(lam, [[1.0, 1.0]])  # max = min → midpoint


@pytest.mark.parametrize(
    "kw",
    [dict(mode="exp"), dict(mode="exp", k=3.0, weight_min=0.5), dict(mode="linear")],
)
def test_weights_loss_grad_vs_numpy(x64, kw):
    lp, old, adv, m, h = _batch(0)
    old[0, 0] = -np.inf  # p_old clamp keeps things finite
    f = jax.jit(lambda x, e: steer_loss(x, old, adv, m, entropy=e, **kw))
    (loss, met), (g, g_h) = jax.value_and_grad(f, (0, 1), has_aux=True)(lp, h)
    om = np_omega(lp, old, adv, h, m)
    np.testing.assert_allclose(steer_omega(lp, old, adv, m, entropy=h), om, rtol=1e-10)
    lmin = kw.get("weight_min", 0.8)
    lam = np_weights(om, m, kw["mode"], lmin, 1.0 if kw["mode"] == "exp" else 1.2, kw.get("k"))
    got_lam, _ = steer_weights(lp, old, adv, m, entropy=h, **kw)
    np.testing.assert_allclose(got_lam, lam, rtol=1e-10)
    per, dper = np_dapo(lp, old, adv)
    np.testing.assert_allclose(loss, (lam * per)[m].mean(), rtol=1e-10)
    np.testing.assert_allclose(g, np.where(m, lam * dper, 0.0) / m.sum(), atol=1e-12)
    assert np.all(np.asarray(g_h) == 0.0)  # weights are detached
    np.testing.assert_allclose(met["steer/weights_mean"], lam[m].mean(), rtol=1e-10)
    np.testing.assert_allclose(met["steer/weights_min"], lam[m].min(), rtol=1e-10)
    assert np.isfinite(float(loss))


def test_empty_mask_errors_and_vmap():
    lp, old, adv, m, h = _batch(1)
    empty = np.zeros_like(m)
    (loss, met), g = jax.jit(
        jax.value_and_grad(lambda x: steer_loss(x, old, adv, empty, entropy=h), has_aux=True)
    )(jnp.full(lp.shape, -jnp.inf))
    assert loss == 0 and np.all(np.asarray(g) == 0)
    assert all(np.isfinite(v) for v in met.values())
    with pytest.raises(ValueError, match="mode"):
        steer_weights(lp, old, adv, m, entropy=h, mode="sigmoid")
    with pytest.raises(ValueError, match="weight_min"):
        steer_weights(lp, old, adv, m, entropy=h, weight_min=1.5)
    v = jax.jit(jax.vmap(lambda *a: steer_loss(*a[:4], entropy=a[4])[0]))(
        *(np.stack([x, x]) for x in (lp, old, adv, m, h))
    )
    np.testing.assert_allclose(v[0], steer_loss(lp, old, adv, m, entropy=h)[0], rtol=1e-6)


def test_distributed():
    lp, old, adv, m, h = (np.asarray(x, np.float32) for x in _batch(2))

    def fn(lp, old, adv, m, h, *, axis_name=None):
        loss, met = steer_loss(lp, old, adv, m, entropy=h, axis_name=axis_name)
        lam, _ = steer_weights(lp, old, adv, m, entropy=h, mode="linear", axis_name=axis_name)
        return loss, met, lam

    assert_matches_distributed(fn, (lp, old, adv, m, h), {}, atol=2e-6)
