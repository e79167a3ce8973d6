"""GRPO trainer: a smoke run writes sane metrics; a run stopped by SIGTERM (in a subprocess)
checkpoints, exits with 128 + signal, and its resumed run equals the uninterrupted one."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from entropylab import runs
from entropylab.losses.objective import ObjectiveConfig
from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import tasks as T
from entropylab.rl.metrics import pass_at_k
from entropylab.rl.trainer import GRPOTrainer, RLConfig, RLPreempted
from entropylab.runs import read_jsonl

CFG = RLConfig(
    difficulties=(1, 2),
    steps=4,
    prompts_per_step=4,
    group_size=4,
    minibatches=2,
    eval_every=2,
    eval_problems=4,
    eval_k=4,
    prompt_width=8,
    max_new_tokens=4,
    checkpoint_every=2,
    objective=ObjectiveConfig(policy_loss="clip_cov", policy_kwargs={"clip_cov_ratio": 0.1}),
)


def _model():
    tok = T.CharTokenizer()
    cfg = TransformerConfig.smoke(vocab_size=tok.vocab_size, max_seq_len=16)
    return Transformer(cfg, rngs=nnx.Rngs(0)), tok


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_full")
    model, tok = _model()
    recs = GRPOTrainer(CFG, model, tok, out).run(progress=True)  # exercises the progress bar
    return out, recs, nnx.split(model)[1]


def test_smoke_run_metrics(full_run):
    out, recs, _ = full_run
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4]
    train = [r for r in lines if "rollout/entropy" in r]
    for r in train:
        for key in (
            "reward/mean",
            "rollout/entropy",
            "train/entropy",
            "entropy/gap",
            "rollout/entropy_p95",
            "groups/zero_adv_frac",
            "pg/clipfrac",
            "cov/mean",
            "cov/predicted_dH",
            "time/rollout_s",
            "perf/tokens_per_s",
        ):
            assert key in r and np.isfinite(r[key]), key
        # sampler and trainer compute the same policy: the recomputed log-probs agree
        assert r["rollout/logp_gap"] < 1e-4 and abs(r["entropy/gap"]) < 1e-4
        assert 0.0 <= r["reward/mean"] <= 1.0
    assert "eval/pass@1" in lines[0] and "eval/pass@4" in lines[2]
    assert (out / "checkpoints" / "4").is_dir()


# The child runs CFG and delivers a real SIGTERM to itself at the end of step index 2 (third
# step), so the stop is deterministic (no sleep race): record 3 written, checkpoint at step 3.
_PREEMPT_DRIVER = """
import os, signal, sys
import jax
jax.config.update("jax_num_cpu_devices", 8)  # as in the test process (conftest.py)
from trainer_test import CFG, _model
from entropylab.rl.trainer import GRPOTrainer
real_step = GRPOTrainer.step
def step(self, s):
    rec = real_step(self, s)
    if s == 2:
        os.kill(os.getpid(), signal.SIGTERM)
    return rec
GRPOTrainer.step = step
model, tok = _model()
GRPOTrainer(CFG, model, tok, sys.argv[1]).run(progress=False)
print("NOT STOPPED", flush=True)
"""


def test_sigterm_checkpoints_exits_and_resume_equals_uninterrupted(full_run, tmp_path):
    """SIGTERM in a subprocess: the step finishes, its record and a checkpoint at that boundary
    are written, the process exits with 128 + SIGTERM; the rerun (here, in this process) writes
    a metrics file and final params equal to the uninterrupted run's, bit for bit. Steps 0-3 of
    it come from the other process, so this is also the same-seed determinism check."""
    out_full, _, state_full = full_run
    here = Path(__file__).resolve().parent
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=f"{here}:{here.parents[1]}")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-c", _PREEMPT_DRIVER, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stdout + proc.stderr[-3000:]
    assert "NOT STOPPED" not in proc.stdout and "Traceback" not in proc.stderr
    assert "received SIGTERM" in proc.stderr and "after step 3" in proc.stderr
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [0, 1, 2, 3]
    # periodic checkpoint at 2 (checkpoint_every=2) and the preemption one at 3
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [2, 3]

    model, tok = _model()
    handler = signal.getsignal(signal.SIGTERM)
    recs = GRPOTrainer(CFG, model, tok, tmp_path).run(progress=False)
    assert signal.getsignal(signal.SIGTERM) is handler  # the run's guard is uninstalled
    assert [r["step"] for r in recs] == [4]
    skip = ("time/", "perf/")

    def strip(path):
        return [{k: v for k, v in r.items() if not k.startswith(skip)} for r in read_jsonl(path)]

    assert strip(tmp_path / "metrics.jsonl") == strip(out_full / "metrics.jsonl")
    for x, y in zip(jax.tree.leaves(nnx.split(model)[1]), jax.tree.leaves(state_full), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_preemption_before_a_step_saves_and_raises(tmp_path):
    """A stop already requested (e.g. SIGINT during the step-0 eval): checkpoint at step 0,
    RLPreempted (a SystemExit with code 128 + signal) naming the step; the handler is restored."""
    cfg = CFG.__class__(**{**CFG.__dict__, "checkpoint_every": 0, "eval_every": 0})
    model, tok = _model()
    guard = runs.PreemptionGuard()
    guard.request(signal.SIGINT)
    with pytest.raises(RLPreempted, match="after step 0") as err:
        GRPOTrainer(cfg, model, tok, tmp_path).run(progress=False, preemption=guard)
    assert isinstance(err.value, SystemExit) and err.value.code == 128 + signal.SIGINT
    assert err.value.step == 0 and err.value.records == []
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [0]


def test_pass_at_k_reference():
    correct = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    # c=1,n=4: pass@1 = 1/4, pass@2 = 1 - C(3,2)/C(4,2) = 1/2
    assert pass_at_k(correct, 1) == pytest.approx((0.25 + 0 + 1) / 3)
    assert pass_at_k(correct, 2) == pytest.approx((0.5 + 0 + 1) / 3)
    assert pass_at_k(correct, 4) == pytest.approx((1 + 0 + 1) / 3)
    with pytest.raises(ValueError):
        pass_at_k(correct, 5)


def test_config_validation():
    with pytest.raises(ValueError, match="minibatches"):
        RLConfig(prompts_per_step=3, group_size=3, minibatches=2)
    with pytest.raises(ValueError, match="unknown task"):
        RLConfig(task="chess")
    for field, bad in (
        ("temperature", 0.0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("max_new_tokens", 0),
        ("eval_problems", 0),
        ("learning_rate", float("nan")),
        ("temperature", float("inf")),
        ("aepo_temperatures", (1.2, float("nan"))),
    ):
        with pytest.raises(ValueError, match=field):
            RLConfig(**{field: bad})
    with pytest.raises(ValueError, match="advantage_estimator"):
        RLConfig(advantage_estimator="gae_typo")
    with pytest.raises(ValueError, match="temperature_hook"):
        RLConfig(temperature_hook="nope")
    with pytest.raises(ValueError, match="unknown argument"):
        RLConfig(temperature_hook="hapo", temperature_hook_kwargs={"tau_typo": 0.1})
    with pytest.raises(ValueError, match="on_nonfinite"):
        RLConfig(on_nonfinite="ignore")
    assert RLConfig(norm_adv_by_std=False).estimator == "dr_grpo"
    assert RLConfig(advantage_estimator="rloo").estimator == "rloo"


def test_vocab_smaller_than_tokenizer_is_an_error(tmp_path):
    tok = T.CharTokenizer()
    cfg = TransformerConfig.smoke(vocab_size=tok.vocab_size - 1, max_seq_len=16)
    with pytest.raises(ValueError, match="vocab_size"):
        GRPOTrainer(CFG, Transformer(cfg, rngs=nnx.Rngs(0)), tok, tmp_path)


def test_nonfinite_guard_stop_and_skip(tmp_path):
    """A NaN metric stops the run naming the step and metric, or (skip) keeps the old state."""
    import jax

    for policy in ("stop", "skip"):
        cfg = CFG.__class__(**{**CFG.__dict__, "on_nonfinite": policy, "eval_every": 0})
        model, tok = _model()
        tr = GRPOTrainer(cfg, model, tok, tmp_path / policy)
        real = tr._update

        def poisoned(state, batch, key, real=real):
            new, metrics, stats = real(state, batch, key)
            return new, {**metrics, "loss/total": metrics["loss/total"] * float("nan")}, stats

        tr._update = poisoned
        before = [np.asarray(x).copy() for x in jax.tree.leaves(tr.state["params"])]
        if policy == "stop":
            with pytest.raises(
                FloatingPointError, match=r"step 0: non-finite metrics \['loss/total'\]"
            ):
                tr.step(0)
            continue
        rec = tr.step(0)
        assert rec["guard/skipped"] == 1.0 and rec["guard/nonfinite"] == "loss/total"
        assert int(tr.state["step"]) == 1
        for a, b in zip(before, jax.tree.leaves(tr.state["params"]), strict=True):
            np.testing.assert_array_equal(a, np.asarray(b))


def test_trainer_params_do_not_alias_the_model():
    """Updating the model afterwards (e.g. resetting it for the next arm) must not change the
    trainer's params or its frozen reference."""
    import jax

    model, tok = _model()
    tr = GRPOTrainer(CFG.__class__(**{**CFG.__dict__, "use_reference": True}), model, tok, "/tmp/x")
    before = [np.asarray(x).copy() for x in jax.tree.leaves(tr.ref_params)]
    shifted = jax.tree.map(lambda x: x + 1.0, nnx.split(model, nnx.Param, ...)[1])
    nnx.update(model, shifted)
    for a, b in zip(before, jax.tree.leaves(tr.ref_params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    for a, b in zip(before, jax.tree.leaves(tr.state["params"]), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


class _RecomputeTrainer(GRPOTrainer):
    """Forces the separate old-log-prob recompute even for one epoch × one minibatch."""

    def __init__(self, cfg, *a, **kw):
        import dataclasses

        from entropylab.rl.step import make_update

        super().__init__(cfg, *a, **kw)
        self.step_config = dataclasses.replace(self.step_config, recompute_old_logp=True)
        self._update = make_update(
            self.objective, self.tx, self.graphdef, self.rest, self.step_config
        )


def test_single_update_fused_old_logp_equals_recompute(tmp_path):
    """epochs = minibatches = 1: the update's own stop-gradient forward replaces the recompute
    forward; the step (params, loss, covariance, entropies) matches the recompute path."""
    import jax

    cfg = CFG.__class__(**{**CFG.__dict__, "minibatches": 1, "steps": 2, "eval_every": 0})
    cfg = cfg.__class__(**{**cfg.__dict__, "checkpoint_every": 0})
    runs = []
    for cls in (GRPOTrainer, _RecomputeTrainer):
        model, tok = _model()
        tr = cls(cfg, model, tok, tmp_path / cls.__name__)
        assert tr.fused_old_logp == (cls is GRPOTrainer)
        recs = [tr.step(s) for s in range(2)]
        runs.append((recs, jax.tree.leaves(tr.state["params"])))
    (fused, p_fused), (recomp, p_recomp) = runs
    for a, b in zip(p_fused, p_recomp, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)
    for ra, rb in zip(fused, recomp, strict=True):
        assert ra["reward/mean"] == rb["reward/mean"]
        for k in ("loss/total", "cov/mean", "train/entropy", "rollout/entropy", "pg/clipfrac"):
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-6), k
        assert ra["rollout/logp_gap"] < 1e-4


def test_measure_entropy_change_same_batch(tmp_path):
    """cov/observed_dH is the entropy change on the step's own tokens: ~0 for a vanishing step,
    clearly non-zero for a large one (so it is measured with the updated params). An untrained
    model earns no reward (zero advantages), so an entropy bonus supplies the gradient."""
    objective = ObjectiveConfig(regularizers=(("entropy_bonus", {"coef": 1.0}),))
    out = {}
    for lr in (1e-9, 3e-2):
        cfg = CFG.__class__(
            **{
                **CFG.__dict__,
                "measure_entropy_change": True,
                "eval_every": 0,
                "checkpoint_every": 0,
                "learning_rate": lr,
                "objective": objective,
            }
        )
        model, tok = _model()
        rec = GRPOTrainer(cfg, model, tok, tmp_path / str(lr)).step(0)
        assert np.isfinite(rec["cov/observed_dH"]) and np.isfinite(rec["cov/predicted_dH"])
        out[lr] = rec["cov/observed_dH"]
    assert abs(out[1e-9]) < 1e-5
    assert abs(out[3e-2]) > 1e-3


def test_hapo_temperature_hook(tmp_path):
    """HAPO's adaptive temperature: the first rollout samples at the base temperature, later ones
    per token from the previous batch's entropy statistics (state in the checkpointed state)."""
    cfg = CFG.__class__(
        **{
            **CFG.__dict__,
            "eval_every": 0,
            "checkpoint_every": 0,
            "minibatches": 1,
            "temperature_hook": "hapo",
            "temperature_hook_kwargs": {"tau": 0.5},
        }
    )
    model, tok = _model()
    tr = GRPOTrainer(cfg, model, tok, tmp_path)
    assert not bool(tr.state["sampler"]["ready"])
    r0, r1 = tr.step(0), tr.step(1)
    assert r0["rollout/temperature"] == 1.0
    assert bool(tr.state["sampler"]["ready"])
    assert r1["rollout/temperature"] != 1.0 and 0.5 <= r1["rollout/temperature"] <= 1.5


def test_random_reward_control_through_the_trainer(tmp_path):
    # RLConfig(random_reward=p) trains on Bernoulli(p) rewards (the random-reward control); the
    # trainer reseeds them per step, so a step replayed from the same state sees the same rewards
    # whatever ran before it, and evaluation still scores with the task's own verifier.
    cfg = dataclasses.replace(CFG, steps=2, checkpoint_every=0, eval_every=0, random_reward=1.0)
    model, tok = _model()
    a = GRPOTrainer(cfg, model, tok, tmp_path / "a")
    assert isinstance(a.task, T.RandomRewardTask) and a.task.p == 1.0
    rec = a.step(0)
    assert rec["reward/mean"] == 1.0  # p = 1: every response rewarded, right or not
    ev = a.evaluate(a.state["params"])
    assert ev["eval/pass@1"] < 0.5  # the untrained model, scored by the real verifier

    cfg = dataclasses.replace(cfg, random_reward=0.5)
    a = GRPOTrainer(cfg, model, tok, tmp_path / "a2")
    b = GRPOTrainer(cfg, model, tok, tmp_path / "b")
    ra = [a.step(s)["reward/mean"] for s in range(2)]
    b.state = jax.tree.map(lambda x: x, a.state)  # b skips step 0's draws
    b.state["step"] = a.state["step"] - 1
    rb = b.step(1)["reward/mean"]
    assert rb == ra[1], (ra, rb)
    # both generators now stand after step 1's draws from (seed, 1): the next draw agrees
    # (without the per-step reseed, a's would have step 0's draws behind it as well)
    assert a.task.rng.random() == b.task.rng.random()
    assert 0.0 < ra[0] < 1.0 and 0.0 < ra[1] < 1.0
    for bad in (1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="random_reward"):
            RLConfig(random_reward=bad)
