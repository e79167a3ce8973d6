"""Named RNG streams: every key of an RL run is a ``fold_in`` chain from the run's root key.

::

    key(seed) ─ fold_in(STREAM) ─ fold_in(step) ─ fold_in(i₁) ─ fold_in(i₂) …

``STREAM`` is a named 32-bit constant (the ASCII bytes of a 4-letter tag), so two purposes never
share a chain prefix, and each index is folded in separately (no arithmetic packing): the old
``step * 1000 + epoch * 100 + minibatch`` collided as soon as ``epochs ≥ 10`` or
``minibatches ≥ 100`` (epoch 9, minibatch 100 == epoch 10, minibatch 0). ``fold_in`` is a
pseudo-random function of (key, data), so distinct chains give keys that collide only by chance
(probability ~n²/2⁶⁵ for n keys); ``tests/rl/rng_test.py`` checks realistic ranges exhaustively.

A seed replica (K seeds as one vmapped program) simply has its own root ``key(seed_k)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "EVAL",
    "LOSS",
    "ROLLOUT",
    "SHUFFLE",
    "TEMP_ROLLOUT",
    "root_key",
    "sample_keys",
    "stream",
]


def _tag(s: str) -> int:
    assert len(s) == 4
    return int.from_bytes(s.encode("ascii"), "big")


ROLLOUT = _tag("ROLL")  # per-sample sampler keys: (step, prompt, sample)
TEMP_ROLLOUT = _tag("TMPR")  # extra temperature samples (AEPO): (step, prompt, sample)
EVAL = _tag("EVAL")  # held-out evaluation samples: (prompt, sample), the same every eval
SHUFFLE = _tag("SHUF")  # minibatch permutation: (step, epoch)
LOSS = _tag("LOSS")  # the objective's key (Clip-Cov's random subset): (step, epoch, minibatch)


def root_key(seed: int) -> jax.Array:
    """The run's root key ``jax.random.key(seed)``."""
    return jax.random.key(seed)


def stream(key: jax.Array, name: int, *indices) -> jax.Array:
    """``fold_in(…fold_in(fold_in(key, name), indices[0])…, indices[-1])`` (traceable)."""
    k = jax.random.fold_in(key, name)
    for i in indices:
        k = jax.random.fold_in(k, jnp.asarray(i, jnp.uint32))
    return k


def sample_keys(key: jax.Array, name: int, step, prompt_index, sample_index) -> jax.Array:
    """Per-sample keys ``stream(key, name, step, i, j)`` for index arrays ``i, j`` (``[B]``)."""
    base = stream(key, name, step)
    fold = jax.vmap(lambda i, j: jax.random.fold_in(jax.random.fold_in(base, i), j))
    return fold(jnp.asarray(prompt_index, jnp.uint32), jnp.asarray(sample_index, jnp.uint32))
