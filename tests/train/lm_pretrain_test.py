"""End-to-end smoke run of experiments/lm_pretrain (the preset the test suite runs)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

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
