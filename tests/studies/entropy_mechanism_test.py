"""Integration: the entropy_mechanism study's smoke preset end to end, then the notebook on it."""

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from experiments.entropy_mechanism import run as study

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("em_smoke")
    study.main(["--preset", "smoke", "--out", str(out), "--no-progress"])
    return out


def test_smoke_study_outputs(smoke_out):
    summary = json.loads((smoke_out / "summary.json").read_text())
    assert set(summary["arms"]) == {"none", "entropy_bonus", "clip_cov", "kl_cov"}
    for arm in summary["arms"]:
        lines = (smoke_out / arm / "seed0" / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 4  # eval at step 0 + 3 RL steps
    assert (smoke_out / "entropy_mechanism.png").stat().st_size > 0
    assert "| none |" in (smoke_out / "RESULTS.md").read_text()


def test_notebook_runs_headless_on_smoke_output(smoke_out, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / "entropy_laws.ipynb", as_version=4)
    monkeypatch.setenv("ENTROPYLAB_STUDY_DIR", str(smoke_out))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT / "notebooks")}},
    )
    client.execute()
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )
    assert "4 runs in" in text


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="unknown preset"):
        study.preset("huge")
    assert os.path.exists(ROOT / "experiments" / "entropy_mechanism" / "README.md")
