"""Tests for ARES: HWE counts, threshold EMA, buckets, hierarchical entropy reward, dynamic KL."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st

from entropylab.losses.ares import (
    ares_bucket_targets,
    ares_difficulty_buckets,
    ares_entropy_reward,
    ares_hwe_counts,
    ares_kl_coefficients,
    ares_kl_init,
    ares_kl_update,
    ares_threshold_update,
    ares_update_alpha,
)


def np_windows(h, m, w):
    """Per row: list of (position, window entropy) with a complete following window."""
    out = []
    for i in range(h.shape[0]):
        idx = np.nonzero(m[i])[0]
        v = h[i, idx]
        out.append([(idx[r], v[r + 1 : r + 1 + w].mean()) for r in range(len(v) - w)])
    return out


def batch(seed, b=8, t=12):
    rng = np.random.default_rng(seed)
    h = rng.exponential(0.8, (b, t))
    m = (rng.uniform(size=(b, t)) < 0.85).astype(float)
    trig = rng.uniform(size=(b, t)) < 0.5
    return h, m, trig


def test_hwe_counts_match_numpy(x64):
    h, m, trig = batch(0)
    tau = 0.8
    got = ares_hwe_counts(h, m, trig, tau, window=3)
    for i, row in enumerate(np_windows(h, m, 3)):
        sel = [(p, w) for p, w in row if trig[i, p]]
        assert got["count"][i] == sum(w >= tau for _, w in sel)
        assert got["invalid"][i] == sum(w < tau for _, w in sel)
        np.testing.assert_allclose(got["soft_cost"][i], sum(max(w - tau, 0) for _, w in sel))


def test_threshold_update_matches_numpy(x64):
    h, m, _ = batch(1)
    m[5] = 0
    got = ares_threshold_update(1.5, h, m, window=4)
    per = [np.quantile([w for _, w in row], 0.95) for row in np_windows(h, m, 4) if row]
    np.testing.assert_allclose(got, 0.99 * 1.5 + 0.01 * np.median(per), rtol=1e-10)
    np.testing.assert_allclose(ares_threshold_update(1.5, h, np.zeros_like(m)), 1.5)


def test_threshold_update_distributed():
    h, m, _ = (jnp.asarray(a, jnp.float32) for a in batch(2))
    assert_matches_distributed(
        lambda e, mm, *, axis_name=None: ares_threshold_update(1.5, e, mm, axis_name=axis_name),
        (h, m),
        methods=("shard_map",),
        atol=1e-6,
    )


def test_buckets_targets_alpha():
    b = ares_difficulty_buckets(jnp.array([1.0, 2 / 3, 0.5, 1 / 3, 0.2, 0.0]))
    np.testing.assert_array_equal(b, [0, 0, 1, 1, 2, 2])
    counts = jnp.array([2.0, 4.0, 3.0, 6.0, 10.0, 0.0, 7.0, 7.0])
    bk = jnp.array([0, 0, 1, 1, 2, 2, 2, 2])
    t = ares_bucket_targets(counts, bk)
    np.testing.assert_allclose(t["mean"], [3.0, 4.5, 6.0])
    np.testing.assert_allclose(t["target"], [3.0, 4.0, 6.0])  # round half to even
    t2 = ares_bucket_targets(counts, jnp.zeros(8, jnp.int32))
    np.testing.assert_allclose(t2["n"], [8, 0, 0])
    np.testing.assert_allclose(t2["mean"][1:], 0.0)
    a = ares_update_alpha(jnp.full(3, 0.5), jnp.array([4.0, 4.0, 4.0]), jnp.array([3.0, 5, 3]))
    np.testing.assert_allclose(a, [0.55, 0.45, 0.45])
    a = ares_update_alpha(
        jnp.full(3, 0.5), jnp.array([90.0, 0, 0]), jnp.zeros(3), present=jnp.array([1, 0, 0])
    )
    np.testing.assert_allclose(a, [2.0, 0.5, 0.5])
    dist = assert_matches_distributed(
        lambda c, k, *, axis_name=None: ares_bucket_targets(c, k, axis_name=axis_name),
        (counts, bk),
        methods=("shard_map",),
    )
    np.testing.assert_allclose(dist["mean"], [3.0, 4.5, 6.0])


def np_huber(x, k):
    return 0.5 * x * x if abs(x) <= k else k * (abs(x) - 0.5 * k)


def np_sig(x):
    return 1 / (1 + np.exp(-x))


def np_reward(n, ok, b, target, alpha):
    f, kap, st_, cm, wm = [(0.15, 2, 2, 1, 0.6), (0.25, 3, 2.5, 1, 0.8), (0.35, 4, 3, 1.2, 1.0)][b]
    tgt = target[b]
    cap = alpha[b] * cm
    d = n - tgt
    m = max(1.0, f * tgt)
    if not ok:
        return np_sig(max(d - m, 0) / st_) * cap * wm
    if b == 0:
        return -min(cap, np_huber(max(d - m, 0), kap) / (m + kap) * cap)
    if b == 1:
        return -min(cap, np_huber(max(abs(d) - m, 0), kap) / (m + kap) * cap)
    if d >= -m:
        return np_sig((d + m) / st_) * cap
    return -min(cap, 0.5 * np_huber(-d - m, kap) / (m + kap) * cap)


def test_entropy_reward_matches_numpy():
    rng = np.random.default_rng(3)
    n = rng.integers(0, 30, 60).astype(float)
    ok = rng.uniform(size=60) < 0.5
    b = rng.integers(0, 3, 60)
    target, alpha = np.array([5.0, 10.0, 20.0]), np.array([0.5, 0.7, 1.1])
    got, _ = jax.jit(ares_entropy_reward)(n, ok, b, target, alpha)
    want = [np_reward(n[i], ok[i], b[i], target, alpha) for i in range(60)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # hand: incorrect with Δ ≤ m gets exactly 0.5·cap·g
    r, _ = ares_entropy_reward(
        jnp.array([0.0]),
        jnp.array([False]),
        jnp.array([0]),
        jnp.array([5.0, 0, 0]),
        jnp.array([0.5, 0, 0]),
    )
    np.testing.assert_allclose(r, [0.5 * 0.5 * 0.6])


@settings(max_examples=20, deadline=None)
@given(st.floats(0, 100), st.booleans(), st.integers(0, 2), st.floats(0, 50), st.floats(0, 2))
def test_entropy_reward_bounded(n, ok, b, tgt, a):
    r, _ = ares_entropy_reward(
        jnp.array([n]), jnp.array([ok]), jnp.array([b]), jnp.full(3, tgt), jnp.full(3, a)
    )
    cap = a * (1.2 if b == 2 else 1.0)
    assert -cap - 1e-5 <= float(r[0]) <= cap + 1e-5


def np_kl_sim(kls, every, dead):
    beta, ema, err = np.ones(3), np.full(3, 0.01), np.zeros(3)
    for step, kl in enumerate(kls, 1):
        ema = 0.97 * ema + 0.03 * kl
        err = 0.97 * err + 0.03 * (ema / 0.01 - 1)
        if step % every == 0:
            do = np.abs(err) > dead
            beta = np.where(do, beta * np.exp(0.05 * np.clip(err, -0.2, 0.2)), beta)
    return beta, err


def test_dynamic_kl():
    s = ares_kl_init()
    upd = jax.jit(lambda st_, kl: ares_kl_update(st_, kl, update_every=2, deadzone=0.005))
    kl = np.array([0.1, 0.01, 0.0])  # bucket 0 above target, 1 at target, 2 below
    for _ in range(6):
        s = upd(s, jnp.asarray(kl))
    beta, err = np_kl_sim([kl] * 6, 2, 0.005)
    np.testing.assert_allclose(s.err_ema, err, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(s.beta, beta, rtol=1e-5)
    assert float(s.beta[0]) > 1.0 and float(s.beta[1]) == 1.0 and float(s.beta[2]) < 1.0
    # deadzone: the same small errors with the default 0.02 move nothing below target
    s_dz = ares_kl_init()
    for _ in range(6):
        s_dz = ares_kl_update(s_dz, jnp.asarray(kl), update_every=2)
    assert float(s_dz.beta[2]) == 1.0
    s2 = ares_kl_update(s, jnp.array([5.0, 5.0, 5.0]), present=jnp.array([0, 0, 0]))
    np.testing.assert_allclose(s2.kl_ema, s.kl_ema)
    c = ares_kl_coefficients(s, jnp.array([0, 1, 2]))
    np.testing.assert_allclose(c, 1e-2 * np.asarray(s.beta), rtol=1e-6)
    with pytest.raises(ValueError, match="target_kl"):
        ares_kl_update(s, jnp.zeros(3), target_kl=0.0)
