"""Standard per-step metric schema, per-problem eval outcomes, JSONL (gzip) logs, progress.

Every job of a study writes, in its directory:

* ``metrics.jsonl`` — one record per step, ``{"step": int, "<ns>/<name>": number | None | list}``
  with the keys of :data:`STEP_SCHEMA` where the job measures them (extra ``<ns>/<name>`` keys
  are allowed; a schema key must be a number, ``None`` or NaN — never a string);
* ``evals.jsonl`` — per-problem eval outcomes, one record per (step, split, problem):
  ``{"step", "split", "problem", "difficulty", "n", "correct", "greedy"}`` where ``correct`` is
  the number of the ``n`` T = 1 samples the verifier accepted and ``greedy`` the greedy sample's
  reward (or None). The verdict engine bootstraps over initialisations, and these let a study
  recompute pass@k or split results by difficulty after the fact.

``compress_logs`` gzips them (deterministic bytes: mtime 0) for committing; every reader here
reads ``x.jsonl`` or ``x.jsonl.gz`` transparently. :class:`StepLogger` mirrors scalars to
TensorBoard when asked (``tensorboardX``, imported lazily).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from entropylab.runs import MetricsGapError, atomic_write_bytes

STEP_SCHEMA: dict[str, str] = {
    "rollout/entropy": "token-mean policy entropy of the step's T = 1 rollouts (nats)",
    "probe/entropy": "token-mean policy entropy on the study's fixed probe set of states (nats)",
    "reward/mean": "mean verifier reward of the step's rollouts",
    "reward/acc": "fraction of rollouts with reward 1",
    "groups/zero_adv_frac": "fraction of groups whose rewards are all equal (zero advantage)",
    "eval/pass@1": "unbiased pass@1 at T = 1 on the eval split",
    "eval/pass@k": "unbiased pass@k at T = 1 on the eval split (k in eval/k)",
    "eval/k": "the k of eval/pass@k",
    "eval/greedy_acc": "greedy accuracy on the eval split",
    "eval/entropy": "token-mean entropy of the eval samples (nats)",
    "cov/mean": "mean over tokens of Cov(log π, A) terms (arXiv:2505.22617 §4)",
    "cov/std": "standard deviation of the per-token covariance terms",
    "cov/predicted_dH": "covariance-predicted entropy change of the step",
    "cov/observed_dH": "entropy change on the same rollout tokens, after − before the update",
    "train/grad_norm": "global gradient norm before clipping",
    "activity/selected_frac": "fraction of response tokens the method selected (Clip-Cov/KL-Cov…)",
    "activity/selected_tokens": "number of response tokens the method selected",
    "activity/clipped_frac": "fraction of response tokens whose ratio was clipped",
    "activity/reweighted_tokens": "number of response tokens the method reweighted",
    "activity/tokens": "number of response tokens in the step",
    "time/step_s": "wall time of the step (seconds)",
}

#: GRPOTrainer record keys → schema keys (identical names are passed through unchanged).
TRAINER_ALIASES: dict[str, str] = {
    "pg/clipfrac": "activity/clipped_frac",
    "cov/clip_cov_frac": "activity/selected_frac",
    "cov/kl_cov_frac": "activity/selected_frac",
}


def _check_value(key: str, v) -> None:
    if v is None or isinstance(v, bool):
        if isinstance(v, bool):
            raise TypeError(f"metric {key!r} is a bool; log it as 0/1")
        return
    if isinstance(v, int | float | np.integer | np.floating):
        return
    if isinstance(v, list | tuple) and key not in STEP_SCHEMA:
        for x in v:
            _check_value(key, x)
        return
    raise TypeError(f"metric {key!r} must be a number or None, got {type(v).__name__}")


def validate_record(record: Mapping) -> dict:
    """A clean copy of a per-step record, or a ``ValueError``/``TypeError`` naming the key."""
    if "step" not in record:
        raise ValueError("a metrics record needs a 'step'")
    step = record["step"]
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    out = {"step": int(step)}
    for k, v in record.items():
        if k == "step":
            continue
        if not isinstance(k, str) or "/" not in k or k.startswith("/") or k.endswith("/"):
            raise ValueError(f"metric key {k!r} must look like 'namespace/name'")
        _check_value(k, v)
        if isinstance(v, np.integer | np.floating):
            v = v.item()
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def from_trainer_record(record: Mapping) -> dict:
    """Map a ``GRPOTrainer`` metrics record onto the schema (aliases added, originals kept)."""
    out = dict(record)
    for src, dst in TRAINER_ALIASES.items():
        if src in record and dst not in out:
            out[dst] = record[src]
    if "time/rollout_s" in record and "time/step_s" not in out:
        out["time/step_s"] = sum(
            float(record.get(k, 0.0)) for k in ("time/rollout_s", "time/prepare_s", "time/update_s")
        )
    return out


def _open_text(path: Path, mode: str):
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="utf-8")
    return open(path, mode, encoding="utf-8")


def resolve(path) -> Path:
    """``path`` if it exists, else ``path.gz``; ``FileNotFoundError`` if neither."""
    p = Path(path)
    if p.exists():
        return p
    gz = p.with_name(p.name + ".gz")
    if gz.exists():
        return gz
    raise FileNotFoundError(f"neither {p} nor {gz} exists")


def read_records(path) -> list[dict]:
    """All records of ``path`` (``.jsonl`` or its ``.jsonl.gz``); a torn last line is dropped."""
    p = resolve(path)
    out = []
    with _open_text(p, "r") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # an interrupted writer's last line
                warnings.warn(f"{p}: dropped a torn last line ({i + 1})", stacklevel=2)
                break
            raise ValueError(f"{p}: line {i + 1} is not JSON") from None
    return out


class JsonlLog:
    """Append-only JSONL with resume: records after ``resume_step`` are dropped on open.

    ``require_through``: on resume, the kept records must reach ``resume_step`` (a per-step log
    that ends before the restored checkpoint would lose history: :class:`MetricsGapError`,
    raised before the file is touched)."""

    require_through = False

    def __init__(self, path, *, resume_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.with_name(self.path.name + ".gz").exists():
            raise FileExistsError(f"{self.path}.gz exists: this log was compressed (job finished)")
        kept = []
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_records(self.path) if r["step"] <= resume_step]
        if resume_step is not None and self.require_through:
            last = kept[-1]["step"] if kept else None
            if last != resume_step:
                raise MetricsGapError(
                    f"{self.path} ends at step {last}, before the restored step {resume_step}: "
                    "resuming would lose the history between (start the job again instead)",
                    path=self.path,
                    last_step=last,
                )
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        with os.fdopen(fd, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        os.replace(tmp, self.path)
        self.last_step = kept[-1]["step"] if kept else -1
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def _write(self, record: dict) -> None:
        self._f.write(json.dumps(record, allow_nan=True) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class StepLogger(JsonlLog):
    """Per-step metrics in the schema; steps strictly increase; optional TensorBoard mirror.
    On resume the log must reach the restored step (``MetricsGapError`` otherwise).

    ``tensorboard``: ``False`` (default) never; ``True`` requires ``tensorboardX`` (imported
    here, lazily: a study that does not ask for it never imports it).
    """

    require_through = True

    def __init__(self, path, *, resume_step: int | None = None, tensorboard: bool = False):
        super().__init__(path, resume_step=resume_step)
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                self.close()
                raise ImportError("tensorboard=True needs `pip install tensorboardX`") from e
            self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))

    def log(self, step: int, metrics: Mapping) -> dict:
        rec = validate_record({"step": step, **metrics})
        if rec["step"] <= self.last_step:
            raise ValueError(f"step {rec['step']} is not after the last logged {self.last_step}")
        self._write(rec)
        self.last_step = rec["step"]
        if self._tb is not None:
            for k, v in rec.items():
                if k != "step" and isinstance(v, int | float):
                    self._tb.add_scalar(k, v, rec["step"])
        return rec

    def close(self) -> None:
        super().close()
        if getattr(self, "_tb", None) is not None:
            self._tb.close()


class EvalLog(JsonlLog):
    """Per-problem eval outcomes (see the module docstring for the record)."""

    def log(
        self,
        step: int,
        split: str,
        problems: Sequence[str],
        correct,
        n: int,
        *,
        difficulties: Sequence[int] | None = None,
        greedy=None,
    ) -> None:
        correct = np.asarray(correct)
        if correct.shape != (len(problems),):
            raise ValueError(f"correct must have shape ({len(problems)},), got {correct.shape}")
        if np.any(correct < 0) or np.any(correct > n):
            raise ValueError(f"correct counts must be in [0, n={n}]")
        if step < self.last_step:
            raise ValueError(f"step {step} is before the last logged {self.last_step}")
        for i, pid in enumerate(problems):
            self._write(
                {
                    "step": int(step),
                    "split": split,
                    "problem": str(pid),
                    "difficulty": None if difficulties is None else int(difficulties[i]),
                    "n": int(n),
                    "correct": int(correct[i]),
                    "greedy": None if greedy is None else float(greedy[i]),
                }
            )
        self.last_step = int(step)


def pass_at_k(correct, n: int, k: int) -> np.ndarray:
    """Unbiased pass@k per problem, 1 − C(n−c, k)/C(n, k) (Chen et al., arXiv:2107.03374)."""
    c = np.asarray(correct, np.int64)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    i = np.arange(k)
    # C(n−c, k)/C(n, k) = Π_{i<k} (n−c−i)/(n−i); a factor ≤ 0 means the product is 0
    fac = np.clip((n - c[..., None] - i) / (n - i), 0.0, None)
    return 1.0 - np.prod(fac, axis=-1)


def eval_pass_at_k(evals: Iterable[Mapping], k: int, *, step=None, split: str = "eval") -> float:
    """Mean unbiased pass@k over the problems of one (step, split) of an ``evals.jsonl``."""
    rows = [e for e in evals if e["split"] == split]
    if step is None and rows:
        step = max(e["step"] for e in rows)
    rows = [e for e in rows if e["step"] == step]
    if not rows:
        raise ValueError(f"no eval outcomes for split {split!r} at step {step}")
    ns = {e["n"] for e in rows}
    if len(ns) != 1:
        raise ValueError(f"mixed sample counts {sorted(ns)} at step {step}")
    return float(np.mean(pass_at_k([e["correct"] for e in rows], ns.pop(), k)))


def gzip_bytes(data: bytes) -> bytes:
    """gzip ``data`` deterministically (no file name, no timestamp): equal logs, equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as g:
        g.write(data)
    return buf.getvalue()


def _gzip_file(src: Path) -> Path:
    dst = src.with_name(src.name + ".gz")
    atomic_write_bytes(dst, gzip_bytes(src.read_bytes()))
    src.unlink()
    return dst


def compress_logs(root) -> list[Path]:
    """Gzip every ``*.jsonl`` under ``root`` in place (atomic, deterministic); returns new paths."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no directory {root}")
    return [_gzip_file(p) for p in sorted(root.rglob("*.jsonl"))]


class Progress:
    """One human-readable line per update: ``name  12/120 [####      ] H 0.831 acc 0.41 ETA 3m``.

    ``fields`` maps a record key to a short label; only those are shown, formatted to 3
    significant digits. Writes to ``stream`` (stderr) and rewrites the line on a terminal.
    """

    def __init__(
        self,
        total: int,
        *,
        name: str = "",
        fields: Mapping[str, str] | None = None,
        stream=None,
        initial: int = 0,
        width: int = 20,
    ):
        self.total, self.name, self.width = int(total), name, width
        self.fields = dict(fields or {"rollout/entropy": "H", "reward/acc": "acc"})
        self.stream = stream if stream is not None else sys.stderr
        self.done, self._t0, self._start = int(initial), time.perf_counter(), int(initial)
        self._tty = getattr(self.stream, "isatty", lambda: False)()

    def format(self, record: Mapping | None = None) -> str:
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(round(frac * self.width))
        parts = [f"{self.name}  {self.done}/{self.total} [{bar:<{self.width}}]"]
        for key, label in self.fields.items():
            v = None if record is None else record.get(key)
            if isinstance(v, int | float) and not isinstance(v, bool):
                parts.append(f"{label} {v:.3g}")
        rate_n = self.done - self._start
        if 0 < rate_n and self.done < self.total:
            eta = (time.perf_counter() - self._t0) / rate_n * (self.total - self.done)
            parts.append(f"ETA {_dur(eta)}")
        return " ".join(parts)

    def update(self, n: int = 1, record: Mapping | None = None) -> str:
        self.done = min(self.total, self.done + n)
        line = self.format(record)
        end = "\r" if self._tty and self.done < self.total else "\n"
        self.stream.write(line + end)
        self.stream.flush()
        return line


def _dur(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"
