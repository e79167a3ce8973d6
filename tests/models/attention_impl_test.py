"""``attn_impl``: the ``jax.nn.dot_product_attention`` path (implementation="xla") equals the exact
blocked path — forward, gradients, GQA, padding, per-query logit scale, cached decode — and is
never taken when entropies are asked for or a soft-cap is set."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig, forward
from entropylab.models import attention as attention_lib
from entropylab.models.attention import resolve_attn_impl

TOKENS = jnp.asarray(np.random.RandomState(0).randint(0, 64, (2, 9)), jnp.int32)
MASK = jnp.array([[1] * 9, [0, 0, 0] + [1] * 6])  # left padding in row 1
POS = jnp.maximum(jnp.cumsum(MASK, axis=1) - 1, 0)

CONFIGS = {
    # GQA 4 query heads / 2 kv heads; only the scalar 1/sqrt(d) logit scale
    "plain": dict(),
    # per-head learnable temperature: a per-query logit scale folded into the queries
    "temperature": dict(
        learnable_attn_temperature=True, attn_temperature_form="head", attn_temperature_init=0.5
    ),
}


def _pair(name):
    cfg = TransformerConfig.smoke(vocab_size=64, max_seq_len=16, init_std=0.2, **CONFIGS[name])
    make = lambda impl: Transformer(dataclasses.replace(cfg, attn_impl=impl), rngs=nnx.Rngs(7))  # noqa: E731
    return make("blocked"), make("xla")


def _loss_and_grad(model):
    graphdef, state = nnx.split(model)

    def loss(s):
        logits, _ = forward(graphdef, s, TOKENS, positions=POS, attention_mask=MASK)
        lp = jax.nn.log_softmax(logits)
        return -jnp.sum(jnp.where(MASK[..., None] > 0, lp, 0.0)[..., 3]), logits

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(state)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_xla_forward_and_grads_equal_blocked(name):
    exact, fused = _pair(name)
    (l0, z0), g0 = _loss_and_grad(exact)
    (l1, z1), g1 = _loss_and_grad(fused)
    valid = np.asarray(MASK, bool)
    np.testing.assert_allclose(np.asarray(z1)[valid], np.asarray(z0)[valid], atol=2e-5)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    flat0, flat1 = nnx.to_flat_state(g0), nnx.to_flat_state(g1)
    for (p0, a), (p1, b) in zip(flat0, flat1, strict=True):
        assert p0 == p1
        a, b = np.asarray(a[...]), np.asarray(b[...])
        np.testing.assert_allclose(b, a, atol=1e-5 * max(1.0, np.abs(a).max()), err_msg=str(p0))
    if name == "temperature":  # the folded per-query scale carries a real gradient
        gt = np.asarray(g1["blocks"][0]["attn"]["log_temperature"][...])
        assert np.abs(gt).max() > 1e-4


def test_xla_decode_equals_blocked_decode_and_forward():
    exact, fused = _pair("plain")
    cfg = exact.config
    full, _ = jax.jit(lambda m, x: m(x))(exact, TOKENS[:1])

    def run(model):
        dec = jax.jit(lambda m, x, c: m.decode(x, c))
        out, cache = dec(model, TOKENS[:1, :5], model.init_cache(1, 12))
        outs = [out]
        for i in range(5, 9):
            out, cache = dec(model, TOKENS[:1, i : i + 1], cache)
            outs.append(out)
        return np.concatenate([np.asarray(o) for o in outs], axis=1)

    a, b = run(exact), run(fused)
    np.testing.assert_allclose(b, a, atol=2e-5)
    np.testing.assert_allclose(b, np.asarray(full), atol=1e-4)
    assert a.shape == (1, 9, cfg.vocab_size)


def test_fused_path_is_taken_only_without_entropy_or_softcap(monkeypatch):
    calls = []
    real = attention_lib.attend_fused

    def counted(*args, **kw):
        calls.append(kw["implementation"])
        return real(*args, **kw)

    monkeypatch.setattr(attention_lib, "attend_fused", counted)
    exact, fused = _pair("plain")
    n = fused.config.n_layers

    def traced(model, **kw):
        calls.clear()
        jax.eval_shape(lambda: model(TOKENS, attention_mask=MASK, **kw))
        return list(calls)

    assert traced(fused) == ["xla"] * n
    assert traced(exact) == []
    assert traced(fused, aux=("attn_entropy",)) == []  # entropies: always the exact path
    capped = Transformer(
        dataclasses.replace(fused.config, attn_logit_softcap=5.0), rngs=nnx.Rngs(0)
    )
    assert traced(capped) == []  # soft-cap: not supported by the fused op
    auto = Transformer(dataclasses.replace(fused.config, attn_impl="auto"), rngs=nnx.Rngs(0))
    want = resolve_attn_impl("auto", causal=True, dtype=jnp.float32, head_dim=8)
    assert traced(auto) == ([] if want == "blocked" else [want] * n)  # CPU: the exact path
    # entropy through the xla-configured model equals the exact model's
    e0 = jax.jit(lambda m: m(TOKENS, aux=("attn_entropy",))[1].attn_entropy)(exact)
    e1 = jax.jit(lambda m: m(TOKENS, aux=("attn_entropy",))[1].attn_entropy)(fused)
    np.testing.assert_array_equal(np.asarray(e0), np.asarray(e1))


def test_resolve_attn_impl_and_config_validation():
    kw = dict(causal=True, head_dim=64)
    assert resolve_attn_impl("auto", backend="cpu", dtype=jnp.bfloat16, **kw) == "blocked"
    assert resolve_attn_impl("auto", backend="gpu", dtype=jnp.bfloat16, **kw) == "cudnn"
    assert resolve_attn_impl("auto", backend="gpu", dtype=jnp.float32, **kw) == "xla"
    assert resolve_attn_impl("auto", backend="tpu", dtype=jnp.bfloat16, **kw) == "xla"
    assert (
        resolve_attn_impl("auto", backend="gpu", dtype=jnp.bfloat16, causal=True, head_dim=256)
        == "xla"
    )
    decode = dict(causal=False, head_dim=64, dtype=jnp.bfloat16)
    assert resolve_attn_impl("auto", backend="gpu", **decode) == "blocked"
    assert resolve_attn_impl("xla", backend="cpu", **decode) == "xla"
    assert resolve_attn_impl("blocked", backend="gpu", **kw, dtype=jnp.float32) == "blocked"
    with pytest.raises(ValueError, match="attn_impl"):
        resolve_attn_impl("flash", backend="gpu", dtype=jnp.float32, **kw)
    with pytest.raises(ValueError, match="attn_impl"):
        TransformerConfig.smoke(attn_impl="flash")
    assert TransformerConfig.smoke().attn_impl == "auto"
