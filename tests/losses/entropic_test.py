"""EntroPIC (arXiv:2511.15248) against NumPy float64 ports of the release.

Ports of ``yk7333/EntroPIC`` at 2470730c345806: the PI controller of ``dp_actor.py``
(``EntroPICDataParallelPPOActor.update_policy``) and ``core_algos.py``
``compute_policy_loss_entropic`` (vanilla PPO with dual clip + the high-probability term).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropylab.losses import ObjectiveConfig, ObjectiveInputs, build_objective, ppo_clip_loss
from entropylab.losses.entropic import (
    EntroPICConfig,
    entropic_adjustment_loss,
    entropic_init,
    entropic_update,
)
from entropylab.ops.masked import AGG_MODES


def _agg(x, mask, mode):
    """verl ``agg_loss`` (empty rows excluded, empty mask → 0)."""
    m = mask.astype(np.float64)
    x = np.where(mask, x, 0.0)
    if mode == "token-mean":
        return (x * m).sum() / m.sum() if m.sum() else 0.0
    n, s = m.sum(-1), (x * m).sum(-1)
    if mode == "seq-mean-token-sum":
        return s[n > 0].mean() if (n > 0).any() else 0.0
    if mode == "seq-mean-token-mean":
        return (s[n > 0] / n[n > 0]).mean() if (n > 0).any() else 0.0
    return s.sum() / x.size


class NpEntroPICActor:
    """The controller of ``update_policy``: per micro-batch, α from the accumulated error
    *before* it, then ``acc += (H − H*)·rows / ppo_mini_batch_size``."""

    def __init__(self, target, kp=1.0, ki=0.01):
        self.acc, self.target, self.kp, self.ki = 0.0, target, kp, ki

    def micro_batch(self, entropy_agg, rows, mini_batch_size):
        a = self.acc * self.ki + (entropy_agg - self.target) * self.kp
        a = float(np.clip(a, -1.0, 1.0))
        self.acc += (entropy_agg - self.target) * rows / mini_batch_size
        return a


def np_entropic_loss(lp, old, adv, m, alpha, mode="token-mean", el=0.2, eh=0.2, c=3.0, thr=0.95):
    """``compute_policy_loss_entropic`` value and d/d(logp) of the adjustment term (float64)."""
    r = np.exp(np.clip(lp - old, -20, 20))
    l1, l2 = -adv * r, -adv * np.clip(r, 1 - el, 1 + eh)
    lc = np.maximum(l1, l2)
    pg = np.where(adv < 0, np.minimum(-adv * c, lc), lc)
    high = m & (lp > np.log(thr))
    adj = alpha * _agg(-r * np.abs(adv), high, mode)
    return _agg(pg, m, mode), adj, high, r


def test_controller_hand_worked(x64):
    """H* = 0.1, K_p = 1, K_i = 0.01; H = 0.5, 0.3, 0.05 →
    α = 0.4, 0.2 + 0.01·0.4 = 0.204, −0.05 + 0.01·0.6 = −0.044; I = 0.4, 0.6, 0.55."""
    cfg = EntroPICConfig(target=0.1, kp=1.0, ki=0.01)
    s = entropic_init(cfg)
    for h, a_want, i_want in ((0.5, 0.4, 0.4), (0.3, 0.204, 0.6), (0.05, -0.044, 0.55)):
        a, s, met = entropic_update(s, h, cfg)
        np.testing.assert_allclose(a, a_want, rtol=1e-6)
        np.testing.assert_allclose(s.integral, i_want, rtol=1e-6)
        np.testing.assert_allclose(met["entropic/error"], h - 0.1, rtol=1e-6)
    assert int(s.count) == 3
    # α is clipped to ±α_max (the release: ±1); the integral is not
    a, s2, _ = entropic_update(s, 3.0, cfg)
    np.testing.assert_allclose(a, 1.0)
    np.testing.assert_allclose(s2.integral, 0.55 + 2.9, rtol=1e-6)
    a, _, _ = entropic_update(s, 3.0, EntroPICConfig(target=0.1, alpha_max=0.5))
    np.testing.assert_allclose(a, 0.5)
    # weight: the release's rows / ppo_mini_batch_size
    _, s3, _ = entropic_update(entropic_init(cfg), 0.5, cfg, weight=0.25)
    np.testing.assert_allclose(s3.integral, 0.1, rtol=1e-6)


def test_controller_matches_release_actor_sequence():
    rng = np.random.default_rng(0)
    cfg = EntroPICConfig(target=0.3, kp=0.7, ki=0.05)
    actor = NpEntroPICActor(0.3, 0.7, 0.05)
    s = entropic_init(cfg)
    step = jax.jit(lambda s, h, w: entropic_update(s, h, cfg, weight=w)[:2])
    for _ in range(12):
        rows = int(rng.integers(1, 9))
        h = float(rng.uniform(0.0, 1.2))
        a_want = actor.micro_batch(h, rows, 16)
        a, s = step(s, jnp.float32(h), jnp.float32(rows / 16))
        np.testing.assert_allclose(a, a_want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(s.integral, actor.acc, rtol=1e-5, atol=1e-6)


def test_adjustment_loss_hand_worked(x64):
    """p = [0.99, 0.96, 0.5, 0.97 (masked)], r = [1.2, 1, 1, 1], A = [1, −2, 3, 5]:
    selected (log π > log 0.95, valid) = tokens 0, 1; agg = mean(−1.2·1, −1·2) = −1.6;
    α = 0.5 → −0.8; ∂/∂logp = α·(−r|A|)/2 = [−0.3, −0.5, 0, 0]."""
    lp = np.log([[0.99, 0.96, 0.5, 0.97]])
    old = lp - np.log([[1.2, 1.0, 1.0, 1.0]])
    adv = np.array([[1.0, -2.0, 3.0, 5.0]])
    m = np.array([[True, True, True, False]])
    f = lambda x: entropic_adjustment_loss(x, old, adv, m, alpha=0.5)  # noqa: E731
    (loss, met), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp))
    np.testing.assert_allclose(loss, -0.8, rtol=1e-12)
    np.testing.assert_allclose(g, [[-0.3, -0.5, 0.0, 0.0]], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(met["entropic/high_prob_frac"], 2 / 3, rtol=1e-12)
    # α < 0 flips the push; no selected token → exactly 0
    neg, _ = entropic_adjustment_loss(lp, old, adv, m, alpha=-0.5)
    np.testing.assert_allclose(neg, 0.8, rtol=1e-12)
    lo = np.log(np.full((1, 4), 0.5))
    np.testing.assert_allclose(entropic_adjustment_loss(lo, lo, adv, m, alpha=0.5)[0], 0.0)


def test_release_loss_equals_ppo_clip_plus_adjustment(x64):
    rng = np.random.default_rng(1)
    b, t = 6, 7
    lp = np.log(rng.uniform(0.3, 1.0, (b, t)))  # many tokens above 0.95
    lp = np.where(rng.uniform(size=(b, t)) < 0.4, np.log(rng.uniform(0.951, 0.999, (b, t))), lp)
    old = lp + 0.3 * rng.normal(size=(b, t))
    adv = rng.normal(size=(b, t))
    m = rng.uniform(size=(b, t)) < 0.8
    m[0] = False
    alpha = -0.37
    for mode in AGG_MODES:
        pg_want, adj_want, high, r = np_entropic_loss(lp, old, adv, m, alpha, mode)
        assert high.sum() >= 3

        def total(x):
            pg, _ = ppo_clip_loss(x, old, adv, m, clip_ratio_c=3.0, loss_agg_mode=mode)  # noqa: B023
            adj, _ = entropic_adjustment_loss(x, old, adv, m, alpha=alpha, loss_agg_mode=mode)  # noqa: B023
            return pg + adj, adj

        (tot, adj), g = jax.value_and_grad(total, has_aux=True)(jnp.asarray(lp))
        np.testing.assert_allclose(adj, adj_want, rtol=1e-12, err_msg=mode)
        np.testing.assert_allclose(tot, pg_want + adj_want, rtol=1e-12, err_msg=mode)
    # gradient of the adjustment term (token-mean): α·(−r|A|)/N_high at the selected tokens
    g = jax.grad(lambda x: entropic_adjustment_loss(x, old, adv, m, alpha=alpha)[0])(
        jnp.asarray(lp)
    )
    _, _, high, r = np_entropic_loss(lp, old, adv, m, alpha)
    np.testing.assert_allclose(
        g, np.where(high, alpha * -r * np.abs(adv) / high.sum(), 0.0), rtol=1e-12, atol=1e-15
    )


def test_nan_and_errors():
    lp = np.log(np.full((2, 3), 0.97, np.float32))
    adv = np.ones((2, 3), np.float32)
    m = np.ones((2, 3), bool)
    bad = lp.copy()
    bad[1, 2] = np.nan  # NaN > log τ is False: the token would silently drop out
    loss, g = jax.value_and_grad(lambda x: entropic_adjustment_loss(x, None, adv, m, alpha=0.5)[0])(
        jnp.asarray(bad)
    )
    assert np.isnan(loss) and np.isnan(g[1, 2])
    _, s, _ = entropic_update(entropic_init(EntroPICConfig()), jnp.nan, EntroPICConfig())
    assert np.isnan(s.integral)  # not hidden
    with pytest.raises(ValueError, match="target"):
        EntroPICConfig(target=-1.0)
    with pytest.raises(ValueError, match="alpha_max"):
        EntroPICConfig(alpha_max=0.0)
    with pytest.raises(ValueError, match="high_prob_threshold"):
        entropic_adjustment_loss(lp, None, adv, m, alpha=0.1, high_prob_threshold=1.0)
    with pytest.raises(ValueError, match="advantages"):
        entropic_adjustment_loss(lp, None, adv[:, :2], m, alpha=0.1)
    with pytest.raises(ValueError, match="scalar"):
        entropic_update(entropic_init(EntroPICConfig()), jnp.ones(2), EntroPICConfig())


def test_objective_regularizer_state_flow():
    """Step 1: α = K_p·(H₁ − H*) (I = 0); after update_state_from_stats the integral is the
    row-weighted mean error of the mini-batches; step 2 uses it."""
    rng = np.random.default_rng(2)
    b, t = 8, 5
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    lp = np.log(rng.uniform(0.5, 1.0, (b, t)))

    def batch(seed):
        r = np.random.default_rng(seed)
        return ObjectiveInputs(
            logp=f32(lp),
            old_logp=f32(lp + 0.05 * r.normal(size=(b, t))),
            advantages=f32(r.normal(size=(b,))),
            mask=jnp.asarray(r.uniform(size=(b, t)) < 0.8),
            entropy=f32(r.uniform(0.0, 1.0, (b, t))),
        )

    kw = {"target": 0.2, "kp": 0.5, "ki": 0.1, "integral_weight": 2.0}
    cfg = ObjectiveConfig(
        policy_loss="ppo_clip",
        policy_kwargs={"clip_ratio_c": 3.0},
        regularizers=(("entropic", kw),),
        diagnostics=False,
    )
    obj = build_objective(cfg)
    state = obj.init_state()
    mbs = [batch(3), batch(4)]
    h = [float(np.asarray(x.entropy)[np.asarray(x.mask)].mean()) for x in mbs]
    stats = obj.zero_stats()
    run = jax.jit(obj.loss_and_stats)
    for x, hx in zip(mbs, h):
        loss, met, s = run(x, state)
        np.testing.assert_allclose(met["entropic/alpha"], 0.5 * (hx - 0.2), rtol=1e-5)
        adj, _ = entropic_adjustment_loss(
            x.logp, x.old_logp, x.advantages, x.mask, alpha=0.5 * (hx - 0.2)
        )
        np.testing.assert_allclose(met["loss/entropic"], adj, rtol=1e-5, atol=1e-7)
        stats = obj.add_stats(stats, s)
    state, info = obj.update_state_from_stats(state, stats)
    integral = 2.0 * (np.mean(h) - 0.2)  # equal rows: the plain mean of the two errors
    np.testing.assert_allclose(state["regularizers"]["entropic"].integral, integral, rtol=1e-5)
    _, met, _ = run(mbs[0], state)
    a_want = float(np.clip(0.5 * (h[0] - 0.2) + 0.1 * integral, -1, 1))
    np.testing.assert_allclose(met["entropic/alpha"], a_want, rtol=1e-5)
    # nothing added (count 0): the state does not move
    same, _ = obj.update_state_from_stats(state, obj.zero_stats())
    np.testing.assert_allclose(same["regularizers"]["entropic"].integral, integral, rtol=1e-6)
    assert "entropy" in obj.needs
    with pytest.raises(ValueError, match="kp"):
        build_objective(ObjectiveConfig(regularizers=(("entropic", {"kp": -1.0}),)))
    assert math.isfinite(float(loss))
