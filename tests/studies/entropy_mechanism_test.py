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


def _strip(recs):
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))} for r in recs]


def test_rerun_resumes_and_refuses_mixing(smoke_out, capsys, tmp_path):
    from entropylab.train.metrics import read_jsonl

    args = ["--preset", "smoke", "--out", str(smoke_out), "--no-progress"]
    none_metrics = (smoke_out / "none" / "seed0" / "metrics.jsonl").read_text()
    kl = smoke_out / "kl_cov" / "seed0"
    full = read_jsonl(kl / "metrics.jsonl")
    # simulate a kill during the last arm after its step-2 checkpoint: no done marker, no
    # seed timing, a torn last metrics line
    (kl / "done.json").unlink()
    (smoke_out / "timing_seed0.json").unlink()
    lines = (kl / "metrics.jsonl").read_text().splitlines()
    (kl / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:10])
    with pytest.raises(SystemExit):  # analysis refuses the unfinished arm
        study.main(args + ["--analyse-only"])
    assert "seeds [0] not finished" in capsys.readouterr().err
    with pytest.raises(ValueError, match="arms not finished: kl_cov/seed0"):
        study.analyse(smoke_out, study.preset("smoke"), "smoke")
    # continues: only kl_cov runs, from its checkpoint (--resume: other engineers may commit
    # while this test runs; on one commit the default resumes the same way)
    study.main(args + ["--resume"])
    assert (smoke_out / "none" / "seed0" / "metrics.jsonl").read_text() == none_metrics
    assert _strip(read_jsonl(kl / "metrics.jsonl")) == _strip(full)
    assert (kl / "done.json").exists() and (smoke_out / "timing_seed0.json").exists()
    # refusals: duplicate seeds, another preset into this folder, an --out that is a file,
    # --update-readme of a smoke run; none of them touches the results
    before = (smoke_out / "summary.json").read_text()
    for extra, msg in (
        (["--seeds", "0", "0"], "must not repeat a seed"),
        (["--preset", "tiny"], "config differs"),
        (["--out", str(smoke_out / "summary.json")], "is not a directory"),
        (["--out", ""], "--out must be a non-empty path"),
        (["--update-readme"], "holds a 'smoke' run"),
        (["--jobs", "0"], "--jobs must be >= 1"),
    ):
        with pytest.raises(SystemExit):
            study.main(args + extra)
        assert msg in capsys.readouterr().err, extra
    assert (smoke_out / "summary.json").read_text() == before
    # the README update is a separate step that writes only into its destination
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "README.md").write_text("x\n<!-- results:start -->\nold\n<!-- results:end -->\n")
    summary = json.loads(before)
    fake = tmp_path / "fake_tiny"
    fake.mkdir()
    for name in ("RESULTS.md", "entropy_mechanism.png", "manifest.json"):
        (fake / name).write_bytes((smoke_out / name).read_bytes())
    (fake / "summary.json").write_text(json.dumps(dict(summary, preset="tiny")))
    assert study.update_readme(fake, dest=dest) == "tiny"
    assert "| none |" in (dest / "README.md").read_text()
    assert (dest / "summary_tiny.json").exists() and (dest / "entropy_mechanism.png").exists()


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        study.main(["--help"])
    text = capsys.readouterr().out
    assert "(default: tiny)" in text and "--update-readme" in text and "--overwrite" in text


def test_unknown_preset_is_rejected():
    with pytest.raises(ValueError, match="unknown preset"):
        study.preset("huge")
    assert os.path.exists(ROOT / "experiments" / "entropy_mechanism" / "README.md")
