"""Spectral entropies and rank diagnostics vs float64 NumPy references and known spectra."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from entropylab.ops.spectral import (
    alpha_req,
    diffusion_spectral_entropy,
    matrix_entropy,
    rankme,
)

# Jitted once per shape/options: eager calls would compile every primitive separately.
_me = jax.jit(matrix_entropy, static_argnames=("top_k", "center", "row_normalize", "normalize"))
_rankme = jax.jit(rankme, static_argnames=("eps", "spectrum"))
_alpha = jax.jit(alpha_req, static_argnames=("k_min", "k_max", "center"))
_dse = jax.jit(diffusion_spectral_entropy, static_argnames=("sigma", "t", "base"))

# ---------------------------------------------------------------- float64 NumPy references


def np_matrix_entropy(x, top_k=None, normalize=False):
    x = np.asarray(x, np.float64)
    x = x - x.mean(0)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    a = x.T @ x / len(x)
    s = np.sort(np.clip(np.linalg.eigvalsh(a / np.trace(a)), 0, None))[::-1]
    s = s[:top_k] if top_k else s
    s = s[s > 0]
    h = -np.sum(s * np.log(s))
    return h / math.log(x.shape[1]) if normalize else h


def np_rankme(x, eps=1e-7):
    s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
    p = s / s.sum() + eps
    return math.exp(-np.sum(p * np.log(p)))


def np_alpha(x, k_min=6, k_max=100):
    x = np.asarray(x, np.float64)
    lam = np.sort(np.linalg.eigvalsh(np.cov(x.T)))[::-1]
    k = np.arange(1, len(lam) + 1)
    sel = (k >= k_min) & (k <= k_max)
    w = 1.0 / k[sel]
    # weighted LS of ln λ on ln k: np.polyfit weights multiply the residuals (√w)
    slope, _ = np.polyfit(np.log(k[sel]), np.log(lam[sel]), 1, w=np.sqrt(w))
    return -slope


def np_dse(x, sigma=10.0, t=1):
    x = np.asarray(x, np.float64)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    g = np.exp(-d2 / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    deg = g.sum(1)
    k = g / np.sqrt(deg[:, None] * deg[None])
    lam = np.sort(np.linalg.eigvalsh(k))[::-1][1:]
    a = np.abs(lam) ** t
    p = a / a.sum()
    p = p[p > 0]
    return -np.sum(p * np.log2(p))


def _gauss(seed, n, d):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def _orthonormal_centered(seed, n, d):
    """Columns orthonormal and each of zero mean (so centring does not change the spectrum)."""
    a = np.random.default_rng(seed).normal(size=(n, d))
    q, _ = np.linalg.qr(a - a.mean(0))
    return q


# ---------------------------------------------------------------- matrix entropy


def test_matrix_entropy_isotropic_and_rank_r():
    x = _gauss(0, 4000, 16)
    np.testing.assert_allclose(_me(x), math.log(16), atol=0.01)
    np.testing.assert_allclose(_me(x, normalize=True), 1.0, atol=0.005)
    # exact: equal variances on r directions → ln r (row normalisation keeps it isotropic
    # within the subspace only approximately; switch it off for the exact value)
    q = _orthonormal_centered(1, 200, 5)
    v, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(12, 5)))
    xr = (q @ v.T).astype(np.float32)
    np.testing.assert_allclose(_me(xr, row_normalize=False), math.log(5), rtol=1e-5)
    # top-k keeps the k largest eigenvalues (1/5 each), not renormalised
    np.testing.assert_allclose(
        _me(xr, top_k=2, row_normalize=False), 2 / 5 * math.log(5), rtol=1e-5
    )


@pytest.mark.parametrize("top_k,normalize", [(None, False), (3, True)])
def test_matrix_entropy_vs_numpy(top_k, normalize, x64):
    x = np.random.default_rng(3).normal(size=(30, 8)) @ np.diag(np.linspace(0.2, 3, 8))
    np.testing.assert_allclose(
        _me(x, top_k=top_k, normalize=normalize),
        np_matrix_entropy(x, top_k, normalize),
        rtol=1e-10,
    )
    # N < D goes through the N×N Gram matrix: same answer
    xt = x[:6]
    np.testing.assert_allclose(_me(xt), np_matrix_entropy(xt), rtol=1e-10)


def test_matrix_entropy_grads(x64):
    x = np.random.default_rng(4).normal(size=(12, 5)) @ np.diag([3.0, 2, 1, 0.5, 0.25])
    both = jax.jit(lambda a: jnp.stack([matrix_entropy(a), matrix_entropy(a, top_k=2)]))
    check_grads(both, (x,), order=1, modes=("rev",))
    # rank-deficient and all-zero input: finite values and gradients
    xr = np.zeros((6, 4))
    xr[:, 0] = np.arange(6.0)
    grad = jax.jit(jax.value_and_grad(matrix_entropy))
    for a in (xr, np.zeros((6, 4))):
        v, g = grad(a)
        assert np.all(np.isfinite(g)) and np.isfinite(v)
    assert grad(np.zeros((6, 4)))[0] == 0.0


def test_errors():
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        matrix_entropy(np.ones(4))
    with pytest.raises(ValueError, match="top_k"):
        matrix_entropy(np.ones((4, 3)), top_k=0)
    with pytest.raises(ValueError, match="spectrum"):
        rankme(np.ones((4, 3)), spectrum="eig")
    with pytest.raises(ValueError, match="k_min"):
        alpha_req(np.ones((40, 3)))
    with pytest.raises(ValueError, match="sigma"):
        diffusion_spectral_entropy(np.ones((4, 3)), sigma=0.0)


# ---------------------------------------------------------------- RankMe


def test_rankme_isotropic_rank_r_and_numpy():
    x = _gauss(5, 3000, 16)
    assert 15.5 < _rankme(x) <= 16.0
    np.testing.assert_allclose(_rankme(x), np_rankme(x), rtol=1e-5)
    # rank-r with equal singular values → r; random rank-r → at most r
    q = _orthonormal_centered(6, 300, 4)
    v, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(20, 4)))
    np.testing.assert_allclose(_rankme((q @ v.T).astype(np.float32)), 4.0, rtol=1e-3)
    rng = np.random.default_rng(8)
    xr = (rng.normal(size=(300, 3)) @ rng.normal(size=(3, 20))).astype(np.float32)
    assert 2.0 < _rankme(xr) < 3.01
    np.testing.assert_allclose(_rankme(xr), np_rankme(xr), rtol=1e-4)
    # covariance spectrum (σ²) is more peaked than the singular one on anisotropic data
    xa = x * np.linspace(0.1, 2, 16, dtype=np.float32)
    assert _rankme(xa, spectrum="covariance") < _rankme(xa)


# ---------------------------------------------------------------- α-ReQ


@pytest.mark.parametrize("alpha", [0.8, 1.5, 2.5])
def test_alpha_req_recovers_power_law(alpha):
    d = 64
    q = _orthonormal_centered(9, 800, d)
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    x = (q * np.sqrt(lam)).astype(np.float32)
    np.testing.assert_allclose(_alpha(x), alpha, rtol=2e-3)


def test_alpha_req_vs_numpy_and_rank_deficient(x64):
    rng = np.random.default_rng(10)
    x = rng.normal(size=(200, 40)) * np.arange(1, 41) ** -0.7
    np.testing.assert_allclose(_alpha(x), np_alpha(x), rtol=1e-8)
    np.testing.assert_allclose(_alpha(x, k_min=2, k_max=20), np_alpha(x, 2, 20), rtol=1e-8)
    # zero eigenvalues beyond the rank are left out of the fit
    d = 30
    q = _orthonormal_centered(11, 300, 20)
    v, _ = np.linalg.qr(rng.normal(size=(d, 20)))
    xr = (q * np.arange(1, 21) ** -1.0) @ v.T  # λ_k ∝ k^-2 on 20 directions
    np.testing.assert_allclose(_alpha(xr), 2.0, rtol=1e-6)


# ---------------------------------------------------------------- DSE


def test_dse_hand_cases():
    # two points: K has eigenvalues {1, μ}; dropping 1 leaves one outcome → 0 bits
    assert _dse(np.array([[0.0, 0], [1, 0]]), sigma=1.0) == 0.0
    # equilateral triangle: two equal non-trivial eigenvalues → 1 bit
    tri = np.array([[0.0, 0], [1, 0], [0.5, math.sqrt(3) / 2]])
    np.testing.assert_allclose(_dse(tri, sigma=1.0), 1.0, rtol=1e-5)
    # base e: ln 2
    np.testing.assert_allclose(_dse(tri, sigma=1.0, base=math.e), math.log(2), rtol=1e-5)
    assert _dse(np.ones((1, 3))) == 0.0


@pytest.mark.parametrize("sigma,t", [(10.0, 1), (2.0, 3)])
def test_dse_vs_numpy(sigma, t, x64):
    x = np.random.default_rng(12).normal(size=(40, 6)) * 3
    np.testing.assert_allclose(_dse(x, sigma=sigma, t=t), np_dse(x, sigma, t), rtol=1e-8)


def test_dse_orders_structure():
    # a spread cloud has more diffusion entropy than the same cloud collapsed to 2 clusters
    rng = np.random.default_rng(13)
    spread = rng.normal(size=(60, 4)) * 3
    clusters = np.repeat(np.array([[0.0] * 4, [30.0] * 4]), 30, 0) + rng.normal(size=(60, 4)) * 0.1
    assert _dse(spread, sigma=2.0) > _dse(clusters, sigma=2.0)


def test_jit_all():
    x = _gauss(14, 32, 8)
    f = jax.jit(
        lambda a: jnp.stack(
            [
                matrix_entropy(a),
                rankme(a),
                alpha_req(a, k_min=2, k_max=8),
                diffusion_spectral_entropy(a),
            ]
        )
    )
    out = f(x)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[1], np_rankme(x), rtol=1e-5)
