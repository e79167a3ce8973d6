"""Tests for entropylab.train.optim against float64 NumPy references written here."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from entropylab.train.optim import OptimConfig, decay_mask, lr_schedule, make_optimizer


def ref_lr(s, peak, warmup, total, ratio):
    if s < warmup:
        return peak * s / warmup
    frac = min(s - warmup, total - warmup) / (total - warmup)
    return peak * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def test_schedule_hand_values():
    cfg = OptimConfig(learning_rate=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.0)
    sched = lr_schedule(cfg)
    assert float(sched(0)) == 0.0
    np.testing.assert_allclose(float(sched(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(sched(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(sched(60)), 0.5, rtol=1e-6)  # half-way down the cosine
    np.testing.assert_allclose(float(sched(110)), 0.0, atol=1e-7)


@pytest.mark.parametrize("warmup,total,ratio", [(0, 50, 0.1), (7, 40, 0.0), (20, 21, 0.5)])
def test_schedule_matches_reference(x64, warmup, total, ratio):
    cfg = OptimConfig(
        learning_rate=3e-3, warmup_steps=warmup, total_steps=total, min_lr_ratio=ratio
    )
    sched = jax.jit(lr_schedule(cfg))
    for s in range(0, total + 5):
        np.testing.assert_allclose(
            float(sched(s)), ref_lr(s, 3e-3, warmup, total, ratio), rtol=1e-10, atol=1e-15
        )


def test_adamw_with_clipping_matches_reference(x64):
    cfg = OptimConfig(
        learning_rate=0.1,
        warmup_steps=2,
        total_steps=10,
        min_lr_ratio=0.1,
        weight_decay=0.5,
        b1=0.8,
        b2=0.9,
        eps=1e-6,
        max_grad_norm=1.0,
    )
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(3, 4)), "b": rng.normal(size=(4,))}
    grads_seq = [{k: 3 * rng.normal(size=v.shape) for k, v in params.items()} for _ in range(5)]
    opt = make_optimizer(cfg)
    p = jax.tree.map(jnp.asarray, params)
    state = opt.init(p)
    update = jax.jit(opt.update)
    # reference
    rp = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v2 = {k: np.zeros_like(v) for k, v in params.items()}
    for t, g in enumerate(grads_seq, start=1):
        gn = math.sqrt(sum(float(np.sum(x * x)) for x in g.values()))
        scale = min(1.0, cfg.max_grad_norm / gn)
        lr = ref_lr(t - 1, cfg.learning_rate, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
        for k in rp:
            gk = g[k] * scale
            m[k] = cfg.b1 * m[k] + (1 - cfg.b1) * gk
            v2[k] = cfg.b2 * v2[k] + (1 - cfg.b2) * gk * gk
            mh, vh = m[k] / (1 - cfg.b1**t), v2[k] / (1 - cfg.b2**t)
            wd = cfg.weight_decay * rp[k] if rp[k].ndim >= 2 else 0.0  # no decay on vectors
            rp[k] = rp[k] - lr * (mh / (np.sqrt(vh) + cfg.eps) + wd)
        upd, state = update(jax.tree.map(jnp.asarray, g), state, p)
        p = optax.apply_updates(p, upd)
        for k in rp:  # optax evaluates the schedule of an int32 count in float32: rtol 1e-7
            np.testing.assert_allclose(np.asarray(p[k]), rp[k], rtol=1e-7, atol=1e-9)


def test_decay_mask():
    mask = decay_mask({"w": jnp.zeros((2, 3)), "b": jnp.zeros((3,)), "s": jnp.zeros(())})
    assert mask == {"w": True, "b": False, "s": False}


def test_no_clipping_option():
    opt = make_optimizer(OptimConfig(max_grad_norm=None, warmup_steps=0, total_steps=5))
    p = {"w": jnp.ones((2, 2))}
    upd, _ = opt.update({"w": jnp.full((2, 2), 100.0)}, opt.init(p), p)
    assert np.all(np.isfinite(np.asarray(upd["w"])))


@pytest.mark.parametrize(
    "kw,field",
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"total_steps": 0}, "total_steps"),
        ({"warmup_steps": 10, "total_steps": 10}, "warmup_steps"),
        ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"b2": 1.0}, "b2"),
        ({"eps": 0.0}, "eps"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ],
)
def test_config_validation(kw, field):
    with pytest.raises(ValueError, match=field):
        OptimConfig(**kw)
