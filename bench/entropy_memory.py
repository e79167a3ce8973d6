"""Fused vs dense log-prob + entropy: peak temporary memory and wall time, forward + backward.

Run: ``python -m bench.entropy_memory`` (default shapes, a few minutes on 2 CPU cores),
``--quick`` for a seconds-long check, ``--vocab-block`` / ``--chunk-size`` to choose the fused
layout. Each row jits ``value_and_grad`` of the scalar ``mean(logp) + 0.1·mean(H)`` w.r.t.
``hidden [N, D]`` and ``W [D, V]``:

* dense: ``logprobs_and_entropy(hidden @ W, labels)`` (materialises ``[N, V]`` logits);
* fused: ``fused_logprobs_and_entropy(hidden, W, labels)`` (streams over vocabulary blocks).

Memory is the compiled executable's ``memory_analysis().temp_size_in_bytes`` (XLA's static peak
of temporaries; inputs and outputs excluded). Time is the median of ``--repeats`` calls after one
warm-up call (compile excluded), each ending in ``block_until_ready``. ``max|Δ|`` is the largest
absolute difference fused − dense over logp, entropy, d/dhidden and d/dW.

A row whose dense path would need more than ``--dense-limit-gib`` of temporaries is compiled
(for its memory figure) but not executed; the table says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from entropylab.ops import fused_logprobs_and_entropy, logprobs_and_entropy

DEFAULT_ROWS = ((8192, 512, 32768), (2048, 512, 131072))
QUICK_ROWS = ((512, 64, 4096), (128, 64, 16384))
MIB = 2.0**20


def _loss_dense(hidden, w, labels):
    logits = jnp.dot(hidden, w, preferred_element_type=jnp.float32)
    logp, ent = logprobs_and_entropy(logits, labels)
    return jnp.mean(logp) + 0.1 * jnp.mean(ent)


def _make_fused_loss(vocab_block, chunk_size):
    def loss(hidden, w, labels):
        logp, ent = fused_logprobs_and_entropy(
            hidden, w, labels, vocab_block=vocab_block, chunk_size=chunk_size
        )
        return jnp.mean(logp) + 0.1 * jnp.mean(ent)

    return loss


def _outputs_dense(hidden, w, labels):
    return logprobs_and_entropy(jnp.dot(hidden, w, preferred_element_type=jnp.float32), labels)


def _compile(loss, args):
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    compiled = fn.lower(*args).compile()
    return compiled, compiled.memory_analysis().temp_size_in_bytes


def _median_time(compiled, args, repeats):
    out = jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_row(n, d, v, *, vocab_block, chunk_size, repeats, dense_limit_gib, seed=0):
    kh, kw, ky = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(kh, (n, d), jnp.float32)
    w = jax.random.normal(kw, (d, v), jnp.float32) / jnp.sqrt(d)
    labels = jax.random.randint(ky, (n,), 0, v)
    args = (hidden, w, labels)

    fused_loss = _make_fused_loss(vocab_block, chunk_size)
    fused_c, fused_mem = _compile(fused_loss, args)
    dense_c, dense_mem = _compile(_loss_dense, args)
    row = dict(n=n, d=d, v=v, fused_mem=fused_mem, dense_mem=dense_mem)
    row["fused_s"], (_, gf) = _median_time(fused_c, args, repeats)
    if dense_mem > dense_limit_gib * 2**30:
        row.update(dense_s=None, max_diff=None)
        return row
    row["dense_s"], (_, gd) = _median_time(dense_c, args, repeats)
    of = jax.jit(
        lambda h, w, y: fused_logprobs_and_entropy(
            h, w, y, vocab_block=vocab_block, chunk_size=chunk_size
        )
    )(*args)
    od = jax.jit(_outputs_dense)(*args)
    diffs = [jnp.max(jnp.abs(a - b)) for a, b in zip((*of, *gf), (*od, *gd))]
    row["max_diff"] = float(max(diffs))
    return row


def _fmt_row(r):
    mem_ratio = r["dense_mem"] / max(r["fused_mem"], 1)
    shape = f"{r['n']}x{r['d']}x{r['v']}"
    if r["dense_s"] is None:
        dense_t, t_ratio, diff = "not run", "-", "-"
    else:
        dense_t = f"{r['dense_s']:.3f}"
        t_ratio = f"{r['fused_s'] / r['dense_s']:.2f}x"
        diff = f"{r['max_diff']:.1e}"
    return (
        f"| {shape} | {r['fused_mem'] / MIB:.1f} | {r['dense_mem'] / MIB:.1f} | 1/{mem_ratio:.0f} "
        f"| {r['fused_s']:.3f} | {dense_t} | {t_ratio} | {diff} |"
    )


def machine_line():
    dev = jax.devices()[0]
    return (
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"cpus={os.cpu_count()} | load={os.getloadavg()[0]:.2f} | jax {jax.__version__} | "
        f"device {dev.platform}:{dev.device_kind} (x{jax.device_count()})"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    ap.add_argument("--vocab-block", type=int, default=1024, help="fused vocab block (def 1024)")
    ap.add_argument("--chunk-size", type=int, default=None, help="fused token chunk (def: all)")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per path (median)")
    ap.add_argument(
        "--dense-limit-gib", type=float, default=8.0, help="skip running dense above this temp"
    )
    args = ap.parse_args(argv)
    rows = QUICK_ROWS if args.quick else DEFAULT_ROWS
    repeats = args.repeats or (2 if args.quick else 3)

    print(machine_line())
    print(
        f"fused: vocab_block={args.vocab_block}, chunk_size={args.chunk_size}; "
        f"value_and_grad of mean(logp)+0.1*mean(H) w.r.t. hidden, W; fp32; "
        f"median of {repeats} after warm-up"
    )
    print(
        "| N x D x V | fused temp MiB | dense temp MiB | mem ratio | fused s | dense s "
        "| time ratio | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, d, v in rows:
        r = run_row(
            n,
            d,
            v,
            vocab_block=args.vocab_block,
            chunk_size=args.chunk_size,
            repeats=repeats,
            dense_limit_gib=args.dense_limit_gib,
        )
        print(_fmt_row(r), flush=True)
    print(f"load after run: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
