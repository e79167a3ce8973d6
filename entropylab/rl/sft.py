"""Supervised warm start on a verifiable task, stopped at partial competence.

A model trained from scratch cannot be improved by RL until it sometimes succeeds. This trains
next-token cross-entropy on ``BOS prompt target EOS`` sequences (loss on the response only) and
evaluates greedy accuracy on a fixed held-out problem set every ``eval_every`` steps, stopping as
soon as the mean accuracy over ``stop_difficulties`` (default: all) reaches ``target_accuracy``:
the "edge of competence" checkpoint that RL then starts from. Skills appear in sharp transitions
(2-digit addition goes from ~20% to ~60% greedy accuracy within 20 steps for the ``tiny`` model),
so evaluate often.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from entropylab.logprobs import policy_logprobs
from entropylab.ops import masked_mean
from entropylab.rl import sampling as S
from entropylab.rl import tasks as T
from entropylab.rl.tasks import encode_fixed, score
from entropylab.train.optim import OptimConfig, make_optimizer

__all__ = [
    "SFTConfig",
    "encode_fixed",
    "greedy_accuracy",
    "score",
    "sft_optimizer",
    "sft_warmstart",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SFTConfig:
    difficulties: tuple[int, ...] = (1, 2, 3)
    batch_size: int = 64
    seq_len: int = 24
    learning_rate: float = 1e-3
    max_steps: int = 400
    eval_every: int = 10
    eval_problems: int = 96
    target_accuracy: float = 0.5
    stop_difficulties: tuple[int, ...] | None = None
    warmup_steps: int = 20
    max_grad_norm: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.stop_difficulties is not None and not set(self.stop_difficulties) <= set(
            self.difficulties
        ):
            raise ValueError(
                f"stop_difficulties {self.stop_difficulties} must be a subset of difficulties "
                f"{self.difficulties}"
            )
        if not 0 < self.target_accuracy <= 1:
            raise ValueError(f"target_accuracy must be in (0, 1], got {self.target_accuracy}")
        for name in ("batch_size", "seq_len", "max_steps", "eval_every", "eval_problems"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_rate", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a Python number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be finite and > 0, got {value!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


def greedy_accuracy(sampler, params, task, tokenizer, problems, prompt_width) -> dict:
    """Greedy accuracy overall and per difficulty on ``problems``."""
    pt, pm = encode_fixed(tokenizer, [p.prompt for p in problems], prompt_width)
    keys = S.sample_keys(0, 0, jnp.arange(len(problems)), jnp.zeros(len(problems), jnp.int32))
    r = jax.device_get(sampler(params, pt, pm, keys))
    rewards = score(task, tokenizer, problems, r.response, r.finished)
    out = {"acc": float(np.mean(rewards == 1.0))}
    diffs = np.array([p.difficulty for p in problems])
    for d in sorted(set(diffs.tolist())):
        out[f"acc_d{d}"] = float(np.mean(rewards[diffs == d] == 1.0))
    return out


def sft_optimizer(cfg: SFTConfig) -> optax.GradientTransformation:
    """Global-norm clipping + AdamW (b2 0.98, no weight decay), linear warm-up to a constant lr,
    built by :func:`entropylab.train.optim.make_optimizer` (warm-up/cosine with
    ``min_lr_ratio = 1``, i.e. constant after the warm-up)."""
    warm = max(cfg.warmup_steps, 1)
    return make_optimizer(
        OptimConfig(
            learning_rate=cfg.learning_rate,
            warmup_steps=warm,
            total_steps=max(cfg.max_steps, warm + 1),
            min_lr_ratio=1.0,
            weight_decay=0.0,
            b1=0.9,
            b2=0.98,
            max_grad_norm=cfg.max_grad_norm,
        )
    )


def sft_warmstart(
    model, task, tokenizer, cfg: SFTConfig, *, prompt_width: int, max_new: int, log=None
):
    """Train ``model`` in place until greedy held-out accuracy ≥ ``cfg.target_accuracy``.

    Returns a history list of ``{"step", "loss", "acc", "acc_d*"}`` records (one per eval);
    ``log(record)`` is called on each as it is made.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = sft_optimizer(cfg)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, toks, mask):
        def loss_fn(p):
            out = policy_logprobs(nnx.merge(graphdef, p, rest), toks, start=1, with_entropy=False)
            return -masked_mean(out.logp, mask[:, :-1])

        loss, grads = jax.value_and_grad(loss_fn)(params)
        upd, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    greedy = S.SamplingConfig(max_new_tokens=max_new, greedy=True, eos_id=T.EOS, pad_id=T.PAD)
    gd_full, _ = nnx.split(model)
    sampler = S.make_sampler(gd_full, greedy)

    def full_state(p):
        nnx.update(model, p)
        return nnx.split(model)[1]

    eval_set = task.sample(
        T.problem_rng(cfg.seed, 0, stream=99), cfg.eval_problems, cfg.difficulties
    )
    history = []
    t0 = time.time()
    for i in range(1, cfg.max_steps + 1):
        problems = task.sample(
            T.problem_rng(cfg.seed, i, stream=7), cfg.batch_size, cfg.difficulties
        )
        toks, mask = T.sft_batch(tokenizer, problems, cfg.seq_len)
        params, opt_state, loss = step(params, opt_state, toks, mask)
        if i % cfg.eval_every == 0 or i == cfg.max_steps:
            acc = greedy_accuracy(
                sampler, full_state(params), task, tokenizer, eval_set, prompt_width
            )
            stop_on = cfg.stop_difficulties or cfg.difficulties
            acc["acc_stop"] = float(np.mean([acc[f"acc_d{d}"] for d in stop_on]))
            history.append({"step": i, "loss": float(loss), "time_s": time.time() - t0, **acc})
            if log is not None:
                log(history[-1])
            if acc["acc_stop"] >= cfg.target_accuracy:
                break
    nnx.update(model, params)
    return history
