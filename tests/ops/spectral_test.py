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
_rankme = jax.jit(rankme, static_argnames=("eps", "spectrum", "max_eigenvals"))
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


def np_reptrix_rankme(x, max_eigenvals=2048, eps=1e-7):
    """Port of reptrix get_rankme: PCA explained-variance ratios of the top components, then
    p = λ / Σλ + ε over the kept ones (reptrix/rankme.py + utils.py @ f93c9b6)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(0)
    var = np.linalg.svd(x, compute_uv=False) ** 2  # PCA variances (up to 1/(N-1))
    ratio = (var / var.sum())[: min(max_eigenvals, *x.shape)]
    p = ratio / np.sum(np.abs(ratio)) + eps
    return math.exp(-np.sum(p * np.log(p)))


def np_reptrix_alpha(x, fit_range=None):
    """Port of reptrix get_alpha/get_powerlaw (reptrix/alpha.py @ f93c9b6): 0-based fit_range
    (default arange(10, 100)), y = ln|λ|[fit_range], x = [−ln(r+1), 1], weights 1/(r+1),
    solve the weighted normal equations; α = b[0]."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(0)
    lam = np.linalg.svd(x, compute_uv=False) ** 2
    lam = lam / lam.sum()
    tr = np.arange(10, 100) if fit_range is None else np.asarray(fit_range)
    y = np.log(np.abs(lam))[tr][:, None]
    r1 = tr + 1
    a = np.concatenate([-np.log(r1)[:, None], np.ones((r1.size, 1))], axis=1)
    w = 1.0 / r1[:, None]
    b = np.linalg.solve(a.T @ (a * w), (w * a).T @ y).ravel()
    return b[0]


def np_dse(x, sigma=10.0, t=1):
    """Port of the released dse_dsmi.diffusion_spectral_entropy (dse_dsmi/dse.py @ 179da11):
    all eigenvalues of K, |λ|^t normalised, + float64 eps, entropy in bits."""
    x = np.asarray(x, np.float64)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))  # pairwise_distances
    g = (1 / (sigma * np.sqrt(2 * np.pi))) * np.exp(-(d**2) / (2 * sigma**2))
    deg = np.diag(1 / np.sum(g, axis=1) ** 0.5)
    k = deg @ g @ deg
    ev = np.abs(np.linalg.eigvalsh(k)) ** t
    prob = ev / ev.sum() + np.finfo(float).eps
    return -np.sum(prob * np.log2(prob))


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


def test_rankme_covariance_keeps_top_eigenvalues_like_reptrix():
    # reptrix keeps the top min(2048, N, D) covariance eigenvalues and renormalises over them;
    # max_eigenvals=None is that default. The cut is exercised with a small max_eigenvals
    # (N, D > 2048 would cost an O(2048³) eigh here). The old code had no cut.
    x = _gauss(15, 50, 8) * np.array([4, 3, 2, 1.5, 1, 0.5, 0.3, 0.1], np.float32)
    np.testing.assert_allclose(_rankme(x, spectrum="covariance"), np_reptrix_rankme(x), rtol=1e-5)
    got3 = _rankme(x, spectrum="covariance", max_eigenvals=3)
    np.testing.assert_allclose(got3, np_reptrix_rankme(x, max_eigenvals=3), rtol=1e-5)
    assert got3 < 3.0 < _rankme(x, spectrum="covariance")
    # hand case: equal variances on 4 centred directions; keeping 2 gives exp(ln 2) = 2
    q = _orthonormal_centered(16, 40, 4).astype(np.float32)
    np.testing.assert_allclose(_rankme(q, spectrum="covariance", max_eigenvals=2), 2.0, rtol=1e-5)
    assert rankme.__kwdefaults__["max_eigenvals"] is None
    with pytest.raises(ValueError, match="max_eigenvals"):
        rankme(x, spectrum="covariance", max_eigenvals=0)


# ---------------------------------------------------------------- α-ReQ


@pytest.mark.parametrize("alpha", [0.8, 1.5, 2.5])
def test_alpha_req_recovers_power_law(alpha):
    d = 64
    q = _orthonormal_centered(9, 800, d)
    lam = np.arange(1, d + 1, dtype=np.float64) ** -alpha
    x = (q * np.sqrt(lam)).astype(np.float32)
    np.testing.assert_allclose(_alpha(x), alpha, rtol=2e-3)


def test_alpha_req_default_window_is_current_reptrix(x64):
    # reptrix @ f93c9b6: fit_range = arange(10, 100) 0-based → ranks 11..100 (not 6..100)
    rng = np.random.default_rng(10)
    x = rng.normal(size=(150, 104)) * np.arange(1, 105) ** -0.7 * (1 + 0.3 * rng.random(104))
    np.testing.assert_allclose(_alpha(x), np_reptrix_alpha(x), rtol=1e-8)
    older = np_reptrix_alpha(x, np.arange(5, 100))
    np.testing.assert_allclose(_alpha(x, k_min=6), older, rtol=1e-8)
    assert abs(older - np_reptrix_alpha(x)) > 1e-3  # the two windows do differ on this data


@pytest.mark.parametrize(
    "n,r,d,offset", [(50, 30, 128, 0.0), (100, 40, 64, 3.0), (20, 19, 24, 0.0)]
)
def test_alpha_req_rank_deficient_float32(n, r, d, offset):
    # library default dtype. Analytic case: a centred batch of n ≤ 100 rows whose covariance has
    # exactly λ_k ∝ k^-2 for k ≤ r and λ_k = 0 beyond (r ≤ n − 1 < window end 100). The fit must
    # use the non-null ranks only → α = 2 exactly. The old 1e-12·λ_max cut-off let float32
    # round-off eigenvalues into the fit (5.1, 7.8 on the first two cases).
    q = _orthonormal_centered(11, n, r)
    v, _ = np.linalg.qr(np.random.default_rng(12).normal(size=(d, r)))
    x = ((q * np.arange(1, r + 1) ** -1.0) @ v.T + offset).astype(np.float32)
    assert x.dtype == np.float32 and not jax.config.jax_enable_x64
    k_min = 11 if r > 11 else 2
    np.testing.assert_allclose(_alpha(x, k_min=k_min), 2.0, rtol=1e-4)


def test_alpha_req_rank_deficient_float64(x64):
    rng = np.random.default_rng(13)
    q = _orthonormal_centered(11, 300, 20)
    v, _ = np.linalg.qr(rng.normal(size=(30, 20)))
    xr = (q * np.arange(1, 21) ** -1.0) @ v.T  # λ_k ∝ k^-2 on 20 directions
    np.testing.assert_allclose(_alpha(xr), 2.0, rtol=1e-10)
    np.testing.assert_allclose(_alpha(xr, k_min=2, k_max=19), 2.0, rtol=1e-10)


# ---------------------------------------------------------------- DSE


def _h2(p):
    p = np.asarray(p, np.float64)
    return float(-np.sum(p * np.log2(p)))


def test_dse_hand_cases():
    # float32 (default). All eigenvalues count, the trivial λ = 1 included (released dse_dsmi;
    # the old code dropped it and gave 0 and 1.0 bits here).
    e = math.exp(-0.5)  # Gaussian affinity at distance 1 with σ = 1
    # two points: K = [[1, e], [e, 1]] / (1 + e) → λ = {1, (1 − e)/(1 + e) = tanh(1/4)}
    mu2 = (1 - e) / (1 + e)
    ref2 = _h2(np.array([1, mu2]) / (1 + mu2))
    assert abs(ref2 - 0.71535) < 1e-5
    two = np.array([[0.0, 0], [1, 0]], np.float32)
    np.testing.assert_allclose(_dse(two, sigma=1.0), ref2, rtol=1e-5)
    # equilateral triangle: λ = {1, μ, μ}, μ = (1 − e)/(1 + 2e)
    mu3 = (1 - e) / (1 + 2 * e)
    ref3 = _h2(np.array([1, mu3, mu3]) / (1 + 2 * mu3))
    assert abs(ref3 - 1.09253) < 1e-5
    tri = np.array([[0.0, 0], [1, 0], [0.5, math.sqrt(3) / 2]], np.float32)
    np.testing.assert_allclose(_dse(tri, sigma=1.0), ref3, rtol=1e-5)
    np.testing.assert_allclose(_dse(tri, sigma=1.0, base=math.e), ref3 * math.log(2), rtol=1e-5)
    np.testing.assert_allclose(_dse(tri, sigma=1.0), np_dse(tri, 1.0), rtol=1e-5)
    assert _dse(np.ones((1, 3))) == 0.0


def test_dse_translation_invariant_float32():
    # float32 input far from the origin: the same (rounded) points, shifted by 3000, must give the
    # float64 reference's value. Without centring the ‖x_i‖² + ‖x_j‖² − 2x_i·x_j distances
    # cancel catastrophically (old code: 2.68 → 4.77 bits at σ = 10, 5.09 → 4.94 at σ = 1).
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    xs = (x + np.float32(3000)).astype(np.float32)
    for sigma in (1.0, 10.0):
        ref = np_dse(xs, sigma)  # float64 on exactly the rounded float32 points
        np.testing.assert_allclose(_dse(xs, sigma=sigma), ref, rtol=2e-5)
        np.testing.assert_allclose(_dse(x, sigma=sigma), np_dse(x, sigma), rtol=2e-5)


@pytest.mark.parametrize("sigma,t", [(10.0, 1), (2.0, 3)])
def test_dse_vs_numpy(sigma, t, x64):
    x = np.random.default_rng(12).normal(size=(40, 6)) * 3
    # the reference adds float64 eps to each p (≤ 40·1.2e-14 bits): below rtol
    np.testing.assert_allclose(_dse(x, sigma=sigma, t=t), np_dse(x, sigma, t), rtol=1e-10)


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
