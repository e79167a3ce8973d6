"""Entropy Mechanism study (arXiv:2505.22617) at tiny scale: collapse, the law, Clip-Cov, KL-Cov.

Protocol (one change at a time between arms, same warm start, several seeds):

1. Per seed, train the model from scratch with SFT on reversed-digit addition until greedy
   held-out accuracy reaches the target (partial competence), so RL starts at the edge of
   competence.
2. From that same checkpoint run GRPO arms that differ **only** in entropy control:
   ``none`` (PPO-clip, no entropy term), ``entropy_bonus``, ``clip_cov``, ``kl_cov``.
3. Analyse: entropy collapse in ``none``; the law R = −a·exp(H) + b fitted on ``none`` (pairs of
   rollout entropy and held-out pass@1 at the eval steps) with R²; the covariance-predicted vs
   observed per-step entropy change; final accuracy, pass@1, pass@k and entropy per arm; plots.

Usage::

    python -m experiments.entropy_mechanism.run --preset tiny --out runs/entropy_mechanism
    python -m experiments.entropy_mechanism.run --preset smoke --out /tmp/em_smoke

    python -m experiments.entropy_mechanism.run --update-readme --out runs/entropy_mechanism

Writes ``<out>/<arm>/seed<k>/metrics.jsonl``, ``<out>/sft_seed<k>.json`` (+ ``.npz``: the SFT
parameters), ``<out>/summary.json``, ``<out>/RESULTS.md``, the plots ``<out>/*.png`` and
``<out>/manifest.json`` (config hash, git commit, versions, times).

Safe and resumable (``entropylab.runs``): ``--out`` must be new, empty or a directory of the
same study config and commit (``--resume`` accepts another commit, ``--overwrite`` deletes the
old run); rerunning the same command after a kill continues where it stopped: finished seeds
and arms (``done.json``) are kept, the SFT warm start is reloaded from ``sft_seed<k>.npz``, and
an unfinished arm resumes from its latest periodic checkpoint. Analysis refuses a directory
with unfinished arms. ``--update-readme`` is a separate step that only copies a finished
``tiny`` run's ``RESULTS.md``, plots and summary into this folder (smoke runs are refused).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import resource
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from entropylab import laws, runs
from entropylab.losses.objective import ObjectiveConfig
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import tasks as T
from entropylab.rl.sft import SFTConfig, sft_warmstart
from entropylab.rl.trainer import GRPOTrainer, RLConfig
from entropylab.train.metrics import read_jsonl

HERE = Path(__file__).parent


def arms(preset: str) -> dict[str, ObjectiveConfig]:
    """The four arms: paper/verl defaults, adapted to the tiny batch (see README)."""
    clip = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2}
    return {
        "none": ObjectiveConfig(policy_loss="ppo_clip", policy_kwargs=clip),
        "entropy_bonus": ObjectiveConfig(
            policy_loss="ppo_clip",
            policy_kwargs=clip,
            regularizers=(("entropy_bonus", {"coef": 0.01}),),
        ),
        # verl defaults clip_cov_ratio = 2e-4 with ~1e6 tokens per batch; at ~2e3 tokens per
        # minibatch that selects one token, so the tiny preset uses 2e-2 (≈ 40 tokens).
        "clip_cov": ObjectiveConfig(
            policy_loss="clip_cov",
            policy_kwargs={**clip, "clip_cov_ratio": 2e-2, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0},
        ),
        # KL-Cov replaces the clip by the |log r| penalty on the top-k covariance tokens.
        "kl_cov": ObjectiveConfig(
            policy_loss="kl_cov", policy_kwargs={"kl_cov_ratio": 2e-2, "ppo_kl_coef": 1.0}
        ),
    }


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    seeds: tuple[int, ...]
    model: str
    sft: SFTConfig
    rl: RLConfig


def preset(name: str) -> Preset:
    if name == "smoke":
        return Preset(
            seeds=(0,),
            model="smoke",
            sft=SFTConfig(
                difficulties=(1, 2),
                batch_size=16,
                max_steps=4,
                eval_every=2,
                eval_problems=8,
                target_accuracy=1.0,
            ),
            rl=RLConfig(
                difficulties=(1, 2),
                steps=3,
                prompts_per_step=4,
                group_size=4,
                minibatches=2,
                eval_every=2,
                eval_problems=4,  # eval batch = train batch: one sampler compile
                eval_k=4,
                prompt_width=10,
                max_new_tokens=5,
                measure_entropy_change=True,
                checkpoint_every=2,
            ),
        )
    if name == "tiny":
        return Preset(
            seeds=(0, 1),
            model="tiny",
            # SFT on 1- and 2-digit sums, stopped once greedy 2-digit accuracy reaches 0.3: the
            # 2-digit skill appears in a sharp transition (~20% → 60% within 20 steps at lr 3e-3),
            # so evaluate every 10 steps to stop inside it.
            sft=SFTConfig(
                difficulties=(1, 2),
                stop_difficulties=(2,),
                batch_size=128,
                max_steps=600,
                eval_every=10,
                eval_problems=96,
                target_accuracy=0.3,
                learning_rate=3e-3,
            ),
            # RL on 2-digit problems only: the level at the edge of competence after SFT.
            rl=RLConfig(
                difficulties=(2,),
                steps=120,
                prompts_per_step=32,
                group_size=8,
                minibatches=4,
                learning_rate=3e-4,
                eval_every=10,
                eval_problems=64,
                eval_k=8,
                prompt_width=10,
                max_new_tokens=5,
                measure_entropy_change=True,
                checkpoint_every=10,
            ),
        )
    raise ValueError(f"unknown preset {name!r}; expected 'smoke' or 'tiny'")


def build_model(kind: str, vocab: int, seed: int):
    cfg = getattr(TransformerConfig, kind)(vocab_size=vocab, max_seq_len=32)
    return Transformer(cfg, rngs=nnx.Rngs(seed))


def study_config(preset_name: str) -> dict:
    """What the run directory's manifest identifies the study by."""
    return {
        "script": "entropy_mechanism",
        "preset": preset_name,
        "setup": preset(preset_name),
        "arms": arms(preset_name),
    }


def _save_params(path: Path, model) -> None:
    params = nnx.split(model, nnx.Param, ...)[1]
    flat = {"/".join(str(k) for k in key): np.asarray(v) for key, v in nnx.to_flat_state(params)}
    runs.atomic_savez(path, **flat)


def _load_params(path: Path, model) -> None:
    params = nnx.split(model, nnx.Param, ...)[1]
    new = []
    with np.load(path) as data:
        for key, var in nnx.to_flat_state(params):
            name = "/".join(str(k) for k in key)
            if name not in data or data[name].shape != var.shape:
                raise ValueError(f"{path}: parameter {name} missing or mis-shaped")
            new.append((key, var.replace(jax.numpy.asarray(data[name]))))
    nnx.update(model, nnx.from_flat_state(new))


def run_seed(p: Preset, preset_name: str, seed: int, out: Path, *, progress: bool) -> None:
    """SFT warm start, then every arm from the same checkpoint, for one seed (resumable)."""
    if (out / f"timing_seed{seed}.json").exists():
        print(f"seed {seed}: already finished in {out}", flush=True)
        return
    tok = T.CharTokenizer()
    task = T.AdditionTask()
    t0, c0 = time.time(), _cpu_s()
    model = build_model(p.model, tok.vocab_size, seed)
    sft_json, sft_npz = out / f"sft_seed{seed}.json", out / f"sft_seed{seed}.npz"
    if sft_json.exists() and sft_npz.exists():
        _load_params(sft_npz, model)  # the warm start of an interrupted earlier invocation
    else:
        sft_cfg = dataclasses.replace(p.sft, seed=seed)
        log = (lambda r: print(f"sft seed {seed}: {r}", flush=True)) if progress else None
        hist = sft_warmstart(
            model,
            task,
            tok,
            sft_cfg,
            prompt_width=p.rl.prompt_width,
            max_new=p.rl.max_new_tokens,
            log=log,
        )
        _save_params(sft_npz, model)
        runs.atomic_write_json(sft_json, hist)  # written last: marks the warm start complete
    # a detached copy: nnx.split's State aliases the model's Variables, which training mutates
    sft_state = jax.tree.map(lambda x: x, nnx.split(model)[1])
    for arm, obj in arms(preset_name).items():
        arm_dir = out / arm / f"seed{seed}"
        if (arm_dir / "done.json").exists():
            continue
        nnx.update(model, sft_state)
        rl_cfg = dataclasses.replace(p.rl, seed=seed, objective=obj)
        trainer = GRPOTrainer(rl_cfg, model, tok, arm_dir)
        trainer.run(resume=True, progress=progress)  # continues from a periodic checkpoint
        runs.atomic_write_json(arm_dir / "done.json", {"steps": rl_cfg.steps, "at": time.time()})
    timing = {"wall_s": time.time() - t0, "cpu_s": _cpu_s() - c0, "load_avg_end": os.getloadavg()}
    runs.atomic_write_json(out / f"timing_seed{seed}.json", timing)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_seeds(p: Preset, seeds) -> list[int]:
    seeds = list(p.seeds if seeds is None else seeds)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds must not repeat a seed (two runs would share a folder): {seeds}")
    for seed in seeds:
        if seed not in p.seeds:
            raise ValueError(f"--seeds: {seed} is not one of the preset's seeds {p.seeds}")
    return seeds


def prepare(preset_name: str, out, *, mode: str = "auto", analyse_only: bool = False) -> Path:
    """Check ``out`` against this study's manifest (see module docstring); returns it."""
    out = runs.out_path(out)
    manifest = runs.make_manifest(study_config(preset_name), seed=None)
    if analyse_only:
        old = runs.read_manifest(out)
        hard = [d for d in runs.manifest_differences(old, manifest) if "commit" not in d]
        if hard:
            raise ValueError(f"--out {out} holds another study: {'; '.join(hard)}")
        return out
    runs.prepare_output_dir(out, manifest=manifest, mode=mode)
    return out


def run(
    preset_name: str,
    out,
    *,
    progress: bool = True,
    seeds=None,
    analyse_only=False,
    mode: str = "auto",
):
    """Run the given seeds (default: the preset's) and, once every seed is there, analyse."""
    p = preset(preset_name)
    seeds = check_seeds(p, seeds)
    with runs.run_lock(runs.out_path(out)):
        out = prepare(preset_name, out, mode=mode, analyse_only=analyse_only)
        if not analyse_only:
            for seed in seeds:
                run_seed(p, preset_name, seed, out, progress=progress)
        missing = [s for s in p.seeds if not (out / f"timing_seed{s}.json").exists()]
        if missing and analyse_only:
            raise ValueError(
                f"{out}: seeds {missing} not finished; rerun the study command (it resumes) "
                "before analysing"
            )
        if missing:
            print(f"seeds {missing} not run yet in {out}; analysis waits for them")
            return None
        summary = analyse(out, p, preset_name)
        runs.finish_manifest(out, status="complete")
        return summary


def _load(out: Path, arm: str, seed: int) -> list[dict]:
    return read_jsonl(out / arm / f"seed{seed}" / "metrics.jsonl")


def analyse(out: Path, p: Preset, preset_name: str) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arm_names = list(arms(preset_name))
    unfinished = [
        f"{arm}/seed{s}"
        for arm in arm_names
        for s in p.seeds
        if not (out / arm / f"seed{s}" / "done.json").exists()
    ]
    if unfinished:
        raise ValueError(
            f"{out}: arms not finished: {', '.join(unfinished)}; rerun the study command (it "
            "resumes) before analysing"
        )
    sft_info = {s: json.loads((out / f"sft_seed{s}.json").read_text())[-1] for s in p.seeds}
    timings = [json.loads((out / f"timing_seed{s}.json").read_text()) for s in p.seeds]
    k = p.rl.eval_k
    table, law_rows, cov_rows = {}, [], []
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for arm in arm_names:
        finals = []
        for seed in p.seeds:
            recs = _load(out, arm, seed)
            train = [r for r in recs if "rollout/entropy" in r]
            evals = [r for r in recs if "eval/pass@1" in r]
            steps = [r["step"] for r in train]
            ent = [r["rollout/entropy"] for r in train]
            ax[0].plot(
                steps,
                ent,
                label=f"{arm} s{seed}",
                color=f"C{arm_names.index(arm)}",
                ls="-" if seed == p.seeds[0] else "--",
            )
            ax[2].plot(
                [r["step"] for r in evals],
                [r[f"eval/pass@{k}"] for r in evals],
                color=f"C{arm_names.index(arm)}",
                ls="-" if seed == p.seeds[0] else "--",
            )
            last = evals[-1]
            finals.append(
                {
                    "train_acc_last10": float(np.mean([r["reward/acc"] for r in train[-10:]])),
                    "pass@1": last["eval/pass@1"],
                    f"pass@{k}": last[f"eval/pass@{k}"],
                    "entropy_final": float(np.mean(ent[-10:])),
                    "entropy_start": ent[0],
                }
            )
            if arm == "none" and len(evals) >= 4:
                # pair each eval with the rollout entropy of the same step (step 0: first rollout)
                by_step = {r["step"]: r["rollout/entropy"] for r in train}
                by_step[0] = train[0]["rollout/entropy"]
                h = [by_step[r["step"]] for r in evals if r["step"] in by_step]
                rr = [r["eval/pass@1"] for r in evals if r["step"] in by_step]
                try:
                    fit = laws.fit_entropy_law(h, rr)
                    law_rows.append(
                        {
                            "seed": seed,
                            "a": fit.a,
                            "b": fit.b,
                            "r2": fit.r2,
                            "ceiling": fit.ceiling,
                            "n": fit.n,
                        }
                    )
                    ax[1].scatter(h, rr, s=12, color="C0")
                    hh = np.linspace(min(h), max(h), 50)
                    ax[1].plot(
                        hh,
                        fit.predict(hh),
                        color="C3",
                        label=f"s{seed}: a={fit.a:.3f} b={fit.b:.3f} R²={fit.r2:.2f}",
                    )
                except ValueError as e:
                    law_rows.append({"seed": seed, "error": str(e)})
            if len(train) >= 4:
                # (1) same states: entropy on the step's own rollout tokens after vs before the
                #     update (what the theorem predicts; needs measure_entropy_change);
                # (2) next batch: rollout entropy of step k+1 minus step k (different prompts).
                pairs = []
                if "cov/observed_dH" in train[0]:
                    pairs.append(
                        (
                            "same batch",
                            [r["cov/predicted_dH"] for r in train],
                            [r["cov/observed_dH"] for r in train],
                        )
                    )
                pairs.append(
                    ("next batch", [r["cov/predicted_dH"] for r in train[:-1]], np.diff(ent))
                )
                for kind, pred, obs in pairs:
                    row = {"arm": arm, "seed": seed, "observed": kind}
                    try:
                        c = laws.compare_entropy_change(np.array(pred), np.array(obs))
                        cov_rows.append({**row, **dataclasses.asdict(c)})
                    except ValueError as e:
                        cov_rows.append({**row, "error": str(e)})
        table[arm] = {key: float(np.mean([f[key] for f in finals])) for key in finals[0]}
        table[arm]["per_seed"] = finals
    ax[0].set(xlabel="RL step", ylabel="rollout entropy (nats/token)", title="Entropy vs step")
    ax[0].legend(fontsize=6)
    ax[1].set(
        xlabel="rollout entropy H", ylabel="held-out pass@1", title="arm 'none': R = −a·exp(H) + b"
    )
    ax[1].legend(fontsize=7)
    ax[2].set(xlabel="RL step", ylabel=f"held-out pass@{k}", title=f"pass@{k} vs step")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    runs.atomic_write_bytes(out / "entropy_mechanism.png", buf.getvalue())
    summary = {
        "preset": preset_name,
        "seeds": list(p.seeds),
        "wall_s": _wall(out, timings),
        "seed_wall_s": [t["wall_s"] for t in timings],
        "cpu_s": sum(t["cpu_s"] for t in timings),
        "load_avg_1m_end": max(t["load_avg_end"][0] for t in timings),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "sft": {str(k): v for k, v in sft_info.items()},
        "arms": table,
        "law_none": law_rows,
        "cov_check": cov_rows,
    }
    runs.atomic_write_json(out / "summary.json", summary)
    runs.atomic_write_text(out / "RESULTS.md", results_markdown(summary, k))
    return summary


def _wall(out: Path, timings) -> float:
    """Elapsed time of the study: the parallel driver's if it ran, else the seeds' sum."""
    par = out / "timing_parallel.json"
    if par.exists():
        return json.loads(par.read_text())["wall_s"]
    return sum(t["wall_s"] for t in timings)


def results_markdown(s: dict, k: int) -> str:
    lines = [
        f"Preset `{s['preset']}`, seeds {s['seeds']}, {s['cpus']} CPUs ({s['machine']}), "
        f"jax {s['jax']} on {s['device']}; wall time per seed "
        f"{', '.join(f'{w / 60:.1f}' for w in s['seed_wall_s'])} min "
        "(each seed in its own process), "
        f"CPU time of the seed processes {s['cpu_s'] / 60:.1f} min (highest 1-min load average "
        f"at the end of a "
        f"seed: {s['load_avg_1m_end']:.1f}).",
        "",
        "SFT warm start (greedy held-out accuracy when stopped): "
        + ", ".join(
            f"seed {sd}: {v['acc_stop']:.2f} on the RL difficulty ({v['acc']:.2f} overall) at "
            f"step {v['step']}"
            for sd, v in s["sft"].items()
        ),
        "",
        f"| arm | entropy start → final | train acc (last 10 steps) | held-out pass@1 | pass@{k} |",
        "|---|---|---|---|---|",
    ]
    for arm, v in s["arms"].items():
        lines.append(
            f"| {arm} | {v['entropy_start']:.3f} → {v['entropy_final']:.3f} | "
            f"{v['train_acc_last10']:.3f} | {v['pass@1']:.3f} | {v[f'pass@{k}']:.3f} |"
        )
    lines += ["", "Law fit on arm `none` (held-out pass@1 vs rollout entropy at eval steps):", ""]
    lines += ["| seed | a | b | R² | ceiling b−a | n |", "|---|---|---|---|---|---|"]
    for r in s["law_none"]:
        if "error" in r:
            lines.append(f"| {r['seed']} | fit failed: {r['error']} | | | | |")
        else:
            lines.append(
                f"| {r['seed']} | {r['a']:.4f} | {r['b']:.4f} | {r['r2']:.3f} | "
                f"{r['ceiling']:.3f} | {r['n']} |"
            )
    lines += [
        "",
        "Covariance-predicted vs observed per-step entropy change (predicted = −η·Cov(log π, A)"
        " on the rollout batch; observed on the *same batch*: the policy's entropy on the step's"
        " rollout tokens after minus before the update; *next batch*: the next step's rollout"
        " entropy minus this step's):",
        "",
    ]
    lines += [
        "| arm | seed | observed | Pearson r | slope | sign agreement | n |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in s["cov_check"]:
        kind = r.get("observed", "next batch")
        if "error" in r:
            lines.append(f"| {r['arm']} | {r['seed']} | {kind} | {r['error']} | | | |")
        else:
            lines.append(
                f"| {r['arm']} | {r['seed']} | {kind} | {r['pearson_r']:.3f} | "
                f"{r['slope']:.3g} | {r['sign_agreement']:.2f} | {r['n']} |"
            )
    lines += ["", "![entropy mechanism](entropy_mechanism.png)", ""]
    return "\n".join(lines)


def update_readme(out, *, dest: Path = HERE) -> str:
    """Copy a finished run's RESULTS.md into ``dest/README.md`` (between the results markers),
    its plots and ``summary_<preset>.json`` into ``dest``; returns the preset. Refuses smoke
    runs, unfinished runs and a README without markers, before writing anything."""
    out = runs.out_path(out)
    summary = runs.read_json(out / "summary.json", what="study summary")
    name = summary.get("preset")
    if name == "smoke" or name not in ("tiny",):
        raise ValueError(
            f"--update-readme: {out} holds a {name!r} run; only a full 'tiny' run may replace the "
            "committed results"
        )
    manifest = runs.read_manifest(out)
    if manifest.get("status") != "complete":
        raise ValueError(
            f"--update-readme: {out} is not a finished run (status {manifest.get('status')!r})"
        )
    readme = dest / "README.md"
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        raise ValueError(f"{readme} lacks the results markers")
    body = (out / "RESULTS.md").read_text()
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    for png in sorted(out.glob("*.png")):
        runs.atomic_copy(png, dest / png.name)
    runs.atomic_copy(out / "summary.json", dest / f"summary_{name}.json")
    runs.atomic_write_text(readme, f"{head}{start}\n{body}\n{end}{tail}")
    return name


def run_parallel(preset_name: str, out: Path, seeds, jobs: int, *, progress: bool) -> None:
    """Run each seed in its own process (at most ``jobs`` at a time); raise if one fails."""
    import subprocess
    import sys

    base = [sys.executable, "-m", "experiments.entropy_mechanism.run", "--preset", preset_name]
    base += ["--out", str(out), "--jobs", "1", "--resume"] + ([] if progress else ["--no-progress"])
    t0 = time.time()
    pending, running = list(seeds), []
    while pending or running:
        while pending and len(running) < jobs:
            seed = pending.pop(0)
            running.append((seed, subprocess.Popen(base + ["--seeds", str(seed)])))
        time.sleep(1.0)
        for seed, proc in list(running):
            if proc.poll() is not None:
                running.remove((seed, proc))
                if proc.returncode:
                    raise RuntimeError(f"seed {seed} failed with exit code {proc.returncode}")
    runs.atomic_write_json(out / "timing_parallel.json", {"wall_s": time.time() - t0, "jobs": jobs})


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--preset", default="tiny", choices=["smoke", "tiny"], help="study size")
    ap.add_argument(
        "--out", default=None, help="run directory (default: runs/entropy_mechanism/<preset>)"
    )
    ap.add_argument(
        "--update-readme",
        action="store_true",
        help="only copy the finished tiny run in --out (RESULTS.md, plots, summary) into this "
        "folder's README.md; runs nothing; smoke runs are refused",
    )
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument(
        "--seeds", type=int, nargs="*", default=None, help="run only these seeds (all by default)"
    )
    ap.add_argument("--analyse-only", action="store_true", help="only analyse finished runs")
    ap.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="seeds run in parallel processes (default: min(#seeds, #cores))",
    )
    runs.add_mode_arguments(ap)
    args = ap.parse_args(argv)
    out = (
        args.out if args.out is not None else str(Path("runs") / "entropy_mechanism" / args.preset)
    )
    try:
        if args.update_readme:
            name = update_readme(out)
            print(f"README.md, plots and summary_{name}.json updated from {out}")
            return None
        p = preset(args.preset)
        seeds = check_seeds(p, args.seeds)
        if args.jobs is not None and args.jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
        jobs = args.jobs or min(len(seeds), os.cpu_count() or 1)
        mode = runs.mode_from_args(args)
        if not args.analyse_only and jobs > 1 and len(seeds) > 1:
            with runs.run_lock(runs.out_path(out)):
                prepare(args.preset, out, mode=mode)
                run_parallel(args.preset, Path(out), seeds, jobs, progress=not args.no_progress)
            args.analyse_only = True
        summary = run(
            args.preset,
            out,
            progress=not args.no_progress,
            seeds=args.seeds,
            analyse_only=args.analyse_only,
            mode=mode,
        )
    except (ValueError, RuntimeError, FileNotFoundError) as e:
        ap.error(str(e))
    if summary is None:
        return None
    print((Path(out) / "RESULTS.md").read_text())
    return summary


if __name__ == "__main__":
    main()
