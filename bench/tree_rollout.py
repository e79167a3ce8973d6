"""Tree (entropy-branching) sampler vs the plain sampler at the same number of responses.

Run: ``python -m bench.tree_rollout`` (tiny preset, a minute or two on 2 CPU cores) or
``--quick`` (smoke preset, seconds; what the test runs).

Both sides produce ``S = n_init + budget`` responses per prompt: the plain sampler as ``B·S``
independent rows, the tree sampler (:mod:`entropylab.rl.tree_sampling`) as ``n_init`` chains per
prompt that fork into the ``budget`` free slots by ARPO's released rule (``mode="arpo"``,
``entropy_weight`` 0.2, ``p_branch`` 0.5, ΔH against the mean entropy of the first
``init_tokens`` tokens). The model is random (a preset at seed 0), so the entropies are nearly
uniform and the forks are mostly ARPO's random part; the point is the cost of the mechanism.
No EOS (neither side stops early). Reported: medians over ``--repeats`` interleaved calls after a
warm-up (compile excluded), completed responses, rollouts/s, tokens each side generated itself,
and the shared-prefix tokens the children did not regenerate. With fixed shapes the tree loop
still runs all ``B·S`` rows at every step (plus a KV-cache gather at fork steps), so its wall time
is the plain sampler's or a little more: the saved tokens are what a dynamic-batching engine
would not compute, not a saving of this implementation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench._table import print_markdown_table
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import sampling as S
from entropylab.rl import tree_sampling as T


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n-init", type=int, default=4)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=8)
    ap.add_argument("--init-tokens", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    if a.quick:
        a.prompts, a.n_init, a.budget, a.new_tokens, a.repeats = 2, 2, 2, 8, 1
        a.prompt_len, a.init_tokens = 4, 2
    vocab = 64
    mcfg = (TransformerConfig.smoke if a.quick else TransformerConfig.tiny)(vocab_size=vocab)
    model = Transformer(mcfg, rngs=nnx.Rngs(0))
    gd, st = nnx.split(model)
    tc = T.TreeConfig(
        n_init=a.n_init,
        budget=a.budget,
        mode="arpo",
        entropy_weight=0.2,
        p_branch=0.5,
        init_tokens=a.init_tokens,
    )
    s, b = tc.slots, a.prompts
    cfg = S.SamplingConfig(max_new_tokens=a.new_tokens, eos_id=vocab, pad_id=0)
    prompts = jnp.asarray(np.random.default_rng(0).integers(3, vocab, (b, a.prompt_len)), jnp.int32)
    mask = jnp.ones(prompts.shape, bool)
    pi, si = np.meshgrid(np.arange(b), np.arange(s), indexing="ij")
    keys = S.sample_keys(0, 0, jnp.asarray(pi.ravel()), jnp.asarray(si.ravel()))
    tree = T.make_tree_sampler(gd, cfg, tc)
    plain = S.make_sampler(gd, cfg)
    rp, rm = jnp.repeat(prompts, s, 0), jnp.repeat(mask, s, 0)

    def run_tree():
        t = time.perf_counter()
        r = tree(st, prompts, mask, keys.reshape(b, s))
        jax.block_until_ready(r.rollout.tokens)
        return time.perf_counter() - t, r

    def run_plain():
        t = time.perf_counter()
        r = plain(st, rp, rm, keys)
        jax.block_until_ready(r.tokens)
        return time.perf_counter() - t, r

    _, tr = run_tree()  # compile
    _, pr = run_plain()
    tt, tp = [], []
    for _ in range(a.repeats):
        tt.append(run_tree()[0])
        tp.append(run_plain()[0])
    t_tree, t_plain = statistics.median(tt), statistics.median(tp)
    done_tree = int(np.asarray(tr.allocated).sum())
    done_plain = int(np.asarray(pr.response_mask).any(1).sum())
    rows = [
        dict(
            sampler="plain",
            model="smoke" if a.quick else "tiny",
            prompts=b,
            responses=done_plain,
            s=t_plain,
            rollouts_per_s=done_plain / t_plain,
            tokens_generated=int(np.asarray(pr.response_mask).sum()),
            prefix_tokens_saved=0,
        ),
        dict(
            sampler=f"tree {a.n_init}+{a.budget}",
            model="smoke" if a.quick else "tiny",
            prompts=b,
            responses=done_tree,
            s=t_tree,
            rollouts_per_s=done_tree / t_tree,
            tokens_generated=int(np.asarray(tr.own_mask).sum()),
            prefix_tokens_saved=int(tr.saved_tokens),
        ),
    ]
    print_markdown_table(rows)
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(
        f"tree/plain rollouts/s ratio {rows[1]['rollouts_per_s'] / rows[0]['rollouts_per_s']:.2f}; "
        f"load average {load[0]:.1f} (1 min), {os.cpu_count()} CPUs"
    )
    return rows


if __name__ == "__main__":
    main()
