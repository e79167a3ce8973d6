"""Transformer building blocks as ``nnx.Module``s: norms, MLPs, linear maps, embedding.

All parameters live in ``param_dtype``; compute happens in ``dtype`` (params cast at use);
normalisation statistics are taken in float32 whatever ``dtype`` is.

* RMSNorm:   y = x / sqrt(mean(x²) + ε) · w                       (Llama / Qwen2, arXiv:1910.07467)
* LayerNorm: y = (x − mean x) / sqrt(var x + ε) · w + b            (GPT-2, arXiv:1607.06450)
* none:      y = x   (LayerNorm-free variants of arXiv:2501.03489, Table 1)
* MLP swiglu: W_down (silu(W_gate x) ⊙ W_up x)                     (arXiv:2002.05202)
  gelu / relu: W_down act(W_up x);  identity: W_down W_up x  (the "SM" variants of arXiv:2501.03489)

Weight reparameterisations of a linear map (``reparam``), the LayerNorm alternatives that
arXiv:2501.03489 (Table 5) applies to the QK, V, O and FFN weights:

* ``"weight"``   weight normalisation (Salimans & Kingma, arXiv:1602.07868): W = g · V / ‖V‖,
                 the norm over the input axes for each output unit; g (learnable, one per output
                 unit) starts at ‖V‖, so W = V at initialisation.
* ``"spectral"`` spectral normalisation (Miyato et al., arXiv:1802.05957): W = V / σ(V), σ the
                 largest singular value of V viewed as a [fan_in, fan_out] matrix. σ = uᵀ V v
                 with u, v from ``SPECTRAL_POWER_ITERS`` power iterations started from a fixed
                 vector and held constant under differentiation (as Miyato et al. do). Choice:
                 stateless — Miyato et al. keep u between steps and run one iteration per step;
                 here every forward restarts, so the functional forward needs no mutable state.

References: arXiv:1910.07467, arXiv:2002.05202, arXiv:2501.03489, arXiv:1602.07868,
arXiv:1802.05957.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

NORMS = ("rmsnorm", "layernorm", "none")
MLPS = ("swiglu", "gelu", "relu", "identity")
REPARAMS = ("none", "weight", "spectral")
SPECTRAL_POWER_ITERS = 100


def spectral_norm_estimate(w2d, iters: int = SPECTRAL_POWER_ITERS):
    """Largest singular value of a 2-D matrix by power iteration (u, v without gradient).

    Starts from v = 1/√n (fixed); returns σ = uᵀ W v, whose gradient is u vᵀ (Miyato et al.).
    """
    w = w2d.astype(jnp.float32)
    v = jnp.full((w.shape[1],), 1.0 / math.sqrt(w.shape[1]), jnp.float32)
    ws = jax.lax.stop_gradient(w)

    def body(_, v):
        u = ws @ v
        u = u / (jnp.linalg.norm(u) + 1e-12)
        v = ws.T @ u
        return v / (jnp.linalg.norm(v) + 1e-12)

    v = jax.lax.fori_loop(0, iters, body, v)
    u = ws @ v
    u = jax.lax.stop_gradient(u / (jnp.linalg.norm(u) + 1e-12))
    v = jax.lax.stop_gradient(v)
    return u @ w @ v


def _reparam_kernel(kernel, gain, kind: str, n_in: int):
    """The effective kernel W for ``kind`` (module docstring); V = ``kernel`` [*in, *out]."""
    if kind == "none":
        return kernel
    v = kernel.astype(jnp.float32)
    in_axes = tuple(range(n_in))
    if kind == "weight":
        norm = jnp.sqrt(jnp.sum(v * v, axis=in_axes, keepdims=True))
        return (gain.astype(jnp.float32) * v / norm).astype(kernel.dtype)
    fan_in = math.prod(v.shape[:n_in])
    sigma = spectral_norm_estimate(v.reshape(fan_in, -1))
    return (v / sigma).astype(kernel.dtype)


def _check_reparam(reparam):
    if reparam not in REPARAMS:
        raise ValueError(f"reparam must be one of {REPARAMS}, got {reparam!r}")


def _normal(rngs: nnx.Rngs, shape, std: float, dtype) -> nnx.Param:
    return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype=jnp.float32).astype(dtype))


def _matmul_2d(x, w, n_in: int):
    """Contract the last ``n_in`` axes of x with the first ``n_in`` of w, as one 2-D matmul.

    Same result as ``jnp.tensordot(x, w, n_in)``, but both operands are flattened to 2-D first.
    XLA:CPU turns the backward of a contraction over 3-D activations into a slow dot (the MLP of
    the ``tiny`` preset took 155 ms forward + backward that way vs 78 ms flattened, 2 cores), and
    the flattened form is what every backend's GEMM wants anyway.
    """
    lead, k_shape = x.shape[: x.ndim - n_in], x.shape[x.ndim - n_in :]
    out_shape = w.shape[n_in:]
    k = math.prod(k_shape)
    y = jnp.dot(x.reshape(-1, k), w.reshape(k, -1))
    return y.reshape(*lead, *out_shape)


class Linear(nnx.Module):
    """y = x W (+ b); W ``[d_in, *out_shape]`` (so heads can be a separate axis).

    ``reparam`` (module docstring): W from ``kernel`` by weight or spectral normalisation; the
    weight-norm gain ``gain`` has shape ``out_shape``.
    """

    def __init__(self, d_in, out_shape, *, bias, std, param_dtype, dtype, rngs, reparam="none"):
        _check_reparam(reparam)
        out_shape = tuple(out_shape) if isinstance(out_shape, (tuple, list)) else (out_shape,)
        self.kernel = _normal(rngs, (d_in, *out_shape), std, param_dtype)
        self.bias = nnx.Param(jnp.zeros(out_shape, param_dtype)) if bias else None
        self.reparam = reparam
        k = self.kernel[...].astype(jnp.float32)
        gain = jnp.sqrt(jnp.sum(k * k, axis=0)).astype(param_dtype)
        self.gain = nnx.Param(gain) if reparam == "weight" else None
        self.dtype = dtype

    def weight(self):
        """The effective W ``[d_in, *out_shape]`` (param dtype)."""
        return _reparam_kernel(
            self.kernel[...], None if self.gain is None else self.gain[...], self.reparam, 1
        )

    def __call__(self, x):
        w = self.weight().astype(self.dtype)
        y = _matmul_2d(x.astype(self.dtype), w, 1)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class OutLinear(nnx.Module):
    """y = Σ_{h,k} x[..., h, k] W[h, k, :]  (attention output projection, W ``[H, d_head, D]``)."""

    def __init__(self, in_shape, d_out, *, std, param_dtype, dtype, rngs, reparam="none"):
        _check_reparam(reparam)
        self.kernel = _normal(rngs, (*in_shape, d_out), std, param_dtype)
        self.reparam = reparam
        k = self.kernel[...].astype(jnp.float32)
        gain = jnp.sqrt(jnp.sum(k * k, axis=(0, 1))).astype(param_dtype)
        self.gain = nnx.Param(gain) if reparam == "weight" else None
        self.dtype = dtype

    def weight(self):
        """The effective W ``[H, d_head, D]`` (param dtype)."""
        return _reparam_kernel(
            self.kernel[...], None if self.gain is None else self.gain[...], self.reparam, 2
        )

    def __call__(self, x):
        w = self.weight().astype(self.dtype)
        return _matmul_2d(x.astype(self.dtype), w, 2)


class Norm(nnx.Module):
    """RMSNorm / LayerNorm / identity over the last axis; statistics in float32."""

    def __init__(self, d, *, kind, eps, param_dtype, dtype):
        if kind not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")
        self.kind, self.eps, self.dtype = kind, eps, dtype
        self.scale = nnx.Param(jnp.ones((d,), param_dtype)) if kind != "none" else None
        self.bias = nnx.Param(jnp.zeros((d,), param_dtype)) if kind == "layernorm" else None

    def __call__(self, x):
        if self.kind == "none":
            return x.astype(self.dtype)
        xf = x.astype(jnp.float32)
        if self.kind == "layernorm":
            xf = xf - jnp.mean(xf, axis=-1, keepdims=True)
        y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        # HF Llama casts to the input dtype before multiplying by the weight.
        y = y.astype(self.dtype) * self.scale[...].astype(self.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class MLP(nnx.Module):
    """Position-wise feed-forward block (see module docstring for the variants)."""

    def __init__(self, d_model, d_ff, *, kind, std, param_dtype, dtype, rngs, reparam="none"):
        if kind not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {kind!r}")
        kw = dict(
            bias=False, std=std, param_dtype=param_dtype, dtype=dtype, rngs=rngs, reparam=reparam
        )
        self.kind = kind
        self.gate = Linear(d_model, d_ff, **kw) if kind == "swiglu" else None
        self.up = Linear(d_model, d_ff, **kw)
        self.down = Linear(d_ff, d_model, **kw)

    def __call__(self, x):
        h = self.up(x)
        if self.kind == "swiglu":
            h = jax.nn.silu(self.gate(x)) * h
        elif self.kind == "gelu":
            h = jax.nn.gelu(h, approximate=False)
        elif self.kind == "relu":
            h = jax.nn.relu(h)
        return self.down(h)


class Embed(nnx.Module):
    """Token embedding table ``[V, D]``; ``attend`` gives h Eᵀ for tied output logits."""

    def __init__(self, vocab_size, d_model, *, std, param_dtype, dtype, rngs):
        self.embedding = _normal(rngs, (vocab_size, d_model), std, param_dtype)
        self.dtype = dtype

    def __call__(self, tokens):
        # An id outside [0, V) gives a NaN row (jnp.take's "fill" mode), never a silent wrap:
        # negative ids are mapped past the end first, as they would otherwise index from the back.
        table = self.embedding[...]
        tokens = jnp.where(tokens < 0, table.shape[0], tokens)
        return jnp.take(table, tokens, axis=0, mode="fill", fill_value=jnp.nan).astype(self.dtype)
