"""Per-device memory plan for a preset on a mesh: does it fit a given accelerator?

    python -m entropylab.plan --preset qwen2.5-1.5b --mesh data=1,fsdp=8,tensor=1 \\
        --batch 64 --seq-len 1024 --gen-batch 512 --gen-len 1024 --accelerator h100-80gb

Estimates, per device, in bytes (``P`` = parameter count from ``TransformerConfig.num_params``,
``D = data·fsdp·tensor`` devices, ``S = fsdp·tensor`` parameter shards, ``Bd = data·fsdp``
batch shards; the sharding rule of ``entropylab.parallel`` puts matrices on ``fsdp``/``tensor``
and replicates vectors, which the estimate ignores, a < 0.1% term at these sizes):

* params ``P·bytes(param_dtype)/S``; gradients the same (they follow the params);
* AdamW state: two float32-shaped moments of the params' dtype: ``2·P·bytes(param_dtype)/S``
  (plus a few scalars);
* activations kept for the backward pass, per layer, with 2-byte activations, the standard
  estimate ``s·b·d·(34 + 5·a·s/d)`` bytes (Korthikanti et al., arXiv:2205.05198, Eq. 2:
  no recomputation, no sequence parallelism), scaled by ``bytes(dtype)/2``, ``b = batch/Bd``,
  divided by ``tensor``. With ``--remat`` only each layer's input (``2·s·b·d`` bytes at 2-byte
  activations) is kept plus one layer's full activations;
* logits: the ``[b, s, V]`` float32 logits and their gradient (``8·b·s·V`` bytes), or none with
  ``--fused-logits`` (``entropylab.ops.fused_logprobs_and_entropy``);
* KV cache for rollouts: ``2·L·b_gen·(prompt+gen)·n_kv·head_dim·bytes(dtype)`` with
  ``b_gen = gen_batch/Bd`` (divided by ``tensor`` when it divides ``n_kv``).

It *fits* when the total times 1.15 (allocator fragmentation, XLA temporaries, the compiled
program) is at most the accelerator's memory. These are planning numbers, not measurements:
the test suite checks the params and optimizer terms against the real sharded state on CPU;
activation and KV numbers follow the formulas above and were not measured on hardware.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from entropylab.models import TransformerConfig

GiB = 1024**3
OVERHEAD = 1.15
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

# usable device memory in bytes (vendor capacity; HBM as reported by the runtime may be slightly
# smaller)
ACCELERATORS = {
    "h100-80gb": 80 * GiB,
    "h200": 141 * 10**9,
    "a100-40gb": 40 * GiB,
    "a100-80gb": 80 * GiB,
    "l4": 24 * GiB,
    "tpu-v4": 32 * GiB,
    "tpu-v5e": 16 * GiB,
    "tpu-v5p": 95 * GiB,
    "tpu-v6e": 32 * GiB,
}


def _qwen25(d, layers, heads, kv, ff, vocab, tie, **kw):
    return TransformerConfig._make(
        dict(
            vocab_size=vocab,
            d_model=d,
            n_layers=layers,
            n_heads=heads,
            n_kv_heads=kv,
            d_ff=ff,
            max_seq_len=32768,
            norm_eps=1e-6,
            qkv_bias=True,
            tie_embeddings=tie,
            param_dtype="bfloat16",
            dtype="bfloat16",
        ),
        kw,
        theta=1_000_000.0,
    )


# Full-size shapes (parameter counts as the HF checkpoints: Qwen2.5-0.5B 494M, -1.5B 1.54B,
# -7B 7.62B). Import weights with entropylab.models.hf_import.load_hf_checkpoint.
PRESETS = {
    "smoke": lambda: TransformerConfig.smoke(),
    "tiny": lambda: TransformerConfig.tiny(),
    "qwen2.5-0.5b": lambda: _qwen25(896, 24, 14, 2, 4864, 151936, True),
    "qwen2.5-1.5b": lambda: _qwen25(1536, 28, 12, 2, 8960, 151936, True),
    "qwen2.5-7b": lambda: _qwen25(3584, 28, 28, 4, 18944, 152064, False),
    # a Llama-3.2-1B-shaped LM (d 2048, 16 layers, GQA 32/8, vocab 128256, tied embeddings)
    "lm-1b": lambda: TransformerConfig._make(
        dict(
            vocab_size=128256,
            d_model=2048,
            n_layers=16,
            n_heads=32,
            n_kv_heads=8,
            d_ff=8192,
            max_seq_len=8192,
            tie_embeddings=True,
            param_dtype="bfloat16",
            dtype="bfloat16",
        ),
        {},
        theta=500_000.0,
    ),
    "llama2-7b": lambda: TransformerConfig.llama2_7b(),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Workload:
    batch: int = 8  # sequences per optimizer step (global)
    seq_len: int = 1024
    gen_batch: int = 0  # rollout sequences decoded at once (global); 0 = no KV cache
    prompt_len: int = 256
    gen_len: int = 0
    remat: bool = False
    fused_logits: bool = False

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(v, bool):
                    raise TypeError(f"{f.name} must be a bool, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{f.name} must be an int >= 0, got {v!r}")
        if self.batch < 1 or self.seq_len < 1:
            raise ValueError(f"batch and seq_len must be >= 1, got {self.batch}, {self.seq_len}")


def parse_mesh(text: str) -> dict[str, int]:
    """``"data=2,fsdp=4,tensor=1"`` or ``"2x4x1"`` -> ``{"data": 2, "fsdp": 4, "tensor": 1}``."""
    axes = ("data", "fsdp", "tensor")
    try:
        if "=" in text:
            sizes = dict.fromkeys(axes, 1)
            for part in text.split(","):
                k, v = part.split("=")
                if k.strip() not in sizes:
                    raise ValueError(f"unknown axis {k.strip()!r}")
                sizes[k.strip()] = int(v)
        else:
            vals = [int(x) for x in text.lower().split("x")]
            if len(vals) != 3:
                raise ValueError("need three sizes")
            sizes = dict(zip(axes, vals))
    except ValueError as e:
        raise ValueError(
            f"--mesh must look like 'data=1,fsdp=8,tensor=1' or '1x8x1', got {text!r} ({e})"
        ) from None
    if any(v < 1 for v in sizes.values()):
        raise ValueError(f"--mesh sizes must be >= 1, got {sizes}")
    return sizes


def plan(cfg: TransformerConfig, mesh: dict[str, int], work: Workload) -> dict[str, float]:
    """Per-device bytes by term (see the module docstring) and ``total``."""
    pbytes = DTYPE_BYTES[str(cfg.param_dtype)]
    abytes = DTYPE_BYTES[str(cfg.dtype)]
    shards = mesh["fsdp"] * mesh["tensor"]
    bshards = mesh["data"] * mesh["fsdp"]
    p = cfg.num_params
    b = math.ceil(work.batch / bshards)
    s, d, a, n_layers = work.seq_len, cfg.d_model, cfg.n_heads, cfg.n_layers
    per_layer = s * b * d * (34 + 5 * a * s / d) * abytes / 2 / mesh["tensor"]
    if work.remat:
        acts = n_layers * 2 * s * b * d * abytes / 2 + per_layer
    else:
        acts = n_layers * per_layer
    logits = 0.0 if work.fused_logits else 8.0 * b * s * cfg.vocab_size / mesh["tensor"]
    kv = 0.0
    if work.gen_batch:
        kvh = cfg.n_kv_heads or cfg.n_heads
        hd = cfg.head_dim or cfg.d_model // cfg.n_heads
        t_split = mesh["tensor"] if kvh % mesh["tensor"] == 0 else 1
        bg = math.ceil(work.gen_batch / bshards)
        kv = 2 * n_layers * bg * (work.prompt_len + work.gen_len) * kvh * hd * abytes / t_split
    out = {
        "params": p * pbytes / shards,
        "gradients": p * pbytes / shards,
        "optimizer_state": 2 * p * pbytes / shards,
        "activations": acts,
        "logits": logits,
        "kv_cache": kv,
    }
    out["total"] = sum(out.values())
    return out


def fits(total: float, accelerator: str) -> bool:
    return total * OVERHEAD <= ACCELERATORS[accelerator]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        prog="python -m entropylab.plan",
        description="Per-device memory (params, optimizer state, activations, KV cache) of a "
        "preset on a mesh, and whether it fits an accelerator.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS), help="model shape")
    ap.add_argument("--mesh", default="data=1,fsdp=1,tensor=1", help="data/fsdp/tensor sizes")
    ap.add_argument("--batch", type=int, default=8, help="global sequences per training step")
    ap.add_argument("--seq-len", type=int, default=1024, help="training sequence length")
    ap.add_argument("--gen-batch", type=int, default=0, help="global rollout batch (0: none)")
    ap.add_argument("--prompt-len", type=int, default=256, help="rollout prompt length")
    ap.add_argument("--gen-len", type=int, default=0, help="rollout new tokens")
    ap.add_argument("--remat", action="store_true", help="recompute layer activations")
    ap.add_argument("--fused-logits", action="store_true", help="no [B, T, V] logits")
    ap.add_argument(
        "--accelerator", default="h100-80gb", choices=sorted(ACCELERATORS), help="memory budget"
    )
    args = ap.parse_args(argv)
    try:
        mesh = parse_mesh(args.mesh)
        work = Workload(
            batch=args.batch,
            seq_len=args.seq_len,
            gen_batch=args.gen_batch,
            prompt_len=args.prompt_len,
            gen_len=args.gen_len,
            remat=args.remat,
            fused_logits=args.fused_logits,
        )
    except (ValueError, TypeError) as e:
        ap.error(str(e))
    cfg = PRESETS[args.preset]()
    res = plan(cfg, mesh, work)
    n_dev = mesh["data"] * mesh["fsdp"] * mesh["tensor"]
    cap = ACCELERATORS[args.accelerator]
    ok = fits(res["total"], args.accelerator)
    print(
        f"{args.preset}: {cfg.num_params / 1e9:.3f}B params ({cfg.param_dtype} params, "
        f"{cfg.dtype} compute), mesh {mesh} = {n_dev} devices"
    )
    for k, v in res.items():
        print(f"  {k:16s} {v / GiB:9.2f} GiB per device")
    verdict = "fits" if ok else "does NOT fit"
    print(
        f"{verdict} on {args.accelerator} ({cap / GiB:.0f} GiB): needs "
        f"{res['total'] * OVERHEAD / GiB:.2f} GiB with x{OVERHEAD} overhead"
    )
    return {"fits": ok, **res}


if __name__ == "__main__":
    main()
