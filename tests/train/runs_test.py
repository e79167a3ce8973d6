"""Tests for entropylab.runs: atomic writes, manifests, output-directory rules, metrics checks."""

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from entropylab import runs


@dataclasses.dataclass(frozen=True, kw_only=True)
class Cfg:
    lr: float = 1e-3
    steps: int = 10
    dims: tuple = (1, 2)


def _manifest(seed=0, commit="abc", **cfg):
    m = runs.make_manifest(Cfg(**cfg), seed=seed, command=["test"])
    m["git_commit"] = commit
    return m


def test_atomic_writes_normal_permissions_and_no_temp_files(tmp_path):
    old = os.umask(0o022)
    try:
        runs.atomic_write_text(tmp_path / "a.txt", "hi")
        runs.atomic_write_json(tmp_path / "b.json", {"x": float("nan"), "p": tmp_path})
        runs.atomic_write_bytes(tmp_path / "sub" / "c.bin", b"\x00\x01")
        runs.atomic_savez(tmp_path / "d.npz", w=np.arange(3))
    finally:
        os.umask(old)
    for name in ("a.txt", "b.json", "sub/c.bin", "d.npz"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert (tmp_path / "a.txt").read_text() == "hi"
    assert np.isnan(json.loads((tmp_path / "b.json").read_text())["x"])
    with np.load(tmp_path / "d.npz") as z:
        np.testing.assert_array_equal(z["w"], [0, 1, 2])
    assert not [p for p in tmp_path.rglob(".*")]  # no temp files left
    with pytest.raises(IsADirectoryError):
        runs.atomic_write_text(tmp_path / "sub", "x")


def test_failed_write_keeps_old_file(tmp_path):
    target = tmp_path / "r.json"
    runs.atomic_write_json(target, {"ok": 1})
    with pytest.raises(TypeError):
        with runs._atomic(target, "w") as f:
            f.write('{"half": ')
            raise TypeError("boom")
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_config_hash_is_canonical():
    assert runs.config_hash(Cfg()) == runs.config_hash(Cfg(dims=(1, 2)))
    assert runs.config_hash(Cfg()) != runs.config_hash(Cfg(lr=2e-3))
    assert runs.config_hash({"a": 1, "b": 2}) == runs.config_hash({"b": 2, "a": 1})
    assert runs.config_hash({"a": float("nan")}) == runs.config_hash({"a": float("nan")})
    assert runs.config_hash({"a": np.float32(1.5)}) == runs.config_hash({"a": 1.5})


def test_added_field_keeps_earlier_config_hashes():
    # An option added to a config class after runs were made with it: while it holds its
    # default it is left out of both canonical forms (checkpoints and finished studies keep
    # their hash); set otherwise, it is hashed. A default of another type (1 vs 1.0 vs True)
    # is not "the default".
    from entropylab.study import provenance

    @dataclasses.dataclass(frozen=True)
    class Old:
        lr: float = 1e-3
        inner: tuple = ()

    @dataclasses.dataclass(frozen=True)
    class New:
        lr: float = 1e-3
        inner: tuple = ()
        p: float | None = runs.added_field(None)
        k: int = runs.added_field(1)

    Old.__name__ = New.__name__ = "Cfg"  # the canonical forms carry the class name
    nested_old, nested_new = Old(inner=(Old(),)), New(inner=(New(),))
    for h in (runs.config_hash, provenance.config_hash):
        assert h(New()) == h(Old()) and h(nested_new) == h(nested_old)
        assert h(New(p=0.5)) != h(Old()) and h(New(k=2)) != h(Old())
        assert h(New(p=0.0)) != h(Old())  # 0.0 is a setting, not the default None
        assert h(New(k=True)) != h(Old())  # True == 1, but another type
    assert "p" not in runs.canonical_config(New()) and runs.canonical_config(New(p=0.5))["p"] == 0.5
    # the first added option of the library keeps every committed study's hash (tested there)
    from entropylab.rl.trainer import RLConfig

    assert "random_reward" not in runs.canonical_config(RLConfig())


def test_manifest_fields():
    m = runs.make_manifest(Cfg(), seed=3)
    for key in ("config_hash", "seed", "git_commit", "git_dirty", "versions", "host"):
        assert key in m
    assert m["seed"] == 3 and m["status"] == "running" and m["ended_at"] is None
    assert m["versions"]["numpy"] == np.__version__
    assert m["host"]["cpus"] == os.cpu_count()


def test_prepare_output_dir_rules(tmp_path):
    out = tmp_path / "run"
    assert runs.prepare_output_dir(out, manifest=_manifest()) == "fresh"
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    assert runs.prepare_output_dir(out, manifest=_manifest()) == "resume"
    assert len(runs.read_manifest(out)["sessions"]) == 2
    with pytest.raises(ValueError, match=r"seed differs: directory has 0, this run 1"):
        runs.prepare_output_dir(out, manifest=_manifest(seed=1))
    with pytest.raises(ValueError, match=r"config differs \(lr: 0.001 -> 0.002\)"):
        runs.prepare_output_dir(out, manifest=_manifest(lr=2e-3), mode="resume")
    with pytest.raises(ValueError, match="git commit differs.*--resume"):
        runs.prepare_output_dir(out, manifest=_manifest(commit="def"))
    with pytest.warns(UserWarning, match="different commit"):
        assert runs.prepare_output_dir(out, manifest=_manifest(commit="def"), mode="resume")
    assert (out / "metrics.jsonl").exists()
    m2 = _manifest(seed=1)
    assert runs.prepare_output_dir(out, manifest=m2, mode="overwrite") == "overwrite"
    assert [p.name for p in out.iterdir()] == ["manifest.json"]
    assert runs.read_manifest(out)["seed"] == 1
    done = runs.finish_manifest(out, final_step=10)
    assert done["status"] == "complete" and done["final_step"] == 10 and done["ended_at"]


def test_prepare_output_dir_refusals(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for mode in runs.MODES:
        with pytest.raises(ValueError, match="has no manifest.json"):
            runs.prepare_output_dir(foreign, manifest=_manifest(), mode=mode)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="--out must be a non-empty path"):
        runs.prepare_output_dir("", manifest=_manifest())
    with pytest.raises(ValueError, match="is not a directory"):
        runs.prepare_output_dir(foreign / "notes.txt", manifest=_manifest())
    with pytest.raises(TypeError, match="--out must be a path"):
        runs.out_path(3)
    with pytest.raises(ValueError, match="mode must be one of"):
        runs.prepare_output_dir(tmp_path / "x", manifest=_manifest(), mode="force")
    assert not (tmp_path / "x").exists()


def _lines(path, steps, torn=None):
    text = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in steps)
    if torn is not None:
        text += torn
    path.write_text(text)


def test_check_metrics(tmp_path):
    p = tmp_path / "m.jsonl"
    _lines(p, range(1, 6), torn='{"step": 6, "lo')
    with pytest.warns(UserWarning, match=r"m.jsonl:6: dropping a torn last line"):
        kept = runs.check_metrics(p, 3)
    assert [json.loads(x)["step"] for x in kept] == [1, 2, 3]
    with pytest.warns(UserWarning), pytest.raises(runs.MetricsGapError, match="ends at step 5"):
        runs.check_metrics(p, 8)
    p.write_text(p.read_text()[: -len('{"step": 6, "lo')] + '{"step": 6, "lo\n{"step": 7}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:6: invalid record in the middle"):
        runs.check_metrics(p, 5)
    _lines(p, [1, 2, 4, 5])
    with pytest.raises(ValueError, match=r"m.jsonl:3: step 4 follows step 2"):
        runs.check_metrics(p, 5)
    assert runs.check_metrics(tmp_path / "missing.jsonl", 0) == []
    with pytest.raises(runs.MetricsGapError, match="has no records"):
        runs.check_metrics(tmp_path / "missing.jsonl", 2)
    p.write_text('{"step": 1}\n{"step": 2\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"m.jsonl:2: invalid JSON line"):
        runs.read_jsonl(p)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        runs.read_jsonl(tmp_path / "missing.jsonl")


def test_preemption_guard_catches_sigterm():
    with runs.PreemptionGuard() as guard:
        assert not guard.requested and not guard.agreed()  # one process: no collective
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.requested and guard.agreed() and guard.signum == signal.SIGTERM
        assert guard.exit_code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_run_lock_refuses_a_live_holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / runs.LOCK).write_text(str(proc.pid))
        with pytest.raises(RuntimeError, match=f"in use by process {proc.pid}"):
            with runs.run_lock(tmp_path):
                pass
    finally:
        proc.kill()
        proc.wait()
    with runs.run_lock(tmp_path) as lock:  # stale lock is taken over
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()


def test_compilation_cache_writes_entries_and_honours_off(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.COMPILE_CACHE_ENV, "off")
    assert runs.enable_compilation_cache() is None
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        runs.enable_compilation_cache(tmp_path / "afile")
    # JAX initialises its cache once per process (the suite shares one), so the write is
    # checked in a fresh interpreter: the env var's folder receives the compiled executable
    code = (
        "import jax, jax.numpy as jnp\n"
        "from entropylab import runs\n"
        "d = runs.enable_compilation_cache()\n"
        "jax.jit(lambda x: jnp.sin(x) * 3.25 + 0.5)(jnp.arange(7.0)).block_until_ready()\n"
        "print(d)\n"
    )
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, runs.COMPILE_CACHE_ENV: str(tmp_path / "xla"), "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": root}  # fmt: skip
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == str(tmp_path / "xla")
    assert any((tmp_path / "xla").iterdir()), "no executable was written to the cache"
