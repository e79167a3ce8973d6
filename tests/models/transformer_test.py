"""Transformer forward: NumPy reference, causality, padding, attention-entropy outputs, variants."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig, forward


def _randint(seed, shape, high):
    """Token ids from NumPy's RNG (no per-shape threefry compile)."""
    return jnp.asarray(np.random.RandomState(seed).randint(0, high, shape), jnp.int32)


def _params(model):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(nnx.state(model)))


def np_forward(p, cfg, tokens, mask):
    """float64 reference of the Llama-style model: RMSNorm, RoPE (halves), GQA, SwiGLU.

    Returns logits [B, T, V] and the attention-entropy map [L, B, H, T].
    """
    b, t = tokens.shape
    h, hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    g = h // hkv
    inv = 1.0 / cfg.rope.base ** (np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):  # [B, T, N, d]
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * cos[None, :, None] + np.concatenate([-x2, x1], -1) * sin[None, :, None]

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * w

    x = p["embed"]["embedding"][tokens]
    ents = np.zeros((cfg.n_layers, b, h, t))
    for li in range(cfg.n_layers):
        blk = p["blocks"][li]
        a = blk["attn"]
        hN = rms(x, blk["attn_norm"]["scale"])
        q = np.einsum("btd,dnk->btnk", hN, a["q_proj"]["kernel"]) + a["q_proj"]["bias"]
        k = np.einsum("btd,dnk->btnk", hN, a["k_proj"]["kernel"]) + a["k_proj"]["bias"]
        v = np.einsum("btd,dnk->btnk", hN, a["v_proj"]["kernel"]) + a["v_proj"]["bias"]
        q, k = rope(q), rope(k)
        out = np.zeros((b, t, h, d))
        for bi in range(b):
            for hi in range(h):
                z = q[bi, :, hi] @ k[bi, :, hi // g].T / np.sqrt(d)
                allowed = np.tril(np.ones((t, t), bool)) & mask[bi][None, :].astype(bool)
                for i in range(t):
                    if not allowed[i].any():
                        continue
                    zi = z[i][allowed[i]]
                    pi = np.exp(zi - zi.max())
                    pi /= pi.sum()
                    out[bi, i, hi] = pi @ v[bi, allowed[i], hi // g]
                    ents[li, bi, hi, i] = -np.sum(pi * np.log(pi))
        x = x + np.einsum("btnk,nkd->btd", out, a["o_proj"]["kernel"])
        hM = rms(x, blk["mlp_norm"]["scale"])
        m = blk["mlp"]
        gate = hM @ m["gate"]["kernel"]
        x = x + ((gate / (1 + np.exp(-gate))) * (hM @ m["up"]["kernel"])) @ m["down"]["kernel"]
    hF = rms(x, p["final_norm"]["scale"])
    return hF @ p["lm_head"]["kernel"], ents


@pytest.fixture(scope="module")
def model():
    # attn_query_block=3: the full forward runs the query-blocked causal attention (ragged last
    # block at T=7), so the NumPy reference below checks that path.
    cfg = TransformerConfig.smoke(vocab_size=64, qkv_bias=True, init_std=0.2, attn_query_block=3)
    m = Transformer(cfg, rngs=nnx.Rngs(3))
    # Non-trivial norm scales and biases so the reference checks them.
    for path, leaf in nnx.to_flat_state(nnx.state(m, nnx.Param)):
        if path[-1] in ("scale", "bias"):
            rs = np.random.RandomState(len(path))
            leaf.set_value(jnp.asarray(rs.uniform(0.5, 1.5, leaf.shape), jnp.float32))
    return m


def _jit_forward(model, **kw):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x, m: forward(graphdef, s, x, attention_mask=m, **kw)), state


def test_matches_numpy_reference_with_padding_and_entropy(model):
    cfg = model.config
    tokens = _randint(0, (2, 7), cfg.vocab_size)
    mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2])
    f, state = _jit_forward(model, aux=("attn_entropy", "attn_entropy_map"))
    logits, aux = f(state, tokens, mask)
    ref, ref_ent = np_forward(_params(model), cfg, np.asarray(tokens), np.asarray(mask))
    valid = np.asarray(mask, bool)
    assert logits.dtype == jnp.float32 and logits.shape == (2, 7, cfg.vocab_size)
    np.testing.assert_allclose(np.asarray(logits)[valid], ref[valid], atol=1e-4, rtol=1e-4)
    ent_map = np.asarray(aux.attn_entropy_map)
    assert ent_map.shape == (cfg.n_layers, 2, cfg.n_heads, 7)
    np.testing.assert_allclose(
        ent_map.transpose(0, 1, 3, 2)[:, valid], ref_ent.transpose(0, 1, 3, 2)[:, valid], atol=1e-5
    )
    # [L, H]: mean over the valid query rows of the whole batch.
    ref_mean = (ref_ent * valid[None, :, None, :]).sum((1, 3)) / valid.sum()
    np.testing.assert_allclose(np.asarray(aux.attn_entropy), ref_mean, atol=1e-5)
    # Hidden state path and unembedding give the same logits; the fast path agrees.
    hidden, _ = jax.jit(lambda m, x: m(x, attention_mask=mask, return_hidden=True))(model, tokens)
    assert hidden.shape == (2, 7, cfg.d_model)
    np.testing.assert_allclose(
        np.asarray(hidden @ model.unembedding())[valid], ref[valid], atol=1e-4, rtol=1e-4
    )
    fast, _ = _jit_forward(model)
    fast_logits, fast_aux = fast(state, tokens, mask)
    np.testing.assert_allclose(np.asarray(fast_logits)[valid], ref[valid], atol=1e-4, rtol=1e-4)
    assert fast_aux.attn_entropy is None and fast_aux.attn_entropy_map is None  # not asked for


def test_causality(model):
    f, state = _jit_forward(model)
    tokens = _randint(1, (2, 9), 64)
    changed = tokens.at[:, 5:].set((tokens[:, 5:] + 7) % 64)
    ones = jnp.ones((2, 9), jnp.int32)
    a, _ = f(state, tokens, ones)
    b, _ = f(state, changed, ones)
    np.testing.assert_array_equal(np.asarray(a[:, :5]), np.asarray(b[:, :5]))
    assert np.abs(np.asarray(a[:, 5:] - b[:, 5:])).max() > 1e-3


def test_left_padding_with_positions_equals_unpadded(model):
    graphdef, state = nnx.split(model)
    f = jax.jit(lambda s, x, p, m: forward(graphdef, s, x, positions=p, attention_mask=m))
    seq = _randint(2, (1, 5), 64)
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), seq], axis=1)
    mask = jnp.array([[0, 0, 0, 1, 1, 1, 1, 1]])
    pos = jnp.array([[0, 0, 0, 0, 1, 2, 3, 4]])
    lp, _ = f(state, padded, pos, mask)
    lu, _ = f(state, seq, jnp.arange(5)[None], jnp.ones((1, 5)))
    np.testing.assert_allclose(np.asarray(lp[:, 3:]), np.asarray(lu), atol=1e-5)


def test_per_head_temperature_moves_entropy():
    cfg = TransformerConfig.smoke(
        vocab_size=64,
        learnable_attn_temperature=True,
        attn_temperature_form="head",
        attn_temperature_init=1.0,
        init_std=0.3,
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    tokens = _randint(3, (2, 12), 64)
    f = jax.jit(lambda m, x: m(x, aux=("attn_entropy",))[1].attn_entropy)
    base = np.asarray(f(model, tokens))
    lt = model.blocks[0].attn.log_temperature
    lt.set_value(lt[...].at[0].set(jnp.log(8.0)).at[1].set(jnp.log(0.05)))
    moved = np.asarray(f(model, tokens))
    assert moved[0, 0] > base[0, 0] + 1e-3  # hotter head 0: higher entropy
    assert moved[0, 1] < base[0, 1] - 1e-3  # colder head 1: lower entropy
    np.testing.assert_allclose(moved[0, 2:], base[0, 2:], atol=1e-6)  # other heads untouched


@pytest.mark.parametrize(
    "norm,mlp,extra",
    [
        ("rmsnorm", "swiglu", {"tie_embeddings": True}),
        ("layernorm", "gelu", {"attn_logit_softcap": 5.0}),
        ("none", "relu", {}),
        ("none", "identity", {"learnable_attn_temperature": True}),
    ],
)
def test_variants_run_with_finite_grads(norm, mlp, extra):
    cfg = TransformerConfig.smoke(vocab_size=64, norm=norm, mlp=mlp, **extra)
    model = Transformer(cfg, rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(model)
    tokens = _randint(4, (2, 6), 64)
    mask = jnp.array([[1] * 6, [0, 0, 1, 1, 1, 1]])

    def loss(s):
        logits, aux = forward(graphdef, s, tokens, attention_mask=mask, aux=("attn_entropy",))
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + aux.attn_entropy.mean()

    val, g = jax.jit(jax.value_and_grad(loss))(state)
    assert np.isfinite(val)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))
    if extra.get("tie_embeddings"):
        assert model.lm_head is None
        np.testing.assert_array_equal(model.unembedding(), model.embed.embedding[...].T)
    if extra.get("learnable_attn_temperature"):  # a trainable parameter with a real gradient
        # per head and query position: only the 6 positions seen get a gradient
        gt = np.asarray(g["blocks"][0]["attn"]["log_temperature"][...])
        assert gt.shape == (cfg.n_heads, cfg.max_seq_len)
        assert np.all(np.abs(gt[:, :6]).max(axis=1) > 0) and np.all(gt[:, 6:] == 0)


def test_bf16_compute_is_finite_and_close():
    cfg = TransformerConfig.smoke(vocab_size=64)
    m32 = Transformer(cfg, rngs=nnx.Rngs(5))
    m16 = Transformer(dataclasses.replace(cfg, dtype="bfloat16"), rngs=nnx.Rngs(5))
    tokens = _randint(5, (2, 8), 64)
    f = jax.jit(lambda m, x: m(x, aux=("attn_entropy",)))
    l32, a32 = f(m32, tokens)
    l16, a16 = f(m16, tokens)
    assert l16.dtype == jnp.float32 and a16.attn_entropy.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(l16)))
    np.testing.assert_allclose(np.asarray(l16), np.asarray(l32), atol=5e-2)
    np.testing.assert_allclose(
        np.asarray(a16.attn_entropy), np.asarray(a32.attn_entropy), atol=5e-2
    )
    cache = m16.init_cache(2, 8)
    assert cache.k[0].dtype == jnp.bfloat16


def test_bad_inputs_raise(model):
    with pytest.raises(ValueError, match="aux"):
        model(jnp.zeros((1, 4), jnp.int32), aux=("attn_entropies",))
    with pytest.raises(TypeError, match="aux"):
        model(jnp.zeros((1, 4), jnp.int32), aux=True)
    with pytest.raises(ValueError, match="tokens"):
        model(jnp.zeros((5,), jnp.int32))
    with pytest.raises(ValueError, match="attention_mask"):
        model(jnp.zeros((2, 4), jnp.int32), attention_mask=jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="capacity"):
        model.decode(jnp.zeros((1, 5), jnp.int32), model.init_cache(1, 4))
