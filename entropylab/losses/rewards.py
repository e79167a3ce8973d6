"""Entropy- and length-shaped rewards: PEAR phase-entropy reward, DAPO overlong shaping.

ARES' hierarchical entropy reward lives in :mod:`entropylab.losses.ares`. Every shaper returns a
per-sequence reward ``[B]`` (plus metrics); :func:`place_on_last_token` puts it on the last valid
token as verl's reward managers do.

**PEAR** (arXiv:2510.08026). The exact functional form and coefficients were not retrievable
(the repository ``iNLP-Lab/PEAR`` was not readable; only the abstract and summaries were). The
abstract's mechanism — penalise thinking-phase entropy, allow moderate answer-phase entropy, no
length target — is implemented as::

    H̄_think = mean_{t < b_i} H_{i,t},   H̄_ans = mean_{t ≥ b_i} H_{i,t}   (valid tokens)
    R_i = score_i − λ_think · H̄_think − λ_ans · max(0, H̄_ans − τ_ans)

with ``b_i`` the index of the first answer-phase token (the token after ``</think>``). A response
without a boundary (``b_i < 0`` or ``b_i ≥ T``) is all thinking. Defaults λ_think = 0.5,
λ_ans = 0.5, τ_ans = 0.5 nats are ours. ``gate="correct"`` applies the entropy terms to correct
responses only (``score > 0``). The entropies are π_old's (computed before the reward, which
moves the reward after the old-log-prob pass, as PEAR's README does); no gradient flows.

**DAPO overlong reward shaping** (arXiv:2503.14476, Eq. 13)::

    R_len(y) = 0                                  |y| ≤ L_max − L_cache
             = ((L_max − L_cache) − |y|) / L_cache    L_max − L_cache < |y| ≤ L_max
             = −1                                 |y| > L_max

times ``penalty_factor`` (verl). verl's ``DAPORewardManager`` does not floor at −1 (lengths
cannot exceed ``L_max`` there); ``clip=False`` gives that unfloored form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["dapo_overlong_penalty", "pear_rewards", "phase_entropies", "place_on_last_token"]

_GATES = ("all", "correct")


def place_on_last_token(seq_rewards, mask) -> jax.Array:
    """Put a per-sequence reward ``[B]`` on the last valid token of each row → ``[B, T]``.

    Rows with no valid token get all zeros.
    """
    r = jnp.asarray(seq_rewards)
    m = jnp.asarray(mask) != 0
    t = m.shape[-1]
    last = t - 1 - jnp.argmax(m[:, ::-1], axis=-1)
    onehot = (jnp.arange(t)[None, :] == last[:, None]) & jnp.any(m, -1, keepdims=True)
    return jnp.where(onehot, r[:, None], 0.0).astype(jnp.result_type(r.dtype, jnp.float32))


def phase_entropies(entropy, mask, boundary) -> dict[str, jax.Array]:
    """Mean token entropy of the thinking (``t < b_i``) and answer (``t ≥ b_i``) phases.

    Args:
      entropy, mask: ``[B, T]``. boundary: ``[B]`` int, first answer-phase position; ``< 0`` or
        ``≥ T`` means no answer phase.
    Returns:
      dict of ``[B]`` arrays ``think``, ``answer`` (means, 0 for an empty phase),
      ``think_len``, ``answer_len`` (valid-token counts).

    Released code: none (see :func:`pear_rewards`).
    """
    h = jax.lax.stop_gradient(jnp.asarray(entropy))
    h = h.astype(jnp.result_type(h.dtype, jnp.float32))
    m = jnp.asarray(mask) != 0
    t = m.shape[-1]
    b = jnp.asarray(boundary).astype(jnp.int32)
    b = jnp.where((b < 0) | (b >= t), t, b)
    pos = jnp.arange(t)[None, :]
    think = m & (pos < b[:, None])
    ans = m & (pos >= b[:, None])

    def mean(sel):
        n = jnp.sum(sel, -1)
        s = jnp.sum(jnp.where(sel, h, 0.0), -1)
        return jnp.where(n > 0, s / jnp.maximum(n, 1).astype(s.dtype), 0.0), n

    ht, nt = mean(think)
    ha, na = mean(ans)
    return {"think": ht, "answer": ha, "think_len": nt, "answer_len": na}


def pear_rewards(
    scores,
    entropy,
    mask,
    boundary,
    *,
    think_coef: float = 0.5,
    answer_coef: float = 0.5,
    answer_tolerance: float = 0.5,
    gate: str = "all",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PEAR phase-entropy-aware reward ``[B]`` (our formulation; see the module docstring).

    Args:
      scores: ``[B]`` correctness (format) score, e.g. 1.0 / 0.0.
      entropy, mask: ``[B, T]`` π_old token entropies and response mask.
      boundary: ``[B]`` index of the first answer-phase token.
    Returns:
      ``(rewards [B], metrics)`` with metrics ``pear/think_entropy``, ``pear/answer_entropy``,
      ``pear/think_len`` (batch means).

    Released code: none could be checked (``iNLP-Lab/PEAR`` is not in any readable mirror and
    no other public implementation was found), so this form is ours, not PEAR's; the tests
    check it against hand-worked numbers.
    """
    if think_coef < 0 or answer_coef < 0 or answer_tolerance < 0:
        raise ValueError(
            "think_coef, answer_coef and answer_tolerance must be >= 0, got "
            f"{think_coef}, {answer_coef}, {answer_tolerance}"
        )
    if gate not in _GATES:
        raise ValueError(f"gate must be one of {_GATES}, got {gate!r}")
    s = jnp.asarray(scores)
    s = s.astype(jnp.result_type(s.dtype, jnp.float32))
    ph = phase_entropies(entropy, mask, boundary)
    pen = think_coef * ph["think"] + answer_coef * jnp.maximum(ph["answer"] - answer_tolerance, 0)
    if gate == "correct":
        pen = jnp.where(s > 0, pen, 0.0)
    r = s - pen.astype(s.dtype)
    metrics = {
        "pear/think_entropy": jnp.mean(ph["think"]),
        "pear/answer_entropy": jnp.mean(ph["answer"]),
        "pear/think_len": jnp.mean(ph["think_len"].astype(jnp.float32)),
    }
    return r, metrics


def dapo_overlong_penalty(
    lengths,
    *,
    max_length: int,
    buffer_length: int,
    penalty_factor: float = 1.0,
    clip: bool = True,
) -> jax.Array:
    """DAPO soft overlong punishment ``R_len`` per sequence (add it to the correctness reward).

    Args:
      lengths: ``[B]`` response lengths |y| (ints or floats).
      max_length: L_max (verl: ``max_response_length``). buffer_length: L_cache (verl
        ``overlong_buffer.len``), 0 < L_cache ≤ L_max. penalty_factor: scale (verl 1.0).
      clip: floor at −penalty_factor for |y| > L_max (paper); False = verl's unfloored line.
    Returns:
      ``[B]`` float penalty ≤ 0.

    References: arXiv:2503.14476 (soft overlong punishment); verl ``DAPORewardManager``.
    """
    if not 0 < buffer_length <= max_length:
        raise ValueError(
            f"need 0 < buffer_length <= max_length, got buffer_length={buffer_length}, "
            f"max_length={max_length}"
        )
    if penalty_factor < 0:
        raise ValueError(f"penalty_factor must be >= 0, got {penalty_factor}")
    n = jnp.asarray(lengths).astype(jnp.float32)
    expected = max_length - buffer_length
    r = jnp.minimum(0.0, (expected - n) / buffer_length)
    if clip:
        r = jnp.maximum(r, -1.0)
    return penalty_factor * r
