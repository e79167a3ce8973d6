"""Train-step throughput and model-FLOPs utilisation (MFU) vs a measured matmul rate and HF/PyTorch.

Run: ``python -m bench.train_step`` (presets ``tiny`` and ``small_cpu``; a few minutes on 2 CPU
cores), ``--quick`` for a seconds-long check, ``--no-torch`` to skip the PyTorch baseline.

For each preset it times one full training step — forward, backward, global-norm clipping and
AdamW (``entropylab.train.loop.make_train_step`` jitted with the state donated) — on one device,
float32, and, if ``torch`` and ``transformers`` are installed, a Hugging Face ``LlamaForCausalLM``
of the same shape (same d_model, layers, heads, kv heads, SwiGLU width, vocabulary, tied
embeddings) doing ``loss.backward()``, ``clip_grad_norm_`` and ``torch.optim.AdamW.step()`` on
the same batch shape. The two are timed **interleaved** (one JAX step, one torch step, …) so load
from other processes hits both alike; times are medians, compile/warm-up excluded.

Utilisation is measured against the rate of a large float32 matmul (``2n³`` FLOPs,
``n = --matmul-n``, jitted, median of repeats) timed in the same run, on the same machine,
before and after the steps; the larger of the two is the reference (conservative under load).

FLOP-counting convention (PaLM App. B / MaxText, see reference/perf_and_users.md A.3): model
FLOPs per token = ``6·N_mm + 6·L·T·D`` where ``N_mm`` counts the matmul weights (q, k, v, o,
MLP, and the unembedding once; the embedding lookup is a gather, 0 FLOPs; norms ignored) and
``6·L·T·D`` is attention scores + values for causal attention (the non-causal ``12·L·T·D``
halved). Training = 3 × forward. Rematerialisation is not counted (MFU, not HFU). XLA's own
``cost_analysis()`` FLOP estimate of the compiled step is printed as a cross-check.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropylab import parallel
from entropylab.models import Transformer, TransformerConfig
from entropylab.train.loop import init_state, make_train_step
from entropylab.train.optim import OptimConfig, lr_schedule, make_optimizer

# preset -> (batch, seq_len)
SHAPES = {"tiny": (32, 128), "small_cpu": (16, 256)}
QUICK_SHAPES = {"smoke": (8, 64)}


def model_flops_per_token(cfg: TransformerConfig, seq_len: int) -> float:
    """``6·N_mm + 6·L·T·D`` (see module docstring)."""
    d, hd = cfg.d_model, cfg.head_dim
    attn_w = d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    mlp_w = (3 if cfg.mlp == "swiglu" else 2) * d * cfg.d_ff
    n_mm = cfg.n_layers * (attn_w + mlp_w) + d * cfg.vocab_size
    return 6.0 * n_mm + 6.0 * cfg.n_layers * seq_len * cfg.n_heads * hd


def matmul_rate(n: int, repeats: int) -> float:
    """FLOP/s of a jitted ``[n, n] @ [n, n]`` float32 matmul (median over repeats)."""
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), jnp.float32)
    b = jax.random.normal(k2, (n, n), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2.0 * n**3 / statistics.median(times)


class JaxStep:
    def __init__(self, cfg: TransformerConfig, batch: int, seq: int):
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        ocfg = OptimConfig(learning_rate=1e-3, warmup_steps=10, total_steps=1000)
        opt = make_optimizer(ocfg)
        graphdef, rest, state = init_state(model, opt, seed=0)
        mesh = parallel.make_mesh()
        self.mesh = mesh
        self.state = parallel.shard_state(state, mesh)
        self.step = parallel.jit_train_step(
            make_train_step(graphdef, rest, opt, lr_schedule(ocfg)), mesh, self.state
        )
        rng = np.random.default_rng(0)
        toks = rng.integers(0, cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
        self.batch = parallel.shard_batch(
            {
                "inputs": toks[:, :-1],
                "targets": toks[:, 1:],
                "loss_mask": np.ones((batch, seq), np.float32),
                "attention_mask": np.ones((batch, seq), np.int32),
            },
            mesh,
        )
        compiled = self.step.lower(self.state, self.batch).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        self.xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    def __call__(self) -> float:
        t = time.perf_counter()
        self.state, m = self.step(self.state, self.batch)
        m["loss"].block_until_ready()
        return time.perf_counter() - t


def hf_llama_config(cfg: TransformerConfig, seq: int):
    """The Hugging Face ``LlamaConfig`` of the same shape as ``cfg`` (context ≥ ``seq``)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=max(cfg.max_seq_len, seq),
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=False,
        mlp_bias=False,
        rms_norm_eps=cfg.norm_eps,
    )


class TorchStep:
    def __init__(self, cfg: TransformerConfig, batch: int, seq: int):
        import torch
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        self.torch = torch
        self.model = LlamaForCausalLM(hf_llama_config(cfg, seq)).float().train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.1)
        rng = np.random.default_rng(0)
        toks = torch.from_numpy(rng.integers(0, cfg.vocab_size, (batch, seq)).astype(np.int64))
        self.inputs = toks
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def __call__(self) -> float:
        t = time.perf_counter()
        out = self.model(input_ids=self.inputs, labels=self.inputs)
        out.loss.backward()
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t


def bench_preset(name, batch, seq, *, steps, warmup, use_torch, matmul):
    cfg = getattr(TransformerConfig, name)(vocab_size=256)
    jx = JaxStep(cfg, batch, seq)
    th = TorchStep(cfg, batch, seq) if use_torch else None
    for _ in range(warmup):
        jx()
        if th:
            th()
    tj, tt = [], []
    for _ in range(steps):  # interleaved
        tj.append(jx())
        if th:
            tt.append(th())
    tokens = batch * seq
    flops = model_flops_per_token(cfg, seq) * tokens
    j = statistics.median(tj)
    row = {
        "preset": name,
        "params": cfg.num_params,
        "batch": f"{batch}x{seq}",
        "jax_step_s": j,
        "jax_tok_s": tokens / j,
        "model_gflop_step": flops / 1e9,
        "xla_gflop_step": jx.xla_flops / 1e9,
        "jax_gflop_s": flops / j / 1e9,
        "mfu_vs_matmul": flops / j / matmul,
    }
    if th:
        t = statistics.median(tt)
        row.update(
            torch_step_s=t,
            torch_tok_s=tokens / t,
            torch_mfu_vs_matmul=flops / t / matmul,
            speedup_vs_torch=t / j,
            torch_params=th.n_params,
        )
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke preset, few steps")
    ap.add_argument("--presets", nargs="*", default=None, help=f"subset of {sorted(SHAPES)}")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.presets:
        shapes = {k: shapes.get(k, SHAPES.get(k)) for k in args.presets}
        if None in shapes.values():
            ap.error(f"--presets must be among {sorted(SHAPES)}")
    steps = 3 if args.quick else args.steps
    n = 512 if args.quick else args.matmul_n
    use_torch = not args.no_torch
    if use_torch:
        try:
            import torch
            import transformers  # noqa: F401

            torch.set_num_threads(os.cpu_count() or 1)
        except ImportError:
            use_torch = False

    print(
        f"date {datetime.date.today()}  machine {platform.machine()} {os.cpu_count()} CPUs  "
        f"jax {jax.__version__} ({jax.devices()[0].platform})  load avg {os.getloadavg()}"
    )
    mm_before = matmul_rate(n, 10 if not args.quick else 3)
    print(f"f32 matmul {n}^3: {mm_before / 1e9:.1f} GFLOP/s")
    rows = []
    for p, (b, s) in shapes.items():
        rows.append(
            bench_preset(
                p, b, s, steps=steps, warmup=args.warmup, use_torch=use_torch, matmul=mm_before
            )
        )
        print(f"done {p}: {rows[-1]}", flush=True)
    mm_after = matmul_rate(n, 10 if not args.quick else 3)
    mm_ref = max(mm_before, mm_after)
    print(
        f"f32 matmul {n}^3 after: {mm_after / 1e9:.1f} GFLOP/s; MFU uses the larger of the two "
        f"({mm_ref / 1e9:.1f} GFLOP/s)"
    )
    for r in rows:  # conservative: against the faster matmul measurement
        r["mfu_vs_matmul"] = r["jax_gflop_s"] * 1e9 / mm_ref
        if "torch_step_s" in r:
            r["torch_mfu_vs_matmul"] = r["model_gflop_step"] * 1e9 / r["torch_step_s"] / mm_ref
    hdr = (
        "preset",
        "params",
        "batch",
        "jax s/step",
        "jax tok/s",
        "model GFLOP",
        "XLA GFLOP",
        "GFLOP/s",
        "MFU",
    )
    if use_torch:
        hdr += ("torch s/step", "torch tok/s", "torch MFU", "JAX/torch speed")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows:
        cells = [
            r["preset"],
            f"{r['params'] / 1e6:.2f}M",
            r["batch"],
            f"{r['jax_step_s']:.4f}",
            f"{r['jax_tok_s']:.0f}",
            f"{r['model_gflop_step']:.2f}",
            f"{r['xla_gflop_step']:.2f}",
            f"{r['jax_gflop_s']:.1f}",
            f"{100 * r['mfu_vs_matmul']:.1f}%",
        ]
        if use_torch:
            cells += [
                f"{r['torch_step_s']:.4f}",
                f"{r['torch_tok_s']:.0f}",
                f"{100 * r['torch_mfu_vs_matmul']:.1f}%",
                f"{r['speedup_vs_torch']:.2f}x",
            ]
        print("| " + " | ".join(cells) + " |")
    print(f"load avg at end {os.getloadavg()}")
    return rows, mm_before


if __name__ == "__main__":
    main()
