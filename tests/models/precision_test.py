"""Mixed-precision policy (``TransformerConfig(precision="mixed_bfloat16")``): float32 params,
bfloat16 matmuls and activations, float32 scores / softmax / entropy / logits / log-probs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.logprobs import policy_logprobs
from entropylab.models import Transformer, TransformerConfig, forward


def _randint(seed, shape, high):
    return jnp.asarray(np.random.RandomState(seed).randint(0, high, shape), jnp.int32)


def _eqns(jaxpr):
    """Every equation of ``jaxpr`` and of the jaxprs nested in its equations (pjit, custom_vjp,
    loops)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                if hasattr(sub, "eqns"):
                    yield from _eqns(sub)
                elif hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    yield from _eqns(sub.jaxpr)


def _dtypes(jaxpr, prim):
    """Sorted set of (input dtypes, output dtype) of the equations of primitive ``prim``."""
    out = set()
    for e in _eqns(jaxpr):
        if e.primitive.name == prim:
            ins = tuple(str(v.aval.dtype) for v in e.invars)
            out.add((ins, str(e.outvars[0].aval.dtype)))
    return sorted(out)


def test_precision_policy_config():
    base = TransformerConfig.smoke()
    assert (base.precision, base.param_dtype, base.dtype) == (None, "float32", "float32")
    mixed = TransformerConfig.smoke(precision="mixed_bfloat16")
    assert (mixed.param_dtype, mixed.dtype) == ("float32", "bfloat16")
    same = TransformerConfig.smoke(precision="float32", dtype="float32")
    assert (same.param_dtype, same.dtype) == ("float32", "float32")
    # The explicit dtypes a policy implies are accepted (a config rebuilt from its fields).
    assert dataclasses.replace(mixed, d_model=64, head_dim=None, rope=None).dtype == "bfloat16"
    with pytest.raises(ValueError, match="precision"):
        TransformerConfig.smoke(precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        TransformerConfig.smoke(precision=["mixed_bfloat16"])
    with pytest.raises(ValueError, match="dtype='float16' conflicts with precision"):
        TransformerConfig.smoke(precision="mixed_bfloat16", dtype="float16")
    with pytest.raises(ValueError, match="param_dtype='bfloat16' conflicts"):
        TransformerConfig.smoke(precision="mixed_bfloat16", param_dtype="bfloat16")
    with pytest.raises(ValueError, match="conflicts"):
        dataclasses.replace(mixed, dtype="float32")
    assert dataclasses.replace(mixed, dtype="float32", precision=None).dtype == "float32"
    assert base.with_precision("mixed_bfloat16") == mixed
    back = mixed.with_precision(None)
    assert (back.precision, back.param_dtype, back.dtype) == (None, "float32", "float32")


@pytest.fixture(scope="module")
def models():
    cfg = TransformerConfig.smoke(vocab_size=64, init_std=0.1)
    m32 = Transformer(cfg, rngs=nnx.Rngs(3))
    m16 = Transformer(cfg.with_precision("mixed_bfloat16"), rngs=nnx.Rngs(3))
    return m32, m16


def test_mixed_bf16_dtype_flow(models):
    m32, m16 = models
    # Params stay float32 and are the same numbers under both policies.
    for a, b in zip(jax.tree.leaves(nnx.state(m32, nnx.Param)), jax.tree.leaves(nnx.state(m16))):
        assert b.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokens = _randint(0, (2, 8), 64)
    mask = jnp.array([[1] * 8, [0, 0] + [1] * 6])
    graphdef, state = nnx.split(m16)

    def f(s):
        return forward(graphdef, s, tokens, attention_mask=mask, aux=("attn_entropy",))

    jaxpr = jax.make_jaxpr(f)(state).jaxpr
    plain = jax.make_jaxpr(lambda s: forward(graphdef, s, tokens, attention_mask=mask))(state)
    dots = _dtypes(plain.jaxpr, "dot_general")
    # Every matmul reads bf16 operands; projections write bf16, the attention scores and the
    # output logits accumulate and come out in float32.
    assert dots == [(("bfloat16", "bfloat16"), "bfloat16"), (("bfloat16", "bfloat16"), "float32")]
    # Softmax, logsumexp and entropy (and its [L, H] average, one f32 contraction): every exp /
    # log runs in float32.
    assert (("float32", "float32"), "float32") in _dtypes(jaxpr, "dot_general")
    for prim in ("exp", "log"):
        assert {d for (_, d) in _dtypes(jaxpr, prim)} == {"float32"}, prim
    logits, aux = jax.jit(f)(state)
    assert logits.dtype == jnp.float32 and aux.attn_entropy.dtype == jnp.float32
    hidden, _ = jax.jit(lambda m: m(tokens, return_hidden=True))(m16)
    assert hidden.dtype == jnp.bfloat16  # the activations (residual stream, final norm) are bf16
    # Control: the float32 policy has no bf16 matmul, so the check above can fail.
    g32, s32 = nnx.split(m32)
    dots32 = _dtypes(jax.make_jaxpr(lambda s: forward(g32, s, tokens))(s32).jaxpr, "dot_general")
    assert dots32 == [(("float32", "float32"), "float32")]


def test_mixed_bf16_logprobs_float32_and_close(models):
    """Measured on this case (2 × 12 tokens, V = 64, H ≈ 4.0 nats): max |Δ logp| = 0.0070,
    max |Δ H| = 0.0013 against the float32 policy with the same weights (fused and dense alike);
    tolerances 0.03 / 0.01. Param gradients (fused path) are float32, cosine 0.99994 to the
    float32 ones (asserted > 0.999)."""
    m32, m16 = models
    tokens = _randint(1, (2, 12), 64)
    mask = jnp.array([[1] * 12, [0, 0, 0] + [1] * 9])

    def run(model):
        graphdef, state = nnx.split(model)

        def lp(s, fused):
            m = nnx.merge(graphdef, s)
            return policy_logprobs(m, tokens, start=4, attention_mask=mask, fused=fused)

        def loss(s):
            out = lp(s, True)
            return -jnp.mean(out.logp) - 0.1 * jnp.mean(out.entropy), out

        @jax.jit
        def both(s):
            (_, out), g = jax.value_and_grad(loss, has_aux=True)(s)
            return out, lp(s, False), g

        return both(state)

    f32, d32, g32 = run(m32)
    f16, d16, g16 = run(m16)
    for o16, o32 in ((f16, f32), (d16, d32)):
        assert o16.logp.dtype == jnp.float32 and o16.entropy.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(o16.logp), np.asarray(o32.logp), atol=3e-2)
        np.testing.assert_allclose(np.asarray(o16.entropy), np.asarray(o32.entropy), atol=1e-2)
        assert np.abs(np.asarray(o16.logp) - np.asarray(o32.logp)).max() > 0  # bf16 really ran
    l32, l16 = jax.tree.leaves(g32), jax.tree.leaves(g16)
    assert all(b.dtype == jnp.float32 for b in l16)
    a = np.concatenate([np.ravel(x) for x in l32])
    b = np.concatenate([np.ravel(x) for x in l16])
    assert np.all(np.isfinite(b))
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.999
