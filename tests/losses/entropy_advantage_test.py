"""Entropy-based advantage shaping (arXiv:2506.14758) against NumPy float64 references.

Reference: the one released implementation, SIREN's ``baseline_entropy_adv`` line
(``Linn3a/siren`` ``verl/verl/workers/actor/dp_actor.py`` at fa59a8dfbecf):
``advantages += torch.min(alpha * entropy.detach(), advantages.abs() / kappa)``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropylab.losses import ObjectiveConfig, ObjectiveInputs, build_objective, ppo_clip_loss
from entropylab.losses.entropy_advantage import entropy_advantage


def np_siren_entropy_adv(adv, ent, alpha=0.4, kappa=1.0):
    """NumPy port of the SIREN line (float64)."""
    adv = np.asarray(adv, np.float64)
    return adv + np.minimum(alpha * np.asarray(ent, np.float64), np.abs(adv) / kappa)


def test_hand_worked_numbers(x64):
    adv = np.array([[1.0, -1.0, 0.5, -2.0, 0.0]])
    ent = np.array([[0.5, 3.0, 2.0, 1.0, 4.0]])
    m = np.ones_like(adv, bool)
    # α·H = [0.2, 1.2, 0.8, 0.4, 1.6]; |A|/κ (κ = 1) = [1, 1, 0.5, 2, 0]
    got, met = entropy_advantage(adv, ent, m)
    np.testing.assert_allclose(got, [[1.2, 0.0, 1.0, -1.6, 0.0]], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(met["entadv/bonus_mean"], (0.2 + 1.0 + 0.5 + 0.4 + 0.0) / 5)
    np.testing.assert_allclose(met["entadv/clip_frac"], 3 / 5)  # tokens 1, 2 and the A = 0 one
    # κ = 2: |A|/κ = [0.5, 0.5, 0.25, 1, 0]; a negative A keeps its sign
    got, _ = entropy_advantage(adv, ent, m, kappa=2.0)
    np.testing.assert_allclose(got, [[1.2, -0.5, 0.75, -1.6, 0.0]], rtol=1e-12, atol=1e-15)


def test_matches_numpy_port_random_and_masked(x64):
    rng = np.random.default_rng(0)
    adv = rng.normal(size=(6, 7))
    ent = rng.uniform(0.0, 3.0, (6, 7))
    m = rng.uniform(size=(6, 7)) < 0.7
    ent_pad = np.where(m, ent, np.nan)  # padding is never read
    for alpha, kappa in ((0.4, 1.0), (0.1, 2.0), (1.0, 0.5)):
        got, _ = entropy_advantage(adv, ent_pad, m, alpha=alpha, kappa=kappa)
        want = np.where(m, np_siren_entropy_adv(adv, ent, alpha, kappa), adv)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    # [B] advantages broadcast over the tokens
    got_b, _ = entropy_advantage(adv[:, 0], ent, m)
    want_b = np.where(m, np_siren_entropy_adv(np.repeat(adv[:, :1], 7, 1), ent), adv[:, :1])
    np.testing.assert_allclose(got_b, want_b, rtol=1e-12)


def test_gradients(x64):
    """No gradient through H; ∂A'/∂A = 1 + sign(A)/κ where the |A|/κ cap binds, else 1."""
    rng = np.random.default_rng(1)
    adv = rng.normal(size=(4, 5))
    ent = rng.uniform(0.0, 3.0, (4, 5))
    m = np.ones((4, 5), bool)
    kappa = 2.0
    g_a, g_h = jax.grad(lambda a, h: jnp.sum(entropy_advantage(a, h, m, kappa=kappa)[0]), (0, 1))(
        jnp.asarray(adv), jnp.asarray(ent)
    )
    cap_binds = np.abs(adv) / kappa < 0.4 * ent
    np.testing.assert_allclose(g_a, np.where(cap_binds, 1 + np.sign(adv) / kappa, 1.0), rtol=1e-12)
    np.testing.assert_array_equal(g_h, np.zeros_like(ent))


def test_nan_propagates_and_errors_name_the_argument():
    adv = np.ones((2, 3), np.float32)
    ent = np.ones((2, 3), np.float32)
    m = np.ones((2, 3), bool)
    bad = ent.copy()
    bad[1, 2] = np.nan
    out, _ = entropy_advantage(adv, bad, m)
    assert np.isnan(out[1, 2]) and np.isfinite(np.delete(np.asarray(out).ravel(), 5)).all()
    bad_a = adv.copy()
    bad_a[0, 1] = np.nan
    assert np.isnan(entropy_advantage(bad_a, ent, m)[0][0, 1])
    with pytest.raises(ValueError, match="kappa"):
        entropy_advantage(adv, ent, m, kappa=0.0)
    with pytest.raises(ValueError, match="alpha"):
        entropy_advantage(adv, ent, m, alpha=-1.0)
    with pytest.raises(ValueError, match="advantages"):
        entropy_advantage(adv[:, :2], ent, m)
    with pytest.raises(ValueError, match="mask"):
        entropy_advantage(adv, ent, m[:, :2])


def test_registered_shaper_reads_current_entropy_by_default():
    rng = np.random.default_rng(2)
    b, t = 4, 5
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    inp = ObjectiveInputs(
        logp=f(-rng.uniform(0.1, 2, (b, t))),
        advantages=f(rng.normal(size=(b,))),
        mask=jnp.asarray(rng.uniform(size=(b, t)) < 0.8),
        entropy=f(rng.uniform(0, 2, (b, t))),
        old_entropy=f(rng.uniform(0, 2, (b, t))),
    )
    for source, h in ((None, inp.entropy), ("current", inp.entropy), ("old", inp.old_entropy)):
        kw = {"alpha": 0.3, "kappa": 2.0}
        if source is not None:
            kw["entropy_source"] = source
        obj = build_objective(
            ObjectiveConfig(advantage_shapers=(("entropy_advantage", kw),), diagnostics=False)
        )
        loss, met = obj.loss(inp, obj.init_state())
        shaped, _ = entropy_advantage(inp.advantages, h, inp.mask, alpha=0.3, kappa=2.0)
        want, _ = ppo_clip_loss(inp.logp, None, shaped, inp.mask)
        np.testing.assert_allclose(loss, want, rtol=1e-6)
        assert "entadv/bonus_mean" in met
    with pytest.raises(ValueError, match="unknown argument"):
        build_objective(ObjectiveConfig(advantage_shapers=(("entropy_advantage", {"beta": 1}),)))
