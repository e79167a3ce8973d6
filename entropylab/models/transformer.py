"""Decoder-only transformer (Flax NNX, used functionally) with attention-entropy outputs and a
KV cache.

Pre-norm residual blocks (Llama / Qwen2 / GPT-2 layout):

    x₀ = E[tokens];  x ← x + Attn(Norm(x));  x ← x + MLP(Norm(x));  logits = Norm(x) · W_out

with W_out = Eᵀ when embeddings are tied. Logits are float32 whatever the compute dtype.

One per-layer body, :meth:`Block.__call__`, serves both the full forward and ``decode`` (they
differ only in where the keys come from: this chunk, or the chunk written into the cache).
Optional outputs are asked for by name, ``model(tokens, aux=("attn_entropy",))``, and come back
in a :class:`ModelAux` pytree (unrequested fields None). Names carry their shapes
(``x_BxTxD``: batch B, length T, width D; K = H_kv key heads, S key slots, L layers).

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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ModelAux:
    """Optional outputs of :meth:`Transformer.__call__` (a pytree): a field holds an array when
    its name was in ``aux=``, else None.

    Attributes:
      attn_entropy: ``[L, H]`` float32, each head's attention entropy averaged over the valid
        query rows of the whole batch.
      attn_entropy_map: ``[L, B, H, T]`` float32, the entropy of every query row (0 for a row
        that sees no valid key).
    """

    attn_entropy: jax.Array | None = None
    attn_entropy_map: jax.Array | None = None


AUX_FIELDS = tuple(f.name for f in dataclasses.fields(ModelAux))


def _aux_names(aux) -> frozenset:
    """Validated set of requested :class:`ModelAux` field names (``aux`` is static)."""
    names = (aux,) if isinstance(aux, str) else aux
    if not isinstance(names, (tuple, list, set, frozenset)):
        raise TypeError(f"aux must be a tuple of names from {AUX_FIELDS}, got {aux!r}")
    bad = [n for n in names if n not in AUX_FIELDS]
    if bad:
        raise ValueError(f"aux names must be in {AUX_FIELDS}, got {bad!r}")
    return frozenset(names)


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

    def __call__(
        self,
        x_BxTxD,
        kv=None,
        *,
        positions_BxT,
        freqs,
        q_scale_BxT,
        allowed_BxTxS,
        index_B=None,
        entropy=False,
    ):
        """One layer, shared by the full forward and ``decode``.

        ``kv`` None: the full forward (keys are this chunk's T slots; causal, so the
        query-blocked path). ``kv = (k, v)``, each ``[B, H_kv, S, d]``: this layer's cache; the
        chunk's keys/values are written at slots ``index_B[b] + arange(T)`` first.
        Returns ``(x_BxTxD, (k, v), entropy_BxHxT | None)``: the keys/values attended to (the
        updated cache in decode) and, with ``entropy``, the per-row attention entropy.
        """
        h_BxTxD = self.attn_norm(x_BxTxD)
        k_BxKxTxd, v_BxKxTxd = self.attn.project_kv(h_BxTxD, positions_BxT, freqs)
        if kv is not None:
            k_BxKxTxd = _write(kv[0], k_BxKxTxd, index_B)
            v_BxKxTxd = _write(kv[1], v_BxKxTxd, index_B)
        y_BxTxD, ent_BxHxT = self.attn(
            h_BxTxD,
            k_BxKxTxd,
            v_BxKxTxd,
            positions=positions_BxT,
            freqs=freqs,
            q_scale=q_scale_BxT,
            allowed=allowed_BxTxS,
            return_entropy=entropy,
            causal=kv is None,
        )
        x_BxTxD = self.ffn_residual(x_BxTxD + y_BxTxD)
        return x_BxTxD, (k_BxKxTxd, v_BxKxTxd), ent_BxHxT


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

    def _trunk(self, tokens_BxT, *, positions_BxT, allowed_BxTxS, freqs, cache=None, entropy=False):
        """Embedding, the L blocks, final norm: ``(h_BxTxD, [(k, v)] per layer, [entropy])``.

        ``cache`` None: full forward; else each block writes into and reads its cache layer.
        """
        q_scales = self._q_scales(positions_BxT)
        kvs = [None] * len(self.blocks) if cache is None else list(zip(cache.k, cache.v))
        index_B = None if cache is None else cache.index
        x_BxTxD = self.embed(tokens_BxT)
        new_kvs, ents = [], []
        for blk, q_scale_BxT, kv in zip(self.blocks, q_scales, kvs):
            x_BxTxD, kv, ent_BxHxT = blk(
                x_BxTxD,
                kv,
                positions_BxT=positions_BxT,
                freqs=freqs,
                q_scale_BxT=q_scale_BxT,
                allowed_BxTxS=allowed_BxTxS,
                index_B=index_B,
                entropy=entropy,
            )
            new_kvs.append(kv)
            ents.append(ent_BxHxT)
        return self.final_norm(x_BxTxD), new_kvs, ents

    # -- full forward --------------------------------------------------------------------------

    def __call__(
        self,
        tokens,
        *,
        positions=None,
        attention_mask=None,
        aux=(),
        return_hidden: bool = False,
    ):
        """Full causal forward pass.

        Args:
          tokens: int ``[B, T]``.
          positions: int ``[B, T]`` RoPE positions (default ``arange(T)``).
          attention_mask: ``[B, T]`` key-padding mask, 1 = valid token.
          aux: names of the :class:`ModelAux` fields to compute (a static tuple, e.g.
            ``("attn_entropy",)``; a single name may be a str); the others stay None.
          return_hidden: return the final-norm hidden ``[B, T, D]`` instead of logits.
        Returns:
          ``(logits [B, T, V] float32 | hidden [B, T, D], ModelAux)``.
        """
        want = _aux_names(aux)
        tokens = jnp.asarray(tokens)
        self._check_tokens(tokens, positions, attention_mask)
        b, t = tokens.shape
        slots_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if positions is None:
            positions, seq_len = slots_BxT, t
        else:
            positions = jnp.asarray(positions, jnp.int32)
            seq_len = jnp.max(positions) + 1
        valid_BxT = None if attention_mask is None else jnp.asarray(attention_mask).astype(bool)
        h_BxTxD, _, ents = self._trunk(
            tokens,
            positions_BxT=positions,
            allowed_BxTxS=attention_mask_fn(slots_BxT, valid_BxT, t),
            freqs=self._rope(seq_len),
            entropy=bool(want),
        )

        out = {}
        if want:
            ent_LxBxHxT = jnp.stack(ents)
            if "attn_entropy" in want:
                w_BxT = (
                    jnp.ones((b, t), jnp.float32)
                    if valid_BxT is None
                    else valid_BxT.astype(jnp.float32)
                )
                total_LxH = jnp.einsum("lbht,bt->lh", ent_LxBxHxT, w_BxT)
                out["attn_entropy"] = total_LxH / jnp.maximum(jnp.sum(w_BxT), 1.0)
            if "attn_entropy_map" in want:
                out["attn_entropy_map"] = ent_LxBxHxT
        if return_hidden:
            return h_BxTxD, ModelAux(**out)
        return self._logits(h_BxTxD), ModelAux(**out)

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
        h_BxTxD, kvs, _ = self._trunk(
            tokens,
            positions_BxT=positions,
            allowed_BxTxS=attention_mask_fn(slots, mask, t_max),
            freqs=self._rope(t_max),
            cache=cache,
        )
        k, v = (tuple(x) for x in zip(*kvs))
        logits = self._logits(h_BxTxD)
        return logits, KVCache(k=k, v=v, index=cache.index + t, mask=mask)


attention_mask_fn = attention_mask


def forward(graphdef, state, tokens, **kwargs):
    """Functional forward: ``nnx.merge(graphdef, state)(tokens, **kwargs) -> (logits, aux)``."""
    return nnx.merge(graphdef, state)(tokens, **kwargs)
