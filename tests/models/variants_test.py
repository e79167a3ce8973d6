"""LayerNorm-free model variants of arXiv:2501.03489: weight / spectral normalisation of the
linear maps and the learnable FFN scaling (Eq. 8), vs a float64 NumPy forward written here."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig, forward
from entropylab.models.layers import spectral_norm_estimate


def np_weight(kernel, gain, kind, n_in):
    """Effective weight: W = g·V/‖V‖ (norm over the input axes) or V/σ_max(V), float64."""
    v = np.asarray(kernel, np.float64)
    if kind == "weight":
        return (
            np.asarray(gain, np.float64)
            * v
            / np.sqrt(np.sum(v * v, axis=tuple(range(n_in)), keepdims=True))
        )
    if kind == "spectral":
        fan_in = int(np.prod(v.shape[:n_in]))
        return v / np.linalg.norm(v.reshape(fan_in, -1), 2)
    return v


def np_forward(p, cfg, tokens):
    """float64 forward of the ``norm="none"`` pre-norm model with ReLU / identity FFN."""
    b, t = tokens.shape
    h, hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    g = h // hkv
    inv = 1.0 / cfg.rope.base ** (np.arange(0, d, 2) / d)
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))

    def rope(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * cos[None, :, None] + np.concatenate([-x2, x1], -1) * sin[None, :, None]

    def w(mod, target, n_in=1):
        kind = cfg.linear_norm if target in cfg.linear_norm_targets else "none"
        return np_weight(mod["kernel"], mod.get("gain"), kind, n_in)

    x = p["embed"]["embedding"][tokens]
    for li in range(cfg.n_layers):
        blk, a = p["blocks"][li], p["blocks"][li]["attn"]
        q = rope(np.einsum("btd,dnk->btnk", x, w(a["q_proj"], "qk")))
        k = rope(np.einsum("btd,dnk->btnk", x, w(a["k_proj"], "qk")))
        v = np.einsum("btd,dnk->btnk", x, w(a["v_proj"], "v"))
        out = np.zeros((b, t, h, d))
        for bi in range(b):
            for hi in range(h):
                z = q[bi, :, hi] @ k[bi, :, hi // g].T / np.sqrt(d)
                z = np.where(np.tril(np.ones((t, t), bool)), z, -np.inf)
                pz = np.exp(z - z.max(-1, keepdims=True))
                pz /= pz.sum(-1, keepdims=True)
                out[bi, :, hi] = pz @ v[bi, :, hi // g]
        x = x + np.einsum("btnk,nkd->btd", out, w(a["o_proj"], "o", 2))
        m = blk["mlp"]
        hid = x @ w(m["up"], "ffn")
        if cfg.mlp == "relu":
            hid = np.maximum(hid, 0.0)
        y = hid @ w(m["down"], "ffn")
        if cfg.ffn_residual_scaling:  # Eq. 8: β·x + FFN(x)/α
            x = blk["ffn_beta"] * x + y / blk["ffn_alpha"]
        else:
            x = x + y
    return x @ p["lm_head"]["kernel"]


def _cfg(**kw):
    return TransformerConfig.smoke(
        vocab_size=64, norm="none", mlp="relu", init_std=0.2, attn_query_block=0, **kw
    )


def _params(model):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), nnx.to_pure_dict(nnx.state(model)))


TOKENS = np.random.RandomState(0).randint(0, 64, (2, 7))


@pytest.mark.parametrize(
    "kw",
    [
        dict(linear_norm="weight", linear_norm_targets=("qk", "v", "o", "ffn")),
        dict(linear_norm="spectral", linear_norm_targets=("qk", "o", "ffn"), mlp="identity"),
        dict(ffn_residual_scaling=True),
    ],
    ids=["weight_norm_all", "spectral_qk_o_ffn", "ffn_scaling"],
)
def test_variant_matches_numpy(kw):
    cfg = dataclasses.replace(_cfg(), **kw)
    model = Transformer(cfg, rngs=nnx.Rngs(5))
    assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == cfg.num_params
    rs = np.random.RandomState(1)
    for blk in model.blocks:  # move every gain / α / β away from its initial value
        for path, leaf in nnx.to_flat_state(nnx.state(blk, nnx.Param)):
            if path[-1] in ("gain", "ffn_alpha", "ffn_beta"):
                leaf.set_value(jnp.asarray(rs.uniform(0.5, 2.0, leaf.shape), jnp.float32))
    graphdef, state = nnx.split(model)
    logits, _ = jax.jit(lambda s, x: forward(graphdef, s, x))(state, jnp.asarray(TOKENS))
    ref = np_forward(_params(model), cfg, TOKENS)
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=2e-3, atol=2e-3)
    # and the variant really changes the model (the plain forward of the same weights differs)
    plain_cfg = dataclasses.replace(cfg, linear_norm="none", ffn_residual_scaling=False)
    assert np.abs(np_forward(_params(model), plain_cfg, TOKENS) - ref).max() > 1e-2


def test_initial_values():
    # weight norm: W = V at initialisation (g = ‖V‖); FFN scaling: α = β = 1 → the plain block
    plain = Transformer(_cfg(), rngs=nnx.Rngs(5))
    for kw in (
        dict(linear_norm="weight", linear_norm_targets=("qk", "ffn")),
        dict(ffn_residual_scaling=True),
    ):
        m = Transformer(dataclasses.replace(_cfg(), **kw), rngs=nnx.Rngs(5))
        np.testing.assert_allclose(
            np.asarray(m.blocks[0].attn.q_proj.weight()),
            np.asarray(plain.blocks[0].attn.q_proj.kernel[...]),
            rtol=1e-6,
        )
        x = jnp.asarray(np.random.RandomState(2).normal(size=(1, 3, 32)), jnp.float32)
        np.testing.assert_allclose(
            m.blocks[1].ffn_residual(x), plain.blocks[1].ffn_residual(x), rtol=1e-5, atol=1e-6
        )
    m = Transformer(_cfg(ffn_residual_scaling=True), rngs=nnx.Rngs(5))
    assert float(m.blocks[1].ffn_alpha[...]) == 1.0 and float(m.blocks[1].ffn_beta[...]) == 1.0


def test_spectral_estimate_value_and_gradient(x64):
    rs = np.random.RandomState(3)
    v = rs.normal(0, 0.02, (32, 48))
    sigma = float(spectral_norm_estimate(jnp.asarray(v)))
    u_, s_, vt_ = np.linalg.svd(v)
    assert sigma == pytest.approx(s_[0], rel=1e-4)
    # d σ / d V = u₁ v₁ᵀ (u, v held constant, Miyato et al.), so ∇ Σ R ⊙ V/σ = R/σ − ⟨R, V⟩/σ² u₁v₁ᵀ
    r = rs.normal(size=v.shape)
    got = jax.grad(lambda w: jnp.sum(jnp.asarray(r) * w / spectral_norm_estimate(w)))(
        jnp.asarray(v)
    )
    want = r / s_[0] - np.sum(r * v) / s_[0] ** 2 * np.outer(u_[:, 0], vt_[0])
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-3, atol=1e-3 * np.abs(want).max())


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(linear_norm="batch"), "linear_norm"),
        (dict(linear_norm_targets=("ffn", "mlp")), "linear_norm_targets"),
        (dict(linear_norm_targets="ffn"), "linear_norm_targets"),
        (dict(linear_norm_targets=("ffn", "ffn")), "linear_norm_targets"),
        (dict(ffn_residual_scaling=1), "ffn_residual_scaling"),
    ],
)
def test_bad_variant_fields(kw, field):
    with pytest.raises(ValueError, match=field):
        _cfg(**kw)
