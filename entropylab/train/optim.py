"""AdamW with linear warm-up + cosine decay and global-norm gradient clipping.

Schedule (step s counts optimizer updates from 0):

    lr(s) = peak · s / warmup                                              s < warmup
    lr(s) = peak · (r + (1 − r) · ½(1 + cos(π · (s − warmup) / (total − warmup))))   otherwise

with ``r = min_lr_ratio`` (lr stays at ``r · peak`` after ``total``). The update is
``clip_by_global_norm(max_grad_norm)`` then AdamW (decoupled weight decay, arXiv:1711.05101),
applied with decay only to parameters with ``ndim >= 2`` (matrices and embeddings; norms and biases
are not decayed — the GPT-2/nanoGPT convention).

References: arXiv:1711.05101 (AdamW), arXiv:1608.03983 (cosine schedule).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import optax


def _check_real(name: str, value) -> None:
    """A finite Python/NumPy real scalar (arrays and NaN/inf are refused, naming the field)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW + warm-up/cosine hyper-parameters."""

    learning_rate: float = 3e-3
    warmup_steps: int = 100
    total_steps: int = 1000
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0

    def __post_init__(self):
        for name in ("learning_rate", "min_lr_ratio", "weight_decay", "b1", "b2", "eps"):
            _check_real(name, getattr(self, name))
        if self.max_grad_norm is not None:
            _check_real("max_grad_norm", self.max_grad_norm)
        for name in ("warmup_steps", "total_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.total_steps <= 0:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps < self.total_steps:
            raise ValueError(
                f"warmup_steps must be in [0, total_steps={self.total_steps}), "
                f"got {self.warmup_steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("b1", "b2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}")


def lr_schedule(cfg: OptimConfig) -> optax.Schedule:
    """Warm-up + cosine schedule ``step -> lr`` (see module docstring)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        decay_steps=cfg.total_steps,
        end_value=cfg.learning_rate * cfg.min_lr_ratio,
    )


def decay_mask(params):
    """``True`` for leaves with ``ndim >= 2`` (weight-decayed), ``False`` otherwise."""
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """``clip_by_global_norm`` (if set) followed by AdamW on the warm-up/cosine schedule."""
    adamw = optax.adamw(
        learning_rate=lr_schedule(cfg),
        b1=cfg.b1,
        b2=cfg.b2,
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        mask=decay_mask,
    )
    if cfg.max_grad_norm is None:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)
