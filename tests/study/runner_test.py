"""Runner: job list, CRN seeds, shards, resume, manifests, refusal to mix, plan."""

import json

import pytest

from entropylab.study import Arm, Runner, StudySpec, crn_seed
from entropylab.study.runner import format_plan, parse_shard, shard_jobs

from .synthetic import outcome_claim, planted_job, spec

OUTCOME = {"base": 0.0, "treat": 0.1}
ENTROPY = {"base": 0.2, "treat": 0.4}


def test_job_list_and_crn_seeds():
    sp = spec(3, seeds=(0, 1))
    jobs = sp.jobs()
    assert len(jobs) == 3 * 2 * 2 and sp.n_results == 12
    assert [j.init for j in jobs[:4]] == [0, 0, 0, 0]  # init-major
    assert {(j.arm, j.seeds) for j in jobs[:4]} == {
        ("base", (0,)),
        ("base", (1,)),
        ("treat", (0,)),
        ("treat", (1,)),
    }
    grouped = StudySpec(
        name="g", arms=sp.arms, inits=(0, 1), seeds=(0, 1, 2), steps=2, group_seeds=True
    )
    assert [j.seeds for j in grouped.jobs()] == [(0, 1, 2)] * 4
    # the data seed depends on (init, seed) only: every arm sees the same data
    assert crn_seed(1, 0) == crn_seed(1, 0) != crn_seed(0, 1)
    assert crn_seed(3, 2) == 0x7FFFFFFF & int(
        __import__("hashlib").sha256(b"crn|3|2").hexdigest()[:8], 16
    )


def test_shards_partition_the_jobs():
    jobs = spec(5).jobs()
    for n in (1, 2, 3, 4, 10, 13):
        parts = [shard_jobs(jobs, (i, n)) for i in range(1, n + 1)]
        assert [j for p in parts for j in p] == jobs  # contiguous, disjoint, complete
        sizes = [len(p) for p in parts]
        assert max(sizes) - min(sizes) <= 1
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "2", "a/b"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_spec_validation():
    with pytest.raises(ValueError, match="arm names must be unique"):
        StudySpec(name="x", arms=(Arm(name="a"), Arm(name="a")), inits=(0,), steps=1)
    with pytest.raises(ValueError, match="inits"):
        StudySpec(name="x", arms=(Arm(name="a"),), inits=(0, 0), steps=1)
    with pytest.raises(ValueError, match="arm name"):
        Arm(name="a/b")
    with pytest.raises(ValueError, match="unknown arms"):
        from .synthetic import outcome_claim

        spec(2, claims=[outcome_claim(baseline="ghost")])


def test_shards_resume_and_manifests(tmp_path):
    sp = spec(3)
    calls = []
    job = planted_job(OUTCOME, ENTROPY, 0.01)

    def counted(ctx):
        calls.append((ctx.job.label, ctx.resume, ctx.data_seed(ctx.seeds[0])))
        return job(ctx)

    out = tmp_path / "run"
    ran1 = Runner(sp, counted, out).run(shard=(1, 2), progress=False)
    ran2 = Runner(sp, counted, out).run(shard="2/2", progress=False)
    assert sorted(ran1 + ran2) == sorted(j.label for j in sp.jobs())
    assert Runner(sp, counted, out).run(shard=(1, 1), progress=False) == []  # all done
    assert len(calls) == 6 and not any(r for _, r, _ in calls)
    # common random numbers: both arms of an init got the same data seed
    seeds = {}
    for label, _, ds in calls:
        seeds.setdefault(label.split("/")[1], set()).add(ds)
    assert all(len(v) == 1 for v in seeds.values())
    study = json.loads((out / "study.json").read_text())
    assert study["config_hash"] == sp.config_hash() and study["claims_hash"] == sp.claims_hash()
    for k in ("git", "versions", "cpu", "code_version", "jobs"):
        assert k in study
    shard = json.loads((out / "shards" / "shard-2-of-2.json").read_text())
    assert shard["status"] == "done" and shard["ran"] == ran2 and shard["wall_s"] >= 0
    res = json.loads((out / "jobs" / "treat" / "init0" / "seed0" / "result.json").read_text())
    assert res["config_hash"] == sp.config_hash() and res["result"] == {"final": 1.0}
    assert Runner(sp, counted, out).status()["todo"] == []


def test_partial_job_is_resumed_or_refused(tmp_path):
    sp = spec(1)
    out = tmp_path / "run"
    flags = []

    def crash_once(ctx):
        flags.append(ctx.resume)
        if len(flags) == 1:
            ctx.dir(0).joinpath("metrics.jsonl").write_text("")
            raise RuntimeError("killed")
        return planted_job(OUTCOME, ENTROPY, 0.01)(ctx)

    with pytest.raises(RuntimeError, match="killed"):
        Runner(sp, crash_once, out).run(progress=False)
    with pytest.raises(FileExistsError, match="partial outputs"):
        Runner(sp, crash_once, out).run(progress=False, resume=False)
    Runner(sp, crash_once, out).run(progress=False)
    assert flags == [False, True, False]  # the partial job resumed, the next one started fresh


def test_refuses_to_mix_configs_commits_and_foreign_dirs(tmp_path):
    out = tmp_path / "run"
    job = planted_job(OUTCOME, ENTROPY, 0.01)
    Runner(spec(2), job, out).run(shard=(1, 2), progress=False)
    with pytest.raises(RuntimeError, match="refusing to mix shards.*config_hash"):
        Runner(spec(2, steps=7), job, out).run(shard=(2, 2), progress=False)
    study = json.loads((out / "study.json").read_text())
    study["git_sha"] = "0" * 40
    (out / "study.json").write_text(json.dumps(study))
    with pytest.raises(RuntimeError, match="git_sha"):
        Runner(spec(2), job, out).run(shard=(2, 2), progress=False)
    # the same code version at another commit is accepted only when asked for
    Runner(spec(2), job, out, allow_other_commit=True).run(shard=(2, 2), progress=False)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        Runner(spec(2), job, tmp_path / "foreign").run(progress=False)


def test_group_seeds_job_returns_per_seed_results(tmp_path):
    sp = StudySpec(
        name="g",
        arms=(Arm(name="base"), Arm(name="treat")),
        inits=(0,),
        seeds=(0, 1),
        steps=3,
        group_seeds=True,
    )
    out = tmp_path / "run"
    Runner(sp, planted_job(OUTCOME, ENTROPY, 0.01), out).run(progress=False)
    for arm in ("base", "treat"):
        for s in (0, 1):
            assert (out / "jobs" / arm / "init0" / f"seed{s}" / "result.json").exists()

    def bad(ctx):
        return {"x": 1}

    with pytest.raises(ValueError, match="grouped seeds"):
        Runner(sp, bad, tmp_path / "bad").run(progress=False)


def test_plan_predicts_from_logged_step_times(tmp_path):
    sp = spec(4, steps=40)  # 8 jobs x 40 steps x 0.25 s = 80 s plus a small fixed cost
    plan = Runner(sp, planted_job(OUTCOME, ENTROPY, 0.01), tmp_path / "run").plan(
        calibration_steps=3, budget_s=30.0
    )
    assert plan["per_step_s"] == 0.25 and plan["jobs"] == 8
    assert 80.0 <= plan["total_s"] < 80.0 + 8 * 2.0
    assert plan["shards"] == 3 and plan["fits_budget"]  # 80 s / 30 s budget -> 3 shards
    assert max(plan["per_shard_s"]) <= 30.0
    assert "--shard 3/3" in format_plan(plan)
    assert not (tmp_path / "run").exists()  # calibration ran in a temp directory

    def with_extra(ctx):  # 5 s of work that only the calibrated job's arm ("base") does
        planted_job(OUTCOME, ENTROPY, 0.01)(ctx)
        return {"time/arm_extra_s": 5.0 if ctx.arm.name == "base" else 0.0}

    plan = Runner(sp, with_extra, tmp_path / "run2").plan(calibration_steps=3, budget_s=1e4)
    # 8 jobs x 10 s + 4 "base" jobs x 5 s; the 5 s is not also charged to the other arm
    assert plan["arm_extra_s"] == 5.0 and plan["arm_extra_arm"] == "base"
    assert 100.0 <= plan["total_s"] < 100.0 + 8 * 2.0 and plan["shards"] == 1
    assert "5 s more per job of arm base" in format_plan(plan)


def test_command_line_run_status_analyse(tmp_path, capsys):
    from entropylab.study import main

    from .synthetic import outcome_claim

    sp = spec(6, claims=[outcome_claim()])
    job = planted_job(OUTCOME, ENTROPY, 0.01)
    out = str(tmp_path / "run")
    assert main(sp, job, ["run", "--out", out, "--shard", "1/2", "--quiet"]) == 0
    assert "6 to do" in capsys.readouterr().out
    main(sp, job, ["status", "--out", out, "--json"])
    st = json.loads(capsys.readouterr().out)
    assert len(st["todo"]) == 6 and len(st["done"]) == 6 and st["started"] == []
    main(sp, job, ["status", "--out", out])
    text = capsys.readouterr().out
    assert text.startswith("6 of 12 jobs done (50%)") and "to do: " in text, text
    assert "  base     3/6   [##########          ]" in text, text
    main(sp, job, ["run", "--out", out, "--shard", "2/2", "--quiet"])
    capsys.readouterr()
    main(sp, job, ["analyse", "--out", out, "--no-plots", "--compress"])
    assert capsys.readouterr().out.strip() == "outcome: reproduced"
    assert not list((tmp_path / "run").rglob("*.jsonl"))  # all logs gzipped
    assert len(list((tmp_path / "run").rglob("metrics.jsonl.gz"))) == 12
    with pytest.raises(SystemExit):
        main(sp, job, ["run", "--out", out, "--shard", "3/2"])


def test_per_arm_steps_result_metrics_and_cli_hooks(tmp_path, capsys):
    """extras['steps'] sets an arm's step count in run and plan; 'result:<key>' claims and
    summary keys read the job's returned dict; main forwards summary_keys / after_analyse."""
    from entropylab.study import Claim, main

    with pytest.raises(ValueError, match=r"extras\['steps'\]"):
        Arm(name="bad", extras={"steps": -1})
    sp = StudySpec(
        name="mixed",
        arms=(Arm(name="base", extras={"steps": 0}), Arm(name="treat")),
        inits=tuple(range(6)),
        steps=4,
        claims=(
            Claim(name="res", statement="treat's returned score beats base's",
                  metric="result:score", test="superiority", arm="treat", baseline="base",
                  effect_of_interest=0.5),
        ),
    )  # fmt: skip
    seen = {}

    def job(ctx):
        seen[(ctx.arm.name, ctx.init)] = ctx.steps
        with ctx.step_logger(0) as log:
            for s in range(1, ctx.steps + 1):
                log.log(s, {"time/step_s": 1.0})
        return {"score": (2.0 if ctx.arm.name == "treat" else 0.0) + 0.01 * ctx.init}

    plan = Runner(sp, job, tmp_path / "p").plan(calibration_steps=2)
    assert 24.0 <= plan["total_s"] < 24.0 + 12 * 2.0  # 6 treat jobs x 4 steps x 1 s; base: 0
    out, calls = tmp_path / "run", []
    assert main(sp, job, ["run", "--out", str(out), "--quiet"]) == 0
    assert {k: v for k, v in seen.items()} == {
        **{("base", i): 0 for i in range(6)},
        **{("treat", i): 4 for i in range(6)},
    }
    capsys.readouterr()
    main(sp, job, ["analyse", "--out", str(out), "--no-plots"], summary_keys=["result:score"],
         after_analyse=lambda s, o, summ, args: calls.append((o, summ["arms"])))  # fmt: skip
    assert capsys.readouterr().out.strip() == "res: reproduced"
    ((o, arms),) = calls
    assert o == out and arms["treat"]["result:score"]["mean"] == pytest.approx(2.025)
    assert arms["base"]["result:score"]["n"] == 6
    # before_analyse fails first: exit 2 with its message, and no output is (re)written
    (out / "RESULTS.md").unlink()

    def refuse(spec, o, args):
        raise ValueError(f"readme: {args.readme} has no tables block")

    with pytest.raises(SystemExit, match="2"):
        main(sp, job, ["analyse", "--out", str(out), "--readme", "R.md"], before_analyse=refuse)
    assert "R.md has no tables block" in capsys.readouterr().err
    assert not (out / "RESULTS.md").exists()
    with pytest.raises(ValueError, match="trend claim needs a logged"):
        Claim(name="t", statement="x", metric="result:score", test="trend", arm="treat",
              effect_of_interest=0.1)  # fmt: skip


def test_snapshot_copies_finished_jobs_and_resumes_there(tmp_path):
    """snapshot: finished seed dirs only (logs gzipped, no checkpoints or locks), refreshed as
    shards finish; refuses another run; a copy of it resumes (done jobs skipped) and analyses
    like the run itself."""
    import shutil

    from entropylab.study import analyse, main
    from entropylab.study.runner import snapshot

    sp = spec(3, claims=[outcome_claim()])
    job = planted_job({"base": 0.0, "treat": 0.1}, {"base": 0.2, "treat": 0.6}, 0.02)
    run, snap = tmp_path / "run", tmp_path / "snap"
    Runner(sp, job, run).run(shard=(1, 2), progress=False)
    unfinished = run / "jobs" / "base" / "init2" / "seed0"  # in progress: logs, no result
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "metrics.jsonl").write_text('{"step": 1}\n')
    (run / "jobs/treat/init0/seed0/.lock").write_text("123")
    assert snapshot(run, snap) == {"jobs_copied": 3, "jobs_expected": 6}
    files = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file())
    assert "study.json" in files and "shards/shard-1-of-2.json" in files
    assert not any("checkpoints" in f or ".lock" in f or "init2" in f for f in files), files
    done = [f for f in files if f.startswith("jobs/")]
    assert len([f for f in done if f.endswith("result.json")]) == 3
    assert all(f.endswith((".jsonl.gz", "result.json")) for f in done), done
    first = {f: (snap / f).read_bytes() for f in done}
    shutil.rmtree(unfinished)
    Runner(sp, job, run).run(shard=(2, 2), progress=False)
    assert main(sp, job, ["snapshot", "--out", str(run), "--to", str(snap)]) == 0
    assert all((snap / f).read_bytes() == b for f, b in first.items())  # same bytes again
    assert len(list(snap.rglob("result.json"))) == 6
    a_run = analyse(sp, run, plots=False)["claims"]
    a_snap = analyse(sp, snap, plots=False)["claims"]
    assert a_run == a_snap and a_run["outcome"]["n"] == 3
    # a copy of the snapshot resumes: nothing left to run
    again = tmp_path / "again"
    shutil.copytree(snap, again)
    assert Runner(sp, job, again).run(progress=False) == []
    # another run is refused, as is a foreign folder
    other = tmp_path / "other"
    Runner(spec(2), job, other).run(progress=False)
    with pytest.raises(RuntimeError, match="refusing to mix runs"):
        snapshot(other, snap)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="no study.json"):
        snapshot(run, tmp_path / "junk")
