"""RL engine: verifiable tasks, jitted sampler with KV cache, GRPO/PPO trainer."""
