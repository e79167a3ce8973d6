"""One teacher-forced policy log-prob function for the RL update, old-log-prob recompute and SFT.

::

    h      = model(tokens, return_hidden=True)          final-norm hidden states [B, T, D]
    z_t    = h_{t-1} · W / T                             W = model.unembedding() [D, V]
    logp_t = z_t[y_t] − logsumexp(z_t),   H_t = logsumexp(z_t) − Σ_v softmax(z_t)_v z_t,v

for the positions ``t = start … T_tokens − 1`` (``y_t = tokens[:, t]`` unless ``labels`` is
given): ``start = P`` scores the response after a ``P``-token prompt, ``start = 1`` is the
language-model loss. The default (fused) path streams the vocabulary in blocks
(:func:`entropylab.ops.fused_logprobs_and_entropy`, a ``custom_vjp``), so neither the forward nor
the backward materialises ``[B, T, V]`` logits; ``with_logits=True`` (an objective that needs the
full distribution, e.g. SIREN's top-p entropy) or ``fused=False`` takes the dense path
(``logprobs_and_entropy`` on float32 logits), which also returns ``z`` (temperature-scaled).
Both agree to float32 rounding (``tests/rl/step_test.py``).

The model contract is :class:`entropylab.rl.protocols.PolicyModel`: ``model(tokens, *,
positions, attention_mask, return_hidden=True) -> (hidden, aux)`` and ``model.unembedding()``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from entropylab.ops.entropy import logprobs_and_entropy
from entropylab.ops.fused import fused_logprobs_and_entropy

__all__ = ["PolicyLogProbs", "policy_logprobs", "valid_positions"]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PolicyLogProbs:
    """``logp, entropy [B, N]`` float32 (``entropy`` None when not asked for); ``logits``
    ``[B, N, V]`` float32 temperature-scaled, only on the dense path with ``with_logits``."""

    logp: Any
    entropy: Any = None
    logits: Any = None


def valid_positions(mask) -> jax.Array:
    """RoPE positions counting valid tokens only: ``max(cumsum(mask) − 1, 0)`` (left padding)."""
    return jnp.maximum(jnp.cumsum(jnp.asarray(mask).astype(jnp.int32), axis=-1) - 1, 0)


def policy_logprobs(
    model,
    tokens,
    *,
    start: int,
    attention_mask=None,
    positions=None,
    labels=None,
    temperature: float = 1.0,
    with_entropy: bool = True,
    with_logits: bool = False,
    fused: bool = True,
    vocab_block: int = 1024,
    chunk_size: int | None = None,
) -> PolicyLogProbs:
    """Log-probs (and entropies) of ``tokens[:, start:]`` under ``softmax(model logits / T)``.

    Args:
      model: a :class:`~entropylab.rl.protocols.PolicyModel` (e.g. ``models.Transformer``).
      tokens: int ``[B, S]``; ``start``: first scored position, ``1 <= start < S``.
      attention_mask: ``[B, S]`` valid tokens; ``positions`` default
        :func:`valid_positions` of it (``arange`` when no mask).
      labels: int ``[B, S − start]`` (default ``tokens[:, start:]``).
      temperature: static Python float > 0.
      with_logits / fused: see the module docstring. ``vocab_block``/``chunk_size``: fused path.
    Returns:
      :class:`PolicyLogProbs` of ``[B, S − start]`` float32 arrays.
    """
    tokens = jnp.asarray(tokens)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [B, S], got shape {tokens.shape}")
    if not isinstance(start, int) or not 1 <= start < tokens.shape[1]:
        raise ValueError(f"start must be an int in [1, {tokens.shape[1]}), got {start!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a static float > 0, got {temperature!r}")
    if positions is None and attention_mask is not None:
        positions = valid_positions(attention_mask)
    hidden, _ = model(
        tokens, positions=positions, attention_mask=attention_mask, return_hidden=True
    )
    h = hidden[:, start - 1 : -1]
    y = tokens[:, start:] if labels is None else jnp.asarray(labels)
    if y.shape != h.shape[:-1]:
        raise ValueError(f"labels must have shape {h.shape[:-1]}, got {y.shape}")
    w = model.unembedding().astype(h.dtype)
    if with_logits or not fused:
        z = jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)
        lp, ent = logprobs_and_entropy(z, y, temperature=temperature)
        return PolicyLogProbs(
            lp, ent if with_entropy else None, z / temperature if with_logits else None
        )
    lp, ent = fused_logprobs_and_entropy(
        h,
        w,
        y,
        temperature=float(temperature),
        vocab_block=vocab_block,
        chunk_size=chunk_size,
        with_entropy=with_entropy,
    )
    return PolicyLogProbs(lp, ent)
