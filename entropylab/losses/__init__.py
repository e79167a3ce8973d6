"""Policy-gradient losses, advantages, KL penalties and entropy interventions (pure ``jnp``).

Every loss has the signature ``fn(logp, old_logp, advantages, mask, *, hparams...,
axis_name=None) -> (loss, metrics)`` on ``[B, T]`` arrays; see ``entropylab/losses/policy.py``.
No Flax; nothing here imports from the layers above ``entropylab.ops``.
"""

from entropylab.losses.policy import ppo_clip_loss, ppo_clip_per_token

__all__ = [
    "ppo_clip_loss",
    "ppo_clip_per_token",
]
