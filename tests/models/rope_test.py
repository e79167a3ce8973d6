"""Tests for entropylab.models.rope: every scaling vs a float64 NumPy reference written here from
the formulas, vs transformers' own ROPE_INIT_FUNCTIONS, Entropy-ABF's logit scale, apply_rope."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

from entropylab.models import rope
from entropylab.models.rope import (
    RopeConfig,
    apply_rope,
    attention_logit_scale,
    register_rope_type,
    rope_config_from_hf,
    rope_cos_sin,
    rope_frequencies,
    rope_types,
)

# ------------------------------------------------------------------------------------------------
# Independent float64 NumPy references (from the formulas in reference/attention_entropy.md §2)


def np_theta(d, b):
    return 1.0 / b ** (np.arange(0, d, 2, dtype=np.float64) / d)


def np_dynamic(d, b, factor, L, n):
    n = max(n, L)
    return np_theta(d, b * (factor * n / L - (factor - 1)) ** (d / (d - 2)))


def np_yarn(
    d, b, factor, L, beta_fast=32, beta_slow=1, truncate=True, mscale=None, mscale_all=None
):
    def cdim(r):
        return d * np.log(L / (2 * np.pi * r)) / (2 * np.log(b))

    lo, hi = cdim(beta_fast), cdim(beta_slow)
    if truncate:
        lo, hi = np.floor(lo), np.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d - 1)
    if lo == hi:
        hi += 0.001
    r = np.clip((np.arange(d // 2) - lo) / (hi - lo), 0, 1)  # 1 = interpolate, 0 = keep
    th = np_theta(d, b)

    def g(s, m=1.0):
        return 0.1 * m * np.log(s) + 1 if s > 1 else 1.0

    af = g(factor, mscale) / g(factor, mscale_all) if mscale and mscale_all else g(factor)
    return r * th / factor + (1 - r) * th, af


def np_llama3(d, b, factor, low, high, L):
    th = np_theta(d, b)
    out = []
    for t in th:
        lam = 2 * np.pi / t
        if lam < L / high:
            out.append(t)
        elif lam > L / low:
            out.append(t / factor)
        else:
            a = (L / lam - low) / (high - low)
            out.append((1 - a) * t / factor + a * t)
    return np.array(out)


def np_longrope(d, b, short, long, L, factor, seq_len):
    ext = np.asarray(long if (seq_len is not None and seq_len > L) else short, np.float64)
    af = np.sqrt(1 + np.log(factor) / np.log(L)) if factor > 1 else 1.0
    return np_theta(d, b) / ext, af


# jit once per shape: far fewer compilations than op-by-op eager dispatch (the tests stay fast)
rope_j = jax.jit(apply_rope)


def np_rope(x, pos, inv, af=1.0):
    """x [B, T, H, D], pos [B, T]; halves convention, partial rotary on the first 2·len(inv)."""
    x = np.asarray(x, np.float64)
    d = 2 * len(inv)
    ang = np.asarray(pos, np.float64)[..., None] * np.asarray(inv, np.float64)  # [B, T, d/2]
    c, s = (np.cos(ang) * af)[:, :, None], (np.sin(ang) * af)[:, :, None]
    x1, x2 = x[..., : d // 2], x[..., d // 2 : d]
    return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s, x[..., d:]], axis=-1)


D, B0, L0 = 16, 10_000.0, 256
SHORT = list(np.linspace(1.0, 1.5, D // 2))
LONG = list(np.linspace(1.0, 6.0, D // 2))


# ------------------------------------------------------------------------------------------------
# Hand-checkable values


def test_hand_values():
    np.testing.assert_allclose(rope_frequencies("default", head_dim=4, base=100.0)[0], [1, 0.1])
    np.testing.assert_allclose(
        rope_frequencies("linear", head_dim=4, base=100.0, factor=2.0)[0], [0.5, 0.05]
    )
    # ntk: b' = 100 · 4^(4/2) = 1600 → θ = [1, 1/40]
    np.testing.assert_allclose(
        rope_frequencies("ntk", head_dim=4, base=100.0, factor=4.0)[0], [1, 1 / 40], rtol=1e-6
    )
    # abf default base 500,000
    inv, af = rope_frequencies("abf", head_dim=4)
    np.testing.assert_allclose(inv, [1, 500_000**-0.5], rtol=1e-6)
    assert af == 1.0
    # yarn attention factor for s = 4: 0.1 ln 4 + 1
    _, af = rope_frequencies("yarn", head_dim=D, factor=4.0, original_max_position_embeddings=L0)
    assert af == pytest.approx(1.1386294, abs=1e-6)
    # longrope s = 32, L = 4096 → √(1 + ln 32 / ln 4096) ≈ 1.190
    _, af = rope_frequencies(
        "longrope",
        head_dim=4,
        factor=32.0,
        original_max_position_embeddings=4096,
        short_factor=[1, 1],
        long_factor=[1, 1],
    )
    assert af == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    assert af == pytest.approx(1.190, abs=1e-3)


# ------------------------------------------------------------------------------------------------
# Each scaling vs the float64 NumPy reference


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "rope_type,params,ref",
    [
        ("default", {}, lambda: (np_theta(D, B0), 1.0)),
        ("linear", {"factor": 3.0}, lambda: (np_theta(D, B0) / 3, 1.0)),
        ("ntk", {"factor": 4.0}, lambda: (np_theta(D, B0 * 4 ** (D / (D - 2))), 1.0)),
        ("abf", {}, lambda: (np_theta(D, 500_000.0), 1.0)),
        ("abf", {"abf_base": 1e6, "factor": 4.0}, lambda: (np_theta(D, 1e6), 1.0)),
        ("entropy_abf", {"original_max_position_embeddings": 64}, lambda: (np_theta(D, 5e5), 1.0)),
        (
            "yarn",
            {"factor": 4.0, "original_max_position_embeddings": L0},
            lambda: np_yarn(D, B0, 4.0, L0),
        ),
        (
            "yarn",
            {
                "factor": 8.0,
                "original_max_position_embeddings": L0,
                "beta_fast": 16,
                "beta_slow": 2,
                "truncate": False,
                "mscale": 0.707,
                "mscale_all_dim": 1.0,
            },
            lambda: np_yarn(D, B0, 8.0, L0, 16, 2, False, 0.707, 1.0),
        ),
        (
            "llama3",
            {
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": L0,
            },
            lambda: (np_llama3(D, B0, 8.0, 1.0, 4.0, L0), 1.0),
        ),
        (
            "longrope",
            {
                "factor": 4.0,
                "original_max_position_embeddings": L0,
                "short_factor": SHORT,
                "long_factor": LONG,
            },
            lambda: np_longrope(D, B0, SHORT, LONG, L0, 4.0, None),
        ),
    ],
)
def test_vs_numpy_reference(rope_type, params, ref):
    inv, af = rope_frequencies(rope_type, head_dim=D, base=B0, **params)
    want_inv, want_af = ref()
    assert inv.dtype == jnp.float64
    np.testing.assert_allclose(inv, want_inv, rtol=1e-12)
    assert af == pytest.approx(want_af, rel=1e-12)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("seq_len", [None, 10, L0, L0 + 1, 4 * L0, 10 * L0])
def test_dynamic_and_longrope_follow_seq_len(seq_len):
    inv, _ = rope_frequencies(
        "dynamic", head_dim=D, base=B0, max_position_embeddings=L0, seq_len=seq_len, factor=4.0
    )
    np.testing.assert_allclose(inv, np_dynamic(D, B0, 4.0, L0, seq_len or L0), rtol=1e-12)
    if seq_len is None or seq_len <= L0:  # identical to default below the original length
        np.testing.assert_array_equal(inv, rope_frequencies("default", head_dim=D, base=B0)[0])
    else:
        assert np.all(np.asarray(inv)[1:] < np_theta(D, B0)[1:])
    lp = dict(short_factor=SHORT, long_factor=LONG, original_max_position_embeddings=L0)
    inv, af = rope_frequencies("longrope", head_dim=D, base=B0, seq_len=seq_len, factor=2.0, **lp)
    want, want_af = np_longrope(D, B0, SHORT, LONG, L0, 2.0, seq_len)
    np.testing.assert_allclose(inv, want, rtol=1e-12)
    assert af == pytest.approx(want_af)


def test_traced_seq_len_under_jit():
    f_dyn = jax.jit(
        lambda n: rope_frequencies(
            "dynamic", head_dim=D, max_position_embeddings=L0, seq_len=n, factor=4.0
        )[0]
    )
    lp = dict(short_factor=SHORT, long_factor=LONG, original_max_position_embeddings=L0, factor=2.0)
    f_long = jax.jit(lambda n: rope_frequencies("longrope", head_dim=D, seq_len=n, **lp)[0])
    for n in (5, L0, L0 + 1, 3000):
        np.testing.assert_allclose(
            f_dyn(n),
            rope_frequencies(
                "dynamic", head_dim=D, max_position_embeddings=L0, seq_len=n, factor=4.0
            )[0],
            rtol=2e-6,
        )
        np.testing.assert_allclose(
            f_long(n), rope_frequencies("longrope", head_dim=D, seq_len=n, **lp)[0], rtol=1e-6
        )


# ------------------------------------------------------------------------------------------------
# Against transformers' own ROPE_INIT_FUNCTIONS


HF_CASES = [
    ("linear", {"factor": 4.0}),
    ("dynamic", {"factor": 4.0}),
    ("yarn", {"factor": 4.0, "original_max_position_embeddings": 512}),
    (
        "yarn",
        {
            "factor": 16.0,
            "original_max_position_embeddings": 512,
            "beta_fast": 8.0,
            "beta_slow": 2.0,
            "mscale": 0.707,
            "mscale_all_dim": 1.0,
            "truncate": False,
        },
    ),
    ("yarn", {"factor": 4.0, "original_max_position_embeddings": 512, "attention_factor": 1.5}),
    (
        "longrope",
        {
            "factor": 4.0,
            "original_max_position_embeddings": 512,
            "short_factor": list(np.linspace(1, 2, 16)),
            "long_factor": list(np.linspace(1, 9, 16)),
        },
    ),
    (
        "longrope",
        {
            "original_max_position_embeddings": 512,
            "short_factor": [1.0] * 16,
            "long_factor": list(np.linspace(1, 9, 16)),
        },
    ),
    (
        "llama3",
        {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 512,
        },
    ),
    (
        "llama3",
        {
            "factor": 4.0,
            "low_freq_factor": 2.0,
            "high_freq_factor": 8.0,
            "original_max_position_embeddings": 1024,
            "partial_rotary_factor": 0.5,
        },
    ),
]


def _llama_config(rope_scaling, base=10_000.0):
    transformers = pytest.importorskip("transformers")
    return transformers.LlamaConfig(
        hidden_size=64,
        num_attention_heads=2,
        head_dim=32,
        max_position_embeddings=2048,
        rope_theta=base,
        rope_scaling=dict(rope_scaling),
    )


@pytest.mark.parametrize("rope_type,params", HF_CASES)
@pytest.mark.parametrize("seq_len", [None, 100, 2048, 5000])
def test_matches_transformers(rope_type, params, seq_len):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = _llama_config({"rope_type": rope_type, **params}, base=50_000.0)
    want, want_af = ROPE_INIT_FUNCTIONS[rope_type](cfg, seq_len=seq_len)
    inv, af = rope_frequencies(
        rope_type,
        head_dim=32,
        base=50_000.0,
        max_position_embeddings=2048,
        seq_len=seq_len,
        **params,
    )
    np.testing.assert_allclose(inv, want.numpy(), rtol=1e-6, atol=0)
    assert af == pytest.approx(float(want_af), rel=1e-6)
    # the same through the HF-config parser
    inv2, af2 = rope_config_from_hf(cfg.to_dict()).frequencies(seq_len)
    np.testing.assert_allclose(inv2, want.numpy(), rtol=1e-6, atol=0)
    assert af2 == pytest.approx(float(want_af), rel=1e-6)


def test_default_matches_transformers():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = _llama_config({"rope_type": "default"}, base=500_000.0)
    want, want_af = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
    inv, af = rope_config_from_hf(cfg.to_dict()).frequencies()
    np.testing.assert_allclose(inv, want.numpy(), rtol=1e-6, atol=0)
    assert af == want_af == 1.0


def test_apply_rope_matches_transformers():
    import torch
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = _llama_config(
        {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512}
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 32)).astype(np.float32)  # [B, T, H, D]
    pos = np.array([[0, 1, 2, 3, 4], [7, 40, 41, 300, 1999]]).astype(np.int64)[:, :3]
    cos, sin = LlamaRotaryEmbedding(cfg)(torch.from_numpy(x), torch.from_numpy(pos))
    want, _ = apply_rotary_pos_emb(torch.from_numpy(x), torch.from_numpy(x), cos, sin, 2)
    inv, af = rope_config_from_hf(cfg.to_dict()).frequencies()
    got = apply_rope(x, pos, inv, af)
    np.testing.assert_allclose(got, want.numpy(), atol=2e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# apply_rope


@pytest.mark.usefixtures("x64")
def test_apply_rope_hand_and_reference():
    # d = 2, θ = [1]: x = [1, 0] at position m → [cos m, sin m]
    x = np.array([1.0, 0.0]).reshape(1, 1, 1, 2)
    for m in (0, 1, 2.5):
        y = rope_j(x, np.array([[m]]), np.array([1.0]))
        np.testing.assert_allclose(y[0, 0, 0], [np.cos(m), np.sin(m)], rtol=1e-12)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 3, 12))
    pos = rng.integers(0, 1000, (2, 6))
    for prf in (1.0, 0.5):
        inv, af = rope_frequencies(
            "yarn", head_dim=12, factor=4.0, max_position_embeddings=64, partial_rotary_factor=prf
        )
        y = rope_j(x, pos, inv, af)
        np.testing.assert_allclose(y, np_rope(x, pos, np.asarray(inv), af), rtol=1e-10, atol=1e-12)
        if prf < 1:  # the tail passes through untouched
            np.testing.assert_array_equal(y[..., 6:], x[..., 6:])
    # positions [T] broadcast over the batch
    inv, _ = rope_frequencies("default", head_dim=12)
    np.testing.assert_allclose(rope_j(x, pos[0], inv), rope_j(x, np.stack([pos[0]] * 2), inv))


def test_apply_rope_dtype_jit_and_norm():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((1, 4, 2, 8)), jnp.bfloat16)
    inv, _ = rope_frequencies("default", head_dim=8)
    pos = jnp.arange(4)[None]
    y = jax.jit(apply_rope)(x, pos, inv)
    assert y.dtype == jnp.bfloat16 and y.shape == x.shape
    x32 = x.astype(jnp.float32)
    y32 = rope_j(x32, pos, inv)
    np.testing.assert_allclose(  # a rotation (attention_factor 1) preserves pair norms
        jnp.linalg.norm(y32, axis=-1), jnp.linalg.norm(x32, axis=-1), rtol=1e-5
    )
    np.testing.assert_allclose(y.astype(jnp.float32), y32, atol=3e-2)


@pytest.mark.usefixtures("x64")
def test_apply_rope_grads():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((1, 3, 2, 8)))
    inv, af = rope_frequencies(
        "yarn", head_dim=8, factor=2.0, max_position_embeddings=16, partial_rotary_factor=0.5
    )
    pos = jnp.array([[0, 5, 17]])
    f = jax.jit(lambda v: apply_rope(v, pos, inv, af))
    check_grads(f, (x,), order=1, modes=["fwd", "rev"])
    g = jax.jit(jax.grad(lambda v: jnp.sum(apply_rope(v, pos, inv, af) ** 2)))(x)
    # d/dx ‖rope(x)‖² = 2·a²·x on the rotated part (a rotation scaled by a), 2·x on the tail
    np.testing.assert_allclose(g[..., :4], 2 * af**2 * x[..., :4], rtol=1e-10)
    np.testing.assert_allclose(g[..., 4:], 2 * x[..., 4:], rtol=1e-10)
    assert np.all(np.isfinite(g))


@jax.jit
def _rope_dot(q, k, m, n, inv):
    """⟨rope(q, m), rope(k, n)⟩ for q, k [D]."""
    qm = apply_rope(q.reshape(1, 1, 1, -1), m.reshape(1, 1), inv)
    kn = apply_rope(k.reshape(1, 1, 1, -1), n.reshape(1, 1), inv)
    return jnp.sum(qm * kn)


@settings(max_examples=15, deadline=None)
@given(
    m=st.integers(0, 5000),
    n=st.integers(0, 5000),
    shift=st.integers(0, 2000),
    seed=st.integers(0, 2**16),
)
def test_relative_position_property(m, n, shift, seed):
    """⟨rope(q, m), rope(k, n)⟩ depends only on m − n (default RoPE)."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        q, k = rng.standard_normal((2, 16))
        inv = rope_frequencies("default", head_dim=16)[0]
        got = float(_rope_dot(q, k, jnp.asarray(m), jnp.asarray(n), inv))
        shifted = float(_rope_dot(q, k, jnp.asarray(m + shift), jnp.asarray(n + shift), inv))
        assert got == pytest.approx(shifted, rel=1e-9, abs=1e-9)
        # and the NumPy reference gives the same inner product
        inv_np = np.asarray(inv)
        want = np.sum(
            np_rope(q[None, None, None], [[m]], inv_np)
            * np_rope(k[None, None, None], [[n]], inv_np)
        )
        assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_rope_cos_sin_scaled_by_attention_factor():
    inv, af = rope_frequencies("yarn", head_dim=8, factor=4.0, max_position_embeddings=32)
    cos, sin = rope_cos_sin(jnp.arange(5)[None], inv, af)
    assert cos.shape == (1, 5, 8)
    np.testing.assert_allclose(cos**2 + sin**2, np.full((1, 5, 8), af**2), rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Entropy-ABF attention-logit scale


def _eabf(**kw):
    return RopeConfig(
        head_dim=D,
        rope_type="entropy_abf",
        max_position_embeddings=4 * 4096,
        params={"original_max_position_embeddings": 4096, **kw},
    )


@pytest.mark.usefixtures("x64")
def test_entropy_abf_scale_values():
    cfg = _eabf()
    pos = np.array([[0, 1, 4094, 4095, 4096, 8191, 16383, 32767]])
    t = attention_logit_scale(cfg, pos, 2)
    i = pos + 1.0
    want = np.where(i <= 4096, 1.0, np.log(i) / np.log(4096))
    np.testing.assert_allclose(t, want, rtol=1e-12)
    np.testing.assert_array_equal(t[0, :4], 1.0)  # i ≤ L_train: unchanged
    # the values quoted from the released code: 1.083 at 8k, 1.167 at 16k, 1.25 at 32k
    np.testing.assert_allclose(t[0, 5:], [13 / 12, 14 / 12, 15 / 12], rtol=1e-12)
    # frequencies: base 500,000 (Table 1 / code; the text's 50,000 is a typo)
    np.testing.assert_allclose(cfg.frequencies()[0], np_theta(D, 500_000.0), rtol=1e-12)
    # other types never scale
    assert attention_logit_scale(RopeConfig(head_dim=D), pos, 5) is None
    assert attention_logit_scale(None, pos, 5) is None


@pytest.mark.parametrize("layer_skip", [True, False])
def test_entropy_abf_layers(layer_skip):
    cfg = _eabf(entropy_abf_layer_skip=layer_skip)
    pos = jnp.arange(8000, 8004)[None]
    scaled = np.log(np.arange(8001, 8005)) / np.log(4096)
    skipped = (0, 1) if layer_skip else ()
    for layer in range(4):
        t = attention_logit_scale(cfg, pos, layer)
        if layer in skipped:
            assert t is None
        else:
            np.testing.assert_allclose(t[0], scaled, rtol=1e-6)
        # a traced layer index (scan over layers) gives the same numbers
        t_traced = jax.jit(lambda p, l: attention_logit_scale(cfg, p, l))(pos, jnp.int32(layer))
        np.testing.assert_allclose(t_traced[0], 1.0 if layer in skipped else scaled, rtol=1e-6)
    cfg3 = _eabf(entropy_abf_num_skip_layers=3)
    assert attention_logit_scale(cfg3, pos, 2) is None
    assert attention_logit_scale(cfg3, pos, 3) is not None


# ------------------------------------------------------------------------------------------------
# Config parsing, registry, validation


def test_rope_config_from_hf_variants():
    llama31 = {
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
    }
    c = rope_config_from_hf(llama31)
    assert (c.rope_type, c.head_dim, c.base, c.max_position_embeddings) == (
        "llama3",
        128,
        5e5,
        131072,
    )
    assert hash(c) == hash(rope_config_from_hf(llama31))  # frozen + hashable
    with pytest.raises(dataclasses_frozen_error()):
        c.base = 1.0
    # v4 "type" key, Phi-3 style top-level original_max_position_embeddings, partial rotary
    phi3 = {
        "hidden_size": 64,
        "num_attention_heads": 4,
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 1024,
        "partial_rotary_factor": 0.5,
        "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4},
    }
    c = rope_config_from_hf(phi3)
    assert c.rope_type == "longrope" and c.rotary_dim == 8
    assert c.param_dict["original_max_position_embeddings"] == 1024
    inv, af = c.frequencies(seq_len=2000)
    np.testing.assert_allclose(inv, np_theta(8, 1e4) / 2, rtol=1e-6)
    assert af == pytest.approx(math.sqrt(1 + math.log(4) / math.log(1024)))
    # v5 rope_parameters, no scaling; the EABF repo's "eabf" name
    c = rope_config_from_hf(
        {"head_dim": 8, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    )
    assert (c.rope_type, c.base) == ("default", 1e6)
    c = rope_config_from_hf(
        {
            "head_dim": 8,
            "max_position_embeddings": 4096,
            "rope_scaling": {"type": "eabf", "factor": 4.0},
        }
    )
    assert c.rope_type == "entropy_abf"
    with pytest.raises(ValueError, match="nested"):
        rope_config_from_hf(
            {"head_dim": 8, "rope_parameters": {"full_attention": {"rope_type": "default"}}}
        )
    with pytest.raises(ValueError, match="head_dim"):
        rope_config_from_hf({"rope_theta": 1e4})
    # array-valued params are frozen to tuples (hashable, usable as a static jit argument)
    c = RopeConfig(
        head_dim=8,
        rope_type="longrope",
        max_position_embeddings=64,
        params={"short_factor": np.ones(4), "long_factor": np.full(4, 2.0), "factor": 2.0},
    )
    assert c.param_dict["long_factor"] == (2.0,) * 4 and isinstance(hash(c), int)
    np.testing.assert_allclose(c.frequencies(seq_len=65)[0], np_theta(8, 1e4) / 2, rtol=1e-6)


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rope_type="nope"), "must be one of .*'default'.*'entropy_abf'"),
        (dict(rope_type="linear"), "requires parameter.*factor"),
        (dict(rope_type="linear", factor=0.5), "factor must be a number >= 1"),
        (dict(rope_type="linear", factor=2.0, fator=2.0), "unknown parameter.*fator"),
        (dict(rope_type="default", head_dim=7), "must be even"),
        (dict(rope_type="default", partial_rotary_factor=1.5), "partial_rotary_factor"),
        (dict(rope_type="default", base=1.0), "base"),
        (dict(rope_type="dynamic", factor=2.0), "max_position_embeddings"),
        (dict(rope_type="yarn", factor=2.0), "original_max_position_embeddings"),
        (
            dict(
                rope_type="yarn", factor=2.0, max_position_embeddings=64, beta_fast=1, beta_slow=2
            ),
            "beta_fast",
        ),
        (
            dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=4.0,
                high_freq_factor=1.0,
                original_max_position_embeddings=64,
            ),
            "high_freq_factor > low_freq_factor",
        ),
        (
            dict(
                rope_type="longrope",
                short_factor=[1.0],
                long_factor=[1.0] * 8,
                max_position_embeddings=64,
            ),
            "short_factor must be a list of length rot_dim // 2 = 8",
        ),
        (dict(rope_type="entropy_abf", factor=4.0), "original_max_position_embeddings"),
        # entropy_abf never falls back to max_position_embeddings (issue 17)
        (
            dict(rope_type="entropy_abf", max_position_embeddings=16384),
            "requires parameter.*original_max_position_embeddings",
        ),
        (
            dict(
                rope_type="entropy_abf",
                original_max_position_embeddings=64,
                entropy_abf_layer_skip=1,
            ),
            "entropy_abf_layer_skip",
        ),
        # non-finite numbers are rejected, naming the field (issue 12)
        (dict(rope_type="linear", factor=float("nan")), "factor must be finite"),
        (dict(rope_type="linear", factor=float("inf")), "factor must be finite"),
        (dict(rope_type="default", base=float("nan")), "base .*must be finite"),
        (dict(rope_type="default", base=float("inf")), "base .*must be finite"),
        (dict(rope_type="abf", abf_base=float("inf")), "abf_base must be finite"),
        (
            dict(
                rope_type="yarn",
                factor=2.0,
                original_max_position_embeddings=64,
                attention_factor=float("nan"),
            ),
            "attention_factor must be finite",
        ),
        (
            dict(
                rope_type="longrope",
                short_factor=[1.0] * 7 + [float("inf")],
                long_factor=[1.0] * 8,
                max_position_embeddings=64,
            ),
            "short_factor must be finite",
        ),
        (dict(rope_type="proportional"), "'proportional' .*not supported"),
    ],
)
def test_bad_configs_raise(kwargs, match):
    kwargs = {"head_dim": D, **kwargs}
    with pytest.raises(ValueError, match=match):
        rope_frequencies(**kwargs)
    rt = kwargs.pop("rope_type")
    common = {
        k: kwargs.pop(k) for k in ("head_dim", "base", "max_position_embeddings") if k in kwargs
    }
    with pytest.raises(ValueError, match=match):
        RopeConfig(rope_type=rt, params=kwargs, **common)


def test_registry():
    assert set(rope_types()) >= {
        "default",
        "linear",
        "ntk",
        "dynamic",
        "yarn",
        "longrope",
        "llama3",
        "abf",
        "entropy_abf",
    }
    with pytest.raises(ValueError, match="already registered"):
        register_rope_type("linear", lambda *a: None)
    name = "_test_half_freq"
    try:
        register_rope_type(
            name, lambda dim, base, max_pos, seq_len, p: (rope._base_inv_freq(dim, base) / 2, 1.0)
        )
        np.testing.assert_allclose(
            rope_frequencies(name, head_dim=8)[0],
            rope_frequencies("linear", head_dim=8, factor=2.0)[0],
        )
    finally:
        rope._REGISTRY.pop(name, None)
