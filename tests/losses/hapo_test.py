"""Tests for HAPO: entropy score, adaptive temperature, token-level group advantages, loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.losses.hapo import (
    hapo_adaptive_clip,
    hapo_entropy_score,
    hapo_entropy_stats,
    hapo_loss,
    hapo_temperature,
    hapo_token_group_advantages,
)


# ---------------- float64 NumPy references ----------------
def np_score(h, m, pivot=0.8, paper=True, method="nearest"):
    ell = np.log(np.maximum(h, 1e-8))
    v = ell[m > 0]
    mu = np.quantile(v, pivot, method=method)
    sd = np.sqrt(np.mean((v - mu) ** 2))
    sd = sd if sd > 0 else 1.0
    hz = (ell - mu) / sd
    hv = hz[m > 0]
    mx = hv[hv > 0].max() if (hv > 0).any() else 1.0
    mn = hv[hv < 0].min() if (hv < 0).any() else -1.0
    neg = hz / abs(mn) if paper else hz * (1.0 / mn)
    return np.where(m > 0, np.where(hz > 0, hz / mx, neg), 0.0)


def np_hapo(logp, old, adv, h, m, alpha=1.0, beta=1.0, el=0.2, eh=0.2, c=10.0, paper=True):
    s = np_score(h, m, paper=paper)
    eps_h = np.where(s > 0, eh * (1 + alpha * s), eh)
    eps_l = np.where(s > 0, el, el * (1 - alpha * s))
    r = np.exp(np.clip(logp - old, -20, 20))
    inside = (r > 1 - eps_l / 2) & (r < 1 + eps_h / 2)
    a_ent = adv * (1 + beta * s)
    a = np.where(np.where(s > 0, ~inside, inside), a_ent, adv)
    l1, l2 = -a * r, -a * np.clip(r, 1 - eps_l, 1 + eps_h)
    lc = np.maximum(l1, l2)
    loss = np.where(a < 0, np.minimum(lc, -a * c), lc)
    return (loss * m).sum() / m.sum()


def batch(seed, b=8, t=6):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 3.0, (b, t))
    old = logp + rng.normal(0, 0.15, (b, t))
    adv = np.repeat(rng.normal(0, 1, (b, 1)), t, 1)
    h = rng.exponential(0.5, (b, t))
    m = (rng.uniform(size=(b, t)) < 0.85).astype(np.float64)
    return logp, old, adv, h, m


# ---------------- entropy score ----------------
@pytest.mark.parametrize("neg", ["paper", "code"])
def test_score_matches_numpy(x64, neg):
    _, _, _, h, m = batch(0)
    got = hapo_entropy_score(h, m, negative_scale=neg)
    np.testing.assert_allclose(got, np_score(h, m, paper=neg == "paper"), rtol=1e-10, atol=1e-12)
    s = np.asarray(got)[m > 0]
    if neg == "paper":
        assert s.min() == pytest.approx(-1.0) and s.max() == pytest.approx(1.0)
    else:  # the release's sign: every token ≥ 0
        assert s.min() >= 0.0 and s.max() == pytest.approx(1.0)
    lin = hapo_entropy_score(h, m, interpolation="linear")
    np.testing.assert_allclose(lin, np_score(h, m, method="linear"), rtol=1e-10, atol=1e-12)


def test_score_hand():
    # log-entropies 0..4, pivot 0.5 → μ = 2, σ = sqrt(2): h = (ℓ−2)/√2, ĥ = ±1 at the ends.
    h = jnp.exp(jnp.arange(5.0))[None]
    s = hapo_entropy_score(h, jnp.ones((1, 5)), pivot=0.5)
    np.testing.assert_allclose(s, [[-1.0, -0.5, 0.0, 0.5, 1.0]], atol=1e-6)


def test_score_empty_constant_and_distributed():
    z = hapo_entropy_score(jnp.ones((8, 4)), jnp.zeros((8, 4)))
    np.testing.assert_array_equal(z, 0.0)
    c = hapo_entropy_score(jnp.full((8, 4), 0.3), jnp.ones((8, 4)))
    np.testing.assert_array_equal(c, 0.0)
    _, _, _, h, m = (jnp.asarray(a, jnp.float32) for a in batch(1))
    assert_matches_distributed(
        lambda e, mm, *, axis_name=None: hapo_entropy_score(e, mm, axis_name=axis_name),
        (h, m),
        methods=("shard_map",),
    )


# ---------------- adaptive temperature ----------------
def test_temperature():
    h = jnp.exp(jnp.arange(5.0))
    stats = hapo_entropy_stats(h[None], jnp.ones((1, 5)), pivot=0.5)
    t = jax.jit(lambda e: hapo_temperature(e, stats, base_temperature=1.0, tau=0.05))(h)
    np.testing.assert_allclose(t, 1 + 0.05 * np.array([-1, -0.5, 0, 0.5, 1]), atol=1e-6)
    # out-of-batch entropies are clamped to ±1
    t2 = hapo_temperature(jnp.array([1e-6, 1e6]), stats)
    np.testing.assert_allclose(t2, [0.95, 1.05], atol=1e-6)
    np.testing.assert_allclose(hapo_temperature(h, None, base_temperature=0.7), 0.7)
    tc = hapo_temperature(h, stats, negative_scale="code")  # release: only raises T
    assert float(tc.min()) >= 1.0
    with pytest.raises(ValueError, match="tau"):
        hapo_temperature(h, stats, tau=1.5)


# ---------------- token-level group average ----------------
def np_tlga(r, m, g):
    n = m.sum(-1)
    out = []
    for i in range(0, len(r), g):
        rr, nn = r[i : i + g], n[i : i + g]
        mu = (nn * rr).sum() / nn.sum()
        sd = np.sqrt((nn * (rr - mu) ** 2).sum() / nn.sum())
        a = (rr - mu) / (sd + 1e-6)
        if np.any(np.abs(a) >= 5):
            a = (rr - rr.mean()) / (rr.std(ddof=1) + 1e-6)
        out.append(a)
    return np.concatenate(out)[:, None] * (m > 0)


def test_token_group_advantages(x64):
    rng = np.random.default_rng(2)
    r = rng.integers(0, 2, 8).astype(np.float64)
    m = np.zeros((8, 10))
    for i, n in enumerate(rng.integers(1, 11, 8)):
        m[i, :n] = 1
    got, _ = hapo_token_group_advantages(r, m, group_size=4)
    np.testing.assert_allclose(got, np_tlga(r, m, 4), rtol=1e-10, atol=1e-12)
    # hand case: lengths 3 and 1, rewards 1, 0 → μ = 0.75, σ = √(3/16)
    m2 = np.array([[1, 1, 1], [1, 0, 0]], float)
    a, _ = hapo_token_group_advantages(np.array([1.0, 0.0]), m2, group_size=2)
    sd = np.sqrt(3 / 16)
    np.testing.assert_allclose(a, [[0.25 / (sd + 1e-6)] * 3, [-0.75 / (sd + 1e-6), 0, 0]])
    # fallback: one long correct response among many short wrong ones → |A| ≥ 5 → GRPO
    m3 = np.zeros((30, 100))
    m3[0] = 1
    m3[1:, 0] = 1
    r3 = np.zeros(30)
    r3[1] = 1.0
    a3, met = hapo_token_group_advantages(r3, m3, group_size=30)
    grpo = (r3 - r3.mean()) / (r3.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(np.asarray(a3)[:, 0], grpo, rtol=1e-10)
    assert float(met["hapo/fallback_group_frac"]) == 1.0
    with pytest.raises(ValueError, match="group_size"):
        hapo_token_group_advantages(r, m, group_size=3)


# ---------------- clip + loss ----------------
@settings(max_examples=20, deadline=None)
@given(st.floats(-1, 1, width=32, allow_subnormal=False))
def test_adaptive_clip_property(s):
    el, eh = hapo_adaptive_clip(jnp.float32(s), clip_ratio_low=0.2, clip_ratio_high=0.3)
    if s > 0:
        assert float(el) == pytest.approx(0.2) and float(eh) == pytest.approx(0.3 * (1 + s))
    else:
        assert float(eh) == pytest.approx(0.3) and float(el) == pytest.approx(0.2 * (1 - s))


@pytest.mark.parametrize("neg", ["paper", "code"])
def test_loss_matches_numpy(x64, neg):
    logp, old, adv, h, m = batch(3)
    got, met = hapo_loss(logp, old, adv, m, entropy=h, negative_scale=neg)
    np.testing.assert_allclose(got, np_hapo(logp, old, adv, h, m, paper=neg == "paper"), rtol=1e-9)
    assert np.isfinite(np.asarray(list(met.values()))).all()


def test_loss_grads_and_components_off(x64):
    logp, old, adv, h, m = batch(4)
    old = logp + 0.02
    f = lambda lp: hapo_loss(lp, old, adv, m, entropy=h)[0]  # noqa: E731
    check_grads(f, (jnp.asarray(logp),), order=1, modes=["rev"])
    gh = jax.grad(lambda e: hapo_loss(logp, old, adv, m, entropy=e)[0])(jnp.asarray(h))
    np.testing.assert_array_equal(gh, 0.0)
    # with both components off HAPO is PPO-clip with dual clip c
    off, _ = hapo_loss(logp, old, adv, m, entropy=h, adaptive_clip=False, adaptive_advantage=False)
    r = np.exp(logp - old)
    lc = np.maximum(-adv * r, -adv * np.clip(r, 0.8, 1.2))
    ppo = np.where(adv < 0, np.minimum(lc, -adv * 10.0), lc)
    np.testing.assert_allclose(off, (ppo * m).sum() / m.sum(), rtol=1e-10)


def test_loss_empty_inf_jit_vmap_distributed():
    logp, old, adv, h, m = (jnp.asarray(a, jnp.float32) for a in batch(5))
    logp = logp.at[0, 0].set(-jnp.inf)
    m = m.at[0, 0].set(0.0)
    loss = lambda lp, mm: hapo_loss(lp, old, adv, mm, entropy=h)[0]  # noqa: E731
    f = jax.jit(jax.value_and_grad(loss))
    for mm in (m, jnp.zeros_like(m)):
        v, g = f(logp, mm)
        assert np.isfinite(v) and np.isfinite(g).all()
    out = jax.vmap(loss)(jnp.stack([logp, logp]), jnp.stack([m, m]))
    np.testing.assert_allclose(out[0], out[1])
    args = (logp, old, adv, h, m)

    def fn(lp, o, a, e, mm, *, axis_name=None):
        return hapo_loss(lp, o, a, mm, entropy=e, axis_name=axis_name)

    assert_matches_distributed(fn, args, atol=1e-5, rtol=1e-5, grad_argnums=(0,))
