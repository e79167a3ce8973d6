"""Tests for HAPO: entropy score, adaptive temperature, token-level group advantages, loss.

Independent references: hand-worked numbers written in the tests, and ``rel_*`` NumPy float64
ports of the released code, ``starriver030515/HAPO`` @ 7671dde ``verl/trainer/ppo/core_algos.py``
(``torch_quantile``, ``compute_entropy_h``, ``ada_clip``, ``ada_advantage``,
``compute_policy_loss``, ``agg_loss``, ``compute_grpo_outcome_advantage``,
``compute_hapo_outcome_advantage``). The paper's signed ĥ is the port's ĥ with the sign of
the below-pivot branch flipped (the release multiplies by ``1/min h``, a negative number).
"""

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


# ---------------- ports of the released code (float64) ----------------
def rel_torch_quantile(v, q, interpolation="nearest"):
    """``torch_quantile(v, q, dim=None, interpolation=...)`` (core_algos.py @ 7671dde)."""
    v = np.sort(np.asarray(v).reshape(-1))
    idx_float = q * (v.shape[0] - 1)
    if interpolation == "nearest":
        return v[round(idx_float)]  # Python round: half to even, like the release
    low = int(np.floor(idx_float))
    if idx_float == low:
        return v[low]
    return v[low] + (idx_float - low) * (v[low + 1] - v[low])


def rel_compute_entropy_h(entropy, response_mask, entropy_pivot, interpolation="nearest"):
    """``compute_entropy_h`` (core_algos.py @ 7671dde); the release hard-codes "nearest"."""
    eps = 1e-8
    m = response_mask.astype(bool)
    ent = np.log(np.maximum(entropy, eps))
    median = rel_torch_quantile(ent[m], entropy_pivot, interpolation)
    h = ent - median
    n = max(m.sum(), 1.0)
    var = max(np.where(m, h**2, 0.0).sum() / n, eps)
    h = h / np.sqrt(var)
    pos_max = max(np.where(m & (h > 0), h, 0.0).max(), eps)
    neg_min = min(np.where(m & (h < 0), h, 0.0).min(), -eps)
    return np.where(h > 0, h * (1.0 / pos_max), np.where(h <= 0, h * (1.0 / neg_min), 0.0))


def paper_score(entropy, mask, pivot=0.8, interpolation="nearest"):
    """The signed score: the release's ĥ with the below-pivot sign flipped."""
    code = rel_compute_entropy_h(entropy, mask, pivot, interpolation)
    ent = np.log(np.maximum(entropy, 1e-8))
    below = ent <= rel_torch_quantile(ent[mask > 0], pivot, interpolation)
    return np.where(below, -code, code)


def rel_ada_clip(cl, ch, h_hat, alpha):
    lo, hi = np.full_like(h_hat, cl), np.full_like(h_hat, ch)
    lo = np.where(h_hat <= 0, lo * (1 - h_hat * alpha), lo)
    hi = np.where(h_hat > 0, hi * (1 + h_hat * alpha), hi)
    return lo, hi


def rel_ada_advantage(adv, h_hat, ratio, cl, ch, beta):
    adv_ent = adv * (1 + beta * h_hat)
    inside = (ratio > 1.0 - cl / 2) & (ratio < 1.0 + ch / 2)
    pos_adv = np.where(inside, adv, adv_ent)
    neg_adv = np.where(inside, adv_ent, adv)
    return np.where(h_hat > 0, pos_adv, neg_adv)


def rel_policy_loss(
    old,
    lp,
    adv,
    m,
    h_hat,
    *,
    cl=0.2,
    ch=0.2,
    c=10.0,
    alpha=1.0,
    beta=1.0,
    adaptive_clip=True,
    adaptive_advantage=True,
):
    """``compute_policy_loss`` (core_algos.py @ 7671dde) with ĥ given, token-mean ``agg_loss``."""
    ratio = np.exp(lp - old)
    if adaptive_clip:
        cl, ch = rel_ada_clip(cl, ch, h_hat, alpha)
    if adaptive_advantage:
        adv = rel_ada_advantage(adv, h_hat, ratio, cl, ch, beta)
    l1 = -adv * ratio
    l2 = -adv * np.clip(ratio, 1.0 - cl, 1.0 + ch)
    c1 = np.maximum(l1, l2)
    c2 = np.minimum(-adv * c, c1)
    pg = np.where(adv < 0, c2, c1)
    return (pg * m).sum() / (m.sum() + 1e-8)  # verl_F.masked_mean


def rel_grpo_outcome(scores, index, eps=1e-6):
    """``compute_grpo_outcome_advantage`` (scalar per response)."""
    out = np.zeros_like(scores)
    for idx in set(index):
        g = [i for i, x in enumerate(index) if x == idx]
        v = scores[g]
        mean, std = (0.0, 1.0) if len(g) == 1 else (v.mean(), v.std(ddof=1))
        out[g] = (v - mean) / (std + eps)
    return out


def rel_hapo_outcome(rewards, response_mask, index, eps=1e-6):
    """``compute_hapo_outcome_advantage`` (core_algos.py @ 7671dde): [B, T], padding included."""
    grpo = rel_grpo_outcome(rewards.astype(np.float64), index, eps)[:, None] * response_mask
    scores = rewards[:, None] * response_mask
    out = np.zeros_like(scores)
    for idx in set(index):
        g = [i for i, x in enumerate(index) if x == idx]
        valid = scores[g][response_mask[g].astype(bool)]
        mean, std = valid.mean(), valid.std()  # std(unbiased=False)
        normed = (scores[g] - mean) / (std + eps)
        out[g] = grpo[g] if np.any(np.abs(normed) >= 5) else normed
    return out


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
def test_score_matches_released_port(x64, neg):
    _, _, _, h, m = batch(0)
    got = np.asarray(hapo_entropy_score(h, m, negative_scale=neg))
    want = rel_compute_entropy_h(h, m, 0.8) if neg == "code" else paper_score(h, m)
    np.testing.assert_allclose(got, want * (m > 0), rtol=1e-10, atol=1e-12)
    s = got[m > 0]
    if neg == "paper":
        assert s.min() == pytest.approx(-1.0) and s.max() == pytest.approx(1.0)
    else:  # the release's sign: every token ≥ 0
        assert s.min() >= 0.0 and s.max() == pytest.approx(1.0)
    lin = hapo_entropy_score(h, m, interpolation="linear", negative_scale=neg)
    want = (
        rel_compute_entropy_h(h, m, 0.8, "linear")
        if neg == "code"
        else paper_score(h, m, interpolation="linear")
    )
    np.testing.assert_allclose(lin, want * (m > 0), rtol=1e-10, atol=1e-12)


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
def test_token_group_advantages_match_released_port(x64):
    rng = np.random.default_rng(2)
    r = np.concatenate([rng.integers(0, 2, 8), [1.0] * 7 + [0.5]]).astype(np.float64)
    r[:8] -= 0.3 * rng.uniform(size=8) * r[:8]  # overlong-style shaped rewards
    m = np.zeros((16, 10))
    for i, n in enumerate(rng.integers(1, 11, 16)):
        m[i, :n] = 1
    index = np.repeat(np.arange(4), 4)
    got, _ = hapo_token_group_advantages(r, m, group_size=4, fallback_scope="code")
    np.testing.assert_allclose(got, rel_hapo_outcome(r, m, index) * m, rtol=1e-10, atol=1e-12)


def test_token_group_advantages_hand():
    # lengths 3 and 1, rewards 1, 0 → μ = 0.75, σ = √(3/16)
    m2 = np.array([[1, 1, 1], [1, 0, 0]], float)
    a, _ = hapo_token_group_advantages(np.array([1.0, 0.0]), m2, group_size=2)
    sd = np.sqrt(3 / 16)
    np.testing.assert_allclose(
        a, [[0.25 / (sd + 1e-6)] * 3, [-0.75 / (sd + 1e-6), 0, 0]], rtol=1e-6
    )
    # fallback: one long correct response among many short wrong ones → |A| ≥ 5 → GRPO
    m3 = np.zeros((30, 100))
    m3[0] = 1
    m3[1:, 0] = 1
    r3 = np.zeros(30)
    r3[1] = 1.0
    a3, met = hapo_token_group_advantages(r3, m3, group_size=30)
    grpo = (r3 - r3.mean()) / (r3.std(ddof=1) + 1e-6)
    np.testing.assert_allclose(np.asarray(a3)[:, 0], grpo, rtol=1e-5)
    assert float(met["hapo/fallback_group_frac"]) == 1.0
    with pytest.raises(ValueError, match="group_size"):
        hapo_token_group_advantages(r3, m3, group_size=7)
    with pytest.raises(ValueError, match="fallback_scope"):
        hapo_token_group_advantages(r3, m3, group_size=30, fallback_scope="padded")


def test_token_group_fallback_scope_code_tests_the_padding():
    """Rewards (1 ×7, 0.5), every response 2 tokens: μ = 0.9375, σ = √0.02734375 = 0.16536.
    Valid tokens: A = 0.378 and −2.646 → no fallback. The release also tests the padded
    positions, (0 − μ)/σ = −5.67 → fallback to GRPO: mean 0.9375, unbiased std √(0.21875/7)
    = 0.176777 → A = 0.353553, −2.474874. Without padding (T = 2) both scopes agree."""
    r = np.array([1.0] * 7 + [0.5])
    m = np.array([[1, 1, 0]] * 8, float)
    mu, sd = 0.9375, np.sqrt(0.02734375)
    valid, met_v = hapo_token_group_advantages(r, m, group_size=8)
    np.testing.assert_allclose(valid[:, 0], (r - mu) / (sd + 1e-6), rtol=1e-6)
    assert float(met_v["hapo/fallback_group_frac"]) == 0.0
    code, met_c = hapo_token_group_advantages(r, m, group_size=8, fallback_scope="code")
    np.testing.assert_allclose(
        code[:, 0], [0.0625 / 0.1767767] * 7 + [-0.4375 / 0.1767767], rtol=1e-5
    )
    assert float(met_c["hapo/fallback_group_frac"]) == 1.0
    np.testing.assert_array_equal(code[:, 2], 0.0)
    nopad, _ = hapo_token_group_advantages(r, m[:, :2], group_size=8, fallback_scope="code")
    np.testing.assert_allclose(nopad, valid[:, :2], rtol=1e-6)


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
def test_loss_matches_released_port(x64, neg):
    logp, old, adv, h, m = batch(3)
    got, met = hapo_loss(logp, old, adv, m, entropy=h, negative_scale=neg)
    h_hat = rel_compute_entropy_h(h, m, 0.8) if neg == "code" else paper_score(h, m)
    np.testing.assert_allclose(got, rel_policy_loss(old, logp, adv, m, h_hat), rtol=1e-7)
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
    want = rel_policy_loss(
        old, logp, adv, m, np.zeros_like(h), adaptive_clip=False, adaptive_advantage=False
    )
    np.testing.assert_allclose(off, want, rtol=1e-7)


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
