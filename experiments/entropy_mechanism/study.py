"""Entropy Mechanism (arXiv:2505.22617) as a pre-registered study on ``entropylab.study``.

The design, the claims and the verdict rules are in ``README.md`` (pre-registered before any
result); this file is their executable form. Commands (``--preset`` first, default ``quick``)::

    python -m experiments.entropy_mechanism.study --preset full pilot run --shard 1/2   # pilot
    python -m experiments.entropy_mechanism.study --preset full pilot-select   # → pilot.json
    python -m experiments.entropy_mechanism.study --preset full plan
    python -m experiments.entropy_mechanism.study --preset full run --shard i/n
    python -m experiments.entropy_mechanism.study --preset full analyse --compress \\
        --readme experiments/entropy_mechanism/README.md

One job = one (arm, initialisation): an SFT warm start from the cache (trained on the *train*
split of 2-digit addition, stop rule on the *selection* split), then ``steps`` GRPO steps with
the arm's objective (common random numbers across arms), evaluation on a fixed set of distinct
*eval*-split problems (hash split: disjoint from everything SFT and RL saw) at T = 1 (n
samples per problem, per-problem counts logged) and greedily, the entropy on a fixed probe set
of states (selection-split prompts with their reference answers, teacher-forced). Arm ``none``
also evaluates the warm start at several temperatures (the temperature-sharpening frontier) and
runs the claim-3 probes (``probes.py``) at the warm start and at the end.

Resume: finished jobs are skipped by the runner. A job checkpoints its trainer state (params,
optimizer and component state, step; orbax, newest only) at every evaluation step; a job
interrupted mid-way (a kill, a preemption, a crash) continues from its newest checkpoint when its
shard is rerun, with its logs cut back to that step, and reproduces the uninterrupted job
exactly (tested). The checkpoint is deleted when the job finishes. ``lr0`` never updates: its
per-step records are rollouts of the warm start on the same problems and keys as the other arms
(``RLConfig`` refuses a zero learning rate). ``random_reward`` draws each step's rewards from a
generator seeded by (data seed, step), so a resumed job draws the same ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropylab.losses.objective import ObjectiveConfig
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import sampling as S
from entropylab.rl import tasks as T
from entropylab.rl.sft import SFTConfig, sft_warmstart
from entropylab.rl.trainer import GRPOTrainer, RLConfig
from entropylab.study import (
    Arm,
    Claim,
    RoutedTask,
    SplitSpec,
    StudySpec,
    eval_pass_at_k,
    from_trainer_record,
    law_advantage,
    main,
    make_splits,
)
from entropylab.study.warmstart import WarmStartCache, WarmStartKey
from entropylab.train.checkpoint import Checkpointer, abstract_like
from experiments.entropy_mechanism import probes as PR

HERE = Path(__file__).parent
SPLIT = SplitSpec(train=0.7, selection=0.1, eval=0.2)
EVAL_SEED, PROBE_SEED = 20260529, 20260530
CLIP = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Preset:
    model: str
    sft: SFTConfig
    rl: RLConfig
    inits: tuple[int, ...]
    steps: int
    eval_every: int
    eval_problems: int
    eval_n: int  # T = 1 samples per eval problem
    probe_states: int  # fixed probe set size (teacher-forced reference answers)
    temperatures: tuple[float, ...]  # warm-start temperature frontier
    lemma_states: int  # states of the per-state lemma check
    cf_lr: float  # SGD step size of the counterfactual probes
    cf_adam_lr: float  # Adam step size of the counterfactual probes (the RL learning rate)
    settings: dict  # entropy-control settings (from the pilot for 'full')
    arms: tuple[str, ...] = (
        "none",
        "noclip",
        "entropy_bonus",
        "clip_cov",
        "kl_cov",
        "random_reward",
        "lr0",
    )


def _rl(**kw) -> RLConfig:
    base = dict(
        difficulties=(2,),
        prompt_width=10,
        max_new_tokens=5,
        eval_every=0,
        checkpoint_every=0,
        measure_entropy_change=True,
    )
    return RLConfig(**{**base, **kw})


_SFT_TINY = SFTConfig(
    difficulties=(1, 2),
    stop_difficulties=(2,),
    batch_size=128,
    max_steps=600,
    eval_every=10,
    eval_problems=96,
    target_accuracy=0.3,
    learning_rate=3e-3,
)
#: the pilot's grid per method (smallest first); 'full' reads its choice from pilot.json
PILOT_GRID = {
    "entropy_bonus": (0.005, 0.01, 0.02, 0.05),
    "clip_cov": (2e-3, 2e-2, 5e-2, 1e-1),
    "kl_cov": (2e-3, 2e-2, 5e-2, 1e-1),
}
_DEFAULT_SETTINGS = {"entropy_bonus": 0.01, "clip_cov": 2e-2, "kl_cov": 2e-2}

PRESETS = {
    "smoke": Preset(
        model="smoke",
        sft=SFTConfig(
            difficulties=(1, 2),
            batch_size=16,
            max_steps=4,
            eval_every=2,
            eval_problems=8,
            target_accuracy=1.0,
        ),
        rl=_rl(prompts_per_step=4, group_size=4, minibatches=2),
        inits=(0, 1),
        steps=4,
        eval_every=2,
        eval_problems=8,
        eval_n=4,
        probe_states=8,
        temperatures=(1.0, 0.5),
        lemma_states=1,
        cf_lr=1e-2,
        cf_adam_lr=3e-4,
        settings=_DEFAULT_SETTINGS,
        arms=("none", "kl_cov", "lr0"),
    ),  # fmt: skip
    "quick": Preset(
        model="tiny",
        sft=_SFT_TINY,
        rl=_rl(prompts_per_step=16, group_size=8, minibatches=4, learning_rate=3e-4),
        inits=(0, 1, 2, 3, 4),  # 5: the fewest for which a one-sided sign-flip test can reject
        steps=30,
        eval_every=10,
        eval_problems=128,
        eval_n=4,
        probe_states=64,
        temperatures=(1.0, 0.7, 0.5),
        lemma_states=2,
        cf_lr=1e-2,
        cf_adam_lr=3e-4,
        settings=_DEFAULT_SETTINGS,
        arms=("none", "lr0"),
    ),
    "full": Preset(
        model="tiny",
        sft=_SFT_TINY,
        rl=_rl(prompts_per_step=32, group_size=8, minibatches=4, learning_rate=3e-4),
        inits=(0, 1, 2, 3, 4, 5, 6, 7),
        steps=300,
        eval_every=20,
        eval_problems=512,
        eval_n=8,
        probe_states=128,
        temperatures=(1.0, 0.8, 0.6, 0.4, 0.25),
        lemma_states=4,
        cf_lr=1e-2,
        cf_adam_lr=3e-4,
        settings=_DEFAULT_SETTINGS,  # replaced by pilot.json's choice (see build_spec)
    ),
}
PRESETS["pilot"] = dataclasses.replace(
    PRESETS["full"], inits=(100, 101), eval_problems=64, eval_n=2, eval_every=100,
    rl=dataclasses.replace(PRESETS["full"].rl, measure_entropy_change=False),
    arms=("none",) + tuple(f"{m}-{i}" for m in PILOT_GRID for i in range(len(PILOT_GRID[m]))),
)  # fmt: skip


def objective_for(method: str, value: float) -> ObjectiveConfig:
    if method == "entropy_bonus":
        return ObjectiveConfig(
            policy_loss="ppo_clip",
            policy_kwargs=CLIP,
            regularizers=(("entropy_bonus", {"coef": value}),),
        )
    if method == "clip_cov":
        kw = {**CLIP, "clip_cov_ratio": value, "clip_cov_lb": 1.0, "clip_cov_ub": 5.0}
        return ObjectiveConfig(policy_loss="clip_cov", policy_kwargs=kw)
    if method == "kl_cov":  # the clip is removed; |log r| penalty on the top-k cov tokens
        return ObjectiveConfig(
            policy_loss="kl_cov", policy_kwargs={"kl_cov_ratio": value, "ppo_kl_coef": 1.0}
        )
    raise ValueError(f"unknown method {method!r}")


def make_arm(name: str, settings: dict) -> Arm:
    if name in ("none", "random_reward", "lr0"):
        extras = {"random_reward": name == "random_reward", "lr0": name == "lr0"}
        obj = ObjectiveConfig(policy_loss="ppo_clip", policy_kwargs=CLIP)
        return Arm(name=name, objective=obj, extras=extras, role="arm" if name == "none" else
                   "control")  # fmt: skip
    if name == "noclip":  # KL-Cov with no token selected = its unclipped surrogate, no penalty
        return Arm(name=name, objective=objective_for("kl_cov", 0.0), role="control")
    if "-" in name:  # pilot arms: method-index into PILOT_GRID
        m, i = name.split("-")
        return Arm(name=name, objective=objective_for(m, PILOT_GRID[m][int(i)]))
    return Arm(name=name, objective=objective_for(name, settings[name]))


# -- claim metrics ------------------------------------------------------------------------------


def _eval_points(job, key="eval/pass@1", h_key="rollout/entropy"):
    rows = [(r["step"], r[h_key], r[key]) for r in job.records if key in r and h_key in r]
    return [np.array(x, np.float64) for x in zip(*rows)] if rows else [np.array([])] * 3


def prefix_fit_error(job) -> float:
    """−|error| of the law fitted on the first half of the eval points predicting the last."""
    from entropylab import laws

    s, h, r = _eval_points(job)
    if s.size < 6:
        return math.nan
    half = s.size // 2
    try:
        fit = laws.fit_entropy_law(h[:half], r[:half])
    except ValueError:
        return math.nan
    return -abs(float(fit.predict(np.array([h[-1]]))[0]) - float(r[-1]))


def frontier_gap(job) -> float:
    """Final T = 1 pass@1 minus the warm start's temperature frontier at the final entropy."""
    rec0 = next((r for r in job.records if r["step"] == 0), None)
    if rec0 is None or "frontier/entropy" not in rec0:
        return math.nan
    fh = np.array(rec0["frontier/entropy"], np.float64)
    fp = np.array(rec0["frontier/pass1"], np.float64)
    last = [r for r in job.records if "eval/entropy" in r][-1]
    order = np.argsort(fh)
    return float(last["eval/pass@1"] - np.interp(last["eval/entropy"], fh[order], fp[order]))


def pass_at_k_metric(k):
    def f(job):
        return eval_pass_at_k(job.evals, k)

    f.__name__ = f"eval_pass_at_{k}"
    return f


def claims_for(arms: tuple[str, ...], eval_n: int) -> tuple[Claim, ...]:
    L15, L2 = math.log(1.5), math.log(2.0)
    c: list[Claim] = []
    if "none" in arms:
        c += [
            Claim(name="c1_collapse_trend", statement="entropy falls during RL (arm none)",
                  metric="rollout/entropy", test="trend", arm="none", direction="less",
                  effect_of_interest=5e-4),
            Claim(name="c3_lemma", kind="manipulation",
                  statement="ΔH = −Cov(log π, Δz) to first order at one state, full vocabulary "
                            "(exact: a failure is a bug): every check of every init passes",
                  metric="lemma/pass_frac", reduce="min", test="superiority", arm="none",
                  null_value=0.999, effect_of_interest=5e-4),
            Claim(name="c3_token_r_sgd", statement="per-token estimator correlates with per-state "
                  "ΔH under SGD", metric="probe3/r_sgd", reduce="mean", test="superiority",
                  arm="none", effect_of_interest=0.3, preconditions=("c3_lemma",)),
            Claim(name="c3_token_r_adam", statement="… and under Adam (first step)",
                  metric="probe3/r_adam", reduce="mean", test="superiority", arm="none",
                  effect_of_interest=0.3, preconditions=("c3_lemma",)),
            Claim(name="c3_sign_flip", statement="the A-antisymmetric part of ΔH has the "
                  "predicted sign", metric="probe3/flip_sgd", reduce="mean", test="superiority",
                  arm="none", effect_of_interest=1e-4, preconditions=("c3_lemma",)),
            Claim(name="c3_detach_top_vs_bottom", statement="detaching top-cov tokens lowers "
                  "entropy less than detaching bottom-cov tokens", metric="probe3/top_minus_bottom",
                  reduce="mean", test="superiority", arm="none", effect_of_interest=1e-4,
                  preconditions=("c3_lemma",)),
            Claim(name="c3_detach_top_vs_random", statement="… and less than detaching random "
                  "tokens", metric="probe3/top_minus_random", reduce="mean", test="superiority",
                  arm="none", effect_of_interest=1e-4, preconditions=("c3_lemma",)),
            Claim(name="c2_law_vs_linear", statement="R = −a·exp(H) + b predicts held-out steps "
                  "better than a line in H (LOO RMSE)", metric=law_advantage("linear_h"),
                  test="superiority", arm="none", effect_of_interest=0.01),
            Claim(name="c2_law_vs_time", statement="… better than a time-only model",
                  metric=law_advantage("time"), test="superiority", arm="none",
                  effect_of_interest=0.01),
            Claim(name="c2_law_vs_linear_greedy", statement="… also for greedy accuracy (not "
                  "mechanically tied to the T = 1 entropy)",
                  metric=law_advantage("linear_h", perf_key="eval/greedy_acc"),
                  test="superiority", arm="none", effect_of_interest=0.01),
            Claim(name="c2_prefix_fit", statement="the law fitted on the first half of the eval "
                  "points predicts the final pass@1 within 0.05", metric=prefix_fit_error,
                  test="superiority", arm="none", null_value=-0.05, effect_of_interest=0.02),
            Claim(name="c2_beats_sharpening", statement="RL's final (H, pass@1) lies above the "
                  "warm start's temperature frontier", metric=frontier_gap, test="superiority",
                  arm="none", effect_of_interest=0.02),
        ]  # fmt: skip
    if "none" in arms and "lr0" in arms:
        c.append(
            Claim(name="c1_collapse_vs_lr0", statement="final rollout entropy below the lr = 0 "
                  "control's", metric="rollout/entropy", reduce="mean_last:5", test="superiority",
                  arm="none", baseline="lr0", direction="less", transform="log",
                  effect_of_interest=math.log(1 / 0.75))
        )  # fmt: skip
        c.append(
            Claim(name="c1_probe_collapse_vs_lr0", statement="… also on the fixed probe states",
                  metric="probe/entropy", reduce="last", test="superiority", arm="none",
                  baseline="lr0", direction="less", transform="log",
                  effect_of_interest=math.log(1 / 0.75))
        )  # fmt: skip
    if "none" in arms and "random_reward" in arms:
        c.append(
            Claim(name="c0_rl_beats_random_reward", statement="RL with the verifier beats RL "
                  "with random rewards (final pass@1)", metric="eval/pass@1", test="superiority",
                  arm="none", baseline="random_reward", effect_of_interest=0.03)
        )  # fmt: skip
    for m in ("entropy_bonus", "clip_cov", "kl_cov"):
        if m not in arms or "none" not in arms:
            continue
        pre = [f"c4a_{m}_holds_entropy"]
        c.append(
            Claim(name=f"c4a_{m}_holds_entropy", kind="manipulation",
                  statement=f"{m} keeps rollout entropy ≥ 1.5× none's (last 10 steps)",
                  metric="rollout/entropy", reduce="mean_last:10", test="superiority", arm=m,
                  baseline="none", transform="log", margin=L15, effect_of_interest=L2)
        )  # fmt: skip
        if m != "entropy_bonus":
            pre.append(f"c4a_{m}_active")
            c.append(
                Claim(name=f"c4a_{m}_active", kind="manipulation",
                      statement=f"{m} selects ≥ 1 token per step on average",
                      metric="activity/selected_tokens", reduce="mean", test="superiority",
                      arm=m, null_value=1.0, effect_of_interest=4.0)
            )  # fmt: skip
        c += [
            Claim(name=f"c4b_{m}_pass1", statement=f"{m} raises final T = 1 pass@1",
                  metric="eval/pass@1", test="superiority", arm=m, baseline="none",
                  effect_of_interest=0.03, preconditions=tuple(pre)),
            Claim(name=f"c4b_{m}_passk", statement=f"{m} raises final pass@{eval_n}",
                  metric=pass_at_k_metric(eval_n), test="superiority", arm=m, baseline="none",
                  effect_of_interest=0.03, preconditions=tuple(pre)),
            Claim(name=f"c4b_{m}_greedy", statement=f"{m} raises final greedy accuracy",
                  metric="eval/greedy_acc", test="superiority", arm=m, baseline="none",
                  effect_of_interest=0.03, preconditions=tuple(pre)),
        ]  # fmt: skip
    if "kl_cov" in arms and "noclip" in arms:
        c.append(
            Claim(name="c4c_kl_cov_vs_noclip", statement="KL-Cov beats its own clip-free "
                  "surrogate without the penalty (the gain is the penalty, not the clip removal)",
                  metric="eval/pass@1", test="superiority", arm="kl_cov", baseline="noclip",
                  effect_of_interest=0.03, preconditions=("c4a_kl_cov_holds_entropy",))
        )  # fmt: skip
    return tuple(c)


# -- the spec -----------------------------------------------------------------------------------


def pilot_settings(path: Path | None = None) -> dict | None:
    p = Path(path or HERE / "pilot.json")
    if not p.exists():
        return None
    return json.loads(p.read_text())["settings"]


def build_spec(preset: str) -> StudySpec:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    P = PRESETS[preset]
    settings = dict(P.settings)
    pilot = "n/a"
    if preset == "full":
        chosen = pilot_settings()
        pilot = "missing" if chosen is None else "pilot.json"
        settings.update(chosen or {})
    arms = tuple(make_arm(a, settings) for a in P.arms)
    name = "entropy_mechanism" + ("_pilot" if preset == "pilot" else "")
    return StudySpec(
        name=name,
        arms=arms,
        inits=P.inits,
        steps=P.steps,
        config={"preset": preset, "settings": settings, "pilot": pilot, "P": P, "split": SPLIT},
        claims=() if preset == "pilot" else claims_for(P.arms, P.eval_n),
    )


# -- the job ------------------------------------------------------------------------------------


def _cache_root() -> Path:
    return Path(os.environ.get("ENTROPYLAB_WARMSTARTS", "runs/_warmstarts"))


def _probe_batch(tok, problems, prompt_width, max_new):
    """Teacher-forced reference answers (+ EOS) after the prompts: fixed probe states."""
    pt, pm = T.encode_fixed(tok, [p.prompt for p in problems], prompt_width)
    resp = np.full((len(problems), max_new), T.PAD, np.int32)
    rmask = np.zeros((len(problems), max_new), np.float32)
    for i, p in enumerate(problems):
        ids = tok.encode(p.target, eos=True)[:max_new]
        resp[i, : len(ids)] = ids
        rmask[i, : len(ids)] = 1.0
    tokens = np.concatenate([np.asarray(pt), resp], 1)
    mask = np.concatenate([np.asarray(pm), rmask.astype(np.asarray(pm).dtype)], 1)
    return {"tokens": jnp.asarray(tokens), "mask": jnp.asarray(mask), "response_mask": rmask}


class _Evaluator:
    def __init__(self, trainer, model, tok, task, eval_set, n, seed):
        self.tr, self.tok, self.task, self.eval_set, self.n = trainer, tok, task, eval_set, n
        self.gd = nnx.split(model)[0]
        self.seed = seed
        self._samplers = {}

    def sampler(self, temperature=None, greedy=False):
        key = ("greedy",) if greedy else ("T", temperature)
        if key not in self._samplers:
            cfg = self.tr.cfg.sampling_at(temperature or 1.0)
            if greedy:
                cfg = dataclasses.replace(cfg, greedy=True)
            self._samplers[key] = S.make_sampler(self.gd, cfg)
        return self._samplers[key]

    def _run(self, params, sampler, group):
        probs = self.eval_set
        pidx = jnp.repeat(jnp.arange(len(probs)), group)
        sidx = jnp.tile(jnp.arange(group), len(probs))
        keys = S.sample_keys(self.seed, 2**30, pidx, sidx)
        prompts = [p.prompt for p in probs for _ in range(group)]
        pt, pm = T.encode_fixed(self.tok, prompts, self.tr.cfg.prompt_width)
        r = sampler(self.tr._full_state(params), pt, pm, keys)
        rep = [p for p in probs for _ in range(group)]
        rewards = np.asarray(T.score(self.task, self.tok, rep, r.response, r.finished))
        ent = float(jnp.sum(r.entropy * r.response_mask) / jnp.maximum(jnp.sum(r.response_mask), 1))
        return rewards.reshape(len(probs), group), ent

    def evaluate(self, params, temperature=1.0):
        rew, ent = self._run(params, self.sampler(temperature), self.n)
        return (rew == 1.0).sum(1), ent

    def greedy(self, params):
        rew, _ = self._run(params, self.sampler(greedy=True), 1)
        return (rew[:, 0] == 1.0).astype(float)


def _lr0_step(trainer, step: int) -> dict:
    cfg = trainer.cfg
    t0 = time.perf_counter()
    problems = trainer.task.sample(T.problem_rng(cfg.seed, step), cfg.prompts_per_step,
                                   cfg.difficulties)  # fmt: skip
    r, rewards = trainer.rollout(trainer.state["params"], problems, step, cfg.group_size)
    mask = np.asarray(r.response_mask)
    groups = np.asarray(rewards).reshape(-1, cfg.group_size)
    return {
        "rollout/entropy": float((np.asarray(r.entropy) * mask).sum() / max(mask.sum(), 1)),
        "reward/mean": float(np.mean(rewards)),
        "reward/acc": float(np.mean(np.asarray(rewards) == 1.0)),
        "groups/zero_adv_frac": float(np.mean(groups.max(1) == groups.min(1))),
        "time/step_s": time.perf_counter() - t0,
    }


def _claim3(trainer, P, step, probe, seed) -> dict:
    """The per-state lemma and the counterfactual probes at the current parameters."""
    from entropylab.losses.advantages import grpo_advantages

    cfg = trainer.cfg
    problems = trainer.task.sample(T.problem_rng(cfg.seed, step, stream=7), cfg.prompts_per_step,
                                   cfg.difficulties)  # fmt: skip
    params = trainer.state["params"]
    r, rewards = trainer.rollout(params, problems, step, cfg.group_size, sample_offset=1000)
    adv = grpo_advantages(jnp.asarray(rewards), group_size=cfg.group_size, norm_by_std=True)
    rmask = jnp.asarray(r.response_mask).astype(jnp.float32)
    batch = {"tokens": r.tokens, "mask": r.mask, "response_mask": rmask,
             "advantages": adv[:, None] * rmask}  # fmt: skip
    gd, _, rest = nnx.split(trainer.model, nnx.Param, ...)
    out = PR.claim3_probes(gd, rest, params, batch, prompt_width=cfg.prompt_width, lr=P.cf_lr,
                           adam_lr=P.cf_adam_lr, probe=probe, seed=seed)  # fmt: skip
    errs, orders, passes = [], [], []
    rng = np.random.default_rng(seed)
    # one state per prompt: the first valid row of each group (the rows of a group share the
    # prompt, so their first response position is the same state)
    valid = np.asarray(rmask).sum(1) > 0
    rows = [g * cfg.group_size + int(np.argmax(v)) for g, v in
            enumerate(valid.reshape(-1, cfg.group_size)) if v.any()]  # fmt: skip
    for i in range(P.lemma_states):
        row = int(rows[i % len(rows)])
        f = PR.state_logits_fn(gd, rest, r.tokens, r.mask, row, cfg.prompt_width)
        a = rng.normal(size=int(f(params).shape[0]))
        for mode in ("natural", "vanilla", "network_sgd"):
            res = PR.lemma_check(f, params, a, mode=mode)
            errs.append(res.rel_err[-1])
            orders.append(res.order)
            passes.append(res.passed)
    out["lemma/rel_err"] = float(max(errs))
    out["lemma/order"] = float(min(orders))
    out["lemma/pass_frac"] = float(np.mean(passes))
    return out


def job(ctx) -> dict:
    cfgd = ctx.spec.config
    P: Preset = cfgd["P"]
    seed = ctx.seeds[0]
    tok = T.CharTokenizer()
    sp = make_splits(T.AdditionTask(), SPLIT)
    mcfg = getattr(TransformerConfig, P.model)(vocab_size=tok.vocab_size, max_seq_len=32)
    model = Transformer(mcfg, rngs=nnx.Rngs(ctx.init))
    sft = dataclasses.replace(P.sft, seed=ctx.init)
    key = WarmStartKey(task=sp["train"].task_id, split=SPLIT, model=mcfg, sft=sft, seed=ctx.init)
    t0 = time.time()
    sft_task = RoutedTask(sp["train"], {99: sp["selection"]})
    ws = WarmStartCache(_cache_root()).get(
        model, key, lambda m: sft_warmstart(m, sft_task, tok, sft, prompt_width=P.rl.prompt_width,
                                            max_new=P.rl.max_new_tokens))  # fmt: skip
    warm_s = time.time() - t0
    eval_split = "selection" if cfgd["preset"] == "pilot" else "eval"  # the pilot never sees eval
    eval_set = sp[eval_split].sample_unique(np.random.default_rng(EVAL_SEED), P.eval_problems,
                                            P.rl.difficulties)  # fmt: skip
    probe_problems = sp["selection"].sample_unique(np.random.default_rng(PROBE_SEED),
                                                   P.probe_states, P.rl.difficulties)  # fmt: skip
    probe = _probe_batch(tok, probe_problems, P.rl.prompt_width, P.rl.max_new_tokens)
    arm = ctx.arm
    ex = dict(arm.extras)
    rl = dataclasses.replace(P.rl, seed=ctx.data_seed(seed), objective=arm.objective,
                             steps=ctx.steps)  # fmt: skip
    trainer = GRPOTrainer(rl, model, tok, ctx.dir(seed) / "trainer")
    # random_reward: the library's control wrapper (rewards Bernoulli(0.5), reseeded from
    # (seed, step) by the trainer's per-step task hook; evaluation here uses sp[eval_split])
    trainer.task = T.RandomRewardTask(sp["train"], ctx.data_seed(seed)) if ex.get(
        "random_reward") else sp["train"]  # fmt: skip
    ev = _Evaluator(trainer, model, tok, sp[eval_split], eval_set, P.eval_n, ctx.data_seed(seed))
    gd, _, rest = nnx.split(model, nnx.Param, ...)
    pids = [p.prompt for p in eval_set]
    is_none = arm.name == "none" and cfgd["preset"] != "pilot"  # frontier + claim-3 probes

    def probe_entropy(params):
        _, ent, _ = PR.response_forward(gd, rest, params, probe["tokens"], probe["mask"],
                                        P.rl.prompt_width)  # fmt: skip
        m = probe["response_mask"]
        return float(np.sum(np.asarray(ent) * m) / m.sum())

    def evaluate(step, params, elog) -> dict:
        correct, ent = ev.evaluate(params)
        greedy = ev.greedy(params)
        elog.log(step, eval_split, pids, correct, P.eval_n, greedy=greedy,
                 difficulties=[p.difficulty for p in eval_set])  # fmt: skip
        return {
            "eval/pass@1": float(np.mean(correct / P.eval_n)),
            "eval/greedy_acc": float(np.mean(greedy)),
            "eval/entropy": ent,
            "probe/entropy": probe_entropy(params),
        }

    ckpt_dir = ctx.dir(seed) / "checkpoints"
    ckpt = Checkpointer(ckpt_dir, save_every=P.eval_every, keep=1)
    start = 0
    if ctx.resume and ckpt.latest_step() is not None:  # an interrupted job: continue it
        trainer.state, _ = ckpt.restore(abstract_like(trainer.state))
        start = int(ckpt.latest_step())
    resume_step = start if start else None  # no checkpoint: the logs are cut to nothing
    bar = ctx.bar(seed, fields={"rollout/entropy": "H", "reward/acc": "acc",
                                "eval/pass@1": "pass@1"})  # fmt: skip
    if start:
        bar.update(start)
    extra_s = 0.0  # frontier + claim-3 probes: arm none only (plan charges them to it alone)
    with (
        ctx.step_logger(seed, resume_step=resume_step) as log,
        ctx.eval_log(seed, resume_step=resume_step) as elog,
    ):
        if start == 0:
            params = trainer.state["params"]
            rec0 = evaluate(0, params, elog)
            if is_none:
                t_extra = time.perf_counter()
                fh, fp = [], []
                for temp in P.temperatures:
                    c, e = ev.evaluate(params, temperature=temp)
                    fh.append(e)
                    fp.append(float(np.mean(c / P.eval_n)))
                rec0 |= {"frontier/entropy": fh, "frontier/pass1": fp,
                         "frontier/temperature": list(P.temperatures)}  # fmt: skip
                rec0 |= _claim3(trainer, P, 0, probe, ctx.init)
                extra_s += time.perf_counter() - t_extra
            log.log(0, rec0)
        for s in range(start, ctx.steps):
            t_step = time.perf_counter()
            rec = _lr0_step(trainer, s) if ex.get("lr0") else from_trainer_record(trainer.step(s))
            rec["time/step_s"] = time.perf_counter() - t_step
            if "activity/selected_frac" in rec and "response/length" in rec:
                n_tok = rec["response/length"] * rl.prompts_per_step * rl.group_size
                rec["activity/tokens"] = n_tok
                rec["activity/selected_tokens"] = rec["activity/selected_frac"] * n_tok
            if (s + 1) % P.eval_every == 0 or s + 1 == ctx.steps:
                rec |= evaluate(s + 1, trainer.state["params"], elog)
            if is_none and s + 1 == ctx.steps:
                t_extra = time.perf_counter()
                rec |= _claim3(trainer, P, s + 1, probe, ctx.init + 1)
                extra_s += time.perf_counter() - t_extra
            log.log(s + 1, {k: v for k, v in rec.items() if not isinstance(v, str)})
            if s + 1 < ctx.steps:  # logged first, then saved: a checkpoint never runs ahead
                ckpt.maybe_save(s + 1, trainer.state)
            bar.update(1, rec)
    ckpt.close()
    shutil.rmtree(ckpt_dir, ignore_errors=True)  # the job is done: its result is the logs
    return {"time/warmstart_s": warm_s, "time/arm_extra_s": extra_s,
            "warmstart/param_hash": ws.param_hash,
            "warmstart/cached": ws.cached}  # fmt: skip


# -- pilot selection ------------------------------------------------------------------------


def pilot_select(out: Path, dest: Path = HERE / "pilot.json") -> dict:
    """Smallest setting per method whose mean (over pilot inits) last-10-step rollout entropy
    is ≥ 1.5× none's; if none is, the largest setting and ``holds: false`` (claim 4a's answer)."""
    from entropylab.study import load_jobs

    spec = build_spec("pilot")
    jobs, _ = load_jobs(out)

    def h(arm):
        v = [np.mean([r["rollout/entropy"] for r in j.records if "rollout/entropy" in r][-10:])
             for j in jobs if j.arm == arm]  # fmt: skip
        if len(v) != len(spec.inits):
            raise ValueError(f"pilot arm {arm} is not finished in {out}")
        return float(np.mean(v))

    base = h("none")
    settings, detail = {}, {}
    for m, grid in PILOT_GRID.items():
        ratios = [h(f"{m}-{i}") / base for i in range(len(grid))]
        ok = [i for i, r in enumerate(ratios) if r >= 1.5]
        pick = ok[0] if ok else len(grid) - 1
        settings[m] = grid[pick]
        detail[m] = {"grid": list(grid), "entropy_ratio": ratios, "holds": bool(ok)}
    res = {"settings": settings, "detail": detail, "none_entropy": base, "pilot_out": str(out)}
    dest.write_text(json.dumps(res, indent=1) + "\n")
    return res


def cli(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = "quick"
    if argv[:1] == ["--preset"]:
        preset, argv = argv[1], argv[2:]
    if argv[:1] == ["pilot"]:
        preset, argv = "pilot", argv[1:]
    if argv[:1] == ["pilot-select"]:
        out = argv[1] if len(argv) > 1 else "runs/entropy_mechanism/pilot"
        print(json.dumps(pilot_select(Path(out)), indent=1))
        return 0
    spec = build_spec(preset)
    if preset == "full" and spec.config["pilot"] == "missing" and argv[:1] in (["run"], ["plan"]):
        raise SystemExit("the full study's settings come from the pilot: run the pilot and "
                         "pilot-select first (README, 'Commands')")  # fmt: skip
    return main(spec, job, argv, default_out=f"runs/entropy_mechanism/{preset}",
                prog="python -m experiments.entropy_mechanism.study")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(cli())
