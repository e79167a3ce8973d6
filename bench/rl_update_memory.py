"""One RL update at a Qwen-size vocabulary: fused vs dense log-probs, temporary memory and time.

Run: ``python -m bench.rl_update_memory`` (V = 151,936, d 64, 1 layer, 8 sequences × 8 prompt +
56 response tokens; about a minute on 2 CPU cores), ``--quick`` for a seconds-long check at
V = 8,192.

Both rows run :func:`entropylab.rl.step.make_update` (PPO-clip objective, one epoch × one
minibatch, AdamW) on the same model and batch; they differ only in
``StepConfig.fused_logprobs``:

* fused: :func:`entropylab.logprobs.policy_logprobs` streams the vocabulary in blocks
  (``fused_logprobs_and_entropy``, forward and backward): no ``[B, T, V]`` logits;
* dense: the final hidden states times the unembedding as ``[B, T, V]`` float32 logits, then
  ``logprobs_and_entropy`` (what every training path did before).

Memory is the compiled update's ``memory_analysis().temp_size_in_bytes`` (XLA's static peak of
temporaries; parameters, optimizer state, batch and outputs excluded). Time is the median of
``--repeats`` calls after a warm-up call (compile excluded), the two paths interleaved.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench._table import print_markdown_table
from entropylab.losses.objective import ObjectiveConfig, build_objective
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl.step import RLBatch, StepConfig, compute_advantages, make_update
from entropylab.rl.trainer import RLConfig, rl_optimizer

MIB = 2.0**20


def _setup(vocab, d, batch, prompt, new):
    cfg = TransformerConfig(
        vocab_size=vocab, d_model=d, n_layers=1, n_heads=2, d_ff=4 * d, max_seq_len=prompt + new
    )
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(0)
    rmask = np.arange(new)[None, :] < rng.integers(new // 2, new + 1, batch)[:, None]
    rewards = rng.integers(0, 2, batch).astype(np.float32)
    b = RLBatch(
        tokens=jnp.asarray(rng.integers(0, vocab, (batch, prompt + new)), jnp.int32),
        mask=jnp.asarray(np.concatenate([np.ones((batch, prompt), bool), rmask], 1)),
        response_mask=jnp.asarray(rmask),
        advantages=compute_advantages(rewards, rmask, group_size=4),
        old_entropy=jnp.ones((batch, new), jnp.float32),
        sample_logp=jnp.zeros((batch, new), jnp.float32),
        rewards=jnp.asarray(rewards),
        group_ids=jnp.arange(batch, dtype=jnp.int32) // 4,
    )
    return graphdef, params, rest, b


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=56)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--vocab-block", type=int, default=1024)
    args = ap.parse_args(argv)
    if args.quick:
        args.vocab, args.repeats, args.new_tokens = 8192, 2, 24
    gd, params, rest, batch = _setup(
        args.vocab, args.d_model, args.batch, args.prompt, args.new_tokens
    )
    objective = build_objective(ObjectiveConfig())
    tx = rl_optimizer(RLConfig(learning_rate=1e-4))
    state0 = {
        "params": params,
        "opt_state": tx.init(params),
        "obj_state": objective.init_state(),
        "step": jnp.zeros((), jnp.int32),
    }
    key = jax.random.key(0)
    fns, rows = {}, []
    for fused in (True, False):
        cfg = StepConfig(
            prompt_width=args.prompt, fused_logprobs=fused, vocab_block=args.vocab_block
        )
        upd = make_update(objective, tx, gd, rest, cfg, donate=False)
        t = time.perf_counter()
        compiled = upd.lower(state0, batch, key).compile()
        compile_s = time.perf_counter() - t
        mem = compiled.memory_analysis()
        fns[fused] = compiled
        rows.append(
            {
                "path": "fused" if fused else "dense",
                "V": args.vocab,
                "tokens": args.batch * args.new_tokens,
                "temp_MiB": mem.temp_size_in_bytes / MIB if mem is not None else float("nan"),
                "compile_s": compile_s,
            }
        )
    times = {True: [], False: []}
    outs = {}
    for fused in (True, False):  # warm-up
        outs[fused] = jax.block_until_ready(fns[fused](state0, batch, key))
    for _ in range(args.repeats):
        for fused in (True, False):
            t = time.perf_counter()
            jax.block_until_ready(fns[fused](state0, batch, key))
            times[fused].append(time.perf_counter() - t)
    diff = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(
            jax.tree.leaves(outs[True][0]["params"]), jax.tree.leaves(outs[False][0]["params"])
        )
    )
    for r, fused in zip(rows, (True, False)):
        r["step_s"] = statistics.median(times[fused])
    rows[0]["mem_ratio"] = rows[0]["temp_MiB"] / rows[1]["temp_MiB"]
    rows[1]["mem_ratio"] = 1.0
    rows[0]["time_ratio"] = rows[0]["step_s"] / rows[1]["step_s"]
    rows[1]["time_ratio"] = 1.0
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__}, load {os.getloadavg()[0]:.1f}; d={args.d_model}, "
        f"B={args.batch}, P={args.prompt}, N={args.new_tokens}; max|Δparams| fused-dense "
        f"after one update = {diff:.2e}"
    )
    print_markdown_table(rows, ratio_keys=("mem_ratio", "time_ratio"))
    return rows, diff


if __name__ == "__main__":
    main()
