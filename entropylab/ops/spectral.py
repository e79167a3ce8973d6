"""Representation-level spectral entropies and rank diagnostics of a token/sample matrix.

Inputs are representations ``x[N, D]`` (N samples or tokens, D features). All spectra are
computed in float32 (float64 under x64) from the smaller of the two Gram matrices (D×D or N×N;
they share their nonzero eigenvalues), with ``eigh``, so cost is O(min(N, D)³ + N·D·min(N, D)).

==============================  =========================================================
:func:`matrix_entropy`          UNComp trace-normalised covariance-spectrum entropy (top-k)
:func:`rankme`                  RankMe effective rank exp(H(p)), p ∝ singular values
:func:`alpha_req`               α-ReQ power-law decay exponent of the covariance spectrum
:func:`diffusion_spectral_entropy`  DSE of the data-graph diffusion operator (bits)
==============================  =========================================================
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_TINY = 1e-30


def _as_2d_float(x, name="x") -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, D] representations, got shape {x.shape}")
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _gram_eigvals(x) -> jax.Array:
    """Eigenvalues of XᵀX (descending, clipped at 0), via the smaller Gram matrix."""
    n, d = x.shape
    g = x.T @ x if d <= n else x @ x.T
    g = 0.5 * (g + g.T)
    w = jnp.linalg.eigvalsh(g)[::-1]
    return jnp.maximum(w, 0.0)


def _xlogx(p) -> jax.Array:
    """p·ln p with 0·ln 0 = 0 and a finite gradient at p = 0 (double where)."""
    ok = p > _TINY
    ps = jnp.where(ok, p, 1.0)
    return jnp.where(ok, ps * jnp.log(ps), 0.0)


def _prep(x, center: bool, row_normalize: bool) -> jax.Array:
    if center:
        x = x - jnp.mean(x, axis=0, keepdims=True)
    if row_normalize:
        sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
        ok = sq > 0
        x = jnp.where(ok, x * jax.lax.rsqrt(jnp.where(ok, sq, 1.0)), 0.0)
    return x


def matrix_entropy(
    x,
    *,
    top_k: int | None = None,
    center: bool = True,
    row_normalize: bool = True,
    normalize: bool = False,
) -> jax.Array:
    """Von Neumann entropy of the trace-normalised covariance of ``x`` (UNComp).

        X ← X − mean_rows(X);  x_i ← x_i / ‖x_i‖;  A = XᵀX / N;  Â = A / tr(A)
        H_k = −Σ_{i=1..k} σ_i ln σ_i,   σ_1 ≥ … ≥ σ_D the eigenvalues of Â (Σ σ_i = 1)

    Default: the full entropy (k = D) in nats, so isotropic data give ≈ ln D and rank-r data
    with equal variances give ln r. ``top_k`` keeps the k largest eigenvalues *without*
    renormalising them (UNComp's truncated matrix entropy; its code uses k = 32).
    ``normalize=True`` divides by ln D as UNComp's code does (H ∈ [0, 1] for k = D).
    ``center`` / ``row_normalize`` are UNComp's preprocessing (on by default). UNComp adds
    1e-10·I to Â; we instead clip eigenvalues at 0 and use 0·ln 0 = 0, which keeps the value
    and gradient finite for rank-deficient data. All-zero input gives 0.

    Args:
      x: ``[N, D]`` representations (tokens × features; per head, call once per head or vmap).
    Returns:
      scalar entropy (float32, or float64 for float64 input). Differentiable.

    References: UNComp arXiv:2410.03090.
    """
    x = _as_2d_float(x)
    d = x.shape[1]
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    x = _prep(x, center, row_normalize)
    w = _gram_eigvals(x)  # N·A eigenvalues; the 1/N cancels in the trace normalisation
    tr = jnp.sum(w)
    ok = tr > 0
    sig = jnp.where(ok, w / jnp.where(ok, tr, 1.0), 0.0)
    if top_k is not None:
        sig = sig[:top_k]
    h = -jnp.sum(_xlogx(sig))
    if normalize:
        h = h / jnp.log(jnp.asarray(max(d, 2), h.dtype))
    return h


def rankme(x, *, eps: float = 1e-7, spectrum: str = "singular") -> jax.Array:
    """RankMe effective rank: exp of the entropy of the normalised spectrum.

        p_k = s_k / Σ_j s_j + ε,     RankMe = exp(−Σ_k p_k ln p_k)

    ``spectrum="singular"`` (default, Garrido et al.): s_k are the singular values of the raw
    embedding matrix ``x`` (no centring). ``spectrum="covariance"`` (``reptrix.rankme``, used by
    arXiv:2509.23024): s_k are eigenvalues of the covariance of the centred ``x`` (σ_k²); this
    gives a smaller value for the same data. ε = 1e-7 as in the paper. Isotropic data give ≈ D,
    rank-r data with equal singular values give ≈ r. All-zero input gives exp(−min(N,D)·ε ln ε).

    Args:
      x: ``[N, D]``.
    Returns:
      scalar effective rank in [1, min(N, D)] (up to the ε terms).

    References: RankMe arXiv:2210.02885; arXiv:2509.23024 (LLM representation geometry).
    """
    if spectrum not in ("singular", "covariance"):
        raise ValueError(f"spectrum must be 'singular' or 'covariance', got {spectrum!r}")
    x = _as_2d_float(x)
    if spectrum == "covariance":
        x = x - jnp.mean(x, axis=0, keepdims=True)
        s = _gram_eigvals(x)
    else:
        # SVD, not sqrt(eig(XᵀX)): the square root would amplify round-off in the zero modes.
        s = jnp.linalg.svd(x, compute_uv=False)
    tot = jnp.sum(s)
    p = jnp.where(tot > 0, s / jnp.where(tot > 0, tot, 1.0), 0.0) + eps
    return jnp.exp(-jnp.sum(_xlogx(p)))


def alpha_req(x, *, k_min: int = 6, k_max: int = 100, center: bool = True) -> jax.Array:
    """α-ReQ: power-law decay exponent α of the covariance eigenspectrum, λ_k ∝ k^(−α).

    Fits ln λ_k = −α ln k + c by weighted least squares with weights 1/k over the 1-based ranks
    k_min ≤ k ≤ min(k_max, min(N, D)), as ``reptrix.alpha`` does (its 0-based ranks 5..99; it
    skips the head of the spectrum). Eigenvalues that are zero (below 1e-12 of the largest)
    are left out of the fit, so rank-deficient data fit only their nonzero part. Returns 0
    when fewer than two ranks are usable. Larger α = faster decay = more anisotropic.

    Args:
      x: ``[N, D]``; the fit needs min(N, D) ≥ k_min + 1.
      k_min, k_max: 1-based rank window of the fit.
      center: subtract the mean over rows first (covariance spectrum).
    Returns:
      scalar α.

    References: α-ReQ, Agrawal et al., NeurIPS 2022; arXiv:2509.23024 (reptrix usage).
    """
    if not 1 <= k_min < k_max:
        raise ValueError(f"need 1 <= k_min < k_max, got k_min={k_min}, k_max={k_max}")
    x = _as_2d_float(x)
    if center:
        x = x - jnp.mean(x, axis=0, keepdims=True)
    w = _gram_eigvals(x)
    hi = min(k_max, w.shape[0])
    if hi <= k_min:
        raise ValueError(
            f"alpha_req needs min(N, D) > k_min = {k_min} eigenvalues, got {w.shape[0]}"
        )
    lam = w[k_min - 1 : hi]
    k = jnp.arange(k_min, hi + 1, dtype=w.dtype)
    use = lam > 1e-12 * jnp.maximum(w[0], _TINY)
    wt = jnp.where(use, 1.0 / k, 0.0)
    xs = jnp.log(k)
    ys = jnp.where(use, jnp.log(jnp.where(use, lam, 1.0)), 0.0)
    sw = jnp.sum(wt)
    xm = jnp.sum(wt * xs) / jnp.where(sw > 0, sw, 1.0)
    ym = jnp.sum(wt * ys) / jnp.where(sw > 0, sw, 1.0)
    sxx = jnp.sum(wt * jnp.square(xs - xm))
    sxy = jnp.sum(wt * (xs - xm) * (ys - ym))
    ok = (jnp.sum(use) >= 2) & (sxx > 0)
    return jnp.where(ok, -sxy / jnp.where(ok, sxx, 1.0), 0.0)


def diffusion_spectral_entropy(x, *, sigma: float = 10.0, t: int = 1, base: float = 2.0):
    """Diffusion Spectral Entropy (DSE) of the point cloud ``x``, in bits by default.

        G_ij = exp(−‖x_i − x_j‖² / (2σ²)) / (σ√(2π)),   K = D^(−1/2) G D^(−1/2),  D = diag(G·1)
        drop the largest eigenvalue of K (λ = 1, trivial);  p_i = |λ_i|^t / Σ_j |λ_j|^t
        DSE = −Σ_i p_i log_base p_i

    K is the symmetric conjugate of the diffusion operator P = D⁻¹G (same eigenvalues). The
    Gaussian prefactor cancels in K; it is kept for fidelity. Defaults σ = 10, t = 1 and
    base 2 as in the reference code (``ChenLiu-1996/DiffusionSpectralEntropy`` ``api/dse.py``).
    O(N³): subsample large N first. Fewer than 2 points, or a spectrum that vanishes, give 0.

    Args:
      x: ``[N, D]``; sigma: kernel bandwidth > 0; t: diffusion time ≥ 1; base: log base.
    Returns:
      scalar DSE.

    References: arXiv:2312.04823.
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not isinstance(t, int) or t < 1:
        raise ValueError(f"t must be an int >= 1, got {t!r}")
    x = _as_2d_float(x)
    n = x.shape[0]
    if n < 2:
        return jnp.zeros((), x.dtype)
    sq = jnp.sum(jnp.square(x), axis=-1)
    d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    g = jnp.exp(-d2 / (2.0 * sigma**2)) / (sigma * jnp.sqrt(2.0 * jnp.pi))
    inv_sqrt_deg = jax.lax.rsqrt(jnp.sum(g, axis=-1))
    k = inv_sqrt_deg[:, None] * g * inv_sqrt_deg[None, :]
    lam = jnp.linalg.eigvalsh(0.5 * (k + k.T))[::-1][1:]
    a = jnp.abs(lam) ** t
    tot = jnp.sum(a)
    p = jnp.where(tot > 0, a / jnp.where(tot > 0, tot, 1.0), 0.0)
    return -jnp.sum(_xlogx(p)) / jnp.log(jnp.asarray(base, p.dtype))
