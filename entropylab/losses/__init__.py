"""Policy-gradient losses, advantages, KL penalties and entropy interventions (pure ``jnp``).

Every loss has the signature ``fn(logp, old_logp, advantages, mask, *, hparams...,
axis_name=None) -> (loss, metrics)`` on ``[B, T]`` arrays; see ``entropylab/losses/policy.py``.
No Flax; nothing here imports from the layers above ``entropylab.ops``.
"""

from entropylab.losses.advantages import (
    broadcast_to_tokens,
    dr_grpo_advantages,
    gae_advantages,
    grpo_advantages,
    rloo_advantages,
)
from entropylab.losses.covariance import (
    clip_cov_loss,
    clip_cov_mask,
    covariance_stats,
    kl_cov_loss,
    kl_cov_mask,
    predicted_entropy_change,
    token_covariance,
)
from entropylab.losses.entropy import (
    AdaptiveEntropyConfig,
    AdaptiveEntropyState,
    adaptive_entropy_init,
    adaptive_entropy_update,
    entropy_bonus,
    entropy_coef_at,
    entropy_coef_schedule,
)
from entropylab.losses.forking import forking_token_loss, forking_token_mask
from entropylab.losses.kl import (
    KL_KINDS,
    AdaptiveKLController,
    FixedKLController,
    KLControllerState,
    apply_kl_penalty,
    kl_controller_init,
    kl_controller_update,
    kl_loss,
    kl_penalty,
)
from entropylab.losses.policy import (
    cispo_loss,
    gspo_loss,
    ppo_clip_loss,
    ppo_clip_per_token,
    reinforce_loss,
)
from entropylab.losses.siren import (
    peak_entropy_mask,
    siren_anchor,
    siren_loss,
    siren_regularizer,
    top_p_entropy,
)
from entropylab.losses.steer import steer_loss, steer_omega, steer_weights

__all__ = [
    "AdaptiveEntropyConfig",
    "AdaptiveEntropyState",
    "adaptive_entropy_init",
    "adaptive_entropy_update",
    "entropy_bonus",
    "entropy_coef_at",
    "entropy_coef_schedule",
    "clip_cov_loss",
    "clip_cov_mask",
    "covariance_stats",
    "kl_cov_loss",
    "kl_cov_mask",
    "predicted_entropy_change",
    "token_covariance",
    "forking_token_loss",
    "forking_token_mask",
    "peak_entropy_mask",
    "siren_anchor",
    "siren_loss",
    "siren_regularizer",
    "top_p_entropy",
    "steer_loss",
    "steer_omega",
    "steer_weights",
    "KL_KINDS",
    "AdaptiveKLController",
    "FixedKLController",
    "KLControllerState",
    "apply_kl_penalty",
    "broadcast_to_tokens",
    "cispo_loss",
    "dr_grpo_advantages",
    "gae_advantages",
    "grpo_advantages",
    "gspo_loss",
    "kl_controller_init",
    "kl_controller_update",
    "kl_loss",
    "kl_penalty",
    "ppo_clip_loss",
    "ppo_clip_per_token",
    "reinforce_loss",
    "rloo_advantages",
]
