"""Tests for entropylab.losses.forking: top-ρ entropy token mask and the masked PPO loss."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st

from entropylab.losses.forking import forking_token_loss, forking_token_mask
from entropylab.losses.policy import ppo_clip_loss


def np_mask(h, m, rho, selection):
    h, m = np.asarray(h, np.float64), np.asarray(m, bool)
    if rho == 0 or not m.any():
        return np.zeros_like(m)
    if selection == "quantile":
        return m & (h >= np.quantile(h[m], 1 - rho))
    k = math.ceil(rho * m.sum())
    flat = np.where(m, h, -np.inf).reshape(-1)
    sel = np.zeros(flat.shape, bool)
    sel[np.argsort(-flat, kind="stable")[:k]] = True
    return sel.reshape(h.shape) & m


def np_dapo(lp, old, a, el=0.2, eh=0.28, c=10.0):
    r = np.exp(np.clip(lp - old, -20, 20))
    l1, l2 = -a * r, -a * np.clip(r, 1 - el, 1 + eh)
    lc = np.maximum(l1, l2)
    loss = np.where(a < 0, np.minimum(lc, -a * c), lc)
    active = (l1 >= l2) & ~((a < 0) & (lc > -a * c))  # unclipped: gradient −A·r
    return loss, np.where(active, -a * r, 0.0)


def _batch(seed, b=16, t=8):
    rng = np.random.default_rng(seed)
    h = rng.exponential(0.5, (b, t))
    lp = -rng.uniform(0, 3, (b, t))
    old = lp + rng.normal(0, 0.2, (b, t))
    adv = np.repeat(rng.normal(0, 1, (b, 1)), t, 1)
    m = rng.uniform(size=(b, t)) < 0.8
    m[1] = False
    return lp, old, adv, m, h


def test_mask_hand_checked():
    h = jnp.array([[0.1, 2.0, 0.5, 3.0, 1.0, 9.0]])
    m = jnp.array([[1, 1, 1, 1, 1, 0]])
    want = [[False, True, False, True, False, False]]
    for sel in ("quantile", "topk"):
        np.testing.assert_array_equal(forking_token_mask(h, m, top_rho=0.4, selection=sel), want)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 1000),
    rho=st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0]),
    selection=st.sampled_from(["quantile", "topk"]),
)
def test_mask_vs_numpy(seed, rho, selection):
    with jax.enable_x64(True):
        _, _, _, m, h = _batch(seed)
        h[2, :3] = h[2, 3]  # ties
        got = forking_token_mask(h, m, top_rho=rho, selection=selection)
        np.testing.assert_array_equal(got, np_mask(h, m, rho, selection))


@pytest.mark.parametrize(
    "normalization,mode",
    [("all_tokens", "token-mean"), ("selected_tokens", "seq-mean-token-mean")],
)
def test_loss_and_grad_vs_numpy(x64, normalization, mode):
    lp, old, adv, m, h = _batch(3)
    f = jax.jit(
        lambda x, e: forking_token_loss(
            x, old, adv, m, entropy=e, normalization=normalization, loss_agg_mode=mode
        )
    )
    (loss, met), (g, g_h) = jax.value_and_grad(lambda x, e: f(x, e), (0, 1), has_aux=True)(lp, h)
    sel = np_mask(h, m, 0.2, "quantile")
    per, dper = np_dapo(lp, old, adv)
    den_mask = m if normalization == "all_tokens" else sel
    per, dper = np.where(sel, per, 0.0), np.where(sel, dper, 0.0)
    if mode == "token-mean":
        want, wg = per[den_mask].sum() / den_mask.sum(), dper / den_mask.sum()
    else:
        n = den_mask.sum(1)
        ok = n > 0
        want = (per.sum(1)[ok] / n[ok]).mean()
        wg = dper / np.maximum(n, 1)[:, None] / ok.sum()
    np.testing.assert_allclose(loss, want, rtol=1e-10)
    np.testing.assert_allclose(g, wg, atol=1e-12)
    assert np.all(np.asarray(g)[~sel] == 0.0)  # no gradient through low-entropy tokens
    assert np.all(np.asarray(g_h) == 0.0)  # entropy only selects
    np.testing.assert_allclose(met["entropy/fork_frac"], sel.sum() / m.sum())
    np.testing.assert_allclose(met["entropy/fork_threshold"], h[sel].min())


def test_rho_one_is_ppo_and_errors():
    lp, old, adv, m, h = _batch(4)
    kw = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=10.0)
    a = forking_token_loss(lp, old, adv, m, entropy=h, top_rho=1.0)[0]
    np.testing.assert_allclose(a, ppo_clip_loss(lp, old, adv, m, **kw)[0], rtol=1e-6)
    with pytest.raises(ValueError, match="top_rho"):
        forking_token_mask(h, m, top_rho=1.5)
    with pytest.raises(ValueError, match="selection"):
        forking_token_mask(h, m, selection="bottom")
    with pytest.raises(ValueError, match="normalization"):
        forking_token_loss(lp, old, adv, m, entropy=h, normalization="ρ")


def test_empty_mask_and_vmap():
    lp, old, adv, m, h = _batch(5)
    empty = np.zeros_like(m)
    lp_inf = np.full_like(lp, -np.inf)
    for norm in ("all_tokens", "selected_tokens"):
        f = lambda x, norm=norm: forking_token_loss(  # noqa: E731
            x, old, adv, empty, entropy=h, normalization=norm
        )
        (loss, met), g = jax.jit(jax.value_and_grad(f, has_aux=True))(
            jnp.asarray(lp_inf, jnp.float32)
        )
        assert loss == 0 and np.all(np.asarray(g) == 0)
        assert all(np.isfinite(v) for v in met.values())
    v = jax.jit(jax.vmap(lambda e, mm: forking_token_mask(e, mm, selection="topk")))(
        np.stack([h, -h]), np.stack([m, m])
    )
    np.testing.assert_array_equal(v[1], np_mask(-h, m, 0.2, "topk"))


def test_distributed():
    lp, old, adv, m, h = (np.asarray(x, np.float32) for x in _batch(6))

    def fn(lp, old, adv, m, h, *, axis_name=None):
        l1, met = forking_token_loss(lp, old, adv, m, entropy=h, axis_name=axis_name)
        l2, _ = forking_token_loss(
            lp,
            old,
            adv,
            m,
            entropy=h,
            selection="topk",
            normalization="selected_tokens",
            loss_agg_mode="seq-mean-token-mean",
            axis_name=axis_name,
        )
        mask = forking_token_mask(h, m, top_rho=0.3, selection="topk", axis_name=axis_name)
        return l1 + 2 * l2, met, mask

    assert_matches_distributed(fn, (lp, old, adv, m, h), {}, atol=2e-6, grad_argnums=(0,))
