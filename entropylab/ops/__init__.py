"""Pure ``jnp`` numerics: masked reductions, log-probs, entropies (dense, fused, window, attention).

No Flax; nothing here imports from the layers above.
"""

from entropylab.ops.entropy import logprobs, logprobs_and_entropy, token_entropy
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

__all__ = [
    "AGG_MODES",
    "aggregate",
    "logprobs",
    "logprobs_and_entropy",
    "masked_count",
    "masked_mean",
    "masked_quantile",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "token_entropy",
]
