"""Provenance for study outputs: config and code hashes, git state, versions, atomic writes.

* ``config_hash(obj)`` — sha256 of a canonical JSON rendering (dataclasses → dicts, sorted keys,
  tuples → lists); two configs hash equal iff they render equal. A dataclass field declared
  with ``entropylab.runs.added_field`` (an option added after studies had run, whose default
  keeps the old behaviour) is left out of the rendering while it holds that default, so adding
  it does not change the hash of a finished study that never used it; set otherwise, it is
  hashed.
* ``code_version(modules)`` — sha256 over the *source bytes* of the given modules/packages plus
  the versions of jax, flax, optax and numpy: it changes exactly when code that can change the
  numbers changes (a git SHA also changes for an unrelated README edit, and says nothing about
  uncommitted edits).
* ``manifest(...)`` — git SHA and dirty flag, versions, CPU, host, Python, time.

Atomic writes, JSON reads, git state and package versions come from ``entropylab.runs``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import os
import platform
import time
from collections.abc import Iterable
from pathlib import Path

from entropylab import runs


def _asdict(obj):
    """``dataclasses.asdict`` that drops ``runs.added_field`` fields holding their default."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if runs.omitted_at_default(f, v):
                continue
            out[f.name] = _asdict(v)
        return out
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*[_asdict(v) for v in obj])
    if isinstance(obj, list | tuple):
        return type(obj)(_asdict(v) for v in obj)
    if isinstance(obj, dict):
        return type(obj)((_asdict(k), _asdict(v)) for k, v in obj.items())
    return obj


def canonical(obj):
    """JSON-ready canonical form of configs (dataclasses, mappings, sequences, scalars)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **canonical(_asdict(obj))}
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [canonical(v) for v in obj]
    if isinstance(obj, float | int | str | bool) or obj is None:
        return obj
    if callable(obj):
        name = getattr(obj, "__qualname__", None) or type(obj).__name__
        return f"<callable {getattr(obj, '__module__', '?')}.{name}>"
    raise TypeError(f"cannot hash a config value of type {type(obj).__name__}: {obj!r}")


def config_hash(obj) -> str:
    text = json.dumps(canonical(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _sources(module: str) -> list[Path]:
    mod = importlib.import_module(module)
    path = Path(mod.__file__)
    if path.name == "__init__.py":
        return sorted(p for p in path.parent.rglob("*.py") if "__pycache__" not in p.parts)
    return [path]


def versions() -> dict[str, str | None]:
    """Python and package versions (``entropylab.runs.package_versions``)."""
    return runs.package_versions()


def code_version(modules: Iterable[str] = ("entropylab",)) -> str:
    """sha256 (16 hex) of the modules' source bytes (path-relative) and package versions.

    Computed once per process and module set: the code a process runs is the code it imported,
    so later edits of the files on disk must not change the version it reports.
    """
    return _code_version(tuple(sorted(set(modules))))


@functools.cache
def _code_version(modules: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for m in modules:
        for p in _sources(m):
            h.update(f"{m}:{p.name}:{len(p.parts)}\n".encode())
            h.update(p.read_bytes())
    h.update(json.dumps(versions(), sort_keys=True).encode())
    return h.hexdigest()[:16]


def git_info(cwd=None) -> dict:
    """``{"sha": str | None, "dirty": bool | None}`` (``entropylab.runs.git_state``)."""
    sha, dirty = runs.git_state(cwd)
    return {"sha": sha, "dirty": dirty}


def cpu_info() -> dict:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cpu_count": os.cpu_count()}


def manifest(**extra) -> dict:
    """Provenance record: git, versions, CPU, host, time, plus ``extra`` fields."""
    return {
        "git": git_info(),
        "versions": versions(),
        **cpu_info(),
        "host": platform.node(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def atomic_write_text(path, text: str) -> Path:
    """Temp file + fsync + rename (``entropylab.runs.atomic_write_text``)."""
    return runs.atomic_write_text(path, text)


def atomic_write_json(path, obj) -> Path:
    return runs.atomic_write_text(
        path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=True) + "\n"
    )


def read_json(path) -> dict:
    """``json.load`` with errors naming the file (``entropylab.runs.read_json``)."""
    return runs.read_json(path)
