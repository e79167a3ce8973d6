"""Dense token entropy and log-probabilities from logits (float32 whatever the input dtype).

Entropy is computed in the stable form H = logsumexp(z) − Σ_v softmax(z)_v · z_v, with the
shift by the row maximum, so no log-softmax tensor is built and ``-inf`` logits (masked
vocabulary entries) contribute exactly 0 to the value and to the gradient.

References: verl ``entropy_from_logits``; arXiv:2505.22617 (entropy as the tracked quantity).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _scaled_f32(logits, temperature):
    if isinstance(temperature, (int, float)) and not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = jnp.asarray(logits)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(
            f"logits must be floating point, got dtype {logits.dtype} (integer token ids are not "
            "logits; cast explicitly if you mean them as scores)"
        )
    if logits.ndim < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a vocabulary axis of size >= 1, got {logits.shape}")
    z = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    # Divide *after* the float32 upcast (bf16 division inflates the rollout/trainer log-prob gap).
    return z / jnp.asarray(temperature, z.dtype)


def _row_stats(z):
    """Shifted streaming-style row statistics of ``z[..., V]``.

    Returns (lse, mu) with lse = log Σ e^z and mu = E_p[z]; entropy is lse − mu. Rows whose
    entries are all ``-inf`` get lse = −inf-free placeholders (lse = 0, mu = 0) so that callers
    can mask them without NaNs.
    """
    finite = z != -jnp.inf  # NaN logits stay "finite" here so that they propagate, not vanish
    m = jax.lax.stop_gradient(jnp.max(jnp.where(finite, z, -jnp.inf), axis=-1, keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    zs = jnp.where(finite, z - m, 0.0)  # double-where: no (-inf) - m in the graph
    e = jnp.where(finite, jnp.exp(zs), 0.0)
    s = jnp.sum(e, axis=-1, keepdims=True)
    t = jnp.sum(e * zs, axis=-1, keepdims=True)
    empty = s <= 0
    s_safe = jnp.where(empty, 1.0, s)
    lse = jnp.where(empty, 0.0, jnp.log(s_safe) + m)
    mu = jnp.where(empty, 0.0, t / s_safe + m)
    return lse[..., 0], mu[..., 0]


def token_entropy(logits, *, temperature=1.0) -> jax.Array:
    """Full-vocabulary entropy of softmax(logits / temperature) per position.

    H(p) = −Σ_v p_v log p_v = logsumexp(z) − Σ_v p_v z_v,   z = logits / T.

    Args:
      logits: ``[..., V]`` (any float dtype; computed in float32 or wider).
      temperature: T > 0 (scalar or broadcastable ``[...]`` array).
    Returns:
      ``[...]`` entropy in nats, float32 (float64 for float64 input). A row of all ``-inf`` has
      entropy 0.

    References: arXiv:2505.22617 (Eq. for policy entropy H(π_θ)).
    """
    z = _scaled_f32(logits, _expand_t(temperature))
    lse, mu = _row_stats(z)
    return lse - mu


def _expand_t(temperature):
    if isinstance(temperature, (int, float)):
        return temperature
    return jnp.asarray(temperature)[..., None]


def logprobs_and_entropy(logits, labels, *, temperature=1.0) -> tuple[jax.Array, jax.Array]:
    """Log-probability of ``labels`` and the full-vocabulary entropy, per position.

    log π(y) = z_y − logsumexp(z),  H = logsumexp(z) − Σ_v p_v z_v,  z = logits / T.

    Args:
      logits: ``[..., V]`` floating point (integer dtypes raise ``TypeError``);
      labels: int ``[...]`` in [0, V).
      temperature: T > 0.
    Returns:
      ``(logp [...], entropy [...])`` in float32 (or wider). A label whose logit is ``-inf`` gets
      log-prob ``-inf`` (it has probability 0). A label outside ``[0, V)`` (negative included)
      gets a NaN log-prob, exactly as :func:`~entropylab.ops.fused_logprobs_and_entropy` does
      (no wrap-around of negative ids, no clamping); its entropy is still valid. Labels are not
      checked on the host (they are usually traced), so an out-of-range id shows up as NaN.

    References: verl ``logprobs_from_logits`` / ``entropy_from_logits``.
    """
    labels = jnp.asarray(labels)
    logits = jnp.asarray(logits)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels shape {labels.shape} must equal logits.shape[:-1] = {logits.shape[:-1]}"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    z = _scaled_f32(logits, _expand_t(temperature))
    lse, mu = _row_stats(z)
    v = z.shape[-1]
    y = labels.astype(jnp.int32)
    ok = (y >= 0) & (y < v)
    z_y = jnp.take_along_axis(z, jnp.where(ok, y, 0)[..., None], axis=-1)[..., 0]
    return jnp.where(ok, z_y - lse, jnp.nan), lse - mu


def logprobs(logits, labels, *, temperature=1.0) -> jax.Array:
    """Log-probability of ``labels`` only (see :func:`logprobs_and_entropy`)."""
    return logprobs_and_entropy(logits, labels, temperature=temperature)[0]


def attention_entropy(
    probs, mask=None, *, normalize: bool = False, from_logits: bool = False
) -> jax.Array:
    """Entropy of each attention row (query) over its visible keys.

    H_i = −Σ_{j ∈ K_i} a_ij ln a_ij   (0·ln 0 := 0),      Ĥ_i = H_i / ln n_i   (``normalize``)

    where K_i is the set of keys visible to query i (``mask``: causal and/or padding) and
    n_i = |K_i|. Rows with n_i ≤ 1 have Ĥ = 0 (their entropy is 0 anyway).

    Two inputs are accepted:

    * probabilities (default), e.g. Hugging Face ``output_attentions``: entries outside the mask
      are ignored, and the row is **not** renormalised (pass what softmax produced);
    * logits with ``from_logits=True`` (the exact scores fed to softmax, already scaled by
      1/√d and any temperature): masked keys are set to −inf and the entropy is computed as
      logsumexp(z) − Σ_j softmax(z)_j z_j, without materialising ``ln a`` (robust when a row is
      peaked; finite value and gradient for fully-masked rows, which give 0).

    Computed in float32 (or wider) whatever the input dtype (bf16 probabilities underflow).
    Aggregate with :func:`entropylab.ops.masked_mean` over the axes you want (Zhai et al.: mean
    over queries, heads and examples; Jha & Reagen: per head, mean over queries); averaging
    raw H over positions mixes scales (ln i grows with i), so prefer ``normalize=True`` there.

    Args:
      probs: ``[..., Tq, Tk]`` attention probabilities (or logits with ``from_logits``).
      mask: optional bool/0-1 array broadcastable to ``probs``; True = key visible. ``None``
        means every key is visible (n_i = Tk).
      normalize: divide by ln n_i.
      from_logits: interpret ``probs`` as pre-softmax scores.
    Returns:
      ``[..., Tq]`` entropy in nats (or normalised to [0, 1]).

    References: arXiv:2303.06296 (attention entropy collapse); arXiv:2401.07004 (EABF, entropy
    invariance ln n); arXiv:2501.03489 (entropy-guided attention, per-head mean over queries).
    """
    x = jnp.asarray(probs)
    if x.ndim < 2:
        raise ValueError(f"attention_entropy expects [..., Tq, Tk], got shape {x.shape}")
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    if mask is None:
        m = jnp.ones(x.shape, jnp.bool_)
    else:
        m = jnp.broadcast_to(jnp.asarray(mask) != 0, x.shape)
    if from_logits:
        lse, mu = _row_stats(jnp.where(m, x, -jnp.inf))
        h = lse - mu
    else:
        pos = m & (x > 0)
        x_safe = jnp.where(pos, x, 1.0)
        h = -jnp.sum(jnp.where(pos, x_safe * jnp.log(x_safe), 0.0), axis=-1)
    if normalize:
        n = jnp.sum(m, axis=-1).astype(h.dtype)
        ok = n > 1
        h = jnp.where(ok, h / jnp.log(jnp.where(ok, n, 2.0)), 0.0)
    return h
