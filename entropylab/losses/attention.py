"""Attention-entropy regulariser of entropy-guided attention (Jha & Reagen, arXiv:2501.03489).

Each head h of layer l gets a learnable threshold θ_{l,h} (a fraction of the maximum entropy);
its attention entropy is pulled toward θ_{l,h}·E_max, with a dead zone of ±γ·E_max:

    E_max = ln T                         (T = context size)
    δ     = E − θ_{l,h} · E_max
    pen   = δ²  if |δ| > γ · E_max  else 0
    L_ent = mean_l mean_h pen ;   loss = λ · L_ent       (added to the cross-entropy)

Two ways to form E and average ``pen`` (``reduction``):

* ``"paper"`` (default, the paper's Algorithm 1): E_{l,h} is the head's entropy averaged over
  its (valid) query rows (the paper's per-head entropy, Eq. 7) and over the batch; one penalty
  per (l, h); mean over heads, then over layers.
* ``"released"`` (the authors' code, ``Nandan91/entropy-guided-attention-llm``
  ``entropy_regularization.py`` @8592b755349e5edb3992fb9abce66e721b1a6b80,
  ``EntropyRegularization.compute_loss``): the penalty is applied to *each query row's*
  entropy and **summed** over batch and query rows; then divided by the number of heads and
  averaged over layers. The loss therefore grows with B·T (one reason its λ = 1e-5 is small).

Both use E_max = ln(``context_size``) for every row (the code infers ``context_size`` from the
attention matrix's last dimension, the default here; under a causal mask row i can only reach
ln i). The code computes the entropy from probabilities as −nansum(a·ln(a + 1e-9)); here the
entropy map comes in (``Transformer(..., aux=("attn_entropy_map",))`` gives it from the
logits, exact), so that 1e-9 shift is not reproduced. The code's ``usage_example.py`` reuses
the first block's thresholds for every layer; pass an ``[H]`` threshold vector to get that,
``[L, H]`` for the paper's Θ ∈ R^{L×H}.

Defaults γ = 0.20 (paper text and code; the paper's appendix listing uses 0.10) and
λ = 1e-5 (CodeParrot; the paper uses 5e-5 for Languini). The thresholds are learnable: the
gradient of ``loss`` reaches them (and the entropies) wherever |δ| > γ·E_max.

NaN policy: a NaN entropy (or threshold) at a valid row gives a NaN loss, never a zero penalty
(|NaN| > tol is False, so the penalty is written as ``where(|δ| <= tol, 0, δ²)``). Rows with
``mask == 0`` are excluded; ``mask`` values are row weights (0/1 in practice), and a mask with
no valid row gives NaN (0/0), not 0.

Shapes: ``entropy [L, B, H, T]`` (per query row), ``thresholds [L, H]`` or ``[H]``,
``mask [B, T]`` (1 = valid query row). Pure ``jnp``; float32 or wider.

Not registered in the loss registry (it acts on attention entropies, not token log-probs): call it
beside the LM loss.

References: arXiv:2501.03489 (entropy regularisation, Algorithm 1; per-head entropy Eq. 7);
released code as cited above.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

__all__ = ["ATTN_REG_REDUCTIONS", "attention_entropy_regularizer"]

ATTN_REG_REDUCTIONS = ("paper", "released")


def _scalar(name: str, v, *, lo: float = 0.0) -> float:
    """A finite Python float >= lo (arrays only if 0-d; bools rejected)."""
    if isinstance(v, bool):
        raise ValueError(f"{name} must be a finite number >= {lo}, got {v!r}")
    try:
        if hasattr(v, "shape") and v.shape != ():
            raise ValueError(f"{name} must be a scalar, got shape {v.shape}")
        f = float(v)
    except TypeError as e:
        raise ValueError(f"{name} must be a finite number >= {lo}, got {v!r}") from e
    if not math.isfinite(f) or f < lo:
        raise ValueError(f"{name} must be a finite number >= {lo}, got {v!r}")
    return f


def attention_entropy_regularizer(
    entropy,
    thresholds,
    mask=None,
    *,
    context_size: int | None = None,
    tolerance: float = 0.20,
    coeff: float = 1e-5,
    reduction: str = "paper",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """λ · L_ent of arXiv:2501.03489 (module docstring) and diagnostics.

    Args:
      entropy: ``[L, B, H, T]`` attention entropy of every query row (nats).
      thresholds: ``[L, H]`` (or ``[H]``, shared by all layers) learnable θ, fractions of E_max.
      mask: optional ``[B, T]`` valid query rows (1/True = counted); default all rows.
      context_size: T in E_max = ln T (int >= 2); default ``entropy.shape[-1]``.
      tolerance: γ (>= 0); the dead zone is ±γ·E_max.
      coeff: λ (>= 0).
      reduction: ``"paper"`` (head mean entropy, then penalty) or ``"released"`` (penalty per
        row, summed over batch and rows).
    Returns:
      ``(loss, metrics)``: scalar loss = λ·L_ent; metrics ``attn_reg/penalty`` (L_ent),
      ``attn_reg/frac_outside`` (share of penalised heads, or rows for ``"released"``) and
      ``attn_reg/head_entropy`` ``[L, H]`` (masked mean over batch and rows).
    Raises:
      ValueError: bad shapes or dtype, non-finite / negative / array-valued hyper-parameters,
        unknown reduction, a context size < 2.
    """
    if reduction not in ATTN_REG_REDUCTIONS:
        raise ValueError(f"reduction must be one of {ATTN_REG_REDUCTIONS}, got {reduction!r}")
    tol_frac = _scalar("tolerance", tolerance)
    lam = _scalar("coeff", coeff)
    entropy = jnp.asarray(entropy)
    if entropy.ndim != 4:
        raise ValueError(f"entropy must be [L, B, H, T], got shape {entropy.shape}")
    if not jnp.issubdtype(entropy.dtype, jnp.floating):
        raise ValueError(f"entropy must be a float array, got dtype {entropy.dtype}")
    n_layers, b, h, t = entropy.shape
    dt = jnp.promote_types(entropy.dtype, jnp.float32)
    entropy = entropy.astype(dt)
    thresholds = jnp.asarray(thresholds)
    if thresholds.shape == (h,):
        thresholds = jnp.broadcast_to(thresholds, (n_layers, h))
    if thresholds.shape != (n_layers, h):
        raise ValueError(
            f"thresholds must be [L, H] = {(n_layers, h)} or [H] = {(h,)}, "
            f"got shape {thresholds.shape}"
        )
    thresholds = thresholds.astype(dt)
    if context_size is None:
        context_size = t
    if isinstance(context_size, bool) or not isinstance(context_size, int) or context_size < 2:
        raise ValueError(f"context_size must be an int >= 2, got {context_size!r}")
    if mask is None:
        m = jnp.ones((b, t), dt)
    else:
        mask = jnp.asarray(mask)
        if mask.shape != (b, t):
            raise ValueError(f"mask must be [B, T] = {(b, t)}, got shape {mask.shape}")
        m = mask.astype(dt)
    e_max = math.log(context_size)
    tol = tol_frac * e_max
    n_valid = jnp.sum(m)
    mb = m[None, :, None, :]  # [1, B, 1, T]
    head_entropy = jnp.sum(jnp.where(mb > 0, entropy, 0.0) * mb, axis=(1, 3)) / n_valid  # [L, H]

    def penalty(delta):
        return jnp.where(jnp.abs(delta) <= tol, 0.0, jnp.square(delta))

    if reduction == "paper":
        delta = head_entropy - thresholds * e_max  # [L, H]
        pen = penalty(delta)
        l_ent = jnp.mean(pen)
        outside = jnp.mean((jnp.abs(delta) > tol).astype(dt))
    else:
        delta = entropy - (thresholds * e_max)[:, None, :, None]  # [L, B, H, T]
        pen = jnp.where(mb > 0, penalty(delta), 0.0) * mb
        l_ent = jnp.mean(jnp.sum(pen, axis=(1, 3)))  # Σ over batch and rows; mean over l and h
        hits = jnp.where(mb > 0, (jnp.abs(delta) > tol).astype(dt), 0.0) * mb
        outside = jnp.sum(hits) / (n_valid * n_layers * h)
    loss = lam * l_ent
    metrics = {
        "attn_reg/penalty": l_ent,
        "attn_reg/frac_outside": outside,
        "attn_reg/head_entropy": head_entropy,
    }
    return loss, metrics
