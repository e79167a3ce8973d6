"""tunix GRPO learner step time at the ``bench.grpo_step`` shapes (run as a subprocess).

Runs with the interpreter of the separate venv ``.venv-peers`` (tunix pins its own jax/flax):
``.venv-peers/bin/python -m bench.peers.tunix_grpo --steps 5 --warmup 2``; prints one JSON line.
This file imports nothing from ``entropylab`` (its venv may not have our dependencies): the
addition prompts and their verifier are re-implemented below in a few lines, with the same
format as ``entropylab.rl.tasks.AdditionTask`` (reversed answer digits).

Model: tunix's own ``Llama3`` class (d 256, 4 layers, 4 heads of 64, SwiGLU 1024, vocabulary 64,
float32, random init), its ``vanilla`` rollout engine (KV cache), ``GRPOLearner`` with
``num_generations`` = group, ``num_iterations=1``, ``beta=0`` (no reference pass, as TRL's
default and ours) and AdamW 3e-4, one mini-batch per step, on a 1×1 ``(fsdp, tp)`` mesh.
``rollout_s`` is the time inside ``_generate_and_compute_advantage`` (generation, rewards,
advantages); ``step_s`` the wall time between the ends of consecutive ``_run_global_step`` calls,
each blocked on the trained model's parameters (so asynchronous dispatch cannot hide work).
"""

from __future__ import annotations

import argparse
import json
import time

ALPHABET = "0123456789+-*/()=,:>? "


def char_vocab():
    import sentencepiece as spm

    class CharVocab(spm.SentencePieceProcessor):
        """Character-level vocabulary with the SentencePiece methods tunix calls."""

        def __init__(self):
            super().__init__()
            self.to_id = {c: i + 3 for i, c in enumerate(ALPHABET)}
            self.to_ch = {i: c for c, i in self.to_id.items()}

        def pad_id(self):
            return 0

        def bos_id(self):
            return 1

        def eos_id(self):
            return 2

        def GetPieceSize(self):  # noqa: N802
            return 64

        def DecodeIds(self, ids):  # noqa: N802
            return "".join(self.to_ch.get(int(i), "") for i in ids)

        def EncodeAsIds(self, text, **kw):  # noqa: N802
            return [self.to_id[c] for c in text if c in self.to_id]

    return CharVocab()


def problems(n, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        d = (2, 3)[i % 2]
        a, b = (int(x) for x in rng.integers(10 ** (d - 1), 10**d, 2))
        out.append((f"{a}+{b}=", str(a + b)[::-1]))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompt-width", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)

    import jax
    import numpy as np
    import optax
    import tunix
    from flax import nnx
    from tunix.models.llama3 import model as llama3
    from tunix.rl import rl_cluster as rl_cluster_lib
    from tunix.rl.grpo import grpo_learner
    from tunix.rl.rollout import base_rollout

    n_steps = args.warmup + args.steps
    auto = (jax.sharding.AxisType.Auto,) * 2
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=auto)
    cfg = llama3.ModelConfig(
        num_layers=4,
        vocab_size=64,
        embed_dim=256,
        hidden_dim=1024,
        num_heads=4,
        head_dim=64,
        num_kv_heads=4,
        rope_theta=10_000,
        norm_eps=1e-5,
    )
    with jax.set_mesh(mesh):
        model = llama3.Llama3(cfg, rngs=nnx.Rngs(0))
    vocab = char_vocab()
    cluster_cfg = rl_cluster_lib.ClusterConfig(
        role_to_mesh={
            rl_cluster_lib.Role.ACTOR: mesh,
            rl_cluster_lib.Role.REFERENCE: mesh,
            rl_cluster_lib.Role.ROLLOUT: mesh,
        },
        rollout_engine="vanilla",
        offload_to_cpu=False,
        training_config=rl_cluster_lib.RLTrainingConfig(
            actor_optimizer=optax.adamw(3e-4, b1=0.9, b2=0.99, weight_decay=0.0),
            eval_every_n_steps=10**6,
            max_steps=n_steps,
        ),
        rollout_config=base_rollout.RolloutConfig(
            max_tokens_to_generate=args.new_tokens,
            max_prompt_length=args.prompt_width,
            kv_cache_size=args.prompt_width + args.new_tokens + 4,
            temperature=1.0,
            top_p=1.0,
            top_k=None,
        ),
    )
    cluster = rl_cluster_lib.RLCluster(
        actor=model, reference=model, tokenizer=vocab, cluster_config=cluster_cfg
    )

    def reward(prompts, completions, answer, **kw):
        return [float(str(c).strip() == str(a)) for c, a in zip(completions, answer)]

    learner = grpo_learner.GRPOLearner(
        rl_cluster=cluster,
        algo_config=grpo_learner.GRPOConfig(
            num_generations=args.group, num_iterations=1, beta=0.0, epsilon=0.2
        ),
        reward_fns=reward,
    )
    rec = {"step_s": [], "rollout_s": [], "completion_len": [], "rollout_shapes": []}
    gen = learner._generate_and_compute_advantage

    def timed_gen(*a, **k):
        t = time.perf_counter()
        out = gen(*a, **k)
        jax.block_until_ready(out.advantages)
        rec["rollout_s"].append(time.perf_counter() - t)
        rec["completion_len"].append(float(out.completion_mask.sum(-1).mean()))
        rec["rollout_shapes"].append([list(out.prompt_ids.shape), list(out.completion_ids.shape)])
        return out

    learner._generate_and_compute_advantage = timed_gen
    step = learner._run_global_step
    ends = []

    def timed_step(*a, **k):
        out = step(*a, **k)
        # block on the trained copy's parameters; step time = wall time between step ends
        jax.block_until_ready(nnx.state(cluster.actor_trainer.model))
        ends.append(time.perf_counter())
        return out

    learner._run_global_step = timed_step

    probs = problems(args.prompts * (n_steps + 2), seed=0)
    # numpy arrays, not lists: tunix repeats every pytree leaf G times (a list's strings would
    # each become a leaf)
    batches = [
        {
            "prompts": np.array([p for p, _ in probs[i : i + args.prompts]]),
            "answer": np.array([a for _, a in probs[i : i + args.prompts]]),
        }
        for i in range(0, len(probs), args.prompts)
    ]
    learner.train(batches)
    jax.block_until_ready(jax.live_arrays())
    rec["tail_s"] = time.perf_counter() - ends[-1]  # work left pending after the last step
    rec["train_steps"] = int(cluster.actor_trainer.train_steps)
    rec["step_s"] = [b - a for a, b in zip(ends, ends[1:])]  # steps 1.. (step 0 compiles)
    w = args.warmup
    out = {
        "peer": f"tunix {getattr(tunix, '__version__', '?')} (JAX {jax.__version__})",
        "step_s": rec["step_s"][w - 1 : n_steps - 1],
        "rollout_s": rec["rollout_s"][w:n_steps],
        "completion_len": rec["completion_len"][w:n_steps],
        "tail_s": rec["tail_s"],
        "rollout_shapes": rec["rollout_shapes"][:2],
        "rollout_calls": len(rec["rollout_s"]),
        "optimizer_steps": rec["train_steps"],
    }
    print("PEER_JSON " + json.dumps(out))


if __name__ == "__main__":
    main()
