"""Tests for entropylab.losses.covariance: Cov_t, stats, predicted ΔH, Clip-Cov, KL-Cov."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st

from entropylab.losses.covariance import (
    clip_cov_loss,
    clip_cov_mask,
    covariance_stats,
    data_key,
    kl_cov_loss,
    kl_cov_mask,
    predicted_entropy_change,
    token_covariance,
)


# ----------------------------------------------------------------------------- NumPy references
def np_cov(lp, a, m):
    lp, a, m = np.asarray(lp, np.float64), np.asarray(a, np.float64), np.asarray(m, bool)
    if not m.any():
        return np.zeros_like(lp)
    c = (lp - lp[m].mean()) * (a - a[m].mean())
    return np.where(m, c, 0.0)


def np_ppo(lp, old, a, eps_l=0.2, eps_h=0.2):
    d = np.clip(np.asarray(lp, np.float64) - old, -20, 20)
    r = np.exp(d)
    l1, l2 = -a * r, -a * np.clip(r, 1 - eps_l, 1 + eps_h)
    clipped = l2 > l1
    loss = np.maximum(l1, l2)
    dloss = np.where(clipped, 0.0, -a * r)  # d ℓ / d logp
    return loss, dloss, clipped


def np_topk(score, m, k):
    flat = np.where(m, score, -np.inf).reshape(-1)
    idx = np.argsort(-flat, kind="stable")[:k]
    sel = np.zeros(flat.shape, bool)
    sel[idx] = True
    return sel.reshape(score.shape) & m


def _batch(seed, b=16, t=8, p_valid=0.75):
    rng = np.random.default_rng(seed)
    lp = -rng.uniform(0.0, 4.0, (b, t))
    old = lp + rng.normal(0, 0.15, (b, t))
    adv = np.repeat(rng.normal(0, 2.0, (b, 1)), t, axis=1)
    m = rng.uniform(size=(b, t)) < p_valid
    lp[~m] = -np.inf  # padding log-probs may be -inf
    return lp, old, adv, m


# ----------------------------------------------------------------------------- Cov_t and stats
def test_token_covariance_hand_checked():
    lp = jnp.array([[-1.0, -3.0, -7.0]])
    a = jnp.array([[1.0, -1.0, 5.0]])
    m = jnp.array([[1, 1, 0]])
    np.testing.assert_allclose(token_covariance(lp, a, m), [[1.0, 1.0, 0.0]])
    st_ = covariance_stats(lp, a, m)
    assert np.isclose(st_["cov/mean"], 1.0) and np.isclose(st_["cov/std"], 0.0)


def test_covariance_stats_vs_numpy(x64):
    lp, _, adv, m = _batch(0)
    c = np_cov(lp, adv, m)
    np.testing.assert_allclose(token_covariance(lp, adv, m), c, atol=1e-12)
    got = jax.jit(lambda a, b, c: covariance_stats(a, b, c, top_fraction=0.05))(lp, adv, m)
    v = c[m]
    k = max(1, int(0.05 * m.sum()))
    want = {
        "cov/mean": v.mean(),
        "cov/std": v.std(),
        "cov/min": v.min(),
        "cov/max": v.max(),
        "cov/p50": np.quantile(v, 0.5),
        "cov/p95": np.quantile(v, 0.95),
        "cov/p99": np.quantile(v, 0.99),
        "cov/pos_frac": (v > 0).mean(),
        "cov/top_mean": np.sort(v)[::-1][:k].mean(),
    }
    for key, w in want.items():
        np.testing.assert_allclose(got[key], w, atol=1e-10, err_msg=key)


@pytest.mark.parametrize("update", ["natural", "vanilla"])
def test_predicted_entropy_change_matches_softmax_step(x64, update):
    """Monte-Carlo tokens from one softmax state: −η·Cov ≈ the exact entropy change."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, 6)
    a_act = rng.normal(0, 1.0, 6)
    pi = np.exp(z - z.max())
    pi /= pi.sum()
    eta = 1e-3
    dz = eta * a_act if update == "natural" else eta * pi * a_act
    pi2 = np.exp(z + dz - (z + dz).max())
    pi2 /= pi2.sum()
    true_dh = -(pi2 * np.log(pi2)).sum() + (pi * np.log(pi)).sum()
    exact_cov = (pi * np.log(pi) * a_act).sum() - (pi * np.log(pi)).sum() * (pi * a_act).sum()
    if update == "natural":
        assert np.isclose(true_dh, -eta * exact_cov, rtol=2e-2)
    tok = rng.choice(6, size=(400, 100), p=pi)
    got = jax.jit(
        lambda x, y, z: predicted_entropy_change(x, y, z, learning_rate=eta, update=update)
    )(np.log(pi)[tok], a_act[tok], np.ones(tok.shape))
    np.testing.assert_allclose(got, true_dh, rtol=0.1)
    # and equals the NumPy formula on the same tokens
    lp, a = np.log(pi)[tok], a_act[tok]
    a_eff = a if update == "natural" else np.exp(lp) * a
    want = -eta * np_cov(lp, a_eff, np.ones(tok.shape, bool)).mean()
    np.testing.assert_allclose(got, want, rtol=1e-10)


# ----------------------------------------------------------------------------- Clip-Cov
CC = dict(clip_cov_ratio=0.05, clip_cov_lb=0.5, clip_cov_ub=6.0)


def test_clip_cov_selection_properties(x64):
    lp, old, adv, m = _batch(2)
    key = jax.random.key(0)
    mask_fn = jax.jit(lambda k: clip_cov_mask(lp, old, adv, m, key=k, **CC))
    sel, cand = (np.asarray(x) for x in mask_fn(key))
    c = np_cov(lp, adv, m)
    _, _, clipped = np_ppo(lp, old, adv)
    want_cand = m & (c >= 0.5) & (c <= 6.0) & ~clipped
    np.testing.assert_array_equal(cand, want_cand)
    n_sel = min(want_cand.sum(), max(1, int(0.05 * m.sum())))
    assert n_sel >= 2 and sel.sum() == n_sel and not (sel & ~want_cand).any()
    sel2, _ = mask_fn(key)
    np.testing.assert_array_equal(sel, sel2)  # deterministic given the key
    # uniform over candidates: frequency ≈ n_sel / |C| across keys
    keys = jax.random.split(jax.random.key(1), 160)
    many = jax.jit(jax.vmap(lambda k: clip_cov_mask(lp, old, adv, m, key=k, **CC)[0]))(keys)
    freq = np.asarray(many).mean(0)[want_cand]
    assert len(np.unique(np.asarray(many).reshape(160, -1), axis=0)) > 80
    np.testing.assert_allclose(freq, n_sel / want_cand.sum(), atol=0.12)


@pytest.mark.parametrize(
    "detach_mode,mode", [("stop_gradient", "token-mean"), ("zero", "seq-mean-token-mean")]
)
def test_clip_cov_loss_and_grad_vs_numpy(x64, detach_mode, mode):
    lp, old, adv, m = _batch(3)
    key = jax.random.key(7)
    sel = np.asarray(clip_cov_mask(lp, old, adv, m, key=key, **CC)[0])
    f = lambda x: clip_cov_loss(  # noqa: E731
        x, old, adv, m, key=key, detach_mode=detach_mode, loss_agg_mode=mode, **CC
    )
    (loss, met), g = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(lp))
    ploss, dloss, clipped = np_ppo(lp, old, adv)
    ploss = np.where(sel & (detach_mode == "zero"), 0.0, ploss)
    dloss = np.where(sel, 0.0, dloss)
    if mode == "token-mean":
        want, wgrad = ploss[m].mean(), np.where(m, dloss, 0) / m.sum()
    else:
        n = m.sum(1)
        ok = n > 0
        want = (np.where(m, ploss, 0).sum(1)[ok] / n[ok]).mean()
        wgrad = np.where(m, dloss, 0) / np.maximum(n, 1)[:, None] / ok.sum()
    np.testing.assert_allclose(loss, want, rtol=1e-10)
    np.testing.assert_allclose(g, wgrad, atol=1e-12)
    assert np.all(np.asarray(g)[sel] == 0.0)  # exactly zero policy gradient on selected tokens
    assert (np.abs(np.asarray(g)[~sel & m & ~clipped]) > 0).all()
    np.testing.assert_allclose(met["cov/clip_cov_frac"], sel.sum() / m.sum())


def _np_data_key_int(old, adv, m):
    """Independent port of data_key's integer: Σ_valid bits(old) + 31·bits(A) mod 2³² (uint32)."""
    bits = lambda x: np.asarray(x, np.float32).view(np.int32).astype(np.int64)  # noqa: E731
    return np.uint32(int(np.where(m, bits(old) + 31 * bits(adv), 0).sum()) % 2**32)


def test_clip_cov_default_key_is_data_derived():
    """No key (a framework's loss function often has none): a documented key from the batch."""
    lp, old, adv, m = _batch(4)
    kw = dict(clip_cov_ratio=0.2, clip_cov_lb=-10.0, clip_cov_ub=10.0)
    want_key = jax.random.fold_in(jax.random.key(0), _np_data_key_int(old, adv, m))
    np.testing.assert_array_equal(
        jax.random.key_data(data_key(old, adv, m)), jax.random.key_data(want_key)
    )
    (l0, m0), (l1, m1) = (
        clip_cov_loss(lp, old, adv, m, **kw),
        clip_cov_loss(lp, old, adv, m, key=want_key, **kw),
    )
    np.testing.assert_array_equal(l0, l1)
    np.testing.assert_array_equal(m0["cov/clip_cov_frac"], m1["cov/clip_cov_frac"])
    # a different batch gives a different key
    other = data_key(old + 1e-3, adv, m)
    assert not np.array_equal(jax.random.key_data(other), jax.random.key_data(want_key))


def test_data_key_is_sharding_invariant():
    lp, old, adv, m = _batch(5)

    def k(old, adv, m, *, axis_name=None):
        return jax.random.key_data(data_key(old, adv, m, axis_name=axis_name))

    assert_matches_distributed(k, _f32(old, adv, m), {}, atol=0)


def test_clip_cov_validates():
    lp, old, adv, m = _batch(4)
    with pytest.raises(ValueError, match="detach_mode"):
        clip_cov_loss(lp, old, adv, m, key=jax.random.key(0), detach_mode="mul")
    with pytest.raises(ValueError, match="ratio_units"):
        clip_cov_loss(lp, old, adv, m, key=jax.random.key(0), ratio_units="ppm")
    with pytest.raises(ValueError, match="clip_cov_lb"):
        clip_cov_loss(lp, old, adv, m, key=jax.random.key(0), clip_cov_lb=6.0)


# ----------------------------------------------------------------------------- KL-Cov
@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.sampled_from([1e-3, 0.03, 0.2]))
def test_kl_cov_loss_and_grad_vs_numpy(seed, k):
    with jax.enable_x64(True):
        lp, old, adv, m = _batch(seed)
        beta = 0.7
        f = lambda x: kl_cov_loss(x, old, adv, m, kl_cov_ratio=k, ppo_kl_coef=beta)  # noqa: E731
        (loss, met), g = jax.jit(jax.value_and_grad(f, has_aux=True))(jnp.asarray(lp))
        c = np_cov(lp, adv, m)
        kk = max(1, int(k * m.sum()))
        sel = np_topk(c, m, kk)
        np.testing.assert_array_equal(kl_cov_mask(lp, adv, m, kl_cov_ratio=k), sel)
        d = np.where(m, lp - old, 0.0)
        r = np.exp(d)
        per = -adv * r + np.where(sel, beta * np.abs(d), 0.0)
        dper = -adv * r + np.where(sel, beta * np.sign(d), 0.0)
        np.testing.assert_allclose(loss, per[m].mean(), rtol=1e-10)
        np.testing.assert_allclose(g, np.where(m, dper, 0.0) / m.sum(), atol=1e-12)
        np.testing.assert_allclose(met["cov/kl_cov_frac"], kk / m.sum())
        np.testing.assert_allclose(met["cov/kl_cov_abs_kl"], np.abs(d[m]).mean(), rtol=1e-10)


def test_kl_cov_units_and_on_policy():
    lp, old, adv, m = _batch(5)
    a = jax.jit(lambda *x: kl_cov_mask(*x, kl_cov_ratio=0.2, ratio_units="percent"))(lp, adv, m)
    b = jax.jit(lambda *x: kl_cov_mask(*x, kl_cov_ratio=2e-3))(lp, adv, m)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="kl_cov_ratio"):
        kl_cov_loss(lp, old, adv, m, kl_cov_ratio=5.0)
    # on-policy (logp == old_logp): the penalty has no gradient (KL-Cov does nothing)
    g1 = jax.jit(jax.grad(lambda x: kl_cov_loss(x, lp, adv, m, kl_cov_ratio=0.3)[0]))(lp)
    g0 = jax.jit(jax.grad(lambda x: kl_cov_loss(x, lp, adv, m, ppo_kl_coef=0.0)[0]))(lp)
    np.testing.assert_allclose(g1, g0, atol=1e-7)
    # old_logp is data: no gradient flows into it
    g_old = jax.jit(jax.grad(lambda o: kl_cov_loss(jnp.asarray(lp), o, adv, m)[0]))(old)
    assert np.all(np.asarray(g_old) == 0)


# ----------------------------------------------------------------------------- edge cases
def test_empty_and_all_masked_finite():
    lp, old, adv, _ = _batch(6)
    empty = np.zeros(lp.shape, bool)
    lp = np.where(empty, lp, -np.inf)  # every log-prob -inf, all masked
    key = jax.random.key(0)
    for fn in (
        lambda x: clip_cov_loss(x, old, adv, empty, key=key, **CC),
        lambda x: kl_cov_loss(x, old, adv, empty),
    ):
        (loss, met), g = jax.jit(jax.value_and_grad(fn, has_aux=True))(jnp.asarray(lp, jnp.float32))
        assert loss == 0 and np.all(np.asarray(g) == 0)
        assert all(np.isfinite(v) for v in met.values())
    st_ = jax.jit(covariance_stats)(lp, adv, empty)
    assert all(float(v) == 0.0 for v in st_.values())
    assert jax.jit(predicted_entropy_change)(lp, adv, empty) == 0


def test_jit_and_vmap():
    lp, old, adv, m = _batch(8)
    key = jax.random.key(3)
    jitted = jax.jit(lambda x, k: clip_cov_loss(x, old, adv, m, key=k, **CC)[0])(lp, key)
    vf = jax.jit(jax.vmap(lambda x: clip_cov_loss(x, old, adv, m, key=key, **CC)[0]))
    stack = vf(np.stack([lp, lp]))
    np.testing.assert_allclose(stack, [jitted, jitted], rtol=1e-6)
    stacked = [np.stack([x, x[::-1]]) for x in (lp, old, adv, m)]
    v = jax.jit(jax.vmap(lambda a, b, c, d: kl_cov_loss(a, b, c, d, kl_cov_ratio=0.05)[0]))(
        *stacked
    )
    one = jax.jit(lambda *a: kl_cov_loss(*a, kl_cov_ratio=0.05)[0])(lp, old, adv, m)
    np.testing.assert_allclose(v[0], one, rtol=1e-6)


# ----------------------------------------------------------------------------- distributed
def _f32(*xs):
    return tuple(np.asarray(x, np.float32) for x in xs)


def test_clip_cov_distributed():
    lp, old, adv, m = _batch(9)
    assert_matches_distributed(
        clip_cov_loss,
        _f32(lp, old, adv, m),
        dict(key=jax.random.key(11), loss_agg_mode="seq-mean-token-mean", **CC),
        atol=2e-6,
        grad_argnums=(0,),
    )


def test_kl_cov_and_stats_distributed():
    lp, old, adv, m = _batch(10)

    def both(lp, old, adv, m, *, axis_name=None):
        loss, met = kl_cov_loss(lp, old, adv, m, kl_cov_ratio=0.05, axis_name=axis_name)
        met.update(covariance_stats(lp, adv, m, top_fraction=0.05, axis_name=axis_name))
        met["dh"] = predicted_entropy_change(lp, adv, m, axis_name=axis_name)
        return loss, met

    assert_matches_distributed(both, _f32(lp, old, adv, m), {}, atol=2e-6)
