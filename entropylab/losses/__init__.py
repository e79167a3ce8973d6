"""Policy-gradient losses, advantages, KL penalties and entropy interventions (pure ``jnp``).

Every policy loss has the signature ``fn(logp, old_logp, advantages, mask, *, hparams...,
token_weights=None, loss_agg_mode=..., axis_name=None) -> (loss, metrics)``: ``logp``/``mask``
``[B, T]``, ``old_logp`` ``[B, T]`` or ``None`` (on-policy), advantages ``[B]`` or ``[B, T]``,
and the metrics always include :data:`BASE_METRICS`; see ``entropylab/losses/policy.py``.
``token_entropy`` / ``logprobs_and_entropy`` (from ``entropylab.ops``) give the per-token
entropy and log-probs that the entropy methods read. No Flax; nothing here imports from the
layers above ``entropylab.ops`` (``pip install entropylab`` is enough).
"""

from entropylab.losses.advantages import (
    broadcast_to_tokens,
    dr_grpo_advantages,
    gae_advantages,
    grpo_advantages,
    rloo_advantages,
)
from entropylab.losses.aepo import (
    aepo_entropy_estimate,
    aepo_loss,
    aepo_reinforce_loss,
    aepo_select_reinforce_samples,
    aepo_temperature,
)
from entropylab.losses.aepo_agentic import (
    aepo_agentic_loss,
    aepo_global_budget,
    entropy_aware_advantages,
)
from entropylab.losses.ares import (
    AresKLState,
    ares_bucket_targets,
    ares_difficulty_buckets,
    ares_entropy_reward,
    ares_hwe_counts,
    ares_kl_coefficients,
    ares_kl_init,
    ares_kl_update,
    ares_threshold_update,
    ares_update_alpha,
)
from entropylab.losses.covariance import (
    clip_cov_loss,
    clip_cov_mask,
    covariance_stats,
    data_key,
    kl_cov_loss,
    kl_cov_mask,
    predicted_entropy_change,
    token_covariance,
)
from entropylab.losses.entropic import (
    EntroPICConfig,
    EntroPICState,
    entropic_adjustment_loss,
    entropic_init,
    entropic_update,
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
from entropylab.losses.entropy_advantage import entropy_advantage
from entropylab.losses.entropy_ratio_clip import entropy_ratio_keep_mask, erc_loss
from entropylab.losses.ettrl import ettrl_advantages, majority_vote_rewards, response_entropy
from entropylab.losses.forking import forking_token_loss, forking_token_mask
from entropylab.losses.hapo import (
    HapoEntropyStats,
    hapo_adaptive_clip,
    hapo_entropy_score,
    hapo_entropy_stats,
    hapo_loss,
    hapo_redistribute_advantages,
    hapo_score_from_stats,
    hapo_temperature,
    hapo_token_group_advantages,
)
from entropylab.losses.hicra import hicra_advantages, hicra_planning_mask, semantic_entropy
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
from entropylab.losses.light_if import (
    entropy_sft_loss,
    entropy_sft_mask,
    tea_rl_entropy_loss,
    tea_rl_weights,
)
from entropylab.losses.objective import (
    Objective,
    ObjectiveConfig,
    ObjectiveInputs,
    build_objective,
)
from entropylab.losses.policy import (
    BASE_METRICS,
    PolicyBatch,
    cispo_loss,
    clipped_surrogate,
    gspo_loss,
    importance_ratio,
    log_ratio,
    policy_batch,
    ppo_clip_loss,
    ppo_clip_per_token,
    reduce_policy_loss,
    reinforce_loss,
)
from entropylab.losses.registry import (
    SumCount,
    register_advantage_shaper,
    register_policy_loss,
    register_regularizer,
    registered_names,
)
from entropylab.losses.rewards import (
    dapo_overlong_penalty,
    pear_rewards,
    phase_entropies,
    place_on_last_token,
)
from entropylab.losses.siren import (
    peak_entropy_mask,
    siren_anchor,
    siren_loss,
    siren_regularizer,
    top_p_entropy,
)
from entropylab.losses.steer import steer_loss, steer_omega, steer_weights
from entropylab.ops.entropy import logprobs_and_entropy, token_entropy

__all__ = [
    "BASE_METRICS",
    "PolicyBatch",
    "SumCount",
    "clipped_surrogate",
    "data_key",
    "importance_ratio",
    "log_ratio",
    "logprobs_and_entropy",
    "policy_batch",
    "reduce_policy_loss",
    "token_entropy",
    "Objective",
    "ObjectiveConfig",
    "ObjectiveInputs",
    "build_objective",
    "register_advantage_shaper",
    "register_policy_loss",
    "register_regularizer",
    "registered_names",
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
    # entropy-based advantage shaping (arXiv:2506.14758), entropy ratio clipping
    # (arXiv:2512.05591), Light-IF (arXiv:2508.03178), EntroPIC (arXiv:2511.15248)
    "entropy_advantage",
    "entropy_ratio_keep_mask",
    "erc_loss",
    "entropy_sft_loss",
    "entropy_sft_mask",
    "tea_rl_entropy_loss",
    "tea_rl_weights",
    "EntroPICConfig",
    "EntroPICState",
    "entropic_adjustment_loss",
    "entropic_init",
    "entropic_update",
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
    "aepo_entropy_estimate",
    "aepo_loss",
    "aepo_reinforce_loss",
    "aepo_select_reinforce_samples",
    "aepo_temperature",
    "aepo_agentic_loss",
    "aepo_global_budget",
    "entropy_aware_advantages",
    "AresKLState",
    "ares_bucket_targets",
    "ares_difficulty_buckets",
    "ares_entropy_reward",
    "ares_hwe_counts",
    "ares_kl_coefficients",
    "ares_kl_init",
    "ares_kl_update",
    "ares_threshold_update",
    "ares_update_alpha",
    "ettrl_advantages",
    "majority_vote_rewards",
    "response_entropy",
    "HapoEntropyStats",
    "hapo_adaptive_clip",
    "hapo_entropy_score",
    "hapo_entropy_stats",
    "hapo_loss",
    "hapo_redistribute_advantages",
    "hapo_score_from_stats",
    "hapo_temperature",
    "hapo_token_group_advantages",
    "hicra_advantages",
    "hicra_planning_mask",
    "semantic_entropy",
    "dapo_overlong_penalty",
    "pear_rewards",
    "phase_entropies",
    "place_on_last_token",
]
