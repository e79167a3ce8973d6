"""Helpers for the notebook tests: execute a notebook headless and read back what it showed.

Fixtures: ``notebook_outputs(nb)`` → (base64 PNGs, printed text) of a notebook;
``execute_notebook(name, env)`` runs the notebook with ``notebooks/execute.py`` (nbclient, a fresh
``python3`` kernel, ``MPLBACKEND`` removed so ipykernel's inline backend draws) on a copy with one
instrumentation cell in front that records every matplotlib ``Figure`` created, and one at the
end that prints each figure's axes titles and labels as JSON. Returns ``Shown``: the ``image/png``
outputs, the printed text and the recorded figures (``[{"titles": [...], "xlabels": [...],
"ylabels": [...]}]``, one per figure, in creation order).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"

_RECORD = """\
import matplotlib.figure as _mf
_h16_figures = []
_h16_init = _mf.Figure.__init__
def _h16_record(self, *a, **k):
    _h16_init(self, *a, **k)
    _h16_figures.append(self)
_mf.Figure.__init__ = _h16_record
"""

_REPORT = """\
import json as _json
print("FIGURES=" + _json.dumps([
    {"titles": [a.get_title() for a in f.axes], "xlabels": [a.get_xlabel() for a in f.axes],
     "ylabels": [a.get_ylabel() for a in f.axes]}
    for f in _h16_figures
]))
"""


@dataclasses.dataclass
class Shown:
    png: list[bytes]
    text: str
    figures: list[dict]

    def titles(self) -> set[str]:
        return {t for f in self.figures for t in f["titles"] if t}

    def labels(self) -> set[str]:
        return {t for f in self.figures for t in f["xlabels"] + f["ylabels"] if t}


def outputs(nb) -> tuple[list[str], str]:
    """(base64 PNGs, concatenated stream text) of a notebook's code cells."""
    png, text = [], []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if "image/png" in data:
                png.append(data["image/png"])
            if o.get("output_type") == "stream":
                text.append(o.get("text", ""))
    return png, "".join(text)


def _executor():
    spec = importlib.util.spec_from_file_location("nb_execute", NOTEBOOKS / "execute.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def notebook_outputs():
    """``outputs(nb) -> (base64 PNGs, printed text)`` of a notebook's code cells."""
    return outputs


@pytest.fixture(scope="session")
def execute_notebook():
    ex = _executor()

    def run(name: str, env: dict | None = None) -> Shown:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nb.cells.insert(0, nbformat.v4.new_code_cell(_RECORD))
        nb.cells.append(nbformat.v4.new_code_cell(_REPORT))
        env = {"JAX_PLATFORMS": "cpu", **(env or {})}
        done = ex.execute(nb, cwd=NOTEBOOKS, timeout=300, env=env)
        png, text = outputs(done)
        line = [s for s in text.splitlines() if s.startswith("FIGURES=")][-1]
        return Shown(png=png, text=text, figures=json.loads(line.removeprefix("FIGURES=")))

    return run
