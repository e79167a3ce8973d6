"""The pre-registered Entropy Mechanism study (experiments/entropy_mechanism/study.py, probes.py).

* the claim-3 lemma check: hand-checked entropy/covariance numbers (NumPy float64 written in
  the test), the check passes on a tiny network in all three modes and FAILS when the
  covariance's sign is flipped;
* a real smoke run of the study (2 inits × none/kl_cov/lr0, 4 steps, SFT, RL, evals, frontier,
  claim-3 probes) and its analysis: every claim gets a verdict; at n = 2 they are inconclusive
  or blocked;
* planted-effect fixtures (records in the job's format, 8 inits) through the study's own
  claims: a planted effect is *reproduced*, a planted null is *not reproduced*, a failed
  manipulation check *blocks* the outcome claims (every verdict path of every claim).
"""

import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig
from entropylab.study import JobData, evaluate_claims
from experiments.entropy_mechanism import probes as PR
from experiments.entropy_mechanism import study as ST


def test_entropy_and_policy_cov_hand_checked():
    # π = (1, 2, 3)/6, A = (1, 0, −1): H and Cov_π(log π, A) computed by hand in float64
    z = jnp.log(jnp.array([1.0, 2.0, 3.0]) / 6.0)
    p = jax.nn.softmax(z)
    assert float(PR._entropy64(z)) == pytest.approx(1.0114042647073518, rel=1e-6)
    cov = PR.policy_cov(p, jax.nn.log_softmax(z), jnp.array([1.0, 0.0, -1.0]))
    assert float(cov) == pytest.approx(-0.2891877428271538, rel=1e-5)
    # the natural-PG step η = 1e-2 changes H by 0.0028722 (exact) vs −η·Cov = 0.0028919
    r = PR.lemma_check(lambda th: th, z, jnp.array([1.0, 0.0, -1.0]), mode="natural",
                       max_dz=(0.01, 0.005))  # fmt: skip
    assert r.passed and r.order == pytest.approx(2.0, abs=0.1)
    assert r.observed[0] == pytest.approx(0.0028721786231904467, rel=2e-3)
    assert r.predicted[0] == pytest.approx(0.002891877428271538, rel=1e-4)


def test_lemma_check_holds_at_a_near_deterministic_state():
    # The collapsed policies at the end of RL: H ≈ 0.005 nats, log π down to −16. There the
    # second-order residual at the smallest step (~1e-6) is as small as float32's rounding of
    # H, and the full study's c3_lemma failed one check on that alone (init 3, last step; the
    # check's entropies and covariance in float32). The check's arithmetic is float64 now: every
    # draw passes with the order of a right first-order term. (The float32 version failed 16 of
    # these 80 checks.)
    z = jnp.asarray(np.concatenate([[0.0], -np.linspace(9, 16, 24)]), jnp.float32)
    assert 0.004 < float(PR._entropy64(z)) < 0.006
    for seed in range(40):
        a = np.random.default_rng(seed).normal(size=25)
        for mode in ("natural", "vanilla"):
            r = PR.lemma_check(lambda th: th, z, a, mode=mode)
            assert r.passed and 1.9 < r.order < 2.1, (seed, mode, r.order, r.residual)
            bad = PR.lemma_check(lambda th: th, z, a, mode=mode, flip=True)
            assert not bad.passed, (seed, mode)


def test_diagnose_lemma_analyse_recomputes_the_committed_capture(tmp_path):
    # The committed capture of the full study's failed c3_lemma state (init 3, last step):
    # analysing it again gives the committed diagnosis (float32 as the study logged it, and the
    # float64 recomputation in which every check passes with order ≈ 2).
    from experiments.entropy_mechanism import diagnose_lemma as DL

    root = Path(__file__).resolve().parents[2] / "experiments/entropy_mechanism/results/full"
    doc = DL.analyse(root / "lemma_capture.json", tmp_path / "d.json")
    assert doc == json.loads((root / "lemma_diagnosis.json").read_text())
    assert doc["logged_by_the_study"]["lemma/pass_frac"] == pytest.approx(10 / 12)
    assert sum(not c["study_float32"]["passed"] for c in doc["checks"]) == 2
    assert all(c["float64"]["passed"] and 1.9 < c["float64"]["order"] < 2.1 for c in doc["checks"])
    assert doc["distinct_states"] == 1  # the study's first rows were one prompt's group


def _tiny_state():
    cfg = TransformerConfig.smoke(vocab_size=25, max_seq_len=16)
    m = Transformer(cfg, rngs=nnx.Rngs(0))
    gd, params, rest = nnx.split(m, nnx.Param, ...)
    params = jax.tree.map(lambda x: x * 4 if x.ndim > 1 else x, params)  # a less flat policy
    tok = jnp.asarray(np.random.default_rng(0).integers(3, 25, (2, 10)), jnp.int32)
    return gd, params, rest, tok, jnp.ones_like(tok)


def test_lemma_check_passes_on_network_and_fails_when_sign_flipped():
    gd, params, rest, tok, mask = _tiny_state()
    f = PR.state_logits_fn(gd, rest, tok, mask, 0, 7)
    a = np.random.default_rng(1).normal(size=25)
    for mode in ("natural", "vanilla", "network_sgd"):
        ok = PR.lemma_check(f, params, a, mode=mode)
        assert ok.passed and 1.7 < ok.order < 2.3, (mode, ok.order, ok.rel_err)
        assert ok.rel_err[-1] < 0.1
        bad = PR.lemma_check(f, params, a, mode=mode, flip=True)
        assert not bad.passed and bad.order < 1.3 and bad.rel_err[-1] > 1.5, (mode, bad)
    with pytest.raises(ValueError, match="mode"):
        PR.lemma_check(f, params, a, mode="adam")
    with pytest.raises(ValueError, match="advantages"):
        PR.lemma_check(f, params, a[:3])


def test_counterfactual_step_detached_tokens_do_not_move():
    gd, params, rest, tok, mask = _tiny_state()
    rm = jnp.ones((2, 5))
    batch = {"tokens": tok, "mask": mask, "response_mask": rm,
             "advantages": jnp.array([[1.0] * 5, [-1.0] * 5])}  # fmt: skip
    zero = PR.counterfactual_step(gd, rest, params, batch, prompt_width=5, lr=0.1,
                                  weights=np.zeros((2, 5)))  # fmt: skip
    # no gradient flows: the parameters are unchanged (only XLA's re-fused forward differs)
    assert abs(zero["dH_in"]) < 1e-6 and np.max(np.abs(zero["dH_tok"])) < 1e-6
    moved = PR.counterfactual_step(gd, rest, params, batch, prompt_width=5, lr=0.1,
                                   optimizer="adam")  # fmt: skip
    assert abs(moved["dH_in"]) > 1e-4
    with pytest.raises(ValueError, match="optimizer"):
        PR.counterfactual_step(gd, rest, params, batch, prompt_width=5, lr=0.1, optimizer="x")


# -- the real smoke run --------------------------------------------------------------------------


def test_smoke_study_runs_and_analyses(tmp_path, monkeypatch):
    monkeypatch.setenv("ENTROPYLAB_WARMSTARTS", str(tmp_path / "ws"))
    out = tmp_path / "run"
    assert ST.cli(["--preset", "smoke", "run", "--out", str(out), "--quiet"]) == 0
    readme = tmp_path / "README.md"
    readme.write_text("x\n<!-- study-results:begin -->\n<!-- study-results:end -->\n")
    with pytest.raises(SystemExit, match="2"):  # smoke numbers never go into a README
        ST.cli(["--preset", "smoke", "analyse", "--out", str(out), "--no-plots",
                "--readme", str(readme)])  # fmt: skip
    assert "c1_collapse" not in readme.read_text()
    assert ST.cli(["--preset", "smoke", "analyse", "--out", str(out), "--no-plots"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    spec = ST.build_spec("smoke")
    assert set(summary["claims"]) == {c.name for c in spec.claims}
    verdicts = {k: v["verdict"] for k, v in summary["claims"].items()}
    assert set(verdicts.values()) <= {"inconclusive", "blocked"}  # n = 2 cannot decide
    assert verdicts["c3_token_r_sgd"] == "blocked" and verdicts["c4b_kl_cov_pass1"] == "blocked"
    recs = [json.loads(x) for x in (out / "jobs/none/init0/seed0/metrics.jsonl").open()]
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4]
    r0, last = recs[0], recs[-1]
    for k in ("eval/pass@1", "eval/greedy_acc", "probe/entropy", "frontier/entropy",
              "lemma/order", "probe3/r_sgd", "probe3/top_minus_bottom"):  # fmt: skip
        assert k in r0, k
    assert len(r0["frontier/entropy"]) == 2 and "probe3/flip_sgd" in last
    assert r0["lemma/pass_frac"] == 1.0  # the lemma holds on the real network: else a bug
    kl = [json.loads(x) for x in (out / "jobs/kl_cov/init1/seed0/metrics.jsonl").open()]
    assert all("activity/selected_tokens" in r for r in kl[1:])
    evals = [json.loads(x) for x in (out / "jobs/kl_cov/init1/seed0/evals.jsonl").open()]
    assert {e["split"] for e in evals} == {"eval"} and {e["step"] for e in evals} == {0, 2, 4}
    lr0 = [json.loads(x) for x in (out / "jobs/lr0/init0/seed0/metrics.jsonl").open()]
    assert lr0[0]["probe/entropy"] == lr0[-1]["probe/entropy"]  # lr = 0: nothing moved
    assert "c1_collapse_trend" in (out / "RESULTS.md").read_text()


def test_interrupted_job_resumes_from_its_checkpoint_exactly(tmp_path, monkeypatch):
    """A job killed mid-way continues from its newest checkpoint (step 2 of 4) and writes the
    same logs as an uninterrupted job; random_reward's draws are reseeded per step."""
    from entropylab.study import Runner

    monkeypatch.setenv("ENTROPYLAB_WARMSTARTS", str(tmp_path / "ws"))
    base = ST.build_spec("smoke")
    arm = ST.make_arm("random_reward", base.config["settings"])
    spec = dataclasses.replace(base, name="em_resume", arms=(arm,), inits=(0,), claims=())
    Runner(spec, ST.job, tmp_path / "a").run(progress=False)
    real_step = ST.GRPOTrainer.step

    def killed_at_3(self, s):
        if s == 3:
            raise RuntimeError("killed")
        return real_step(self, s)

    monkeypatch.setattr(ST.GRPOTrainer, "step", killed_at_3)
    with pytest.raises(RuntimeError, match="killed"):
        Runner(spec, ST.job, tmp_path / "b").run(progress=False)
    job_b = tmp_path / "b/jobs/random_reward/init0/seed0"
    assert (job_b / "checkpoints").is_dir() and not (job_b / "result.json").exists()
    assert [json.loads(x)["step"] for x in (job_b / "metrics.jsonl").open()] == [0, 1, 2, 3]
    monkeypatch.setattr(ST.GRPOTrainer, "step", real_step)
    Runner(spec, ST.job, tmp_path / "b").run(progress=False)

    def logs(d, name):
        rows = [json.loads(x) for x in (d / name).open()]
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in rows]

    job_a = tmp_path / "a/jobs/random_reward/init0/seed0"
    assert [r["step"] for r in logs(job_b, "metrics.jsonl")] == [0, 1, 2, 3, 4]
    assert logs(job_b, "metrics.jsonl") == logs(job_a, "metrics.jsonl")
    assert logs(job_b, "evals.jsonl") == logs(job_a, "evals.jsonl")
    assert not (job_b / "checkpoints").exists() and (job_b / "result.json").exists()


def test_eval_probe_and_train_splits_are_disjoint():
    from entropylab.rl import tasks as T
    from entropylab.study import make_splits, split_of

    sp = make_splits(T.AdditionTask(), ST.SPLIT)
    ev = sp["eval"].sample_unique(np.random.default_rng(ST.EVAL_SEED), 512, (2,))
    assert len({p.prompt for p in ev}) == 512
    tid = sp["eval"].task_id
    assert all(split_of(tid, p.prompt, ST.SPLIT) == "eval" for p in ev)
    train = sp["train"].sample(np.random.default_rng(0), 2000, (1, 2))
    assert not {p.prompt for p in ev} & {p.prompt for p in train}


# -- planted-effect fixtures through the study's own claims ---------------------------------------


METHODS = ("kl_cov", "clip_cov", "entropy_bonus")


def _jobs(world: str, n: int = 8, arms=("none", "kl_cov", "lr0"), n_eval=4) -> list[JobData]:
    """Records in the job's format; ``world``: effect | null | nomanip | badlemma. Methods
    (KL-Cov, Clip-Cov, bonus) hold 3× entropy and gain 0.2 pass@1 in ``effect``; ``noclip``
    is like ``none``; ``random_reward`` ends 0.2 below ``none``."""
    out = []
    steps = np.arange(0, 41)
    for i in range(n):
        rng = np.random.default_rng(i)
        noise = lambda s=1e-3, g=rng: float(g.normal(0, s))  # noqa: E731
        for arm in arms:
            recs = []
            for t in steps:
                h_none = 0.2 + 0.6 * math.exp(-t / 10) + noise(1e-3)
                if arm == "lr0":
                    h = 0.8 + noise(1e-3)
                elif arm in METHODS and world != "nomanip":
                    h = 3 * h_none
                else:
                    h = h_none
                r = {"step": int(t), "rollout/entropy": h}
                if t % 4 == 0:
                    p1 = 1.2 - 0.5 * math.exp(min(h, 0.8)) + noise(2e-3)
                    if arm in METHODS:
                        p1 = 1.2 - 0.5 * math.exp(h_none) + noise(2e-3)
                        p1 += 0.2 if world == "effect" and t == 40 else 0.0
                    if arm == "random_reward":
                        p1 -= 0.2 if t == 40 else 0.0
                    r |= {"eval/pass@1": p1, "eval/greedy_acc": p1 + 0.1, "eval/entropy": h,
                          "probe/entropy": h}  # fmt: skip
                if arm in METHODS and t > 0:
                    r["activity/selected_tokens"] = 10.0 + noise(0.5)
                if arm == "none" and t in (0, 40):
                    good = world != "badlemma"
                    r |= {
                        "lemma/pass_frac": 1.0 if good else 5 / 6,
                        "probe3/r_sgd": 0.7 + noise(0.01),
                        "probe3/r_adam": 0.5 + noise(0.01),
                        "probe3/flip_sgd": 0.01 + noise(1e-3),
                        "probe3/top_minus_bottom": 0.01 + noise(1e-3),
                        "probe3/top_minus_random": 0.005 + noise(1e-3),
                    }
                if arm == "none" and t == 0:
                    r |= {"frontier/entropy": [0.8, 0.5, 0.3], "frontier/pass1": [0.2, 0.3, 0.35]}
                recs.append(r)
            last = recs[-1]["eval/pass@1"]
            evals = [
                {"step": 40, "split": "eval", "problem": f"p{k}", "n": n_eval,
                 "correct": n_eval if k < math.ceil(32 * last) else 0}
                for k in range(32)
            ]  # fmt: skip
            out.append(JobData(arm=arm, init=i, seed=0, records=recs, evals=evals))
    return out


def test_planted_effects_reach_every_verdict():
    spec = ST.build_spec("smoke")
    res = {k: r.verdict for k, r in evaluate_claims(spec.claims, _jobs("effect")).items()}
    assert set(res.values()) == {"reproduced"}, res
    null = {k: r.verdict for k, r in evaluate_claims(spec.claims, _jobs("null")).items()}
    assert null["c4a_kl_cov_holds_entropy"] == "reproduced"
    assert null["c4b_kl_cov_pass1"] == "not reproduced", null
    nomanip = {k: r.verdict for k, r in evaluate_claims(spec.claims, _jobs("nomanip")).items()}
    assert nomanip["c4a_kl_cov_holds_entropy"] == "not reproduced"
    assert {nomanip[f"c4b_kl_cov_{x}"] for x in ("pass1", "passk", "greedy")} == {"blocked"}
    bad = {k: r.verdict for k, r in evaluate_claims(spec.claims, _jobs("badlemma")).items()}
    assert bad["c3_lemma"] == "not reproduced"
    assert {v for k, v in bad.items() if k.startswith("c3_") and k != "c3_lemma"} == {"blocked"}
    few = {k: r.verdict for k, r in evaluate_claims(spec.claims, _jobs("effect", n=3)).items()}
    assert set(few.values()) <= {"inconclusive", "blocked"}


def test_full_spec_needs_the_pilot_and_pilot_never_evaluates_on_eval(tmp_path, monkeypatch):
    monkeypatch.setattr(ST, "HERE", tmp_path)
    spec = ST.build_spec("full")
    assert spec.config["pilot"] == "missing" and len(spec.inits) >= 8
    assert {a.name for a in spec.arms} >= {"none", "noclip", "entropy_bonus", "clip_cov",
                                            "kl_cov", "random_reward", "lr0"}  # fmt: skip
    assert ST.PRESETS["full"].eval_problems >= 512
    with pytest.raises(SystemExit, match="pilot"):
        ST.cli(["--preset", "full", "run", "--out", str(tmp_path / "x")])
    (tmp_path / "pilot.json").write_text(json.dumps({"settings": {"kl_cov": 0.1}}))
    chosen = ST.build_spec("full")
    assert chosen.config["settings"]["kl_cov"] == 0.1 and chosen.config_hash() != spec.config_hash()
    kl = chosen.arm("kl_cov").objective
    assert dict(kl.policy_kwargs)["kl_cov_ratio"] == 0.1
    assert (
        ST.PRESETS["pilot"].inits == (100, 101)
        and not ST.PRESETS["pilot"].rl.measure_entropy_change
    )


def test_planted_effects_full_claim_set(tmp_path, monkeypatch):
    monkeypatch.setattr(ST, "HERE", tmp_path)  # no pilot.json: the grid's defaults
    spec = ST.build_spec("full")
    arms = tuple(a.name for a in spec.arms)
    res = evaluate_claims(spec.claims, _jobs("effect", arms=arms, n_eval=8))
    assert {k: r.verdict for k, r in res.items() if r.verdict != "reproduced"} == {}
    assert {"c0_rl_beats_random_reward", "c4c_kl_cov_vs_noclip", "c4b_clip_cov_greedy"} <= set(res)
    null = evaluate_claims(spec.claims, _jobs("null", arms=arms, n_eval=8))
    assert {null[f"c4b_{m}_pass1"].verdict for m in METHODS} == {"not reproduced"}


def test_pilot_select_picks_the_smallest_setting_that_holds_entropy(tmp_path):
    from entropylab.study import Runner

    level = {"none": 0.2, "kl_cov-0": 0.25, "kl_cov-1": 0.35, "kl_cov-2": 0.5, "kl_cov-3": 0.6}
    level |= {f"entropy_bonus-{i}": 0.5 for i in range(4)}  # every setting holds: the smallest
    level |= {f"clip_cov-{i}": 0.21 + 0.01 * i for i in range(4)}  # none holds: the largest

    def fake_job(ctx):
        with ctx.step_logger(ctx.seeds[0]) as log:
            for s in range(1, 13):
                h = level[ctx.arm.name] + 0.001 * (ctx.init - 100)  # pilot inits 100-102
                log.log(s, {"rollout/entropy": h, "time/step_s": 0.01})
        return {}

    spec = dataclasses.replace(ST.build_spec("pilot"), steps=12)
    Runner(spec, fake_job, tmp_path / "pilot").run(progress=False)
    res = ST.pilot_select(tmp_path / "pilot", dest=tmp_path / "pilot.json")
    assert res["settings"] == {"entropy_bonus": 0.005, "clip_cov": 0.1, "kl_cov": 2e-2}
    assert res["detail"]["clip_cov"]["holds"] is False and res["detail"]["kl_cov"]["holds"]
    assert json.loads((tmp_path / "pilot.json").read_text())["settings"] == res["settings"]
