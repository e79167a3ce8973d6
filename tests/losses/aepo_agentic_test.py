"""Tests for agentic AEPO: entropy-aware advantages, gradient-preserving high clip, budget rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.losses.aepo_agentic import (
    aepo_agentic_loss,
    aepo_global_budget,
    entropy_aware_advantages,
)


def np_z(h, m):
    v = h[m > 0]
    if v.size == 0:
        return np.zeros_like(h)
    sd = v.std(ddof=1) if v.size > 1 else 0.0
    sd = sd if sd > 0 else 1.0
    return np.where(m > 0, (h - v.mean()) / sd, 0.0)


def np_loss_and_grad(logp, old, adv, h, m, alpha, eps_l, eps_h, c, mode):
    """Value and d loss / d logp of the entropy-balanced loss (token-mean), float64."""
    z = np_z(h, m)
    a = adv * (1 + alpha * z)
    r = np.exp(np.clip(logp - old, -20, 20))
    l1, l2 = -a * r, -a * np.clip(r, 1 - eps_l, 1 + eps_h)
    lc = np.maximum(l1, l2)
    clipped = l2 > l1
    loss = np.where(a < 0, np.minimum(lc, -a * c), lc)
    dual = (a < 0) & (lc > -a * c)
    g = np.where(clipped | dual, 0.0, -a * r)  # d(−A r)/dlogp = −A r
    sel = {
        "all": np.ones_like(z, bool),
        "high_entropy": z > 0,
        "low_entropy": z <= 0,
        "none": np.zeros_like(z, bool),
    }[mode]
    upper = clipped & (a > 0) & sel
    g = np.where(upper, -a * (1 + eps_h), g)
    n = m.sum()
    return (loss * m).sum() / n, g * m / n


def batch(seed, b=8, t=5):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 3.0, (b, t))
    old = logp + rng.normal(0, 0.4, (b, t))
    adv = np.repeat(rng.normal(0, 1, (b, 1)), t, 1)
    h = rng.exponential(0.7, (b, t))
    m = (rng.uniform(size=(b, t)) < 0.8).astype(np.float64)
    return logp, old, adv, h, m


def test_entropy_aware_advantages_hand():
    adv = jnp.ones((1, 4))
    h = jnp.array([[1.0, 2.0, 3.0, 100.0]])
    m = jnp.array([[1, 1, 1, 0]])
    out, met = entropy_aware_advantages(adv, h, m, alpha=0.2)
    # mean 2, unbiased std 1 → z = [−1, 0, 1]; masked token keeps A
    np.testing.assert_allclose(out, [[0.8, 1.0, 1.2, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(met["aepo/entropy_std"], 1.0, rtol=1e-6)
    out, _ = entropy_aware_advantages(adv, jnp.ones((1, 4)), m)  # std 0 → 1, z = 0
    np.testing.assert_allclose(out, adv)


@pytest.mark.parametrize("mode", ["all", "high_entropy", "low_entropy", "none"])
def test_loss_and_grad_match_numpy(x64, mode):
    logp, old, adv, h, m = batch(0)
    f = lambda lp: aepo_agentic_loss(  # noqa: E731
        lp, old, adv, m, entropy=h, gradient_preserving=mode, clip_ratio_high=0.28
    )[0]
    want, want_g = np_loss_and_grad(logp, old, adv, h, m, 0.2, 0.2, 0.28, 3.0, mode)
    val, g = jax.value_and_grad(f)(jnp.asarray(logp))
    np.testing.assert_allclose(val, want, rtol=1e-10)
    np.testing.assert_allclose(g, want_g, rtol=1e-10, atol=1e-14)


def test_gradient_preserving_hand(x64):
    # One token, A = 1, ratio e^0.5 > 1.28: standard PPO gives grad 0, AEPO −(1 + ε_h)/N.
    lp, old = jnp.array([[0.0, -1.0]]), jnp.array([[-0.5, -1.0]])
    adv, m = jnp.ones((1, 2)), jnp.ones((1, 2))
    h = jnp.array([[2.0, 1.0]])  # token 0 is the high-entropy one (z > 0)
    kw = dict(entropy=h, alpha=0.0, clip_ratio_high=0.28)
    g = lambda mode: jax.grad(  # noqa: E731
        lambda x: aepo_agentic_loss(x, old, adv, m, gradient_preserving=mode, **kw)[0]
    )(lp)
    np.testing.assert_allclose(g("none"), [[0.0, -0.5]])
    np.testing.assert_allclose(g("all"), [[-1.28 / 2, -0.5]])
    np.testing.assert_allclose(g("high_entropy"), [[-1.28 / 2, -0.5]])
    np.testing.assert_allclose(g("low_entropy"), [[0.0, -0.5]])  # the port's side
    # forward value is that of PPO-clip in every mode
    vals = [
        aepo_agentic_loss(lp, old, adv, m, gradient_preserving=x, **kw)[0] for x in ("none", "all")
    ]
    np.testing.assert_allclose(vals[0], vals[1])


def test_check_grads_and_entropy_has_no_gradient(x64):
    logp, old, adv, h, m = batch(1)
    old = logp + 0.05  # ratio e^-0.05: away from the clip kinks
    check_grads(
        lambda lp: aepo_agentic_loss(lp, old, adv, m, entropy=h)[0],
        (jnp.asarray(logp),),
        order=1,
        modes=["rev"],
    )
    gh = jax.grad(lambda e: aepo_agentic_loss(logp, old, adv, m, entropy=e)[0])(jnp.asarray(h))
    np.testing.assert_array_equal(gh, 0.0)


def test_empty_mask_inf_jit_vmap():
    logp, old, adv, h, m = (jnp.asarray(a, jnp.float32) for a in batch(2))
    logp = logp.at[0, 0].set(-jnp.inf)
    m = m.at[0, 0].set(0.0)
    f = jax.jit(
        jax.value_and_grad(lambda lp, mm: aepo_agentic_loss(lp, old, adv, mm, entropy=h)[0])
    )
    for mm in (m, jnp.zeros_like(m)):
        v, g = f(logp, mm)
        assert np.isfinite(v) and np.isfinite(g).all()
    assert float(f(logp, jnp.zeros_like(m))[0]) == 0.0
    vm = jax.vmap(lambda lp, mm: aepo_agentic_loss(lp, old, adv, mm, entropy=h)[0])
    out = vm(jnp.stack([logp, logp]), jnp.stack([m, m]))
    np.testing.assert_allclose(out[0], out[1])
    with pytest.raises(ValueError, match="gradient_preserving"):
        aepo_agentic_loss(logp, old, adv, m, entropy=h, gradient_preserving="x")


def test_distributed():
    args = tuple(jnp.asarray(a, jnp.float32) for a in batch(3))

    def fn(lp, old, adv, h, m, *, axis_name=None):
        return aepo_agentic_loss(lp, old, adv, m, entropy=h, axis_name=axis_name)

    assert_matches_distributed(fn, args, atol=1e-5, rtol=1e-5, grad_argnums=(0,))


def test_global_budget():
    m, b = aepo_global_budget(8, 1.0, jnp.array([1.0, 1.0]))
    assert (int(m), int(b)) == (4, 4)
    m, b = aepo_global_budget(
        16,
        jnp.array([3.0, 0.0]),
        jnp.array([[0.0, 0.0], [3.0, 9.0]]),
        jnp.array([[1, 1], [1, 0]]),
        beta=1.0,
    )
    want = np.round(16 / (1 + np.exp(-np.array([3.0, -3.0]))))
    np.testing.assert_array_equal(m, want)
    np.testing.assert_array_equal(b, 16 - want)
    m, _ = aepo_global_budget(8, 2.0, jnp.zeros(3), jnp.zeros(3))  # no tool call → k/2
    assert int(m) == 4


@settings(max_examples=10, deadline=None)
@given(
    st.integers(0, 64),
    st.floats(-5, 5, width=32, allow_subnormal=False),
    st.floats(-5, 5, width=32, allow_subnormal=False),
    st.floats(0, 4, width=32, allow_subnormal=False),
)
def test_global_budget_property(k, hr, ht, beta):
    m, b = aepo_global_budget(k, hr, jnp.array([ht]), beta=beta)
    assert 0 <= int(m) <= k and int(m) + int(b) == k
