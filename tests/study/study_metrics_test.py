"""Metric schema, JSONL/gzip logs with resume, per-problem outcomes, pass@k, progress line."""

import gzip
import io
import math

import numpy as np
import pytest

from entropylab.runs import MetricsGapError
from entropylab.study import (
    EvalLog,
    Progress,
    StepLogger,
    compress_logs,
    eval_pass_at_k,
    from_trainer_record,
    pass_at_k,
    read_records,
)
from entropylab.study.metrics import validate_record


def test_validate_record():
    rec = validate_record(
        {
            "step": np.int64(3),
            "rollout/entropy": np.float32(0.5),
            "attn/entropy": (1.0, 2.0),
            "eval/pass@1": None,
        }
    )
    assert rec == {
        "step": 3,
        "rollout/entropy": 0.5,
        "attn/entropy": [1.0, 2.0],
        "eval/pass@1": None,
    }
    assert math.isnan(
        validate_record({"step": 0, "train/grad_norm": float("nan")})["train/grad_norm"]
    )  # a NaN stays NaN
    with pytest.raises(ValueError, match="namespace/name"):
        validate_record({"step": 1, "entropy": 0.3})
    with pytest.raises(TypeError, match="rollout/entropy"):
        validate_record({"step": 1, "rollout/entropy": "0.3"})
    with pytest.raises(TypeError, match="rollout/entropy"):
        validate_record({"step": 1, "rollout/entropy": [0.3]})
    with pytest.raises(ValueError, match="step"):
        validate_record({"step": -1})
    with pytest.raises(TypeError, match="bool"):
        validate_record({"step": 1, "x/flag": True})


def test_step_logger_resume_and_order(tmp_path):
    p = tmp_path / "m.jsonl"
    with StepLogger(p) as log:
        for s in range(1, 6):
            log.log(s, {"reward/acc": s / 10})
        with pytest.raises(ValueError, match="not after"):
            log.log(5, {"reward/acc": 0.0})
    with open(p, "a") as f:
        f.write('{"step": 6, "rew')  # torn last line of a killed writer
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["step"] for r in read_records(p)] == [1, 2, 3, 4, 5]
    before = p.read_bytes()
    with pytest.warns(UserWarning), pytest.raises(MetricsGapError, match="restored step 7"):
        StepLogger(p, resume_step=7)  # a checkpoint ahead of the log: history would be lost
    assert p.read_bytes() == before  # refused before the file was touched
    with pytest.warns(UserWarning, match="torn"), StepLogger(p, resume_step=3) as log:
        assert log.last_step == 3
        log.log(4, {"reward/acc": 0.9})
    recs = read_records(p)
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[-1]["reward/acc"] == 0.9


def test_tensorboard_is_optional_and_lazy(tmp_path):
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="tensorboardX"):
            StepLogger(tmp_path / "m.jsonl", tensorboard=True)
    else:
        with StepLogger(tmp_path / "m.jsonl", tensorboard=True) as log:
            log.log(1, {"reward/acc": 0.5})
        assert any((tmp_path / "tensorboard").iterdir())


def test_eval_log_and_pass_at_k(tmp_path):
    with EvalLog(tmp_path / "evals.jsonl") as ev:
        ev.log(
            10,
            "eval",
            ["a", "b", "c"],
            [0, 2, 4],
            4,
            difficulties=[2, 2, 3],
            greedy=[0.0, 1.0, 1.0],
        )
        with pytest.raises(ValueError, match="correct counts"):
            ev.log(10, "eval", ["a"], [5], 4)
        with pytest.raises(ValueError, match="shape"):
            ev.log(10, "eval", ["a", "b"], [1], 4)
    recs = read_records(tmp_path / "evals.jsonl")
    assert recs[1] == {
        "step": 10,
        "split": "eval",
        "problem": "b",
        "difficulty": 2,
        "n": 4,
        "correct": 2,
        "greedy": 1.0,
    }
    # pass@1 = mean(c/n) = (0 + .5 + 1)/3; pass@2 per problem 1 - C(n-c,2)/C(n,2): 0, 5/6, 1
    assert eval_pass_at_k(recs, 1) == pytest.approx(0.5)
    assert eval_pass_at_k(recs, 2) == pytest.approx((0 + 5 / 6 + 1) / 3)
    with pytest.raises(ValueError, match="no eval outcomes"):
        eval_pass_at_k(recs, 1, split="selection")


def test_pass_at_k_matches_the_combinatorial_formula():
    n = 8
    for c in range(n + 1):
        for k in range(1, n + 1):
            ref = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            assert pass_at_k([c], n, k)[0] == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError, match="k must be"):
        pass_at_k([1], 4, 5)


def test_compress_is_deterministic_and_readable(tmp_path):
    d = tmp_path / "jobs" / "a"
    with StepLogger(d / "metrics.jsonl") as log:
        log.log(1, {"reward/acc": 0.25})
    (d / "x.json").write_text("{}")
    before = (d / "metrics.jsonl").read_bytes()
    [gz] = compress_logs(tmp_path / "jobs")
    assert gz.name == "metrics.jsonl.gz" and not (d / "metrics.jsonl").exists()
    assert gzip.decompress(gz.read_bytes()) == before and (d / "x.json").exists()
    assert read_records(d / "metrics.jsonl") == [{"step": 1, "reward/acc": 0.25}]
    first = gz.read_bytes()
    (d / "metrics.jsonl").write_bytes(before)
    gz.unlink()
    assert compress_logs(tmp_path / "jobs")[0].read_bytes() == first  # mtime 0: same bytes
    with pytest.raises(FileExistsError, match="compressed"):
        StepLogger(d / "metrics.jsonl")
    with pytest.raises(FileNotFoundError):
        read_records(tmp_path / "none.jsonl")


def test_trainer_record_mapping():
    rec = {
        "pg/clipfrac": 0.1,
        "cov/clip_cov_frac": 0.02,
        "time/rollout_s": 1.0,
        "time/prepare_s": 0.5,
        "time/update_s": 2.0,
        "rollout/entropy": 0.4,
    }
    out = from_trainer_record(rec)
    assert out["activity/clipped_frac"] == 0.1 and out["activity/selected_frac"] == 0.02
    assert out["time/step_s"] == 3.5 and out["rollout/entropy"] == 0.4


def test_progress_line():
    buf = io.StringIO()
    bar = Progress(
        10,
        name="none init0 seed0",
        stream=buf,
        fields={"rollout/entropy": "H", "reward/acc": "acc"},
    )
    line = bar.update(4, {"rollout/entropy": 0.83149, "reward/acc": 0.4, "x/y": [1]})
    assert line.startswith("none init0 seed0  4/10 [########            ] H 0.831 acc 0.4")
    assert "ETA" in line and buf.getvalue().endswith("\n")  # not a terminal: one line each
