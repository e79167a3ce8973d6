"""Execute notebooks headless (nbclient) and write them back with their outputs.

Usage (``make notebooks`` runs it on every notebook here)::

    python notebooks/execute.py notebooks/entropy_laws.ipynb notebooks/token_entropy.ipynb

Each notebook runs in its own folder with a fresh ``python3`` kernel. ``MPLBACKEND`` is removed
from the kernel's environment, so ipykernel's inline backend draws the figures (the notebooks
never choose a backend themselves). Timing metadata is not recorded, so re-executing on the same
data changes only what the data changes. The file is replaced only after the whole notebook ran
without error (written to a temporary file first, then renamed).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(nb, *, cwd=None, timeout: int = 600, env: dict | None = None):
    """Run a notebook; returns the executed ``NotebookNode`` (a file given is left untouched).

    Args:
      nb: a path to an ``.ipynb`` file or a ``NotebookNode``.
      cwd: the kernel's working directory (default: the notebook file's folder).
      env: extra environment variables for the kernel (e.g. a notebook's data directory).
    """
    if not isinstance(nb, nbformat.NotebookNode):
        path = Path(nb)
        if not path.is_file():
            raise FileNotFoundError(f"notebook {path} does not exist")
        nb = nbformat.read(path, as_version=4)
        cwd = path.parent if cwd is None else cwd
    if cwd is None:
        raise ValueError("cwd is required when nb is a NotebookNode")
    saved = dict(os.environ)
    try:
        os.environ.pop("MPLBACKEND", None)
        os.environ.update(env or {})
        NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(Path(cwd).resolve())}},
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return nb


def write(nb, path) -> None:
    """Write ``nb`` to ``path`` atomically."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = ap.parse_args(argv)
    for path in args.notebooks:
        t0 = time.time()
        nb = execute(path, timeout=args.timeout)
        write(nb, path)
        n_png = sum(
            "image/png" in o.get("data", {})
            for c in nb.cells
            if c.cell_type == "code"
            for o in c.get("outputs", [])
        )
        print(f"{path}: executed in {time.time() - t0:.0f} s, {n_png} figures")


if __name__ == "__main__":
    main()
