"""The model contract the RL engine relies on (any Flax NNX module with these methods works).

``entropylab.models.Transformer`` implements it. The trainer splits the model with
``nnx.split(model, nnx.Param, ...)`` and merges it inside jitted functions, so the methods must
be traceable and the parameters ``nnx.Param`` variables.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax

__all__ = ["PolicyModel"]


@runtime_checkable
class PolicyModel(Protocol):
    """What :mod:`entropylab.rl` calls on a model.

    * ``__call__(tokens [B, S], *, positions [B, S], attention_mask [B, S], return_hidden=True)
      -> (hidden [B, S, D], aux)``: teacher-forced forward returning the final-norm hidden
      states (the log-prob function applies the unembedding itself, fused or dense).
    * ``unembedding() -> [D, V]``: the output matrix (``embedding.T`` when tied).
    * ``init_cache(batch_size, max_len) -> cache`` and ``decode(tokens, cache, *, positions,
      attention_mask) -> (logits [B, T, V] float32, cache)``: the KV-cache sampler.
    * ``config.vocab_size``: checked against the tokenizer at trainer construction.
    """

    config: Any

    def __call__(self, tokens, *, positions=None, attention_mask=None, return_hidden=False): ...

    def unembedding(self) -> jax.Array: ...

    def init_cache(self, batch_size: int, max_len: int): ...

    def decode(self, tokens, cache, *, positions=None, attention_mask=None): ...
