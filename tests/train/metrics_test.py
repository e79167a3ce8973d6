"""Tests for entropylab.train.metrics: JSONL records, resume truncation, progress bar."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from entropylab.train.metrics import MetricWriter, ProgressBar, read_jsonl, to_python


def test_to_python():
    assert to_python(jnp.float32(1.5)) == 1.5 and isinstance(to_python(jnp.float32(1.5)), float)
    assert to_python(np.int32(3)) == 3
    assert to_python(jnp.arange(3.0)) == [0.0, 1.0, 2.0]


def test_writer_records_and_resume(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricWriter(path, tensorboard=False) as w:
        for s in range(1, 6):
            w.write(s, {"loss": jnp.float32(s / 2), "attn_entropy": jnp.array([1.0, 2.0])})
    recs = read_jsonl(path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[2] == {"step": 3, "loss": 1.5, "attn_entropy": [1.0, 2.0]}
    with open(path, "a") as f:
        f.write('{"step": 6, "loss"')  # torn line from a crash
    with pytest.warns(UserWarning, match="metrics.jsonl:6: dropping a torn last line"):
        w = MetricWriter(path, resume_step=3, tensorboard=False)
    with w:
        w.write(4, {"loss": 9.0})
    recs = read_jsonl(path)
    assert [r["step"] for r in recs] == [1, 2, 3, 4] and recs[-1]["loss"] == 9.0
    with MetricWriter(path, tensorboard=False):  # fresh run truncates
        pass
    assert path.read_text() == ""
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_writer_nan_is_valid_json_for_python(tmp_path):
    path = tmp_path / "m.jsonl"
    with MetricWriter(path, tensorboard=False) as w:
        w.write(1, {"loss": float("nan")})
    assert np.isnan(json.loads(path.read_text())["loss"])


def test_progress_bar_runs(capsys):
    bar = ProgressBar(3, desc="t")
    bar.update(1, loss=1.0)
    bar.close()
    ProgressBar(3, enabled=False).update(1)
