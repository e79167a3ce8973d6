"""One short accelerator check: what only a GPU/TPU run can show (jit there, bf16 numerics, rates).

Run: ``python -m bench.gpu_check --out DIR`` on the accelerator machine (≈ 3–5 min on one H100),
``--quick`` for a seconds-long run of the same code paths at toy shapes (CPU is fine; that is how
the script itself is tested). Every section runs in its own ``try`` so one failure does not hide
the rest; the results go to ``DIR/gpu_check.json`` and a table is printed last.

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
  dense log-prob + entropy, forward + backward, temp memory, time, max |Δ|; the backend's default
  forward (``parallel`` on GPU/TPU, never timed there yet) with its max |Δ|, and the ``stream``
  forward timed in the same run (``stream_s``, ``stream_mem``), calls interleaved.
* **train** — one full training step (forward, backward, clip, AdamW; state donated) of a
  GPT-2-small-sized Llama (d 768, 12 layers, 12 heads, SwiGLU 2048, V 32000, seq 1024, batch 16,
  f32 params) with f32 and with bf16 compute: tokens/s and model-FLOPs utilisation against the
  bf16 matmul rate above (FLOP convention of ``bench.train_step``).
* **sampler** — ``make_sampler`` tokens/s on the rollout bench's model (d256, 4 layers, V64) at
  batch 64 and 512, 16 + 64 tokens, and on the d768 model (bf16) at batch 64, 128 + 128 tokens.
* **torch_train** — the same-shape Hugging Face ``LlamaForCausalLM`` step (loss, backward, clip,
  fused AdamW; bf16 via autocast; TF32 allowed for f32, as XLA does) when torch sees a GPU.
* **grpo** — ``bench.grpo_step``'s GRPO step (8 prompts × 8, ≤ 16 new tokens, d256 4 layers):
  step, rollout and update seconds.
"""

from __future__ import annotations

import argparse
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


def sec_fused(args):
    from bench.entropy_memory import run_row
    from entropylab.ops.fused import IMPLS, default_impl

    n, d, v = (256, 64, 4096) if args.quick else (8192, 1024, 131072)
    impl = default_impl()
    r = run_row(
        n,
        d,
        v,
        vocab_block=4096 if not args.quick else 512,
        chunk_size=None,
        repeats=3 if args.quick else 5,
        dense_limit_gib=48,
        impl=impl,
        block_group=1,
        extra_impls=tuple(i for i in IMPLS if i != impl),
    )
    for other in IMPLS:
        if other == impl:
            continue
        r[f"{other}_mem_mib"] = r.pop(f"{other}_mem") / 2**20
        if r.get("dense_s"):
            r[f"{other}_time_ratio"] = r[f"{other}_s"] / r["dense_s"]
    r["mem_ratio"] = r["dense_mem"] / max(r["fused_mem"], 1)
    if r.get("dense_s"):
        r["time_ratio"] = r["fused_s"] / r["dense_s"]
    r["fused_mem_mib"] = r.pop("fused_mem") / 2**20
    r["dense_mem_mib"] = r.pop("dense_mem") / 2**20
    return r


def _train_cfg(args, dtype):
    if args.quick:
        return TransformerConfig.smoke(dtype=dtype), 4, 64
    cfg = TransformerConfig(
        vocab_size=32000,
        d_model=768,
        n_layers=12,
        n_heads=12,
        d_ff=2048,
        max_seq_len=1024,
        dtype=dtype,
    )
    return cfg, 16, 1024


def sec_train(args, matmul):
    from bench.train_step import JaxStep, model_flops_per_token

    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg, batch, seq = _train_cfg(args, dtype)
        step = JaxStep(cfg, batch, seq)
        for _ in range(2):
            step()
        ts = [step() for _ in range(3 if args.quick else 10)]
        s = statistics.median(ts)
        flops = model_flops_per_token(cfg, seq) * batch * seq
        out[dtype] = {
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
    args = ap.parse_args(argv)
    args.matmul_n = 512 if args.quick else 8192
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
