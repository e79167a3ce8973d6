"""Advantage estimators vs float64 NumPy restatements of verl's loops."""

from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st

from entropylab.losses import (
    broadcast_to_tokens,
    dr_grpo_advantages,
    gae_advantages,
    grpo_advantages,
    rloo_advantages,
)


# ----------------------------------------------------------------------------- NumPy references
def np_grpo(scores, index, norm_by_std=True, eps=1e-6):
    """verl ``compute_grpo_outcome_advantage`` (per-sequence scores)."""
    scores = np.asarray(scores, np.float64).copy()
    groups = defaultdict(list)
    for i, g in enumerate(index):
        groups[g].append(scores[i])
    mean, std = {}, {}
    for g, v in groups.items():
        if len(v) == 1:
            mean[g], std[g] = 0.0, 1.0
        else:
            mean[g], std[g] = np.mean(v), np.std(v, ddof=1)  # torch.std: unbiased
    for i, g in enumerate(index):
        scores[i] = scores[i] - mean[g]
        if norm_by_std:
            scores[i] = scores[i] / (std[g] + eps)
    return scores


def np_rloo(scores, index):
    """verl ``compute_rloo_outcome_advantage``."""
    scores = np.asarray(scores, np.float64).copy()
    groups = defaultdict(list)
    for i, g in enumerate(index):
        groups[g].append(scores[i])
    for i, g in enumerate(index):
        n = len(groups[g])
        if n > 1:
            mean = np.mean(groups[g])
            scores[i] = scores[i] * n / (n - 1) - mean * n / (n - 1)
    return scores


def np_whiten(x, m, eps=1e-8):
    m = m.astype(bool)
    v = x[m]
    return (x - v.mean()) / np.sqrt(v.var(ddof=1) + eps)


def np_gae(rewards, values, mask, gamma, lam, whiten=True):
    """verl ``compute_gae_advantage_return`` (observation tokens skipped)."""
    r, v, m = (np.asarray(a, np.float64) for a in (rewards, values, mask))
    b, t = r.shape
    next_v = np.zeros(b)
    last = np.zeros(b)
    out = []
    for k in reversed(range(t)):
        delta = r[:, k] + gamma * next_v - v[:, k]
        last_ = delta + gamma * lam * last
        next_v = v[:, k] * m[:, k] + (1 - m[:, k]) * next_v
        last = last_ * m[:, k] + (1 - m[:, k]) * last
        out.append(last)
    adv = np.stack(out[::-1], axis=1)
    ret = adv + v
    if whiten:
        adv = np_whiten(adv, m)
    return adv, ret


# ----------------------------------------------------------------------------- GRPO / RLOO
def test_grpo_hand_case():
    # group 0: rewards 1, 0, 1, 0 → mean ½, unbiased std √(1/3); group 1: all equal → 0.
    r = jnp.array([1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    a = grpo_advantages(r, group_size=4)
    s = np.sqrt(1 / 3) + 1e-6
    np.testing.assert_allclose(a, [0.5 / s, -0.5 / s, 0.5 / s, -0.5 / s, 0, 0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(
        dr_grpo_advantages(r, group_size=4), [0.5, -0.5, 0.5, -0.5, 0, 0, 0, 0]
    )
    # RLOO: 1 − (0+1+0)/3 = 2/3; 0 − 2/3 = −2/3
    np.testing.assert_allclose(
        rloo_advantages(r, group_size=4), [2 / 3, -2 / 3, 2 / 3, -2 / 3, 0, 0, 0, 0], rtol=1e-6
    )


def test_singleton_groups_follow_verl():
    r = jnp.array([3.0, 1.0, 2.0])
    ids = jnp.array([7, 5, 5])
    # singleton: mean 0, std 1 → 3/(1+eps); RLOO leaves it unchanged
    np.testing.assert_allclose(grpo_advantages(r, ids)[0], 3.0 / (1 + 1e-6), rtol=1e-7)
    np.testing.assert_allclose(grpo_advantages(r, ids, norm_by_std=False)[0], 3.0)
    np.testing.assert_allclose(rloo_advantages(r, ids)[0], 3.0)
    np.testing.assert_allclose(grpo_advantages(r, group_size=1), r / (1 + 1e-6), rtol=1e-7)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n_groups=st.integers(1, 5),
    norm=st.booleans(),
    binary=st.booleans(),
)
def test_group_ids_vs_reference(seed, n_groups, norm, binary):
    rng = np.random.default_rng(seed)
    b = 12
    ids = rng.integers(0, n_groups, size=b)  # unordered, ragged, possibly singleton groups
    r = (rng.random(b) < 0.5).astype(np.float32) if binary else rng.normal(size=b)
    r = r.astype(np.float32)
    got = grpo_advantages(r, jnp.asarray(ids), norm_by_std=norm)
    np.testing.assert_allclose(got, np_grpo(r, ids, norm), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rloo_advantages(r, jnp.asarray(ids)), np_rloo(r, ids), atol=1e-5)


def test_group_size_equals_group_ids(x64):
    rng = np.random.default_rng(0)
    r = rng.normal(size=12)
    ids = np.repeat(np.arange(3), 4)
    np.testing.assert_allclose(grpo_advantages(r, group_size=4), np_grpo(r, ids), atol=1e-12)
    np.testing.assert_allclose(grpo_advantages(r, ids), np_grpo(r, ids), atol=1e-12)
    np.testing.assert_allclose(rloo_advantages(r, group_size=4), np_rloo(r, ids), atol=1e-12)


def test_token_broadcast_and_jit():
    r = jnp.array([1.0, 0.0, 0.0, 0.0])
    mask = jnp.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1]])
    a = jax.jit(lambda r, m: grpo_advantages(r, group_size=2, mask=m))(r, mask)
    s = np_grpo(r, [0, 0, 1, 1])
    np.testing.assert_allclose(a, s[:, None] * np.asarray(mask), rtol=1e-6)
    want = np.arange(4)[:, None] * np.asarray(mask)
    np.testing.assert_array_equal(broadcast_to_tokens(jnp.arange(4.0), mask), want)
    # vmap over independent batches
    rs = jnp.stack([r, r[::-1]])
    got = jax.vmap(lambda x: rloo_advantages(x, group_size=2))(rs)
    np.testing.assert_allclose(got[1], np_rloo(r[::-1], [0, 0, 1, 1]), atol=1e-6)


def test_grpo_distributed():
    rng = np.random.default_rng(1)
    r = (rng.random(32) < 0.4).astype(np.float32)
    mask = rng.random((32, 5)) < 0.8
    ids = rng.permutation(np.repeat(np.arange(4), 8))

    def all_estimators(r, m, ids, *, axis_name=None):
        return (
            # groups of 4 stay on one device (4 rows per device): no axis_name needed …
            grpo_advantages(r, group_size=4, mask=m),
            # … and with group_ids the groups straddle devices (all-gathered statistics).
            grpo_advantages(r, ids, axis_name=axis_name),
            rloo_advantages(r, ids, axis_name=axis_name),
        )

    assert_matches_distributed(all_estimators, (r, mask, ids), {}, atol=1e-5)


def test_grpo_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        grpo_advantages(jnp.zeros(4))
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(jnp.zeros(6), group_size=4)
    with pytest.raises(ValueError, match=r"\[B\]"):
        grpo_advantages(jnp.zeros((4, 2)), group_size=2)


# ----------------------------------------------------------------------------- GAE
def test_gae_hand_case():
    # one sequence, 3 tokens, reward 1 on the last; V = (0.5, 0.5, 0.5), γ = 0.9, λ = 0.8
    r = np.array([[0.0, 0.0, 1.0]])
    v = np.full((1, 3), 0.5)
    m = np.ones((1, 3))
    adv, ret = gae_advantages(r, v, m, gamma=0.9, lam=0.8, whiten=False)
    d2 = 1.0 - 0.5
    d1 = 0.0 + 0.9 * 0.5 - 0.5
    d0 = d1
    a2 = d2
    a1 = d1 + 0.72 * a2
    a0 = d0 + 0.72 * a1
    np.testing.assert_allclose(adv, [[a0, a1, a2]], rtol=1e-6)
    np.testing.assert_allclose(ret, [[a0 + 0.5, a1 + 0.5, a2 + 0.5]], rtol=1e-6)
    # γ = λ = 1, V = 0: advantage = return = reward-to-go
    adv, ret = gae_advantages(r, 0 * v, m, whiten=False)
    np.testing.assert_allclose(adv, [[1.0, 1.0, 1.0]])


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae_vs_reference(x64, gamma, lam):
    rng = np.random.default_rng(2)
    b, t = 5, 7
    r = rng.normal(size=(b, t))
    v = rng.normal(size=(b, t))
    m = rng.random((b, t)) < 0.7  # includes masked "observation" tokens in the middle
    m[0] = False
    for whiten in (False, True):
        adv, ret = gae_advantages(r, v, m, gamma=gamma, lam=lam, whiten=whiten)
        want_a, want_r = np_gae(r, v, m, gamma, lam, whiten)
        np.testing.assert_allclose(np.asarray(adv)[m], want_a[m], atol=1e-10)
        np.testing.assert_allclose(np.asarray(ret)[m], want_r[m], atol=1e-10)
        assert not np.asarray(adv)[~m].any() and not np.asarray(ret)[~m].any()


def test_gae_jit_grad_and_distributed():
    rng = np.random.default_rng(3)
    r = rng.normal(size=(16, 6)).astype(np.float32)
    v = rng.normal(size=(16, 6)).astype(np.float32)
    m = rng.random((16, 6)) < 0.8
    # finite gradients w.r.t. the values (critic), also for an all-masked batch
    for mm in (m, np.zeros_like(m)):
        g = jax.jit(jax.grad(lambda v, mm=mm: jnp.sum(gae_advantages(r, v, mm, gamma=0.9)[1])))(v)
        assert np.all(np.isfinite(np.asarray(g)))
    assert_matches_distributed(
        gae_advantages, (r, v, m), dict(gamma=0.95, lam=0.9), atol=1e-5, methods=("shard_map",)
    )


def test_gae_bad_input():
    z = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="gamma"):
        gae_advantages(z, z, z, gamma=1.5)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        gae_advantages(z, z[:, :2], z)
