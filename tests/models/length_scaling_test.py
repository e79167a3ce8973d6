"""Log-length attention scaling: Llama-4's ``attn_temperature_tuning`` vs transformers'
Llama-4 on a tiny random model (the oracle), Scalable-Softmax (arXiv:2501.19399) vs a float64
NumPy attention written here, NoPE layers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig
from entropylab.models.attention import Attention, attention_mask

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_llama4_factor_values():
    cfg = TransformerConfig.smoke(
        attn_length_scaling="llama4", nope_layers=(1,), llama4_attn_scale=0.5, llama4_floor_scale=2
    )
    rope_layer = Attention(cfg, rngs=nnx.Rngs(0), layer_idx=0)
    nope_layer = Attention(cfg, rngs=nnx.Rngs(0), layer_idx=1)
    pos = jnp.array([[0, 1, 2, 4, 5]])
    assert rope_layer.length_scale(pos) is None  # a RoPE layer: not scaled (as transformers)
    got = np.asarray(nope_layer.length_scale(pos))[0, 0]
    # 1 + 0.5·ln(1 + ⌊n/2⌋), n = pos + 1 = 1, 2, 3, 5, 6
    want = [1.0, 1 + 0.5 * np.log(2), 1 + 0.5 * np.log(2), 1 + 0.5 * np.log(3), 1 + 0.5 * np.log(4)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got[3], 1.5493061443, rtol=1e-6)


def _hf_llama4(floor_scale, attn_scale):
    torch.manual_seed(0)
    cfg = transformers.Llama4TextConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        intermediate_size_mlp=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        moe_layers=[],  # dense SwiGLU layers only
        no_rope_layers=[1, 0, 1],  # layer 1 is NoPE (1 = uses RoPE)
        use_qk_norm=False,
        attention_chunk_size=None,
        attn_temperature_tuning=True,
        floor_scale=floor_scale,
        attn_scale=attn_scale,
        rope_parameters={"rope_type": "default", "rope_theta": 100.0},
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        initializer_range=0.2,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    model = transformers.Llama4ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def _import(hf, cfg):
    """Map the HF Llama-4 text weights onto our Transformer. Llama-4 rotates interleaved pairs
    (complex view), ours rotates halves: permuting each head's q/k output features by
    [0, 2, 4, …, 1, 3, 5, …] maps one onto the other and leaves q·k unchanged."""
    sd = {k: v.detach().numpy().astype(np.float64) for k, v in hf.state_dict().items()}
    d, h, hkv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    perm = np.concatenate([np.arange(0, hd, 2), np.arange(1, hd, 2)])

    def qk(w, n):  # [n·hd, D] → ours [D, n, hd], halves layout
        return w.reshape(n, hd, d)[:, perm, :].transpose(2, 0, 1)

    blocks = {}
    for i in range(cfg.n_layers):
        p = f"model.layers.{i}."
        rope_layer = i not in cfg.nope_layers
        blocks[i] = {
            "attn_norm": {"scale": sd[p + "input_layernorm.weight"]},
            "mlp_norm": {"scale": sd[p + "post_attention_layernorm.weight"]},
            "attn": {
                "q_proj": {
                    "kernel": qk(sd[p + "self_attn.q_proj.weight"], h)
                    if rope_layer
                    else sd[p + "self_attn.q_proj.weight"].T.reshape(d, h, hd)
                },
                "k_proj": {
                    "kernel": qk(sd[p + "self_attn.k_proj.weight"], hkv)
                    if rope_layer
                    else sd[p + "self_attn.k_proj.weight"].T.reshape(d, hkv, hd)
                },
                "v_proj": {"kernel": sd[p + "self_attn.v_proj.weight"].T.reshape(d, hkv, hd)},
                "o_proj": {"kernel": sd[p + "self_attn.o_proj.weight"].T.reshape(h, hd, d)},
            },
            "mlp": {
                "gate": {"kernel": sd[p + "feed_forward.gate_proj.weight"].T},
                "up": {"kernel": sd[p + "feed_forward.up_proj.weight"].T},
                "down": {"kernel": sd[p + "feed_forward.down_proj.weight"].T},
            },
        }
    pure = {
        "embed": {"embedding": sd["model.embed_tokens.weight"]},
        "blocks": blocks,
        "final_norm": {"scale": sd["model.norm.weight"]},
        "lm_head": {"kernel": sd["lm_head.weight"].T},
    }
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), pure))
    return nnx.merge(graphdef, state)


def test_llama4_attn_temperature_tuning_matches_transformers():
    hf = _hf_llama4(floor_scale=3, attn_scale=0.7)
    cfg = TransformerConfig(
        vocab_size=64,
        d_model=32,
        n_layers=3,
        n_heads=4,
        n_kv_heads=2,
        head_dim=8,
        d_ff=48,
        max_seq_len=64,
        norm_eps=1e-5,
        attn_query_block=0,
        nope_layers=(1,),
        attn_length_scaling="llama4",
        llama4_attn_scale=0.7,
        llama4_floor_scale=3,
        rope=None,
    ).with_rope("default", base=100.0)
    model = _import(hf, cfg)
    tokens = np.random.RandomState(0).randint(0, 64, (2, 14))  # n up to 14: factor up to 1+0.7 ln 5
    with torch.no_grad():
        ref = hf(torch.tensor(tokens)).logits.numpy()
    logits, _ = jax.jit(lambda m, x: m(x))(model, jnp.asarray(tokens))
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=1e-4)
    # the tuning matters at these lengths: HF itself without it gives other logits
    for layer in hf.model.layers:
        layer.self_attn.attn_temperature_tuning = False
    with torch.no_grad():
        untuned = hf(torch.tensor(tokens)).logits.numpy()
    assert np.abs(untuned - ref).max() > 1e-3


def test_ssmax_matches_numpy_attention():
    cfg = TransformerConfig.smoke(
        n_layers=1, attn_length_scaling="ssmax", attn_query_block=0, init_std=0.3
    )
    attn = Attention(cfg, rngs=nnx.Rngs(1))
    # initial s = 1 / ln(max_seq_len) (factor 1 at the training length)
    np.testing.assert_allclose(attn.ssmax_s[...], 1 / np.log(64), rtol=1e-6)
    s = np.array([0.0, 0.4, 0.8, 1.3])
    attn.ssmax_s.set_value(jnp.asarray(s, jnp.float32))
    b, t, d = 2, 9, cfg.head_dim
    x = jnp.asarray(np.random.RandomState(2).normal(size=(b, t, cfg.d_model)), jnp.float32)
    pos = jnp.broadcast_to(jnp.arange(t), (b, t))
    freqs = cfg.rope.frequencies()

    @jax.jit
    def run(attn, x):
        k, v = attn.project_kv(x, pos, freqs)
        allowed = attention_mask(pos, None, t)
        return attn(
            x, k, v, positions=pos, freqs=freqs, q_scale=None, allowed=allowed, return_entropy=True
        )

    y, ent = run(attn, x)
    # float64 reference: z_hij = s_h · ln(i + 1) · q_i·k_j / √d, causal softmax
    xn = np.asarray(x, np.float64)
    wq, wk, wv, wo = (
        np.asarray(m.kernel[...], np.float64)
        for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)
    )
    inv = 1.0 / cfg.rope.base ** (np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * inv
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(z):
        z1, z2 = z[..., : d // 2], z[..., d // 2 :]
        return z * cos[None, :, None] + np.concatenate([-z2, z1], -1) * sin[None, :, None]

    q = rope(np.einsum("btd,dnk->btnk", xn, wq))
    kk = rope(np.einsum("btd,dnk->btnk", xn, wk))
    vv = np.einsum("btd,dnk->btnk", xn, wv)
    g = cfg.n_heads // cfg.n_kv_heads
    out = np.zeros((b, t, cfg.n_heads, d))
    ref_ent = np.zeros((b, cfg.n_heads, t))
    for bi in range(b):
        for hi in range(cfg.n_heads):
            for i in range(t):
                z = s[hi] * np.log(i + 1) * (kk[bi, : i + 1, hi // g] @ q[bi, i, hi]) / np.sqrt(d)
                p = np.exp(z - z.max())
                p /= p.sum()
                out[bi, i, hi] = p @ vv[bi, : i + 1, hi // g]
                ref_ent[bi, hi, i] = -np.sum(p * np.log(p))
    np.testing.assert_allclose(np.asarray(y), np.einsum("btnk,nkd->btd", out, wo), atol=1e-4)
    np.testing.assert_allclose(np.asarray(ent), ref_ent, atol=1e-4)
    # hand-checkable: s = 0 gives uniform attention, entropy ln(i + 1)
    np.testing.assert_allclose(
        np.asarray(ent)[:, 0], np.log(np.arange(1, t + 1))[None].repeat(2, 0), atol=1e-5
    )


def test_nope_layer_keys_are_not_rotated_and_bad_fields():
    cfg = TransformerConfig.smoke(n_layers=2, nope_layers=(0,))
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.RandomState(0).normal(size=(1, 5, 32)), jnp.float32)
    pos = jnp.arange(5)[None]
    k, _ = model.blocks[0].attn.project_kv(x, pos, cfg.rope.frequencies())
    np.testing.assert_allclose(
        np.asarray(k), np.asarray(model.blocks[0].attn.k_proj(x)).transpose(0, 2, 1, 3), atol=1e-6
    )
    k1, _ = model.blocks[1].attn.project_kv(x, pos, cfg.rope.frequencies())
    assert (
        np.abs(
            np.asarray(k1) - np.asarray(model.blocks[1].attn.k_proj(x)).transpose(0, 2, 1, 3)
        ).max()
        > 1e-3
    )
    for kw, field in [
        (dict(nope_layers=(2,)), "nope_layers"),
        (dict(nope_layers=(0, 0)), "nope_layers"),
        (dict(attn_length_scaling="llama4"), "nope_layers is empty"),
        (dict(attn_length_scaling="yarn"), "attn_length_scaling"),
        (dict(ssmax_init=float("nan")), "ssmax_init"),
        (dict(llama4_attn_scale=float("inf")), "llama4_attn_scale"),
        (dict(llama4_floor_scale=0), "llama4_floor_scale"),
    ]:
        with pytest.raises(ValueError, match=field):
            TransformerConfig.smoke(n_layers=2, **kw)
