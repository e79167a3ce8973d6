"""TransformerConfig: presets, parameter counts, validation errors."""

import dataclasses

import jax
import pytest
from flax import nnx

from entropylab.models import RopeConfig, Transformer, TransformerConfig


def _count(cfg):
    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("preset", ["smoke", "tiny", "small_cpu"])
def test_cpu_presets_param_count(preset):
    cfg = getattr(TransformerConfig, preset)(vocab_size=256)
    assert cfg.num_params == _count(cfg)
    lo, hi = {"smoke": (1e4, 1e5), "tiny": (1e6, 5e6), "small_cpu": (1e7, 2e7)}[preset]
    assert lo <= cfg.num_params <= hi


def test_full_size_presets_match_published_counts():
    # Hugging Face model cards / safetensors totals.
    assert TransformerConfig.llama2_7b().num_params == 6_738_415_616
    assert TransformerConfig.llama3_8b().num_params == 8_030_261_248
    assert TransformerConfig.llama31_8b().num_params == 8_030_261_248
    assert TransformerConfig.qwen2_7b().num_params == 7_615_616_512
    cfg = TransformerConfig.llama31_8b()
    assert cfg.rope.rope_type == "llama3" and cfg.rope.base == 500_000.0
    assert TransformerConfig.qwen2_7b().qkv_bias and TransformerConfig.qwen2_7b().n_kv_heads == 4


def test_derived_fields_and_hashable():
    cfg = TransformerConfig(vocab_size=10, d_model=16, n_layers=1, n_heads=4, d_ff=8)
    assert cfg.n_kv_heads == 4 and cfg.head_dim == 4
    assert cfg.rope == RopeConfig(head_dim=4, max_position_embeddings=cfg.max_seq_len)
    assert cfg.param_dtype == "float32" and cfg.dtype == "float32"
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    bf = dataclasses.replace(cfg, dtype=jax.numpy.bfloat16)
    assert bf.dtype == "bfloat16"
    assert cfg.with_rope("linear", factor=2.0).rope.param_dict == {"factor": 2.0}


BAD = [
    (dict(vocab_size=0), "vocab_size"),
    (dict(n_layers=-1), "n_layers"),
    (dict(n_heads=3), "head_dim"),  # 32 % 3 != 0 and no head_dim given
    (dict(n_kv_heads=3), "n_kv_heads"),
    (dict(head_dim=7), "head_dim"),
    (dict(norm="batchnorm"), "norm"),
    (dict(mlp="geglu"), "mlp"),
    (dict(dtype="int8"), "dtype"),
    (dict(param_dtype="float8"), "param_dtype"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(init_std=-1.0), "init_std"),
    (dict(attn_temperature_init=0.0), "attn_temperature_init"),
    (dict(attn_logit_softcap=-2.0), "attn_logit_softcap"),
    (dict(attn_query_block=-1), "attn_query_block"),
    (dict(attn_query_block=16.0), "attn_query_block"),
    (dict(tie_embeddings=1), "tie_embeddings"),
    (dict(rope=RopeConfig(head_dim=16)), "rope.head_dim"),
    (dict(rope={"rope_type": "linear"}), "rope"),
]


@pytest.mark.parametrize("kw,field", BAD)
def test_validation_errors_name_the_field(kw, field):
    base = dict(vocab_size=16, d_model=32, n_layers=2, n_heads=4, d_ff=64)
    with pytest.raises(ValueError, match=field):
        TransformerConfig(**{**base, **kw})


def test_replace_is_validated_and_kw_only():
    cfg = TransformerConfig.smoke()
    with pytest.raises(ValueError, match="mlp"):
        dataclasses.replace(cfg, mlp="nope")
    with pytest.raises(TypeError):
        TransformerConfig(16, 32, 2, 4, 64)  # keyword-only
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.d_model = 3
    with pytest.raises(ValueError, match="rope_type"):
        cfg.with_rope("no_such_rope")
