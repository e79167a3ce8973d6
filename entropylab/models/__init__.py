"""Models: decoder-only transformer (Flax NNX, used functionally), RoPE scalings, HF import.

cfg = TransformerConfig.tiny(vocab_size=256)
model = Transformer(cfg, rngs=nnx.Rngs(0))
logits, aux = model(tokens, aux=("attn_entropy",))   # aux: ModelAux, aux.attn_entropy [L, H]
graphdef, state = nnx.split(model)          # at the jit boundary
logits, aux = forward(graphdef, state, tokens)
"""

from entropylab.models.config import TransformerConfig
from entropylab.models.hf_import import config_from_hf, load_hf_checkpoint
from entropylab.models.rope import (
    RopeConfig,
    apply_rope,
    attention_logit_scale,
    rope_config_from_hf,
    rope_frequencies,
    rope_types,
)
from entropylab.models.transformer import KVCache, ModelAux, Transformer, forward

__all__ = [
    "KVCache",
    "ModelAux",
    "RopeConfig",
    "Transformer",
    "TransformerConfig",
    "apply_rope",
    "attention_logit_scale",
    "config_from_hf",
    "forward",
    "load_hf_checkpoint",
    "rope_config_from_hf",
    "rope_frequencies",
    "rope_types",
]
