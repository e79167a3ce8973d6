"""Light-IF (arXiv:2508.03178) loss pieces against NumPy float64 ports of the release.

Ports of ``Qihoo360/Light-IF`` at 01e90034af6a:
``coldstart/LLAMA-Factory/src/llamafactory/train/sft/custom_entropy_trainer.py``
``build_entropy_loss_func`` (Entropy-SFT) and ``rl/verl/verl/trainer/ppo/core_algos.py``
``compute_entropy_with_cov`` (TEA-RL).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from entropylab.losses import ObjectiveConfig, ObjectiveInputs, build_objective
from entropylab.losses.light_if import (
    entropy_sft_loss,
    entropy_sft_mask,
    tea_rl_entropy_loss,
    tea_rl_weights,
)
from entropylab.ops.masked import AGG_MODES


def np_entropy_sft(logp, ent, mask, ratio=0.2, coef=1.0, num_items=None):
    """``build_entropy_loss_func``: flatten valid tokens, δ = CE − c·H, top-k, CE sum / norm.
    Ties: lower flat index first (stable sort on −δ)."""
    ce = -logp[mask]
    h = ent[mask]
    delta = ce - coef * h
    n = delta.size
    k = max(int(ratio * n), 1)
    top = np.argsort(-delta, kind="stable")[:k]
    if num_items is not None:
        return ce[top].sum() / int(num_items * ratio), top
    return ce[top].mean(), top


def np_tea_rl(logp, adv, ent, mask, mode="token-mean", alpha=10.0, ub=5.0, logp_mean=None):
    """``compute_entropy_with_cov`` (float64): returns (entropy_loss, coeff_avg); the actor uses
    ``policy_loss = pg_loss − entropy_loss``. ``logp_mean``: the release's
    ``masked_mean(log_prob.detach())`` held fixed (for finite differences)."""
    m = mask.astype(np.float64)
    lm = (logp * m).sum() / m.sum() if logp_mean is None else logp_mean
    cov = (adv - (adv * m).sum() / m.sum()) * (logp - lm)
    cov = np.where(mask, cov, -np.inf)
    with np.errstate(invalid="ignore"):
        e = np.exp(cov - cov.max(-1, keepdims=True))
        sm = e / e.sum(-1, keepdims=True)
    w = np.clip(sm * alpha, 0.0, ub)
    w = np.where(mask.any(-1, keepdims=True), w, 0.0)  # the release's NaN row: weight 0 here
    return _agg(ent * w, mask, mode), _agg(w, mask, mode)


def _agg(x, mask, mode):
    m = mask.astype(np.float64)
    x = np.where(mask, x, 0.0)
    if mode == "token-mean":
        return (x * m).sum() / m.sum()
    n, s = m.sum(-1), (x * m).sum(-1)
    if mode == "seq-mean-token-sum":
        return s[n > 0].mean()
    if mode == "seq-mean-token-mean":
        return (s[n > 0] / n[n > 0]).mean()
    return s.sum() / x.size


# ---------------------------------------------------------------------------- Entropy-SFT
def test_entropy_sft_hand_worked(x64):
    """5 valid tokens, ρ = 0.4 → k = 2. p = [0.9, 0.1, 0.5, 0.2, 0.05], H = [0.1, 2.5, 0.3,
    0.2, 3.5]; δ = CE − H = [0.0054, −0.1974, 0.3931, 1.4094, −0.5043] → tokens 3, 2:
    L = (ln 5 + ln 2)/2 = 1.1512925. With c = 0 (plain top-CE): tokens 4, 1 →
    (ln 20 + ln 10)/2 = 2.6491586."""
    logp = np.log([[0.9, 0.1, 0.5, 0.2, 0.05, 0.7]])
    ent = np.array([[0.1, 2.5, 0.3, 0.2, 3.5, 9.0]])
    m = np.array([[True] * 5 + [False]])
    (loss, met), g = jax.value_and_grad(
        lambda x: entropy_sft_loss(x, ent, m, token_ratio=0.4), has_aux=True
    )(jnp.asarray(logp))
    np.testing.assert_allclose(loss, 1.1512925464970228, rtol=1e-12)
    np.testing.assert_allclose(g, [[0, 0, -0.5, -0.5, 0, 0]], atol=1e-15)
    np.testing.assert_allclose(met["sft/n_selected"], 2)
    np.testing.assert_allclose(met["sft/n_tokens"], 5)
    np.testing.assert_allclose(met["sft/entropy_sel"], 0.25, rtol=1e-12)
    loss0, _ = entropy_sft_loss(logp, ent, m, token_ratio=0.4, entropy_coef=0.0)
    np.testing.assert_allclose(loss0, 2.649158683274018, rtol=1e-12)
    # the release's gradient-accumulation normaliser: Σ_sel CE / int(n_items · ρ)
    loss_n, _ = entropy_sft_loss(logp, ent, m, token_ratio=0.4, num_items=10)
    np.testing.assert_allclose(loss_n, (math.log(5) + math.log(2)) / 4, rtol=1e-12)
    # k = max(⌊ρN⌋, 1): ρ = 0.1 of 5 tokens still trains on one
    sel, k = entropy_sft_mask(logp, ent, m, token_ratio=0.1)
    assert int(k) == 1 and np.asarray(sel).sum() == 1 and bool(sel[0, 3])


def test_entropy_sft_matches_release_port_random(x64):
    rng = np.random.default_rng(0)
    for seed, (ratio, coef) in enumerate(((0.2, 1.0), (0.5, 0.3), (0.05, 2.0))):
        rng = np.random.default_rng(seed)
        logits = rng.normal(size=(5, 9, 13)) * 2
        lsm = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        ent = -(np.exp(lsm) * lsm).sum(-1)
        logp = np.take_along_axis(lsm, rng.integers(0, 13, (5, 9, 1)), -1)[..., 0]
        m = rng.uniform(size=(5, 9)) < 0.7
        want, top = np_entropy_sft(logp, ent, m, ratio, coef)
        (loss, _), g = jax.value_and_grad(
            lambda x: entropy_sft_loss(x, ent, m, token_ratio=ratio, entropy_coef=coef),  # noqa: B023
            has_aux=True,
        )(jnp.asarray(logp))
        np.testing.assert_allclose(loss, want, rtol=1e-12)
        g_want = np.zeros(m.sum())
        g_want[top] = -1.0 / top.size
        np.testing.assert_allclose(np.asarray(g)[m], g_want, atol=1e-15)
        assert np.all(np.asarray(g)[~m] == 0)


def test_entropy_sft_nan_and_errors():
    logp = np.log(np.full((2, 3), 0.5, np.float32))
    ent = np.ones((2, 3), np.float32)
    m = np.ones((2, 3), bool)
    for arg in ("logp", "entropy"):
        lp, h = logp.copy(), ent.copy()
        (lp if arg == "logp" else h)[1, 1] = np.nan
        loss, g = jax.value_and_grad(lambda x: entropy_sft_loss(x, h, m)[0])(jnp.asarray(lp))  # noqa: B023
        assert np.isnan(loss) and np.isnan(g[1, 1]), arg
    with pytest.raises(ValueError, match="token_ratio"):
        entropy_sft_loss(logp, ent, m, token_ratio=0.0)
    with pytest.raises(ValueError, match="entropy"):
        entropy_sft_loss(logp, ent[:, :2], m)
    with pytest.raises(ValueError, match="mask"):
        entropy_sft_loss(logp, ent, m[:1])


# --------------------------------------------------------------------------------- TEA-RL
def test_tea_rl_hand_worked(x64):
    """A = [1, 0, −1], log π = [−1, −2, −3] → C = [1, 0, 1]; softmax = [e, 1, e]/(2e + 1);
    w = 10·softmax = [4.2232, 1.5536, 4.2232] (under the cap 5). H = [0.5, 1, 2]:
    L = −mean(w·H) = −(0.5·4.2232 + 1.5536 + 2·4.2232)/3. The second row has no valid token."""
    logp = np.array([[-1.0, -2.0, -3.0], [0.0, 0.0, 0.0]])
    adv = np.array([1.0, 0.0, -1.0])[None].repeat(2, 0)
    ent = np.array([[0.5, 1.0, 2.0], [7.0, 7.0, 7.0]])
    m = np.array([[True, True, True], [False, False, False]])
    e = math.e
    w = 10 * np.array([e, 1.0, e]) / (2 * e + 1)
    got_w = tea_rl_weights(logp, adv, m)
    np.testing.assert_allclose(got_w, [w, [0, 0, 0]], rtol=1e-12)
    loss, met = tea_rl_entropy_loss(logp, adv, ent, m)
    np.testing.assert_allclose(loss, -(0.5 * w[0] + w[1] + 2 * w[2]) / 3, rtol=1e-12)
    np.testing.assert_allclose(met["entropy/tea_rl_weight"], 10 / 3, rtol=1e-12)
    # cap: α = 20 → 20·e/(2e + 1) = 8.45 clipped to 5
    got_w = tea_rl_weights(logp, adv, m, cov_alpha=20.0)
    np.testing.assert_allclose(got_w[0], [5.0, 20 / (2 * e + 1), 5.0], rtol=1e-12)


def test_tea_rl_matches_release_port_and_gradients(x64):
    rng = np.random.default_rng(3)
    b, t = 4, 6
    logp = -np.abs(rng.normal(size=(b, t))) - 0.1
    adv = rng.normal(size=(b, 1)).repeat(t, 1) + 0.1 * rng.normal(size=(b, t))
    ent = rng.uniform(0.1, 2.0, (b, t))
    m = rng.uniform(size=(b, t)) < 0.8
    m[0] = False
    m[1, 0] = True
    for mode in AGG_MODES:
        want, want_w = np_tea_rl(logp, adv, ent, m, mode, alpha=3.0)
        loss, met = tea_rl_entropy_loss(logp, adv, ent, m, cov_alpha=3.0, loss_agg_mode=mode)
        np.testing.assert_allclose(loss, -want, rtol=1e-12, err_msg=mode)
        np.testing.assert_allclose(met["entropy/tea_rl_weight"], want_w, rtol=1e-12)
    # gradients (through H and, as in the release, through log π inside the weights) against
    # central differences of the NumPy port (the detached batch mean of log π held fixed)
    lm = (logp * m).sum() / m.sum()
    f = lambda lp, h: tea_rl_entropy_loss(lp, adv, h, m, cov_alpha=3.0)[0]  # noqa: E731
    g_lp, g_h = jax.grad(f, (0, 1))(jnp.asarray(logp), jnp.asarray(ent))
    eps = 1e-6
    for arr, g, which in ((logp, g_lp, 0), (ent, g_h, 1)):
        num = np.zeros_like(arr)
        for idx in zip(*np.nonzero(m)):
            hi, lo = arr.copy(), arr.copy()
            hi[idx] += eps
            lo[idx] -= eps
            args_hi = (hi, ent) if which == 0 else (logp, hi)
            args_lo = (lo, ent) if which == 0 else (logp, lo)
            fh = -np_tea_rl(args_hi[0], adv, args_hi[1], m, alpha=3.0, logp_mean=lm)[0]
            fl = -np_tea_rl(args_lo[0], adv, args_lo[1], m, alpha=3.0, logp_mean=lm)[0]
            num[idx] = (fh - fl) / (2 * eps)
        np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)
    assert np.abs(np.asarray(g_lp)).max() > 1e-3  # the weights do carry a gradient


def test_tea_rl_nan_and_registered_regularizer():
    rng = np.random.default_rng(4)
    b, t = 4, 5
    f32 = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    inp = ObjectiveInputs(
        logp=f32(-rng.uniform(0.1, 2, (b, t))),
        old_logp=None,
        advantages=f32(rng.normal(size=(b,))),
        mask=jnp.asarray(rng.uniform(size=(b, t)) < 0.8),
        entropy=f32(rng.uniform(0, 2, (b, t))),
    )
    bad = np.asarray(inp.entropy).copy()
    bad[1, int(np.argmax(np.asarray(inp.mask)[1]))] = np.nan
    assert np.isnan(tea_rl_entropy_loss(inp.logp, inp.advantages, bad, inp.mask)[0])
    obj = build_objective(
        ObjectiveConfig(regularizers=(("tea_rl", {"cov_alpha": 5.0}),), diagnostics=False)
    )
    _, met = obj.loss(inp, obj.init_state())
    want, _ = tea_rl_entropy_loss(inp.logp, inp.advantages, inp.entropy, inp.mask, cov_alpha=5.0)
    np.testing.assert_allclose(met["loss/tea_rl"], want, rtol=1e-6)
    with pytest.raises(ValueError, match="advantages"):
        tea_rl_weights(inp.logp, np.ones(3), inp.mask)
