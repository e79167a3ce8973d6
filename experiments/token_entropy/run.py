"""Token-level rollout data for ``notebooks/token_entropy.ipynb``: RL batches early and late in RL.

What it does (public pieces only: ``entropylab.rl.sft.sft_warmstart``, ``GRPOTrainer`` with
checkpoints, the sampler ``make_sampler`` and its ``Rollout``):

1. Train the model from scratch with SFT on reversed-digit addition until greedy held-out
   accuracy on 2-digit sums reaches the target (the Entropy Mechanism study's warm start).
2. Run GRPO with **no entropy control** (PPO-clip, the study's ``none`` arm) in segments that end
   at each capture step; each segment resumes from the previous one's checkpoint, so the run is
   the uninterrupted one (all randomness derives from ``(seed, step)``).
3. At each capture step ``s``, sample a batch of RL step ``s``'s training prompts
   (``problem_rng(seed, s)``, ``group_size`` samples each) from the policy after ``s`` updates
   (``s = 0``: the SFT checkpoint) with the public sampler and the documented per-sample keys
   ``sample_keys(seed, s, prompt, sample)``. Per token it keeps the sampled token, its text, the
   full-vocabulary entropy and log-prob the sampler recorded and the response mask; per
   response the reward and the group-normalised GRPO advantage (as the trainer computes it).
   ``checks`` in ``run.json`` puts each batch's token-mean entropy next to the trainer's logged
   ``rollout/entropy`` of that step: same prompts and policy, so close; equal only if the
   trainer draws its samples with the same keys (it did before the trainer's key scheme moved to
   ``entropylab.rl`` streams; it no longer does, so these are fresh samples, not the training
   batch itself).

Usage::

    python -m experiments.token_entropy.run --preset tiny    # ~10 min on 2 idle CPU cores
    python -m experiments.token_entropy.run --preset smoke --out /tmp/te_smoke   # seconds

Writes ``<out>/rollouts.npz`` (arrays below, leading axis = capture step), ``<out>/run.json``
(settings, SFT history, timings, checks) and ``<out>/metrics.jsonl.gz`` (the trainer's per-step
log). Refuses to replace existing results unless ``--force``; files are written to a temporary
name first and renamed, so a crash never leaves a half-written file.

``rollouts.npz``: ``steps [S]``, ``prompt [S, B]`` str, ``token_text [S, B, N]`` str
(``⏎`` = EOS, ``""`` after it), ``tokens [S, B, N]`` int32, ``mask [S, B, N]`` bool,
``entropy [S, B, N]``, ``logp [S, B, N]``, ``advantage [S, B, N]`` float32 (0 off the mask),
``reward [S, B]`` float32, ``group [S, B]`` int32 (the prompt index within the batch).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropylab.losses.advantages import grpo_advantages
from entropylab.losses.objective import ObjectiveConfig
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import tasks as T
from entropylab.rl.sampling import make_sampler, sample_keys
from entropylab.rl.sft import SFTConfig, encode_fixed, score, sft_warmstart
from entropylab.rl.trainer import GRPOTrainer, RLConfig
from entropylab.train.metrics import read_jsonl

HERE = Path(__file__).parent


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    model: str
    sft: SFTConfig
    rl: RLConfig
    capture_steps: tuple[int, ...]

    def __post_init__(self):
        steps = self.capture_steps
        if not steps or list(steps) != sorted(set(steps)) or steps[0] < 0:
            raise ValueError(f"capture_steps must be distinct, sorted, >= 0; got {steps}")
        if steps[-1] > self.rl.steps:
            raise ValueError(f"capture step {steps[-1]} is past rl.steps={self.rl.steps}")


def preset(name: str, seed: int = 0) -> Preset:
    none_arm = ObjectiveConfig(
        policy_loss="ppo_clip", policy_kwargs={"clip_ratio_low": 0.2, "clip_ratio_high": 0.2}
    )
    if name == "smoke":
        return Preset(
            model="smoke",
            sft=SFTConfig(
                difficulties=(1, 2),
                batch_size=16,
                max_steps=4,
                eval_every=2,
                eval_problems=8,
                target_accuracy=1.0,
                seed=seed,
            ),
            rl=RLConfig(
                difficulties=(2,),
                seed=seed,
                steps=2,
                prompts_per_step=4,
                group_size=4,
                minibatches=2,
                eval_every=0,
                prompt_width=10,
                max_new_tokens=5,
                objective=none_arm,
            ),
            capture_steps=(0, 2),
        )
    if name == "tiny":
        # the Entropy Mechanism study's tiny preset, arm `none` (see its README for the reasons):
        # same SFT and RL settings and seeds, so the same trajectory as that arm's seed, but 40
        # RL steps instead of 120 (what a shared 2-core machine allowed)
        return Preset(
            model="tiny",
            sft=SFTConfig(
                difficulties=(1, 2),
                stop_difficulties=(2,),
                batch_size=128,
                max_steps=600,
                eval_every=10,
                eval_problems=96,
                target_accuracy=0.3,
                learning_rate=3e-3,
                seed=seed,
            ),
            rl=RLConfig(
                difficulties=(2,),
                seed=seed,
                steps=40,
                prompts_per_step=32,
                group_size=8,
                minibatches=4,
                learning_rate=3e-4,
                # no held-out evals (they do not touch the training randomness, so the run is
                # still the study's arm `none`, seed for seed; they only cost time here)
                eval_every=0,
                prompt_width=10,
                max_new_tokens=5,
                objective=none_arm,
            ),
            capture_steps=(0, 10, 20, 40),
        )
    raise ValueError(f"unknown preset {name!r}; expected 'smoke' or 'tiny'")


def token_strings(tok: T.CharTokenizer, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[B, N]`` ids → ``[B, N]`` one string per token (``⏎`` = EOS, ``<pad>``/``<bos>`` if
    sampled, ``""`` off the mask)."""
    special = {T.EOS: "⏎", T.PAD: "<pad>", T.BOS: "<bos>"}
    out = np.full(ids.shape, "", dtype="<U5")
    for idx in zip(*np.nonzero(mask)):
        i = int(ids[idx])
        out[idx] = special[i] if i in special else tok.decode([i])[0]
    return out


def capture(model, tok, task, rl: RLConfig, step: int) -> dict:
    """Sample RL step ``step``'s training prompts (``group_size`` each) from ``model``'s policy."""
    problems = task.sample(T.problem_rng(rl.seed, step), rl.prompts_per_step, rl.difficulties)
    g = rl.group_size
    prompts = [p.prompt for p in problems for _ in range(g)]
    pt, pm = encode_fixed(tok, prompts, rl.prompt_width)
    pidx = np.repeat(np.arange(len(problems)), g)
    sidx = np.tile(np.arange(g), len(problems))
    keys = sample_keys(rl.seed, step, jnp.asarray(pidx), jnp.asarray(sidx))
    graphdef, state = nnx.split(model)
    r = jax.device_get(make_sampler(graphdef, rl.sampling)(state, pt, pm, keys))
    rep = [p for p in problems for _ in range(g)]
    rewards = score(task, tok, rep, r.response, r.finished)
    mask = np.asarray(r.response_mask, bool)
    adv = grpo_advantages(jnp.asarray(rewards), group_size=g, norm_by_std=rl.norm_adv_by_std)
    adv = np.asarray(adv, np.float32)[:, None] * mask
    return {
        "prompt": np.array(prompts),
        "token_text": token_strings(tok, np.asarray(r.response), mask),
        "tokens": np.asarray(r.response, np.int32),
        "mask": mask,
        "entropy": np.asarray(r.entropy, np.float32),
        "logp": np.asarray(r.logp, np.float32),
        "advantage": adv.astype(np.float32),
        "reward": np.asarray(rewards, np.float32),
        "group": pidx.astype(np.int32),
    }


RESULT_FILES = ("rollouts.npz", "run.json", "metrics.jsonl.gz")


def _refuse_existing(out: Path, force: bool) -> None:
    existing = [n for n in RESULT_FILES if (out / n).exists()]
    if existing and not force:
        raise FileExistsError(f"{out} already holds {existing}; pass --force to replace them")


def write_results(out, steps, batches, *, info: dict, metrics: list, force: bool = False) -> None:
    """Write ``rollouts.npz`` (the batches of :func:`capture` stacked over ``steps``), ``run.json``
    (``info``) and ``metrics.jsonl.gz`` (the trainer's records) into ``out``, each atomically."""
    out = Path(out)
    _refuse_existing(out, force)
    if len(batches) != len(steps):
        raise ValueError(f"got {len(batches)} batches for {len(steps)} steps")
    out.mkdir(parents=True, exist_ok=True)
    arrays = {"steps": np.array(steps, np.int32)}
    for key in batches[0] if batches else ():
        arrays[key] = np.stack([b[key] for b in batches])
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    jsonl = "".join(json.dumps(r) + "\n" for r in metrics).encode()
    _atomic_write(out / "rollouts.npz", buf.getvalue())
    _atomic_write(out / "metrics.jsonl.gz", gzip.compress(jsonl, mtime=0))
    _atomic_write(out / "run.json", (json.dumps(info, indent=1) + "\n").encode())


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_params(path, model) -> None:
    """Set ``model``'s parameters from an ``.npz`` of ``"/"``-joined flat parameter paths.

    The format the Entropy Mechanism study saves its SFT warm start in (``sft_seed<k>.npz``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init params {path} do not exist")
    params = nnx.split(model, nnx.Param, ...)[1]
    new = []
    with np.load(path) as data:
        for key, var in nnx.to_flat_state(params):
            name = "/".join(str(k) for k in key)
            if name not in data or data[name].shape != var.shape:
                raise ValueError(f"{path}: parameter {name} missing or of the wrong shape")
            new.append((key, var.replace(jnp.asarray(data[name]))))
    nnx.update(model, nnx.from_flat_state(new))


def run(
    preset_name: str,
    out: Path,
    *,
    seed: int = 0,
    work: Path | None = None,
    init: Path | None = None,
    force: bool = False,
    progress: bool = False,
) -> dict:
    """Run the preset and write ``rollouts.npz``, ``run.json``, ``metrics.jsonl.gz`` to ``out``."""
    p = preset(preset_name, seed)
    out = Path(out)
    _refuse_existing(out, force)  # before the work, not only when writing
    scratch = Path(tempfile.mkdtemp(prefix="token_entropy_")) if work is None else Path(work)
    rl_dir = scratch / "rl"
    if rl_dir.exists():
        shutil.rmtree(rl_dir)  # a fresh RL run: resume only within this call's segments
    t0 = time.time()
    tok, task = T.CharTokenizer(), T.AdditionTask()
    cfg = getattr(TransformerConfig, p.model)(vocab_size=tok.vocab_size, max_seq_len=32)
    model = Transformer(cfg, rngs=nnx.Rngs(seed))
    if init is not None:
        load_params(init, model)
        sft_hist = [{"loaded_from": str(init)}]
    else:
        sft_hist = sft_warmstart(
            model, task, tok, p.sft, prompt_width=p.rl.prompt_width, max_new=p.rl.max_new_tokens
        )
    t_sft = time.time() - t0
    positive = [s for s in p.capture_steps if s > 0]
    every = math.gcd(*positive) if positive else 0
    batches, done = [], 0
    for s in p.capture_steps:
        if s > done:
            seg = dataclasses.replace(p.rl, steps=s, checkpoint_every=every, keep_checkpoints=1)
            GRPOTrainer(seg, model, tok, rl_dir).run(resume=True, progress=progress)
            done = s
        batches.append(capture(model, tok, task, p.rl, s))
    metrics = read_jsonl(rl_dir / "metrics.jsonl") if (rl_dir / "metrics.jsonl").exists() else []
    logged = {r["step"] - 1: r["rollout/entropy"] for r in metrics if "rollout/entropy" in r}
    checks = []
    for s, b in zip(p.capture_steps, batches):
        mean = float(b["entropy"][b["mask"]].mean()) if b["mask"].any() else float("nan")
        checks.append(
            {
                "step": s,
                "captured_entropy": mean,
                "logged_rollout_entropy": logged.get(s),
                "accuracy": float(np.mean(b["reward"] == 1.0)),
                "tokens": int(b["mask"].sum()),
            }
        )
    info = {
        "preset": preset_name,
        "seed": seed,
        "model": p.model,
        "capture_steps": list(p.capture_steps),
        "rl": {
            k: v
            for k, v in dataclasses.asdict(p.rl).items()
            if isinstance(v, int | float | str | tuple | bool | type(None))
        },
        "objective": "ppo_clip (eps 0.2), no entropy control (the study's arm `none`)",
        "sft_stop": sft_hist[-1] if sft_hist else None,
        "init": None if init is None else str(init),
        "wall_s": time.time() - t0,
        "sft_wall_s": t_sft,
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "checks": checks,
    }
    write_results(out, p.capture_steps, batches, info=info, metrics=metrics, force=force)
    if work is None:
        shutil.rmtree(scratch, ignore_errors=True)
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny", choices=["smoke", "tiny"])
    ap.add_argument("--out", type=Path, default=None, help="default: this folder/results/<preset>")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="scratch dir (checkpoints, log)")
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start RL from these SFT parameters (.npz, e.g. the study's sft_seed<k>.npz) "
        "instead of running the SFT warm start",
    )
    ap.add_argument("--force", action="store_true", help="replace existing results")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    out = args.out or HERE / "results" / args.preset
    info = run(
        args.preset,
        out,
        seed=args.seed,
        work=args.work,
        init=args.init,
        force=args.force,
        progress=args.progress,
    )
    print(json.dumps(info["checks"], indent=1))
    print(f"wrote {out} in {info['wall_s']:.0f} s")
    return info


if __name__ == "__main__":
    main()
