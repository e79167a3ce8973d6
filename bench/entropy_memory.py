"""Fused vs dense log-prob + entropy: peak temporary memory and wall time, forward + backward.

Run: ``python -m bench.entropy_memory`` (default shapes, a few minutes on 2 CPU cores),
``--quick`` for a seconds-long check, ``--vocab-block`` / ``--chunk-size`` to choose the fused
layout, ``--impl stream parallel pallas`` to time several forward formulations side by side in one
run (``--block-group`` blocks per step for ``parallel``, ``--pallas-blocks BTxBVxBD`` the tile of
``pallas``, which runs in interpret mode on CPU), ``--rows NxDxV ...`` for other shapes.
Each row jits ``value_and_grad`` of the scalar ``mean(logp) + 0.1·mean(H)`` w.r.t.
``hidden [N, D]`` and ``W [D, V]``:

* dense: ``logprobs_and_entropy(hidden @ W, labels)`` (materialises ``[N, V]`` logits);
* fused: ``fused_logprobs_and_entropy(hidden, W, labels, impl=...)`` (vocabulary blocks).

Memory is the compiled executable's ``memory_analysis().temp_size_in_bytes`` (XLA's static peak
of temporaries; inputs and outputs excluded). Time is the median of ``--repeats`` calls after one
warm-up call (compile excluded), each ending in ``block_until_ready``; the paths' calls are
interleaved, so a change of machine load hits them alike. ``max|Δ|`` is the largest
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
from entropylab.ops.fused import IMPLS, default_impl

DEFAULT_ROWS = ((8192, 512, 32768), (2048, 512, 131072))
QUICK_ROWS = ((512, 64, 4096), (128, 64, 16384))
MIB = 2.0**20


def _loss_dense(hidden, w, labels):
    logits = jnp.dot(hidden, w, preferred_element_type=jnp.float32)
    logp, ent = logprobs_and_entropy(logits, labels)
    return jnp.mean(logp) + 0.1 * jnp.mean(ent)


PALLAS_KEYS = ("token_block", "vocab_block", "d_block", "num_warps", "num_stages")


def pallas_tile_kwargs(tile) -> dict:
    """``(token_block, vocab_block, d_block[, num_warps, num_stages])`` as keyword arguments
    (``None`` entries left out: the op's backend default); ``None``: all defaults."""
    return {k: v for k, v in zip(PALLAS_KEYS, tile or ()) if v is not None}


def fused_kwargs(vocab_block, chunk_size, impl=None, block_group=1, pallas_blocks=None):
    """Keyword arguments of ``fused_logprobs_and_entropy`` for one impl. For ``impl="pallas"``
    the tile is ``pallas_blocks`` (see :func:`pallas_tile_kwargs`; ``None``: the backend's
    default tile, :data:`entropylab.ops.pallas_fused.DEFAULT_TILES`) instead of ``vocab_block``."""
    kw = dict(vocab_block=vocab_block, chunk_size=chunk_size, impl=impl, block_group=block_group)
    if impl == "pallas":
        del kw["vocab_block"]
        kw.update(pallas_tile_kwargs(pallas_blocks))
    return kw


def _make_fused_loss(vocab_block, chunk_size, impl=None, block_group=1, pallas_blocks=None):
    kw = fused_kwargs(vocab_block, chunk_size, impl, block_group, pallas_blocks)

    def loss(hidden, w, labels):
        logp, ent = fused_logprobs_and_entropy(hidden, w, labels, **kw)
        return jnp.mean(logp) + 0.1 * jnp.mean(ent)

    return loss


def _outputs_dense(hidden, w, labels):
    return logprobs_and_entropy(jnp.dot(hidden, w, preferred_element_type=jnp.float32), labels)


def _compile(loss, args):
    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    compiled = fn.lower(*args).compile()
    return compiled, compiled.memory_analysis().temp_size_in_bytes


def _interleaved_times(compiled, args, repeats):
    """Median seconds per compiled fn, calls interleaved (a load change hits all paths alike)."""
    outs = {k: jax.block_until_ready(c(*args)) for k, c in compiled.items()}  # warm-up
    times = {k: [] for k in compiled}
    for _ in range(repeats):
        for k, c in compiled.items():
            t0 = time.perf_counter()
            outs[k] = jax.block_until_ready(c(*args))
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(t) for k, t in times.items()}, outs


def run_row(
    n,
    d,
    v,
    *,
    vocab_block,
    chunk_size,
    repeats,
    dense_limit_gib,
    seed=0,
    impl=None,
    block_group=1,
    extra_impls=(),
    pallas_blocks=None,
):
    """One shape: fused (``impl``) vs dense; ``extra_impls`` = more fused formulations timed in
    the same run, interleaved call by call with the others (``{impl}_s``, ``{impl}_mem``).
    ``pallas_blocks``: the tile of ``impl="pallas"`` (:func:`fused_kwargs`)."""
    kh, kw, ky = jax.random.split(jax.random.key(seed), 3)
    hidden = jax.random.normal(kh, (n, d), jnp.float32)
    w = jax.random.normal(kw, (d, v), jnp.float32) / jnp.sqrt(d)
    labels = jax.random.randint(ky, (n,), 0, v)
    args = (hidden, w, labels)

    fused_loss = _make_fused_loss(vocab_block, chunk_size, impl, block_group, pallas_blocks)
    fused_c, fused_mem = _compile(fused_loss, args)
    dense_c, dense_mem = _compile(_loss_dense, args)
    row = dict(n=n, d=d, v=v, fused_mem=fused_mem, dense_mem=dense_mem)
    row["impl"] = impl or default_impl()
    extra = {}
    for name in extra_impls:  # one impl that fails to compile must not cost the others' rows
        try:
            extra[name], row[f"{name}_mem"] = _compile(
                _make_fused_loss(vocab_block, chunk_size, name, block_group, pallas_blocks), args
            )
        except Exception as e:  # recorded in the row, e.g. a kernel the backend cannot lower
            row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:500]
    run_dense = dense_mem <= dense_limit_gib * 2**30
    timed = {"fused": fused_c, **extra, **({"dense": dense_c} if run_dense else {})}
    times, outs = _interleaved_times(timed, args, repeats)
    row["fused_s"], gf = times["fused"], outs["fused"][1]
    for name in extra:
        row[f"{name}_s"] = times[name]
    if not run_dense:
        row.update(dense_s=None, max_diff=None)
        return row
    row["dense_s"], gd = times["dense"], outs["dense"][1]
    od = jax.jit(_outputs_dense)(*args)
    for name, grads in [("fused", gf)] + [(k, outs[k][1]) for k in extra]:
        kw = fused_kwargs(
            vocab_block, chunk_size, impl if name == "fused" else name, block_group, pallas_blocks
        )
        of = jax.jit(lambda h, w, y, kw=kw: fused_logprobs_and_entropy(h, w, y, **kw))(*args)
        diffs = [jnp.max(jnp.abs(a - b)) for a, b in zip((*of, *grads), (*od, *gd))]
        row["max_diff" if name == "fused" else f"{name}_max_diff"] = float(max(diffs))
    return row


def _fmt_rows(r):
    """Table lines of one ``run_row`` result: the primary impl, then each extra impl."""
    shape = f"{r['n']}x{r['d']}x{r['v']}"
    dense_t = "not run" if r["dense_s"] is None else f"{r['dense_s']:.3f}"
    lines = []
    impls = [(r["impl"], r["fused_mem"], r["fused_s"], r["max_diff"])]
    impls += [
        (k[:-2], r[k[:-2] + "_mem"], r[k], r.get(k[:-2] + "_max_diff"))
        for k in r
        if k.endswith("_s") and k[:-2] in IMPLS
    ]
    for impl, mem, sec, diff in impls:
        t_ratio = "-" if r["dense_s"] is None else f"{sec / r['dense_s']:.2f}x"
        diff_s = "-" if diff is None else f"{diff:.1e}"
        lines.append(
            f"| {shape} | {impl} | {mem / MIB:.1f} | {r['dense_mem'] / MIB:.1f} "
            f"| 1/{r['dense_mem'] / max(mem, 1):.0f} | {sec:.3f} | {dense_t} | {t_ratio} "
            f"| {diff_s} |"
        )
    return lines


def machine_line():
    dev = jax.devices()[0]
    return (
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"cpus={os.cpu_count()} | load={os.getloadavg()[0]:.2f} | jax {jax.__version__} | "
        f"device {dev.platform}:{dev.device_kind} (x{jax.device_count()})"
    )


def _shape(text):
    try:
        n, d, v = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"row must be NxDxV, got {text!r}") from None
    return n, d, v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes, a few seconds")
    ap.add_argument("--rows", type=_shape, nargs="+", default=None, help="shapes NxDxV")
    ap.add_argument("--vocab-block", type=int, default=1024, help="fused vocab block (def 1024)")
    ap.add_argument("--chunk-size", type=int, default=None, help="fused token chunk (def: all)")
    ap.add_argument(
        "--impl",
        nargs="+",
        choices=IMPLS,
        default=None,
        help="fused forward formulation(s); the first gets the max|diff| check (def: by backend)",
    )
    ap.add_argument("--block-group", type=int, default=1, help="blocks per step for parallel")
    ap.add_argument(
        "--pallas-blocks",
        type=_shape,
        default=None,
        help="token x vocab x D tile of impl pallas, e.g. 64x128x64 (def: the backend tile)",
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per path (median)")
    ap.add_argument(
        "--dense-limit-gib", type=float, default=8.0, help="skip running dense above this temp"
    )
    args = ap.parse_args(argv)
    rows = args.rows or (QUICK_ROWS if args.quick else DEFAULT_ROWS)
    repeats = args.repeats or (2 if args.quick else 3)
    impls = args.impl or [default_impl()]

    print(machine_line())
    print(
        f"fused: vocab_block={args.vocab_block}, chunk_size={args.chunk_size}, "
        f"block_group={args.block_group}; value_and_grad of mean(logp)+0.1*mean(H) w.r.t. "
        f"hidden, W; fp32; median of {repeats} interleaved calls after warm-up"
    )
    print(
        "| N x D x V | impl | fused temp MiB | dense temp MiB | mem ratio | fused s | dense s "
        "| time ratio | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    results = []
    for n, d, v in rows:
        r = run_row(
            n,
            d,
            v,
            vocab_block=args.vocab_block,
            chunk_size=args.chunk_size,
            repeats=repeats,
            dense_limit_gib=args.dense_limit_gib,
            impl=impls[0],
            block_group=args.block_group,
            extra_impls=tuple(impls[1:]),
            pallas_blocks=args.pallas_blocks,
        )
        results.append(r)
        print("\n".join(_fmt_rows(r)), flush=True)
    print(f"load after run: {os.getloadavg()[0]:.2f}")
    return results


if __name__ == "__main__":
    main()
