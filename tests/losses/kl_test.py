"""KL penalties and controllers vs float64 NumPy restatements of verl's ``kl_penalty``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.losses import (
    KL_KINDS,
    AdaptiveKLController,
    FixedKLController,
    KLControllerState,
    apply_kl_penalty,
    kl_controller_init,
    kl_controller_update,
    kl_loss,
    kl_penalty,
)


def np_kl(logp, ref, kind):
    """verl ``kl_penalty_forward``."""
    logp, ref = np.asarray(logp, np.float64), np.asarray(ref, np.float64)
    kind = kind.rstrip("+")
    if kind in ("kl", "k1"):
        return logp - ref
    if kind == "abs":
        return np.abs(logp - ref)
    if kind in ("mse", "k2"):
        return 0.5 * (logp - ref) ** 2
    if kind in ("low_var_kl", "k3"):
        kl = np.clip(ref - logp, -20, 20)
        return np.clip(np.exp(kl) - kl - 1, -10, 10)
    raise AssertionError(kind)


def np_mean(x, m):
    m = np.asarray(m, np.float64)
    return (x * m).sum() / m.sum()


def batch(seed, b=8, t=5, scale=0.5, dtype=np.float32):
    rng = np.random.default_rng(seed)
    logp = (-np.abs(rng.normal(size=(b, t)))).astype(dtype)
    ref = (logp + scale * rng.normal(size=(b, t))).astype(dtype)
    mask = rng.random((b, t)) < 0.75
    mask[0] = False
    return logp, ref, mask


def test_hand_values():
    logp = jnp.array([np.log(0.5)])
    ref = jnp.array([np.log(0.25)])
    d = np.log(0.5) - np.log(0.25)  # log 2
    np.testing.assert_allclose(kl_penalty(logp, ref, kind="k1"), [d], rtol=1e-6)
    np.testing.assert_allclose(kl_penalty(logp, ref, kind="abs"), [d], rtol=1e-6)
    np.testing.assert_allclose(kl_penalty(logp, ref, kind="mse"), [0.5 * d * d], rtol=1e-6)
    # k3: ref/π − log(ref/π) − 1 = 0.5 + log 2 − 1
    np.testing.assert_allclose(kl_penalty(logp, ref, kind="low_var_kl"), [d - 0.5], rtol=1e-6)
    # k3 is clamped to 10: exp(20) − 20 − 1 would be huge
    big = kl_penalty(jnp.array([-30.0]), jnp.array([0.0]), kind="k3")
    np.testing.assert_allclose(big, [10.0])


@pytest.mark.parametrize("kind", KL_KINDS)
def test_values_vs_reference(x64, kind):
    logp, ref, _ = batch(0, dtype=np.float64, scale=3.0)
    np.testing.assert_allclose(kl_penalty(logp, ref, kind=kind), np_kl(logp, ref, kind), atol=1e-12)


@pytest.mark.parametrize("kind", ["k1+", "k3+", "abs+", "low_var_kl+"])
def test_straight_through_gradient_is_k2(x64, kind):
    logp, ref, _ = batch(1, dtype=np.float64)
    g = jax.grad(lambda lp: jnp.sum(kl_penalty(lp, ref, kind=kind)))(logp)
    np.testing.assert_allclose(g, logp - ref, atol=1e-12)  # ∇ ½(logp − ref)² = logp − ref


def test_gradients(x64):
    logp, ref, _ = batch(2, dtype=np.float64)
    # ∇k1 = 1, ∇k2 = logp − ref, ∇k3 = 1 − exp(ref − logp)
    g = {
        k: jax.grad(lambda lp, k=k: jnp.sum(kl_penalty(lp, ref, kind=k)))(logp)
        for k in ("k1", "k2", "k3")
    }
    np.testing.assert_allclose(g["k1"], 1.0)
    np.testing.assert_allclose(g["k2"], logp - ref, atol=1e-12)
    np.testing.assert_allclose(g["k3"], 1 - np.exp(ref - logp), atol=1e-12)
    check_grads(
        lambda lp: kl_loss(lp, ref, np.ones(lp.shape), kind="k3")[0], (logp,), 1, modes=("rev",)
    )


def test_finite_for_inf_logps_and_empty_mask():
    logp, ref, mask = batch(3)
    ref = ref.copy()
    logp = logp.copy()
    ref[1, 0] = -np.inf
    logp[2, 1] = -np.inf
    ref[3, 2] = logp[3, 2] = -np.inf
    for kind in ("k3", "k3+", "k1"):
        for m in (mask, np.zeros_like(mask)):
            m = m.copy()
            m[2, 1] = False  # a −inf current log-prob only appears on padding
            m[1, 0] = m[1, 0] if kind.startswith("k3") else False
            (loss, _), g = jax.value_and_grad(
                lambda lp, m=m, kind=kind: kl_loss(lp, ref, m, kind=kind), has_aux=True
            )(logp)
            assert np.isfinite(loss) and np.all(np.isfinite(np.asarray(g))), kind


def test_kl_loss_vs_reference():
    logp, ref, mask = batch(4)
    k = np_kl(logp, ref, "k3")
    for mode in ("token-mean", "seq-mean-token-mean"):
        loss, met = kl_loss(logp, ref, mask, kind="low_var_kl", loss_agg_mode=mode)
        if mode == "token-mean":
            want = np_mean(k, mask)
        else:
            n = mask.sum(-1)
            want = np.mean([(k[i] * mask[i]).sum() / n[i] for i in range(len(n)) if n[i] > 0])
        np.testing.assert_allclose(loss, want, rtol=1e-5)
        assert set(met) == {"kl/low_var_kl"}


def test_apply_kl_penalty(x64):
    logp, ref, mask = batch(5, dtype=np.float64)
    scores = np.zeros_like(logp)
    scores[:, -1] = 1.0
    rewards, met = apply_kl_penalty(scores, logp, ref, mask, kl_coef=0.1, kind="kl")
    k = np_kl(logp, ref, "kl") * mask
    np.testing.assert_allclose(rewards, scores - 0.1 * k, atol=1e-12)
    n = mask.sum(-1)
    seq = np.where(n > 0, k.sum(-1) / np.maximum(n, 1), 0.0)
    np.testing.assert_allclose(met["kl/reward_penalty"], seq.mean(), atol=1e-12)
    np.testing.assert_allclose(met["kl/reward_penalty_coef"], 0.1)


def test_kl_distributed():
    """kl_loss (two aggregation modes) and apply_kl_penalty in one shard_map/pmap program."""
    logp, ref, mask = batch(6, b=16)

    def all_kl(lp, r, m, *, axis_name=None):
        tm = kl_loss(lp, r, m, kind="k3", axis_name=axis_name)  # first leaf: gradient checked
        sm = kl_loss(lp, r, m, kind="k1+", loss_agg_mode="seq-mean-token-mean", axis_name=axis_name)
        pen = apply_kl_penalty(jnp.ones_like(lp), lp, r, m, kl_coef=0.05, axis_name=axis_name)
        return tm, sm, pen

    assert_matches_distributed(
        all_kl, (logp, ref, mask), {}, atol=1e-6, grad_argnums=(0,), methods=("shard_map",)
    )


# ----------------------------------------------------------------------------- controllers
def np_adaptive(value, kl, target, horizon, n_steps):
    err = np.clip(kl / target - 1, -0.2, 0.2)
    return value * (1 + err * n_steps / horizon)


def test_fixed_controller():
    c = FixedKLController(kl_coef=0.02)
    s = kl_controller_init(c)
    s2 = kl_controller_update(c, s, current_kl=5.0, n_steps=64)
    assert float(s2.value) == pytest.approx(0.02)


@settings(max_examples=10, deadline=None)
@given(kls=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6), n=st.integers(1, 512))
def test_adaptive_controller_vs_reference(kls, n):
    c = AdaptiveKLController(init_kl_coef=0.2, target_kl=0.1, horizon=1000)
    s = kl_controller_init(c)
    upd = jax.jit(lambda s, kl, n: kl_controller_update(c, s, kl, n))
    want = 0.2
    for kl in kls:
        s = upd(s, kl, n)
        want = np_adaptive(want, kl, 0.1, 1000, n)
    np.testing.assert_allclose(s.value, want, rtol=1e-5)


def test_adaptive_controller_direction_and_pytree():
    c = AdaptiveKLController(init_kl_coef=0.1, target_kl=0.05, horizon=100)
    s = kl_controller_init(c)
    hi = kl_controller_update(c, s, 10.0, 10)  # KL far above target: error clipped to +0.2
    lo = kl_controller_update(c, s, 0.0, 10)  # below target: −0.2
    np.testing.assert_allclose(hi.value, 0.1 * (1 + 0.2 * 10 / 100), rtol=1e-6)
    np.testing.assert_allclose(lo.value, 0.1 * (1 - 0.2 * 10 / 100), rtol=1e-6)
    leaves, treedef = jax.tree_util.tree_flatten(hi)
    assert isinstance(jax.tree_util.tree_unflatten(treedef, leaves), KLControllerState)


def test_bad_config_and_kind():
    with pytest.raises(ValueError, match="target_kl"):
        AdaptiveKLController(target_kl=0.0)
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(horizon=-1)
    with pytest.raises(ValueError, match="kl_coef"):
        FixedKLController(kl_coef=-1.0)
    with pytest.raises(ValueError, match="kind"):
        kl_penalty(jnp.zeros(2), jnp.zeros(2), kind="full")
    with pytest.raises(ValueError, match="loss_agg_mode"):
        kl_loss(jnp.zeros((2, 2)), jnp.zeros((2, 2)), jnp.ones((2, 2)), loss_agg_mode="sum")
    with pytest.raises(ValueError, match="controller"):
        kl_controller_init("adaptive")


def test_nan_logprob_is_never_a_finite_kl():
    """Issue 12: a NaN log-prob at a valid token gives NaN (the old code mapped every NaN
    difference to 0); a NaN under the mask is ignored, value and gradient."""
    logp, ref, mask = batch(6)
    i, j = np.argwhere(mask)[0]
    for kind in ("k3", "k3+", "k1", "k2"):
        bad = logp.copy()
        bad[i, j] = np.nan
        assert np.isnan(np.asarray(kl_penalty(bad, ref, kind=kind))[i, j]), kind
        (loss, _), g = jax.value_and_grad(
            lambda lp, kind=kind: kl_loss(lp, ref, mask, kind=kind), has_aux=True
        )(bad)
        assert np.isnan(loss), kind
        m2 = mask.copy()
        m2[i, j] = False
        (loss, _), g = jax.value_and_grad(
            lambda lp, kind=kind, m2=m2: kl_loss(lp, ref, m2, kind=kind), has_aux=True
        )(bad)
        assert np.isfinite(loss) and np.all(np.isfinite(np.asarray(g))), kind
    # both −inf (padding under both policies) is still 0, with a zero gradient
    both = np.full((1, 1), -np.inf, np.float32)
    assert float(kl_penalty(both, both, kind="k3")[0, 0]) == 0.0
