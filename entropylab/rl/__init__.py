"""RL engine: verifiable tasks, jitted KV-cache sampler, the pure update step, GRPO/PPO trainer.

Layers (each usable alone)::

    tasks      problems, prompts (encode_fixed), verifiers (score)
    sampling   jitted KV-cache sampler (Rollout), temperature / logit-processor hooks
    rng        named RNG streams (fold_in chains)
    step       RLBatch, prepare_batch, advantage estimators by name, make_update (jitted,
               donated, optionally sharded), make_replicated_update (seeds as vmapped replicas)
    hooks      sampler temperature hooks (HAPO) and objective extras providers
    trainer    GRPOTrainer: the host loop (sample → score → prepare → update → log/ckpt/eval)
    replicas   ReplicatedGRPO: K seeds as replicas of the whole step (vmapped rollout, prepare
               and update; replica k == GRPOTrainer with seed k)
"""

from entropylab.rl.hooks import register_extra, register_temperature_hook
from entropylab.rl.metrics import pass_at_k
from entropylab.rl.protocols import PolicyModel
from entropylab.rl.replicas import ReplicatedGRPO
from entropylab.rl.sampling import Rollout, SamplingConfig, generate, make_sampler
from entropylab.rl.step import (
    ADVANTAGE_ESTIMATORS,
    RLBatch,
    StepConfig,
    compute_advantages,
    make_replicated_update,
    make_update,
    prepare_batch,
    register_advantage_estimator,
)
from entropylab.rl.tasks import TASKS, CharTokenizer, encode_fixed, make_task, score
from entropylab.rl.trainer import GRPOTrainer, RLConfig, RLPreempted, rl_optimizer

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "TASKS",
    "CharTokenizer",
    "GRPOTrainer",
    "PolicyModel",
    "RLBatch",
    "RLConfig",
    "RLPreempted",
    "ReplicatedGRPO",
    "Rollout",
    "SamplingConfig",
    "StepConfig",
    "compute_advantages",
    "encode_fixed",
    "generate",
    "make_replicated_update",
    "make_sampler",
    "make_task",
    "make_update",
    "pass_at_k",
    "prepare_batch",
    "register_advantage_estimator",
    "register_extra",
    "register_temperature_hook",
    "rl_optimizer",
    "score",
]
