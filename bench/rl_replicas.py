"""Seeds as replicas: K seeds as one vmapped program vs K sequential runs, update and whole step.

Run: ``python -m bench.rl_replicas`` (K = 1, 4, 8, 16 on the smoke-size model; several minutes
on 2 shared CPU cores), ``--quick`` for K = 1, 2; ``--only update`` / ``--only step`` for one
table.

**update** rows: both sides run :func:`entropylab.rl.step.make_update` (PPO-clip, 1 epoch × 2
minibatches) on a 16-sequence batch per seed: "vmapped" is :func:`make_replicated_update` on
stacked states and batches (one call per step for all K seeds); "sequential" calls the
single-seed update K times.

**step** rows: the whole RL step — rollout (KV-cache sampler, 4 prompts × 4 samples, up to 8
new tokens), host scoring, prepare and update — of :class:`entropylab.rl.replicas.ReplicatedGRPO`
(K seeds, one vmapped rollout / prepare / update per step) vs K :class:`GRPOTrainer` runs
stepped one after the other (they share their compiled functions). ``rollout_s``, ``prepare_s``
and ``update_s`` split the vmapped step (``rollout_s`` includes the host scoring).

Reported: replica-steps per second of each side and their ratio (median of ``--repeats`` timed
steps after a warm-up step; compile excluded and reported separately for the vmapped side).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench._table import print_markdown_table
from entropylab.losses.objective import ObjectiveConfig, build_objective
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import step as S
from entropylab.rl import tasks as T
from entropylab.rl.replicas import ReplicatedGRPO
from entropylab.rl.trainer import GRPOTrainer, RLConfig, rl_optimizer

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


def update_rows(replicas, repeats):
    """The update-only rows (see the module docstring)."""
    mcfg = TransformerConfig.smoke(vocab_size=V, max_seq_len=P + N)
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
    for k in replicas:
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
        for _ in range(repeats):
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
    return rows


STEP_CFG = RLConfig(
    difficulties=(1, 2),
    prompts_per_step=4,
    group_size=4,
    minibatches=2,
    prompt_width=8,
    max_new_tokens=8,
    eval_every=0,
    learning_rate=1e-4,
)


def step_rows(replicas, repeats, out_dir):
    """The whole-step rows (see the module docstring)."""
    tok = T.CharTokenizer()
    mcfg = TransformerConfig.smoke(vocab_size=tok.vocab_size, max_seq_len=16)
    model = Transformer(mcfg, rngs=nnx.Rngs(0))
    rows = []
    for k in replicas:
        rep = ReplicatedGRPO(STEP_CFG, model, tok, seeds=tuple(range(k)))
        seq = [
            GRPOTrainer(dataclasses.replace(STEP_CFG, seed=i), model, tok, out_dir / str(i))
            for i in range(k)
        ]
        t = time.perf_counter()
        rep.step(0)
        compile_multi = time.perf_counter() - t
        for tr in seq:
            tr.step(0)
        tm, ts, phases = [], [], []
        for s in range(1, repeats + 1):
            t = time.perf_counter()
            rec = rep.step(s)[0]
            tm.append(time.perf_counter() - t)
            phases.append(rec)
            t = time.perf_counter()
            for tr in seq:
                tr.step(s)
            ts.append(time.perf_counter() - t)
        m, s = statistics.median(tm), statistics.median(ts)
        rows.append(
            {
                "K": k,
                "vmapped_steps_per_s": k / m,
                "sequential_steps_per_s": k / s,
                "speedup": s / m,
                **{
                    f"{ph}_s": statistics.median(r[f"time/{ph}_s"] for r in phases)
                    for ph in ("rollout", "prepare", "update")
                },
                "vmapped_compile_s": compile_multi,
            }
        )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", choices=("update", "step"), default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.replicas, args.repeats = [1, 2], 2
    print(
        f"# {os.cpu_count()} CPUs, jax {jax.__version__}, {jax.devices()[0].platform}, "
        f"load {os.getloadavg()[0]:.1f} at start"
    )
    out = {}
    if args.only in (None, "update"):
        out["update"] = update_rows(args.replicas, args.repeats)
        print(f"\n## update only (smoke model, B={B}, P={P}, N={N} per seed)")
        print_markdown_table(out["update"], ratio_keys=("speedup",))
    if args.only in (None, "step"):
        with tempfile.TemporaryDirectory() as tmp:
            out["step"] = step_rows(args.replicas, args.repeats, Path(tmp))
        c = STEP_CFG
        print(
            f"\n## whole step (smoke model, {c.prompts_per_step} prompts x {c.group_size} "
            f"samples, P={c.prompt_width}, up to {c.max_new_tokens} new tokens per seed)"
        )
        print_markdown_table(out["step"], ratio_keys=("speedup",))
    print(f"# load {os.getloadavg()[0]:.1f} at the end")
    return out


if __name__ == "__main__":
    main()
