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

__all__ = [
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
