"""Tests for entropylab.losses.entropy: bonus, schedules, adaptive target-entropy control."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.losses.entropy import (
    AdaptiveEntropyConfig,
    AdaptiveEntropyState,
    adaptive_entropy_init,
    adaptive_entropy_update,
    entropy_bonus,
    entropy_coef_at,
    entropy_coef_schedule,
)

MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def np_agg(x, m, mode):
    x, m = np.asarray(x, np.float64), np.asarray(m, bool)
    if mode == "token-mean":
        return x[m].sum() / m.sum() if m.sum() else 0.0
    n = m.sum(1)
    s = np.where(m, x, 0).sum(1)
    if mode == "seq-mean-token-sum":
        return s[n > 0].mean() if (n > 0).any() else 0.0
    if mode == "seq-mean-token-mean":
        return (s[n > 0] / n[n > 0]).mean() if (n > 0).any() else 0.0
    return s.sum() / (x.shape[0] * x.shape[1])


def _batch(seed, b=8, t=6):
    rng = np.random.default_rng(seed)
    h = rng.uniform(0, 3, (b, t))
    m = rng.uniform(size=(b, t)) < 0.7
    m[0] = False  # an empty sequence
    return h, m


# ----------------------------------------------------------------------------- entropy_bonus
def test_bonus_hand_checked():
    h = jnp.array([[1.0, 2.0, 9.0], [3.0, 9.0, 9.0]])
    m = jnp.array([[1, 1, 0], [1, 0, 0]])
    loss, met = entropy_bonus(h, m, coef=0.1)
    assert np.isclose(loss, -0.1 * 2.0)  # token mean (1+2+3)/3 = 2
    assert np.isclose(met["entropy/mean"], 2.0)
    loss, _ = entropy_bonus(h, m, coef=0.1, loss_agg_mode="seq-mean-token-mean")
    assert np.isclose(loss, -0.1 * (1.5 + 3.0) / 2)


@pytest.mark.parametrize("mode", MODES)
def test_bonus_random_vs_numpy(x64, mode):
    h, m = _batch(0)
    loss, met = entropy_bonus(jnp.asarray(h), m, coef=0.03, loss_agg_mode=mode)
    want = -0.03 * np_agg(h, m, mode)
    np.testing.assert_allclose(loss, want, rtol=1e-12)
    np.testing.assert_allclose(met["entropy/bonus_loss"], want, rtol=1e-12)


def test_bonus_grads_and_empty(x64):
    h, m = _batch(1)
    check_grads(
        lambda x: entropy_bonus(x, m, coef=0.5)[0], (jnp.asarray(h),), order=1, modes=["rev"]
    )
    g = jax.grad(lambda x: entropy_bonus(x, m, coef=1.0)[0])(jnp.asarray(h))
    np.testing.assert_allclose(g, -m.astype(float) / m.sum())
    empty = np.zeros_like(m)
    hh = jnp.asarray(h).at[0, 0].set(jnp.nan)  # NaN under a zero mask must not leak
    loss, g = jax.value_and_grad(lambda x: entropy_bonus(x, empty, coef=1.0)[0])(hh)
    assert loss == 0 and np.all(np.asarray(g) == 0)


def test_bonus_jit_vmap_and_errors():
    h, m = _batch(2)
    f = jax.jit(lambda x, mm, c: entropy_bonus(x, mm, coef=c)[0])
    np.testing.assert_allclose(f(h, m, 0.2), -0.2 * np_agg(h, m, "token-mean"), rtol=1e-5)
    hs, ms = np.stack([h, h + 1]), np.stack([m, m])
    v = jax.vmap(lambda x, mm: entropy_bonus(x, mm, coef=1.0)[0])(hs, ms)
    np.testing.assert_allclose(
        v, [-np_agg(h, m, "token-mean"), -np_agg(h + 1, m, "token-mean")], rtol=1e-5
    )
    with pytest.raises(ValueError, match="loss_agg_mode"):
        entropy_bonus(h, m, coef=1.0, loss_agg_mode="mean")
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        entropy_bonus(h[0], m[0], coef=1.0)


def test_bonus_distributed():
    mode = "seq-mean-token-mean"
    h, m = _batch(3, b=16)
    h, m = h.astype(np.float32), m.astype(np.float32)
    assert_matches_distributed(entropy_bonus, (h, m), dict(coef=0.01, loss_agg_mode=mode))


# ----------------------------------------------------------------------------- schedules
def test_schedules_hand_checked():
    lin = entropy_coef_schedule(kind="linear", init_value=1.0, end_value=0.0, decay_steps=10)
    np.testing.assert_allclose([lin(s) for s in (0, 5, 10, 20)], [1.0, 0.5, 0.0, 0.0], atol=1e-7)
    cos = dict(kind="cosine", init_value=1.0, end_value=0.2, decay_steps=4)
    np.testing.assert_allclose(
        [entropy_coef_at(s, **cos) for s in (0, 2, 4, 9)], [1.0, 0.6, 0.2, 0.2], atol=1e-6
    )
    warm = dict(kind="constant", init_value=0.01, warmup_steps=4)
    np.testing.assert_allclose(
        [entropy_coef_at(s, **warm) for s in (0, 1, 4, 100)], [0.0, 0.0025, 0.01, 0.01], atol=1e-8
    )


@settings(max_examples=10, deadline=None)
@given(
    step=st.integers(0, 300),
    kind=st.sampled_from(["constant", "linear", "cosine"]),
    warm=st.integers(0, 20),
    dec=st.integers(1, 100),
)
def test_schedule_vs_numpy(step, kind, warm, dec):
    c0, ce, cw = 3e-3, 1e-4, 5e-4
    if step < warm:
        want = cw + (c0 - cw) * step / warm
    else:
        f = min(max(step - warm, 0), dec) / dec
        want = {
            "constant": c0,
            "linear": c0 + (ce - c0) * f,
            "cosine": ce + (c0 - ce) * 0.5 * (1 + math.cos(math.pi * f)),
        }[kind]
    got = (
        lambda s: entropy_coef_at(
            s,
            kind=kind,
            init_value=c0,
            end_value=ce,
            decay_steps=dec,
            warmup_steps=warm,
            warmup_init_value=cw,
        )
    )(step)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


def test_schedule_errors():
    with pytest.raises(ValueError, match="kind"):
        entropy_coef_schedule(kind="exp", init_value=1.0)
    with pytest.raises(ValueError, match="decay_steps"):
        entropy_coef_at(0, kind="linear", init_value=1.0, decay_steps=0)


# ----------------------------------------------------------------------------- adaptive control
def np_controller(hs, *, target, c0, cmin, cmax, delta, rule, gate):
    c, used = c0, []
    for h in hs:
        used.append(c if (not gate or h <= target) else 0.0)
        if rule == "step":
            c = c + delta * np.sign(target - h)
        elif rule == "proportional":
            c = c + delta * (target - h)
        else:
            c = math.exp(math.log(max(c, cmin)) + delta * (target - h))
        c = min(max(c, cmin), cmax)
    return np.array(used), c


@pytest.mark.parametrize(
    "rule,gate,c0,cmin",
    [("step", True, 0.0, 0.0), ("proportional", False, 0.002, 0.0), ("log", False, 0.002, 1e-4)],
)
def test_adaptive_vs_numpy_scan(rule, gate, c0, cmin):
    cfg = AdaptiveEntropyConfig(
        target=0.5,
        init_coef=c0,
        min_coef=cmin,
        max_coef=0.004,
        delta=1e-3 if rule != "log" else 0.7,
        rule=rule,
        gate=gate,
    )
    hs = np.concatenate([np.linspace(1.0, 0.1, 12), np.linspace(0.1, 0.9, 8)]).astype(np.float32)

    def body(state, h):
        used, state, _ = adaptive_entropy_update(state, h, cfg)
        return state, used

    final, used = jax.jit(lambda s, x: jax.lax.scan(body, s, x))(adaptive_entropy_init(cfg), hs)
    want_used, want_c = np_controller(
        hs.astype(np.float64),
        target=0.5,
        c0=c0,
        cmin=cmin,
        cmax=0.004,
        delta=cfg.delta,
        rule=rule,
        gate=gate,
    )
    np.testing.assert_allclose(used, want_used, atol=2e-7)
    np.testing.assert_allclose(final.coef, want_c, atol=2e-7)
    assert int(final.count) == len(hs)


def test_adaptive_hand_checked_direction_and_clamp():
    cfg = AdaptiveEntropyConfig(target=0.3, init_coef=0.001, max_coef=0.0015, delta=0.001)
    s = adaptive_entropy_init(cfg)
    used, s, met = adaptive_entropy_update(s, 0.1, cfg)  # below target: raise (clamped)
    assert np.isclose(used, 0.001) and np.isclose(s.coef, 0.0015)
    assert np.isclose(met["entropy/coef_next"], 0.0015)
    used, s, _ = adaptive_entropy_update(s, 0.9, cfg)  # above: gated off, lowered
    assert used == 0.0 and np.isclose(s.coef, 0.0005)
    used, s, _ = adaptive_entropy_update(s, 0.9, cfg)
    assert s.coef == 0.0  # clamped at min


def test_adaptive_state_is_checkpointable(tmp_path):
    cfg = AdaptiveEntropyConfig(init_coef=0.003)
    s = adaptive_entropy_update(adaptive_entropy_init(cfg), 0.05, cfg)[1]
    leaves, treedef = jax.tree_util.tree_flatten(s)
    np.savez(tmp_path / "s.npz", *[np.asarray(x) for x in leaves])
    with np.load(tmp_path / "s.npz") as f:
        back = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(f[k]) for k in f.files])
    assert isinstance(back, AdaptiveEntropyState)
    assert back.coef == s.coef and back.count == 1


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(rule="pid"), "rule"),
        (dict(min_coef=-1.0), "min_coef"),
        (dict(init_coef=2.0), "init_coef"),
        (dict(delta=0.0), "delta"),
        (dict(rule="log", init_coef=0.0), "min_coef"),
        (dict(max_coef=-0.1, init_coef=-0.1), "max_coef"),
    ],
)
def test_adaptive_config_validation(kw, field):
    with pytest.raises(ValueError, match=field):
        AdaptiveEntropyConfig(**kw)
    with pytest.raises(ValueError, match="scalar"):
        cfg = AdaptiveEntropyConfig()
        assert (cfg.target, cfg.delta, cfg.min_coef, cfg.max_coef) == (0.2, 0.005, 0.0, 1.0)
        adaptive_entropy_update(adaptive_entropy_init(cfg), jnp.ones(3), cfg)
