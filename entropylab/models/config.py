"""``TransformerConfig``: a frozen, keyword-only, validated description of the decoder.

Presets (classmethods, each taking ``**overrides``):

| preset        | d_model | layers | heads (kv) | d_ff | params (V=256) | use              |
|---------------|---------|--------|------------|------|----------------|------------------|
| ``smoke``     | 32      | 2      | 4 (2)      | 64   | ~35k           | unit tests       |
| ``tiny``      | 128     | 4      | 4 (4)      | 512  | ~1.1M          | CPU studies      |
| ``small_cpu`` | 384     | 8      | 6 (2)      | 1024 | ~12.8M         | CPU benchmarks   |

Full-size HF shapes (GPU/TPU): ``llama2_7b``, ``llama3_8b``, ``llama31_8b``, ``qwen2_7b``.

Derived fields (``n_kv_heads``, ``head_dim``, ``rope``) are resolved at construction, so
``dataclasses.replace(cfg, d_model=..., n_heads=...)`` keeps the old ones unless you pass
``head_dim=None, n_kv_heads=None, rope=None`` to re-derive them.

Context extension: ``max_seq_len`` is the model's working context; the RoPE's pre-extension
length L_orig is a separate, explicit number. ``with_rope`` requires it
(``original_max_position_embeddings=``) for the five length-dependent types (entropy_abf, yarn,
llama3, dynamic, longrope) and raises ``ValueError`` without it — it is never inferred from
``max_seq_len``, which would make e.g. Entropy-ABF's scale 1 at every position below the new
length (plain ABF) without a word:

    TransformerConfig.llama2_7b(max_seq_len=16384).with_rope(
        "entropy_abf", original_max_position_embeddings=4096)

References: arXiv:2302.13971 (Llama), arXiv:2407.21783 (Llama 3), arXiv:2407.10671 (Qwen2).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from entropylab.models.attention import ATTN_IMPLS
from entropylab.models.layers import MLPS, NORMS, REPARAMS
from entropylab.models.rope import RopeConfig

DTYPES = ("float32", "bfloat16", "float16", "float64")
# Named mixed-precision policies: precision -> (param_dtype, dtype). See TransformerConfig.
PRECISIONS = {"float32": ("float32", "float32"), "mixed_bfloat16": ("float32", "bfloat16")}
# RoPE types whose formula depends on the pre-extension length (``with_rope`` requires it).
NEEDS_ORIGINAL_LENGTH = ("entropy_abf", "yarn", "llama3", "dynamic", "longrope")


def _dtype_name(x, field: str) -> str:
    try:
        name = jnp.dtype(x).name
    except TypeError as e:
        raise ValueError(f"{field} must be one of {DTYPES}, got {x!r}") from e
    if name not in DTYPES:
        raise ValueError(f"{field} must be one of {DTYPES}, got {x!r}")
    return name


ATTN_TEMPERATURE_FORMS = ("head_position", "head")
LINEAR_NORM_TARGETS = ("qk", "v", "o", "ffn")
ATTN_LENGTH_SCALINGS = ("none", "ssmax", "llama4")


def _finite(v) -> bool:
    """A real (non-bool) Python/NumPy number that is neither NaN nor infinite."""
    try:
        return not isinstance(v, bool) and math.isfinite(float(v)) and float(v) == v
    except (TypeError, ValueError):
        return False


def _pos_int(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TransformerConfig:
    """Decoder-only transformer hyper-parameters (validated in ``__post_init__``).

    ``n_kv_heads`` (default ``n_heads``) sets GQA/MQA; ``head_dim`` defaults to
    ``d_model // n_heads``; ``rope`` defaults to ``RopeConfig(head_dim=head_dim,
    max_position_embeddings=max_seq_len)``. ``learnable_attn_temperature`` adds the learnable
    softmax temperature of entropy-guided attention (arXiv:2501.03489, the "Entropy-Guided
    Attention" mechanism): logits of head h, query position i are divided by t_{h,i} > 0, stored
    as log t. ``attn_temperature_form="head_position"`` (default, the paper's form) learns
    t ∈ R^{H×max_seq_len} per layer (indexed by the query's RoPE position; a position outside
    [0, max_seq_len) gives NaN, never a silently reused value); ``"head"`` learns one t per head.
    ``attn_temperature_init`` (default 1e-2, the paper's CodeParrot value; it uses 1e-1 for
    Languini) is the initial t everywhere. ``attn_logit_softcap`` (None = off) applies
    cap·tanh(z/cap). ``attn_query_block`` (0 = off) splits the full forward's causal attention into
    query blocks that each read only the keys at or before their last query, skipping the fully
    masked upper-right blocks (same result; see ``models.attention.attend_causal``). All weights
    are initialised N(0, ``init_std``²); norm scales at 1.

    ``attn_impl`` picks the attention implementation when no entropy is asked for and there is
    no soft-cap: ``"blocked"`` the exact path above, ``"xla"`` / ``"cudnn"``
    ``jax.nn.dot_product_attention`` with that implementation, ``"auto"`` (default) the exact
    path on CPU and in cached decode and the backend's fused attention for the full forward on
    GPU / TPU (see ``models.attention``).

    LayerNorm-free variants (arXiv:2501.03489): ``norm="none"``, ``mlp`` in relu / gelu /
    identity, plus ``linear_norm`` ("weight" or "spectral" normalisation of the weights named in
    ``linear_norm_targets`` ⊂ {"qk", "v", "o", "ffn"}, default ("ffn",), the paper's best
    placement, Table 5; see ``models.layers``) and ``ffn_residual_scaling`` (the paper's Eq. 8
    learnable FFN scaling: x ← β_l·x + (1/α_l)·FFN(x) with scalars α_l, β_l per layer, both
    initialised at 1, so the block starts as the plain residual one).

    Log-length attention scaling beside Entropy-ABF (``attn_length_scaling``; n_i = position
    + 1, the query's 1-based position, which for an unpadded causal row is its number of keys):

    * ``"ssmax"``  Scalable-Softmax (arXiv:2501.19399): logits × s_{l,h}·ln n_i, one learnable
      s per layer and head, initialised at ``ssmax_init`` (None = 1 / ln ``max_seq_len``, so the
      factor is 1 at the full training context — our choice; the paper's init is not stated in
      what we read). Applies to every layer.
    * ``"llama4"`` Llama-4's ``attn_temperature_tuning`` (transformers ``Llama4TextAttention``):
      queries × (1 + ``llama4_attn_scale``·ln(1 + ⌊n_i / ``llama4_floor_scale``⌋)) in the NoPE
      layers only (``nope_layers``, required non-empty), as transformers does; defaults 0.1 and
      8192 are Llama-4's.

    ``nope_layers``: indices of layers that apply no rotary embedding (Llama-4's NoPE layers).
    ``dtype`` is the compute dtype; logits, softmax, norms' statistics and entropies are float32.

    Mixed precision, one switch: ``precision="mixed_bfloat16"`` keeps the parameters (and so
    their gradients and the optimizer state) in float32 and runs the matmuls and activations in
    bfloat16 (``param_dtype="float32"``, ``dtype="bfloat16"``); what stays float32 whatever the
    compute dtype: the output logits (float32 accumulation), attention scores, softmax and
    entropy, norm statistics, the RoPE rotation, and every log-softmax / log-prob / entropy /
    KL / loss downstream (``entropylab.logprobs`` and ``ops.fused_logprobs_and_entropy``
    accumulate bf16 inputs in float32 and return float32). ``precision="float32"`` is the
    all-float32 policy. ``precision=None`` (default) leaves ``param_dtype`` / ``dtype`` as given
    (default float32 both). A named policy fixes both dtypes; passing one that disagrees raises
    ``ValueError``; switch an existing config with :meth:`with_precision` (a plain
    ``dataclasses.replace(cfg, precision=...)`` keeps the old, resolved dtypes and so conflicts).
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int | None = None
    head_dim: int | None = None
    d_ff: int
    max_seq_len: int = 2048
    norm: str = "rmsnorm"
    mlp: str = "swiglu"
    tie_embeddings: bool = False
    rope: RopeConfig | None = None
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    learnable_attn_temperature: bool = False
    attn_temperature_form: str = "head_position"
    attn_temperature_init: float = 1e-2
    attn_logit_softcap: float | None = None
    linear_norm: str = "none"
    linear_norm_targets: tuple = ("ffn",)
    ffn_residual_scaling: bool = False
    nope_layers: tuple = ()
    attn_length_scaling: str = "none"
    ssmax_init: float | None = None
    llama4_attn_scale: float = 0.1
    llama4_floor_scale: int = 8192
    attn_query_block: int = 64
    attn_impl: str = "auto"
    init_std: float = 0.02
    param_dtype: Any = None
    dtype: Any = None
    precision: str | None = None

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len"):
            _pos_int(name, getattr(self, name))
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        _pos_int("n_kv_heads", self.n_kv_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"head_dim is required when n_heads ({self.n_heads}) does not divide "
                    f"d_model ({self.d_model})"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        _pos_int("head_dim", self.head_dim)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (RoPE), got {self.head_dim}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ValueError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.rope is None:
            rope = RopeConfig(head_dim=self.head_dim, max_position_embeddings=self.max_seq_len)
            object.__setattr__(self, "rope", rope)
        if not isinstance(self.rope, RopeConfig):
            raise ValueError(f"rope must be a RopeConfig or None, got {type(self.rope).__name__}")
        if self.rope.head_dim != self.head_dim:
            raise ValueError(
                f"rope.head_dim ({self.rope.head_dim}) must equal head_dim ({self.head_dim})"
            )
        if not (_finite(self.norm_eps) and self.norm_eps > 0):
            raise ValueError(f"norm_eps must be a finite number > 0, got {self.norm_eps!r}")
        if not (_finite(self.init_std) and self.init_std > 0):
            raise ValueError(f"init_std must be a finite number > 0, got {self.init_std!r}")
        if not (_finite(self.attn_temperature_init) and self.attn_temperature_init > 0):
            raise ValueError(
                f"attn_temperature_init must be a finite number > 0, "
                f"got {self.attn_temperature_init!r}"
            )
        if self.attn_temperature_form not in ATTN_TEMPERATURE_FORMS:
            raise ValueError(
                f"attn_temperature_form must be one of {ATTN_TEMPERATURE_FORMS}, "
                f"got {self.attn_temperature_form!r}"
            )
        if self.attn_logit_softcap is not None and not (
            _finite(self.attn_logit_softcap) and self.attn_logit_softcap > 0
        ):
            raise ValueError(
                f"attn_logit_softcap must be None or a finite number > 0, "
                f"got {self.attn_logit_softcap!r}"
            )
        if not (isinstance(self.attn_query_block, int) and self.attn_query_block >= 0):
            raise ValueError(
                f"attn_query_block must be an int >= 0 (0 = off), got {self.attn_query_block!r}"
            )
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if self.linear_norm not in REPARAMS:
            raise ValueError(f"linear_norm must be one of {REPARAMS}, got {self.linear_norm!r}")
        targets = self.linear_norm_targets
        if isinstance(targets, str) or not isinstance(targets, (tuple, list)):
            raise ValueError(
                f"linear_norm_targets must be a tuple of {LINEAR_NORM_TARGETS}, got {targets!r}"
            )
        targets = tuple(targets)
        bad = [x for x in targets if x not in LINEAR_NORM_TARGETS]
        if bad or len(set(targets)) != len(targets):
            raise ValueError(
                f"linear_norm_targets must be distinct entries of {LINEAR_NORM_TARGETS}, "
                f"got {self.linear_norm_targets!r}"
            )
        object.__setattr__(self, "linear_norm_targets", targets)
        nope = self.nope_layers
        if isinstance(nope, (str, bytes)) or not isinstance(nope, (tuple, list)):
            raise ValueError(f"nope_layers must be a tuple of layer indices, got {nope!r}")
        nope = tuple(nope)
        if len(set(nope)) != len(nope) or any(
            isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.n_layers
            for i in nope
        ):
            raise ValueError(
                f"nope_layers must be distinct ints in [0, n_layers={self.n_layers}), got {nope!r}"
            )
        object.__setattr__(self, "nope_layers", tuple(sorted(nope)))
        if self.attn_length_scaling not in ATTN_LENGTH_SCALINGS:
            raise ValueError(
                f"attn_length_scaling must be one of {ATTN_LENGTH_SCALINGS}, "
                f"got {self.attn_length_scaling!r}"
            )
        if self.attn_length_scaling == "llama4" and not self.nope_layers:
            raise ValueError(
                "attn_length_scaling='llama4' scales the NoPE layers only (as transformers does); "
                "nope_layers is empty"
            )
        if self.ssmax_init is not None and not _finite(self.ssmax_init):
            raise ValueError(f"ssmax_init must be None or a finite number, got {self.ssmax_init!r}")
        if not (_finite(self.llama4_attn_scale) and self.llama4_attn_scale >= 0):
            raise ValueError(
                f"llama4_attn_scale must be a finite number >= 0, got {self.llama4_attn_scale!r}"
            )
        _pos_int("llama4_floor_scale", self.llama4_floor_scale)
        for name in (
            "tie_embeddings",
            "qkv_bias",
            "learnable_attn_temperature",
            "ffn_residual_scaling",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self._resolve_precision()

    def _resolve_precision(self):
        """``param_dtype`` / ``dtype`` from the ``precision`` policy (see the class docstring)."""
        if self.precision is not None and (
            not isinstance(self.precision, str) or self.precision not in PRECISIONS
        ):
            raise ValueError(
                f"precision must be None or one of {tuple(PRECISIONS)}, got {self.precision!r}"
            )
        policy = PRECISIONS.get(self.precision, ("float32", "float32"))
        for name, want in zip(("param_dtype", "dtype"), policy):
            given = getattr(self, name)
            got = want if given is None else _dtype_name(given, name)
            if self.precision is not None and got != want:
                raise ValueError(
                    f"{name}={given!r} conflicts with precision={self.precision!r} "
                    f"(which means {name}={want!r}); pass one or the other, or switch policy "
                    f"with cfg.with_precision(...)"
                )
            object.__setattr__(self, name, got)

    # ------------------------------------------------------------------------------------------

    @property
    def num_params(self) -> int:
        """Parameter count (embedding counted once when tied)."""
        d, h, hkv, hd = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
        attn = d * hd * (2 * h + 2 * hkv) + (hd * (h + 2 * hkv) if self.qkv_bias else 0)
        if self.learnable_attn_temperature:
            attn += h * (self.max_seq_len if self.attn_temperature_form == "head_position" else 1)
        mlp = (3 if self.mlp == "swiglu" else 2) * d * self.d_ff
        if self.linear_norm == "weight":  # one gain per output unit of each normalised map
            gains = {"qk": hd * (h + hkv), "v": hd * hkv, "o": d}
            gains["ffn"] = (2 * self.d_ff if self.mlp == "swiglu" else self.d_ff) + d
            attn += sum(gains[x] for x in self.linear_norm_targets if x != "ffn")
            mlp += gains["ffn"] if "ffn" in self.linear_norm_targets else 0
        if self.ffn_residual_scaling:
            mlp += 2
        if self.attn_length_scaling == "ssmax":
            attn += h
        norm = {"rmsnorm": d, "layernorm": 2 * d, "none": 0}[self.norm]
        emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return self.n_layers * (attn + mlp + 2 * norm) + norm + emb

    def with_precision(self, precision: str | None) -> TransformerConfig:
        """Copy under the mixed-precision policy ``precision`` (both dtypes re-derived; None gives
        the float32 default)."""
        return dataclasses.replace(self, precision=precision, param_dtype=None, dtype=None)

    def linear_reparam(self, target: str) -> str:
        """The reparameterisation (``linear_norm`` or "none") of weights ``target``."""
        return self.linear_norm if target in self.linear_norm_targets else "none"

    def with_rope(
        self,
        rope_type: str = "default",
        *,
        base: float | None = None,
        original_max_position_embeddings: int | None = None,
        **params,
    ):
        """Copy with a new RoPE (``rope_type`` + HF ``rope_scaling`` keys as ``params``).

        ``original_max_position_embeddings`` (L_orig, the pre-extension length) is required for
        the length-dependent types ``entropy_abf``, ``yarn``, ``llama3``, ``dynamic`` and
        ``longrope`` (``ValueError`` when missing: it is never taken from ``max_seq_len``) and
        rejected for the others, which do not use it. For ``dynamic`` it becomes the RoPE's
        ``max_position_embeddings`` (HF's L for that type); for the other four it is passed as
        the HF key of the same name, with ``max_position_embeddings = max_seq_len``.
        """
        orig = original_max_position_embeddings
        if orig is None:
            orig = params.pop("original_max_position_embeddings", None)
        elif "original_max_position_embeddings" in params:
            raise ValueError("original_max_position_embeddings given twice")
        max_pos = self.max_seq_len
        if rope_type in NEEDS_ORIGINAL_LENGTH:
            if orig is None:
                raise ValueError(
                    f"with_rope({rope_type!r}) needs original_max_position_embeddings (the "
                    f"pre-extension length); it is not inferred from max_seq_len "
                    f"({self.max_seq_len})"
                )
            if not isinstance(orig, int) or isinstance(orig, bool) or orig <= 1:
                raise ValueError(
                    f"original_max_position_embeddings must be an int > 1, got {orig!r}"
                )
            if rope_type == "dynamic":
                max_pos = orig
            else:
                params["original_max_position_embeddings"] = orig
        elif orig is not None:
            raise ValueError(
                f"original_max_position_embeddings is not used by rope_type {rope_type!r}"
            )
        rope = RopeConfig(
            head_dim=self.head_dim,
            rope_type=rope_type,
            base=self.rope.base if base is None else base,
            max_position_embeddings=max_pos,
            params=params,
        )
        return dataclasses.replace(self, rope=rope)

    # -- presets -------------------------------------------------------------------------------

    @classmethod
    def _make(cls, base: dict, overrides: dict, rope_type="default", theta=10_000.0, **rope_p):
        kw = {**base, **overrides}
        if "rope" not in overrides:
            hd = kw.get("head_dim") or kw["d_model"] // kw["n_heads"]
            kw["rope"] = RopeConfig(
                head_dim=hd,
                rope_type=rope_type,
                base=theta,
                max_position_embeddings=kw["max_seq_len"],
                params=rope_p,
            )
        return cls(**kw)

    @classmethod
    def smoke(cls, vocab_size: int = 256, **overrides) -> TransformerConfig:
        """Seconds-scale preset for unit tests (GQA with 2 query heads per key head)."""
        base = dict(
            vocab_size=vocab_size,
            d_model=32,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            d_ff=64,
            max_seq_len=64,
        )
        return cls._make(base, overrides)

    @classmethod
    def tiny(cls, vocab_size: int = 256, **overrides) -> TransformerConfig:
        """≈1M-parameter CPU preset for studies (d 128, 4 layers, 4 heads, SwiGLU 512)."""
        base = dict(
            vocab_size=vocab_size,
            d_model=128,
            n_layers=4,
            n_heads=4,
            d_ff=512,
            max_seq_len=256,
        )
        return cls._make(base, overrides)

    @classmethod
    def small_cpu(cls, vocab_size: int = 256, **overrides) -> TransformerConfig:
        """≈12M-parameter CPU benchmark preset (d 384, 8 layers, 6 heads / 2 kv, SwiGLU 1024)."""
        base = dict(
            vocab_size=vocab_size,
            d_model=384,
            n_layers=8,
            n_heads=6,
            n_kv_heads=2,
            d_ff=1024,
            max_seq_len=512,
        )
        return cls._make(base, overrides)

    @classmethod
    def llama2_7b(cls, **overrides) -> TransformerConfig:
        """LLaMA-2-7B shape (the Entropy-ABF paper's base model; 4k context)."""
        base = dict(
            vocab_size=32000,
            d_model=4096,
            n_layers=32,
            n_heads=32,
            d_ff=11008,
            max_seq_len=4096,
            norm_eps=1e-5,
            dtype="bfloat16",
        )
        return cls._make(base, overrides)

    @classmethod
    def llama3_8b(cls, **overrides) -> TransformerConfig:
        """Llama-3-8B shape (GQA 32/8, θ = 500k, 8k context)."""
        base = dict(
            vocab_size=128256,
            d_model=4096,
            n_layers=32,
            n_heads=32,
            n_kv_heads=8,
            d_ff=14336,
            max_seq_len=8192,
            norm_eps=1e-5,
            dtype="bfloat16",
        )
        return cls._make(base, overrides, theta=500_000.0)

    @classmethod
    def llama31_8b(cls, **overrides) -> TransformerConfig:
        """Llama-3.1-8B shape: Llama-3-8B with ``llama3`` RoPE scaling to 128k."""
        base = dict(
            vocab_size=128256,
            d_model=4096,
            n_layers=32,
            n_heads=32,
            n_kv_heads=8,
            d_ff=14336,
            max_seq_len=131072,
            norm_eps=1e-5,
            dtype="bfloat16",
        )
        return cls._make(
            base,
            overrides,
            "llama3",
            500_000.0,
            factor=8.0,
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        )

    @classmethod
    def qwen2_7b(cls, **overrides) -> TransformerConfig:
        """Qwen2-7B shape (GQA 28/4, q/k/v biases, θ = 1e6, 32k context)."""
        base = dict(
            vocab_size=152064,
            d_model=3584,
            n_layers=28,
            n_heads=28,
            n_kv_heads=4,
            d_ff=18944,
            max_seq_len=32768,
            norm_eps=1e-6,
            qkv_bias=True,
            dtype="bfloat16",
        )
        return cls._make(base, overrides, theta=1_000_000.0)
