"""Sampler throughput: ``entropylab.rl.sampling`` vs Hugging Face ``generate`` on the same Llama.

Run: ``python -m bench.rollout`` (batches 64 and 512; a few minutes on 2 CPU cores), ``--quick``
for a seconds-long check, ``--no-torch`` to time the JAX sampler alone.

The model is a Hugging Face ``LlamaForCausalLM`` (d 256, 4 layers, 4 heads, SwiGLU 1024,
vocabulary 64, float32, random init, seed 0) saved as safetensors and imported with
:func:`entropylab.models.load_hf_checkpoint`, so both sides run *the same weights*; the maximum
logit difference over a prompt batch is printed as a check.

Both sides sample ``--new-tokens`` tokens after a ``--prompt-len``-token prompt at temperature 1
with no top-k / top-p, and neither may stop early (HF: ``min_new_tokens`` = ``max_new_tokens``;
ours: an EOS id outside the vocabulary). Ours is the jitted ``make_sampler`` (prefill + a
``while_loop`` of cached decode steps) and additionally returns every token's log-prob and
full-vocabulary entropy; HF's ``generate`` returns tokens only. Tokens/s counts generated tokens
(``batch × new_tokens``) over wall time; medians of ``--repeats`` calls after a warm-up (compile
excluded, ``block_until_ready``), the two timed **interleaved** so load from other processes hits
both alike. Model FLOP/s of the sampler counts ``2·N_mm`` per processed token plus causal attention
against the cache, against a float32 matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bench._table import print_markdown_table
from bench.train_step import matmul_rate
from entropylab.models import load_hf_checkpoint
from entropylab.rl.sampling import SamplingConfig, make_sampler, sample_keys

SHAPE = dict(vocab_size=64, hidden_size=256, num_hidden_layers=4, num_attention_heads=4)
SHAPE.update(num_key_value_heads=4, intermediate_size=1024)


def make_models(max_len: int):
    """``(hf_model, cfg, our_model)`` with identical float32 weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf_cfg = LlamaConfig(
        **SHAPE,
        max_position_embeddings=max_len,
        tie_word_embeddings=False,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    hf = LlamaForCausalLM(hf_cfg).float().eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d, safe_serialization=True)
        cfg, model = load_hf_checkpoint(d)
    return hf, cfg, model


def rollout_flops(cfg, batch: int, prompt: int, new: int) -> float:
    """Model FLOPs of prefill + ``new − 1`` cached decode steps (+ the last logits).

    Per processed token ``2·N_mm`` (matmul weights incl. the unembedding), plus causal attention
    ``4·L·H·d·(keys seen)`` (scores and values).
    """
    d, hd = cfg.d_model, cfg.head_dim
    attn_w = d * hd * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    n_mm = cfg.n_layers * (attn_w + 3 * d * cfg.d_ff) + d * cfg.vocab_size
    toks = prompt + new - 1  # the last sampled token is never fed back
    keys = sum(range(1, prompt + 1)) + sum(prompt + t + 1 for t in range(new - 1))
    return batch * (2.0 * n_mm * toks + 4.0 * cfg.n_layers * cfg.n_heads * hd * keys)


class JaxSampler:
    def __init__(self, cfg, model, prompts, new_tokens: int):
        scfg = SamplingConfig(max_new_tokens=new_tokens, eos_id=cfg.vocab_size, pad_id=0)
        graphdef, self.state = nnx.split(model)
        self.sample = make_sampler(graphdef, scfg)
        b = prompts.shape[0]
        self.prompts = jnp.asarray(prompts)
        self.mask = jnp.ones(prompts.shape, bool)
        self.keys = sample_keys(0, 0, jnp.arange(b), jnp.zeros(b, jnp.int32))

    def __call__(self) -> float:
        t = time.perf_counter()
        r = self.sample(self.state, self.prompts, self.mask, self.keys)
        jax.block_until_ready(r.tokens)
        dt = time.perf_counter() - t
        assert bool(r.response_mask.all()), "sampler stopped early"
        return dt


class HFGenerate:
    def __init__(self, hf, prompts, new_tokens: int):
        import torch

        self.torch, self.hf, self.n = torch, hf, new_tokens
        self.ids = torch.from_numpy(prompts.astype(np.int64))
        self.mask = torch.ones_like(self.ids)

    def __call__(self) -> float:
        t = time.perf_counter()
        out = self.hf.generate(
            input_ids=self.ids,
            attention_mask=self.mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=self.n,
            min_new_tokens=self.n,
            pad_token_id=0,
            eos_token_id=2,
        )
        dt = time.perf_counter() - t
        assert out.shape[1] == self.ids.shape[1] + self.n
        return dt


def logit_check(hf, model, prompts) -> float:
    import torch

    with torch.no_grad():
        ref = hf(torch.from_numpy(prompts[:8].astype(np.int64))).logits.numpy()
    ours, _ = model(jnp.asarray(prompts[:8]))
    return float(np.max(np.abs(np.asarray(ours) - ref)))


def bench_batch(batch, *, prompt, new, repeats, hf, cfg, model, use_torch, matmul):
    rng = np.random.default_rng(batch)
    prompts = rng.integers(3, cfg.vocab_size, (batch, prompt)).astype(np.int32)
    jx = JaxSampler(cfg, model, prompts, new)
    th = HFGenerate(hf, prompts, new) if use_torch else None
    t0 = time.perf_counter()
    jx()
    compile_s = time.perf_counter() - t0
    if th:
        th()
    tj, tt = [], []
    for _ in range(repeats):  # interleaved
        tj.append(jx())
        if th:
            tt.append(th())
    gen = batch * new
    j = statistics.median(tj)
    flops = rollout_flops(cfg, batch, prompt, new)
    row = {
        "batch": batch,
        "prompt+new": f"{prompt}+{new}",
        "jax_s": j,
        "jax_tok_s": gen / j,
        "jax_gflop_s": flops / j / 1e9,
        "util_vs_matmul": flops / j / matmul,
        "jax_first_call_s": compile_s,
    }
    if th:
        t = statistics.median(tt)
        row.update({"hf_s": t, "hf_tok_s": gen / t, "speedup": t / j})
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="batch 8, 4+8 tokens, 2 repeats")
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true", help="skip HF generate")
    ap.add_argument("--matmul-n", type=int, default=2048)
    args = ap.parse_args(argv)
    if args.quick:
        args.batches, args.prompt_len, args.new_tokens, args.repeats = [8], 4, 8, 2
        args.matmul_n = 512
    use_torch = not args.no_torch
    try:
        import torch

        torch_info = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        use_torch, torch_info = False, "torch not installed: HF side skipped"
    # the HF model is also the weight source; without torch fall back to a random JAX model
    if use_torch:
        hf, cfg, model = make_models(args.prompt_len + args.new_tokens)
    else:
        from entropylab.models import Transformer, TransformerConfig

        hf = None
        cfg = TransformerConfig(
            vocab_size=64, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_seq_len=4096
        )
        model = Transformer(cfg, rngs=nnx.Rngs(0))
    matmul = matmul_rate(args.matmul_n, 5)
    load = os.getloadavg()
    print(
        f"# rollout bench {datetime.date.today()} | {platform.machine()} {os.cpu_count()} CPUs"
        f" | load avg {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} | JAX {jax.__version__}"
        f" {jax.devices()[0].platform} | {torch_info}"
    )
    print(
        f"# model d{cfg.d_model} L{cfg.n_layers} H{cfg.n_heads} ff{cfg.d_ff} V{cfg.vocab_size}"
        f" ({cfg.num_params / 1e6:.2f}M params) | f32 matmul {args.matmul_n}^3:"
        f" {matmul / 1e9:.0f} GFLOP/s"
    )
    if use_torch:
        rng = np.random.default_rng(0)
        p = rng.integers(3, cfg.vocab_size, (8, args.prompt_len + 8)).astype(np.int32)
        print(f"# same weights: max |logit(ours) - logit(HF)| = {logit_check(hf, model, p):.1e}")
    rows = [
        bench_batch(
            b,
            prompt=args.prompt_len,
            new=args.new_tokens,
            repeats=args.repeats,
            hf=hf,
            cfg=cfg,
            model=model,
            use_torch=use_torch,
            matmul=matmul,
        )
        for b in args.batches
    ]
    print_markdown_table(rows, ratio_keys=("speedup",))
    return rows


if __name__ == "__main__":
    main()
