"""Seeds as replicas: K seeds' RL updates as one vmapped program vs K sequential updates.

Run: ``python -m bench.rl_replicas`` (K = 1, 4, 8, 16 on the smoke-size model; a minute or two
on 2 CPU cores), ``--quick`` for K = 1, 2.

Both sides run :func:`entropylab.rl.step.make_update` (PPO-clip, 1 epoch × 2 minibatches) on a
16-sequence batch per seed: "vmapped" is :func:`make_replicated_update` on stacked states and
batches (one call per step for all K seeds); "sequential" calls the single-seed update K times.
Reported: replica-steps per second of each and their ratio (median of ``--repeats`` timed steps
after a warm-up; compile excluded). Only the update is measured — rollout and host verification
are not vmapped here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench._table import print_markdown_table
from entropylab.losses.objective import ObjectiveConfig, build_objective
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import step as S
from entropylab.rl.trainer import RLConfig, rl_optimizer

V, P, N, B = 32, 8, 8, 16


def _batch(seed):
    rng = np.random.default_rng(seed)
    rmask = np.arange(N)[None, :] < rng.integers(1, N + 1, B)[:, None]
    rewards = rng.integers(0, 2, B).astype(np.float32)
    return S.RLBatch(
        tokens=jnp.asarray(rng.integers(3, V, (B, P + N)), jnp.int32),
        mask=jnp.asarray(np.concatenate([np.ones((B, P), bool), rmask], 1)),
        response_mask=jnp.asarray(rmask),
        advantages=S.compute_advantages(rewards, rmask, group_size=4),
        old_entropy=jnp.ones((B, N), jnp.float32),
        sample_logp=jnp.zeros((B, N), jnp.float32),
        rewards=jnp.asarray(rewards),
        group_ids=jnp.arange(B, dtype=jnp.int32) // 4,
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.quick:
        args.replicas, args.repeats = [1, 2], 2
    mcfg = dataclasses.replace(TransformerConfig.smoke(vocab_size=V, max_seq_len=P + N))
    obj = build_objective(ObjectiveConfig())
    tx = rl_optimizer(RLConfig(learning_rate=1e-4))
    cfg = S.StepConfig(prompt_width=P, minibatches=2, group_size=4)
    gd, params, rest = nnx.split(Transformer(mcfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    state = {
        "params": params,
        "opt_state": tx.init(params),
        "obj_state": obj.init_state(),
        "step": jnp.zeros((), jnp.int32),
    }
    single = S.make_update(obj, tx, gd, rest, cfg, donate=False)
    multi = S.make_replicated_update(obj, tx, gd, rest, cfg, donate=False)
    rows = []
    for k in args.replicas:
        batches = [_batch(i) for i in range(k)]
        keys = [jax.random.key(i) for i in range(k)]
        st_k, b_k = S.stack_replicas([state] * k), S.stack_replicas(batches)
        keys_k = jnp.stack(keys)

        def run_multi(st_k=st_k, b_k=b_k, keys_k=keys_k):
            jax.block_until_ready(multi(st_k, b_k, keys_k))

        def run_seq(batches=batches, keys=keys):
            for b, key in zip(batches, keys):
                jax.block_until_ready(single(state, b, key))

        t = time.perf_counter()
        run_multi()
        compile_multi = time.perf_counter() - t
        run_seq()
        tm, ts = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            run_multi()
            tm.append(time.perf_counter() - t)
            t = time.perf_counter()
            run_seq()
            ts.append(time.perf_counter() - t)
        m, s = statistics.median(tm), statistics.median(ts)
        rows.append(
            {
                "K": k,
                "vmapped_steps_per_s": k / m,
                "sequential_steps_per_s": k / s,
                "speedup": s / m,
                "vmapped_compile_s": compile_multi,
            }
        )
    print(
        f"# {os.cpu_count()} CPUs, jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"load {os.getloadavg()[0]:.1f}; smoke model, B={B}, P={P}, N={N} per seed"
    )
    print_markdown_table(rows, ratio_keys=("speedup",))
    return rows


if __name__ == "__main__":
    main()
