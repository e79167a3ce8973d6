"""One full GRPO step: ``entropylab.rl.GRPOTrainer`` vs TRL's ``GRPOTrainer`` and tunix's GRPO.

Run: ``python -m bench.grpo_step`` (8 prompts × 8 completions, ≤ 16 new tokens; several minutes
on 2 CPU cores), ``--quick`` for a seconds-long check of ours only, ``--no-peers`` to skip the
peers.

Ours: ``GRPOTrainer.step(s)`` (rollout with the jitted KV-cache sampler, host verification,
GRPO advantages, the teacher-forced recomputation of old log-probs, one AdamW update on the
PPO-clip objective: ``epochs=1, minibatches=1``) on a Llama-shaped model (d 256, 4 layers,
4 heads, SwiGLU 1024, vocabulary 64, float32) and the character-level addition task. Time is
split into rollout (sample + verify) and update (advantages, the recompute forward — dispatched
asynchronously, so it completes inside the update timing — and forward + backward + AdamW); the
step total also includes the metrics the trainer logs (``other_s``). Medians
of ``--steps`` steps after ``--warmup`` (compile excluded; the trainer blocks on results).

Peers, each in a subprocess at the same shapes (see ``bench/peers/``): TRL 1.16 in this venv
(torch CPU, HF ``LlamaForCausalLM`` of the same shape), and tunix in the separate venv
``.venv-peers`` (``--tunix-python``) because it pins its own jax/flax. The peers run before or
after ours, not interleaved; a missing or failing peer is reported and skipped.

Achieved GFLOP/s of each phase use model FLOPs (``bench.rollout.rollout_flops`` for the rollout;
``2·N_mm`` + attention per token for the recompute forward plus 3× that for forward + backward,
over ``B·(P + N)`` tokens), against a float32 matmul rate measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
from flax import nnx

from bench._table import print_markdown_table
from bench.rollout import rollout_flops
from bench.train_step import matmul_rate, model_flops_per_token
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import tasks as T
from entropylab.rl.trainer import GRPOTrainer, RLConfig

ROOT = Path(__file__).resolve().parent.parent
MODEL = dict(vocab_size=64, d_model=256, n_layers=4, n_heads=4, d_ff=1024, max_seq_len=64)


def our_step_times(args):
    cfg = TransformerConfig(**MODEL)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    rl = RLConfig(
        difficulties=(2, 3),
        steps=args.warmup + args.steps,
        prompts_per_step=args.prompts,
        group_size=args.group,
        prompt_width=args.prompt_width,
        max_new_tokens=args.new_tokens,
        epochs=1,
        minibatches=1,
        eval_every=0,
    )
    with tempfile.TemporaryDirectory() as d:
        trainer = GRPOTrainer(rl, model, T.CharTokenizer(), d)
        recs = []
        for s in range(args.warmup + args.steps):
            t = time.perf_counter()
            rec = trainer.step(s)
            jax.block_until_ready(trainer.state["params"])
            rec["time/step_s"] = time.perf_counter() - t
            if s == 0:
                first = rec["time/step_s"]
            recs.append(rec)
    recs = recs[args.warmup :]

    def med(k):
        return statistics.median(r[k] for r in recs)

    out = {
        "step_s": med("time/step_s"),
        "rollout_s": med("time/rollout_s"),
        "prepare_s": med("time/prepare_s"),
        "update_s": med("time/update_s"),
        # per step, then the median (a difference of medians can come out negative)
        "other_s": statistics.median(
            r["time/step_s"] - r["time/rollout_s"] - r["time/prepare_s"] - r["time/update_s"]
            for r in recs
        ),
        "completion_len": med("response/length"),
        "first_step_s": first,
    }
    return cfg, out


def phase_flops(cfg, args, completion_len):
    b = args.prompts * args.group
    p, n = args.prompt_width, args.new_tokens
    roll = rollout_flops(cfg, b, p, n)
    fwd = model_flops_per_token(cfg, p + n) / 3.0 * b * (p + n)
    # the recompute forward is dispatched asynchronously and finishes inside the update timing,
    # so the two are reported together as the update phase
    return {"rollout": roll, "update": 4.0 * fwd}


def run_peer(name, python, module, args, timeout):
    cmd = [str(python), "-m", module, "--prompts", str(args.prompts), "--group", str(args.group)]
    cmd += ["--new-tokens", str(args.new_tokens), "--steps", str(args.steps)]
    cmd += ["--warmup", str(args.warmup)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    try:
        p = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"# peer {name}: not run ({type(e).__name__}: {e})")
        return None
    for line in p.stdout.splitlines():
        if line.startswith("PEER_JSON "):
            return json.loads(line[len("PEER_JSON ") :])
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    print(f"# peer {name}: failed (exit {p.returncode}): {' | '.join(tail)[:400]}")
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 x 2 prompts, 4 tokens, no peers")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prompt-width", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--peers", nargs="+", default=["trl", "tunix"], choices=["trl", "tunix"])
    ap.add_argument("--tunix-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    ap.add_argument("--peer-timeout", type=float, default=3600.0)
    ap.add_argument("--matmul-n", type=int, default=2048)
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.group, args.new_tokens, args.steps, args.warmup = 2, 2, 4, 2, 1
        args.no_peers, args.matmul_n = True, 512

    matmul = matmul_rate(args.matmul_n, 5)
    load = os.getloadavg()
    print(
        f"# grpo_step bench {datetime.date.today()} | {platform.machine()} {os.cpu_count()} CPUs"
        f" | load avg {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} | JAX {jax.__version__}"
        f" {jax.devices()[0].platform} | f32 matmul {args.matmul_n}^3: {matmul / 1e9:.0f} GFLOP/s"
    )
    cfg, ours = our_step_times(args)
    fl = phase_flops(cfg, args, ours["completion_len"])
    print(
        f"# {args.prompts} prompts x {args.group} completions, prompt {args.prompt_width} +"
        f" <= {args.new_tokens} new tokens | model d{cfg.d_model} L{cfg.n_layers}"
        f" ff{cfg.d_ff} V{cfg.vocab_size} ({cfg.num_params / 1e6:.2f}M params)"
        f" | our first step (compile) {ours['first_step_s']:.1f} s"
    )
    secs = {"rollout": ours["rollout_s"], "update": ours["prepare_s"] + ours["update_s"]}
    gf = {k: fl[k] / secs[k] / 1e9 for k in fl}
    print(
        "# ours GFLOP/s (util vs matmul): "
        + ", ".join(f"{k} {gf[k]:.1f} ({gf[k] * 1e9 / matmul:.1%})" for k in gf)
    )
    rows = [
        {
            "impl": "entropylab",
            "step_s": ours["step_s"],
            "rollout_s": ours["rollout_s"],
            "update_s": ours["prepare_s"] + ours["update_s"],
            "other_s": ours["other_s"],
            "completion_len": ours["completion_len"],
        }
    ]
    if not args.no_peers:
        peers = {"trl": (sys.executable, "bench.peers.trl_grpo")}
        peers["tunix"] = (args.tunix_python, "bench.peers.tunix_grpo")
        for name in args.peers:
            python, module = peers[name]
            if not Path(python).exists():
                print(f"# peer {name}: interpreter {python} not found (see bench/README.md)")
                continue
            r = run_peer(name, python, module, args, args.peer_timeout)
            if r is None:
                continue
            extra = {k: r[k] for k in ("rollout_shapes", "optimizer_steps", "tail_s") if k in r}
            if extra:
                print(f"# peer {name}: {extra}")
            step = statistics.median(r["step_s"])
            roll = statistics.median(r["rollout_s"])
            rows.append(
                {
                    "impl": r["peer"],
                    "step_s": step,
                    "rollout_s": roll,
                    "update_s": step - roll,
                    "other_s": float("nan"),
                    "completion_len": statistics.median(r["completion_len"]),
                }
            )
    for r in rows:
        r["ours_speedup"] = r["step_s"] / ours["step_s"]
    print_markdown_table(rows, ratio_keys=("ours_speedup",))
    return rows


if __name__ == "__main__":
    main()
