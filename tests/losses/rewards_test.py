"""Tests for PEAR phase-entropy rewards, DAPO overlong shaping and last-token placement."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entropylab.losses.rewards import (
    dapo_overlong_penalty,
    pear_rewards,
    phase_entropies,
    place_on_last_token,
)


def np_dapo(n, lmax, lbuf, f=1.0, clip=True):
    exp = lmax - lbuf
    r = np.where(n <= exp, 0.0, (exp - n) / lbuf)
    if clip:
        r = np.where(n > lmax, -1.0, r)
    return f * r


def test_dapo_hand_and_numpy():
    n = jnp.array([0, 16, 18, 20, 24])
    got = dapo_overlong_penalty(n, max_length=20, buffer_length=4)
    np.testing.assert_allclose(got, [0, 0, -0.5, -1.0, -1.0])
    got = dapo_overlong_penalty(n, max_length=20, buffer_length=4, clip=False, penalty_factor=2)
    np.testing.assert_allclose(got, np_dapo(np.asarray(n), 20, 4, 2.0, False))
    with pytest.raises(ValueError, match="buffer_length"):
        dapo_overlong_penalty(n, max_length=4, buffer_length=8)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 3000), st.integers(1, 2048), st.floats(0, 2))
def test_dapo_property(n, lbuf, f):
    lmax = 2048
    lbuf = min(lbuf, lmax)
    got = float(
        dapo_overlong_penalty(
            jnp.array([n]), max_length=lmax, buffer_length=lbuf, penalty_factor=f
        )[0]
    )
    assert got == pytest.approx(float(np_dapo(np.array(n), lmax, lbuf, f)), rel=1e-5, abs=1e-6)
    assert -f - 1e-6 <= got <= 0


def test_place_on_last_token():
    m = jnp.array([[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]])
    out = place_on_last_token(jnp.array([1.0, -2.0, 5.0]), m)
    np.testing.assert_allclose(out, [[0, 0, 1, 0], [0, 0, -2, 0], [0, 0, 0, 0]])


def np_pear(s, h, m, b, lt, la, tau, gate):
    t = h.shape[1]
    out = []
    for i in range(len(s)):
        bi = t if (b[i] < 0 or b[i] >= t) else b[i]
        th = h[i, :bi][m[i, :bi] > 0]
        an = h[i, bi:][m[i, bi:] > 0]
        ht = th.mean() if th.size else 0.0
        ha = an.mean() if an.size else 0.0
        pen = lt * ht + la * max(ha - tau, 0.0)
        if gate == "correct" and s[i] <= 0:
            pen = 0.0
        out.append(s[i] - pen)
    return np.array(out)


@pytest.mark.parametrize("gate", ["all", "correct"])
def test_pear_matches_numpy(x64, gate):
    rng = np.random.default_rng(0)
    h = rng.exponential(0.6, (6, 8))
    m = (rng.uniform(size=(6, 8)) < 0.85).astype(float)
    b = np.array([3, 0, 8, -1, 5, 7])
    s = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    got, met = pear_rewards(
        s, h, m, b, think_coef=0.7, answer_coef=0.3, answer_tolerance=0.2, gate=gate
    )
    np.testing.assert_allclose(got, np_pear(s, h, m, b, 0.7, 0.3, 0.2, gate), rtol=1e-10)
    assert np.isfinite(list(met.values())).all()


def test_pear_hand_jit_vmap_empty():
    h = jnp.array([[2.0, 1.0, 0.5, 0.1]])
    m = jnp.ones((1, 4))
    ph = phase_entropies(h, m, jnp.array([2]))
    np.testing.assert_allclose(ph["think"], [1.5])
    np.testing.assert_allclose(ph["answer"], [0.3])
    r, _ = jax.jit(lambda *a: pear_rewards(*a, answer_tolerance=0.25))(
        jnp.array([1.0]), h, m, jnp.array([2])
    )
    np.testing.assert_allclose(r, [1.0 - 0.5 * 1.5 - 0.5 * 0.05], rtol=1e-6)
    r0, met = pear_rewards(jnp.array([1.0]), h, jnp.zeros((1, 4)), jnp.array([2]))
    np.testing.assert_allclose(r0, [1.0])
    v = jax.vmap(lambda e: pear_rewards(jnp.array([1.0]), e, m, jnp.array([2]))[0])(
        jnp.stack([h, h])
    )
    np.testing.assert_allclose(v[0], v[1])
    with pytest.raises(ValueError, match="gate"):
        pear_rewards(jnp.array([1.0]), h, m, jnp.array([2]), gate="x")


@pytest.mark.parametrize(
    "gate,want", [("all", [0.575, -0.2, 1.0, 0.5]), ("correct", [0.575, 0.0, 1.0, 0.5])]
)
def test_pear_hand_worked(gate, want):
    """No released code could be read: the numbers are worked by hand from the documented form
    (λ_think = λ_ans = 0.5, τ_ans = 0.5).

    Row 0, boundary 2: think (1.0, 0.5) → 0.75, answer (0.9, 0.3) → 0.6 → penalty
    0.375 + 0.5·0.1 = 0.425 → 1 − 0.425 = 0.575. Row 1, no boundary, padding 9.0 ignored:
    think 0.4 → penalty 0.2 → 0 − 0.2 (``gate="correct"``: a wrong answer is not penalised → 0).
    Row 2, boundary 0: answer 0.5 ≤ τ → no penalty → 1.0. Row 3, boundary = T: think over the
    two valid tokens 1.0 → 1 − 0.5 = 0.5.
    """
    h = jnp.array(
        [[1.0, 0.5, 0.9, 0.3], [0.2, 0.4, 0.6, 9.0], [0.8, 0.8, 0.2, 0.2], [1.0, 1.0, 1.0, 1.0]]
    )
    m = jnp.array([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 0]])
    b = jnp.array([2, -1, 0, 4])
    s = jnp.array([1.0, 0.0, 1.0, 1.0])
    r, met = jax.jit(lambda *a: pear_rewards(*a, gate=gate))(s, h, m, b)
    np.testing.assert_allclose(r, want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(met["pear/think_len"], (2 + 3 + 0 + 2) / 4)
    ph = phase_entropies(h, m, b)
    np.testing.assert_allclose(ph["think"], [0.75, 0.4, 0.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(ph["answer"], [0.6, 0.0, 0.5, 0.0], rtol=1e-6)
