"""entropylab: entropy dynamics in language models, in JAX.

Layers (imports point down only): ``ops`` and ``losses`` and ``laws`` (pure jnp) ← ``models``
(Flax NNX, used functionally) ← ``train`` / ``rl`` ← ``experiments`` / ``notebooks`` / ``bench``.
"""

__version__ = "0.1.0"
