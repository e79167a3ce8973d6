"""Tests for ETTRL: majority-vote pseudo-label rewards and entropy-based advantage reshaping."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropylab.losses.ettrl import ettrl_advantages, majority_vote_rewards, response_entropy


def test_majority_vote_hand():
    ans = jnp.array([3, 3, 5, 7, 1, 2, 2, 1])
    r, maj = majority_vote_rewards(ans, group_size=4)
    np.testing.assert_array_equal(maj, [3, 1])  # tie 1 vs 2 → smallest id
    np.testing.assert_array_equal(r, [1, 1, 0, 0, 1, 0, 0, 1])
    valid = jnp.array([0, 0, 1, 1, 0, 0, 0, 0])
    r, maj = majority_vote_rewards(ans, group_size=4, valid=valid)
    np.testing.assert_array_equal(maj, [5, -1])
    np.testing.assert_array_equal(r, [0, 0, 1, 0, 0, 0, 0, 0])


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=6, max_size=6))
def test_majority_vote_property(answers):
    r, maj = majority_vote_rewards(jnp.array(answers), group_size=6)
    counts = np.bincount(answers, minlength=4)
    assert int(maj[0]) == int(np.argmax(counts))
    assert float(r.sum()) == counts.max()


def np_ear(adv, h, m, g, kappa=1.0, lo=0.5, hi=2.0, positive=True):
    n = m.sum(-1)
    hb = np.where(n > 0, (h * m).sum(-1) / np.maximum(n, 1), 0.0)
    w = np.ones_like(hb)
    for i in range(0, len(hb), g):
        sl = slice(i, i + g)
        ok = n[sl] > 0
        gm = hb[sl][ok].mean() if ok.any() else 0.0
        if gm > 1e-8:
            w[sl] = np.where(ok, np.clip((hb[sl] / gm) ** kappa, lo, hi), 1.0)
    wb = w[:, None]
    return np.where(adv > 0, adv * wb, adv) if positive else adv * wb


def test_ear_matches_numpy(x64):
    rng = np.random.default_rng(0)
    adv = np.repeat(rng.normal(size=(8, 1)), 5, 1)
    h = rng.exponential(0.5, (8, 5))
    m = (rng.uniform(size=(8, 5)) < 0.8).astype(float)
    m[2] = 0
    for apply_to in ("positive", "all"):
        got, _ = ettrl_advantages(adv, h, m, group_size=4, apply_to=apply_to, kappa=1.5)
        want = np_ear(adv, h, m, 4, kappa=1.5, positive=apply_to == "positive")
        np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(response_entropy(h, m)[2], 0.0)


def test_ear_hand_and_no_grad():
    adv = jnp.array([1.0, 1.0, -1.0, -1.0])
    h = jnp.array([[0.2, 0.2], [0.6, 0.6], [0.2, 0.2], [0.6, 0.6]])
    m = jnp.ones((4, 2))
    out, _ = ettrl_advantages(adv, h, m, group_size=4)  # group mean 0.4 → w = 0.5, 1.5
    np.testing.assert_allclose(out, [0.5, 1.5, -1.0, -1.0], rtol=1e-6)
    g = jax.grad(lambda e: ettrl_advantages(adv, e, m, group_size=4)[0].sum())(h)
    np.testing.assert_array_equal(g, 0.0)
    z, _ = jax.jit(lambda a, e, mm: ettrl_advantages(a, e, mm, group_size=2))(
        adv, h, jnp.zeros_like(m)
    )
    np.testing.assert_allclose(z, adv)  # all-masked → unchanged, finite
    v = jax.vmap(lambda e: ettrl_advantages(adv, e, m, group_size=4)[0])(jnp.stack([h, h]))
    np.testing.assert_allclose(v[0], out)
    with pytest.raises(ValueError, match="apply_to"):
        ettrl_advantages(adv, h, m, group_size=4, apply_to="x")
    with pytest.raises(ValueError, match="group_size"):
        ettrl_advantages(adv, h, m, group_size=3)


def test_ear_hand_worked_clip_kappa_and_masked_row():
    """No released code exists: the numbers are worked by hand from the documented formula.

    Response entropies (valid tokens only): 0.1 (the 9.0 is padding), 0.3, 0.4, and an empty
    row. Group mean over the non-empty rows 0.8/3 → ratios 0.375, 1.125, 1.5 (empty row: 1).
    κ = 2: w = clip(ratio², 0.5, 2) = clip(0.140625) = 0.5, 1.265625, clip(2.25) = 2.0, 1.
    """
    h = jnp.array([[0.1, 0.1, 9.0], [0.2, 0.4, 0.3], [0.4, 5.0, 5.0], [7.0, 7.0, 7.0]], jnp.float32)
    m = jnp.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_allclose(response_entropy(h, m), [0.1, 0.3, 0.4, 0.0], rtol=1e-6)
    adv = jnp.array([1.0, 2.0, -1.0, 3.0])
    f = jax.jit(
        lambda a, e, k, mode: ettrl_advantages(a, e, k, group_size=4, kappa=2.0, apply_to=mode),
        static_argnums=3,
    )
    out_all, met = f(adv, h, m, "all")
    np.testing.assert_allclose(out_all, [0.5, 2.53125, -2.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(
        met["ettrl/weight_mean"], (0.5 + 1.265625 + 2.0 + 1.0) / 4, rtol=1e-6
    )
    out_pos, _ = f(adv, h, m, "positive")
    np.testing.assert_allclose(out_pos, [0.5, 2.53125, -1.0, 3.0], rtol=1e-6)
    out_tok, _ = f(jnp.repeat(adv[:, None], 3, 1), h, m, "positive")  # [B, T] advantages
    np.testing.assert_allclose(out_tok[:, 0], [0.5, 2.53125, -1.0, 3.0], rtol=1e-6)
