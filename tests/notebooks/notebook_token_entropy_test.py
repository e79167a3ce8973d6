"""notebooks/token_entropy.ipynb and experiments/token_entropy: figures present, data as saved.

The smoke data are made here the way the script makes its own: ``capture`` (the public sampler
on a model) at two "RL steps" of an untrained smoke model, saved with the script's writer, so the
notebook is checked against the script's real output format at the cost of one sampler compile.
"""

import base64
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from flax import nnx

from entropylab.models import Transformer, TransformerConfig
from entropylab.rl import tasks as T
from experiments.token_entropy import run as te

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "experiments" / "token_entropy" / "results" / "tiny"
NAME = "token_entropy.ipynb"
TITLES = {
    "token entropy",
    "Token entropy, histogram",
    "Token entropy, CDF",
    "Entropy vs position, all responses",
    "Response mean entropy by outcome",
    "Cov(log π, A)",
    "Correct vs incorrect",
}


def _has_titles(titles: set[str]) -> bool:
    return all(any(want in t for t in titles) for want in TITLES)


def _check_png(png, n):
    assert len(png) == n
    for b64 in png:
        raw = base64.b64decode(b64)
        assert raw.startswith(b"\x89PNG") and 5_000 < len(raw) < 150_000


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("te_smoke")
    rl = te.preset("smoke").rl
    tok, task = T.CharTokenizer(), T.AdditionTask()
    cfg = TransformerConfig.smoke(vocab_size=tok.vocab_size, max_seq_len=32)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    batches = [te.capture(model, tok, task, rl, s) for s in (0, 3)]
    te.write_results(out, (0, 3), batches, info={"preset": "test"}, metrics=[])
    return out


def test_capture_format_and_advantages(smoke_dir):
    with np.load(smoke_dir / "rollouts.npz") as f:
        d = {k: f[k] for k in f.files}
    rl = te.preset("smoke").rl
    b, n = rl.prompts_per_step * rl.group_size, rl.max_new_tokens
    assert d["steps"].tolist() == [0, 3]
    for key in ("token_text", "tokens", "mask", "entropy", "logp", "advantage"):
        assert d[key].shape == (2, b, n), key
    assert d["reward"].shape == d["group"].shape == d["prompt"].shape == (2, b)
    m = d["mask"]
    assert np.all(d["token_text"][~m] == "") and np.all(d["token_text"][m] != "")
    assert np.all(d["advantage"][~m] == 0) and np.all(d["entropy"][m] > 0)
    assert np.all(d["logp"][m] <= 0)
    # advantage: group-normalised reward (unbiased std, as grpo_advantages), on every token
    r = d["reward"][0].reshape(rl.prompts_per_step, rl.group_size).astype(np.float64)
    std = r.std(axis=1, ddof=1, keepdims=True)
    expected = ((r - r.mean(axis=1, keepdims=True)) / (std + 1e-6)).reshape(-1)
    first = d["advantage"][0][:, 0]
    np.testing.assert_allclose(first, expected, atol=1e-5)
    assert json.loads((smoke_dir / "run.json").read_text())["preset"] == "test"


def test_write_refuses_to_replace(smoke_dir):
    with pytest.raises(FileExistsError, match="--force"):
        te.write_results(smoke_dir, (0,), [], info={}, metrics=[])


def test_runs_on_smoke_output_with_figures(execute_notebook, smoke_dir):
    shown = execute_notebook(NAME, env={"ENTROPYLAB_TOKEN_DIR": str(smoke_dir)})
    _check_png(shown.png, 5)
    assert len(shown.figures) == 5
    assert _has_titles(shown.titles()), shown.titles()
    assert {"token entropy (nats)", "log π(token)", "advantage A"} <= shown.labels()
    assert "steps [0, 3]" in shown.text and "step   3: Cov(log π, A) =" in shown.text


def test_committed_notebook_shows_figures_of_the_committed_data(notebook_outputs):
    nb = nbformat.read(ROOT / "notebooks" / NAME, as_version=4)
    png, text = notebook_outputs(nb)
    _check_png(png, 5)
    info = json.loads((DATA / "run.json").read_text())
    assert f"steps {info['capture_steps']}" in text
    for check in info["checks"]:  # the table printed by the notebook is the committed data's
        row = f"{check['step']:5d} "
        line = next(s for s in text.splitlines() if s.startswith(row))
        assert f"{check['accuracy']:8.3f} {check['captured_entropy']:7.3f}" in line
    src = "".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "matplotlib.use(" not in src and "%matplotlib" not in src
