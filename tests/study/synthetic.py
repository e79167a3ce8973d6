"""Synthetic studies with planted effects: a job function that writes what a real job writes.

``planted_job(outcome, entropy, sd)`` returns a job function for :class:`Runner`: per step it
logs ``rollout/entropy`` (a decay to the arm's planted level) and ``eval/pass@1`` (the init's
base level + the arm's planted effect + seeded noise with standard deviation ``sd``), plus
``time/step_s`` and per-problem eval outcomes. Noise depends on (init, arm, seed) only, so
fixtures are reproducible.
"""

import numpy as np

from entropylab.study import Arm, Claim, StudySpec


def planted_job(
    outcome: dict,
    entropy: dict,
    sd: float,
    *,
    dose: dict | None = None,
    nan_inits=(),
    step_s: float = 0.25,
):
    def job(ctx):
        for seed in ctx.seeds:
            arm = ctx.arm.name
            rng = np.random.default_rng([ctx.init, sum(map(ord, arm)), seed])
            base = 0.3 + 0.02 * ctx.init
            h_final = entropy[arm]
            with ctx.step_logger(seed) as log, ctx.eval_log(seed) as ev:
                for step in range(1, ctx.steps + 1):
                    h = h_final + (1.0 - h_final) * np.exp(-step / 3)
                    rec = {"rollout/entropy": h, "time/step_s": step_s}
                    if step == ctx.steps:
                        val = base + outcome[arm] + rng.normal(0, sd)
                        if ctx.init in nan_inits and arm != "base":
                            val = float("nan")
                        rec["eval/pass@1"] = val
                        correct = (rng.random(16) < min(max(base, 0), 1)).astype(int) * 4
                        ev.log(step, "eval", [f"p{i}" for i in range(16)], correct, 4)
                    log.log(step, rec)
        return {s: {"final": 1.0} for s in ctx.seeds}

    return job


def spec(n_inits: int, *, claims=(), arms=("base", "treat"), steps: int = 6, seeds=(0,)):
    return StudySpec(
        name="synthetic",
        arms=tuple(Arm(name=a) for a in arms),
        inits=tuple(range(n_inits)),
        seeds=seeds,
        steps=steps,
        config={"kind": "synthetic"},
        claims=tuple(claims),
    )


def outcome_claim(**kw):
    args = dict(
        name="outcome",
        statement="treat raises final pass@1 over base",
        metric="eval/pass@1",
        test="superiority",
        arm="treat",
        baseline="base",
        effect_of_interest=0.05,
    )
    args.update(kw)
    return Claim(**args)


def manipulation_claim(**kw):
    args = dict(
        name="manip",
        statement="treat holds entropy at >= 1.5x base",
        metric="rollout/entropy",
        reduce="mean_last:2",
        test="superiority",
        arm="treat",
        baseline="base",
        transform="log",
        margin=float(np.log(1.5)),
        effect_of_interest=float(np.log(2.0)),
        kind="manipulation",
    )
    args.update(kw)
    return Claim(**args)
