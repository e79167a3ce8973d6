"""Verifiable tasks: generators, formats, parsers and verifiers (incl. malformed output)."""

import numpy as np
import pytest

from entropylab.rl import tasks as T


@pytest.fixture
def tok():
    return T.CharTokenizer()


def test_tokenizer_roundtrip_and_errors(tok):
    ids = tok.encode("12+34=", bos=True, eos=True)
    assert ids[0] == T.BOS and ids[-1] == T.EOS
    assert tok.decode(ids) == ("12+34=", True)
    assert tok.decode(tok.encode("99")) == ("99", False)
    with pytest.raises(ValueError, match="not in the tokenizer alphabet"):
        tok.encode("12a")
    toks, mask = tok.encode_prompts(["1+2=", "10+20="])
    assert toks.shape == (2, 7) and mask[0].sum() == 5 and not mask[0, :2].any()
    assert tok.decode(toks[0][mask[0]]) == ("1+2=", False)


def test_addition_reversed_hand_case():
    task = T.AdditionTask()
    p = task.make(123, 45, 3)
    assert p.prompt == "123+45=" and p.answer == 168 and p.target == "861"
    assert task.verify(p, "861") == 1.0
    assert task.verify(p, "168") == 0.0  # forward order is wrong in reversed mode
    assert task.verify(p, "861", finished=False) == 0.0
    fwd = T.AdditionTask(reverse=False)
    assert fwd.verify(fwd.make(123, 45, 3), "168") == 1.0


@pytest.mark.parametrize(
    "bad", ["", " ", "8a1", "86 1", "+861", "-861", "8" * 100, "861>", "\x00", "1e3", "٣"]
)
def test_verifiers_never_crash_on_malformed(bad):
    add, mul, cd = T.AdditionTask(), T.MultiplicationTask(scratchpad=True), T.CountdownTask()
    rng = np.random.default_rng(0)
    for task in (add, mul, cd):
        p = task.sample(rng, 1, [2])[0]
        r = task.verify(p, bad)
        assert r in (0.0, 0.1)


def test_multiplication_scratchpad():
    task = T.MultiplicationTask(scratchpad=True)
    p = task.make(37, 24, 2)
    # 37*4 = 148 -> "841"; 37*20 = 740 -> "047"; 888 -> "888"
    assert p.target == "841+047>888" and p.answer == 888
    assert task.verify(p, p.target) == 1.0
    assert task.verify(p, "841+047>887") == 0.0
    assert task.verify(p, "888") == 1.0  # no scratchpad: the whole text is the answer


def test_generators_seeded_stratified_and_correct():
    for task in (T.AdditionTask(), T.MultiplicationTask(), T.CountdownTask()):
        diffs = [2, 3] if task.name == "countdown" else [1, 2, 3]
        a = task.sample(T.problem_rng(7, 3), 12, diffs)
        b = task.sample(T.problem_rng(7, 3), 12, diffs)
        c = task.sample(T.problem_rng(7, 4), 12, diffs)
        assert a == b and a != c
        assert [p.difficulty for p in a] == [diffs[i % len(diffs)] for i in range(12)]
        for p in a:
            assert task.verify(p, p.target) == 1.0, p
    for p in T.AdditionTask().sample(np.random.default_rng(1), 30, [3]):
        assert all(100 <= x < 1000 for x in p.operands)
        assert p.answer == sum(p.operands)


def test_countdown_tinyzero_rewards():
    task = T.CountdownTask()
    p = T.Problem(prompt="3,5,7>22:", target="3*5+7", difficulty=3, answer=22, operands=(3, 5, 7))
    assert task.verify(p, "3*5+7") == 1.0
    assert task.verify(p, "(5*3)+7") == 1.0  # any correct expression counts
    assert task.verify(p, "7+5*3") == 1.0
    assert task.verify(p, "3*5+5") == 0.1  # wrong numbers: format score
    assert task.verify(p, "3+5+7") == 0.1  # wrong value
    assert task.verify(p, "3*5+7+0") == 0.1  # extra number
    assert task.verify(p, "3/(5-5)+7") == 0.1  # division by zero
    assert task.verify(p, "((((") == 0.1
    assert task.verify(p, "") == 0.0  # no answer
    assert task.verify(p, "3*5+7", finished=False) == 0.0
    assert task.verify(p, "__import__('os')") == 0.1  # never evaluated


def test_countdown_exact_division():
    val, used = T.evaluate_countdown("(8/3)*3")
    assert val == 8 and sorted(used) == [3, 3, 8]
    assert T.evaluate_countdown("2**10") is None  # power is not allowed
    assert T.evaluate_countdown("-3+5") is None  # unary minus is not a binary op


def test_sft_batch_mask_alignment(tok):
    task = T.AdditionTask()
    probs = [task.make(12, 34, 2), task.make(5, 6, 1)]
    toks, mask = T.sft_batch(tok, probs, 16)
    for i, p in enumerate(probs):
        n_prompt = len(p.prompt) + 1
        # positions whose next token is a response token (target chars + EOS)
        assert mask[i].sum() == len(p.target) + 1
        nxt = toks[i, 1:][mask[i, :-1]]
        text, done = tok.decode(nxt)
        assert done and text == p.target
        assert not mask[i, : n_prompt - 1].any()
    with pytest.raises(ValueError, match="exceeds seq_len"):
        T.sft_batch(tok, probs, 6)


def test_make_task_and_bad_difficulty():
    assert isinstance(T.make_task("addition"), T.AdditionTask)
    with pytest.raises(ValueError, match="unknown task"):
        T.make_task("sorting")
    with pytest.raises(ValueError, match="difficulty"):
        T.AdditionTask().sample(np.random.default_rng(0), 1, [0])
    with pytest.raises(ValueError, match="difficulty"):
        T.CountdownTask().sample(np.random.default_rng(0), 1, [1])


def test_random_reward_task_ignores_the_answer_and_is_reseeded_per_step():
    base = T.AdditionTask()
    problems = base.sample(np.random.default_rng(0), 2000, (2,))
    right = [str(p.answer)[::-1] for p in problems]  # reversed digits: the task's format
    assert all(base.verify(p, c) == 1.0 for p, c in zip(problems, right))
    task = T.RandomRewardTask(base, seed=3, p=0.5)
    assert task.name == "addition" and task.base is base  # everything else is the base task's
    task.at_step(7)
    got_right = [task.verify(p, c) for p, c in zip(problems, right)]
    task.at_step(7)
    got_wrong = [task.verify(p, "x") for p in problems]
    # the same (seed, step) gives the same draws whatever the completion
    assert got_right == got_wrong
    assert set(got_right) == {0.0, 1.0}
    assert abs(np.mean(got_right) - 0.5) < 0.04  # 2000 draws: sd 0.011
    # the draws are NumPy's generator seeded with (seed, step), compared >= p: by hand
    u = np.random.default_rng([3, 7]).random(5)
    assert got_right[:5] == [float(x < 0.5) for x in u]
    task.at_step(8)
    assert [task.verify(p, "x") for p in problems] != got_right  # another step, other draws
    for p_, want in ((0.0, 0.0), (1.0, 1.0)):
        t = T.RandomRewardTask(base, seed=0, p=p_)
        t.at_step(0)
        assert {t.verify(p, c) for p, c in zip(problems[:50], right)} == {want}
    assert T.eval_task(task) is base and T.eval_task(base) is base
    for bad in (-0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(ValueError, match="p must be a probability"):
            T.RandomRewardTask(base, seed=0, p=bad)
