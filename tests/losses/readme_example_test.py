"""The README section "Using the losses in your own JAX project" runs as written: here, and in a
fresh virtual environment holding only the core install (no Flax, Orbax, Matplotlib, torch),
built with the lowest setuptools that ``[build-system] requires`` declares."""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SECTION = "## Using the losses in your own JAX project"
NOT_IN_CORE = ("flax", "orbax", "matplotlib", "torch", "optax", "transformers")


def _code_blocks() -> list[str]:
    text = README.read_text()
    assert SECTION in text, f"README section {SECTION!r} is missing"
    body = text.split(SECTION, 1)[1]
    body = re.split(r"^## ", body, maxsplit=1, flags=re.M)[0]
    return re.findall(r"^```python\n(.*?)^```", body, flags=re.S | re.M)


def test_readme_losses_example_runs():
    blocks = _code_blocks()
    assert blocks, "no python code block in the README losses section"
    namespace: dict = {"__name__": "__readme__"}
    for code in blocks:
        exec(compile(code, f"{README}:losses-example", "exec"), namespace)
    assert float(namespace["loss"]) == float(namespace["loss"])  # ran to the end, not NaN
    assert "pg/clipfrac" in namespace["metrics"] and "kl/low_var_kl" in namespace["metrics"]


def _setuptools_floor() -> str:
    req = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    (st,) = [r for r in req if r.startswith("setuptools")]
    m = re.fullmatch(r"setuptools>=([0-9.]+)", st.replace(" ", ""))
    assert m, f"[build-system] requires should give setuptools a floor, got {st!r}"
    return m.group(1)


def _run(cmd, **kw):
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, **kw)
    assert p.returncode == 0, f"{cmd} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


@pytest.mark.install
def test_readme_example_in_a_core_only_venv(tmp_path):
    """``pip install entropylab`` (core: jax + numpy) is enough for the README losses example;
    the package builds with the declared setuptools floor (``--no-build-isolation``)."""
    t0 = time.perf_counter()
    src = tmp_path / "src"  # build from a copy: no build/ or egg-info in the work tree
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    shutil.copytree(
        ROOT / "entropylab", src / "entropylab", ignore=shutil.ignore_patterns("__pycache__")
    )
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = str(venv / "bin" / "python")
    floor = _setuptools_floor()
    _run([py, "-m", "pip", "install", "--quiet", f"setuptools=={floor}"])
    _run([py, "-m", "pip", "install", "--quiet", "--no-build-isolation", str(src)])
    present = _run(
        [
            py,
            "-c",
            "import importlib.util as u, sys; "
            f"print([m for m in {NOT_IN_CORE!r} if u.find_spec(m)])",
        ]
    )
    assert present.strip() == "[]", f"the core install pulled in {present}"
    script = tmp_path / "readme_example.py"
    script.write_text("\n".join(_code_blocks()) + "\nprint('README-EXAMPLE-OK')\n")
    out = _run([py, str(script)], cwd=tmp_path)  # outside the repo: the installed package
    assert "README-EXAMPLE-OK" in out and "loss " in out, out
    where = _run([py, "-c", "import entropylab, sys; print(entropylab.__file__)"], cwd=tmp_path)
    assert str(venv) in where, where
    print(f"\ncore-only venv: setuptools=={floor}, {time.perf_counter() - t0:.1f} s")
