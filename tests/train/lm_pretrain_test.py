"""End-to-end smoke run of experiments/lm_pretrain (the preset the test suite runs)."""

import importlib.util
import json
import math
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from entropylab.train.loop import WALL_CLOCK_METRICS
from entropylab.train.metrics import read_jsonl

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "lm_pretrain_run", ROOT / "experiments" / "lm_pretrain" / "run.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_smoke_preset_end_to_end(tmp_path, capsys):
    mod = _load_script()
    out = tmp_path / "smoke"
    summary = mod.main(["--preset", "smoke", "--out", str(out), "--seed", "1", "--no-progress"])
    for name in ("metrics.jsonl", "loss_curve.png", "summary.json", "params.npz"):
        assert (out / name).is_file(), name
    records = read_jsonl(out / "metrics.jsonl")
    preset = mod.PRESETS["smoke"]
    assert [r["step"] for r in records] == list(range(1, preset.steps + 1))
    assert records[-1]["loss"] < records[0]["loss"]
    assert "eval_loss" in records[preset.eval_every - 1]
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["heldout_ppl"] == pytest.approx(math.exp(on_disk["heldout_loss"]))
    assert on_disk["heldout_loss"] == summary["heldout_loss"] < math.log(256)
    printed = capsys.readouterr().out
    assert f"perplexity {summary['heldout_ppl']:.4f}" in printed
    # the saved parameters reload into the preset's model, unchanged
    model = mod.load_pretrained(out, "smoke")
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    with np.load(out / "params.npz") as saved:
        assert sorted(a.size for a in saved.values()) == sorted(x.size for x in leaves)
        assert sum(a.size for a in saved.values()) == summary["num_params"]
        emb = np.asarray(model.embed.embedding[...])
        np.testing.assert_array_equal(emb, saved["embed/embedding"])
    with pytest.raises(FileNotFoundError, match="params.npz"):
        mod.load_pretrained(tmp_path / "nothing", "smoke")
    with pytest.raises(SystemExit):
        mod.main(["--preset", "huge"])

    # safe outputs: normal permissions, a manifest, no temp files
    assert stat.S_IMODE((out / "summary.json").stat().st_mode) & 0o044 == 0o044
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 1 and manifest["status"] == "complete" and manifest["config_hash"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    before = (out / "metrics.jsonl").read_text()
    # --seed 0 into the seed-1 directory is refused, saying what differs; nothing is touched
    with pytest.raises(SystemExit):
        mod.main(["--preset", "smoke", "--out", str(out), "--seed", "0", "--no-progress"])
    assert "seed differs: directory has 1, this run 0" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before
    # the same command again resumes the finished run: no step rerun, history intact
    again = mod.main(["--preset", "smoke", "--out", str(out), "--seed", "1", "--no-progress"])
    assert again["resumed_from_step"] == preset.steps
    assert (out / "metrics.jsonl").read_text() == before
    assert again["heldout_loss"] == summary["heldout_loss"]
    # bad --out values
    for bad, msg in (("", "--out must be a non-empty path"), (str(out / "summary.json"), "not a")):
        with pytest.raises(SystemExit):
            mod.main(["--preset", "smoke", "--out", bad, "--no-progress"])
        assert msg in capsys.readouterr().err
    # SIGTERM in a subprocess at step 5 -> exit 143 after a checkpoint; the rerun continues
    # and its metrics file equals the uninterrupted in-process run (determinism across runs)
    pre = tmp_path / "preempted"
    driver = (
        "import os, signal, sys\n"
        "from entropylab.train import data\n"
        "orig = data.LMBatches.__next__\n"
        "def nxt(self):\n"
        "    self._n = getattr(self, '_n', 0) + 1\n"
        "    if self._n == 5: os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return orig(self)\n"
        "data.LMBatches.__next__ = nxt\n"
        "from experiments.lm_pretrain import run\n"
        "run.main(sys.argv[1:])\n"
    )
    args = ["--preset", "smoke", "--out", str(pre), "--seed", "1", "--no-progress"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", driver, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-2000:]
    assert "Rerun the same command to continue" in proc.stderr
    assert json.loads((pre / "manifest.json").read_text())["status"] == "interrupted"
    assert [r["step"] for r in read_jsonl(pre / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.lm_pretrain.run", *args, "--resume"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    def strip(recs):
        return [{k: v for k, v in r.items() if k not in WALL_CLOCK_METRICS} for r in recs]

    assert strip(read_jsonl(pre / "metrics.jsonl")) == strip(read_jsonl(out / "metrics.jsonl"))
    resumed = json.loads((pre / "summary.json").read_text())
    assert resumed["resumed_from_step"] == 5 and resumed["heldout_loss"] == summary["heldout_loss"]
