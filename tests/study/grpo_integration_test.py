"""End to end at smoke scale: Runner -> job function -> cached SFT warm start -> today's
GRPOTrainer on the train split, eval on the eval split -> standard-schema logs -> analyse.

This is the README's job function, run: it checks that the harness drives the real trainer
(common random numbers across arms included) and that analysis reads what it wrote.
"""

import dataclasses
import json

import numpy as np
from flax import nnx

from entropylab.losses.objective import ObjectiveConfig
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import tasks as T
from entropylab.rl.sft import SFTConfig, sft_warmstart
from entropylab.rl.trainer import GRPOTrainer, RLConfig
from entropylab.study import (
    Arm,
    Claim,
    RoutedTask,
    Runner,
    SplitSpec,
    StudySpec,
    analyse,
    from_trainer_record,
    make_splits,
    read_records,
)
from entropylab.study.warmstart import WarmStartCache, WarmStartKey

TOK = T.CharTokenizer()
MODEL = TransformerConfig.smoke(vocab_size=TOK.vocab_size, max_seq_len=16, n_layers=1)
SFT = SFTConfig(
    difficulties=(1,),
    batch_size=8,
    seq_len=10,
    max_steps=2,
    eval_every=2,
    eval_problems=4,
    target_accuracy=1.0,
)
RL = RLConfig(
    difficulties=(1,),
    steps=2,
    prompts_per_step=4,
    group_size=4,
    minibatches=1,
    eval_every=2,
    eval_problems=4,
    eval_k=4,
    prompt_width=6,
    max_new_tokens=3,
)
SPLIT = SplitSpec()


def make_job(cache_root):
    splits = make_splits(T.AdditionTask(), SPLIT)
    eval_set = splits["eval"].sample_unique(np.random.default_rng(0), RL.eval_problems, (1,))
    cache = WarmStartCache(cache_root)
    sft_task = RoutedTask(splits["train"], {99: splits["selection"]})

    def job(ctx):
        seed = ctx.seeds[0]
        model = Transformer(MODEL, rngs=nnx.Rngs(ctx.init))
        key = WarmStartKey(
            task=splits["train"].task_id, split=SPLIT, model=MODEL, sft=SFT, seed=ctx.init
        )
        ws = cache.get(
            model, key, lambda m: sft_warmstart(m, sft_task, TOK, SFT, prompt_width=6, max_new=3)
        )
        rl = dataclasses.replace(
            RL, seed=ctx.data_seed(seed), objective=ctx.arm.objective, steps=ctx.steps
        )
        trainer = GRPOTrainer(rl, model, TOK, ctx.dir(seed) / "trainer")
        trainer.task, trainer.eval_set = splits["train"], eval_set
        trainer.run(resume=ctx.resume, progress=False)
        with ctx.step_logger(seed) as log:
            for r in read_records(ctx.dir(seed) / "trainer" / "metrics.jsonl"):
                log.log(r["step"], from_trainer_record(r))
        return {"param_hash": ws.param_hash, "cached": ws.cached}

    return job


def test_runner_drives_grpo_trainer_and_analyses(tmp_path):
    clip = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.2}
    arms = (
        Arm(name="none", objective=ObjectiveConfig(policy_loss="ppo_clip", policy_kwargs=clip)),
        Arm(
            name="bonus",
            objective=ObjectiveConfig(
                policy_loss="ppo_clip",
                policy_kwargs=clip,
                regularizers=(("entropy_bonus", {"coef": 0.01}),),
            ),
        ),
    )
    claim = Claim(
        name="bonus_entropy",
        statement="the bonus raises entropy",
        metric="rollout/entropy",
        test="superiority",
        arm="bonus",
        baseline="none",
        effect_of_interest=0.05,
    )
    spec = StudySpec(
        name="smoke",
        arms=arms,
        inits=(0,),
        steps=2,
        claims=(claim,),
        config={"model": MODEL, "sft": SFT, "rl": RL, "split": SPLIT},
    )
    out = tmp_path / "run"
    Runner(spec, make_job(tmp_path / "cache"), out).run(progress=False)
    res = {
        a: read_records(out / "jobs" / a / "init0" / "seed0" / "metrics.jsonl")
        for a in ("none", "bonus")
    }
    for recs in res.values():
        assert [r["step"] for r in recs] == [0, 1, 2]
        assert all(np.isfinite(r["rollout/entropy"]) for r in recs[1:])
        assert "time/step_s" in recs[1] and "eval/pass@1" in recs[2]
    # common random numbers + one cached warm start: both arms start from the same params and
    # see the same first rollout, so their step-1 rollout entropy is identical
    assert res["none"][1]["rollout/entropy"] == res["bonus"][1]["rollout/entropy"]
    r_none = json.loads((out / "jobs" / "none" / "init0" / "seed0" / "result.json").read_text())
    r_bonus = json.loads((out / "jobs" / "bonus" / "init0" / "seed0" / "result.json").read_text())
    assert r_none["result"]["param_hash"] == r_bonus["result"]["param_hash"]
    assert not r_none["result"]["cached"] and r_bonus["result"]["cached"]
    summary = analyse(spec, out, plots=False)
    assert summary["claims"]["bonus_entropy"]["verdict"] == "inconclusive"  # n = 1 init
    assert summary["claims"]["bonus_entropy"]["n"] == 1
