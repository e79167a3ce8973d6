"""Tests for entropylab.losses.siren: top-p entropy, peak mask, anchored regulariser, loss.

Independent references:

* hand-worked cases with the expected numbers written here;
* ``rel_*``: NumPy float64 ports of the released code, ``Linn3a/siren`` @ fa59a8d —
  ``efficient_top_p_sampling`` and ``mask_by_quantile`` (``verl/verl/workers/actor/dp_actor.py``),
  ``agg_loss`` and ``compute_policy_loss`` (``verl/verl/trainer/ppo/core_algos.py``), and the
  ``siren`` branch of ``DataParallelPPOActor.update_policy`` (which applies
  ``mask_by_quantile`` twice and aggregates with the peak mask as the loss mask).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dist_util import assert_matches_distributed
from jax.test_util import check_grads

from entropylab.losses.siren import (
    peak_entropy_mask,
    siren_anchor,
    siren_loss,
    siren_regularizer,
    top_p_entropy,
)


# ----------------------------------------------------------------- ports of the released code
def rel_efficient_top_p_sampling(logits, k, p):
    """``efficient_top_p_sampling(logits, k, p)`` (dp_actor.py @ fa59a8d), float64, rows [N, V]."""
    logits = np.asarray(logits, np.float64)
    z = logits - logits.max(-1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    topk_idx = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    cum = np.cumsum(np.take_along_axis(probs, topk_idx, -1), -1)
    cutoff = np.array([np.searchsorted(c, p, side="left") for c in cum])  # torch.searchsorted
    keep = np.arange(topk_idx.shape[1])[None, :] < cutoff[:, None]
    mask = np.zeros_like(logits, bool)
    for i in range(logits.shape[0]):
        mask[i, topk_idx[i][keep[i]]] = True
    pd = probs * mask
    pd = pd / (pd.sum(-1, keepdims=True) + 1e-12)
    return -(pd * np.log(pd + 1e-12)).sum(-1)


def rel_mask_by_quantile(x, response_mask, lower):
    """``mask_by_quantile(x, response_mask, 1, lower)`` (dp_actor.py @ fa59a8d)."""
    xm = np.where(response_mask.astype(bool), x, np.nan)
    lb = np.nanquantile(xm, lower, axis=-1, keepdims=True)  # torch.nanquantile, linear
    qmask = x > lb
    return np.where(qmask, x, 0.0), qmask


def rel_agg_loss(loss_mat, loss_mask, mode):
    """``agg_loss`` of SIREN's bundled verl (core_algos.py @ fa59a8d)."""
    m = loss_mask.astype(np.float64)
    if mode == "token-mean":
        return (loss_mat * m).sum() / (m.sum() + 1e-8)
    if mode == "seq-mean-token-sum":
        return (loss_mat * m).sum(-1).mean()
    if mode == "seq-mean-token-mean":
        n = m.sum(-1)
        seq = np.zeros(loss_mat.shape[0])
        ok = n > 0
        seq[ok] = (loss_mat * m).sum(-1)[ok] / n[ok]
        return seq.mean()
    if mode == "seq-mean-token-sum-norm":
        return (loss_mat * m).sum(-1).mean() / loss_mask.shape[-1]
    raise ValueError(mode)


def rel_h_sel(entropy, response_mask, mask_ratio=0.8, mode="seq-mean-token-mean"):
    """``entropy_loss`` of the ``siren`` branch with ``use_siren=True`` (dp_actor.py @ fa59a8d)."""
    entropy, _ = rel_mask_by_quantile(entropy, response_mask, mask_ratio)  # `if self.use_siren`
    masked, value_mask = rel_mask_by_quantile(entropy, response_mask, mask_ratio)
    return rel_agg_loss(entropy, value_mask, mode), value_mask


def rel_compute_policy_loss(old, lp, adv, mask, lo, hi, c, mode):
    """``compute_policy_loss`` of SIREN's bundled verl (core_algos.py @ fa59a8d)."""
    ratio = np.exp(lp - old)
    l1 = -adv * ratio
    l2 = -adv * np.clip(ratio, 1 - lo, 1 + hi)
    cl1 = np.maximum(l1, l2)
    cl2 = np.minimum(-adv * c, cl1)
    pg = np.where(adv < 0, cl2, cl1)
    return rel_agg_loss(pg, mask, mode)


def _batch(seed, b=16, t=10):
    rng = np.random.default_rng(seed)
    h = rng.exponential(0.7, (b, t))
    lp = -rng.uniform(0, 3, (b, t))
    old = lp + rng.normal(0, 0.2, (b, t))
    adv = np.repeat(rng.normal(0, 1, (b, 1)), t, 1)
    m = rng.uniform(size=(b, t)) < 0.8
    m[:, 0] = True  # every response has a token (as in verl)
    h = np.where(m, h, 0.0)  # padded entropies are 0, as the release's pad_input gives
    return lp, old, adv, m, h


def np_peak(h, m, q):
    out = np.zeros_like(m)
    for i in range(h.shape[0]):
        if m[i].any():
            out[i] = m[i] & (h[i] > np.quantile(h[i][m[i]], q))
    return out


# ----------------------------------------------------------------------------- top-p entropy
def test_top_p_entropy_hand_checked():
    z = jnp.log(jnp.array([[0.5, 0.25, 0.15, 0.1], [0.9, 0.1, 1e-9, 1e-9]]))
    want = [-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3)), 0.0]
    np.testing.assert_allclose(top_p_entropy(z, top_p=0.8), want, rtol=1e-6)
    # top_k = 1 → a single token → entropy 0
    np.testing.assert_allclose(top_p_entropy(z, top_p=0.95, top_k=1), [0.0, 0.0])


@pytest.mark.parametrize("top_k,top_p", [(20, 0.8), (3, 0.99)])
def test_top_p_entropy_matches_released_port(x64, top_k, top_p):
    rng = np.random.default_rng(top_k)
    z = rng.normal(0, 2.0, (24, 50))
    z[0, 0] = 30.0  # top-1 alone ≥ p → empty nucleus → 0
    got = top_p_entropy(z, top_p=top_p, top_k=top_k)
    want = rel_efficient_top_p_sampling(z, top_k, top_p)
    assert want[0] == 0.0 and np.all(want[1:] > 0)
    np.testing.assert_allclose(got, want, atol=1e-9)  # the release's 1e-12 epsilons


def test_top_p_entropy_normalize_over_top_k(x64):
    # "top_k": softmax over the top-K logits decides the nucleus. Logits log[.4,.3,.2,.1] with
    # K = 2 → renormalised (4/7, 3/7); p = 0.5 keeps none (4/7 ≥ 0.5), p = 0.6 keeps one.
    z = np.log(np.array([[0.4, 0.3, 0.2, 0.1]]))
    np.testing.assert_allclose(top_p_entropy(z, top_p=0.5, top_k=2, normalize_over="top_k"), [0])
    # vocab probabilities: 0.4 < 0.8, 0.7 < 0.8, 0.9 ≥ 0.8 → nucleus (0.4, 0.3) → H(4/7, 3/7)
    h = -(4 / 7 * math.log(4 / 7) + 3 / 7 * math.log(3 / 7))
    np.testing.assert_allclose(top_p_entropy(z, top_p=0.8, top_k=4), [h], rtol=1e-12)


def test_top_p_entropy_grads(x64):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1.5, (2, 3, 12))
    f = jax.jit(lambda x: top_p_entropy(x, top_p=0.7).sum())
    check_grads(f, (z,), order=1, modes=["rev"])
    z[0, 0, :4] = -np.inf
    z[1, 2, :] = -np.inf
    g = jax.jit(jax.grad(lambda x: top_p_entropy(x, top_p=0.9).sum()))(jnp.asarray(z))
    assert np.all(np.isfinite(g))


# ----------------------------------------------------------------------------- peak mask, H_sel
def test_peak_mask_vs_numpy_and_release():
    _, _, _, m, h = _batch(0)
    h[5, :4] = h[5, 4]  # ties
    got = np.asarray(peak_entropy_mask(h, m, quantile=0.8))
    np.testing.assert_array_equal(got, np_peak(h, m, 0.8))
    _, rel = rel_mask_by_quantile(h, m, 0.8)
    np.testing.assert_array_equal(got, rel)
    with pytest.raises(ValueError, match="quantile"):
        peak_entropy_mask(h, m, quantile=1.2)


def test_h_sel_hand_worked():
    """Peak mask as the loss mask: per response the mean over its selected tokens.

    Row 0: H = (0.1, 0.2, 0.3, 0.4, 2.0); Q_0.8 = 0.4 + 0.2·1.6 = 0.72 → only 2.0 selected.
    Row 1: H = (1, 1, 1, 1, 0.5); Q_0.8 = 1 → nothing selected → the row counts 0.
    H_sel = (2.0 + 0) / 2 = 1.0 (the old normaliser, every valid token, gave 0.2).
    """
    h = jnp.array([[0.1, 0.2, 0.3, 0.4, 2.0], [1.0, 1.0, 1.0, 1.0, 0.5]])
    m = jnp.ones((2, 5), bool)
    f = jax.value_and_grad(lambda e: siren_regularizer(e, m, anchor=0.3, coef=0.5), has_aux=True)
    (loss, met), g = f(h)
    np.testing.assert_allclose(met["entropy/siren_sel"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(loss, 0.5 * 0.7**2, rtol=1e-6)  # c·(H_sel − anchor)²
    want_g = np.zeros((2, 5))
    want_g[0, 4] = 2 * 0.5 * 0.7 * (1 / 2)  # ∂H_sel/∂H[0,4] = 1/(B·n_sel) = 1/2
    np.testing.assert_allclose(g, want_g, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(siren_anchor(h, m), 1.0, rtol=1e-6)
    np.testing.assert_allclose(met["entropy/siren_sel_frac"], 0.1, rtol=1e-6)
    modes = ("token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
    got = jax.jit(lambda e: [siren_anchor(e, m, entropy_agg_mode=md) for md in modes])(h)
    np.testing.assert_allclose(got, [2.0, 1.0, 0.2], rtol=1e-6)
    # a batch-padding row (no valid token) is not counted; the two rows above still give 1.0
    h3 = jnp.concatenate([h, jnp.zeros((1, 5))])
    m3 = jnp.concatenate([m, jnp.zeros((1, 5), bool)])
    np.testing.assert_allclose(jax.jit(siren_anchor)(h3, m3), 1.0, rtol=1e-6)
    naive = jax.jit(lambda e: siren_regularizer(e, m, coef=0.3, form="naive")[0])(h)
    np.testing.assert_allclose(naive, -0.3, rtol=1e-6)
    with pytest.raises(ValueError, match="anchor"):
        siren_regularizer(h, m)
    with pytest.raises(ValueError, match="form"):
        siren_regularizer(h, m, anchor=0.1, form="l1")


def test_h_sel_matches_released_port(x64):
    modes = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
    _, _, _, m, h = _batch(1)
    h[2, :] = np.where(m[2], 0.5, 0.0)  # all ties → the row selects nothing

    def all_modes(e):
        reg = [siren_regularizer(e, m, anchor=0.0, entropy_agg_mode=md)[1] for md in modes]
        return [r["entropy/siren_sel"] for r in reg], [
            siren_anchor(e, m, entropy_agg_mode=md) for md in modes
        ]

    sel, anchors = jax.jit(all_modes)(h)
    want = [rel_h_sel(h, m, 0.8, md)[0] for md in modes]
    np.testing.assert_allclose(sel, want, rtol=1e-8)  # verl's token-mean adds 1e-8
    np.testing.assert_allclose(anchors, sel, rtol=1e-12)


def test_regularizer_grad_matches_released_port_finite_differences(x64):
    _, _, _, m, h = _batch(3, b=6, t=8)
    anchor, coef = 0.2, 0.7
    g = jax.jit(jax.grad(lambda e: siren_regularizer(e, m, anchor=anchor, coef=coef)[0]))(h)
    eps = 1e-7

    def rel_loss(x):
        return coef * (rel_h_sel(x, m)[0] - anchor) ** 2

    fd = np.zeros_like(h)
    for idx in zip(*np.nonzero(m)):
        d = np.zeros_like(h)
        d[idx] = eps
        fd[idx] = (rel_loss(h + d) - rel_loss(h - d)) / (2 * eps)
    np.testing.assert_allclose(np.where(m, g, 0.0), fd, atol=1e-7)
    assert np.abs(fd).max() > 1e-3  # selected tokens carry gradient


def test_siren_loss_defaults_are_the_released_run(x64):
    """Defaults ε 0.2/0.2 with dual clip 3 (the bundled yaml overrides the script's 0.28)."""
    lp, old, adv, m, h = _batch(4, b=6, t=8)
    lp = old + np.random.default_rng(5).normal(0, 0.5, lp.shape)
    lp[0, 1], adv[0] = old[0, 1] + math.log(4.0), -1.0  # ratio 4, A < 0 → dual clip at 3
    lp[1, 1], adv[1] = old[1, 1] + math.log(1.25), 1.0  # ratio 1.25, A > 0: clipped at 1.2 only
    m[0, 1] = m[1, 1] = True
    anchor, coef = 0.1, 0.05
    f = jax.jit(
        lambda **kw: siren_loss(lp, old, adv, m, entropy_p=h, anchor=anchor, coef=coef, **kw)
    )
    loss, met = f()
    hs, _ = rel_h_sel(h, m)
    pg = rel_compute_policy_loss(old, lp, adv, m, 0.2, 0.2, 3.0, "seq-mean-token-sum-norm")
    np.testing.assert_allclose(loss, pg + coef * (hs - anchor) ** 2, rtol=1e-12)
    np.testing.assert_allclose(met["pg/loss"], pg, rtol=1e-12)
    # the script's 0.28 stays reachable
    loss28, _ = siren_loss(
        lp,
        old,
        adv,
        m,
        entropy_p=h,
        anchor=anchor,
        coef=coef,
        clip_ratio_low=0.28,
        clip_ratio_high=0.28,
    )
    pg28 = rel_compute_policy_loss(old, lp, adv, m, 0.28, 0.28, 3.0, "seq-mean-token-sum-norm")
    np.testing.assert_allclose(loss28, pg28 + coef * (hs - anchor) ** 2, rtol=1e-12)
    assert abs(pg28 - pg) > 1e-3


def test_siren_loss_end_to_end_from_logits():
    lp, old, adv, m, _ = _batch(2, b=4, t=6)
    logits = np.random.default_rng(3).normal(0, 2, (4, 6, 32)).astype(np.float32)
    anchor = jax.jit(lambda lg: siren_anchor(top_p_entropy(lg), m))(logits)

    def f(lg, x):
        hp = top_p_entropy(lg)
        return siren_loss(x, old, adv, m, entropy_p=hp, anchor=anchor + 0.1, coef=1.0)

    (loss, met), (g_lg, g_lp) = jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))(logits, lp)
    pg = rel_compute_policy_loss(old, lp, adv, m, 0.2, 0.2, 3.0, "seq-mean-token-sum-norm")
    np.testing.assert_allclose(loss, pg + met["entropy/siren_loss"], rtol=1e-5)
    np.testing.assert_allclose(met["entropy/siren_mse"], 0.01, rtol=1e-4)
    hp = rel_efficient_top_p_sampling(logits.reshape(-1, 32), 32, 0.8).reshape(4, 6)
    np.testing.assert_allclose(anchor, rel_h_sel(np.where(m, hp, 0.0), m)[0], rtol=1e-5)
    assert np.all(np.isfinite(g_lg)) and np.abs(g_lg).sum() > 0  # gradient reaches the logits
    assert np.all(np.isfinite(g_lp))


def test_empty_mask_and_jit():
    lp, old, adv, m, h = _batch(4)
    empty = np.zeros_like(m)
    f = jax.jit(lambda e: siren_loss(lp, old, adv, empty, entropy_p=e, anchor=0.3)[0])
    v, g = jax.value_and_grad(f)(jnp.asarray(h, jnp.float32))
    assert np.isclose(v, 0.005 * 0.09) and np.all(np.asarray(g) == 0)


def test_distributed():
    lp, old, adv, m, h = (np.asarray(x, np.float32) for x in _batch(5))
    m[3] = 0  # an empty row on one shard

    def fn(lp, old, adv, m, h, *, axis_name=None):
        loss, met = siren_loss(
            lp, old, adv, m, entropy_p=h, anchor=0.2, coef=0.5, axis_name=axis_name
        )
        met["anchor"] = siren_anchor(h, m, axis_name=axis_name)
        return loss, met, peak_entropy_mask(h, m)

    assert_matches_distributed(fn, (lp, old, adv, m, h), {}, atol=2e-6, grad_argnums=(0, 4))
