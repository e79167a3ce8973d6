"""Causal multi-head / grouped-query attention with optional per-head attention entropy.

Logits, for query i (cache slot ``q_slot``), key slot j, query head h, key head h // G:

    z_hij = c_hi · (q_hi · k_j) ,   c_hi = s_i / (√d · τ_hi)
    z_hij ← cap · tanh(z_hij / cap)               (optional soft-cap, Gemma-2 style)
    a_hij = softmax_j(z_hij)  over j ≤ q_slot_i with valid keys
    H_hi  = −Σ_j a_hij ln a_hij = ln Σ_j e^{z_hij − m} − Σ_j a_hij (z_hij − m)

where ``s_i`` is the per-query Entropy-ABF logit scale (1 unless enabled; it multiplies the
logit, i.e. the query — keys are never scaled) times the optional log-length factor
(Scalable-Softmax s_h·ln n_i, arXiv:2501.19399, or Llama-4's attention temperature tuning
1 + a·ln(1 + ⌊n_i / F⌋) in NoPE layers; n_i = position + 1), τ_hi > 0 the learnable softmax
temperature of entropy-guided attention (1 unless enabled; per head and query position, the
paper's form, or per head only), and m the row max.
Softmax and entropy are taken in float32 whatever the compute dtype; the entropy is
``entropylab.ops.attention_entropy(z, mask, from_logits=True)``. A row with no visible key (a
padded query that sees only padding) gets uniform weights (a finite, meaningless output) and
H = 0, never NaN; such rows are excluded from every aggregate.

Implementations (``TransformerConfig.attn_impl``, resolved per call by :func:`resolve_attn_impl`):
``"blocked"`` is the exact path above (:func:`attend_causal` / :func:`attend`), the only one
that returns entropies and applies the soft-cap; ``"xla"`` / ``"cudnn"`` call
``jax.nn.dot_product_attention`` with that ``implementation`` (:func:`attend_fused`; same
logits, mask and float32 softmax; a per-query logit scale is folded into the queries);
``"auto"`` is ``"blocked"`` on CPU and for cached decode, and the backend's fused attention for
the full forward on GPU (``"cudnn"`` for bf16/fp16 with head_dim ≤ 128 and divisible by 8, else
``"xla"``) and TPU (``"xla"``). Whatever the setting, a call that asks for entropies or has a
soft-cap takes ``"blocked"``.

GQA head order follows Hugging Face ``repeat_kv``: query head h reads key/value head h // G,
G = H / H_kv.

Shapes: q ``[B, T, H, d]``; k, v ``[B, H_kv, S, d]`` (the KV-cache layout, so decode never
transposes the cache); output ``[B, T, H, d]``; entropy ``[B, H, T]``.

References: arXiv:1706.03762 (attention), arXiv:2305.13245 (GQA), arXiv:2501.03489 (learnable
temperature t ∈ R^{H×T} of its entropy-guided attention, whose logits are q·k / (t·√d_k);
entropy per head, Eq. 7), arXiv:2401.07004 (Entropy-ABF logit scale),
arXiv:2303.06296 (attention-entropy collapse).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from entropylab.models.layers import Linear, OutLinear
from entropylab.models.rope import apply_rope
from entropylab.ops.entropy import attention_entropy

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)
ATTN_IMPLS = ("auto", "blocked", "xla", "cudnn")


def resolve_attn_impl(impl, *, causal, dtype, head_dim, backend=None) -> str:
    """``"blocked"``, ``"xla"`` or ``"cudnn"`` for the setting ``impl`` (module docstring).

    ``causal``: a full forward (False: cached decode); ``backend`` default
    ``jax.default_backend()``.
    """
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    backend = (backend or jax.default_backend()).lower()
    if backend == "cpu" or not causal:
        return "blocked"
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    if backend in ("gpu", "cuda") and half and head_dim <= 128 and head_dim % 8 == 0:
        return "cudnn"
    return "xla"


def attend_fused(q, k, v, *, allowed, logit_scale, causal, implementation):
    """:func:`attend` (without entropy or soft-cap) through ``jax.nn.dot_product_attention``.

    ``logit_scale`` is a Python float (passed as the op's ``scale``) or an array broadcastable
    to ``[B, H, T]``, folded into the queries (q_hi ← c_hi·q_hi in float32, then the compute
    dtype) with scale 1. k, v ``[B, H_kv, S, d]`` are transposed to the op's ``[B, S, H_kv, d]``
    (in decode that is a copy of the cache per step; ``"auto"`` keeps decode on the exact path).
    ``causal`` (query i in slot i) adds the op's causal mask on top of ``allowed``, which lets
    cuDNN skip the masked blocks. A row with no visible key gets uniform weights, as in
    :func:`attend` (the XLA implementation; cuDNN's was checked on an H200: finite, and
    within bf16 noise of the exact path on a left-padded batch, ``bench/README.md``).
    Returns ``out [B, T, H, d]``.
    """
    b, t, h, _ = q.shape
    if isinstance(logit_scale, float):
        scale = logit_scale
    else:
        c = jnp.broadcast_to(jnp.asarray(logit_scale, jnp.float32), (b, h, t))
        q = (q.astype(jnp.float32) * c.transpose(0, 2, 1)[..., None]).astype(q.dtype)
        scale = 1.0
    return jax.nn.dot_product_attention(
        q,
        k.transpose(0, 2, 1, 3),
        v.transpose(0, 2, 1, 3),
        mask=allowed[:, None, :, :],
        scale=scale,
        is_causal=causal,
        implementation=implementation,
    )


def attention_mask(q_slot, k_valid, num_keys):
    """allowed[b, i, j] = (j ≤ q_slot[b, i]) ∧ k_valid[b, j];  ``[B, T, S]`` bool."""
    j = jnp.arange(num_keys, dtype=jnp.int32)
    causal = j[None, None, :] <= q_slot[:, :, None]
    if k_valid is None:
        return causal
    return causal & k_valid[:, None, :].astype(bool)


def attend(q, k, v, *, allowed, logit_scale, softcap=None, return_entropy=False):
    """Grouped-query softmax attention; see module docstring.

    The G query heads that share a key head are stacked along the query axis, so both products
    are single batched matmuls ``[B·H_kv, G·T, d] × [B·H_kv, S, d]ᵀ`` over the cache layout as
    is (no key/value repeat, no cache transpose). On 2 CPU cores this layout took 42 ms forward
    + backward at the ``tiny`` preset's shapes (B 32, T 128, H 4, d 32) and 145 ms at
    ``small_cpu``'s (B 16, T 256, H 6/2, d 64), against 65–68 ms and 206–213 ms for a
    ``[B, H_kv, G, T, S]`` einsum or ``jax.nn.dot_product_attention`` with a mask.

    Args:
      q: ``[B, T, H, d]``; k, v: ``[B, H_kv, S, d]``; allowed: ``[B, T, S]`` bool.
      logit_scale: float, broadcastable to ``[B, H, T]`` (c_hi above).
      softcap: optional float > 0.
      return_entropy: also return the per-row entropy ``[B, H, T]`` (float32; 0 for a row with
        no visible key).
    Returns:
      ``out [B, T, H, d]`` (dtype of v) and entropy or None.
    """
    b, t, h, d = q.shape
    hkv, s = k.shape[1], k.shape[2]
    g = h // hkv
    acc = jnp.promote_types(q.dtype, jnp.float32)
    qg = q.reshape(b, t, hkv, g, d).transpose(0, 2, 3, 1, 4).reshape(b * hkv, g * t, d)
    z = jnp.einsum("nqd,nsd->nqs", qg, k.reshape(b * hkv, s, d), preferred_element_type=acc)
    z = z.reshape(b, hkv, g, t, s)
    scale = jnp.broadcast_to(jnp.asarray(logit_scale, acc), (b, h, t))
    z = z * scale.reshape(b, hkv, g, t)[..., None]
    if softcap is not None:
        z = softcap * jnp.tanh(z / softcap)
    mask = allowed[:, None, None, :, :]
    p = jax.nn.softmax(jnp.where(mask, z, _NEG), axis=-1)
    p = p.astype(v.dtype).reshape(b * hkv, g * t, s)
    out = jnp.einsum("nqs,nsd->nqd", p, v.reshape(b * hkv, s, d))
    out = out.reshape(b, hkv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)
    if not return_entropy:
        return out, None
    # H = logsumexp(z) − Σ softmax(z)·z over the visible keys (0 for a row with none).
    ent = attention_entropy(z, mask, from_logits=True)
    return out, ent.reshape(b, h, t)


def attend_causal(q, k, v, *, allowed, logit_scale, block, softcap=None, return_entropy=False):
    """:func:`attend` for a full causal forward (query i in slot i, keys = the same T slots),
    computed in query blocks of ``block`` rows, block j reading only keys ``[0, end_j)``.

    Keys after a block's last query are masked for every query of the block, so dropping them
    changes nothing (the result equals :func:`attend` on the whole sequence; tested), while the
    work shrinks from T² to about T²/2 + T·block/2 and each block's scores stay smaller (cache).
    On 2 CPU cores, forward + backward of one attention core: 47 → 27 ms at the ``tiny``
    preset's shapes (B 32, T 128, block 64) and 153 → 114 ms at ``small_cpu``'s (B 16, T 256).
    ``block <= 0`` or ``block >= T`` is plain :func:`attend`.
    """
    b, t, h, _ = q.shape
    if block <= 0 or block >= t:
        return attend(
            q,
            k,
            v,
            allowed=allowed,
            logit_scale=logit_scale,
            softcap=softcap,
            return_entropy=return_entropy,
        )
    scale = jnp.broadcast_to(jnp.asarray(logit_scale, jnp.float32), (b, h, t))
    outs, ents = [], []
    for s0 in range(0, t, block):
        s1 = min(t, s0 + block)
        o, e = attend(
            q[:, s0:s1],
            k[:, :, :s1],
            v[:, :, :s1],
            allowed=allowed[:, s0:s1, :s1],
            logit_scale=scale[:, :, s0:s1],
            softcap=softcap,
            return_entropy=return_entropy,
        )
        outs.append(o)
        ents.append(e)
    out = jnp.concatenate(outs, axis=1)
    return out, (jnp.concatenate(ents, axis=2) if return_entropy else None)


class Attention(nnx.Module):
    """One attention layer: q/k/v projections, RoPE, :func:`attend`, output projection."""

    def __init__(self, cfg, *, rngs: nnx.Rngs, layer_idx: int = 0):
        kw = dict(std=cfg.init_std, param_dtype=cfg.param_dtype, dtype=cfg.dtype, rngs=rngs)
        self.use_rope = layer_idx not in cfg.nope_layers
        if cfg.attn_length_scaling == "ssmax":
            s0 = cfg.ssmax_init
            if s0 is None:
                s0 = 1.0 / math.log(cfg.max_seq_len) if cfg.max_seq_len > 1 else 1.0
            self.ssmax_s = nnx.Param(jnp.full((cfg.n_heads,), float(s0), jnp.float32))
        else:
            self.ssmax_s = None
        self.llama4_tuning = None
        if cfg.attn_length_scaling == "llama4" and not self.use_rope:
            self.llama4_tuning = (float(cfg.llama4_attn_scale), int(cfg.llama4_floor_scale))
        d, h, hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        qk, rv, ro = (cfg.linear_reparam(x) for x in ("qk", "v", "o"))
        self.q_proj = Linear(cfg.d_model, (h, d), bias=cfg.qkv_bias, reparam=qk, **kw)
        self.k_proj = Linear(cfg.d_model, (hkv, d), bias=cfg.qkv_bias, reparam=qk, **kw)
        self.v_proj = Linear(cfg.d_model, (hkv, d), bias=cfg.qkv_bias, reparam=rv, **kw)
        self.o_proj = OutLinear((h, d), cfg.d_model, reparam=ro, **kw)
        if cfg.learnable_attn_temperature:
            # τ = exp(log τ) keeps the temperature positive under any update. Shape [H, T_max]
            # (per head and query position, arXiv:2501.03489) or [H] (per head).
            init = math.log(cfg.attn_temperature_init)
            shape = (h, cfg.max_seq_len) if cfg.attn_temperature_form == "head_position" else (h,)
            self.log_temperature = nnx.Param(jnp.full(shape, init, jnp.float32))
        else:
            self.log_temperature = None
        self.head_dim = d
        self.softcap = cfg.attn_logit_softcap
        self.query_block = cfg.attn_query_block
        self.impl = cfg.attn_impl

    def temperature(self, positions=None):
        """Softmax temperature τ, or None when not learnable.

        Without ``positions``: the stored table, ``[H, T_max]`` (per head and position) or
        ``[H]``. With ``positions`` ``[B, T]``: τ for those queries, ``[B, H, T]`` (``[1, H, 1]``
        in the per-head form); a position outside ``[0, T_max)`` gets NaN.
        """
        if self.log_temperature is None:
            return None
        tau = jnp.exp(self.log_temperature[...].astype(jnp.float32))
        if positions is None:
            return tau
        if tau.ndim == 1:
            return tau[None, :, None]
        pos = jnp.asarray(positions, jnp.int32)
        got = jnp.take(tau, pos, axis=1, mode="fill", fill_value=jnp.nan)  # [H, B, T]
        return got.transpose(1, 0, 2)

    def length_scale(self, positions):
        """Log-length logit factor ``[B, H or 1, T]`` for queries at ``positions`` ``[B, T]``, or
        None: s_h·ln(n) (Scalable-Softmax) or 1 + a·ln(1 + ⌊n / F⌋) (Llama-4), n = position + 1.
        """
        if self.ssmax_s is None and self.llama4_tuning is None:
            return None
        n = jnp.asarray(positions).astype(jnp.float32) + 1.0  # [B, T]
        if self.ssmax_s is not None:
            s = self.ssmax_s[...].astype(jnp.float32)
            return s[None, :, None] * jnp.log(n)[:, None, :]
        a, floor = self.llama4_tuning
        return (1.0 + a * jnp.log1p(jnp.floor(n / floor)))[:, None, :]

    def project_kv(self, x, positions, freqs):
        """New keys/values ``[B, H_kv, T, d]`` (keys rotated unless a NoPE layer) for x
        ``[B, T, D]``.

        ``freqs = (inv_freq, attention_factor)`` from ``RopeConfig.frequencies``.
        """
        k = self.k_proj(x)
        if self.use_rope:
            k = apply_rope(k, positions, *freqs)
        v = self.v_proj(x)
        return k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)

    def __call__(
        self, x, k, v, *, positions, freqs, q_scale, allowed, return_entropy=False, causal=False
    ):
        """x ``[B, T, D]``, k/v ``[B, H_kv, S, d]`` (already including this chunk's keys).

        ``q_scale`` ``[B, T]`` is the Entropy-ABF per-query logit scale (or None). ``causal``
        (the full forward: query i sits in slot i of the same T keys) allows the query-blocked
        :func:`attend_causal`. Returns ``(y [B, T, D], entropy [B, H, T] | None)``.
        ``self.impl`` picks the attention implementation (module docstring).
        """
        q = self.q_proj(x)
        if self.use_rope:
            q = apply_rope(q, positions, *freqs)
        scale = jnp.full((1, 1, 1), 1.0 / math.sqrt(self.head_dim), jnp.float32)
        per_query = False
        length = self.length_scale(positions)
        if length is not None:
            scale, per_query = scale * length, True
        if q_scale is not None:
            scale, per_query = scale * q_scale[:, None, :].astype(jnp.float32), True
        tau = self.temperature(positions)
        if tau is not None:
            scale, per_query = scale / tau, True
        impl = resolve_attn_impl(self.impl, causal=causal, dtype=q.dtype, head_dim=self.head_dim)
        if impl != "blocked" and not return_entropy and self.softcap is None:
            kw = dict(allowed=allowed, causal=causal)
            kw["logit_scale"] = scale if per_query else 1.0 / math.sqrt(self.head_dim)
            if self.impl != "auto":
                return self.o_proj(attend_fused(q, k, v, implementation=impl, **kw)), None
            try:  # "auto": cuDNN refuses unsupported shapes while tracing; then XLA's
                return self.o_proj(attend_fused(q, k, v, implementation=impl, **kw)), None
            except (ValueError, NotImplementedError, RuntimeError):
                return self.o_proj(attend_fused(q, k, v, implementation="xla", **kw)), None
        out, ent = attend_causal(
            q,
            k,
            v,
            allowed=allowed,
            logit_scale=scale,
            block=self.query_block if causal else 0,
            softcap=self.softcap,
            return_entropy=return_entropy,
        )
        return self.o_proj(out), ent
