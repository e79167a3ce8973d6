"""HF import: tiny random Llama / Qwen2 built with transformers, saved, imported; logits match."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_torch = pytest.importorskip("safetensors.torch")

from entropylab.models import load_hf_checkpoint  # noqa: E402

BASE = dict(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    rope_theta=100.0,
    initializer_range=0.2,
    rms_norm_eps=1e-6,
)

# (rope_scaling, max_position_embeddings, sequence length that exercises the scaling)
CASES = {
    "default": (None, 16, 12),
    "linear": ({"rope_type": "linear", "factor": 2.0}, 16, 20),
    "dynamic": ({"rope_type": "dynamic", "factor": 2.0}, 16, 28),  # T > L: NTK base grows
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}, 32, 28),
    # head_dim 16, θ = 100: wavelengths 6.3 … 353 cover keep / smooth / scale for L_orig = 32.
    "llama3": (
        {
            "rope_type": "llama3",
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        128,
        40,
    ),
}


def _save(tmp_path, cls_name, cfg_cls_name, *, shard=None, **kw):
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls_name)(**{**BASE, **kw}, attn_implementation="eager")
    model = getattr(transformers, cls_name)(cfg).eval()
    with torch.no_grad():  # non-zero biases / norm scales so the mapping is checked
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    extra = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(tmp_path, **extra)
    return model


def _compare(hf_model, path, t):
    tokens = np.random.RandomState(0).randint(0, BASE["vocab_size"], (2, t))
    with torch.no_grad():
        ref = hf_model(torch.tensor(tokens)).logits.numpy()
    cfg, model = load_hf_checkpoint(path)
    logits, _ = model(jnp.asarray(tokens))
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=1e-4)
    return cfg, model


@pytest.mark.parametrize("case", list(CASES))
def test_llama_logits_match(tmp_path, case):
    rope_scaling, max_pos, t = CASES[case]
    hf = _save(
        tmp_path,
        "LlamaForCausalLM",
        "LlamaConfig",
        rope_scaling=rope_scaling,
        max_position_embeddings=max_pos,
    )
    cfg, _ = _compare(hf, tmp_path, t)
    assert cfg.rope.rope_type == (rope_scaling or {}).get("rope_type", "default")
    assert cfg.n_kv_heads == 2 and not cfg.tie_embeddings and not cfg.qkv_bias


def test_qwen2_biases_tied_and_sharded(tmp_path):
    hf = _save(
        tmp_path,
        "Qwen2ForCausalLM",
        "Qwen2Config",
        shard="40KB",
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    assert (tmp_path / "model.safetensors.index.json").exists()
    cfg, model = _compare(hf, tmp_path, 12)
    assert cfg.qkv_bias and cfg.tie_embeddings and model.lm_head is None


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_hf_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_checkpoint(tmp_path)
    hf = _save(tmp_path, "LlamaForCausalLM", "LlamaConfig", max_position_embeddings=16)
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    cfg_path = tmp_path / "config.json"
    cfg_text = cfg_path.read_text()

    weights.write_bytes(good[:100])  # truncated
    with pytest.raises(ValueError, match="safetensors"):
        load_hf_checkpoint(tmp_path)
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="safetensors"):
        load_hf_checkpoint(tmp_path)

    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    state.pop("model.layers.1.mlp.up_proj.weight")
    safetensors_torch.save_file(state, str(weights))
    with pytest.raises(ValueError, match="up_proj"):
        load_hf_checkpoint(tmp_path)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_hf_checkpoint(tmp_path)

    weights.write_bytes(good)
    cfg_path.write_text("{not json")
    with pytest.raises(ValueError, match="JSON"):
        load_hf_checkpoint(tmp_path)
    for patch, field in [
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"attention_bias": True}, "attention_bias"),
    ]:
        cfg_path.write_text(json.dumps({**json.loads(cfg_text), **patch}))
        with pytest.raises(ValueError, match=field):
            load_hf_checkpoint(tmp_path)
    cfg_path.write_text(cfg_text)
    load_hf_checkpoint(tmp_path)  # restored: loads again
