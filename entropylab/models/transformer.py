"""Decoder-only transformer (Flax NNX, used functionally) with attention-entropy outputs and a
KV cache.

Pre-norm residual blocks (Llama / Qwen2 / GPT-2 layout):

    x₀ = E[tokens];  x ← x + Attn(Norm(x));  x ← x + MLP(Norm(x));  logits = Norm(x) · W_out

with W_out = Eᵀ when embeddings are tied. Logits are float32 whatever the compute dtype.

Layers are a Python loop over ``nnx.List`` blocks, not ``lax.scan``: at the CPU presets (L ≤ 8)
the unrolled graph compiles in about a second, each layer's KV cache stays a separate buffer that
XLA updates in place, and per-layer options (Entropy-ABF's layer skip) are static.

KV cache (:class:`KVCache`): per layer ``k, v [B, H_kv, T_max, d]`` — the head-major layout, so a
decode step writes one slot in place and reads the cache without a transpose (a ``[B, T, H, d]``
cache made XLA copy the whole cache every step) — plus a per-sequence write cursor ``index [B]``
and a key-validity mask ``mask [B, T_max]``. ``decode`` writes the chunk's keys at slots
``index[b] … index[b]+T−1`` and lets each query attend to the valid slots at or before its own.
Slots order causality; ``positions`` (default: the slot numbers) only drive RoPE and Entropy-ABF,
so left-padded prompts can pass their own positions.

Dynamic-NTK / LongRoPE take the "current length" n from ``max(positions) + 1`` in the full forward
(HF's rule) and from the cache capacity ``T_max`` in ``decode`` (static, and the same for every
step, so cached keys never need re-rotation): a cache of ``T_max`` tokens decodes exactly like the
full forward over ``T_max`` tokens. HF ``generate`` instead rotates each step's keys with that
step's n, which is not consistent with its own full forward beyond ``max_position_embeddings``.

References: arXiv:1706.03762, arXiv:2302.13971 (Llama), arXiv:2407.10671 (Qwen2),
arXiv:2401.07004 (Entropy-ABF), arXiv:2501.03489 (entropy-guided attention).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from entropylab.models import rope as rope_lib
from entropylab.models.attention import Attention, attention_mask
from entropylab.models.config import TransformerConfig
from entropylab.models.layers import MLP, Embed, Linear, Norm


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """Per-layer key/value cache (a pytree).

    Attributes:
      k, v: tuples of L arrays ``[B, H_kv, T_max, d_head]`` (compute dtype; keys rotated).
      index: ``[B]`` int32, number of slots written per sequence (the next write slot).
      mask: ``[B, T_max]`` bool, slot holds a valid (non-padding) token.
    """

    k: tuple
    v: tuple
    index: jax.Array
    mask: jax.Array

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


class Block(nnx.Module):
    """Pre-norm decoder block: attention then MLP, each with a residual connection."""

    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs, layer_idx: int = 0):
        kw = dict(eps=cfg.norm_eps, param_dtype=cfg.param_dtype, dtype=cfg.dtype)
        self.attn_norm = Norm(cfg.d_model, kind=cfg.norm, **kw)
        self.attn = Attention(cfg, rngs=rngs, layer_idx=layer_idx)
        self.mlp_norm = Norm(cfg.d_model, kind=cfg.norm, **kw)
        self.mlp = MLP(
            cfg.d_model,
            cfg.d_ff,
            kind=cfg.mlp,
            std=cfg.init_std,
            param_dtype=cfg.param_dtype,
            dtype=cfg.dtype,
            rngs=rngs,
            reparam=cfg.linear_reparam("ffn"),
        )
        # arXiv:2501.03489 Eq. 8 (learnable FFN scaling): x ← β·x + (1/α)·FFN(x), α = β = 1 at init
        if cfg.ffn_residual_scaling:
            self.ffn_alpha = nnx.Param(jnp.ones((), jnp.float32))
            self.ffn_beta = nnx.Param(jnp.ones((), jnp.float32))
        else:
            self.ffn_alpha = self.ffn_beta = None

    def ffn_residual(self, x):
        """x + MLP(Norm(x)), or β·x + MLP(Norm(x))/α with learnable FFN scaling."""
        y = self.mlp(self.mlp_norm(x))
        if self.ffn_alpha is None:
            return x + y
        beta = self.ffn_beta[...].astype(x.dtype)
        return beta * x + y / self.ffn_alpha[...].astype(y.dtype)


def _write(cache_x, new_x, index):
    """cache_x[b, :, index[b] : index[b]+T] = new_x[b]  (in place under donation)."""
    return jax.vmap(lambda c, x, i: jax.lax.dynamic_update_slice_in_dim(c, x, i, axis=1))(
        cache_x, new_x.astype(cache_x.dtype), index
    )


class Transformer(nnx.Module):
    """Decoder-only LM; see the module docstring and ``entropylab.models`` for the API."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        cfg = config
        self.config = cfg
        self.embed = Embed(
            cfg.vocab_size,
            cfg.d_model,
            std=cfg.init_std,
            param_dtype=cfg.param_dtype,
            dtype=cfg.dtype,
            rngs=rngs,
        )
        self.blocks = nnx.List([Block(cfg, rngs=rngs, layer_idx=i) for i in range(cfg.n_layers)])
        self.final_norm = Norm(
            cfg.d_model,
            kind=cfg.norm,
            eps=cfg.norm_eps,
            param_dtype=cfg.param_dtype,
            dtype=cfg.dtype,
        )
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = Linear(
                cfg.d_model,
                cfg.vocab_size,
                bias=False,
                std=cfg.init_std,
                param_dtype=cfg.param_dtype,
                dtype=cfg.dtype,
                rngs=rngs,
            )

    # -- helpers -------------------------------------------------------------------------------

    def unembedding(self) -> jax.Array:
        """Output matrix W ``[D, V]`` (``embedding.T`` when tied), in ``param_dtype``."""
        if self.lm_head is None:
            return self.embed.embedding[...].T
        return self.lm_head.kernel[...]

    def _logits(self, h):
        w = self.unembedding().astype(self.config.dtype)
        return jnp.einsum("btd,dv->btv", h, w, preferred_element_type=jnp.float32)

    def _rope(self, seq_len):
        """``(inv_freq [rot_dim // 2], attention_factor)`` at current length ``seq_len``."""
        return self.config.rope.frequencies(seq_len)

    def _q_scales(self, positions):
        """Per-layer Entropy-ABF logit scale ``[B, T]`` (None where it is identically 1)."""
        return [
            rope_lib.attention_logit_scale(self.config.rope, positions, i)
            for i in range(self.config.n_layers)
        ]

    def _check_tokens(self, tokens, positions, mask):
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
        for name, a in (("positions", positions), ("attention_mask", mask)):
            if a is not None and a.shape != tokens.shape:
                raise ValueError(
                    f"{name} must have the tokens' shape {tokens.shape}, got {a.shape}"
                )

    # -- full forward --------------------------------------------------------------------------

    def __call__(
        self,
        tokens,
        *,
        positions=None,
        attention_mask=None,
        return_attn_entropy: bool = False,
        return_attn_entropy_map: bool = False,
        return_hidden: bool = False,
    ):
        """Full causal forward pass.

        Args:
          tokens: int ``[B, T]``.
          positions: int ``[B, T]`` RoPE positions (default ``arange(T)``).
          attention_mask: ``[B, T]`` key-padding mask, 1 = valid token.
          return_attn_entropy: add ``aux["attn_entropy"] [L, H]``, the attention entropy of each
            head averaged over valid query rows (and the batch).
          return_attn_entropy_map: add ``aux["attn_entropy_map"] [L, B, H, T]`` (per row).
          return_hidden: return the final-norm hidden ``[B, T, D]`` instead of logits.
        Returns:
          ``(logits [B, T, V] float32 | hidden [B, T, D], aux dict)``.
        """
        tokens = jnp.asarray(tokens)
        self._check_tokens(tokens, positions, attention_mask)
        b, t = tokens.shape
        slots = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if positions is None:
            positions, seq_len = slots, t
        else:
            positions = jnp.asarray(positions, jnp.int32)
            seq_len = jnp.max(positions) + 1
        valid = None if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        allowed = attention_mask_fn(slots, valid, t)
        freqs = self._rope(seq_len)
        q_scales = self._q_scales(positions)
        want_ent = return_attn_entropy or return_attn_entropy_map

        x = self.embed(tokens)
        ents = []
        for blk, q_scale in zip(self.blocks, q_scales):
            h = blk.attn_norm(x)
            k, v = blk.attn.project_kv(h, positions, freqs)
            y, ent = blk.attn(
                h,
                k,
                v,
                positions=positions,
                freqs=freqs,
                q_scale=q_scale,
                allowed=allowed,
                return_entropy=want_ent,
                causal=True,
            )
            x = x + y
            x = blk.ffn_residual(x)
            ents.append(ent)
        h = self.final_norm(x)

        aux = {}
        if want_ent:
            ent_map = jnp.stack(ents)  # [L, B, H, T]
            if return_attn_entropy:
                w = jnp.ones((b, t), jnp.float32) if valid is None else valid.astype(jnp.float32)
                total = jnp.einsum("lbht,bt->lh", ent_map, w)
                aux["attn_entropy"] = total / jnp.maximum(jnp.sum(w), 1.0)
            if return_attn_entropy_map:
                aux["attn_entropy_map"] = ent_map
        if return_hidden:
            return h, aux
        return self._logits(h), aux

    # -- KV cache ------------------------------------------------------------------------------

    def init_cache(self, batch_size: int, max_len: int, *, dtype=None) -> KVCache:
        """Empty cache: k/v ``[B, H_kv, max_len, d]`` zeros per layer, index 0, mask False."""
        cfg = self.config
        if batch_size <= 0 or max_len <= 0:
            raise ValueError(f"batch_size and max_len must be > 0, got {batch_size}, {max_len}")
        dtype = dtype or cfg.dtype
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))
        return KVCache(
            k=zeros,
            v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers)),
            index=jnp.zeros((batch_size,), jnp.int32),
            mask=jnp.zeros((batch_size, max_len), bool),
        )

    def decode(self, tokens, cache: KVCache, *, positions=None, attention_mask=None):
        """Prefill (T > 1) or one step (T = 1) against ``cache``.

        Writes the chunk's keys/values at slots ``cache.index[b] + arange(T)`` (the caller keeps
        ``index + T ≤ T_max``; XLA clamps out-of-range writes), then attends each query to the
        valid slots at or before its own.

        Args:
          tokens: int ``[B, T]``.
          cache: from :meth:`init_cache` or a previous ``decode``.
          positions: int ``[B, T]`` RoPE positions (default: the slot numbers).
          attention_mask: ``[B, T]`` validity of the new tokens (1 = valid; default all valid).
        Returns:
          ``(logits [B, T, V] float32, new cache)``.
        """
        tokens = jnp.asarray(tokens)
        self._check_tokens(tokens, positions, attention_mask)
        b, t = tokens.shape
        if cache.index.shape != (b,):
            raise ValueError(f"cache batch {cache.index.shape[0]} != tokens batch {b}")
        t_max = cache.max_len
        if t > t_max:
            raise ValueError(f"chunk length {t} exceeds the cache capacity {t_max}")
        slots = cache.index[:, None] + jnp.arange(t, dtype=jnp.int32)[None, :]
        positions = slots if positions is None else jnp.asarray(positions, jnp.int32)
        new_valid = (
            jnp.ones((b, t), bool)
            if attention_mask is None
            else jnp.asarray(attention_mask).astype(bool)
        )
        mask = _write(cache.mask[:, None, :], new_valid[:, None, :], cache.index)[:, 0]
        allowed = attention_mask_fn(slots, mask, t_max)
        freqs = self._rope(t_max)
        q_scales = self._q_scales(positions)

        x = self.embed(tokens)
        new_k, new_v = [], []
        for blk, q_scale, ck, cv in zip(self.blocks, q_scales, cache.k, cache.v):
            h = blk.attn_norm(x)
            k, v = blk.attn.project_kv(h, positions, freqs)
            ck, cv = _write(ck, k, cache.index), _write(cv, v, cache.index)
            y, _ = blk.attn(
                h, ck, cv, positions=positions, freqs=freqs, q_scale=q_scale, allowed=allowed
            )
            x = x + y
            x = blk.ffn_residual(x)
            new_k.append(ck)
            new_v.append(cv)
        logits = self._logits(self.final_norm(x))
        return logits, KVCache(k=tuple(new_k), v=tuple(new_v), index=cache.index + t, mask=mask)


attention_mask_fn = attention_mask


def forward(graphdef, state, tokens, **kwargs):
    """Functional forward: ``nnx.merge(graphdef, state)(tokens, **kwargs) -> (logits, aux)``."""
    return nnx.merge(graphdef, state)(tokens, **kwargs)
