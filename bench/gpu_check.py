"""One short accelerator check: what only a GPU/TPU run can show (jit there, bf16 numerics, rates).

Run: ``python -m bench.gpu_check --out DIR`` on the accelerator machine, ``--quick`` for a
seconds-long run of the same code paths at toy shapes (CPU is fine; that is how the script itself
is tested; the Pallas kernel then runs in interpret mode). Every section runs in its own ``try``
so one failure does not hide the rest; the results go to ``DIR/gpu_check.json`` after each section.

Device time measured on an H200 (2026-11-29, ``bench/results/gpu_check_h200.json``): fused with
the Pallas rows 26.5 s, train with ``--train-ab`` 109 s, sampler 41 s, torch_train 27 s, grpo 23 s
(~210 s for ``--only fused train sampler torch_train grpo --train-ab`` plus ~30 s machine start).
Estimated earlier from the two H100 runs: env + matmul ≈ 10 s, numerics ≈ 60–210 s (211 s in run
1 with an unrolled decode, now a ``lax.scan``; most of it compiling and the host-CPU reference),
fused ≈ 60–90 s (run 1: 11 s for two paths; now 4 fwd+bwd compiles, 3 output checks and 5
forward-only compiles of ≈ 5–10 s each), train 45–165 s, sampler ≈ 30 s, torch_train ≈ 25 s,
grpo ≈ 30 s, plus ≈ 20 s of start-up: **≈ 4.5–8 min in all**, within an 8-minute device budget
only if numerics compiles as fast as the scan should make it. Where device time is short, run
``--only fused`` (≈ 1.5 min with env + matmul) or ``--only fused train`` (≈ 4 min).

Sections:

* **env** — jax/flax/optax versions, the default device.
* **matmul** — rate of a jitted ``n³`` matmul in float32 (default precision, i.e. whatever XLA
  uses for f32 dots on that device: TF32 on NVIDIA tensor cores) and in bfloat16 (median of 10).
* **numerics** — a 4-layer d512 GQA model, one set of float32 params: the accelerator's logits
  with f32 compute at ``default`` and ``highest`` matmul precision, and with **bf16 compute**,
  against the same params' logits on the host CPU at ``highest`` precision; relative error
  ``‖out − ref‖ / ‖ref‖``, the mean next-token NLL difference, and KV-cache decode (prefill + one
  token at a time) vs the full forward on the accelerator.
* **fused** — ``bench.entropy_memory.run_row`` at N 8192 × D 1024 × V 131072 (float32): fused vs
  dense log-prob + entropy, forward + backward (value_and_grad w.r.t. hidden and W), XLA temp
  memory, time, max |Δ| vs dense — the backend's default forward (``parallel`` on GPU/TPU, never
  timed there yet: ``fused_s``) and every other impl in the same run, calls interleaved
  (``stream_s``, ``pallas_s``: the Pallas kernel with the first tile of ``PALLAS_TILES``; all
  three share the XLA backward). ``fwd_only``: forward alone (where the impls differ), dense vs
  ``parallel`` vs Pallas at each tile of ``PALLAS_TILES`` (time, temp MiB, max |Δ|; a tile that
  fails to lower records its error). ``pallas_shard_map_check_vma``: the Pallas path inside
  ``shard_map(check_vma=True)`` on a 1-device mesh, fwd + bwd (CPU interpret mode cannot).
* **train** — one full training step (forward, backward, clip, AdamW; state donated) of a
  GPT-2-small-sized Llama (d 768, 12 layers, 12 heads, SwiGLU 2048, V 32000, seq 1024, batch 16,
  f32 params) under the model's precision policies ``precision="float32"`` and
  ``"mixed_bfloat16"`` (bf16 matmuls/activations; float32 params, scores, softmax, logits and
  loss): tokens/s and model-FLOPs utilisation against the bf16 matmul rate above (FLOP
  convention of ``bench.train_step``). Attention is ``attn_impl="auto"`` (cuDNN fused attention
  for the bf16 step on a GPU, XLA's ``dot_product_attention`` for f32; the resolved name is in
  ``attn_impl``); ``--train-ab`` adds the bf16 step with the exact query-blocked attention
  (``bfloat16_blocked``, the path of the H100 runs) for an A/B in one run (+≈ 1 min).
* **sampler** — ``make_sampler`` tokens/s on the rollout bench's model (d256, 4 layers, V64) at
  batch 64 and 512, 16 + 64 tokens, and on the d768 model (bf16) at batch 64, 128 + 128 tokens.
* **torch_train** — the same-shape Hugging Face ``LlamaForCausalLM`` step (loss, backward, clip,
  fused AdamW; bf16 via autocast; TF32 allowed for f32, as XLA does) when torch sees a GPU.
* **grpo** — ``bench.grpo_step``'s GRPO step (8 prompts × 8, ≤ 16 new tokens, d256 4 layers):
  step, rollout and update seconds.
* **attention** — ``attn_impl`` xla / cudnn against the exact blocked path on a left-padded bf16
  batch (4-layer d512 GQA, 8 × 512): logits and masked-NLL gradient errors, non-finite counts
  (≈ 85 s on an H200, mostly compiling).
* **pallas_tune** — the Pallas statistics kernel alone per Triton configuration
  (``PALLAS_TUNE``: tiles, ``num_warps``, ``num_stages``) against XLA's ``h @ W`` and
  ``logsumexp(h @ W)`` at the ``fused`` shape: seconds, TFLOP/s, max |Δ| of the log-sum-exp
  (≈ 15 s for 10 configurations on an H200; ``--only fused pallas_tune`` ≈ 50 s wall; the
  machine's start costs another ≈ 2 min of device time per call).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench.entropy_memory import PALLAS_KEYS, pallas_tile_kwargs
from entropylab.models import Transformer, TransformerConfig
from entropylab.models.transformer import forward


def _median_s(fn, repeats, *args):
    jax.block_until_ready(fn(*args))  # warm-up (compile)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def sec_env(args):
    import flax
    import optax

    dev = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "platform": dev.platform,
        "device": getattr(dev, "device_kind", str(dev)),
        "n_devices": jax.device_count(),
        "host": f"{platform.machine()} {os.cpu_count()} CPUs",
    }


def sec_matmul(args):
    n = args.matmul_n
    out = {}
    for name, dt in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
        k1, k2 = jax.random.split(jax.random.key(0))
        a = jax.random.normal(k1, (n, n), dt)
        b = jax.random.normal(k2, (n, n), dt)
        f = jax.jit(lambda a, b: a @ b)
        s = _median_s(f, 10, a, b)
        out[f"{name}_tflop_s"] = 2.0 * n**3 / s / 1e12
    out["n"] = n
    return out


def _model_cfg(args, **kw):
    if args.quick:
        base = dict(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128)
    else:
        base = dict(vocab_size=4096, d_model=512, n_layers=4, n_heads=8, n_kv_heads=4, d_ff=1536)
    return TransformerConfig(**{**base, "max_seq_len": 512, **kw})


def _rel(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))


def _nll(logits, tokens):
    lp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32)[:, :-1], axis=-1)
    return float(-jnp.mean(jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1)))


def sec_numerics(args):
    cfg = _model_cfg(args)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    b, t = (2, 32) if args.quick else (4, 256)
    tokens = jax.random.randint(jax.random.key(1), (b, t), 0, cfg.vocab_size)
    cpu = jax.devices("cpu")[0]
    fwd = jax.jit(lambda st, tok: forward(graphdef, st, tok)[0])
    with jax.default_matmul_precision("highest"):
        ref = np.asarray(fwd(jax.device_put(state, cpu), jax.device_put(tokens, cpu)))
        out_hi = np.asarray(jax.jit(lambda st, tok: forward(graphdef, st, tok)[0])(state, tokens))
    out_def = np.asarray(fwd(state, tokens))
    # bf16 compute, same float32 params
    gd16, _ = nnx.split(Transformer(_model_cfg(args, dtype="bfloat16"), rngs=nnx.Rngs(0)))
    out_bf16 = np.asarray(jax.jit(lambda st, tok: forward(gd16, st, tok)[0])(state, tokens))
    res = {
        "logits_rel_err_f32_default": _rel(out_def, ref),
        "logits_rel_err_f32_highest": _rel(out_hi, ref),
        "logits_rel_err_bf16": _rel(out_bf16, ref),
        "nll_ref": _nll(ref, tokens),
        "nll_diff_f32_default": _nll(out_def, tokens) - _nll(ref, tokens),
        "nll_diff_bf16": _nll(out_bf16, tokens) - _nll(ref, tokens),
        "argmax_agree_bf16": float(np.mean(out_bf16.argmax(-1) == ref.argmax(-1))),
    }

    # KV-cache decode == full forward (accelerator, highest precision)
    def decode_all(st, tok):
        m = nnx.merge(graphdef, st)
        cache = m.init_cache(b, t)
        half = t // 2
        lg, cache = m.decode(tok[:, :half], cache)

        def one(cache, col):  # one single-token decode step (a scan, not an unrolled loop)
            step_logits, cache = m.decode(col[:, None], cache)
            return cache, step_logits[:, 0]

        _, steps = jax.lax.scan(one, cache, tok[:, half:].T)  # [t - half, B, V]
        return jnp.concatenate([lg, steps.transpose(1, 0, 2)], axis=1)

    with jax.default_matmul_precision("highest"):
        dec = np.asarray(jax.jit(decode_all)(state, tokens))
    res["decode_vs_forward_max_abs"] = float(np.max(np.abs(dec - out_hi)))
    res["decode_vs_forward_rel"] = _rel(dec, out_hi)
    return res


# Pallas tiles (token_block, vocab_block, d_block[, num_warps, num_stages]); None = the op's
# default tile for the backend (``entropylab.ops.pallas_fused.DEFAULT_TILES``). The first is the
# one timed fwd+bwd. GPU (Triton): powers of 2; TPU: multiples of (8, 128), larger tiles in VMEM.
# --quick (CPU, interpret mode): the default tile at a toy shape.
PALLAS_TILES = {
    "gpu": (None, (64, 128, 64), (256, 128, 32, 8, 4), (512, 64, 32, 8, 3)),
    "tpu": ((256, 512, 1024), (128, 1024, 1024)),
    "quick": (None,),
}


# The Pallas statistics kernel alone, per Triton configuration (token_block, vocab_block,
# d_block, num_warps, num_stages; None = Triton's default), at the ``fused`` shape. Tuned on an
# H200 (2026-11-30) in rounds, each varying the last one's fastest: round 1, 64 × 128 × 64 at
# Triton's defaults 55 ms → 256 × 128 × 32 at 8 warps, 3 stages 23 ms; round 2 → 256 × 64 × 32
# at 4 warps, 3 stages 17 ms (1.7× XLA's logsumexp(h @ W)); tiles whose pipeline needs more
# than the 227 KiB of shared memory, or whose accumulator needs more than the registers, fail
# to compile and are recorded as errors. This is round 3.
PALLAS_TUNE = {
    "gpu": (
        (256, 64, 32, 4, 3),
        (256, 64, 32, 4, 4),
        (256, 64, 64, 4, 2),
        (256, 64, 32, 8, 3),
        (256, 64, 16, 4, 4),
        (256, 32, 32, 4, 3),
        (128, 64, 32, 4, 3),
        (512, 64, 32, 8, 3),
        (512, 64, 16, 8, 4),
        (1024, 64, 16, 16, 3),
    ),
    "quick": ((64, 512, 64, None, None), (64, 512, 32, None, None)),
}


def _tile_name(tile) -> str:
    """``BTxBVxBD[_wW_sS]`` of a tile (None = the backend default, resolved)."""
    from entropylab.ops.pallas_fused import default_tiles

    t = tile or tuple(default_tiles().get(k) for k in PALLAS_KEYS)
    name = "x".join(str(x) for x in t[:3])
    if len(t) > 3 and any(x is not None for x in t[3:]):
        name += f"_w{t[3] or 'd'}_s{t[4] or 'd'}"
    return ("default_" if tile is None else "") + name


def sec_pallas_tune(args):
    """The Pallas kernel's forward statistics per Triton configuration, against XLA.

    Times ``pallas_fused.block_stats`` (the kernel: the ``[N, V]`` logits one tile at a time)
    and XLA's ``logsumexp(h @ W)`` and bare ``h @ W`` at the ``fused`` shape; the kernel's rate
    in TFLOP/s (2·N·D·V per call) and the max |Δ| of the log-sum-exp its partials combine to.
    """
    from entropylab.ops import pallas_fused
    from entropylab.ops.fused import _combine_partials

    n, d, v = (256, 64, 4096) if args.quick else (8192, 1024, 131072)
    kh, kw, ky = jax.random.split(jax.random.key(4), 3)
    h = jax.random.normal(kh, (n, d), jnp.float32)
    w = jax.random.normal(kw, (d, v), jnp.float32) / np.sqrt(d)
    y = jax.random.randint(ky, (n,), 0, v)
    flop = 2.0 * n * d * v
    out = {"shape": f"{n}x{d}x{v}"}
    mm = jax.jit(lambda h, w: jnp.dot(h, w, preferred_element_type=jnp.float32))
    lse = jax.jit(
        lambda h, w: jax.nn.logsumexp(jnp.dot(h, w, preferred_element_type=jnp.float32), axis=-1)
    )
    ref = lse(h, w)
    for name, fn in (("xla_matmul", mm), ("xla_logsumexp", lse)):
        t = _median_s(fn, 3 if args.quick else 5, h, w)
        out[name] = {"s": t, "tflop_s": flop / t / 1e12}
    for bt, bv, bd, nw, ns in PALLAS_TUNE["quick" if jax.default_backend() == "cpu" else "gpu"]:
        name = f"{bt}x{bv}x{bd}_w{nw or 'd'}_s{ns or 'd'}"
        try:
            fn = jax.jit(
                functools.partial(
                    pallas_fused.block_stats,
                    token_block=bt,
                    vocab_block=bv,
                    d_block=bd,
                    num_warps=nw,
                    num_stages=ns,
                )
            )
            t = _median_s(fn, 3 if args.quick else 5, h, w, y)
            # the partials combined as the fused op combines them (m + log s = log-sum-exp)
            _, _, m, log_s, _ = _combine_partials(*fn(h, w, y), y, v, False)
            got = m + log_s
            out[name] = {
                "s": t,
                "tflop_s": flop / t / 1e12,
                "vs_xla_logsumexp": t / out["xla_logsumexp"]["s"],
                "max_diff_lse": float(jnp.max(jnp.abs(got - ref))),
            }
        except Exception as e:  # one configuration that does not compile must not hide the rest
            out[name] = {"error": f"{type(e).__name__}: {e}"[:400]}
    return out


def _fused_fwd_rows(args, hidden, w, labels, tiles):
    """Forward only (logp, H; no gradient): dense vs block-parallel XLA vs Pallas per tile.

    The backward is the same XLA recompute for every fused impl, so the forward alone is where
    the Pallas kernel can differ. Temp memory = XLA's ``memory_analysis().temp_size_in_bytes``
    (a Pallas call's own tile buffers live in registers / shared memory / VMEM, not in it).
    """
    from entropylab.ops import fused_logprobs_and_entropy, logprobs_and_entropy

    def dense(h, w, y):
        return logprobs_and_entropy(jnp.dot(h, w, preferred_element_type=jnp.float32), y)

    fns = {"dense": dense}
    fns["parallel"] = functools.partial(
        fused_logprobs_and_entropy, vocab_block=args.fused_vocab_block, impl="parallel"
    )
    for tile in tiles:
        fns[f"pallas_{_tile_name(tile)}"] = functools.partial(
            fused_logprobs_and_entropy, impl="pallas", **pallas_tile_kwargs(tile)
        )
    out = {}
    ref = None
    for name, fn in fns.items():
        try:
            c = jax.jit(fn).lower(hidden, w, labels).compile()
            row = {"temp_mib": c.memory_analysis().temp_size_in_bytes / 2**20}
            row["s"] = _median_s(c, 3 if args.quick else 5, hidden, w, labels)
            vals = c(hidden, w, labels)
            if ref is None:
                ref = vals
            else:
                row["max_diff"] = float(max(jnp.max(jnp.abs(a - b)) for a, b in zip(vals, ref)))
                row["time_ratio"] = row["s"] / out["dense"]["s"]
        except Exception as e:  # one tile that does not lower must not hide the others
            row = {"error": f"{type(e).__name__}: {e}"[:500]}
        out[name] = row
    return out


def _pallas_under_shard_map(hidden, w, labels, tile):
    """impl="pallas" inside ``jax.shard_map(check_vma=True)`` on a 1-device mesh (fwd + bwd).

    CPU interpret mode cannot run this in JAX 0.10.2 (see ``entropylab.ops.pallas_fused``), so
    only a compiled backend can show whether the ``manual_axis_type`` plumbing lowers.
    """
    from jax.sharding import Mesh
    from jax.sharding import PartitionSpec as P

    from entropylab.ops import fused_logprobs_and_entropy

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))

    def local(h, w, y):
        return fused_logprobs_and_entropy(h, w, y, impl="pallas", **pallas_tile_kwargs(tile))

    sharded = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P("data"), P(), P("data")),
        out_specs=(P("data"), P("data")),
        check_vma=True,
    )

    def loss(h, w, y):
        lp, en = sharded(h, w, y)
        return jnp.sum(lp) + jnp.sum(en)

    n = min(hidden.shape[0], 256)
    val, _ = jax.jit(jax.value_and_grad(loss, (0, 1)))(hidden[:n], w, labels[:n])
    return f"ok (value {float(val):.4g})"


def sec_fused(args):
    from bench.entropy_memory import run_row
    from entropylab.ops.fused import IMPLS, default_impl

    n, d, v = (256, 64, 4096) if args.quick else (8192, 1024, 131072)
    backend = jax.default_backend()
    tiles = PALLAS_TILES["quick" if args.quick or backend == "cpu" else backend]
    impl = default_impl()
    r = run_row(
        n,
        d,
        v,
        vocab_block=args.fused_vocab_block,
        chunk_size=None,
        repeats=3 if args.quick else 5,
        dense_limit_gib=48,
        impl=impl,
        block_group=1,
        extra_impls=tuple(i for i in IMPLS if i != impl),
        pallas_blocks=tiles[0],
    )
    r["pallas_tile"] = _tile_name(tiles[0])
    for other in IMPLS:
        if other == impl or f"{other}_mem" not in r:  # not compiled: its error is in the row
            continue
        r[f"{other}_mem_mib"] = r.pop(f"{other}_mem") / 2**20
        if r.get("dense_s"):
            r[f"{other}_time_ratio"] = r[f"{other}_s"] / r["dense_s"]
    r["mem_ratio"] = r["dense_mem"] / max(r["fused_mem"], 1)
    if r.get("dense_s"):
        r["time_ratio"] = r["fused_s"] / r["dense_s"]
    r["fused_mem_mib"] = r.pop("fused_mem") / 2**20
    r["dense_mem_mib"] = r.pop("dense_mem") / 2**20

    kh, kw, ky = jax.random.split(jax.random.key(1), 3)
    hidden = jax.random.normal(kh, (n, d), jnp.float32)
    w = jax.random.normal(kw, (d, v), jnp.float32) / np.sqrt(d)
    labels = jax.random.randint(ky, (n,), 0, v)
    r["fwd_only"] = _fused_fwd_rows(args, hidden, w, labels, tiles)
    if backend == "cpu":
        r["pallas_shard_map_check_vma"] = "not run (CPU interpret mode cannot; see docstring)"
    else:
        try:
            r["pallas_shard_map_check_vma"] = _pallas_under_shard_map(hidden, w, labels, tiles[0])
        except Exception as e:
            r["pallas_shard_map_check_vma"] = f"error: {type(e).__name__}: {e}"[:500]
    return r


# compute dtype -> the model's named mixed-precision policy (``TransformerConfig.precision``):
# float32 params in both; "mixed_bfloat16" runs matmuls/activations in bf16 and keeps scores,
# softmax, logits, log-probs and the loss in float32
_PRECISION = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


def _train_cfg(args, dtype):
    precision = _PRECISION[dtype]
    if args.quick:
        return TransformerConfig.smoke(precision=precision), 4, 64
    cfg = TransformerConfig(
        vocab_size=32000,
        d_model=768,
        n_layers=12,
        n_heads=12,
        d_ff=2048,
        max_seq_len=1024,
        precision=precision,
    )
    return cfg, 16, 1024


def sec_train(args, matmul):
    import dataclasses

    from bench.train_step import JaxStep, model_flops_per_token
    from entropylab.models.attention import resolve_attn_impl

    out = {}
    rows = [("float32", "float32", "auto"), ("bfloat16", "bfloat16", "auto")]
    if args.train_ab:  # the same bf16 step with the exact (query-blocked) attention
        rows.append(("bfloat16_blocked", "bfloat16", "blocked"))
    for name, dtype, attn in rows:
        cfg, batch, seq = _train_cfg(args, dtype)
        cfg = dataclasses.replace(cfg, attn_impl=attn)
        step = JaxStep(cfg, batch, seq)
        for _ in range(2):
            step()
        ts = [step() for _ in range(3 if args.quick else 10)]
        s = statistics.median(ts)
        flops = model_flops_per_token(cfg, seq) * batch * seq
        out[name] = {
            "precision": cfg.precision,
            "attn_impl": resolve_attn_impl(
                cfg.attn_impl, causal=True, dtype=cfg.dtype, head_dim=cfg.head_dim
            ),
            "params_M": cfg.num_params / 1e6,
            "shape": f"{batch}x{seq}",
            "step_s": s,
            "tok_s": batch * seq / s,
            "tflop_s": flops / s / 1e12,
            "mfu_vs_bf16_matmul": flops / s / (matmul["bf16_tflop_s"] * 1e12),
            "xla_vs_model_flops": step.xla_flops / flops,
        }
    return out


def sec_torch_train(args, matmul):
    """The same-shape HF ``LlamaForCausalLM`` step on the same accelerator (torch CUDA), if any."""
    import torch
    from transformers import LlamaForCausalLM

    from bench.train_step import hf_llama_config, model_flops_per_token

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device visible to torch"}
    torch.backends.cuda.matmul.allow_tf32 = True  # parity with XLA's default f32 dot on GPU
    torch.backends.cudnn.allow_tf32 = True
    out = {"torch": torch.__version__}
    for dtype in ("float32", "bfloat16"):
        cfg, batch, seq = _train_cfg(args, dtype)
        torch.manual_seed(0)
        model = LlamaForCausalLM(hf_llama_config(cfg, seq)).float().cuda().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, fused=True)
        ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")

        def step(model=model, opt=opt, ids=ids, dtype=dtype):
            with torch.autocast("cuda", torch.bfloat16, enabled=dtype == "bfloat16"):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(2):
            step()
        torch.cuda.synchronize()
        ts = []
        for _ in range(3 if args.quick else 10):
            t = time.perf_counter()
            step()
            torch.cuda.synchronize()
            ts.append(time.perf_counter() - t)
        s = statistics.median(ts)
        flops = model_flops_per_token(cfg, seq) * batch * seq
        out[dtype] = {
            "step_s": s,
            "tok_s": batch * seq / s,
            "tflop_s": flops / s / 1e12,
            "mfu_vs_bf16_matmul": flops / s / (matmul["bf16_tflop_s"] * 1e12),
        }
        del model, opt
        torch.cuda.empty_cache()
    return out


def sec_sampler(args):
    from entropylab.rl.sampling import SamplingConfig, make_sampler, sample_keys

    out = {}
    d256 = TransformerConfig(
        vocab_size=64, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_seq_len=256
    )
    big = _train_cfg(args, "bfloat16")[0]
    runs = [("d256", d256, 64, 16, 64), ("d256", d256, 512, 16, 64)]
    runs.append(("d768_bf16" if not args.quick else "smoke_bf16", big, 64, 128, 128))
    if args.quick:
        runs = [(n, c, min(b, 8), 8, 8) for n, c, b, _, _ in runs]
    for name, cfg, b, p, n in runs:
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        scfg = SamplingConfig(max_new_tokens=n, eos_id=cfg.vocab_size, pad_id=0)
        sample = make_sampler(graphdef, scfg)
        prompts = jax.random.randint(jax.random.key(2), (b, p), 1, cfg.vocab_size)
        mask = jnp.ones((b, p), bool)
        keys = sample_keys(0, 0, jnp.arange(b), jnp.zeros(b, jnp.int32))
        t0 = time.perf_counter()
        jax.block_until_ready(sample(state, prompts, mask, keys).tokens)
        first = time.perf_counter() - t0
        s = _median_s(sample, 3, state, prompts, mask, keys)
        out[f"{name}_b{b}_{p}+{n}"] = {"s": s, "tok_s": b * n / s, "first_call_s": first}
    return out


def sec_attention(args):
    """Fused attention (``attn_impl`` xla / cudnn) against the exact blocked path, bf16 model.

    A left-padded batch (row r has r·T/8 padding tokens; RL prompts are left-padded, and padded
    queries see no valid key), the same float32 params for every impl: logits on valid positions
    (relative error vs ``blocked``; ``blocked`` in float32 as the scale of bf16 error), how many
    logits / gradient entries are non-finite anywhere (padded rows included: a NaN there reaches
    the gradient even when the loss masks it), and the gradient of the masked NLL (relative
    error of the flattened gradient vs ``blocked``).
    """
    b, t = (4, 32) if args.quick else (8, 512)
    tokens = jax.random.randint(jax.random.key(3), (b, t), 0, 256 if args.quick else 4096)
    n_pad = (np.arange(b) * t) // 8
    mask = jnp.asarray(np.arange(t)[None, :] >= n_pad[:, None])
    positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
    valid = np.asarray(mask[:, 1:] & mask[:, :-1])
    state = nnx.split(Transformer(_model_cfg(args), rngs=nnx.Rngs(0)))[1]

    def run(precision, impl):
        gd = nnx.split(
            Transformer(_model_cfg(args, precision=precision, attn_impl=impl), rngs=nnx.Rngs(0))
        )[0]

        def loss(st):
            logits = forward(gd, st, tokens, positions=positions, attention_mask=mask)[0]
            lp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
            nll = -jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1)[..., 0]
            return jnp.sum(jnp.where(valid, nll, 0.0)) / valid.sum(), logits

        (_, logits), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(state)
        flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(g)])
        return np.asarray(logits, np.float64), flat

    ref_logits, ref_g = run("mixed_bfloat16", "blocked")
    out = {"shape": f"{b}x{t}", "pad_rows": n_pad.tolist()}
    sel = np.asarray(mask)
    rows = [("float32", "blocked")] + [("mixed_bfloat16", i) for i in ("xla", "cudnn")]
    for precision, impl in rows:
        name = f"{impl}_f32" if precision == "float32" else impl
        try:
            logits, g = run(precision, impl)
        except Exception as e:  # e.g. cuDNN on a CPU, or a shape cuDNN refuses
            out[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
            continue
        out[name] = {
            "logits_rel_err_valid": _rel(logits[sel], ref_logits[sel]),
            "nonfinite_logits": int((~np.isfinite(logits)).sum()),
            "grad_rel_err": _rel(g, ref_g),
            "nonfinite_grads": int((~np.isfinite(g)).sum()),
        }
    return out


def sec_grpo(args):
    from bench.grpo_step import our_step_times

    ns = SimpleNamespace(prompts=8, group=8, new_tokens=16, prompt_width=12, steps=5, warmup=2)
    if args.quick:
        ns = SimpleNamespace(prompts=2, group=2, new_tokens=4, prompt_width=12, steps=2, warmup=1)
    _, out = our_step_times(ns)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument(
        "--train-ab",
        action="store_true",
        help="train: also the bf16 step with attn_impl='blocked' (+≈ 1 min of device time)",
    )
    args = ap.parse_args(argv)
    args.matmul_n = 512 if args.quick else 8192
    args.fused_vocab_block = 512 if args.quick else 4096
    results = {}
    sections = [
        ("env", lambda: sec_env(args)),
        ("matmul", lambda: sec_matmul(args)),
        ("numerics", lambda: sec_numerics(args)),
        ("fused", lambda: sec_fused(args)),
        ("train", lambda: sec_train(args, results["matmul"])),
        ("sampler", lambda: sec_sampler(args)),
        ("torch_train", lambda: sec_torch_train(args, results["matmul"])),
        ("grpo", lambda: sec_grpo(args)),
        ("attention", lambda: sec_attention(args)),
        ("pallas_tune", lambda: sec_pallas_tune(args)),
    ]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, fn in sections:
        if args.only and name not in args.only and name not in ("env", "matmul"):
            continue
        t0 = time.perf_counter()
        try:
            results[name] = fn()
        except Exception as e:  # report and go on: one broken section must not hide the rest
            results[name] = {"error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        results[name]["section_s"] = round(time.perf_counter() - t0, 1)
        print(f"## {name}: {json.dumps(results[name], default=str)}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
