"""Policy-gradient losses vs independent float64 NumPy references of verl's ``core_algos``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.losses import (
    cispo_loss,
    gspo_loss,
    ppo_clip_loss,
    ppo_clip_per_token,
    reinforce_loss,
)

MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# One jit-compiled program per call site is much cheaper than op-by-op eager dispatch on new
# shapes (keeps this file fast on a 2-core CI machine).
def jgrad(f, **kw):
    return jax.jit(jax.grad(f, **kw))


def jcall(f, *args, **kw):
    return jax.jit(functools.partial(f, **kw))(*args)


# ----------------------------------------------------------------------------- NumPy references
def np_agg(loss, mask, mode, scale=None):
    """verl ``agg_loss`` (current semantics: sequences without tokens are left out)."""
    loss = np.asarray(loss, np.float64)
    m = np.asarray(mask, np.float64)
    if mode == "token-mean":
        return (loss * m).sum() / m.sum() if m.sum() > 0 else 0.0
    seq_sum = (loss * m).sum(-1)
    n = m.sum(-1)
    valid = n > 0
    if mode == "seq-mean-token-sum":
        return seq_sum[valid].mean() if valid.any() else 0.0
    if mode == "seq-mean-token-mean":
        return (seq_sum[valid] / n[valid]).mean() if valid.any() else 0.0
    if mode == "seq-mean-token-sum-norm":
        scale = loss.shape[-1] if scale is None else scale
        return seq_sum.sum() / (loss.shape[0] * scale)
    raise AssertionError(mode)


def np_mean(x, mask):
    m = np.asarray(mask, np.float64)
    return (np.asarray(x, np.float64) * m).sum() / m.sum() if m.sum() > 0 else 0.0


def np_ppo(logp, old, adv, mask, eps_l=0.2, eps_h=None, c=None, mode="token-mean", scale=None):
    """verl ``compute_policy_loss_vanilla`` restated in float64."""
    eps_h = eps_l if eps_h is None else eps_h
    logp, old, adv = (np.asarray(a, np.float64) for a in (logp, old, adv))
    lr = np.clip(logp - old, -20.0, 20.0)
    ratio = np.exp(lr)
    l1 = -adv * ratio
    l2 = -adv * np.clip(ratio, 1 - eps_l, 1 + eps_h)
    lc = np.maximum(l1, l2)
    clipfrac = np_mean(l2 > l1, mask)
    if c is not None:
        l3 = -adv * c
        lower = np_mean((lc > l3) & (adv < 0), mask)
        per_tok = np.where(adv < 0, np.minimum(l3, lc), lc)
    else:
        lower = 0.0
        per_tok = lc
    loss = np_agg(per_tok, mask, mode, scale)
    return per_tok, {
        "pg/loss": loss,
        "pg/clipfrac": clipfrac,
        "pg/clipfrac_lower": lower,
        "pg/ppo_kl": np_mean(-lr, mask),
    }


def random_batch(seed, b=8, t=6, p_mask=0.7, scale=0.4, dtype=np.float32):
    rng = np.random.default_rng(seed)
    logp = (-np.abs(rng.normal(size=(b, t))) - 0.1).astype(dtype)
    old = (logp + scale * rng.normal(size=(b, t))).astype(dtype)
    adv = rng.normal(size=(b, t)).astype(dtype)
    mask = rng.random((b, t)) < p_mask
    mask[0] = False  # an empty sequence
    mask[1, 0] = True
    return logp, old, adv, mask


def assert_metrics(got, want, atol=1e-5, rtol=1e-5):
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(np.float64(got[k]), want[k], atol=atol, rtol=rtol, err_msg=k)


# ----------------------------------------------------------------------------- PPO clip
def test_ppo_hand_cases():
    # ratio = exp(lp - old); pick ratios 1.5, 0.5, 1.1, 0.5, 5.0 with eps 0.2, c = 3.
    ratios = np.array([[1.5, 0.5, 1.1, 0.5, 5.0, 1.5]])
    adv = np.array([[1.0, 1.0, -1.0, -1.0, -1.0, -1.0]])
    old = np.zeros_like(ratios)
    lp = np.log(ratios)
    per_tok, info = jcall(ppo_clip_per_token, lp, old, adv, clip_ratio_c=3.0)
    # A>0, r=1.5: clipped to 1.2 → −1.2 (clip branch active, upper)
    # A>0, r=0.5: unclipped −0.5
    # A<0, r=1.1: unclipped 1.1
    # A<0, r=0.5: clipped to 0.8 → 0.8 (clip branch active, lower)
    # A<0, r=5.0: max(5, 1.2) = 5 → dual-clip min(5, 3) = 3
    # A<0, r=1.5: 1.5 < 3, no dual clip
    np.testing.assert_allclose(per_tok, [[-1.2, -0.5, 1.1, 0.8, 3.0, 1.5]], rtol=1e-6)
    np.testing.assert_array_equal(info["clipped"], [[1, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(info["clipped_upper"], [[1, 0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(info["clipped_lower"], [[0, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(info["dual_clipped"], [[0, 0, 0, 0, 1, 0]])
    np.testing.assert_allclose(info["ratio"], ratios, rtol=1e-6)
    # Without c the A<0, r=5 token keeps loss 5.
    per_tok, info = jcall(ppo_clip_per_token, lp, old, adv)
    assert np.isclose(per_tok[0, 4], 5.0) and not info["dual_clipped"].any()


def test_ppo_clip_higher_is_asymmetric():
    lp = np.log(np.array([[1.25, 1.25, 0.75]]))
    adv = np.array([[1.0, 1.0, -1.0]])
    per_tok, info = jcall(
        ppo_clip_per_token, lp, np.zeros_like(lp), adv, clip_ratio_low=0.2, clip_ratio_high=0.28
    )
    # 1.25 < 1.28 → not clipped; 0.75 < 0.8 → clipped lower.
    np.testing.assert_allclose(per_tok, [[-1.25, -1.25, 0.8]], rtol=1e-6)
    np.testing.assert_array_equal(info["clipped"], [[0, 0, 1]])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("c", [None, 3.0])
def test_ppo_random_vs_reference(x64, mode, c):
    logp, old, adv, mask = random_batch(1, dtype=np.float64)
    kw = dict(clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=c, loss_agg_mode=mode)
    loss, metrics = ppo_clip_loss(logp, old, adv, mask, **kw)
    want_tok, want = np_ppo(logp, old, adv, mask, 0.2, 0.28, c, mode)
    np.testing.assert_allclose(loss, want["pg/loss"], atol=1e-12)
    assert_metrics(metrics, want, atol=1e-12, rtol=1e-12)
    got_tok, _ = ppo_clip_per_token(logp, old, adv, clip_ratio_high=0.28, clip_ratio_c=c)
    np.testing.assert_allclose(got_tok, want_tok, atol=1e-12)


def test_ppo_loss_scale_factor(x64):
    logp, old, adv, mask = random_batch(2, dtype=np.float64)
    loss, _ = ppo_clip_loss(
        logp, old, adv, mask, loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=100.0
    )
    _, want = np_ppo(logp, old, adv, mask, mode="seq-mean-token-sum-norm", scale=100.0)
    np.testing.assert_allclose(loss, want["pg/loss"], atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([0.05, 0.5, 3.0]),
    c=st.sampled_from([None, 2.0, 10.0]),
)
def test_ppo_property_matches_reference(seed, scale, c):
    logp, old, adv, mask = random_batch(seed, scale=scale)
    loss, metrics = ppo_clip_loss(logp, old, adv, mask, clip_ratio_c=c)
    _, want = np_ppo(logp, old, adv, mask, c=c)
    np.testing.assert_allclose(loss, want["pg/loss"], rtol=1e-5, atol=1e-5)
    assert_metrics(metrics, want, atol=1e-5)
    assert 0.0 <= float(metrics["pg/clipfrac"]) <= 1.0


def test_ppo_grad_zero_on_clipped_tokens():
    logp, old, adv, mask = random_batch(3, scale=1.0)
    mask = np.ones_like(mask)
    _, info = ppo_clip_per_token(logp, old, adv, clip_ratio_c=3.0)
    g = jgrad(lambda lp: ppo_clip_loss(lp, old, adv, mask, clip_ratio_c=3.0)[0])(logp)
    inactive = np.asarray(info["clipped"] | info["dual_clipped"])
    assert inactive.any() and (~inactive).any()
    np.testing.assert_array_equal(np.asarray(g)[inactive], 0.0)
    assert np.all(np.asarray(g)[~inactive] != 0.0)
    # unclipped tokens: d(−A·r)/d logp / N = −A·r / N (token-mean)
    n = mask.sum()
    want = -adv * np.exp(logp - old) / n
    np.testing.assert_allclose(np.asarray(g)[~inactive], want[~inactive], rtol=1e-5)


def test_ppo_check_grads(x64):
    logp, old, adv, mask = random_batch(4, dtype=np.float64, scale=0.05)
    for mode in ("token-mean", "seq-mean-token-mean"):
        check_grads(
            jax.jit(lambda lp, m=mode: ppo_clip_loss(lp, old, adv, mask, loss_agg_mode=m)[0]),
            (logp,),
            order=1,
            modes=("rev",),
            eps=1e-6,
        )


def test_ppo_finite_with_inf_old_logp_and_empty_mask():
    logp, old, adv, mask = random_batch(5)
    old = old.copy()
    old[2, :3] = -np.inf
    old[3, 1] = np.inf
    logp = logp.copy()
    logp[4, 2] = -np.inf
    old[4, 2] = -np.inf  # -inf - -inf = nan → treated as log-ratio 0
    for m in (mask, np.zeros_like(mask)):
        for mode in MODES:
            f = lambda lp, m=m, mode=mode: ppo_clip_loss(
                lp, old, adv, m, clip_ratio_c=3.0, loss_agg_mode=mode
            )
            (loss, metrics), g = jax.value_and_grad(f, has_aux=True)(logp)
            assert np.isfinite(loss) and np.all(np.isfinite(np.asarray(g)))
            assert all(np.isfinite(v) for v in metrics.values())
            if not m.any():
                assert float(loss) == 0.0 and not np.asarray(g).any()
    # ratio is clamped to exp(±20)
    _, info = ppo_clip_per_token(logp, old, adv)
    np.testing.assert_allclose(info["ratio"][2, :3], np.exp(20.0), rtol=1e-6)
    np.testing.assert_allclose(info["ratio"][3, 1], np.exp(-20.0), rtol=1e-6)


def test_ppo_jit_and_vmap():
    logp, old, adv, mask = random_batch(6)
    # jit of a vmap over a leading "micro-batch" axis
    stack = [np.stack([x, x[::-1]]) for x in (logp, old, adv, mask)]
    f = jax.jit(
        jax.vmap(
            lambda *a: ppo_clip_loss(*a, clip_ratio_c=3.0, loss_agg_mode="seq-mean-token-mean")
        )
    )
    losses, metrics = f(*stack)
    for i in range(2):
        _, w = np_ppo(*(x[i] for x in stack), c=3.0, mode="seq-mean-token-mean")
        np.testing.assert_allclose(losses[i], w["pg/loss"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["pg/clipfrac"][i], w["pg/clipfrac"], atol=1e-6)


def test_ppo_distributed():
    """All four aggregation modes in one program: shard_map, pmap and the shard_map gradient."""
    logp, old, adv, mask = random_batch(7, b=16, t=5)

    def all_modes(*args, axis_name=None):
        kw = dict(clip_ratio_high=0.28, clip_ratio_c=3.0, axis_name=axis_name)
        first = ppo_clip_loss(*args, **kw)  # token-mean: its loss is the first output leaf
        rest = {m: ppo_clip_loss(*args, loss_agg_mode=m, **kw) for m in MODES[1:]}
        return first, rest

    assert_matches_distributed(all_modes, (logp, old, adv, mask), {}, atol=1e-6, grad_argnums=(0,))


def test_ppo_bad_input():
    lp = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="loss_agg_mode"):
        ppo_clip_loss(lp, lp, lp, lp, loss_agg_mode="mean")
    with pytest.raises(ValueError, match="clip_ratio_c"):
        ppo_clip_loss(lp, lp, lp, lp, clip_ratio_c=0.5)
    with pytest.raises(ValueError, match="clip_ratio_low"):
        ppo_clip_loss(lp, lp, lp, lp, clip_ratio_low=-0.1)
    with pytest.raises(ValueError, match="shape"):
        ppo_clip_loss(lp, lp, lp, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        ppo_clip_loss(lp[0], lp[0], lp[0], lp[0])


# ----------------------------------------------------------- REINFORCE / GSPO / CISPO
def np_reinforce(logp, old, adv, mask, is_=False, mode="token-mean"):
    logp, old, adv = (np.asarray(a, np.float64) for a in (logp, old, adv))
    lr = np.clip(logp - old, -20, 20)
    w = np.exp(lr) if is_ else 1.0
    return np_agg(-adv * w * logp, mask, mode), np_mean(-lr, mask)


def np_gspo(logp, old, adv, mask, eps_l=3e-4, eps_h=4e-4, mode="seq-mean-token-mean"):
    """verl ``compute_policy_loss_gspo`` (values; gradient checked separately)."""
    logp, old, adv = (np.asarray(a, np.float64) for a in (logp, old, adv))
    m = np.asarray(mask, np.float64)
    d = logp - old
    n = np.maximum(m.sum(-1), 1)
    s = np.exp(np.minimum((d * m).sum(-1) / n, 10.0))[:, None] * np.ones_like(d)
    l1 = -adv * s
    l2 = -adv * np.clip(s, 1 - eps_l, 1 + eps_h)
    return np_agg(np.maximum(l1, l2), mask, mode), np_mean(l2 > l1, mask), np_mean(-d, mask)


def np_cispo(logp, old, adv, mask, eps_l=None, eps_h=0.2, mode="token-mean"):
    logp, old, adv = (np.asarray(a, np.float64) for a in (logp, old, adv))
    lr = np.clip(logp - old, -20, 20)
    r = np.exp(lr)
    rc = np.clip(r, -np.inf if eps_l is None else 1 - eps_l, 1 + eps_h)
    return np_agg(-rc * adv * logp, mask, mode), np_mean(r != rc, mask), np_mean(-lr, mask)


@pytest.mark.parametrize("mode", MODES)
def test_reinforce_vs_reference(x64, mode):
    logp, old, adv, mask = random_batch(10, dtype=np.float64)
    for is_ in (False, True):
        loss, met = reinforce_loss(
            logp, old, adv, mask, importance_sampling=is_, loss_agg_mode=mode
        )
        want, kl = np_reinforce(logp, old, adv, mask, is_, mode)
        np.testing.assert_allclose(loss, want, atol=1e-12)
        np.testing.assert_allclose(met["pg/ppo_kl"], kl, atol=1e-12)
        assert float(met["pg/loss"]) == float(loss)


def test_reinforce_gradient(x64):
    logp, old, adv, mask = random_batch(11, dtype=np.float64)
    n = mask.sum()
    g = jgrad(lambda lp: reinforce_loss(lp, old, adv, mask)[0])(logp)
    np.testing.assert_allclose(g, np.where(mask, -adv / n, 0.0), atol=1e-12)
    # importance-sampled: the gradient equals that of the unclipped surrogate −A·r
    g_is = jgrad(lambda lp: reinforce_loss(lp, old, adv, mask, importance_sampling=True)[0])(logp)
    np.testing.assert_allclose(g_is, np.where(mask, -adv * np.exp(logp - old) / n, 0), atol=1e-12)
    f = jax.jit(lambda lp: reinforce_loss(lp, old, adv, mask)[0])
    check_grads(f, (logp,), 1, modes=("rev",))


def test_gspo_hand_case():
    # one sequence of 2 tokens with log-ratios 0.1 and 0.3 → s = exp(0.2); A = 1.
    lp = np.array([[-1.0, -2.0, -5.0]])
    old = lp - np.array([[0.1, 0.3, 7.0]])
    mask = np.array([[1, 1, 0]])
    adv = np.ones_like(lp)
    loss, met = jcall(gspo_loss, lp, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)
    np.testing.assert_allclose(loss, -np.exp(0.2), rtol=1e-6)  # 1.221 < 1.28: not clipped
    assert float(met["pg/clipfrac"]) == 0.0
    np.testing.assert_allclose(met["pg/seq_ratio_mean"], np.exp(0.2), rtol=1e-6)
    # gradient: s·∇logp_t / n_tokens (seq-mean-token-mean over one sequence of 2 tokens)
    g = jgrad(lambda x: gspo_loss(x, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28)[0])(
        lp
    )
    np.testing.assert_allclose(g, [[-np.exp(0.2) / 2, -np.exp(0.2) / 2, 0.0]], rtol=1e-6)
    # default (paper) clip 3e-4/4e-4: the whole sequence is clipped → zero gradient
    loss, met = jcall(gspo_loss, lp, old, adv, mask)
    np.testing.assert_allclose(loss, -(1 + 4e-4), rtol=1e-6)
    assert float(met["pg/clipfrac"]) == 1.0
    g = jgrad(lambda x: gspo_loss(x, old, adv, mask)[0])(lp)
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("mode", MODES)
def test_gspo_vs_reference(x64, mode):
    logp, old, adv, mask = random_batch(12, dtype=np.float64, scale=0.2)
    adv = np.repeat(adv[:, :1], adv.shape[1], axis=1)  # sequence-level advantage
    kw = dict(clip_ratio_low=0.05, clip_ratio_high=0.08, loss_agg_mode=mode)
    loss, met = gspo_loss(logp, old, adv, mask, **kw)
    want, clipfrac, kl = np_gspo(logp, old, adv, mask, 0.05, 0.08, mode)
    np.testing.assert_allclose(loss, want, atol=1e-12)
    np.testing.assert_allclose(met["pg/clipfrac"], clipfrac, atol=1e-12)
    np.testing.assert_allclose(met["pg/ppo_kl"], kl, atol=1e-12)
    assert float(met["pg/clipfrac_lower"]) == 0.0


def test_gspo_gradient_is_sequence_level(x64):
    """Unclipped GSPO gradient per token = −A_i·s_i·∇logp_t / (n_i · #seqs), s_i sg'd."""
    logp, old, adv, mask = random_batch(13, dtype=np.float64, scale=0.05)
    adv = np.repeat(adv[:, :1], adv.shape[1], axis=1)
    kw = dict(clip_ratio_low=10.0, clip_ratio_high=10.0)  # never clipped
    g = jgrad(lambda lp: gspo_loss(lp, old, adv, mask, **kw)[0])(logp)
    m = mask.astype(np.float64)
    n = m.sum(-1)
    valid = n > 0
    s = np.exp((np.clip(logp - old, -20, 20) * m).sum(-1) / np.maximum(n, 1))
    want = -adv * s[:, None] * m / np.maximum(n, 1)[:, None] / valid.sum()
    np.testing.assert_allclose(g, want, atol=1e-12)


@pytest.mark.parametrize("eps_l", [None, 0.2])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-sum-norm"])
def test_cispo_vs_reference(x64, eps_l, mode):
    logp, old, adv, mask = random_batch(14, dtype=np.float64, scale=0.5)
    loss, met = cispo_loss(
        logp, old, adv, mask, clip_ratio_low=eps_l, clip_ratio_high=0.2, loss_agg_mode=mode
    )
    want, clipfrac, kl = np_cispo(logp, old, adv, mask, eps_l, 0.2, mode)
    np.testing.assert_allclose(loss, want, atol=1e-12)
    np.testing.assert_allclose(met["pg/clipfrac"], clipfrac, atol=1e-12)
    np.testing.assert_allclose(met["pg/ppo_kl"], kl, atol=1e-12)


def test_cispo_keeps_gradient_of_clipped_tokens(x64):
    lp = np.log(np.array([[2.0, 0.5, 1.0]]))
    old = np.zeros_like(lp)
    adv = np.array([[1.0, -1.0, 1.0]])
    mask = np.ones_like(lp)
    g = jgrad(lambda x: cispo_loss(x, old, adv, mask, clip_ratio_low=0.2)[0])(lp)
    # r̂ = (1.2, 0.8, 1.0); ∇ = −r̂·A / 3: nonzero even where PPO would zero it
    np.testing.assert_allclose(g, [[-1.2 / 3, 0.8 / 3, -1.0 / 3]], rtol=1e-12)
    g_ppo = jgrad(lambda x: ppo_clip_loss(x, old, adv, mask)[0])(lp)
    np.testing.assert_allclose(g_ppo[0, :2], 0.0)


@pytest.mark.parametrize("fn", [reinforce_loss, gspo_loss, cispo_loss])
def test_finite_with_inf_and_empty_mask(fn):
    logp, old, adv, mask = random_batch(15)
    old = old.copy()
    old[2, :2] = -np.inf
    logp = logp.copy()
    logp[5, 3] = -np.inf  # a -inf logp on a padded position
    mask = mask.copy()
    mask[5, 3] = False
    vg = jax.jit(jax.value_and_grad(lambda lp, m: fn(lp, old, adv, m), has_aux=True))
    for m in (mask, np.zeros_like(mask)):
        (loss, met), g = vg(logp, m)
        assert np.isfinite(loss) and np.all(np.isfinite(np.asarray(g)))
        assert all(np.isfinite(v) for v in met.values())
        if not m.any():
            assert float(loss) == 0.0 and not np.asarray(g).any()


def test_jit_vmap_other_losses():
    logp, old, adv, mask = random_batch(16)
    stack = [np.stack([x, x[:, ::-1]]) for x in (logp, old, adv, mask)]
    refs = {
        reinforce_loss: lambda *a: np_reinforce(*a)[0],
        gspo_loss: lambda *a: np_gspo(*a)[0],
        cispo_loss: lambda *a: np_cispo(*a)[0],
    }
    for fn, ref in refs.items():
        got = jax.jit(jax.vmap(fn))(*stack)[0]
        for i in range(2):
            np.testing.assert_allclose(got[i], ref(*(x[i] for x in stack)), rtol=1e-5, atol=1e-6)


def test_other_losses_distributed():
    """REINFORCE (IS), GSPO and CISPO in one program; the gradient of their sum is compared."""
    logp, old, adv, mask = random_batch(17, b=16, t=5)

    def three(*args, axis_name=None):
        out = {
            "reinforce": reinforce_loss(
                *args,
                importance_sampling=True,
                loss_agg_mode="seq-mean-token-sum",
                axis_name=axis_name,
            ),
            "gspo": gspo_loss(
                *args, clip_ratio_low=0.05, clip_ratio_high=0.05, axis_name=axis_name
            ),
            "cispo": cispo_loss(*args, clip_ratio_low=0.2, axis_name=axis_name),
        }
        return sum(v[0] for v in out.values()), out

    assert_matches_distributed(
        three, (logp, old, adv, mask), {}, atol=1e-6, grad_argnums=(0,), methods=("shard_map",)
    )


# ------------------------------------------- one interface for every policy loss (issue 19/12)
from entropylab.losses import (  # noqa: E402
    aepo_agentic_loss,
    aepo_loss,
    clip_cov_loss,
    erc_loss,
    forking_token_loss,
    hapo_loss,
    kl_cov_loss,
    steer_loss,
)
from entropylab.losses.policy import BASE_METRICS  # noqa: E402

_B, _T = 6, 5
_ENT = np.abs(np.random.default_rng(99).normal(1.0, 0.5, (_B, _T))).astype(np.float32)
ALL_LOSSES = {
    "ppo_clip": (ppo_clip_loss, {"clip_ratio_c": 3.0}),
    "reinforce": (reinforce_loss, {}),
    "gspo": (gspo_loss, {"clip_ratio_low": 0.1, "clip_ratio_high": 0.1}),
    "cispo": (cispo_loss, {}),
    "clip_cov": (clip_cov_loss, {"clip_cov_ratio": 0.3, "clip_cov_lb": -10.0}),
    "kl_cov": (kl_cov_loss, {"kl_cov_ratio": 0.3}),
    "forking": (forking_token_loss, {"entropy": _ENT, "top_rho": 0.5}),
    "steer": (steer_loss, {"entropy": _ENT}),
    "aepo_agentic": (aepo_agentic_loss, {"entropy": _ENT}),
    "hapo": (hapo_loss, {"entropy": _ENT}),
    "erc": (erc_loss, {"entropy": _ENT, "old_entropy": _ENT * np.linspace(0.9, 1.1, _T)}),
    "aepo": (
        aepo_loss,
        {
            "temp_logp": -_ENT[:2] / 4,
            "temp_rewards": np.array([1.0, 0.0], np.float32),
            "temp_mask": np.ones((2, _T), bool),
        },
    ),
}


def _small(seed=0):
    logp, old, adv, mask = random_batch(seed, b=_B, t=_T, scale=0.3)
    adv = np.repeat(adv[:, :1], _T, axis=1)  # per-sequence advantages broadcast over tokens
    return logp, old, adv, mask


def _value_and_grad(fn, kw, logp, old, adv, mask, **extra):
    def f(lp):
        return fn(lp, old, adv, mask, **kw, **extra)

    (loss, met), g = jax.value_and_grad(f, has_aux=True)(jnp.asarray(logp))
    return loss, met, g


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_every_loss_same_interface(name):
    """[B] advantages, old_logp=None, token_weights, the base metric keys, for every loss."""
    fn, kw = ALL_LOSSES[name]
    logp, old, adv, mask = _small(1)
    loss, met, g = _value_and_grad(fn, kw, logp, old, adv, mask)
    assert set(BASE_METRICS) <= set(met), sorted(met)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    # per-sequence [B] advantages == the same advantages broadcast to [B, T]
    l_b, met_b, g_b = _value_and_grad(fn, kw, logp, old, adv[:, 0], mask)
    np.testing.assert_allclose(l_b, loss, rtol=1e-6)
    np.testing.assert_allclose(g_b, g, rtol=1e-6, atol=1e-9)
    # old_logp=None == stop_gradient(logp) (on-policy)
    l_n, met_n, g_n = _value_and_grad(fn, kw, logp, None, adv, mask)
    l_s, _, g_s = _value_and_grad(fn, kw, logp, logp, adv, mask)
    np.testing.assert_allclose(l_n, l_s, rtol=1e-6)
    np.testing.assert_allclose(g_n, g_s, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(met_n["pg/ppo_kl"], 0.0, atol=1e-7)
    # token weights: all ones == none; [B] == broadcast [B, T]
    l_1, _, g_1 = _value_and_grad(fn, kw, logp, old, adv, mask, token_weights=np.ones((_B, _T)))
    np.testing.assert_allclose(l_1, loss, rtol=1e-6)
    np.testing.assert_allclose(g_1, g, rtol=1e-6, atol=1e-9)
    w = np.linspace(0.5, 1.5, _B).astype(np.float32)
    l_w, _, _ = _value_and_grad(fn, kw, logp, old, adv, mask, token_weights=w)
    l_w2, _, _ = _value_and_grad(
        fn, kw, logp, old, adv, mask, token_weights=np.repeat(w[:, None], _T, 1)
    )
    np.testing.assert_allclose(l_w, l_w2, rtol=1e-6)


def test_token_weights_multiply_before_aggregation(x64):
    """tunix-style weights: agg(w ⊙ ℓ) with the mask's normaliser (NumPy float64 reference)."""
    logp, old, adv, mask = random_batch(21, dtype=np.float64)
    w = np.random.default_rng(3).uniform(0.0, 2.0, logp.shape)
    for mode in MODES:
        per_tok, _ = np_ppo(logp, old, adv, mask, c=3.0)
        want = np_agg(w * per_tok, mask, mode)
        got, _ = ppo_clip_loss(
            logp, old, adv, mask, clip_ratio_c=3.0, token_weights=w, loss_agg_mode=mode
        )
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=mode)
    # hand case: one token, ratio 1, A = 2, w = 0.25 → ℓ = −2·1·0.25
    one = jnp.zeros((1, 1))
    got, _ = ppo_clip_loss(one, one, 2 * jnp.ones((1, 1)), jnp.ones((1, 1)), token_weights=[0.25])
    np.testing.assert_allclose(got, -0.5, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_every_loss_errors_name_the_argument(name):
    fn, kw = ALL_LOSSES[name]
    logp, old, adv, mask = _small(2)
    with pytest.raises(ValueError, match="advantages"):
        fn(logp, old, adv[:3, 0], mask, **kw)
    with pytest.raises(ValueError, match="mask"):
        fn(logp, old, adv, mask[:, :2], **kw)
    with pytest.raises(ValueError, match="old_logp"):
        fn(logp, old[:, :2], adv, mask, **kw)
    with pytest.raises(ValueError, match="token_weights"):
        fn(logp, old, adv, mask, token_weights=np.ones(7), **kw)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        fn(logp, old, adv, mask, loss_agg_mode="mean", **kw)
    with pytest.raises(ValueError, match="logp"):
        fn(logp[0], old[0], adv[0], mask[0], **kw)


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_nan_logprob_is_never_a_finite_loss(name):
    """Issue 12: a NaN log-prob at a valid token gives a NaN loss and a NaN gradient there (the
    old log-ratio clamp turned it into ratio 1, i.e. a finite loss); under the mask it is
    ignored; a NaN in old_logp or the advantages also gives NaN."""
    fn, kw = ALL_LOSSES[name]
    logp, old, adv, mask = _small(3)
    i, j = 2, int(np.argmax(mask[2]))
    assert mask[i, j]
    bad = logp.copy()
    bad[i, j] = np.nan
    loss, _, g = _value_and_grad(fn, kw, bad, old, adv, mask)
    assert np.isnan(loss), loss
    assert np.isnan(g[i, j]), g
    bad_old = old.copy()
    bad_old[i, j] = np.nan
    assert np.isnan(_value_and_grad(fn, kw, logp, bad_old, adv, mask)[0])
    bad_adv = adv.copy()
    bad_adv[i, j] = np.nan
    assert np.isnan(_value_and_grad(fn, kw, logp, old, bad_adv, mask)[0])
    # the same NaN under the mask is selected out: finite loss, finite gradient
    masked = mask.copy()
    masked[i, j] = False
    loss, met, g = _value_and_grad(fn, kw, bad, old, adv, masked)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    assert all(np.isfinite(v) for v in met.values()), met


@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_neg_inf_padding_and_empty_rows_stay_finite(name):
    fn, kw = ALL_LOSSES[name]
    logp, old, adv, mask = _small(4)
    mask[3] = False  # an empty row
    logp = np.where(mask, logp, -np.inf).astype(np.float32)
    old = np.where(mask, old, -np.inf).astype(np.float32)
    kw = dict(kw)
    if "entropy" in kw:
        kw["entropy"] = np.where(mask, kw["entropy"], np.nan).astype(np.float32)
    loss, met, g = _value_and_grad(fn, kw, logp, old, adv, mask)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    assert all(np.isfinite(v) for v in met.values()), met
