"""Entropy-ABF context extension and entropy-guided attention temperature, end to end.

* ``with_rope`` never infers the pre-extension length from ``max_seq_len`` (issue 17, trap 1);
  the scale at a few positions equals numbers computed from the released Entropy-ABF code
  (GAIR-NLP/Entropy-ABF ``patch/EABF.py`` @14af289d3bc5d668f65655a6b35288e564c13c38,
  ``apply_rotary_pos_emb_scale``: ``scale = log(position_ids + 1) / log(4096)``, values < 1 set
  to 1, multiplied into the rotated *query* only).
* an ``"eabf"`` HF config loads as the authors run it (every layer), the paper's layer-0/1
  exemption one argument away (trap 2).
* a float64 NumPy transformer written here checks *where* the scale applies (which layers,
  queries only) and the learnable temperature t[h, i] of arXiv:2501.03489 (per head and query
  position; logits q·k / (t·√d)), including its initial values.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig, config_from_hf, forward
from entropylab.models.rope import attention_logit_scale, rope_config_from_hf

# ------------------------------------------------------------------------------------------------
# with_rope: the original length is explicit


def released_eabf_scale(position_ids):
    """Port of the released ``apply_rotary_pos_emb_scale`` scale (0-based position ids), float64."""
    s = np.log(np.asarray(position_ids, np.float64) + 1) / math.log(4096)
    s[s < 1] = 1
    return s


def test_context_extension_config_gives_the_released_scale():
    cfg = TransformerConfig.llama2_7b(max_seq_len=16384).with_rope(
        "entropy_abf", original_max_position_embeddings=4096
    )
    assert (
        cfg.max_seq_len == 16384 and cfg.rope.param_dict["original_max_position_embeddings"] == 4096
    )
    pos = np.array([[0, 1, 4095, 4096, 8191, 12287, 16383]])
    got = np.asarray(attention_logit_scale(cfg.rope, pos, 5))[0]
    want = released_eabf_scale(pos)[0]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # hand-checkable: ln 2^13 / ln 2^12 = 13/12, ln 2^14 / ln 2^12 = 14/12, 1 + ln 3 / ln 4096
    np.testing.assert_allclose(
        got, [1, 1, 1, 1.0000293481, 13 / 12, 1.1320802084, 14 / 12], rtol=1e-6
    )
    # the paper's default exempts layers 0 and 1
    assert attention_logit_scale(cfg.rope, pos, 0) is None
    assert attention_logit_scale(cfg.rope, pos, 1) is None
    # base 500,000 (ABF), unchanged model length
    inv = np.asarray(cfg.rope.frequencies()[0])
    np.testing.assert_allclose(inv, 500_000.0 ** (-np.arange(0, 128, 2) / 128), rtol=1e-5)


@pytest.mark.parametrize(
    "rope_type,params",
    [
        ("entropy_abf", {}),
        ("yarn", {"factor": 4.0}),
        ("llama3", {"factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
        ("dynamic", {"factor": 4.0}),
        ("longrope", {"short_factor": [1.0] * 64, "long_factor": [4.0] * 64, "factor": 4.0}),
    ],
)
def test_with_rope_requires_the_original_length(rope_type, params):
    base = TransformerConfig.llama2_7b(max_seq_len=16384)
    # the old code silently used max_seq_len (16384) as the original length
    with pytest.raises(ValueError, match="original_max_position_embeddings.*not inferred"):
        base.with_rope(rope_type, **params)
    cfg = base.with_rope(rope_type, original_max_position_embeddings=4096, **params)
    if rope_type == "dynamic":  # HF's L for dynamic NTK is max_position_embeddings
        assert cfg.rope.max_position_embeddings == 4096
        assert "original_max_position_embeddings" not in cfg.rope.param_dict
    else:
        assert cfg.rope.max_position_embeddings == 16384
        assert cfg.rope.param_dict["original_max_position_embeddings"] == 4096
    # also accepted inside **params (the HF key), once
    same = base.with_rope(rope_type, **params, **{"original_max_position_embeddings": 4096})
    assert same.rope == cfg.rope
    with pytest.raises(ValueError, match="int > 1"):
        base.with_rope(rope_type, original_max_position_embeddings=4096.0, **params)


def test_with_rope_rejects_an_unused_original_length_and_non_finite_values():
    base = TransformerConfig.smoke()
    with pytest.raises(ValueError, match="not used by rope_type 'linear'"):
        base.with_rope("linear", factor=2.0, original_max_position_embeddings=32)
    assert base.with_rope("linear", factor=2.0).rope.max_position_embeddings == 64
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="factor must be finite"):
            base.with_rope("linear", factor=bad)
        with pytest.raises(ValueError, match="base .*finite"):
            base.with_rope("default", base=bad)


@pytest.mark.parametrize(
    "field,value",
    [
        ("norm_eps", float("nan")),
        ("norm_eps", float("inf")),
        ("init_std", float("inf")),
        ("attn_temperature_init", float("inf")),
        ("attn_temperature_init", float("nan")),
        ("attn_logit_softcap", float("inf")),
        ("attn_temperature_form", "per_token"),
    ],
)
def test_non_finite_model_config_values_raise(field, value):
    with pytest.raises(ValueError, match=field):
        TransformerConfig.smoke(**{field: value})


# ------------------------------------------------------------------------------------------------
# HF "eabf" configs: authors' form by default, paper's one argument away

EABF_HF = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 4096,
    "rope_scaling": {"type": "eabf", "factor": 4.0},
}


def test_eabf_hf_config_runs_every_layer_like_the_released_code():
    rc = rope_config_from_hf({**EABF_HF, "head_dim": 8})
    assert rc.rope_type == "entropy_abf"
    assert rc.param_dict["entropy_abf_layer_skip"] is False
    assert rc.param_dict["original_max_position_embeddings"] == 4096  # released code's constant
    pos = np.array([[100, 8191]])
    for layer in (0, 1, 2):
        np.testing.assert_allclose(
            attention_logit_scale(rc, pos, layer)[0], released_eabf_scale(pos)[0], rtol=1e-6
        )
    cfg = config_from_hf(EABF_HF)
    assert cfg.rope == rc
    paper = config_from_hf(EABF_HF, eabf_layer_skip=True)
    assert paper.rope.param_dict["entropy_abf_layer_skip"] is True
    assert attention_logit_scale(paper.rope, pos, 1) is None
    assert attention_logit_scale(paper.rope, pos, 2) is not None
    # a config that states its own original length keeps it
    own = rope_config_from_hf({**EABF_HF, "head_dim": 8, "original_max_position_embeddings": 2048})
    assert own.param_dict["original_max_position_embeddings"] == 2048
    with pytest.raises(ValueError, match="eabf_layer_skip"):
        rope_config_from_hf({**EABF_HF, "head_dim": 8}, eabf_layer_skip="yes")


# ------------------------------------------------------------------------------------------------
# Model level: float64 NumPy transformer


def np_forward(p, cfg, tokens, q_scale_layers, l_orig, temps, scale_keys=False):
    """float64 Llama-style forward with Entropy-ABF (query scale in ``q_scale_layers``; also on
    the keys if ``scale_keys``, a wrong variant) and a temperature table ``temps[l]`` of shape
    [H, T_max] (or None) dividing the logits.

    Returns logits [B, T, V] and entropies [L, B, H, T].
    """
    b, t = tokens.shape
    h, hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    g = h // hkv
    inv = 1.0 / 500_000.0 ** (np.arange(0, d, 2) / d)  # ABF base (entropy_abf default)
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    i1 = np.arange(t) + 1.0
    eabf = np.maximum(1.0, np.log(i1) / np.log(l_orig))  # [T], 1-based query position

    def rope(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * cos[None, :, None] + np.concatenate([-x2, x1], -1) * sin[None, :, None]

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * w

    x = p["embed"]["embedding"][tokens]
    ents = np.zeros((cfg.n_layers, b, h, t))
    for li in range(cfg.n_layers):
        blk, a = p["blocks"][li], p["blocks"][li]["attn"]
        hN = rms(x, blk["attn_norm"]["scale"])
        q = rope(np.einsum("btd,dnk->btnk", hN, a["q_proj"]["kernel"]))
        k = rope(np.einsum("btd,dnk->btnk", hN, a["k_proj"]["kernel"]))
        v = np.einsum("btd,dnk->btnk", hN, a["v_proj"]["kernel"])
        if li in q_scale_layers:
            q = q * eabf[None, :, None, None]  # queries only (released code)
            if scale_keys:
                k = k * eabf[None, :, None, None]
        out = np.zeros((b, t, h, d))
        for bi in range(b):
            for hi in range(h):
                z = q[bi, :, hi] @ k[bi, :, hi // g].T / np.sqrt(d)
                if temps is not None:
                    z = z / temps[li][hi, :t][:, None]
                for i in range(t):
                    zi = z[i, : i + 1]
                    pi = np.exp(zi - zi.max())
                    pi /= pi.sum()
                    out[bi, i, hi] = pi @ v[bi, : i + 1, hi // g]
                    ents[li, bi, hi, i] = -np.sum(pi * np.log(pi))
        x = x + np.einsum("btnk,nkd->btd", out, a["o_proj"]["kernel"])
        hM = rms(x, blk["mlp_norm"]["scale"])
        m = blk["mlp"]
        gate = hM @ m["gate"]["kernel"]
        x = x + ((gate / (1 + np.exp(-gate))) * (hM @ m["up"]["kernel"])) @ m["down"]["kernel"]
    return rms(x, p["final_norm"]["scale"]) @ p["lm_head"]["kernel"], ents


L_ORIG, T = 3, 10


def _model(layer_skip, temperature):
    cfg = TransformerConfig.smoke(
        vocab_size=64, n_layers=3, max_seq_len=16, init_std=0.3, attn_query_block=0
    ).with_rope(
        "entropy_abf", original_max_position_embeddings=L_ORIG, entropy_abf_layer_skip=layer_skip
    )
    if temperature:
        cfg = dataclasses.replace(cfg, learnable_attn_temperature=True)
    return cfg, Transformer(cfg, rngs=nnx.Rngs(7))


@pytest.mark.parametrize("layer_skip", [True, False])
def test_model_matches_numpy_eabf_layers_and_temperature(layer_skip):
    cfg, model = _model(layer_skip, temperature=True)
    h, tmax = cfg.n_heads, cfg.max_seq_len
    # the paper's form: one t per head and query position, all at the small initial value
    for blk in model.blocks:
        tau = np.asarray(blk.attn.temperature())
        assert tau.shape == (h, tmax)
        np.testing.assert_allclose(tau, 1e-2, rtol=1e-6)
    # random positive temperatures (log-uniform over [0.3, 3]) so every (h, i) entry matters
    temps = []
    for li, blk in enumerate(model.blocks):
        tb = np.exp(np.random.RandomState(li).uniform(np.log(0.3), np.log(3.0), (h, tmax)))
        blk.attn.log_temperature.set_value(jnp.asarray(np.log(tb), jnp.float32))
        temps.append(tb)
    tokens = np.random.RandomState(1).randint(0, 64, (2, T))
    graphdef, state = nnx.split(model)
    logits, aux = jax.jit(lambda s, x: forward(graphdef, s, x, aux=("attn_entropy_map",)))(
        state, jnp.asarray(tokens)
    )
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(state))
    scaled = (2,) if layer_skip else (0, 1, 2)
    ref, ref_ent = np_forward(p, cfg, tokens, scaled, L_ORIG, temps)
    np.testing.assert_allclose(np.asarray(logits), ref, atol=2e-4, rtol=2e-4)
    np.testing.assert_allclose(np.asarray(aux.attn_entropy_map), ref_ent, atol=2e-4)
    # the reference is sharp enough to tell the variants apart: other layer sets, or the scale
    # applied to keys too (logits × t², what scaling q and k by t each would give), disagree
    other = (0, 1, 2) if layer_skip else (2,)
    wrong, _ = np_forward(p, cfg, tokens, other, L_ORIG, temps)
    assert np.abs(wrong - ref).max() > 1e-2
    no_temp, _ = np_forward(p, cfg, tokens, scaled, L_ORIG, None)
    assert np.abs(no_temp - ref).max() > 1e-2
    # scaling the keys as well (logit × t_i·t_j) is far from the model: "queries only" is pinned
    both, _ = np_forward(p, cfg, tokens, scaled, L_ORIG, temps, scale_keys=True)
    assert np.abs(both - ref).max() > 1e-2
    # (decode with a KV cache under entropy_abf is checked in kv_cache_test.py)


def test_temperature_forms_values_and_out_of_range_position():
    cfg = TransformerConfig.smoke(
        vocab_size=64, learnable_attn_temperature=True, attn_temperature_form="head"
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tau = model.blocks[0].attn.temperature()
    assert tau.shape == (cfg.n_heads,)
    np.testing.assert_allclose(np.asarray(tau), 1e-2, rtol=1e-6)
    assert cfg.num_params == TransformerConfig.smoke(vocab_size=64).num_params + 2 * 4
    pos_cfg = TransformerConfig.smoke(
        vocab_size=64, learnable_attn_temperature=True, attn_temperature_init=0.1
    )
    assert pos_cfg.num_params == TransformerConfig.smoke(vocab_size=64).num_params + 2 * 4 * 64
    m2 = Transformer(pos_cfg, rngs=nnx.Rngs(0))
    attn = m2.blocks[0].attn
    lt = np.log(np.arange(1, 4 * 64 + 1, dtype=np.float64).reshape(4, 64) / 100.0)
    attn.log_temperature.set_value(jnp.asarray(lt, jnp.float32))
    got = np.asarray(attn.temperature(jnp.array([[0, 5, 63], [1, 1, 2]])))
    assert got.shape == (2, 4, 3)  # [B, H, T]
    # t[h, i] = (64·h + i + 1) / 100
    np.testing.assert_allclose(got[0, 2], [1.29, 1.34, 1.92], rtol=1e-5)
    np.testing.assert_allclose(got[1, 0], [0.02, 0.02, 0.03], rtol=1e-5)
    # a query position past the table is NaN, not a silently reused temperature
    assert np.isnan(np.asarray(attn.temperature(jnp.array([[64]])))).all()
