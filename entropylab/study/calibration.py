"""Pre-registered edge-of-competence criteria, checked on the rollouts RL starts from.

GRPO learns only from groups whose rewards differ (a group of all-correct or all-wrong samples
has zero advantage), and the entropy dynamics a study measures depend on where the policy
starts. So a study fixes, *before* running, what "edge of competence" means and checks it at RL
start for every initialisation, e.g. T = 1 pass@1 in [0.15, 0.5] and at least half of the
groups with mixed rewards. :func:`check_competence` is that check on a ``[prompts, group]``
reward array; :func:`select_difficulty` picks the difficulties that pass from a pilot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import numpy as np


@dataclasses.dataclass(frozen=True, kw_only=True)
class CompetenceCriteria:
    """Edge of competence: pass@1 (fraction of samples with reward ≥ ``success``) in
    ``[pass1_low, pass1_high]`` and at least ``min_mixed_frac`` of groups with mixed rewards."""

    pass1_low: float = 0.15
    pass1_high: float = 0.5
    min_mixed_frac: float = 0.5
    success: float = 1.0

    def __post_init__(self):
        if not 0 <= self.pass1_low <= self.pass1_high <= 1:
            raise ValueError(
                f"need 0 <= pass1_low <= pass1_high <= 1, got {self.pass1_low}, {self.pass1_high}"
            )
        if not 0 <= self.min_mixed_frac <= 1:
            raise ValueError(f"min_mixed_frac must be in [0, 1], got {self.min_mixed_frac}")


@dataclasses.dataclass(frozen=True)
class CompetenceReport:
    pass1: float
    mixed_frac: float
    n_groups: int
    group_size: int
    ok: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_competence(rewards, criteria: CompetenceCriteria | None = None) -> CompetenceReport:
    """Check the criteria on ``rewards [n_groups, group_size]`` of T = 1 samples.

    A group is *mixed* when not all its rewards are equal (its GRPO advantages are not all zero).
    Non-finite rewards raise: a NaN reward is a bug upstream, not a failure to learn.
    """
    c = criteria if criteria is not None else CompetenceCriteria()
    r = np.asarray(rewards, np.float64)
    if r.ndim != 2 or r.shape[0] < 1 or r.shape[1] < 2:
        raise ValueError(f"rewards must be [n_groups >= 1, group_size >= 2], got {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards contain non-finite values")
    pass1 = float(np.mean(r >= c.success))
    mixed = float(np.mean(r.max(1) != r.min(1)))
    reasons = []
    if not c.pass1_low <= pass1 <= c.pass1_high:
        reasons.append(f"pass@1 {pass1:.3f} outside [{c.pass1_low}, {c.pass1_high}]")
    if mixed < c.min_mixed_frac:
        reasons.append(f"mixed-reward groups {mixed:.3f} < {c.min_mixed_frac}")
    return CompetenceReport(
        pass1=pass1,
        mixed_frac=mixed,
        n_groups=r.shape[0],
        group_size=r.shape[1],
        ok=not reasons,
        reasons=tuple(reasons),
    )


def select_difficulty(
    measure: Callable[[int], np.ndarray],
    candidates: Iterable[int],
    criteria: CompetenceCriteria | None = None,
) -> tuple[list[int], dict[int, CompetenceReport]]:
    """Run ``measure(d) -> rewards [groups, group_size]`` per candidate difficulty (on the
    *selection* split) and return the difficulties that pass, with every report."""
    reports = {int(d): check_competence(measure(int(d)), criteria) for d in candidates}
    if not reports:
        raise ValueError("candidates must not be empty")
    return [d for d, rep in reports.items() if rep.ok], reports
