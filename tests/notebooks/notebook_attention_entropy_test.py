"""notebooks/attention_entropy.ipynb: figures from both studies' outputs, and the fallback.

The Entropy-ABF smoke output is made by the study itself (``--preset smoke run``, 2 inits);
the entropy-guided-attention output is made the way that study writes its per-job files
(``entropy_arrays`` on a row-entropy array, saved as ``attn_entropy.npz`` next to a
``result.json``), so the notebook is checked against both scripts' real formats. The notebook
also runs on empty folders (it must say there is nothing to plot, and draw nothing), and the
committed notebook must carry figures of the committed data.
"""

import base64
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest

from experiments.entropy_abf import study as EABF

ROOT = Path(__file__).resolve().parents[2]
NAME = "attention_entropy.ipynb"
ABF_TITLES = {
    "Attention entropy vs context, pre-trained RoPE",
    "layer 0",
    "Held-out perplexity by position",
    "Passkey retrieval (teacher-forced)",
}
EGA_TITLES = {"sm", "baseline"}


def _check_png(png, n):
    assert len(png) == n
    for b64 in png:
        raw = base64.b64decode(b64)
        assert raw.startswith(b"\x89PNG") and 3_000 < len(raw) < 200_000


@pytest.fixture(scope="module")
def smoke_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ae_smoke")
    abf = base / "abf"
    mp = pytest.MonkeyPatch()
    mp.setenv("ENTROPYLAB_WARMSTARTS", str(base / "ws"))
    try:
        assert EABF.cli(["--preset", "smoke", "run", "--out", str(abf), "--quiet"]) == 0
        assert EABF.cli(["--preset", "smoke", "analyse", "--out", str(abf), "--no-plots"]) == 0
    finally:
        mp.undo()
    from experiments.entropy_guided_attention import study as EGA

    ega = base / "ega"
    rng = np.random.default_rng(0)
    n_layers, n_heads, t = 3, 4, 16
    ln = np.log(np.arange(t) + 1.0)
    for arm, level in (("baseline", 0.5), ("sm", 0.05)):
        for init in (0, 1):
            d = ega / "jobs" / arm / f"init{init}" / "seed0"
            d.mkdir(parents=True)
            frac = np.clip(level + 0.1 * rng.normal(size=(n_layers, n_heads, 1)), 0, 1)
            np.savez(d / "attn_entropy.npz", **EGA.entropy_arrays(frac * ln))
            (d / "result.json").write_text(json.dumps({"arm": arm, "init": init, "seed": 0}))
    return abf, ega


def test_runs_on_smoke_outputs_with_figures(execute_notebook, smoke_dirs):
    abf, ega = smoke_dirs
    shown = execute_notebook(NAME, env={"ENTROPYLAB_EABF_DIR": str(abf),
                                        "ENTROPYLAB_EGA_DIR": str(ega)})  # fmt: skip
    _check_png(shown.png, 7)
    titles = shown.titles()
    assert all(any(w in t for t in titles) for w in ABF_TITLES | EGA_TITLES), titles
    assert {"context tokens n", "attention entropy (nats)", "fraction of heads"} <= shown.labels()
    spec = EABF.build_spec("smoke")
    for c in spec.claims:  # the verdicts printed are the study's summary.json
        label = json.loads((abf / "summary.json").read_text())["claims"][c.name]["label"]
        assert f"verdict {c.name}: {label}" in shown.text
    assert "Entropy-guided attention: 2 arms" in shown.text


def test_says_so_when_a_study_has_no_output(execute_notebook, tmp_path):
    shown = execute_notebook(NAME, env={"ENTROPYLAB_EABF_DIR": str(tmp_path / "a"),
                                        "ENTROPYLAB_EGA_DIR": str(tmp_path / "b")})  # fmt: skip
    assert shown.png == [] and shown.figures == []
    assert "Entropy-ABF: no committed study output" in shown.text
    assert "Entropy-guided attention: no committed study output" in shown.text


def test_committed_notebook_shows_the_committed_data(notebook_outputs):
    """The committed outputs are those of the data they name: the verdicts printed are the
    committed summary.json's, the arms shown exist, and the figure count matches what was
    found (a study committed after the notebook was last executed shows as absent)."""
    nb = nbformat.read(ROOT / "notebooks" / NAME, as_version=4)
    png, text = notebook_outputs(nb)
    src = "".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "matplotlib.use(" not in src and "%matplotlib" not in src
    abf_shown = "Entropy-ABF: no committed study output" not in text
    ega_shown = "Entropy-guided attention: no committed study output" not in text
    assert len(png) == 5 * abf_shown + 2 * ega_shown
    if abf_shown:
        abf = ROOT / "experiments" / "entropy_abf" / "results" / "quick"
        summary = json.loads((abf / "summary.json").read_text())
        for name, c in summary["claims"].items():
            assert f"verdict {name}: {c['label']}" in text
    if ega_shown:
        line = next(x for x in text.splitlines() if x.startswith("Entropy-guided attention:"))
        ega = ROOT / "experiments" / "entropy_guided_attention" / "results" / "quick"
        for arm in line.split(": ", 2)[2].split(", "):
            assert list((ega / "jobs" / arm).glob("init*/seed*/attn_entropy.npz")), arm
