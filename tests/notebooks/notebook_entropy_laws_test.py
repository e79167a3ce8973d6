"""notebooks/entropy_laws.ipynb: figures present, fits equal the study's summary.json.

Runs the notebook on the committed study results (its default) and on a smoke-sized copy of
them (3 RL steps, evals at steps 0 and 2, as the study's ``smoke`` preset writes: too short for
any fit, so the notebook's "no fit" paths run), and checks the committed notebook's own outputs.
"""

import base64
import gzip
import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"

DATA = ROOT / "experiments" / "entropy_mechanism" / "results" / "tiny"
NAME = "entropy_laws.ipynb"
TITLES = {
    "Entropy vs RL step",
    "Held-out pass@1 vs RL step",
    "R = −a·exp(H) + b, arm 'none'",
    "R = −a·exp(H) + b, entropy-control arms",
    "Covariance theorem: predicted vs observed",
    "Pearson r, predicted vs observed ΔH",
}
LAW = re.compile(r"law none/seed(\d+): a=(\S+) b=(\S+) r2=(\S+) ceiling=(\S+) n=(\d+)")
COV = re.compile(r"cov (\w+)/seed(\d+) (same batch|next batch): r=(\S+) slope=(\S+)")


def _check_fits_equal_summary(text: str, summary: dict) -> None:
    law = {int(m[0]): m for m in LAW.findall(text)}
    rows = [r for r in summary["law_none"] if "error" not in r]
    assert rows, "the committed summary has no law fit to compare with"
    assert sorted(law) == sorted(r["seed"] for r in rows)
    for r in rows:
        _, a, b, r2, ceiling, n = law[r["seed"]]
        got = [float(a), float(b), float(r2), float(ceiling)]
        assert got == pytest.approx([r["a"], r["b"], r["r2"], r["ceiling"]], rel=1e-5, abs=1e-6)
        assert int(n) == r["n"]
    cov = {(m[0], int(m[1]), m[2]): (float(m[3]), float(m[4])) for m in COV.findall(text)}
    rows = [r for r in summary["cov_check"] if "error" not in r]
    assert rows and len(cov) == len(rows)
    for r in rows:
        got = cov[(r["arm"], r["seed"], r["observed"])]
        assert got == pytest.approx((r["pearson_r"], r["slope"]), rel=1e-5, abs=1e-9)
    diffs = [float(x) for x in re.findall(r"max \|difference\| = (\S+)", text)]
    assert len(diffs) == 1 + len(summary["law_none"]) and max(diffs) < 1e-9


def _check_png(png: list[str], n: int) -> None:
    assert len(png) == n
    for b64 in png:
        raw = base64.b64decode(b64)
        assert raw.startswith(b"\x89PNG") and 5_000 < len(raw) < 150_000


def test_committed_notebook_shows_figures_and_the_study_fits(notebook_outputs):
    """The repository's notebook holds its outputs, made from the committed data."""
    nb = nbformat.read(NOTEBOOKS / NAME, as_version=4)
    png, text = notebook_outputs(nb)
    _check_png(png, 3)
    assert "4 runs in experiments/entropy_mechanism/results/tiny" in text
    _check_fits_equal_summary(text, json.loads((DATA / "summary.json").read_text()))
    src = "".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "matplotlib.use(" not in src and "%matplotlib" not in src


def test_runs_on_committed_data_with_figures(execute_notebook):
    shown = execute_notebook(NAME)
    _check_png(shown.png, 3)
    assert len(shown.figures) == 3
    assert TITLES <= shown.titles()
    assert {"rollout entropy (nats/token)", "held-out pass@1", "RL step"} <= shown.labels()
    _check_fits_equal_summary(shown.text, json.loads((DATA / "summary.json").read_text()))


def _smoke_copy(dst: Path, steps: int = 3) -> None:
    """The committed logs cut to the smoke preset's length (records of steps 0..steps)."""
    for log in DATA.glob("*/seed*/metrics.jsonl.gz"):
        with gzip.open(log, "rt") as f:
            recs = [json.loads(line) for line in f if line.strip()]
        keep = [r for r in recs if r["step"] <= steps]
        out = dst / log.parent.parent.name / log.parent.name / "metrics.jsonl"
        out.parent.mkdir(parents=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in keep))


def test_runs_on_smoke_sized_output(execute_notebook, tmp_path):
    _smoke_copy(tmp_path)
    shown = execute_notebook(NAME, env={"ENTROPYLAB_STUDY_DIR": str(tmp_path)})
    _check_png(shown.png, 3)
    assert TITLES <= shown.titles()
    assert f"4 runs in {tmp_path}" in shown.text
    assert "none/seed0: too few evals for a fit" in shown.text
    assert "none/seed0: too few steps for the covariance check" in shown.text
    assert not LAW.findall(shown.text)
