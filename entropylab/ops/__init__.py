"""Pure ``jnp`` numerics: masked reductions, log-probs, entropies (dense, fused, window, attention).

No Flax; nothing here imports from the layers above.
"""

from entropylab.ops import spectral
from entropylab.ops.entropy import (
    attention_entropy,
    logprobs,
    logprobs_and_entropy,
    token_entropy,
)
from entropylab.ops.fused import fused_logprobs_and_entropy
from entropylab.ops.masked import (
    AGG_MODES,
    aggregate,
    masked_count,
    masked_mean,
    masked_quantile,
    masked_sum,
    masked_var,
    masked_whiten,
)
from entropylab.ops.stats import (
    FORKING_THRESHOLD,
    entropy_stats,
    window_entropy,
    window_valid_mask,
)

__all__ = [
    "AGG_MODES",
    "FORKING_THRESHOLD",
    "aggregate",
    "attention_entropy",
    "entropy_stats",
    "fused_logprobs_and_entropy",
    "logprobs",
    "logprobs_and_entropy",
    "masked_count",
    "masked_mean",
    "masked_quantile",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "spectral",
    "token_entropy",
    "window_entropy",
    "window_valid_mask",
]
