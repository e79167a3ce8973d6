"""Entropy Ratio Clipping (arXiv:2512.05591) against NumPy float64 ports of the release.

Ports of ``Kwai-Klear/ERC`` ``verl/trainer/ppo/core_algos.py`` at f1885c534f8d:
``compute_policy_loss_grpo_erc`` (DAPO clip + dual clip, then ``torch.where(balanced_mask,
pg_losses, pg_losses.detach())``) and ``compute_policy_loss_gppo_erc`` (GPPO bounds
``(1 ∓ ε)·r/r.detach()``). Gradients of the ports are written out by hand (the release is
torch autograd): per token, ``∂ℓ/∂logp = −A·r`` on the unclipped branch, 0 (DAPO) or
``−A·(1 ± ε)`` (GPPO) on the clipped branch, 0 where dual clip binds, and 0 outside the band.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropylab.losses import ObjectiveConfig, ObjectiveInputs, build_objective
from entropylab.losses.entropy_ratio_clip import entropy_ratio_keep_mask, erc_loss
from entropylab.ops.masked import AGG_MODES


def np_agg(x, m, mode):
    """verl ``agg_loss`` (empty sequences excluded; Dr. GRPO normaliser T)."""
    m = m.astype(np.float64)
    if mode == "token-mean":
        return (x * m).sum() / m.sum()
    n = m.sum(-1)
    s = (x * m).sum(-1)
    if mode == "seq-mean-token-sum":
        return s[n > 0].mean()
    if mode == "seq-mean-token-mean":
        return (s[n > 0] / n[n > 0]).mean()
    return s.sum() / (x.shape[0] * x.shape[1])


def np_erc(
    lp,
    old,
    adv,
    m,
    h,
    h_old,
    *,
    low=0.95,
    high=1.05,
    el=0.2,
    eh=0.28,
    c=3.0,
    mode="dapo",
    agg="token-mean",
):
    """Value and d(loss)/d(logp) of the released grpo_erc / gppo_erc (float64)."""
    d = np.clip(lp - old, -20, 20)
    r = np.exp(d)
    l1 = -adv * r
    lo, hi = 1 - el, 1 + eh
    l2 = -adv * np.clip(r, lo, hi)
    lc = np.maximum(l1, l2)
    l3 = -adv * c
    loss = np.where(adv < 0, np.minimum(l3, lc), lc)
    # per-token derivative wrt logp of the release's autograd graph
    clipped = l2 > l1
    dual = (adv < 0) & (lc > l3)
    bound = np.where(r > hi, hi, lo)
    g_clip = np.zeros_like(r) if mode == "dapo" else -adv * bound
    g = np.where(dual, 0.0, np.where(clipped, g_clip, -adv * r))
    rho = (h + 1e-8) / (h_old + 1e-8)
    keep = (rho > low) & (rho < high) & m
    g = np.where(keep, g, 0.0)
    value = np_agg(loss, m, agg)
    # gradient of agg: token-mean → 1/Σm; seq modes → per-row normalisers
    mf = m.astype(np.float64)
    if agg == "token-mean":
        w = mf / mf.sum()
    elif agg == "seq-mean-token-sum":
        w = mf / (mf.sum(-1) > 0).sum()
    elif agg == "seq-mean-token-mean":
        n = mf.sum(-1, keepdims=True)
        w = np.where(n > 0, mf / np.maximum(n, 1), 0) / (n[:, 0] > 0).sum()
    else:
        w = mf / (lp.shape[0] * lp.shape[1])
    return value, g * w, keep, clipped & m


def _batch(seed, b=6, t=7):
    rng = np.random.default_rng(seed)
    lp = -np.abs(rng.normal(size=(b, t))) - 0.1
    old = lp + 0.4 * rng.normal(size=(b, t))
    adv = rng.normal(size=(b, t))
    m = rng.uniform(size=(b, t)) < 0.75
    m[0] = False  # an empty response
    m[1, 0] = True
    h_old = rng.uniform(0.2, 2.0, (b, t))
    h = h_old * rng.uniform(0.9, 1.1, (b, t))
    return lp, old, adv, m, h, h_old


def test_hand_worked_numbers(x64):
    """r = [1, 1.5, 0.5, 1.1], A = [1, 1, −1, 2], ρ = [1, 1.02, 0.9, 1.2]; ε 0.2/0.28, c 3.

    ℓ = [−1, −1.28 (upper clip), 0.8 (lower clip, dual 3 not binding), −2.2] → mean −0.92.
    Kept (0.95 < ρ < 1.05): tokens 0, 1. DAPO gradient [−1, 0, 0, 0]/4 (token 3's −2.2 is cut
    by ERC); GPPO [−1, −1.28, 0, 0]/4 (the clipped token 1 keeps −A·1.28).
    """
    old = np.full((1, 4), -1.0)
    lp = old + np.log([[1.0, 1.5, 0.5, 1.1]])
    adv = np.array([[1.0, 1.0, -1.0, 2.0]])
    m = np.ones((1, 4), bool)
    h_old = np.ones((1, 4))
    h = np.array([[1.0, 1.02, 0.9, 1.2]])
    for mode, grad in (("dapo", [-0.25, 0, 0, 0]), ("gppo", [-0.25, -0.32, 0, 0])):
        f = lambda x: erc_loss(x, old, adv, m, entropy=h, old_entropy=h_old, clip_mode=mode)  # noqa: E731,B023
        (loss, met), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp))
        np.testing.assert_allclose(loss, -0.92, rtol=1e-12)
        np.testing.assert_allclose(g, [grad], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(met["erc/keep_frac"], 0.5)
        np.testing.assert_allclose(met["pg/clipfrac"], 0.5)
        np.testing.assert_allclose(met["pg/clipfrac_lower"], 0.0)
    # a band wide enough to keep everything is plain DAPO: token 3's gradient −2.2/4 returns
    f = lambda x: erc_loss(  # noqa: E731
        x,
        old,
        adv,
        m,
        entropy=h,
        old_entropy=h_old,
        entropy_ratio_low=0.0,
        entropy_ratio_high=100.0,
    )[0]
    np.testing.assert_allclose(jax.grad(f)(jnp.asarray(lp)), [[-0.25, 0, 0, -0.55]], atol=1e-15)


@pytest.mark.parametrize("mode", ["dapo", "gppo"])
def test_matches_release_port_values_and_gradients(x64, mode):
    for seed in range(2):
        lp, old, adv, m, h, h_old = _batch(seed)
        for agg in AGG_MODES:
            want, want_g, keep, clipped = np_erc(lp, old, adv, m, h, h_old, mode=mode, agg=agg)
            assert 0 < keep.sum() < m.sum() and clipped.any()  # the case exercises both
            kw = dict(entropy=h, old_entropy=h_old, clip_mode=mode, loss_agg_mode=agg)

            def f(x, old=old, adv=adv, m=m, kw=kw):
                return erc_loss(x, old, adv, m, **kw)

            (loss, met), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(lp))
            np.testing.assert_allclose(loss, want, rtol=1e-12, err_msg=agg)
            np.testing.assert_allclose(g, want_g, rtol=1e-10, atol=1e-14, err_msg=agg)
            np.testing.assert_allclose(met["erc/keep_frac"], keep.sum() / m.sum(), rtol=1e-12)


def test_keep_mask_is_strict_and_bidirectional(x64):
    h_old = np.ones((1, 5))
    h = np.array([[0.9499, 0.96, 1.0, 1.04, 1.0501]])
    m = np.ones((1, 5), bool)
    keep, rho = entropy_ratio_keep_mask(h, h_old, m)
    np.testing.assert_array_equal(keep, [[False, True, True, True, False]])
    np.testing.assert_allclose(rho, (h + 1e-8) / (1 + 1e-8), rtol=1e-12)
    # strict inequalities: a bound equal to a token's ratio drops that token
    r = np.asarray(rho)[0]
    keep, _ = entropy_ratio_keep_mask(
        h, h_old, m, entropy_ratio_low=float(r[1]), entropy_ratio_high=float(r[3])
    )
    np.testing.assert_array_equal(keep, [[False, False, True, False, False]])
    with pytest.raises(ValueError, match="entropy_ratio"):
        entropy_ratio_keep_mask(h, h_old, m, entropy_ratio_low=1.1)


def test_nan_entropy_is_never_a_finite_loss():
    lp, old, adv, m, h, h_old = (x.astype(np.float32) if x.dtype != bool else x for x in _batch(3))
    i, j = 2, int(np.argmax(m[2]))
    for arg in ("entropy", "old_entropy"):
        bad = {"entropy": h.copy(), "old_entropy": h_old.copy()}
        bad[arg][i, j] = np.nan
        f = lambda x: erc_loss(x, old, adv, m, **bad)[0]  # noqa: E731,B023
        loss, g = jax.value_and_grad(f)(jnp.asarray(lp))
        assert np.isnan(loss) and np.isnan(g[i, j]), arg
        mm = m.copy()
        mm[i, j] = False  # under the mask: selected out
        loss, g = jax.value_and_grad(lambda x: erc_loss(x, old, adv, mm, **bad)[0])(  # noqa: B023
            jnp.asarray(lp)
        )
        assert np.isfinite(loss) and np.all(np.isfinite(g))
    with pytest.raises(ValueError, match="old_entropy"):
        erc_loss(lp, old, adv, m, entropy=h, old_entropy=h_old[:, :2])
    with pytest.raises(ValueError, match="clip_mode"):
        erc_loss(lp, old, adv, m, entropy=h, old_entropy=h_old, clip_mode="ppo")


def test_registered_erc_binds_both_entropies():
    lp, old, adv, m, h, h_old = (x.astype(np.float32) if x.dtype != bool else x for x in _batch(4))
    inp = ObjectiveInputs(
        logp=jnp.asarray(lp),
        old_logp=jnp.asarray(old),
        advantages=jnp.asarray(adv),
        mask=jnp.asarray(m),
        entropy=jnp.asarray(h),
        old_entropy=jnp.asarray(h_old),
    )
    kw = {"entropy_ratio_low": 0.97, "entropy_ratio_high": 1.04, "clip_mode": "gppo"}
    obj = build_objective(ObjectiveConfig(policy_loss="erc", policy_kwargs=kw, diagnostics=False))
    loss, met = obj.loss(inp, obj.init_state())
    want, _ = erc_loss(lp, old, adv, m, entropy=h, old_entropy=h_old, **kw)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert set(obj.needs) >= {"entropy", "old_entropy"}
    with pytest.raises(ValueError, match="old_entropy"):
        import dataclasses

        obj.loss(dataclasses.replace(inp, old_entropy=None), obj.init_state())
