"""reasoning-gym tasks behind the built-in task protocol (optional extra ``reasoning-gym``).

`reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ ships ~100 procedural dataset
generators with verifiers (``dataset.score_answer(answer, entry) -> float``) and difficulty
curricula; everything is generated locally, so it works offline. :class:`GymTask` exposes one
of them with the same protocol as ``entropylab.rl.tasks`` (``name``, ``sample(rng, n,
difficulties)``, ``verify(problem, completion, finished)``, problems with ``prompt`` /
``target`` / ``difficulty``), so :class:`entropylab.study.splits.SplitTask`, SFT warm starts and
the calibration checks take it unchanged.

Difficulty ``d`` (an int ≥ 0) is either an explicit config override from ``levels[d]`` (e.g.
``{1: {"min_digits": 1, "max_digits": 1}}``) or, without ``levels``, the dataset's curriculum
at global level d (every attribute set to ``min(d, its last level)``). Problem ``i`` of a
generator at a given config is a pure function of ``(base_seed, i)`` in reasoning-gym, so a draw
is an index from the caller's NumPy generator: reruns see the same problems.

Note: reasoning-gym questions are English text; the character tokenizer of the built-in tasks
does not cover them (use a byte-level tokenizer).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

_MAX_INDEX = 2**31 - 1


def _import_factory():
    try:
        from reasoning_gym import factory
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "GymTask needs the optional extra: pip install 'reasoning-gym==0.1.25'"
        ) from e
    return factory


@dataclasses.dataclass(frozen=True, kw_only=True)
class GymProblem:
    """One reasoning-gym item: prompt (the question, formatted), target (the answer text)."""

    prompt: str
    target: str
    difficulty: int
    answer: str
    index: int
    entry: dict = dataclasses.field(compare=False, repr=False)


class GymTask:
    """A reasoning-gym generator as a verifiable task.

    Args:
      dataset: a reasoning-gym dataset name (``reasoning_gym.factory.DATASETS``).
      levels: optional ``{difficulty: config overrides}``; without it the curriculum is used.
      config: config fields applied at every difficulty (e.g. ``{"operators": ("+", "-")}``).
      base_seed: the generator's seed; problem ``i`` is item ``i`` of that generator.
      prompt_fn: question text → prompt (default: the question unchanged).
      binary: reward 1 only for a full score (reasoning-gym gives partial credit for some wrong
        answers, e.g. 0.5 for a wrong number in ``basic_arithmetic``); default: its score as is.
      factory: the ``reasoning_gym.factory`` module (tests pass a stand-in; default: imported).
    """

    def __init__(
        self,
        dataset: str,
        *,
        levels: Mapping[int, Mapping[str, Any]] | None = None,
        config: Mapping[str, Any] | None = None,
        base_seed: int = 0,
        prompt_fn: Callable[[str], str] | None = None,
        binary: bool = False,
        factory=None,
    ):
        self.factory = factory if factory is not None else _import_factory()
        if dataset not in self.factory.DATASETS:
            raise ValueError(f"unknown reasoning-gym dataset {dataset!r}")
        if levels is None and not self.factory.has_curriculum(dataset):
            raise ValueError(f"dataset {dataset!r} has no curriculum: pass levels={{d: {{...}}}}")
        self.dataset, self.base_seed = dataset, int(base_seed)
        self.levels = None if levels is None else {int(k): dict(v) for k, v in levels.items()}
        self.config = dict(config or {})
        self.prompt_fn = prompt_fn or (lambda q: q)
        self.binary = bool(binary)
        self.name = f"rg:{dataset}"
        cfg_txt = json.dumps(
            {"levels": self.levels, "config": self.config, "seed": self.base_seed},
            sort_keys=True,
            default=repr,
        )
        self.split_id = f"{self.name};{cfg_txt}"
        self._datasets: dict[int, Any] = {}

    def config_for(self, difficulty: int) -> dict:
        """The full generator config at ``difficulty`` (without seed and size)."""
        d = int(difficulty)
        if self.levels is not None:
            if d not in self.levels:
                raise ValueError(f"difficulty {d} is not in levels {sorted(self.levels)}")
            cfg = dict(self.levels[d])
        else:
            if d < 0:
                raise ValueError(f"difficulty must be >= 0 for a curriculum, got {d}")
            cur = self.factory.create_curriculum(self.dataset)
            cur.set_global_level(d)
            full = cur.generate_configuration({"seed": self.base_seed, "size": 1})
            cfg = {k: v for k, v in vars(full).items() if k not in ("seed", "size")}
        return {**cfg, **self.config}

    def _generator(self, d: int):
        if d not in self._datasets:
            cfg = self.config_for(d)
            self._datasets[d] = self.factory.create_dataset(
                self.dataset, **cfg, seed=self.base_seed, size=_MAX_INDEX
            )
        return self._datasets[d]

    def make(self, index: int, difficulty: int) -> GymProblem:
        entry = self._generator(int(difficulty))[int(index)]
        return GymProblem(
            prompt=self.prompt_fn(str(entry["question"])),
            target=str(entry["answer"]),
            difficulty=int(difficulty),
            answer=str(entry["answer"]),
            index=int(index),
            entry=entry,
        )

    def sample(self, rng: np.random.Generator, n: int, difficulties: Sequence[int]) -> list:
        """``n`` problems, difficulties cycled in order; each is a generator index from ``rng``."""
        if not difficulties:
            raise ValueError("difficulties must be a non-empty sequence")
        idx = rng.integers(0, _MAX_INDEX, size=n)
        return [self.make(int(i), difficulties[k % len(difficulties)]) for k, i in enumerate(idx)]

    def verify(self, problem: GymProblem, completion: str, finished: bool = True) -> float:
        """reasoning-gym's score in [0, 1] (``binary``: 1 iff the score is 1); 0 without EOS;
        never raises on model output."""
        if not finished:
            return 0.0
        try:
            ds = self._generator(problem.difficulty)
            score = float(ds.score_answer(completion.strip(), problem.entry))
        except Exception:  # noqa: BLE001 - a verifier never crashes on model output
            return 0.0
        return float(score >= 1.0) if self.binary else score
