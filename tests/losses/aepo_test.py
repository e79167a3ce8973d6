"""Tests for AEPO (arbitrary entropy): temperature switch, sample choice, REINFORCE term, loss.

Independent references: hand-worked numbers, NumPy float64 formulas written from the paper, and
``rel_*`` ports of the released code, ``597358816/AEPO`` @ b353a05: ``_select_by_advantage``
and the ``AEPO`` branch of ``RayPPOTrainer.fit`` (``verl/trainer/ray_trainer.py``: the
training batch ``entropy_controller[:sample_num] ++ batch[sample_num:]``), and
``compute_policy_loss`` (``verl/trainer/core_algos.py``, token mean via ``VF.masked_mean``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.losses.aepo import (
    aepo_entropy_estimate,
    aepo_loss,
    aepo_reinforce_loss,
    aepo_select_reinforce_samples,
    aepo_temperature,
)


# ---------------- float64 NumPy references (independent of the library) ----------------
def np_ppo_tok(logp, old, adv, eps_l, eps_h, c):
    r = np.exp(np.clip(logp - old, -20, 20))
    l1, l2 = -adv * r, -adv * np.clip(r, 1 - eps_l, 1 + eps_h)
    lc = np.maximum(l1, l2)
    if c is None:
        return lc
    return np.where(adv < 0, np.minimum(lc, -adv * c), lc)


def np_token_mean(x, m):
    m = m.astype(bool)
    return x[m].sum() / m.sum() if m.sum() else 0.0


def rel_select_by_advantage(adv_seq, threshold=0.05):
    """``_select_by_advantage(batch, threshold, absolute=False)``: indices with A > threshold."""
    return np.nonzero(adv_seq > threshold)[0]


def rel_compute_policy_loss(old, lp, adv, mask, lo=0.2, hi=0.2, dual=3.0):
    """``compute_policy_loss`` of the AEPO fork (core_algos.py @ b353a05), token mean."""
    nkl = lp - old
    ratio = np.exp(nkl)
    clipped_ratio = np.exp(np.clip(nkl, np.log(1.0 - lo), np.log(1.0 + hi)))
    l1, l2, l3 = -adv * ratio, -adv * clipped_ratio, -adv * dual
    higher = np.maximum(l1, l2)
    lower = np.minimum(higher, l3)
    final = np.where(adv < 0, lower, higher)
    return (final * mask).sum() / (mask.sum() + 1e-8)


def rel_aepo_training_batch(main, temp, entropy, entropy_base, reinforce_sample_num=60):
    """The ``AEPO`` branch of ``fit``: select, set A = 1, concat ``ctrl[:S] ++ batch[S:]``."""
    sel = rel_select_by_advantage(temp["adv"][:, 0])
    ctrl = {k: v[sel] for k, v in temp.items()}
    ctrl["adv"] = np.ones_like(ctrl["adv"])
    if entropy <= entropy_base:
        n = min(reinforce_sample_num, len(ctrl["adv"]))
    else:
        n = min(reinforce_sample_num, len(ctrl["adv"])) // 2
    return {k: np.concatenate([ctrl[k][:n], main[k][n:]]) for k in main}, n


def batch(seed, b=8, t=6, bt=8):
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.05, 3.0, (b, t))
    old = logp + rng.normal(0, 0.3, (b, t))
    adv = np.repeat(rng.normal(0, 1, (b, 1)), t, 1)
    mask = (rng.uniform(size=(b, t)) < 0.8).astype(np.float64)
    tlogp = -rng.uniform(0.05, 3.0, (bt, t))
    trew = (rng.uniform(size=bt) < 0.5).astype(np.float64)
    tmask = (rng.uniform(size=(bt, t)) < 0.8).astype(np.float64)
    return logp, old, adv, mask, tlogp, trew, tmask


# ---------------- temperature switch ----------------
def test_temperature_switch_hand():
    h = jnp.array([0.3, 0.5, 0.7])
    np.testing.assert_allclose(aepo_temperature(h, 0.5), [1.2, 0.8, 0.8])
    np.testing.assert_allclose(aepo_temperature(h, 0.5, inclusive=True), [1.2, 1.2, 0.8])
    t = jax.jit(lambda x: aepo_temperature(x, 0.75, temperature_high=1.5, temperature_low=0.5))
    np.testing.assert_allclose(t(jnp.float32(0.1)), 1.5)
    np.testing.assert_allclose(jax.vmap(t)(h), [1.5, 1.5, 1.5])
    with pytest.raises(ValueError, match="temperature_high"):
        aepo_temperature(h, 0.5, temperature_high=0.0)


@settings(max_examples=15, deadline=None)
@given(
    st.floats(0, 3, width=32, allow_subnormal=False),
    st.floats(0, 3, width=32, allow_subnormal=False),
)
def test_temperature_switch_property(h, target):
    got = aepo_temperature(jnp.float32(h), jnp.float32(target))
    assert got == np.float32(1.2 if np.float32(h) < np.float32(target) else 0.8)


# ---------------- sample selection (release rule) ----------------
def test_select_reinforce_samples_hand():
    adv = jnp.array([0.1, -0.2, 0.5, 0.06, 0.01, 0.3])
    keep, s = aepo_select_reinforce_samples(adv, 0.3, 0.5, max_samples=3)
    assert int(s) == 3
    np.testing.assert_array_equal(keep, [1, 0, 1, 1, 0, 0])
    keep, s = aepo_select_reinforce_samples(adv, 0.9, 0.5, max_samples=3)  # above target: half
    assert int(s) == 1
    np.testing.assert_array_equal(keep, [1, 0, 0, 0, 0, 0])
    keep, s = aepo_select_reinforce_samples(adv, 0.3, 0.5)  # S = min(60, 4)
    assert int(s) == 4 and int(keep.sum()) == 4
    with pytest.raises(ValueError, match="sequence advantages"):
        aepo_select_reinforce_samples(jnp.zeros((2, 3)), 0.0, 0.5)


# ---------------- REINFORCE term ----------------
def test_reinforce_loss_matches_numpy(x64):
    logp, _, _, _, tlogp, trew, tmask = batch(0)
    got, met = aepo_reinforce_loss(jnp.asarray(tlogp), jnp.asarray(trew), jnp.asarray(tmask))
    want = np_token_mean(-trew[:, None] * tlogp, tmask)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert float(met["aepo/reinforce_tokens"]) == tmask.sum()
    # gradient: d/dlogp = −R·m / N  (plain REINFORCE, the paper's estimator)
    g = jax.grad(lambda x: aepo_reinforce_loss(x, trew, tmask)[0])(jnp.asarray(tlogp))
    np.testing.assert_allclose(g, -trew[:, None] * tmask / tmask.sum(), rtol=1e-12)


def test_reinforce_ppo_clip_estimator_same_first_gradient(x64):
    _, _, _, _, tlogp, trew, tmask = batch(1)
    lp = jnp.asarray(tlogp)
    g_rf = jax.grad(lambda x: aepo_reinforce_loss(x, trew, tmask)[0])(lp)
    g_pc = jax.grad(
        lambda x: aepo_reinforce_loss(
            x, trew, tmask, old_logp=jax.lax.stop_gradient(x), estimator="ppo_clip"
        )[0]
    )(lp)
    np.testing.assert_allclose(g_rf, g_pc, rtol=1e-12)
    with pytest.raises(ValueError, match="old_logp"):
        aepo_reinforce_loss(lp, trew, tmask, estimator="ppo_clip")
    with pytest.raises(ValueError, match="estimator"):
        aepo_reinforce_loss(lp, trew, tmask, estimator="nope")


# ---------------- full loss ----------------
@pytest.mark.parametrize("pooled,replace", [(False, True), (True, True), (True, False)])
def test_aepo_loss_matches_numpy(x64, pooled, replace):
    logp, old, adv, mask, tlogp, trew, tmask = batch(2)
    tmask[[2, 5]] = 0.0  # 6 temperature rows with tokens → 6 of the 8 GRPO rows replaced
    alpha = 0.3
    got, met = aepo_loss(
        logp,
        old,
        adv,
        mask,
        temp_logp=tlogp,
        temp_rewards=trew,
        temp_mask=tmask,
        reinforce_coef=alpha,
        pooled=pooled,
        replace_grpo_rows=replace,
        clip_ratio_high=0.28,
    )
    ppo = np_ppo_tok(logp, old, adv, 0.2, 0.28, 3.0)
    rf = -trew[:, None] * tlogp
    n_rep = int((tmask.sum(1) > 0).sum()) if pooled and replace else 0
    assert 0 < int((tmask.sum(1) > 0).sum()) < len(mask)
    mask = mask.copy()
    mask[:n_rep] = 0.0  # the release's `Pos[:S] ++ B[S:]`
    np.testing.assert_allclose(met["aepo/replaced_rows"], n_rep)
    if pooled:
        want = np_token_mean(np.concatenate([ppo, alpha * rf]), np.concatenate([mask, tmask]))
    else:
        want = np_token_mean(ppo, mask) + alpha * np_token_mean(rf, tmask)
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_allclose(met["aepo/loss"], want, rtol=1e-10)
    np.testing.assert_allclose(met["pg/loss"], np_token_mean(ppo, mask), rtol=1e-10)
    share = tmask.sum() / (mask.sum() + tmask.sum())
    np.testing.assert_allclose(met["aepo/reinforce_token_share"], share, rtol=1e-6)
    ent = -np.concatenate([logp, tlogp])[np.concatenate([mask, tmask]) > 0].mean()
    np.testing.assert_allclose(met["aepo/entropy_estimate"], ent, rtol=1e-12)


def test_pooled_alpha_one_reproduces_the_release(x64):
    """α = 1, pooled, PPO-clip estimator, the kept samples only: the release's loss."""
    rng = np.random.default_rng(11)
    b, bt, t = 10, 6, 5
    main = {
        "lp": -rng.uniform(0.05, 3.0, (b, t)),
        "adv": np.repeat(rng.normal(0, 1, (b, 1)), t, 1),
        "mask": np.ones((b, t)),
    }
    main["old"] = main["lp"] + rng.normal(0, 0.3, (b, t))
    main["mask"][:, 3:] = rng.uniform(size=(b, 2)) < 0.5
    temp = {
        "lp": -rng.uniform(0.05, 3.0, (bt, t)),
        "adv": np.repeat(np.array([0.9, -0.5, 0.04, 1.3, 0.2, -1.0])[:, None], t, 1),
        "mask": np.ones((bt, t)),
    }
    temp["old"] = temp["lp"] + rng.normal(0, 0.3, (bt, t))
    temp["mask"][:, 4] = 0.0
    loss = jax.jit(
        lambda keep: aepo_loss(
            main["lp"],
            main["old"],
            main["adv"],
            main["mask"],
            temp_logp=temp["lp"],
            temp_old_logp=temp["old"],
            temp_rewards=np.ones(bt),
            temp_mask=temp["mask"] * keep[:, None],
            reinforce_coef=1.0,
            pooled=True,
            reinforce_estimator="ppo_clip",
        )
    )
    for entropy, n_want in [(0.3, 3), (0.9, 1)]:  # H ≤ H* → S = 3 positives; else 3 // 2
        mixed, n = rel_aepo_training_batch(main, temp, entropy, 0.5)
        assert n == n_want
        want = rel_compute_policy_loss(mixed["old"], mixed["lp"], mixed["adv"], mixed["mask"])
        keep, s = aepo_select_reinforce_samples(temp["adv"][:, 0], entropy, 0.5)
        assert int(s) == n
        got, met = loss(keep.astype(np.float64))
        np.testing.assert_allclose(got, want, rtol=1e-7)
        assert int(met["aepo/replaced_rows"]) == n


def test_aepo_loss_grads(x64):
    logp, old, adv, mask, tlogp, trew, tmask = batch(3)
    # Away from the clip kinks: a small ratio perturbation.
    old = logp + 0.01 * np.sign(np.random.default_rng(0).normal(size=logp.shape))

    def f(lp, tlp):
        return aepo_loss(lp, old, adv, mask, temp_logp=tlp, temp_rewards=trew, temp_mask=tmask)[0]

    check_grads(f, (jnp.asarray(logp), jnp.asarray(tlogp)), order=1, modes=["rev"])
    # the REINFORCE part does not depend on old_logp; the main part gets no temp gradient
    g_t = jax.grad(f, argnums=1)(jnp.asarray(logp), jnp.asarray(tlogp))
    np.testing.assert_allclose(g_t, -trew[:, None] * tmask / tmask.sum(), rtol=1e-12)


def test_aepo_loss_empty_and_inf():
    logp, old, adv, mask, tlogp, trew, tmask = (jnp.asarray(a, jnp.float32) for a in batch(4))
    z = jnp.zeros_like(mask)
    tlogp = tlogp.at[0, 0].set(-jnp.inf)
    tmask = tmask.at[0, 0].set(0.0)

    def f(lp, tlp, m, tm):
        return aepo_loss(lp, old, adv, m, temp_logp=tlp, temp_rewards=trew, temp_mask=tm)[0]

    for pooled in (True,):
        vg = jax.jit(
            jax.value_and_grad(
                lambda a, b, m, tm, p=pooled: aepo_loss(
                    a, old, adv, m, temp_logp=b, temp_rewards=trew, temp_mask=tm, pooled=p
                )[0],
                argnums=(0, 1),
            )
        )
        for m, tm in [(z, z), (mask, z), (z, tmask), (mask, tmask)]:
            val, g = vg(logp, tlogp, m, tm)
            assert np.isfinite(val) and all(np.isfinite(x).all() for x in g)
    assert float(f(logp, tlogp, z, z)) == 0.0


def test_aepo_loss_jit_vmap_and_errors():
    logp, old, adv, mask, tlogp, trew, tmask = (jnp.asarray(a, jnp.float32) for a in batch(5))
    f = jax.jit(lambda *a: aepo_loss(*a[:4], temp_logp=a[4], temp_rewards=a[5], temp_mask=a[6])[0])
    eager = aepo_loss(logp, old, adv, mask, temp_logp=tlogp, temp_rewards=trew, temp_mask=tmask)
    np.testing.assert_allclose(f(logp, old, adv, mask, tlogp, trew, tmask), eager[0], rtol=1e-6)
    stacked = [jnp.stack([x, x]) for x in (logp, old, adv, mask, tlogp, trew, tmask)]
    v = jax.vmap(f)(*stacked)
    np.testing.assert_allclose(v, [eager[0]] * 2, rtol=1e-6)
    with pytest.raises(ValueError, match="reinforce_coef"):
        aepo_loss(
            logp,
            old,
            adv,
            mask,
            temp_logp=tlogp,
            temp_rewards=trew,
            temp_mask=tmask,
            reinforce_coef=-1.0,
        )
    with pytest.raises(ValueError, match="share T"):
        aepo_loss(
            logp, old, adv, mask, temp_logp=tlogp[:, :3], temp_rewards=trew, temp_mask=tmask[:, :3]
        )


def test_aepo_loss_distributed():
    pooled = True
    args = [jnp.asarray(a, jnp.float32) for a in batch(6, b=8, bt=8)]
    args[6] = args[6].at[jnp.array([1, 4, 6])].set(0.0)  # 5 REINFORCE rows → drop 5 GRPO rows
    args = tuple(args)

    def fn(lp, old, adv, m, tlp, tr, tm, *, axis_name=None):
        return aepo_loss(
            lp,
            old,
            adv,
            m,
            temp_logp=tlp,
            temp_rewards=tr,
            temp_mask=tm,
            pooled=pooled,
            axis_name=axis_name,
        )

    assert_matches_distributed(
        fn, args, atol=1e-5, rtol=1e-5, methods=("shard_map",), grad_argnums=(0, 4)
    )


def test_entropy_estimate_distributed():
    logp, _, _, mask, *_ = (jnp.asarray(a, jnp.float32) for a in batch(7))
    want = -np.asarray(logp)[np.asarray(mask) > 0].mean()
    np.testing.assert_allclose(aepo_entropy_estimate(logp, mask), want, rtol=1e-6)
    assert_matches_distributed(aepo_entropy_estimate, (logp, mask), methods=("shard_map",))
