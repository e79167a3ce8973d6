"""Cached SFT warm starts, keyed by everything that determines the parameters.

An initialisation of a study is an SFT warm start (``entropylab.rl.sft.sft_warmstart`` or any
function that trains a model in place). It is expensive on a CPU and the same for every arm and
every study that shares the task, split, model, SFT config and seed, so it is computed once and
stored under ``<root>/<task>/<key hash>/``:

* ``params.npz`` — the ``nnx.Param`` leaves, flat ``{"a/b/c": array}``;
* ``manifest.json`` — the full key (task, split, model config, SFT config, seed, code version),
  ``param_hash`` (sha256 over names, dtypes, shapes and bytes of the parameters), the training
  history the function returned, its wall time, git state and package versions.

A load checks the key in the manifest and the parameter hash of the loaded arrays; a mismatch
raises (a corrupted or hand-edited cache entry is never used silently). Two processes that race
to create the same entry each train, and the first atomic rename wins; the loser loads the
winner's entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropylab.study import provenance

#: Modules whose source is hashed into the default code version: the whole library (the SFT
#: path reaches models, ops, logprobs, train.optim, rl.*; hashing less risks reusing a stale
#: warm start after a numerics change, hashing more only costs a recomputation).
SFT_MODULES = ("entropylab",)


@dataclasses.dataclass(frozen=True, kw_only=True)
class WarmStartKey:
    """Everything a warm start depends on. ``task`` and ``split`` are identity strings/configs
    (e.g. ``splits.task_id(task)`` and the ``SplitSpec``); ``model`` and ``sft`` are configs."""

    task: str
    split: Any
    model: Any
    sft: Any
    seed: int
    code_version: str = ""
    extra: Any = None

    def __post_init__(self):
        if not isinstance(self.task, str) or not self.task:
            raise ValueError(f"task must be a non-empty str, got {self.task!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")

    def resolved(self) -> WarmStartKey:
        """The key with ``code_version`` filled in from :data:`SFT_MODULES` when empty."""
        if self.code_version:
            return self
        return dataclasses.replace(self, code_version=provenance.code_version(SFT_MODULES))

    def as_dict(self) -> dict:
        return provenance.canonical(self)

    def digest(self) -> str:
        return provenance.config_hash(self)


def _flat(params) -> dict[str, np.ndarray]:
    return {"/".join(str(k) for k in key): np.asarray(v) for key, v in nnx.to_flat_state(params)}


def param_hash(flat: dict[str, np.ndarray]) -> str:
    """sha256 (16 hex) over sorted names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(flat):
        a = np.ascontiguousarray(flat[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class WarmStart:
    path: Path
    param_hash: str
    history: list
    cached: bool  # True when loaded from the cache, False when trained now
    manifest: dict


class WarmStartCache:
    """``get(model, key, train)``: load the entry for ``key`` into ``model`` or create it."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, key: WarmStartKey) -> Path:
        key = key.resolved()
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in key.task)[:40]
        return self.root / safe / key.digest()

    def load(self, model, key: WarmStartKey) -> WarmStart:
        """Load an existing entry into ``model`` (in place); ``FileNotFoundError`` if absent."""
        key = key.resolved()
        path = self.path(key)
        man = provenance.read_json(path / "manifest.json")
        if man.get("key") != key.as_dict():
            raise ValueError(f"{path}: manifest key differs from the requested key")
        _, params, _ = nnx.split(model, nnx.Param, ...)
        with np.load(path / "params.npz") as data:
            stored = {k: data[k] for k in data.files}
        if param_hash(stored) != man["param_hash"]:
            raise ValueError(f"{path}: params.npz does not match the manifest's param_hash")
        new = []
        for k, var in nnx.to_flat_state(params):
            name = "/".join(str(x) for x in k)
            if name not in stored or stored[name].shape != var.shape:
                raise ValueError(f"{path}: parameter {name} is missing or has another shape")
            new.append((k, var.replace(jnp.asarray(stored[name]))))
        if len(new) != len(stored):
            raise ValueError(f"{path}: the entry has parameters the model does not")
        nnx.update(model, nnx.from_flat_state(new))
        return WarmStart(path, man["param_hash"], man.get("history", []), True, man)

    def get(self, model, key: WarmStartKey, train: Callable[[Any], list]) -> WarmStart:
        """The warm start for ``key`` loaded into ``model``; ``train(model) -> history`` (which
        trains ``model`` in place) runs only when the cache has no entry."""
        key = key.resolved()
        path = self.path(key)
        if (path / "manifest.json").exists():
            return self.load(model, key)
        t0 = time.time()
        history = train(model)
        wall = time.time() - t0
        _, params, _ = nnx.split(model, nnx.Param, ...)
        flat = _flat(params)
        man = provenance.manifest(
            key=key.as_dict(),
            param_hash=param_hash(flat),
            history=list(history or []),
            train_wall_s=wall,
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            np.savez(tmp / "params.npz", **flat)
            provenance.atomic_write_json(tmp / "manifest.json", man)
            try:
                os.rename(tmp, path)
            except OSError:
                if not (path / "manifest.json").exists():
                    raise
                return self.load(model, key)  # another process finished first
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return WarmStart(path, man["param_hash"], man["history"], False, man)
