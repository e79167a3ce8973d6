"""Rotary position embeddings (RoPE) and their context-extension scalings, as pure jnp functions.

Every scaling maps a config to ``(inv_freq [rot_dim // 2], attention_factor)``. The types that
Hugging Face ``transformers.modeling_rope_utils`` also has (``default``, ``linear``, ``dynamic``,
``yarn``, ``longrope``, ``llama3``) use HF's names, keys (``rope_scaling`` / ``rope_parameters``)
and semantics, so such an HF dict maps over unchanged:

    rope_frequencies(d.pop("rope_type"), head_dim=..., base=rope_theta, **d)

``ntk``, ``abf`` and ``entropy_abf`` are entropylab's own names (not HF types): ``ntk`` is the
static NTK-aware rule of older transformers releases (since removed there), ``abf`` and
``entropy_abf`` come from the papers below; the GAIR-NLP/Entropy-ABF patch calls its type
``"eabf"``, which :func:`rope_config_from_hf` maps to ``entropy_abf``.

Not supported (``ValueError``, never a silent fallback): HF's ``proportional`` type (Gemma-4:
zero frequencies for the non-rotated part and exponents over the full head_dim) and
per-layer-type (nested) ``rope_parameters``. transformers 5.24's ``ROPE_INIT_FUNCTIONS`` holds
linear, dynamic, yarn, longrope, llama3 and proportional.

Base frequencies θ_i = b^(−2i/d), i = 0 … d/2 − 1, with d = rot_dim = int(head_dim ·
partial_rotary_factor) and wavelength λ_i = 2π/θ_i. Types:

* ``default``     θ_i; attention_factor 1.
* ``linear``      (PI) θ_i / factor.
* ``ntk``         static NTK-aware base change b' = b · factor^(d/(d−2)).
* ``dynamic``     dynamic NTK: with n = max(seq_len, L), L = ``max_position_embeddings``,
                  b' = b · (factor·n/L − (factor − 1))^(d/(d−2)); identical to default for n ≤ L.
                  ``seq_len`` is HF's ``max(position_ids) + 1`` (a Python int or a traced scalar).
                  Stateless: HF's module also keeps a grown cache until the length drops below L;
                  here the frequencies always follow the current ``seq_len``.
* ``yarn``        NTK-by-parts ramp r_i = clamp((i − low)/(high − low), 0, 1) over the correction
                  range of ``beta_fast``/``beta_slow`` rotations, θ_i' = r_i θ_i/s + (1 − r_i) θ_i;
                  attention_factor = 0.1·ln s + 1 (or mscale ratio, or given).
* ``longrope``    θ_i / ext_i with ext = ``long_factor`` if seq_len > L_orig else ``short_factor``;
                  attention_factor = √(1 + ln s / ln L_orig).
* ``llama3``      keep θ_i if λ_i < L_orig/high, θ_i/factor if λ_i > L_orig/low, smooth between.
* ``abf``         adjusted base frequency: θ_i from ``abf_base`` (default 500,000) instead of b.
* ``entropy_abf`` ``abf`` + a per-query-position attention-logit scale (see
                  :func:`attention_logit_scale`), t(ℓ, i) = max(1, ln i / ln L_orig) with
                  L_orig = ``original_max_position_embeddings`` (required: never inferred from
                  the model length). The paper exempts layers 0 and 1
                  (``entropy_abf_layer_skip=True``, the default here); the authors' released
                  loader does not (every layer scaled, ``entropy_abf_layer_skip=False``, what
                  :func:`rope_config_from_hf` gives for an ``"eabf"`` checkpoint config).

L_orig for yarn / longrope / llama3 falls back to ``max_position_embeddings`` when
``original_max_position_embeddings`` is absent (HF's rule); ``TransformerConfig.with_rope``
does not allow that fallback (it would silently equate the pre-extension length with the
extended one) and requires the original length for all five length-dependent types.

Every number must be finite: a NaN or infinite ``base``, ``factor`` or other parameter raises
``ValueError`` naming it.

The rotary module multiplies cos and sin by ``attention_factor`` (so q·k is scaled by its square),
exactly as HF does; see :func:`apply_rope`.

References: arXiv:2104.09864 (RoPE), arXiv:2306.15595 (PI), arXiv:2309.00071 (YaRN),
arXiv:2402.13753 (LongRoPE), arXiv:2407.21783 (Llama 3), arXiv:2309.16039 (ABF),
arXiv:2401.07004 (Entropy-ABF).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

# Keys every type accepts.
_COMMON_DEFAULTS: dict[str, Any] = {"partial_rotary_factor": 1.0}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """A registered RoPE type.

    ``compute(dim, base, max_position_embeddings, seq_len, p) -> (inv_freq, attention_factor)``
    gets the resolved parameters ``p`` (defaults filled, validated by ``check(dim, max_pos, p)``).
    ``required`` keys must be given; ``defaults`` lists the optional keys with their defaults.
    """

    name: str
    compute: Callable[..., tuple[jax.Array, float]]
    required: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    check: Callable[[int, int | None, dict], None] | None = None


_REGISTRY: dict[str, RopeScaling] = {}


def register_rope_type(
    name: str, compute, *, required=(), defaults=None, check=None
) -> RopeScaling:
    """Register a RoPE type by name; registering an existing name raises ``ValueError``."""
    if name in _REGISTRY:
        raise ValueError(f"rope_type {name!r} is already registered")
    spec = RopeScaling(
        name=name,
        compute=compute,
        required=tuple(required),
        defaults=dict(defaults or {}),
        check=check,
    )
    _REGISTRY[name] = spec
    return spec


def rope_types() -> tuple[str, ...]:
    """Names of the registered RoPE types."""
    return tuple(_REGISTRY)


# HF rope types that entropylab does not implement (module docstring).
UNSUPPORTED_HF_ROPE_TYPES = ("proportional",)


def get_rope_type(name: str) -> RopeScaling:
    """The registered :class:`RopeScaling` named ``name`` (``ValueError`` listing allowed names)."""
    if name in UNSUPPORTED_HF_ROPE_TYPES and name not in _REGISTRY:
        raise ValueError(
            f"rope_type {name!r} (Hugging Face) is not supported; supported: {sorted(_REGISTRY)}"
        )
    if name not in _REGISTRY:
        raise ValueError(f"rope_type must be one of {sorted(_REGISTRY)}, got {name!r}")
    return _REGISTRY[name]


# ----------------------------------------------------------------------------------------------
# Resolution / validation (pure Python, no arrays)


def _rot_dim(head_dim: int, partial_rotary_factor: float) -> int:
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
    if not 0.0 < float(partial_rotary_factor) <= 1.0:
        raise ValueError(f"partial_rotary_factor must be in (0, 1], got {partial_rotary_factor}")
    dim = int(head_dim * partial_rotary_factor)
    if dim < 2 or dim % 2:
        raise ValueError(
            f"rotary dim int(head_dim * partial_rotary_factor) = {dim} must be even and >= 2 "
            f"(head_dim={head_dim}, partial_rotary_factor={partial_rotary_factor})"
        )
    return dim


def _freeze(v):
    if hasattr(v, "tolist") and not isinstance(v, (int, float, bool)):  # NumPy / JAX arrays
        v = v.tolist()
    return tuple(_freeze(x) for x in v) if isinstance(v, (list, tuple)) else v


def _check_finite(name: str, v) -> None:
    """``ValueError`` naming ``name`` if a number (or any entry of a list) is NaN or infinite."""
    if isinstance(v, (list, tuple)):
        for x in v:
            _check_finite(name, x)
    elif isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v!r}")


def _resolve(rope_type: str, head_dim: int, base, max_position_embeddings, params: Mapping):
    """Validate ``params`` for ``rope_type``; return (spec, rot_dim, resolved params)."""
    spec = get_rope_type(rope_type)
    _check_finite("base (rope_theta)", base)
    for k, v in params.items():
        _check_finite(k, _freeze(v))
    allowed = set(spec.required) | set(spec.defaults) | set(_COMMON_DEFAULTS)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for rope_type {rope_type!r}; "
            f"allowed: {sorted(allowed)}"
        )
    missing = sorted(k for k in spec.required if params.get(k) is None)
    if missing:
        raise ValueError(f"rope_type {rope_type!r} requires parameter(s) {missing}")
    if not isinstance(base, (int, float)) or base <= 1:
        raise ValueError(f"base (rope_theta) must be a number > 1, got {base!r}")
    if max_position_embeddings is not None and (
        not isinstance(max_position_embeddings, int) or max_position_embeddings <= 0
    ):
        raise ValueError(
            "max_position_embeddings must be a positive int or None, "
            f"got {max_position_embeddings!r}"
        )
    p = {**_COMMON_DEFAULTS, **spec.defaults}
    p.update({k: _freeze(v) for k, v in params.items() if v is not None})
    dim = _rot_dim(head_dim, p["partial_rotary_factor"])
    if "factor" in p and p["factor"] is not None:
        f = p["factor"]
        if not isinstance(f, (int, float)) or isinstance(f, bool) or f < 1.0:
            raise ValueError(f"factor must be a number >= 1 for rope_type {rope_type!r}, got {f!r}")
    if spec.check is not None:
        spec.check(dim, max_position_embeddings, p)
    return spec, dim, p


def _original_len(p: dict, max_position_embeddings, rope_type: str) -> int:
    """HF's rule: ``original_max_position_embeddings`` falls back to ``max_position_embeddings``."""
    n = p.get("original_max_position_embeddings") or max_position_embeddings
    if n is None:
        raise ValueError(
            f"rope_type {rope_type!r} needs original_max_position_embeddings "
            "(or max_position_embeddings to fall back on)"
        )
    if not isinstance(n, int) or n <= 1:
        raise ValueError(f"original_max_position_embeddings must be an int > 1, got {n!r}")
    return n


# ----------------------------------------------------------------------------------------------
# Frequencies


def _float():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _base_inv_freq(dim: int, base):
    """θ_i = base^(−2i/d), i = 0 … d/2 − 1 (``base`` may be a traced scalar)."""
    exponent = jnp.arange(0, dim, 2).astype(_float()) / dim
    return 1.0 / (jnp.asarray(base, _float()) ** exponent)


def _default(dim, base, max_pos, seq_len, p):
    return _base_inv_freq(dim, base), 1.0


def _linear(dim, base, max_pos, seq_len, p):
    return _base_inv_freq(dim, base) / p["factor"], 1.0


def _ntk(dim, base, max_pos, seq_len, p):
    return _base_inv_freq(dim, base * p["factor"] ** (dim / (dim - 2))), 1.0


def _check_dynamic(dim, max_pos, p):
    if max_pos is None:
        raise ValueError(
            "rope_type 'dynamic' needs max_position_embeddings (the original length L)"
        )


def _dynamic(dim, base, max_pos, seq_len, p):
    if seq_len is None:
        seq_len = max_pos
    if isinstance(seq_len, int):
        n = max(seq_len, max_pos)
    else:
        n = jnp.maximum(jnp.asarray(seq_len, _float()), max_pos)
    factor = p["factor"]
    new_base = base * (factor * n / max_pos - (factor - 1)) ** (dim / (dim - 2))
    return _base_inv_freq(dim, new_base), 1.0


def _check_yarn(dim, max_pos, p):
    orig = _original_len(p, max_pos, "yarn")
    if p.get("factor") is None and max_pos is None:
        raise ValueError("rope_type 'yarn' needs factor (or max_position_embeddings)")
    if p.get("factor") is None and max_pos / orig < 1:
        raise ValueError("yarn: implied factor max_position_embeddings / original < 1")
    if p["beta_fast"] <= p["beta_slow"]:
        raise ValueError(
            f"yarn: beta_fast ({p['beta_fast']}) must be > beta_slow ({p['beta_slow']})"
        )
    if p.get("attention_factor") is not None and p["attention_factor"] <= 0:
        raise ValueError(f"yarn: attention_factor must be > 0, got {p['attention_factor']}")


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(dim, base, max_pos, seq_len, p):
    orig = _original_len(p, max_pos, "yarn")
    factor = p["factor"] if p.get("factor") is not None else max_pos / orig
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = _yarn_mscale(factor, p["mscale"]) / _yarn_mscale(
                factor, p["mscale_all_dim"]
            )
        else:
            attention_factor = _yarn_mscale(factor)

    def correction_dim(rotations):  # dimension whose wavelength fits `rotations` times in orig
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(p["beta_fast"]), correction_dim(p["beta_slow"])
    if p["truncate"]:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = jnp.clip((jnp.arange(dim // 2, dtype=_float()) - low) / (high - low), 0.0, 1.0)
    theta = _base_inv_freq(dim, base)
    return ramp * theta / factor + (1.0 - ramp) * theta, float(attention_factor)


def _check_longrope(dim, max_pos, p):
    orig = _original_len(p, max_pos, "longrope")
    if p.get("factor") is None and max_pos is None:
        raise ValueError("rope_type 'longrope' needs factor (or max_position_embeddings)")
    del orig
    for key in ("short_factor", "long_factor"):
        v = p[key]
        if not isinstance(v, (list, tuple)) or len(v) != dim // 2:
            raise ValueError(f"longrope: {key} must be a list of length rot_dim // 2 = {dim // 2}")
        if any(not isinstance(x, (int, float)) or x <= 0 for x in v):
            raise ValueError(f"longrope: {key} entries must be positive numbers")


def _longrope(dim, base, max_pos, seq_len, p):
    orig = _original_len(p, max_pos, "longrope")
    factor = p["factor"] if p.get("factor") is not None else max_pos / orig
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = (
            1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
        )
    short = jnp.asarray(p["short_factor"], _float())
    long = jnp.asarray(p["long_factor"], _float())
    if seq_len is None or isinstance(seq_len, int):
        ext = long if (seq_len is not None and seq_len > orig) else short
    else:
        ext = jnp.where(jnp.asarray(seq_len) > orig, long, short)
    return _base_inv_freq(dim, base) / ext, float(attention_factor)


def _check_llama3(dim, max_pos, p):
    _original_len(p, max_pos, "llama3")
    if not p["high_freq_factor"] > p["low_freq_factor"] > 0:
        raise ValueError(
            "llama3: need high_freq_factor > low_freq_factor > 0, got "
            f"{p['high_freq_factor']} and {p['low_freq_factor']}"
        )


def _llama3(dim, base, max_pos, seq_len, p):
    orig = _original_len(p, max_pos, "llama3")
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    theta = _base_inv_freq(dim, base)
    wavelen = 2 * math.pi / theta
    smooth = (orig / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * theta / factor + smooth * theta
    out = jnp.where(wavelen > orig / low, theta / factor, theta)
    medium = (wavelen >= orig / high) & (wavelen <= orig / low)
    return jnp.where(medium, smoothed, out), 1.0


def _check_abf(dim, max_pos, p):
    if not isinstance(p["abf_base"], (int, float)) or p["abf_base"] <= 1:
        raise ValueError(f"abf_base must be a number > 1, got {p['abf_base']!r}")


def _check_entropy_abf(dim, max_pos, p):
    _check_abf(dim, max_pos, p)
    _original_len(p, max_pos, "entropy_abf")
    if not isinstance(p["entropy_abf_layer_skip"], bool):
        raise ValueError("entropy_abf_layer_skip must be True (paper) or False (released code)")
    n = p["entropy_abf_num_skip_layers"]
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"entropy_abf_num_skip_layers must be an int >= 0, got {n!r}")


def _abf(dim, base, max_pos, seq_len, p):
    return _base_inv_freq(dim, p["abf_base"]), 1.0


_ABF_DEFAULTS = {"abf_base": 500_000.0, "factor": None}  # factor: accepted (EABF code), unused

register_rope_type("default", _default)
register_rope_type("linear", _linear, required=("factor",))
register_rope_type("ntk", _ntk, required=("factor",))
register_rope_type("dynamic", _dynamic, required=("factor",), check=_check_dynamic)
register_rope_type(
    "yarn",
    _yarn,
    defaults={
        "factor": None,
        "original_max_position_embeddings": None,
        "attention_factor": None,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": None,
        "mscale_all_dim": None,
        "truncate": True,
    },
    check=_check_yarn,
)
register_rope_type(
    "longrope",
    _longrope,
    required=("short_factor", "long_factor"),
    defaults={"factor": None, "original_max_position_embeddings": None, "attention_factor": None},
    check=_check_longrope,
)
register_rope_type(
    "llama3",
    _llama3,
    required=("factor", "low_freq_factor", "high_freq_factor"),
    defaults={"original_max_position_embeddings": None},
    check=_check_llama3,
)
register_rope_type("abf", _abf, defaults=_ABF_DEFAULTS, check=_check_abf)
register_rope_type(
    "entropy_abf",
    _abf,
    required=("original_max_position_embeddings",),
    defaults={
        **_ABF_DEFAULTS,
        "entropy_abf_layer_skip": True,
        "entropy_abf_num_skip_layers": 2,
    },
    check=_check_entropy_abf,
)


def rope_frequencies(
    rope_type: str = "default",
    *,
    head_dim: int,
    base: float = 10_000.0,
    max_position_embeddings: int | None = None,
    seq_len=None,
    **params,
) -> tuple[jax.Array, float]:
    """Inverse frequencies and cos/sin scale of a RoPE type (HF ``ROPE_INIT_FUNCTIONS`` semantics).

    θ_i = b^(−2i/d) then the type's rescaling (module docstring); d = int(head_dim ·
    partial_rotary_factor).

    Args:
      rope_type: a registered name (``rope_types()``).
      head_dim: per-head dimension.
      base: ``rope_theta``.
      max_position_embeddings: the model's length (``dynamic``'s L; fallback for
        ``original_max_position_embeddings`` of yarn/longrope/llama3, as HF does; entropy_abf
        requires ``original_max_position_embeddings`` and never falls back).
      seq_len: current length ``max(position_ids) + 1`` for ``dynamic`` / ``longrope`` (int or a
        traced scalar); None means "at init" (HF: no scaling for dynamic, short factors).
      **params: the HF ``rope_scaling`` keys (``factor``, ``beta_fast`` …).
    Returns:
      ``inv_freq [d // 2]`` (float32; float64 under x64) and ``attention_factor`` (Python float).
    Raises:
      ValueError: unknown type, unknown or missing parameters, bad values.

    References: arXiv:2104.09864; HF ``transformers.modeling_rope_utils``.
    """
    spec, dim, p = _resolve(rope_type, head_dim, base, max_position_embeddings, params)
    return spec.compute(dim, float(base), max_position_embeddings, seq_len, p)


# ----------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeConfig:
    """A validated, hashable RoPE configuration (usable as a static jit argument).

    ``params`` takes a mapping of HF ``rope_scaling`` keys and is stored as a sorted tuple of
    ``(key, value)`` pairs (lists become tuples); ``param_dict`` gives it back as a dict.
    """

    head_dim: int
    rope_type: str = "default"
    base: float = 10_000.0
    max_position_embeddings: int | None = None
    params: Any = ()

    def __post_init__(self):
        items = dict(self.params)
        object.__setattr__(self, "params", tuple(sorted((k, _freeze(v)) for k, v in items.items())))
        _resolve(self.rope_type, self.head_dim, self.base, self.max_position_embeddings, items)

    @property
    def param_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def rotary_dim(self) -> int:
        """d = int(head_dim · partial_rotary_factor): the leading dims that are rotated."""
        return _resolve(
            self.rope_type, self.head_dim, self.base, self.max_position_embeddings, self.param_dict
        )[1]

    def frequencies(self, seq_len=None) -> tuple[jax.Array, float]:
        """:func:`rope_frequencies` for this config."""
        return rope_frequencies(
            self.rope_type,
            head_dim=self.head_dim,
            base=self.base,
            max_position_embeddings=self.max_position_embeddings,
            seq_len=seq_len,
            **self.param_dict,
        )


# The GAIR-NLP/Entropy-ABF patch's type name, and the pre-extension length its scale hard-codes
# (``patch/EABF.py``: ``log(position_ids + 1) / log(4096)``, LLaMA-2's pretraining window).
_HF_TYPE_ALIASES = {"eabf": "entropy_abf"}
EABF_RELEASED_ORIGINAL_LENGTH = 4096


def rope_config_from_hf(config: Mapping[str, Any], *, eabf_layer_skip: bool = False) -> RopeConfig:
    """Parse a Hugging Face ``config.json`` dict into a :class:`RopeConfig`.

    Reads ``rope_parameters`` (transformers v5) or ``rope_scaling`` (v4; ``type`` or
    ``rope_type``), ``rope_theta`` (inside the dict or at the top level, default 10,000),
    ``partial_rotary_factor``, ``head_dim`` (else ``hidden_size // num_attention_heads``) and
    ``max_position_embeddings``. A top-level ``original_max_position_embeddings`` (Phi-3) takes
    priority for yarn/longrope/llama3, as in HF. Per-layer-type (nested) parameters and HF's
    ``proportional`` type are not supported and raise ``ValueError``.

    Entropy-ABF checkpoints (``{"type": "eabf", "factor": 4.0}``, GAIR-NLP/Entropy-ABF
    ``patch/EABF.py`` @14af289) load as the authors run them: base 500,000, every layer scaled
    (the released ``apply_eabf`` sets an instance attribute that the attention forward never
    reads, so layers 0 and 1 are scaled too) and L_orig = 4096 (hard-coded there) unless the
    config gives ``original_max_position_embeddings``. ``eabf_layer_skip=True`` gives the
    paper's variant instead (layers 0 and 1 unscaled, arXiv:2401.07004 §3.2).
    """
    if not isinstance(eabf_layer_skip, bool):
        raise ValueError(f"eabf_layer_skip must be a bool, got {eabf_layer_skip!r}")
    rp = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    if any(isinstance(v, Mapping) for v in rp.values()):
        raise ValueError("per-layer-type (nested) rope_parameters are not supported")
    rope_type = rp.pop("rope_type", None) or rp.pop("type", None) or "default"
    rp.pop("type", None)
    if rope_type == "eabf":
        orig = rp.get("original_max_position_embeddings") or config.get(
            "original_max_position_embeddings"
        )
        rp["original_max_position_embeddings"] = orig or EABF_RELEASED_ORIGINAL_LENGTH
        rp.setdefault("entropy_abf_layer_skip", eabf_layer_skip)
    rope_type = _HF_TYPE_ALIASES.get(rope_type, rope_type)
    base = rp.pop("rope_theta", None) or config.get("rope_theta") or 10_000.0
    if "partial_rotary_factor" not in rp and config.get("partial_rotary_factor") is not None:
        rp["partial_rotary_factor"] = config["partial_rotary_factor"]
    if config.get("original_max_position_embeddings") is not None and rope_type in (
        "yarn",
        "longrope",
        "llama3",
    ):
        rp["original_max_position_embeddings"] = config["original_max_position_embeddings"]
    head_dim = config.get("head_dim")
    if head_dim is None:
        if not config.get("hidden_size") or not config.get("num_attention_heads"):
            raise ValueError("config needs head_dim or hidden_size and num_attention_heads")
        head_dim = config["hidden_size"] // config["num_attention_heads"]
    return RopeConfig(
        head_dim=int(head_dim),
        rope_type=rope_type,
        base=float(base),
        max_position_embeddings=config.get("max_position_embeddings"),
        params=rp,
    )


# ----------------------------------------------------------------------------------------------
# Entropy-ABF attention-logit scale


def attention_logit_scale(rope_cfg: RopeConfig | None, positions, layer_idx):
    """Entropy-ABF's per-query attention-logit scale, or None where logits are unscaled.

        t(ℓ, i) = 1                              if layer_skip and ℓ < num_skip_layers (paper: 2)
                = max(1, ln i / ln L_orig)       otherwise,   i = position + 1 (1-based)

    The attention multiplies q·k (equivalently the rotated query; keys are never scaled) by t:
    logits[b, h, i, j] · t[b, i]. L_orig = ``original_max_position_embeddings``, the
    pre-extension length (4096 for LLaMA-2), a required parameter of ``entropy_abf``.

    Args:
      rope_cfg: a :class:`RopeConfig`; types other than ``entropy_abf`` return None.
      positions: ``[..., T]`` integer positions (0-based) of the queries.
      layer_idx: a Python int (skipped layers return None) or a traced scalar (e.g. in a scan
        over layers; skipped layers get t = 1).
    Returns:
      ``[..., T]`` float scale, or None.

    Choice: the paper exempts layers 0 and 1 (default ``entropy_abf_layer_skip=True``); in the
    released code (GAIR-NLP/Entropy-ABF ``patch/EABF.py`` @14af289) the exemption does not take
    effect and every layer is scaled: ``entropy_abf_layer_skip=False`` (what an ``"eabf"`` HF
    config loads as). The released code also computes t in the query's dtype (bf16/fp16 there);
    here it is float32 (float64 under x64).

    References: arXiv:2401.07004 (§3.2); checked against GAIR-NLP/Entropy-ABF ``patch/EABF.py``
    (``apply_rotary_pos_emb_scale``) @14af289d3bc5d668f65655a6b35288e564c13c38.
    """
    if rope_cfg is None or rope_cfg.rope_type != "entropy_abf":
        return None
    p = rope_cfg.param_dict
    skip = p.get("entropy_abf_num_skip_layers", 2) if p.get("entropy_abf_layer_skip", True) else 0
    if isinstance(layer_idx, int) and layer_idx < skip:
        return None
    n = _original_len(p, rope_cfg.max_position_embeddings, "entropy_abf")
    i = jnp.maximum(jnp.asarray(positions).astype(_float()) + 1.0, 1.0)
    t = jnp.maximum(1.0, jnp.log(i) / math.log(n))
    if not isinstance(layer_idx, int):
        t = jnp.where(jnp.asarray(layer_idx) < skip, jnp.ones_like(t), t)
    return t


# ----------------------------------------------------------------------------------------------
# Applying the rotation


def rope_cos_sin(positions, inv_freq, attention_factor: float = 1.0):
    """cos/sin tables, HF layout: emb = [m·θ, m·θ] (halves), scaled by ``attention_factor``.

    Args:
      positions: ``[..., T]`` integer (or float) positions.
      inv_freq: ``[d // 2]``.
    Returns:
      ``(cos, sin)``, each ``[..., T, d]`` in float32 (float64 under x64).
    """
    dt = _float()
    freqs = jnp.asarray(positions).astype(dt)[..., None] * jnp.asarray(inv_freq).astype(dt)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * attention_factor, jnp.sin(emb) * attention_factor


def _rotate_half(x):
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rope(x, positions, inv_freq, attention_factor: float = 1.0):
    """Rotate the first d = 2·len(inv_freq) features of ``x`` (HF ``rotate_half`` convention).

        y[..., :d] = x[..., :d] · cos(m θ) · a + rotate_half(x[..., :d]) · sin(m θ) · a,
        rotate_half([x1, x2]) = [−x2, x1],   y[..., d:] = x[..., d:]   (partial rotary)

    with a = ``attention_factor`` (so q·k is scaled by a² when q and k are both rotated). The
    halves layout (not interleaved pairs) is HF's, so HF Llama-family q/k weights import as-is.

    Args:
      x: ``[B, T, H, head_dim]`` (heads after time).
      positions: ``[B, T]`` or ``[T]`` positions of the T tokens.
      inv_freq: ``[d // 2]`` from :func:`rope_frequencies`, d ≤ head_dim.
      attention_factor: cos/sin scale from :func:`rope_frequencies`.
    Returns:
      ``[B, T, H, head_dim]`` in ``x.dtype``; the rotation is computed in float32 (or wider)
      and rounded once (HF rounds cos/sin to the input dtype first).

    References: arXiv:2104.09864 (RoPE); HF ``apply_rotary_pos_emb``.
    """
    x = jnp.asarray(x)
    d = 2 * jnp.shape(inv_freq)[-1]
    if x.ndim != 4:
        raise ValueError(f"x must be [B, T, H, head_dim], got shape {x.shape}")
    if d > x.shape[-1]:
        raise ValueError(f"rotary dim {d} exceeds head_dim {x.shape[-1]}")
    cos, sin = rope_cos_sin(positions, inv_freq, attention_factor)  # [B?, T, d]
    cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads
    ct = jnp.promote_types(x.dtype, _float())
    xr = x[..., :d].astype(ct)
    yr = (xr * cos + _rotate_half(xr) * sin).astype(x.dtype)
    if d == x.shape[-1]:
        return yr
    return jnp.concatenate([yr, x[..., d:]], axis=-1)
