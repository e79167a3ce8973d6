"""Edge-of-competence criteria on [groups, group_size] rewards."""

import numpy as np
import pytest

from entropylab.study import CompetenceCriteria, check_competence, select_difficulty


def test_hand_checked_reports():
    # 4 groups of 4: pass@1 = (1 + 2 + 0 + 4)/16 = 0.4375; mixed groups: rows 0, 1 -> 0.5
    r = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]], float)
    rep = check_competence(r)
    assert rep.pass1 == pytest.approx(0.4375) and rep.mixed_frac == 0.5 and rep.ok
    rep = check_competence(r, CompetenceCriteria(min_mixed_frac=0.6))
    assert not rep.ok and "mixed-reward groups 0.500 < 0.6" in rep.reasons[0]
    rep = check_competence(np.ones((3, 4)))
    assert not rep.ok and len(rep.reasons) == 2 and rep.pass1 == 1.0
    # Countdown's 0.1 format reward: mixed, but not a success
    rep = check_competence(np.array([[0.1, 0.0], [1.0, 0.1]]), CompetenceCriteria(pass1_low=0.2))
    assert rep.pass1 == 0.25 and rep.mixed_frac == 1.0 and rep.ok


def test_bad_inputs():
    with pytest.raises(ValueError, match="non-finite"):
        check_competence(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="group_size >= 2"):
        check_competence(np.ones((3, 1)))
    with pytest.raises(ValueError, match="pass1_low"):
        CompetenceCriteria(pass1_low=0.6, pass1_high=0.5)


def test_select_difficulty():
    rng = np.random.default_rng(0)
    acc = {1: 0.9, 2: 0.3, 3: 0.02}
    ok, reports = select_difficulty(
        lambda d: (rng.random((32, 8)) < acc[d]).astype(float), [1, 2, 3]
    )
    assert ok == [2] and set(reports) == {1, 2, 3}
