"""reasoning-gym adapter: protocol on a stand-in factory (always) and on reasoning-gym itself."""

import numpy as np
import pytest

from entropylab.study import SplitSpec, make_splits
from entropylab.study.gym import GymTask


class _Dataset:
    """Stand-in generator: item i at config c is 'i+c.a=?' with answer i+c.a."""

    def __init__(self, a, seed, size):
        self.a, self.seed, self.size = a, seed, size

    def __getitem__(self, i):
        return {"question": f"{i}+{self.a}=?", "answer": str(i + self.a), "metadata": {}}

    def score_answer(self, answer, entry):
        if answer == "crash":
            raise RuntimeError("verifier bug")
        return 1.0 if answer == entry["answer"] else 0.0


class _Factory:
    DATASETS = {"toy": None}

    @staticmethod
    def has_curriculum(name):
        return False

    @staticmethod
    def create_dataset(name, **cfg):
        return _Dataset(**cfg)


def test_protocol_on_a_stand_in_factory():
    task = GymTask(
        "toy",
        levels={1: {"a": 10}, 2: {"a": 1000}},
        factory=_Factory,
        prompt_fn=lambda q: f"Q: {q}",
    )
    probs = task.sample(np.random.default_rng(0), 4, [1, 2])
    assert [p.difficulty for p in probs] == [1, 2, 1, 2]
    p = probs[1]
    assert p.prompt == f"Q: {p.index}+1000=?" and p.target == str(p.index + 1000)
    assert task.verify(p, f" {p.target} ") == 1.0
    assert task.verify(p, p.target, finished=False) == 0.0  # no EOS, no reward
    assert task.verify(p, "crash") == 0.0  # a verifier never raises on model output
    again = task.sample(np.random.default_rng(0), 4, [1, 2])
    assert [q.prompt for q in again] == [q.prompt for q in probs]
    with pytest.raises(ValueError, match="difficulty 3"):
        task.sample(np.random.default_rng(0), 1, [3])
    with pytest.raises(ValueError, match="no curriculum"):
        GymTask("toy", factory=_Factory)
    with pytest.raises(ValueError, match="unknown reasoning-gym dataset"):
        GymTask("nope", levels={1: {}}, factory=_Factory)
    # hash splits use the adapter's identity (dataset + levels + config + seed)
    sp = make_splits(task, SplitSpec(train=0.5, selection=0.25, eval=0.25))
    ev = sp["eval"].sample(np.random.default_rng(1), 20, [1])
    tr = sp["train"].sample(np.random.default_rng(1), 20, [1])
    assert not {q.prompt for q in ev} & {q.prompt for q in tr}
    assert sp["eval"].task_id.startswith("rg:toy;")


def test_real_reasoning_gym_basic_arithmetic():
    pytest.importorskip("reasoning_gym", reason="optional extra reasoning-gym not installed")
    task = GymTask("basic_arithmetic", config={"operators": ("+", "-")})
    binary = GymTask("basic_arithmetic", config={"operators": ("+", "-")}, binary=True)
    easy = task.config_for(0)
    assert easy["max_terms"] == 2 and easy["max_digits"] == 1  # curriculum level 0
    assert task.config_for(2)["max_digits"] == 3
    probs = make_splits(task)["eval"].sample(np.random.default_rng(0), 6, [0, 1])
    for p in probs:
        assert task.verify(p, p.target) == 1.0
        assert 0.0 <= task.verify(p, p.target + "1") < 1.0  # partial credit is reasoning-gym's
        assert binary.verify(p, p.target + "1") == 0.0 and binary.verify(p, p.target) == 1.0
    again = make_splits(task)["eval"].sample(np.random.default_rng(0), 6, [0, 1])
    assert [p.prompt for p in again] == [p.prompt for p in probs]
