"""notebooks/entropy_mechanism_full.ipynb: the full study's figures, from its committed logs.

The notebook recomputes the arm table from the per-step logs and asserts it equals the study's
``summary.json``; these tests run it on the committed data and check the committed notebook's
own outputs (figures inline, no backend forced).
"""

import base64
import json
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[2]
NAME = "entropy_mechanism_full.ipynb"
DATA = ROOT / "experiments" / "entropy_mechanism" / "results" / "full"
TITLES = {
    "Entropy vs RL step",
    "Held-out pass@1 vs RL step",
    "RL vs temperature sharpening",
    "Entropy held by each method (last 10 steps)",
}


def _check(png, text):
    assert len(png) == 3
    for b64 in png:
        raw = base64.b64decode(b64)
        assert raw.startswith(b"\x89PNG") and 5_000 < len(raw) < 150_000
    assert "56 runs in experiments/entropy_mechanism/results/full" in text
    assert "arm table: every mean equals summary.json's" in text
    summary = json.loads((DATA / "summary.json").read_text())
    for name, c in summary["claims"].items():  # every verdict, as the study wrote it
        assert f"{name}: {c['label']}" in text
    assert "in 8 of 8 initialisations" in text


def test_committed_notebook_shows_the_full_study(notebook_outputs):
    nb = nbformat.read(ROOT / "notebooks" / NAME, as_version=4)
    png, text = notebook_outputs(nb)
    _check(png, text)
    src = "".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "matplotlib.use(" not in src and "%matplotlib" not in src


def test_runs_on_the_committed_full_study(execute_notebook):
    shown = execute_notebook(NAME)
    _check(shown.png, shown.text)
    assert len(shown.figures) == 3
    assert TITLES <= shown.titles()
    assert {"RL step", "held-out pass@1", "eval-sample entropy (nats/token)"} <= shown.labels()
