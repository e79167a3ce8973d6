"""Metric writers: JSONL every step (always), TensorBoard if installed, and a progress bar.

One JSON object per line: ``{"step": int, "<name>": float | list, ...}``. Arrays become floats
(scalars) or nested lists (e.g. per-layer attention entropy ``[L]``). Only process 0 writes.
On resume, :class:`MetricWriter` checks the file against the restored step
(:func:`entropylab.runs.check_metrics`: a torn last line is dropped with a warning, a torn
middle line or a gap in the steps is a ``ValueError`` naming the file and line, a file ending
before the restored step is a :class:`~entropylab.runs.MetricsGapError`) and drops the records
after the restored step (rewriting the file atomically), so the file of a resumed run equals the
uninterrupted run's. Nothing is written or truncated before those checks pass.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

from entropylab import runs


def to_python(value):
    """JAX/NumPy scalar or array -> float/int/list (NaN/inf become None-free floats)."""
    arr = np.asarray(jax.device_get(value))
    if arr.ndim == 0:
        item = arr.item()
        return float(item) if isinstance(item, float | np.floating) else item
    return arr.tolist()


def _tensorboard_writer(logdir: Path):
    for mod in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            module = __import__(mod, fromlist=["SummaryWriter"])
            return module.SummaryWriter(str(logdir))
        except Exception:  # noqa: BLE001 - optional dependency, any import failure means "absent"
            continue
    return None


class MetricWriter:
    """Append metrics to ``<path>`` as JSONL; mirror scalars to TensorBoard when available.

    Args:
      path: the JSONL file.
      resume_step: if given, keep the existing records with ``step <= resume_step`` after
        checking them (see the module docstring); otherwise the file is truncated.
      tensorboard: ``None`` = use it if importable, ``False`` = never, ``True`` = required.
    """

    def __init__(self, path, *, resume_step: int | None = None, tensorboard: bool | None = None):
        self.path = Path(path)
        self.enabled = jax.process_index() == 0
        self._tb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = runs.check_metrics(self.path, resume_step) if resume_step is not None else []
        runs.atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")  # noqa: SIM115 - closed in close()
        if tensorboard is not False:
            self._tb = _tensorboard_writer(self.path.parent / "tensorboard")
            if tensorboard and self._tb is None:
                raise ValueError(
                    "tensorboard=True but neither tensorboardX nor tensorboard is installed"
                )

    def write(self, step: int, metrics: dict) -> dict:
        """Write one record; returns it as plain Python values."""
        record = {"step": int(step)}
        record.update({k: to_python(v) for k, v in metrics.items()})
        if not self.enabled:
            return record
        self._file.write(json.dumps(record, allow_nan=True) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, step)
                elif isinstance(v, list) and v and all(isinstance(x, int | float) for x in v):
                    for i, x in enumerate(v):
                        self._tb.add_scalar(f"{k}/{i}", x, step)
        return record

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_jsonl(path) -> list[dict]:
    """All records of a JSONL metrics file (``ValueError`` naming ``path:line`` on a bad line,
    ``FileNotFoundError`` if missing)."""
    return runs.read_jsonl(path)


class ProgressBar:
    """A tqdm bar on stderr (plain text fallback when tqdm is absent or disabled)."""

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self._bar = None
        self.enabled = enabled and jax.process_index() == 0
        if self.enabled:
            try:
                from tqdm.auto import tqdm

                self._bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr)
            except ImportError:
                self._bar = None

    def update(self, n: int = 1, **postfix) -> None:
        if self._bar is not None:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
