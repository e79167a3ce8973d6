"""Tests for HICRA: planning-token advantage amplification and semantic entropy.

Independent references: hand-worked numbers written in the tests, and ``rel_*`` NumPy float64
ports of the TRL port ``huggingface/trl`` @ 4915fb2 ``trl/trainer/hicra_trainer.py``
(``_topk_threshold``, ``modify_advantages_hicra``), the only public code of the method (the
authors' ``TIGER-AI-Lab/Hierarchical-Reasoner`` @ 964c429 is README-only). The port's chained
boolean indexing ``advantages[g][mask] *= …`` is a no-op in PyTorch; the ports below apply the
evident intent, and keep the port's float rank ``int((1 - k) * n)`` (equal to the exact rank for
the lengths used here, n < 90).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st

from entropylab.losses.hicra import hicra_advantages, hicra_planning_mask, semantic_entropy


def rel_topk_threshold(mask, values, k=0.3):
    """``_topk_threshold`` (hicra_trainer.py @ 4915fb2): [B, 1]."""
    out = []
    for i in range(mask.shape[0]):
        v = values[i][mask[i] > 0]
        if len(v) == 0:
            out.append(0.0)
            continue
        k_index = int((1 - k) * len(v))
        k_index = max(0, min(k_index, len(v) - 1))
        out.append(np.sort(v)[k_index])
    return np.array(out)[:, None]


def rel_modify_advantages_hicra(adv, entropies, mask, group_ids, planning=None, alpha=0.2, k=0.3):
    """``modify_advantages_hicra`` (hicra_trainer.py @ 4915fb2), applied in place as intended."""
    adv = adv.copy()
    lengths = mask.sum(1)
    normalized = entropies - rel_topk_threshold(mask, entropies, k)
    for g in np.unique(group_ids):
        cur = group_ids == g
        gadv = (adv[cur] * mask[cur]).sum(1) / np.clip(mask[cur].sum(1), 1.0, None)
        is_correct = gadv > 0
        if not is_correct.any():
            continue
        should = is_correct & (lengths[cur] > lengths[cur].mean())
        high = normalized[cur] > 0
        high[~should] = False
        sub = adv[cur]
        if planning is None:
            sub[high] *= 1 + alpha
        else:
            amp = high | (planning[cur] > 0)
            sub[amp] *= 1 + alpha * np.sign(sub[amp])
        adv[cur] = sub
    return adv


def rel_planning(h, m, rho):
    return (m > 0) & (h - rel_topk_threshold(m, h, rho) > 0) & (m.sum(1, keepdims=True) > 0)


def batch(seed, b=8, t=7):
    rng = np.random.default_rng(seed)
    adv = np.repeat(rng.normal(0, 1, (b, 1)), t, 1)
    h = rng.exponential(0.6, (b, t))
    m = (rng.uniform(size=(b, t)) < 0.8).astype(np.float64)
    return adv, h, m


def test_planning_mask_hand_and_port():
    # n = 10 entropies 0.1 … 1.0: rank ⌊0.7·10⌋ = 7 → thr = 0.8 → only 0.9 and 1.0 (strictly >)
    h = jnp.arange(1, 11, dtype=jnp.float32)[None] / 10
    np.testing.assert_array_equal(
        hicra_planning_mask(h, jnp.ones((1, 10)), entropy_top_ratio=0.3), [[0] * 8 + [1, 1]]
    )
    adv, h, m = batch(0)
    m[3] = 0  # empty row
    h[5, :] = 0.4  # ties: nothing strictly above
    got = jax.jit(lambda e, k: hicra_planning_mask(e, k, entropy_top_ratio=0.3))(h, m)
    np.testing.assert_array_equal(got, rel_planning(h, m, 0.3))
    assert not np.asarray(got)[3].any() and not np.asarray(got)[5].any()


def test_hand_paper_rule():
    adv = jnp.array([[1.0, 1.0, -1.0, -1.0]])
    plan = jnp.array([[1, 0, 1, 0]])
    out, met = hicra_advantages(adv, jnp.ones((1, 4)), planning_mask=plan, alpha=0.2)
    np.testing.assert_allclose(out, [[1.2, 1.0, -0.8, -1.0]])
    np.testing.assert_allclose(met["hicra/planning_token_ratio"], 0.5)
    np.testing.assert_allclose(met["hicra/planning_advantage_mean"], 0.2)
    np.testing.assert_allclose(met["hicra/execution_advantage_mean"], 0.0)


def test_entropy_proxy_and_port_filter():
    adv, h, m = batch(1)
    out, _ = hicra_advantages(adv, m, entropy=h, alpha=0.2)
    plan = rel_planning(h, m, 0.3)
    np.testing.assert_allclose(out, np.where(plan, adv + 0.2 * np.abs(adv), adv), rtol=1e-6)
    groups = np.repeat(np.arange(2), 4)
    out2, _ = hicra_advantages(adv, m, entropy=h, correct_and_long_only=True, group_size=4)
    want = rel_modify_advantages_hicra(adv, h, m, groups)
    np.testing.assert_allclose(np.where(m > 0, out2, 0), np.where(m > 0, want, 0), rtol=1e-6)
    with pytest.raises(ValueError, match="group_size"):
        hicra_advantages(adv, m, entropy=h, correct_and_long_only=True)
    with pytest.raises(ValueError, match="planning_mask or entropy"):
        hicra_advantages(adv, m)


def test_port_rule_matches_trl_port(x64):
    rng = np.random.default_rng(7)
    b, t, g = 12, 9, 4
    adv = rng.normal(0, 1, (b, t))  # token-level advantages, mixed signs within a response
    adv[:4] = -np.abs(adv[:4])  # group 0: no correct response → untouched
    h = rng.exponential(0.6, (b, t))
    m = np.zeros((b, t))
    for i, n in enumerate(rng.integers(1, t + 1, b)):
        m[i, :n] = 1.0
    plan = rng.uniform(size=(b, t)) < 0.25
    groups = np.repeat(np.arange(b // g), g)
    f = jax.jit(
        lambda a, e, k, p: hicra_advantages(
            a, k, entropy=e, planning_mask=p, correct_and_long_only=True, group_size=g
        )[0]
    )
    got = np.where(m > 0, f(adv, h, m, plan), 0.0)
    want = np.where(m > 0, rel_modify_advantages_hicra(adv, h, m, groups, planning=plan), 0.0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert np.any(got != np.where(m > 0, adv, 0.0))
    np.testing.assert_array_equal(got[:4], np.where(m[:4] > 0, adv[:4], 0.0))
    got_np = np.where(
        m > 0,
        hicra_advantages(adv, m, entropy=h, correct_and_long_only=True, group_size=g)[0],
        0.0,
    )
    want_np = np.where(m > 0, rel_modify_advantages_hicra(adv, h, m, groups), 0.0)
    np.testing.assert_allclose(got_np, want_np, rtol=1e-12)


@settings(max_examples=15, deadline=None)
# float32 subnormals are flushed to zero by XLA:CPU (FTZ): draw normal float32 values only.
@given(
    st.floats(-3, 3, width=32, allow_subnormal=False),
    st.floats(0, 1, width=32, allow_subnormal=False, exclude_max=True),
)
def test_sign_preserved_property(a, alpha):
    """For α < 1, Â = A + α|A| keeps the sign of A (α = 1 zeroes negative A: tested below)."""
    out, _ = hicra_advantages(
        jnp.full((1, 3), a), jnp.ones((1, 3)), planning_mask=jnp.ones((1, 3)), alpha=alpha
    )
    assert np.all(np.sign(np.asarray(out)) == np.sign(np.float32(a)))
    assert np.all(np.abs(np.asarray(out)) >= np.abs(np.float32(a)) * (1 - alpha) - 1e-6)


def test_empty_jit_vmap_distributed():
    adv, h, m = (jnp.asarray(a, jnp.float32) for a in batch(2))
    f = jax.jit(lambda a, e, mm: hicra_advantages(a, mm, entropy=e))
    out, met = f(adv, h, jnp.zeros_like(m))
    np.testing.assert_array_equal(out, adv)
    assert all(np.isfinite(v) for v in met.values())
    v = jax.vmap(lambda a, e, mm: hicra_advantages(a, mm, entropy=e)[0])(
        jnp.stack([adv, adv]), jnp.stack([h, h]), jnp.stack([m, m])
    )
    np.testing.assert_allclose(v[0], f(adv, h, m)[0])
    assert_matches_distributed(
        lambda a, e, mm, *, axis_name=None: hicra_advantages(a, mm, entropy=e, axis_name=axis_name),
        (adv, h, m),
        methods=("shard_map",),
    )


def test_semantic_entropy():
    np.testing.assert_allclose(semantic_entropy(jnp.array([1.0, 1.0, 0.0])), np.log(2), rtol=1e-6)
    assert float(semantic_entropy(jnp.zeros(4))) == 0.0
    c = np.array([3.0, 1.0, 4.0, 0.0, 2.0])
    p = c / c.sum()
    want = -(p[p > 0] * np.log(p[p > 0])).sum()
    np.testing.assert_allclose(semantic_entropy(c), want, rtol=1e-6)


def test_alpha_one_zeroes_negative_planning_advantages():
    out, _ = hicra_advantages(
        jnp.array([[-1.5, 2.0, -0.5]]), jnp.ones((1, 3)), planning_mask=jnp.ones((1, 3)), alpha=1.0
    )
    np.testing.assert_allclose(np.asarray(out), [[0.0, 4.0, 0.0]])
