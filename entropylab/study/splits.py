"""Disjoint train-pool / selection / eval splits of a task's problem space, by hashing.

A problem belongs to a split by a hash of its identity, not by the draw that produced it:
``u = int(sha256(f"{salt}|{task_id}|{problem key}")[:16 hex]) / 16⁶⁴`` ∈ [0, 1) and the split is
the interval of ``fractions`` that ``u`` falls in (train pool first, then selection, then eval).
So the three splits are disjoint by construction, whichever seed, order or difficulty problems
are drawn with, the same on every machine and Python version (``hashlib``, not ``hash()``, which
is salted per process), and a problem the SFT warm start trained on can never be an eval problem.

:class:`SplitTask` wraps any task object with the built-in protocol (``name``, ``sample(rng, n,
difficulties)``, ``verify(problem, completion, finished)``, problems with a ``prompt``) and draws
only problems of its split (rejection sampling; an empty or nearly empty split at a difficulty
raises instead of looping). It is itself a task, so it goes wherever a task goes
(``entropylab.rl.sft.sft_warmstart``, samplers, verifiers).

Uses: the train pool feeds SFT and RL batches, the *selection* split the SFT stop rule and any
hyper-parameter choice (the manipulation pilot), the *eval* split only the final comparison.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np

SPLITS = ("train", "selection", "eval")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SplitSpec:
    """How a problem space is split: fractions of (train, selection, eval) and the salt."""

    train: float = 0.7
    selection: float = 0.1
    eval: float = 0.2
    salt: str = "entropylab-split-v1"

    def __post_init__(self):
        fr = (self.train, self.selection, self.eval)
        if any(not f >= 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-9:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fr}")
        if not isinstance(self.salt, str):
            raise TypeError(f"salt must be a str, got {type(self.salt).__name__}")

    def fraction(self, split: str) -> float:
        _check_split(split)
        return getattr(self, split)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def problem_key(problem) -> str:
    """A problem's identity: its prompt text (what the model sees)."""
    key = getattr(problem, "key", None) or getattr(problem, "prompt", None)
    if not isinstance(key, str) or not key:
        raise TypeError(f"problem {problem!r} has no str 'key' or 'prompt' to hash")
    return key


def split_unit(task_id: str, key: str, salt: str) -> float:
    """The problem's position ``u`` ∈ [0, 1) in the split (sha256, stable across processes)."""
    h = hashlib.sha256(f"{salt}|{task_id}|{key}".encode()).hexdigest()
    return int(h[:16], 16) / float(1 << 64)


def split_of(task_id: str, key: str, spec: SplitSpec) -> str:
    """``"train"``, ``"selection"`` or ``"eval"`` for one problem key."""
    u = split_unit(task_id, key, spec.salt)
    if u < spec.train:
        return "train"
    if u < spec.train + spec.selection:
        return "selection"
    return "eval"


def task_id(task) -> str:
    """A task's identity for hashing: its name plus the options that change problem text.

    A task may define ``split_id`` (a str) to say it itself (the reasoning-gym adapter does).
    """
    own = getattr(task, "split_id", None)
    if isinstance(own, str) and own:
        return own
    opts = {
        k: getattr(task, k)
        for k in ("reverse", "scratchpad", "second_digits", "max_number")
        if hasattr(task, k)
    }
    name = getattr(task, "name", "") or type(task).__name__
    return name + "".join(f";{k}={opts[k]!r}" for k in sorted(opts))


class SplitTask:
    """The problems of one split of ``task`` (see the module docstring).

    Args:
      task: a task object (``AdditionTask()``, ``MultiplicationTask()``, ``CountdownTask()``, a
        :class:`entropylab.study.gym.GymTask`, …).
      split: ``train`` | ``selection`` | ``eval``.
      spec: the :class:`SplitSpec` (fractions and salt); the same spec must be used for all three.
      max_tries: draws per requested problem before giving up (the split is ~empty there).
    """

    def __init__(self, task, split: str, spec: SplitSpec | None = None, *, max_tries: int = 200):
        _check_split(split)
        self.task, self.split = task, split
        self.spec = spec if spec is not None else SplitSpec()
        if self.spec.fraction(split) == 0:
            raise ValueError(f"split {split!r} has fraction 0 in {self.spec}")
        if max_tries < 1:
            raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        self.max_tries = max_tries
        self.task_id = task_id(task)
        self.name = getattr(task, "name", type(task).__name__)

    def __getattr__(self, attr):  # parse, make, reverse, … of the wrapped task
        if attr == "task":
            raise AttributeError(attr)
        return getattr(self.task, attr)

    def contains(self, problem) -> bool:
        return split_of(self.task_id, problem_key(problem), self.spec) == self.split

    def _draw(self, rng: np.random.Generator, d: int):
        for _ in range(self.max_tries):
            p = self.task.sample(rng, 1, [d])[0]
            if self.contains(p):
                return p
        raise ValueError(
            f"no problem of split {self.split!r} found in {self.max_tries} draws at difficulty "
            f"{d} of {self.task_id}: the split is (nearly) empty there; use a larger difficulty "
            f"or other fractions"
        )

    def sample(self, rng: np.random.Generator, n: int, difficulties: Sequence[int]) -> list:
        """``n`` problems of this split, difficulties cycled in order (like the wrapped task)."""
        if not difficulties:
            raise ValueError("difficulties must be a non-empty sequence")
        return [self._draw(rng, int(difficulties[i % len(difficulties)])) for i in range(n)]

    def sample_unique(self, rng: np.random.Generator, n: int, difficulties: Sequence[int]) -> list:
        """``n`` *distinct* problems of this split (for eval sets); raises if there are too few."""
        if not difficulties:
            raise ValueError("difficulties must be a non-empty sequence")
        seen, out = set(), []
        for i in range(n):
            d = int(difficulties[i % len(difficulties)])
            for _ in range(self.max_tries):
                p = self._draw(rng, d)
                if problem_key(p) not in seen:
                    break
            else:
                raise ValueError(
                    f"could not find {n} distinct {self.split!r} problems at difficulty {d} "
                    f"of {self.task_id} (found {len(out)}): the split is too small"
                )
            seen.add(problem_key(p))
            out.append(p)
        return out

    def verify(self, problem, completion: str, finished: bool = True) -> float:
        return self.task.verify(problem, completion, finished)


class RoutedTask:
    """A task that serves one split to some draws and another split to the rest.

    ``entropylab.rl.sft.sft_warmstart`` draws its stop-rule eval set with
    ``problem_rng(seed, 0, stream=99)`` and its training batches from other streams, through
    one task object. ``RoutedTask(train_task, {99: selection_task})`` sends the draws whose
    generator was seeded with a stream in the mapping to that task, so the SFT stop rule is
    decided on the *selection* split and training only sees the train pool. The stream is read
    from the generator's seed sequence (``[seed, step, stream]`` as ``problem_rng`` builds it).
    """

    def __init__(self, default, routes: dict[int, object]):
        self.default, self.routes = default, dict(routes)
        self.name = getattr(default, "name", type(default).__name__)

    @staticmethod
    def stream_of(rng: np.random.Generator) -> int | None:
        seq = getattr(rng.bit_generator, "seed_seq", None)
        entropy = getattr(seq, "entropy", None)
        if isinstance(entropy, Sequence) and len(entropy) == 3:
            return int(entropy[2])
        return None

    def sample(self, rng: np.random.Generator, n: int, difficulties: Sequence[int]) -> list:
        task = self.routes.get(self.stream_of(rng), self.default)
        return task.sample(rng, n, difficulties)

    def verify(self, problem, completion: str, finished: bool = True) -> float:
        return self.default.verify(problem, completion, finished)

    def __getattr__(self, attr):
        if attr in ("default", "routes"):
            raise AttributeError(attr)
        return getattr(self.default, attr)


def make_splits(task, spec: SplitSpec | None = None) -> dict[str, SplitTask]:
    """``{"train": SplitTask, "selection": SplitTask, "eval": SplitTask}`` of one task."""
    spec = spec if spec is not None else SplitSpec()
    return {s: SplitTask(task, s, spec) for s in SPLITS if spec.fraction(s) > 0}
