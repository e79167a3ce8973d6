"""Import Hugging Face Llama / Qwen2 checkpoints (``config.json`` + safetensors) into
:class:`~entropylab.models.Transformer`.

Weight mapping (HF ``nn.Linear`` stores ``[out, in]``; ours are ``[in, …out]``):

    model.embed_tokens.weight [V, D]            -> embed.embedding [V, D]
    …self_attn.{q,k,v}_proj.weight [N·d, D]     -> attn.{q,k,v}_proj.kernel [D, N, d] (Wᵀ)
    …self_attn.{q,k,v}_proj.bias [N·d]          -> attn.{q,k,v}_proj.bias [N, d]   (Qwen2)
    …self_attn.o_proj.weight [D, H·d]           -> attn.o_proj.kernel [H, d, D]   (Wᵀ)
    …mlp.{gate,up}_proj.weight [F, D]           -> mlp.{gate,up}.kernel [D, F]    (Wᵀ)
    …mlp.down_proj.weight [D, F]                -> mlp.down.kernel [F, D]         (Wᵀ)
    …input_layernorm / post_attention_layernorm -> attn_norm / mlp_norm .scale
    model.norm.weight                           -> final_norm.scale
    lm_head.weight [V, D]                       -> lm_head.kernel [D, V] (absent when tied)

RoPE: ``rope_scaling`` / ``rope_parameters`` (v4 / v5 names) via
:func:`entropylab.models.rope.rope_config_from_hf`; q/k use HF's "rotate_half" (halves) layout,
so no permutation of q/k rows is needed. Entropy-ABF checkpoints (``rope_scaling = {"type":
"eabf", "factor": 4.0}``, e.g. the GAIR-NLP/Entropy-ABF fine-tunes of LLaMA-2-7B-Chat) load as
their authors run them: base 500,000, the per-position logit scale max(1, ln i / ln 4096) in
*every* layer (the released loader's layer-0/1 exemption never takes effect);
``eabf_layer_skip=True`` gives the paper's variant (layers 0 and 1 unscaled).

Unsupported features (``attention_bias`` on Llama, which also biases ``o_proj``; ``mlp_bias``;
activations other than SiLU; Qwen2 sliding window) raise ``ValueError`` instead of importing a
different model.

References: arXiv:2302.13971 (Llama), arXiv:2407.10671 (Qwen2); HF ``modeling_llama.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropylab.models.config import TransformerConfig
from entropylab.models.rope import rope_config_from_hf
from entropylab.models.transformer import Transformer

SUPPORTED = ("llama", "qwen2")


def config_from_hf(
    hf: dict, *, dtype=None, param_dtype="float32", eabf_layer_skip: bool = False
) -> TransformerConfig:
    """Map an HF ``config.json`` dict (Llama / Qwen2) to a :class:`TransformerConfig`.

    ``eabf_layer_skip`` only matters for an ``"eabf"`` rope type: False (default) scales every
    layer, as the authors' released code runs their checkpoints; True exempts layers 0 and 1, as
    the paper (arXiv:2401.07004 §3.2) describes. See
    :func:`entropylab.models.rope.rope_config_from_hf`.
    """
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        raise ValueError(f"model_type must be one of {SUPPORTED}, got {model_type!r}")
    act = hf.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"hidden_act must be 'silu' (SwiGLU), got {act!r}")
    if hf.get("mlp_bias"):
        raise ValueError("mlp_bias=True is not supported")
    if model_type == "llama" and hf.get("attention_bias"):
        raise ValueError("attention_bias=True (q/k/v and o_proj biases) is not supported")
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        raise ValueError("use_sliding_window=True is not supported")
    required = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
    )
    missing = [k for k in required if hf.get(k) is None]
    if missing:
        raise ValueError(f"config.json lacks required field(s) {missing}")
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or d_model // n_heads
    max_len = hf.get("max_position_embeddings") or 2048
    rope = rope_config_from_hf(
        {**hf, "head_dim": head_dim, "max_position_embeddings": max_len},
        eabf_layer_skip=eabf_layer_skip,
    )
    if dtype is None:
        dtype = param_dtype
    return TransformerConfig(
        vocab_size=hf["vocab_size"],
        d_model=d_model,
        n_layers=hf["num_hidden_layers"],
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        head_dim=head_dim,
        d_ff=hf["intermediate_size"],
        max_seq_len=max_len,
        norm="rmsnorm",
        mlp="swiglu",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        rope=rope,
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        qkv_bias=model_type == "qwen2",
        init_std=float(hf.get("initializer_range", 0.02)),
        param_dtype=param_dtype,
        dtype=dtype,
    )


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of ``model.safetensors`` or the shards of ``model.safetensors.index.json``."""
    from safetensors import safe_open

    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a valid safetensors index ({e})") from e
        files = sorted(set(weight_map.values()))
    elif single.exists():
        files = [single.name]
    else:
        raise FileNotFoundError(
            f"no model.safetensors or model.safetensors.index.json in {path} "
            "(PyTorch .bin checkpoints are not supported)"
        )
    out = {}
    for name in files:
        f = path / name
        if not f.exists():
            raise FileNotFoundError(f"shard {f} listed in the index is missing")
        try:
            with safe_open(str(f), framework="flax") as fh:
                for key in fh.keys():
                    out[key] = np.asarray(fh.get_tensor(key).astype(jnp.float32))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            if isinstance(e, (FileNotFoundError, MemoryError)):
                raise
            raise ValueError(f"{f}: cannot read safetensors file ({type(e).__name__}: {e})") from e
    return out


def _map_weights(w: dict[str, np.ndarray], cfg: TransformerConfig) -> dict:
    """HF tensor dict -> our nested pure-dict of parameters (see module table)."""
    d, h, hkv, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    used = set()

    def take(key, shape):
        if key not in w:
            raise ValueError(f"checkpoint lacks tensor {key!r}")
        x = w[key]
        if tuple(x.shape) != tuple(shape):
            raise ValueError(f"{key}: expected shape {tuple(shape)}, got {tuple(x.shape)}")
        used.add(key)
        return x

    pre = "model."
    blocks = {}
    for i in range(cfg.n_layers):
        p = f"{pre}layers.{i}."
        attn = {
            "q_proj": {
                "kernel": take(p + "self_attn.q_proj.weight", (h * hd, d)).T.reshape(d, h, hd)
            },
            "k_proj": {
                "kernel": take(p + "self_attn.k_proj.weight", (hkv * hd, d)).T.reshape(d, hkv, hd)
            },
            "v_proj": {
                "kernel": take(p + "self_attn.v_proj.weight", (hkv * hd, d)).T.reshape(d, hkv, hd)
            },
            "o_proj": {
                "kernel": take(p + "self_attn.o_proj.weight", (d, h * hd)).T.reshape(h, hd, d)
            },
        }
        if cfg.qkv_bias:
            for name, n in (("q_proj", h), ("k_proj", hkv), ("v_proj", hkv)):
                attn[name]["bias"] = take(p + f"self_attn.{name}.bias", (n * hd,)).reshape(n, hd)
        blocks[i] = {
            "attn_norm": {"scale": take(p + "input_layernorm.weight", (d,))},
            "attn": attn,
            "mlp_norm": {"scale": take(p + "post_attention_layernorm.weight", (d,))},
            "mlp": {
                "gate": {"kernel": take(p + "mlp.gate_proj.weight", (f, d)).T},
                "up": {"kernel": take(p + "mlp.up_proj.weight", (f, d)).T},
                "down": {"kernel": take(p + "mlp.down_proj.weight", (d, f)).T},
            },
        }
    params = {
        "embed": {"embedding": take(pre + "embed_tokens.weight", (cfg.vocab_size, d))},
        "blocks": blocks,
        "final_norm": {"scale": take(pre + "norm.weight", (d,))},
    }
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": take("lm_head.weight", (cfg.vocab_size, d)).T}
    elif "lm_head.weight" in w:
        used.add("lm_head.weight")  # tied: HF may still save the (identical) copy
    extra = sorted(k for k in set(w) - used if not k.endswith("rotary_emb.inv_freq"))
    if extra:
        raise ValueError(
            f"unexpected tensors in checkpoint: {extra[:5]}{'…' if len(extra) > 5 else ''}"
        )
    return params


def load_hf_checkpoint(path, *, dtype=None, param_dtype="float32", eabf_layer_skip=False):
    """Read an HF Llama / Qwen2 directory and return ``(TransformerConfig, Transformer)``.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or a sharded
        ``model.safetensors.index.json``).
      dtype: compute dtype (default: ``param_dtype``).
      param_dtype: parameter dtype (default float32; weights are upcast then cast).
      eabf_layer_skip: for an ``"eabf"`` (Entropy-ABF) checkpoint, False (default) scales every
        layer as the authors' code runs it; True gives the paper's layer-0/1 exemption.
    Raises:
      FileNotFoundError: missing directory, ``config.json`` or weight files.
      ValueError: malformed JSON, unsupported architecture/features, corrupt safetensors,
        missing / unexpected / wrongly shaped tensors.
    """
    path = Path(os.fspath(path))
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise FileNotFoundError(f"{cfg_file} not found")
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: invalid JSON ({e})") from e
    if not isinstance(hf, dict):
        raise ValueError(f"{cfg_file}: expected a JSON object")
    cfg = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype, eabf_layer_skip=eabf_layer_skip)
    params = _map_weights(_read_tensors(path), cfg)

    abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    pure = jax.tree.map(lambda x: jnp.asarray(x, cfg.param_dtype), params)
    nnx.replace_by_pure_dict(state, pure)
    return cfg, nnx.merge(graphdef, state)
