"""Verifiable tasks for RL with a from-scratch model: addition, multiplication, Countdown.

Every task has a seeded generator with difficulty levels, a prompt format, an answer parser and a
verifier that never raises on malformed output, plus an SFT target generator (with an optional
short scratchpad) so a model trained from scratch can be warm-started to partial competence.

Text is character-level over a small alphabet (:class:`CharTokenizer`): a tiny model learns it
quickly and the vocabulary stays ~30 tokens, which keeps the full-vocabulary entropy cheap.

Formats (``⏎`` = EOS):

* addition, difficulty d (both operands have d digits): ``"123+45="`` → ``"861⏎"``. With
  ``reverse=True`` (default) the answer's digits are written least-significant first (168 → "861"):
  a from-scratch model learns reversed answers much faster (0.92 vs 0.59 greedy accuracy after 200
  SFT steps in our tiny-scale probes).
* multiplication, difficulty d (d-digit × d-digit, or × 1 digit with ``second_digits=1``):
  ``"37*4="`` → answer as above; ``scratchpad=True`` writes the partial products first
  (``"37*24=" → "841+047>888⏎"``: a·b_i·10^i for each digit b_i of b, reversed, then ``>`` and the
  reversed result). The parser reads the text after the last ``>``.
* Countdown (TinyZero, github.com/Jiayi-Pan/TinyZero): difficulty n
  = how many numbers; prompt ``"3,5,7>22:"``; the answer is an expression over + − × ÷ and
  parentheses using each given number exactly once, e.g. ``"(7-5)*3+…"``. Reward as TinyZero's
  ``compute_score``: **0** if there is no answer (empty, or generation never emitted EOS), **0.1**
  (format score) if the answer is wrong, uses other numbers, or does not evaluate, **1.0** if it
  evaluates exactly to the target (exact rational arithmetic instead of TinyZero's |x−t| < 1e-5).
"""

from __future__ import annotations

import ast
import dataclasses
import fractions
from collections.abc import Sequence

import numpy as np

PAD, BOS, EOS = 0, 1, 2
ALPHABET = "0123456789+-*/()=,:>? "


class CharTokenizer:
    """Character-level tokenizer: ids 0/1/2 = PAD/BOS/EOS, then one id per alphabet character."""

    def __init__(self, alphabet: str = ALPHABET):
        if len(set(alphabet)) != len(alphabet):
            raise ValueError("alphabet has repeated characters")
        self.alphabet = alphabet
        self._to_id = {c: i + 3 for i, c in enumerate(alphabet)}
        self.vocab_size = len(alphabet) + 3
        self.pad_id, self.bos_id, self.eos_id = PAD, BOS, EOS

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        try:
            ids = [self._to_id[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the tokenizer alphabet") from None
        return ([BOS] if bos else []) + ids + ([EOS] if eos else [])

    def decode(self, ids: Sequence[int]) -> tuple[str, bool]:
        """Text up to the first EOS (PAD/BOS dropped) and whether an EOS was seen."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                return "".join(out), True
            if i >= 3 and i - 3 < len(self.alphabet):
                out.append(self.alphabet[i - 3])
        return "".join(out), False

    def encode_prompts(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded ``[B, P]`` int32 prompt ids (BOS first) and their validity mask."""
        seqs = [self.encode(p, bos=True) for p in prompts]
        width = max(len(s) for s in seqs)
        toks = np.full((len(seqs), width), PAD, np.int32)
        mask = np.zeros((len(seqs), width), bool)
        for i, s in enumerate(seqs):
            toks[i, width - len(s) :] = s
            mask[i, width - len(s) :] = True
        return toks, mask


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
    """One task instance: prompt text, the SFT target completion (no EOS), difficulty, data."""

    prompt: str
    target: str
    difficulty: int
    answer: int
    operands: tuple[int, ...]


def _rev(s: str, reverse: bool) -> str:
    return s[::-1] if reverse else s


def _parse_int(text: str, reverse: bool) -> int | None:
    text = text.strip()
    # ASCII digits only: str.isdigit() and int() also accept other scripts ("٣", "３", "²")
    if not text or not (text.isascii() and text.isdigit()) or len(text) > 40:
        return None
    return int(_rev(text, reverse))


class _ArithmeticTask:
    op: str = "+"
    name: str = ""

    def __init__(self, *, reverse: bool = True, scratchpad: bool = False, second_digits=None):
        self.reverse, self.scratchpad, self.second_digits = reverse, scratchpad, second_digits

    def _operands(self, rng: np.random.Generator, d: int) -> tuple[int, int]:
        if d < 1:
            raise ValueError(f"difficulty (digit count) must be >= 1, got {d}")
        lo = 0 if d == 1 else 10 ** (d - 1)
        d2 = d if self.second_digits is None else self.second_digits
        lo2 = 0 if d2 == 1 else 10 ** (d2 - 1)
        return int(rng.integers(lo, 10**d)), int(rng.integers(lo2, 10**d2))

    def _apply(self, a: int, b: int) -> int:
        raise NotImplementedError

    def _scratch(self, a: int, b: int) -> str:
        return ""

    def make(self, a: int, b: int, d: int) -> Problem:
        ans = self._apply(a, b)
        target = _rev(str(ans), self.reverse)
        if self.scratchpad:
            target = self._scratch(a, b) + ">" + target
        return Problem(
            prompt=f"{a}{self.op}{b}=", target=target, difficulty=d, answer=ans, operands=(a, b)
        )

    def sample(self, rng: np.random.Generator, n: int, difficulties: Sequence[int]) -> list:
        """``n`` problems, difficulties stratified (cycled in order, so each level gets n/len)."""
        return [self.make(*self._operands(rng, d), d) for d in _stratified(difficulties, n)]

    def parse(self, completion: str) -> int | None:
        text = completion.rsplit(">", 1)[-1] if self.scratchpad else completion
        return _parse_int(text, self.reverse)

    def verify(self, problem: Problem, completion: str, finished: bool = True) -> float:
        """1.0 if the parsed answer equals the true one and generation ended (EOS), else 0.0."""
        if not finished:
            return 0.0
        try:
            return float(self.parse(completion) == problem.answer)
        except Exception:  # a verifier never crashes on model output
            return 0.0


class AdditionTask(_ArithmeticTask):
    """Multi-digit addition ``a+b=`` with d-digit operands (difficulty d)."""

    op, name = "+", "addition"

    def _apply(self, a, b):
        return a + b


class MultiplicationTask(_ArithmeticTask):
    """Multi-digit multiplication ``a*b=``; optional partial-product scratchpad."""

    op, name = "*", "multiplication"

    def _apply(self, a, b):
        return a * b

    def _scratch(self, a, b):
        parts = [a * int(c) * 10**i for i, c in enumerate(reversed(str(b)))]
        return "+".join(_rev(str(p), self.reverse) for p in parts)


def _stratified(difficulties: Sequence[int], n: int) -> list[int]:
    if not difficulties:
        raise ValueError("difficulties must be a non-empty sequence")
    return [int(difficulties[i % len(difficulties)]) for i in range(n)]


_ALLOWED_BINOPS = {
    ast.Add: lambda x, y: x + y,
    ast.Sub: lambda x, y: x - y,
    ast.Mult: lambda x, y: x * y,
    ast.Div: lambda x, y: x / y,
}


def _eval_expr(node) -> tuple[fractions.Fraction, list[int]]:
    """Exact evaluation of +,−,×,÷ over integer literals; returns (value, literals used)."""
    if isinstance(node, ast.Expression):
        return _eval_expr(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return fractions.Fraction(node.value), [node.value]
    if isinstance(node, ast.BinOp) and type(node.op) in _ALLOWED_BINOPS:
        lv, ln = _eval_expr(node.left)
        rv, rn = _eval_expr(node.right)
        return _ALLOWED_BINOPS[type(node.op)](lv, rv), ln + rn
    raise ValueError("disallowed expression")


def evaluate_countdown(expr: str) -> tuple[fractions.Fraction, list[int]] | None:
    """Value and numbers used by a Countdown answer, or None if it is not a valid expression."""
    if not expr or len(expr) > 200 or any(c not in "0123456789+-*/() " for c in expr):
        return None
    try:
        return _eval_expr(ast.parse(expr, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return None


class CountdownTask:
    """Countdown: reach the target with + − × ÷ using each given number once (TinyZero reward)."""

    name = "countdown"

    def __init__(self, *, max_number: int = 9, format_score: float = 0.1):
        if max_number < 1:
            raise ValueError(f"max_number must be >= 1, got {max_number}")
        self.max_number, self.format_score = max_number, format_score

    def make(self, rng: np.random.Generator, n_numbers: int) -> Problem:
        if n_numbers < 2:
            raise ValueError(f"Countdown difficulty (number count) must be >= 2, got {n_numbers}")
        for _ in range(1000):
            nums = [int(x) for x in rng.integers(1, self.max_number + 1, size=n_numbers)]
            expr = str(nums[0])
            for i, x in enumerate(nums[1:]):
                op = "+-*/"[int(rng.integers(0, 4))]
                left = f"({expr})" if (op in "*/" and i > 0) else expr
                expr = f"{left}{op}{x}"
            res = evaluate_countdown(expr)
            if res is None or res[0].denominator != 1 or res[0] <= 0:
                continue
            target = int(res[0])
            shown = sorted(nums)
            prompt = ",".join(map(str, shown)) + f">{target}:"
            return Problem(
                prompt=prompt,
                target=expr,
                difficulty=n_numbers,
                answer=target,
                operands=tuple(nums),
            )
        raise RuntimeError("could not generate a Countdown instance")  # pragma: no cover

    def sample(self, rng: np.random.Generator, n: int, difficulties: Sequence[int]) -> list:
        return [self.make(rng, d) for d in _stratified(difficulties, n)]

    def parse(self, completion: str):
        return evaluate_countdown(completion.strip())

    def verify(self, problem: Problem, completion: str, finished: bool = True) -> float:
        try:
            if not finished or not completion.strip():
                return 0.0
            res = self.parse(completion)
            if res is None:
                return self.format_score
            value, used = res
            if sorted(used) != sorted(problem.operands) or value != problem.answer:
                return self.format_score
            return 1.0
        except Exception:  # a verifier never crashes on model output
            return 0.0


TASKS = {"addition": AdditionTask, "multiplication": MultiplicationTask, "countdown": CountdownTask}


class RandomRewardTask:
    """The random-reward control: the wrapped task's problems, rewards independent of the answer.

    ``verify`` returns 1.0 with probability ``p`` and 0.0 otherwise, whatever the completion —
    the "random reward" of Shao et al., *Spurious Rewards: Rethinking Training Signals in RLVR*
    (arXiv:2506.10947; ``p = 0.5`` there). Whatever a run under it still shows (entropy falling
    through clipping and sampling alone, say) is not caused by the reward signal.

    Reproducible: ``at_step(step)`` reseeds the draws from ``(seed, step)``; the trainers call
    this optional task hook at the start of every step, so a resumed or replayed step sees the
    same rewards. Within a step, the draws follow the order of the ``verify`` calls (the trainers
    score rows in order). ``base`` is the wrapped task: the trainers' held-out evaluation scores
    with it (:func:`eval_task`), so eval accuracy stays the real one. Every other attribute
    (``sample``, ``name``, ``parse``, …) is the wrapped task's.
    """

    def __init__(self, base, seed: int, p: float = 0.5):
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.base, self.seed, self.p = base, int(seed), float(p)
        self.rng = np.random.default_rng(self.seed)

    def at_step(self, step: int) -> None:
        self.rng = np.random.default_rng([self.seed, int(step)])

    def verify(self, problem, completion: str, finished: bool = True) -> float:
        return float(self.rng.random() < self.p)

    def __getattr__(self, attr):
        if attr in ("base", "rng", "seed", "p"):  # not set yet (e.g. during unpickling)
            raise AttributeError(attr)
        return getattr(self.base, attr)


def at_step(task, step: int) -> None:
    """Call the task's optional ``at_step(step)`` hook (the trainers do, before each step)."""
    hook = getattr(task, "at_step", None)
    if hook is not None:
        hook(step)


def eval_task(task):
    """The task whose verifier scores held-out evaluation: ``task.base`` for a control wrapper
    such as :class:`RandomRewardTask`, else ``task`` itself."""
    return task.base if isinstance(task, RandomRewardTask) else task


def make_task(name: str, **kwargs):
    """Build a task by name (``addition``, ``multiplication``, ``countdown``)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name](**kwargs)


def problem_rng(seed: int, step: int, stream: int = 0) -> np.random.Generator:
    """Deterministic generator for the problems of ``step`` (reruns/resumes see the same data)."""
    return np.random.default_rng([int(seed), int(step), int(stream)])


def sft_batch(
    tokenizer: CharTokenizer, problems: Sequence[Problem], seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded SFT sequences ``BOS prompt target EOS`` and a loss mask on the target+EOS.

    Returns ``(tokens [B, seq_len] int32, loss_mask [B, seq_len] bool)`` where ``loss_mask[i, t]``
    marks positions whose *next* token (``tokens[i, t+1]``) is part of the response, i.e. the mask
    is aligned with next-token predictions ``logits[:, :-1]`` → ``tokens[:, 1:]`` shifted left by
    one; a too-long example raises ``ValueError``.
    """
    toks = np.full((len(problems), seq_len), PAD, np.int32)
    mask = np.zeros((len(problems), seq_len), bool)
    for i, p in enumerate(problems):
        prompt = tokenizer.encode(p.prompt, bos=True)
        resp = tokenizer.encode(p.target, eos=True)
        seq = prompt + resp
        if len(seq) > seq_len:
            raise ValueError(f"example of length {len(seq)} exceeds seq_len={seq_len}: {p.prompt}")
        toks[i, : len(seq)] = seq
        mask[i, len(prompt) - 1 : len(seq) - 1] = True
    return toks, mask


def encode_fixed(tokenizer, prompts: Sequence[str], width: int):
    """Left-pad encoded prompts to exactly ``width`` tokens (a fixed shape avoids recompiles).

    Returns ``(tokens [B, width] int32, mask [B, width] bool)`` as JAX arrays; a prompt longer
    than ``width`` raises ``ValueError``.
    """
    import jax.numpy as jnp

    toks, mask = tokenizer.encode_prompts(prompts)
    if toks.shape[1] > width:
        raise ValueError(f"a prompt has {toks.shape[1]} tokens, more than prompt_width={width}")
    pad = width - toks.shape[1]
    toks = np.pad(toks, ((0, 0), (pad, 0)), constant_values=tokenizer.pad_id)
    mask = np.pad(mask, ((0, 0), (pad, 0)), constant_values=False)
    return jnp.asarray(toks), jnp.asarray(mask)


def score(task, tokenizer, problems, responses, finished) -> np.ndarray:
    """Verifier rewards ``[N]`` float32 for decoded responses (never raises on malformed output)."""
    out = np.zeros(len(problems), np.float32)
    for i, (p, resp) in enumerate(zip(problems, np.asarray(responses))):
        text, saw_eos = tokenizer.decode(resp)
        out[i] = task.verify(p, text, finished=bool(saw_eos))
    return out
