"""Pre-train a byte-level transformer on the Python stdlib code corpus (the CodeParrot analogue).

The base model for later studies: ``tiny`` preset (``TransformerConfig.tiny``, vocabulary 256)
trained from scratch with AdamW + warm-up/cosine on next-byte prediction; held-out perplexity is
measured on the corpus's held-out files (``entropylab.train.data.stdlib_corpus``).

Usage::

    python -m experiments.lm_pretrain.run --preset tiny --out experiments/lm_pretrain/results/tiny
    python -m experiments.lm_pretrain.run --preset smoke --out /tmp/lm_smoke

Writes ``<out>/metrics.jsonl`` (one record per step), ``<out>/loss_curve.png``,
``<out>/summary.json``, ``<out>/params.npz`` (final parameters; reload with
:func:`load_pretrained`), ``<out>/manifest.json`` (config hash, seed, git commit, versions,
start/end time) and ``<out>/checkpoints/`` (orbax, full training state).

Safe outputs (``entropylab.runs``): a rerun with the same ``--out``, preset, seed and commit
resumes from the latest checkpoint the metrics history covers; a different preset/seed/commit is
refused with a message saying what differs (``--resume`` accepts another commit, ``--overwrite``
starts again); a non-empty folder that is not a run directory is never written into. Every
result file is written atomically. SIGTERM/SIGINT (preemption) checkpoint at the next step and
exit with status 128 + signal; rerunning the same command continues bit-identically.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from entropylab import distributed, runs
from entropylab.models import Transformer, TransformerConfig
from entropylab.train import (
    LMBatches,
    OptimConfig,
    TrainConfig,
    evaluate,
    read_jsonl,
    stdlib_corpus,
    train,
)
from entropylab.train.loop import WALL_CLOCK_METRICS


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    model: str
    batch_size: int
    seq_len: int
    steps: int
    learning_rate: float
    warmup_steps: int
    eval_every: int
    eval_batches: int
    final_eval_batches: int
    save_every: int
    max_bytes: int | None = None


PRESETS = {
    # seconds: run end to end by tests/train/lm_pretrain_test.py
    "smoke": Preset(
        model="smoke",
        batch_size=4,
        seq_len=32,
        steps=12,
        learning_rate=3e-3,
        warmup_steps=2,
        eval_every=6,
        eval_batches=2,
        final_eval_batches=4,
        save_every=6,
        max_bytes=100_000,
    ),
    # ~10 minutes on 2 idle CPU cores (~0.8 s/step measured at ~1.6 CPU-s/step): 750 steps x
    # 32 x 128 bytes = 3.1M training bytes (~a quarter of an epoch of the 11.5 MB training split)
    "tiny": Preset(
        model="tiny",
        batch_size=32,
        seq_len=128,
        steps=750,
        learning_rate=3e-3,
        warmup_steps=50,
        eval_every=50,
        eval_batches=8,
        final_eval_batches=128,
        save_every=50,
    ),
}


def model_config(preset: Preset) -> TransformerConfig:
    return getattr(TransformerConfig, preset.model)(vocab_size=256)


def save_params(path: Path, params) -> None:
    """Flat ``{"a/b/c": array}`` npz of an ``nnx.State``; written to a temp file, then renamed."""
    flat = {"/".join(str(k) for k in key): np.asarray(v) for key, v in nnx.to_flat_state(params)}
    runs.atomic_savez(path, **flat)


def load_pretrained(out_dir, preset: str = "tiny") -> Transformer:
    """The model saved by this script in ``out_dir`` (``params.npz`` + the preset's config)."""
    path = Path(out_dir) / "params.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run experiments.lm_pretrain.run first")
    model = Transformer(model_config(PRESETS[preset]), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    with np.load(path) as data:
        flat = nnx.to_flat_state(params)
        new = []
        for key, var in flat:
            name = "/".join(str(k) for k in key)
            if name not in data or data[name].shape != var.shape:
                raise ValueError(f"{path}: parameter {name} missing or mis-shaped")
            new.append((key, var.replace(jax.numpy.asarray(data[name]))))
    return nnx.merge(graphdef, nnx.from_flat_state(new), rest)


def plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps, [r["loss"] for r in records], lw=0.8, label="train loss (per step)")
    ev = [r for r in records if "eval_loss" in r]
    ax.plot([r["step"] for r in ev], [r["eval_loss"] for r in ev], "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / byte)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=120, format="png")
    plt.close(fig)
    runs.atomic_write_bytes(path, buf.getvalue())


def run_config(preset_name: str) -> dict:
    """What a run directory's manifest identifies the run by (besides the seed)."""
    preset = PRESETS[preset_name]
    return {"script": "lm_pretrain", "preset": preset_name, **dataclasses.asdict(preset)}


def run(preset_name: str, out, seed: int, *, progress: bool = True, mode: str = "auto") -> dict:
    """Train (or resume) and write the results; returns the summary, ``{"interrupted": signal}``
    if stopped by SIGTERM/SIGINT (the manifest then says ``interrupted``; rerun to continue), or
    ``{}`` on processes other than 0 of a multi-host run."""
    if preset_name not in PRESETS:
        raise ValueError(f"--preset must be one of {sorted(PRESETS)}, got {preset_name!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be an int >= 0, got {seed!r}")
    preset = PRESETS[preset_name]
    out = runs.out_path(out)
    if not distributed.is_main_process():  # multi-host: process 0 owns the run directory
        return _run(preset_name, preset, out, seed, progress=progress)
    manifest = runs.make_manifest(run_config(preset_name), seed=seed)
    with runs.run_lock(out):
        runs.prepare_output_dir(out, manifest=manifest, mode=mode)
        return _run(preset_name, preset, out, seed, progress=progress)


def _run(preset_name: str, preset: Preset, out: Path, seed: int, *, progress: bool) -> dict:
    t0 = time.perf_counter()
    train_tokens, held_tokens, info = stdlib_corpus(max_bytes=preset.max_bytes)
    mcfg = model_config(preset)
    model = Transformer(mcfg, rngs=nnx.Rngs(seed))
    cfg = TrainConfig(
        steps=preset.steps,
        optim=OptimConfig(
            learning_rate=preset.learning_rate,
            warmup_steps=preset.warmup_steps,
            total_steps=preset.steps,
        ),
        eval_every=preset.eval_every,
        eval_batches=preset.eval_batches,
        save_every=preset.save_every,
        keep=2,
        seed=seed,
        attn_entropy=True,
        progress=progress,
    )
    batches = LMBatches(
        train_tokens, batch_size=preset.batch_size, seq_len=preset.seq_len, seed=seed
    )
    held = LMBatches(
        held_tokens, batch_size=preset.batch_size, seq_len=preset.seq_len, shuffle=False
    )
    result = train(model, batches, cfg, eval_batches=held, workdir=out)
    main_process = distributed.is_main_process()
    if result.interrupted:
        if main_process:
            runs.finish_manifest(out, status="interrupted", interrupted_by=result.interrupted)
        return {"interrupted": result.interrupted}

    # final held-out perplexity on a larger, fixed slice of the held-out split
    n_final = min(preset.final_eval_batches, held.batches_per_epoch)
    final = evaluate(
        result.eval_fn,
        result.state["params"],
        [held.batch_at(i) for i in range(n_final)],
        result.mesh,
    )
    if not main_process:
        return {}
    save_params(out / "params.npz", result.state["params"])
    records = read_jsonl(out / "metrics.jsonl")
    plot(records, out / "loss_curve.png", f"{preset_name}: {mcfg.num_params / 1e6:.2f}M params")
    tps = [r["tokens_per_s"] for r in records[1:] if r.get("tokens_per_s")]
    summary = {
        "preset": preset_name,
        "seed": seed,
        "model": {k: v for k, v in dataclasses.asdict(mcfg).items() if k != "rope"},
        "num_params": mcfg.num_params,
        "steps": preset.steps,
        "batch_size": preset.batch_size,
        "seq_len": preset.seq_len,
        "train_tokens_seen": preset.steps * preset.batch_size * preset.seq_len,
        "corpus": dataclasses.asdict(info),
        "final_train_loss": records[-1]["loss"],
        "final_train_loss_mean_last_50": float(np.mean([r["loss"] for r in records[-50:]])),
        "heldout_loss": final["eval_loss"],
        "heldout_ppl": final["eval_ppl"],
        "heldout_bits_per_byte": final["eval_loss"] / math.log(2),
        "heldout_tokens": n_final * preset.batch_size * preset.seq_len,
        "final_attn_entropy": records[-1].get("attn_entropy"),
        "median_tokens_per_s": float(np.median(tps)) if tps else None,
        "wall_time_s_this_invocation": time.perf_counter() - t0,
        "resumed_from_step": result.resumed_from,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {jax.devices()[0].platform}",
        "load_average_at_end": list(os.getloadavg()),
        "versions": {"jax": jax.__version__, "python": platform.python_version()},
        "command": " ".join(
            [Path(sys.executable).name, "-m", "experiments.lm_pretrain.run"]
            + ["--preset", preset_name, "--out", str(out), "--seed", str(seed)]
        ),
        "nondeterministic_fields": list(WALL_CLOCK_METRICS),
    }
    runs.atomic_write_json(out / "summary.json", summary, indent=2)
    runs.finish_manifest(out, status="complete")
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="run size")
    ap.add_argument("--out", default="runs/lm_pretrain", help="run directory (see module doc)")
    ap.add_argument("--seed", type=int, default=0, help="model init and data order seed")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    runs.add_mode_arguments(ap)
    distributed.add_arguments(ap)
    args = ap.parse_args(argv)
    try:
        distributed.initialize(distributed.config_from_args(args))
        out = runs.out_path(args.out)
        if args.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {args.seed}")
        s = run(
            args.preset,
            out,
            args.seed,
            progress=not args.no_progress,
            mode=runs.mode_from_args(args),
        )
    except (ValueError, RuntimeError) as e:
        ap.error(str(e))
    if s.get("interrupted"):
        print(
            f"interrupted; checkpoint saved in {out}/checkpoints. Rerun the same command to "
            "continue.",
            file=sys.stderr,
        )
        raise SystemExit(runs.PREEMPTED_EXIT_CODE + s["interrupted"])
    if not s:  # not process 0
        return s
    print(
        f"preset {s['preset']}: {s['num_params']:,} params, {s['steps']} steps "
        f"x {s['batch_size']} x {s['seq_len']} bytes"
    )
    print(
        f"corpus: {s['corpus']['n_train_files']} train files / {s['corpus']['n_train_tokens']:,} "
        f"bytes, {s['corpus']['n_heldout_files']} held-out files / "
        f"{s['corpus']['n_heldout_tokens']:,} bytes"
    )
    print(
        f"final train loss {s['final_train_loss']:.4f} "
        f"(mean of last 50 steps {s['final_train_loss_mean_last_50']:.4f})"
    )
    print(
        f"held-out loss {s['heldout_loss']:.4f} nats/byte = {s['heldout_bits_per_byte']:.4f} "
        f"bits/byte, perplexity {s['heldout_ppl']:.4f} ({s['heldout_tokens']:,} bytes)"
    )
    print(
        f"median {s['median_tokens_per_s']:.0f} tokens/s, "
        f"wall {s['wall_time_s_this_invocation']:.1f} s, load average {s['load_average_at_end']}"
    )
    return s


if __name__ == "__main__":
    main()
