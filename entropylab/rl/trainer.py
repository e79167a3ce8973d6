"""GRPO / PPO trainer on verifiable tasks: a thin host loop around the pure update step.

One RL step (:meth:`GRPOTrainer.step`):

1. **sample** — ``prompts_per_step`` problems (seeded by ``(seed, step)``), ``group_size``
   completions each with the jitted KV-cache sampler (per-sample keys from the named stream
   ``ROLLOUT``: ``(seed, step, prompt, sample)``, :mod:`entropylab.rl.rng`), optionally with a
   temperature hook (HAPO's adaptive temperature) and logit processors from the config;
2. **score** — decode and verify on the host (:func:`entropylab.rl.tasks.score`, never raises);
3. **prepare** — :func:`entropylab.rl.step.prepare_batch`: advantages by the estimator named in
   ``RLConfig.advantage_estimator`` (grpo, dr_grpo, rloo, reinforce), the reference log-probs when
   the objective uses a KL, and the per-sample extras every objective component declares in its
   ``needs`` (rewards, ARES difficulty buckets, AEPO's temperature samples; see
   :mod:`entropylab.rl.hooks`);
4. **update** — :func:`entropylab.rl.step.make_update`: one jitted call (old log-probs,
   ``epochs × minibatches`` optimizer steps, component state from the pooled statistics,
   full-batch diagnostics), optionally sharded over a mesh;
5. **log / checkpoint / eval** — ``metrics.jsonl`` (and a progress bar); pass@1 and pass@k on a
   fixed held-out set every ``eval_every`` steps; orbax checkpoints of the whole state (params,
   optimizer, objective state, sampler-hook state, step). All randomness derives from
   ``(seed, step)``, so a resumed run reproduces the uninterrupted one exactly.

Non-finite metrics after an update (``on_nonfinite``): ``"stop"`` raises ``FloatingPointError``
naming the step and the offending metrics; ``"skip"`` keeps the previous params/optimizer state
(the step counter advances), logs ``guard/skipped = 1`` and the names, and goes on.

Preemption (:meth:`GRPOTrainer.run`): SIGTERM/SIGINT (an :class:`entropylab.runs.PreemptionGuard`)
let the current step finish, its metrics line is written, a checkpoint is saved at that step
boundary (also when ``checkpoint_every`` would not have saved there), and :class:`RLPreempted`
is raised — a ``SystemExit`` with code 128 + signal number, so a script stops cleanly with the
usual "killed by a signal" status, no traceback, and no caller mistakes the partial run for a
finished one. Rerunning the same call resumes from that checkpoint and, because all randomness
derives from ``(seed, step)``, writes the same ``metrics.jsonl`` and parameters as an
uninterrupted run (``tests/rl/trainer_test.py``: a real SIGTERM in a subprocess).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropylab import parallel, runs
from entropylab.losses.objective import ObjectiveConfig, build_objective
from entropylab.ops import masked_mean
from entropylab.rl import hooks as H
from entropylab.rl import rng
from entropylab.rl import sampling as S
from entropylab.rl import tasks as T
from entropylab.rl import tree_sampling as TS
from entropylab.rl.metrics import pass_at_k
from entropylab.rl.step import (
    ADVANTAGE_ESTIMATORS,
    StepConfig,
    make_logprob_fn,
    make_update,
    prepare_batch,
)
from entropylab.train.checkpoint import Checkpointer, abstract_like
from entropylab.train.metrics import MetricWriter, ProgressBar
from entropylab.train.optim import OptimConfig, make_optimizer

__all__ = ["GRPOTrainer", "RLConfig", "RLPreempted", "pass_at_k", "rl_optimizer"]

_NONFINITE = ("stop", "skip")


class RLPreempted(SystemExit):
    """:meth:`GRPOTrainer.run` stopped by SIGTERM/SIGINT after checkpointing a step boundary.

    A ``SystemExit`` whose ``code`` is ``128 + signum`` (143 for SIGTERM): uncaught, the process
    exits quietly with that status; ``except Exception`` does not swallow it. Attributes:
    ``signum``, ``step`` (the checkpointed step; rerun to continue from it), ``checkpoint``
    (its directory) and ``records`` (the records this call wrote).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path, records: list[dict]):
        super().__init__(runs.PREEMPTED_EXIT_CODE + signum)
        self.signum, self.step, self.checkpoint, self.records = signum, step, checkpoint, records

    def __str__(self) -> str:
        return (
            f"stopped by signal {self.signum} after step {self.step}; checkpoint {self.checkpoint}"
            " (run again to resume)"
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLConfig:
    """GRPO/PPO settings. ``objective`` selects the loss (see ``entropylab.losses.objective``).

    ``advantage_estimator``: a name in :data:`entropylab.rl.step.ADVANTAGE_ESTIMATORS`;
    ``norm_adv_by_std=False`` with ``"grpo"`` means ``"dr_grpo"`` (kept for old configs).

    ``measure_entropy_change`` adds one teacher-forced forward after the update(s): the policy
    entropy on the *same* rollout tokens before and after the step, logged as
    ``cov/observed_dH`` (token mean of H_after − H_before over the response positions). That is
    the quantity the covariance theorem (arXiv:2505.22617 §4.2) predicts as ``cov/predicted_dH``;
    the change between consecutive rollout batches mixes in batch-to-batch noise.

    Sampler hooks: ``temperature_fn(entropy [B]) -> T [B]`` and ``logit_processors``
    (``f(logits [B, V], t) -> logits``), both static (hashable) callables; or a named stateful
    ``temperature_hook`` (``"hapo"``, kwargs ``tau``, ``negative_scale``, ``pivot``,
    ``interpolation``). AEPO's temperature samples use ``aepo_temperatures = (T_high, T_low)``
    switched on ``aepo_target_entropy``. ``tree_sampler`` (a
    :class:`~entropylab.rl.tree_sampling.TreeConfig` with ``n_init + budget = group_size`` and
    ``fill_at`` set) draws each training group as one entropy-branching tree (eval still samples
    independently). ``fused_logprobs`` streams the vocabulary (no
    ``[B, T, V]`` logits) unless the objective needs logits. ``on_nonfinite``: see the module.

    ``random_reward = p`` trains on the random-reward control
    (:class:`~entropylab.rl.tasks.RandomRewardTask`: rewards Bernoulli(p) independent of the
    answer, reseeded from ``(seed, step)``); evaluation still uses the task's verifier.
    """

    task: str = "addition"
    difficulties: tuple[int, ...] = (2, 3)
    seed: int = 0
    steps: int = 100
    prompts_per_step: int = 16
    group_size: int = 8
    prompt_width: int = 12
    max_new_tokens: int = 6
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    learning_rate: float = 3e-4
    max_grad_norm: float | None = 1.0
    epochs: int = 1
    minibatches: int = 2
    norm_adv_by_std: bool = True
    advantage_estimator: str = "grpo"
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    use_reference: bool = False
    eval_every: int = 10
    eval_problems: int = 64
    eval_k: int = 8
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    measure_entropy_change: bool = False
    fused_logprobs: bool = True
    vocab_block: int = 1024
    temperature_fn: Callable | None = None
    logit_processors: tuple = ()
    temperature_hook: str | None = None
    temperature_hook_kwargs: Any = ()
    aepo_target_entropy: float = 0.5
    aepo_temperatures: tuple[float, float] = (1.2, 0.8)
    on_nonfinite: str = "stop"
    tree_sampler: Any = None  # tree_sampling.TreeConfig: training rollouts as entropy trees
    # added after studies had run: out of the config hashes while None
    random_reward: float | None = runs.added_field(None)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            vals = v if isinstance(v, tuple) else (v,)
            for x in vals:
                if isinstance(x, float) and not math.isfinite(x):
                    raise ValueError(f"{f.name} must be finite, got {v!r}")
        for name in (
            "steps",
            "prompts_per_step",
            "group_size",
            "epochs",
            "minibatches",
            "max_new_tokens",
            "eval_problems",
            "prompt_width",
            "vocab_block",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.prompts_per_step * self.group_size) % self.minibatches:
            raise ValueError(
                f"minibatches={self.minibatches} must divide prompts_per_step*group_size="
                f"{self.prompts_per_step * self.group_size}"
            )
        if self.task not in T.TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {sorted(T.TASKS)}")
        rr = self.random_reward
        if rr is not None and (
            isinstance(rr, bool) or not isinstance(rr, int | float) or not 0.0 <= rr <= 1.0
        ):
            raise ValueError(f"random_reward must be None or a number in [0, 1], got {rr!r}")
        if self.eval_k < 1 or self.eval_every < 0:
            raise ValueError("eval_k must be >= 1 and eval_every >= 0")
        for name in ("learning_rate", "temperature", "top_p"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.top_p > 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.advantage_estimator not in ADVANTAGE_ESTIMATORS:
            raise ValueError(
                f"unknown advantage_estimator {self.advantage_estimator!r}; "
                f"registered: {sorted(ADVANTAGE_ESTIMATORS)}"
            )
        if self.temperature_hook is not None:
            if self.temperature_hook not in H.TEMPERATURE_HOOKS:
                raise ValueError(
                    f"unknown temperature_hook {self.temperature_hook!r}; "
                    f"registered: {sorted(H.TEMPERATURE_HOOKS)}"
                )
            if self.temperature_fn is not None:
                raise ValueError("set temperature_fn or temperature_hook, not both")
            kw = dict(self.temperature_hook_kwargs)
            H.split_hook_kwargs(self.temperature_hook, kw)
            object.__setattr__(self, "temperature_hook_kwargs", tuple(sorted(kw.items())))
        if self.on_nonfinite not in _NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {_NONFINITE}, got {self.on_nonfinite!r}")
        if len(self.aepo_temperatures) != 2 or not all(t > 0 for t in self.aepo_temperatures):
            raise ValueError(
                f"aepo_temperatures must be (T_high, T_low) > 0, got {self.aepo_temperatures}"
            )
        object.__setattr__(self, "logit_processors", tuple(self.logit_processors))
        if self.tree_sampler is not None:
            if not isinstance(self.tree_sampler, TS.TreeConfig):
                raise TypeError(f"tree_sampler must be a TreeConfig, got {self.tree_sampler!r}")
            if self.tree_sampler.slots != self.group_size:
                raise ValueError(
                    f"tree_sampler slots (n_init + budget = {self.tree_sampler.slots}) must equal "
                    f"group_size={self.group_size}"
                )
            if (
                self.tree_sampler.fill_at is None
                or self.tree_sampler.fill_at >= self.max_new_tokens
            ):
                raise ValueError(
                    "tree_sampler.fill_at must be set below max_new_tokens: GRPO groups need "
                    "group_size responses per prompt (unused slots would be empty responses)"
                )
            if self.temperature_hook is not None:
                raise ValueError("tree_sampler does not take a stateful temperature_hook")

    @property
    def estimator(self) -> str:
        """The advantage estimator used (``norm_adv_by_std=False`` turns grpo into dr_grpo)."""
        if self.advantage_estimator == "grpo" and not self.norm_adv_by_std:
            return "dr_grpo"
        return self.advantage_estimator

    @property
    def sampling(self) -> S.SamplingConfig:
        return self.sampling_at(self.temperature)

    def sampling_at(self, temperature: float) -> S.SamplingConfig:
        return S.SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            eos_id=T.EOS,
            pad_id=T.PAD,
        )


def rl_optimizer(cfg: RLConfig):
    """Global-norm clipping + AdamW (b2 0.99, no weight decay) at a constant learning rate, built
    by :func:`entropylab.train.optim.make_optimizer` (no warm-up, ``min_lr_ratio = 1``)."""
    return make_optimizer(
        OptimConfig(
            learning_rate=cfg.learning_rate,
            warmup_steps=0,
            total_steps=max(cfg.steps, 1),
            min_lr_ratio=1.0,
            weight_decay=0.0,
            b1=0.9,
            b2=0.99,
            max_grad_norm=cfg.max_grad_norm or None,
        )
    )


def _optimizer_key(cfg: RLConfig):
    return (cfg.learning_rate, cfg.max_grad_norm, max(cfg.steps, 1))


# Trainers over the same model graph and settings share compiled functions (graphdef, step
# config, objective config and optimizer settings are static; ``rest`` holds no arrays for the
# entropylab models and is passed as data or, for the update, closed over only when array-free).
@functools.partial(jax.jit, static_argnums=(0, 1))
def _logprobs_jit(graphdef, step_cfg, params, rest, tokens, mask):
    return make_logprob_fn(graphdef, rest, step_cfg)(params, tokens, mask).logp


_prepare_jit = jax.jit(prepare_batch, static_argnames=("group_size", "estimator"))
_UPDATES: dict = {}


def _cached_update(objective, tx, graphdef, rest, step_cfg, mesh, donate, opt_key):
    key = (objective.config, graphdef, step_cfg, id(mesh) if mesh else None, donate, opt_key)
    if jax.tree.leaves(rest) or mesh is not None:
        return make_update(objective, tx, graphdef, rest, step_cfg, mesh=mesh, donate=donate)
    if key not in _UPDATES:
        if len(_UPDATES) > 64:
            _UPDATES.clear()
        _UPDATES[key] = make_update(
            objective, tx, graphdef, rest, step_cfg, mesh=mesh, donate=donate
        )
    return _UPDATES[key]


def _component_kwargs(ocfg: ObjectiveConfig):
    yield dict(ocfg.policy_kwargs)
    for _, kw in tuple(ocfg.regularizers) + tuple(ocfg.advantage_shapers):
        yield dict(kw)


def rollout_record(group_size, rewards, response_mask, finished, temperature, problems, metrics):
    """The rollout statistics of one RL step's logged record, then the update's ``metrics``.

    ``rewards [B]`` (NumPy), ``response_mask [B, T]``, ``finished [B]``, ``temperature [B, T]``
    (the sampling temperature of each token), ``problems``: the B problems (their
    ``difficulty``), ``metrics``: name → scalar. Shared by :meth:`GRPOTrainer.step` and the
    replicated driver (:mod:`entropylab.rl.replicas`), so both log the same keys and values.
    """
    mask = np.asarray(response_mask)
    n_tok = int(mask.sum())
    groups = rewards.reshape(-1, group_size)
    diffs = np.array([p.difficulty for p in problems])
    return {
        "reward/mean": float(rewards.mean()),
        "reward/acc": float(np.mean(rewards == 1.0)),
        **{
            f"reward/acc_d{d}": float(np.mean(rewards[diffs == d] == 1.0))
            for d in sorted(set(diffs.tolist()))
        },
        "groups/zero_adv_frac": float(np.mean(groups.max(1) == groups.min(1))),
        "response/finished": float(np.mean(np.asarray(finished))),
        "rollout/temperature": float((np.asarray(temperature) * mask).sum() / max(n_tok, 1)),
        **{k: float(v) for k, v in metrics.items()},
    }


class GRPOTrainer:
    """Runs :class:`RLConfig` on ``model`` (trained in place); writes ``out_dir/metrics.jsonl``.

    ``mesh``: an optional :func:`entropylab.parallel.make_mesh` mesh; the update's batch is
    sharded over its ``("data", "fsdp")`` axes (``tensor`` must be 1).
    """

    def __init__(self, cfg: RLConfig, model, tokenizer, out_dir, *, task_kwargs=None, mesh=None):
        self.cfg, self.model, self.tok = cfg, model, tokenizer
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is not None and vocab < tokenizer.vocab_size:
            raise ValueError(
                f"model vocab_size={vocab} is smaller than the tokenizer's vocabulary "
                f"({tokenizer.vocab_size}): token ids >= {vocab} cannot be embedded or scored"
            )
        self.out_dir = Path(out_dir)
        self.mesh = mesh
        self.task = T.make_task(cfg.task, **(task_kwargs or {}))
        if cfg.random_reward is not None:
            self.task = T.RandomRewardTask(self.task, cfg.seed, cfg.random_reward)
        self.objective = build_objective(cfg.objective)
        self._check_needs()
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        # copy the buffers: the update donates the state, and nnx.split's State aliases the
        # model's Variables (later nnx.update(model, ...) must not change the trainer either)
        params = jax.tree.map(jnp.copy, params)
        self.tx = rl_optimizer(cfg)
        self.root_key = rng.root_key(cfg.seed)
        needs_ref = cfg.use_reference or cfg.objective.uses_kl or "ref_logp" in self.needs
        self.ref_params = jax.tree.map(jnp.copy, params) if needs_ref else None
        self.state = {
            "params": params,
            "opt_state": self.tx.init(params),
            "obj_state": self.objective.init_state(),
            "step": jnp.zeros((), jnp.int32),
        }
        self._hook = H.TEMPERATURE_HOOKS[cfg.temperature_hook] if cfg.temperature_hook else None
        if self._hook is not None:
            fn_kw, self._hook_update_kw = H.split_hook_kwargs(
                cfg.temperature_hook, dict(cfg.temperature_hook_kwargs)
            )
            self.state["sampler"] = self._hook.init(fn_kw)
            t_fn = H.HookTemperatureFn(cfg.temperature_hook, cfg.temperature, tuple(fn_kw.items()))
            self._hook_update = jax.jit(
                lambda st, r: self._hook.update(st, r, self._hook_update_kw)
            )
        else:
            t_fn = cfg.temperature_fn
        self.step_config = StepConfig(
            prompt_width=cfg.prompt_width,
            temperature=cfg.temperature,
            epochs=cfg.epochs,
            minibatches=cfg.minibatches,
            group_size=cfg.group_size,
            shuffle="groups" if self._needs_whole_groups() else "rows",
            learning_rate=cfg.learning_rate,
            fused_logprobs=cfg.fused_logprobs,
            vocab_block=cfg.vocab_block,
            measure_entropy_change=cfg.measure_entropy_change,
        )
        self._check_mesh()
        self._update = _cached_update(
            self.objective,
            self.tx,
            self.graphdef,
            self.rest,
            self.step_config,
            mesh,
            cfg.on_nonfinite == "stop",
            _optimizer_key(cfg),
        )
        self._logprobs = lambda p, t, m: _logprobs_jit(
            self.graphdef, self.step_config, p, self.rest, t, m
        )
        self._prepare = lambda r, rew, ref, ex: _prepare_jit(
            r, rew, group_size=cfg.group_size, estimator=cfg.estimator, ref_logp=ref, extras=ex
        )
        gd_full, _ = nnx.split(model)
        self._gd_full = gd_full
        self._sampler = S.make_sampler(
            gd_full, cfg.sampling, temperature_fn=t_fn, logit_processors=cfg.logit_processors
        )
        if cfg.tree_sampler is not None:  # training rollouts only; eval samples independently
            self._sampler = TS.as_group_sampler(
                gd_full,
                cfg.sampling,
                cfg.tree_sampler,
                temperature_fn=t_fn,
                logit_processors=cfg.logit_processors,
            )
        self._eval_sampler = S.make_sampler(
            gd_full,
            cfg.sampling,
            temperature_fn=cfg.temperature_fn,
            logit_processors=cfg.logit_processors,
        )
        self.eval_set = self.task.sample(
            T.problem_rng(cfg.seed, 0, stream=99), cfg.eval_problems, cfg.difficulties
        )
        if mesh is not None:
            self.state = self._place(self.state)

    # -- construction checks ----------------------------------------------------------------

    @property
    def needs(self) -> frozenset:
        return frozenset(self.objective.needs)

    def _check_needs(self):
        for n in self.needs:
            if n.startswith("extras.") and H.provider_for(n[7:]) is None:
                raise ValueError(
                    f"the objective needs inputs.extras[{n[7:]!r}], which no RL extras provider "
                    f"fills; register one with entropylab.rl.hooks.register_extra "
                    f"(provided: {sorted(H._FILLS)})"
                )

    def _needs_whole_groups(self) -> bool:
        """Group-based advantage shapers (``group_size`` kwarg) need whole groups together."""
        return any("group_size" in kw for kw in _component_kwargs(self.cfg.objective))

    def _check_mesh(self):
        if self.mesh is None:
            return
        n_dev = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        mb = self.cfg.prompts_per_step * self.cfg.group_size // self.cfg.minibatches
        if mb % n_dev:
            raise ValueError(
                f"minibatch of {mb} rows is not divisible by data*fsdp = {n_dev} devices"
            )
        if self.step_config.shuffle == "groups" and (mb // n_dev) % self.cfg.group_size:
            raise ValueError(
                f"group-based advantage shapers need whole groups per device: {mb // n_dev} rows "
                f"per device is not a multiple of group_size={self.cfg.group_size}"
            )

    def _place(self, state):
        from entropylab.rl.step import state_shardings

        sh = state_shardings(state, self.mesh)
        rep = parallel.replicated(self.mesh)
        sh = {**{k: jax.tree.map(lambda _: rep, v) for k, v in state.items()}, **sh}
        return jax.device_put(state, sh)

    @property
    def fused_old_logp(self) -> bool:
        """Old log-probs are the single update's own forward (``epochs = minibatches = 1``)."""
        return self.step_config.on_policy

    def _full_state(self, params):
        """The sampler's full model state: ``params`` merged with the non-parameter state (the
        model object is not touched: its Variables must not alias buffers the update donates)."""
        return nnx.merge_state(params, self.rest)

    # -- phases ---------------------------------------------------------------------------------

    def _sample(self, sampler, params, problems, group, keys, t_state=None, task=None):
        """Sample ``group`` responses per problem and score them with ``task`` (default: the
        training task)."""
        prompts = [p.prompt for p in problems for _ in range(group)]
        pt, pm = T.encode_fixed(self.tok, prompts, self.cfg.prompt_width)
        if t_state is None:
            r = sampler(self._full_state(params), pt, pm, keys)
        else:
            r = sampler(self._full_state(params), pt, pm, keys, t_state)
        rep = [p for p in problems for _ in range(group)]
        task = self.task if task is None else task
        return r, T.score(task, self.tok, rep, r.response, r.finished), rep

    def _keys(self, stream, step, n_problems, group, offset=0):
        pidx = jnp.repeat(jnp.arange(n_problems), group)
        sidx = jnp.tile(jnp.arange(group), n_problems) + offset
        return rng.sample_keys(self.root_key, stream, step, pidx, sidx)

    def rollout(self, params, problems, step: int, group: int, *, sample_offset: int = 0):
        """Training rollout of ``problems`` × ``group`` (keys from the ``ROLLOUT`` stream)."""
        keys = self._keys(rng.ROLLOUT, step, len(problems), group, sample_offset)
        t_state = self.state.get("sampler")
        r, rewards, _ = self._sample(self._sampler, params, problems, group, keys, t_state)
        return r, rewards

    def temperature_samples(self, ctx: H.ExtrasContext) -> dict:
        """AEPO's temperature samples (the ``temperature_samples`` extras provider)."""
        cfg = self.cfg
        h = float(masked_mean(ctx.rollout.entropy, ctx.rollout.response_mask))
        t_high, t_low = cfg.aepo_temperatures
        temp = t_high if h < cfg.aepo_target_entropy else t_low
        sampler = S.make_sampler(self._gd_full, cfg.sampling_at(temp))
        n = len(ctx.problems) // ctx.group_size
        keys = self._keys(rng.TEMP_ROLLOUT, ctx.step, n, ctx.group_size)
        problems = ctx.problems[:: ctx.group_size]
        r, rewards, _ = self._sample(sampler, self.state["params"], problems, ctx.group_size, keys)
        self._last_temp = temp
        return {
            "temp_tokens": r.tokens,
            "temp_full_mask": r.mask,
            "temp_mask": r.response_mask,
            "temp_rewards": jnp.asarray(rewards, jnp.float32),
        }

    def _extras(self, r, rewards, problems, step) -> dict:
        ctx = H.ExtrasContext(r, rewards, problems, self.cfg.group_size, step, self)
        out, done = {}, set()
        for n in sorted(self.needs):
            if not n.startswith("extras."):
                continue
            name = H.provider_for(n[7:])
            if name in done:
                continue
            done.add(name)
            out.update(H.EXTRAS[name](ctx))
        return out

    def extras(self, rollout, rewards, problems, step: int) -> dict:
        """The objective's per-sample extras (one provider per ``extras.*`` need) for
        ``rollout`` with ``rewards [B]`` and one problem per row; public for
        :mod:`entropylab.rl.replicas`, which builds the batches of K seed replicas."""
        return self._extras(rollout, rewards, problems, step)

    def evaluate(self, params) -> dict:
        """pass@1 (mean over k samples at the training temperature) and pass@k, held-out set."""
        cfg = self.cfg
        keys = self._keys(rng.EVAL, 0, len(self.eval_set), cfg.eval_k)
        r, rewards, _ = self._sample(
            self._eval_sampler, params, self.eval_set, cfg.eval_k, keys, task=T.eval_task(self.task)
        )
        correct = (rewards == 1.0).reshape(len(self.eval_set), cfg.eval_k)
        out = {
            "eval/pass@1": pass_at_k(correct, 1),
            f"eval/pass@{cfg.eval_k}": pass_at_k(correct, cfg.eval_k),
        }
        diffs = np.array([p.difficulty for p in self.eval_set])
        for d in sorted(set(diffs.tolist())):
            out[f"eval/pass@1_d{d}"] = float(correct[diffs == d].mean())
        out["eval/entropy"] = float(masked_mean(r.entropy, r.response_mask))
        return out

    def step(self, step: int) -> dict:
        """One RL step (see the module docstring); returns the logged record."""
        cfg = self.cfg
        t0 = time.perf_counter()
        T.at_step(self.task, step)  # the task's optional per-step hook (e.g. reseeding)
        problems = self.task.sample(
            T.problem_rng(cfg.seed, step), cfg.prompts_per_step, cfg.difficulties
        )
        r, rewards = self.rollout(self.state["params"], problems, step, cfg.group_size)
        jax.block_until_ready(r.tokens)
        t1 = time.perf_counter()
        rep = [p for p in problems for _ in range(cfg.group_size)]
        extras = self._extras(r, rewards, rep, step)
        ref = None
        if self.ref_params is not None:
            ref = self._logprobs(self.ref_params, r.tokens, r.mask)
        batch = self._prepare(r, jnp.asarray(rewards), ref, extras)
        if self.mesh is not None:
            batch = jax.device_put(batch, parallel.batch_sharding(self.mesh))
        t2 = time.perf_counter()
        prev = self.state
        new_state, metrics, _ = self._update(self.state, batch, self.root_key)
        if self._hook is not None:
            new_state = {**new_state, "sampler": self._hook_update(prev["sampler"], r)}
        metrics = jax.device_get(metrics)
        bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
        rec_guard = {}
        if bad:
            if cfg.on_nonfinite == "stop":
                raise FloatingPointError(
                    f"RL step {step}: non-finite metrics {bad} (set on_nonfinite='skip' to skip "
                    "such updates)"
                )
            new_state = {**prev, "step": prev["step"] + 1}
            rec_guard = {"guard/skipped": 1.0, "guard/nonfinite": ",".join(bad)}
        self.state = new_state
        t3 = time.perf_counter()

        n_tok = int(np.asarray(r.response_mask).sum())
        rec = {
            **rollout_record(
                cfg.group_size, rewards, r.response_mask, r.finished, r.temperature, rep, metrics
            ),
            **rec_guard,
            "time/rollout_s": t1 - t0,
            "time/prepare_s": t2 - t1,
            "time/update_s": t3 - t2,
            "perf/tokens_per_s": n_tok / max(t3 - t0, 1e-9),
        }
        return rec

    # -- driver ---------------------------------------------------------------------------------

    def run(
        self,
        *,
        resume: bool = True,
        progress: bool = True,
        preemption: runs.PreemptionGuard | None = None,
    ) -> list[dict]:
        """Train to ``cfg.steps``; returns the records written by this call.

        ``resume``: continue from the newest checkpoint in ``out_dir/checkpoints`` (the metrics
        file is checked and cut back to that step). ``preemption``: the guard polled at every
        step boundary; default: a new :class:`~entropylab.runs.PreemptionGuard` catching
        SIGTERM/SIGINT for this call (main thread only). When a stop is requested the step in
        flight finishes, its record is written, the state is checkpointed at that step and
        :class:`RLPreempted` (a ``SystemExit``, code 128 + signal) is raised; the model then
        holds the checkpointed parameters. Rerun to resume.
        """
        if preemption is None:
            with runs.PreemptionGuard() as guard:
                return self.run(resume=resume, progress=progress, preemption=guard)
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(
            self.out_dir / "checkpoints", save_every=cfg.checkpoint_every, keep=cfg.keep_checkpoints
        )
        start = 0
        if resume and ckpt.latest_step() is not None:
            self.state, _ = ckpt.restore(abstract_like(self.state))
            if self.mesh is not None:
                self.state = self._place(self.state)
            start = int(self.state["step"])
        writer = MetricWriter(
            self.out_dir / "metrics.jsonl", resume_step=start if start else None, tensorboard=False
        )
        bar = ProgressBar(
            cfg.steps, initial=start, enabled=progress, desc=f"grpo {self.out_dir.name}"
        )
        records = []
        stopped = None
        try:
            if start == 0 and cfg.eval_every:
                records.append(writer.write(0, self.evaluate(self.state["params"])))
            for s in range(start, cfg.steps):
                if preemption.agreed():  # boundary before step s; every process stops there
                    if ckpt.latest_step() != s:
                        ckpt.save(s, self.state)
                    stopped = s
                    break
                rec = self.step(s)
                if cfg.eval_every and (s + 1) % cfg.eval_every == 0:
                    rec.update(self.evaluate(self.state["params"]))
                records.append(writer.write(s + 1, rec))
                ckpt.maybe_save(s + 1, self.state)
                bar.update(1, reward=rec["reward/mean"], H=rec["rollout/entropy"])
        finally:
            bar.close()
            writer.close()
            ckpt.close()
        nnx.update(self.model, jax.tree.map(jnp.copy, self.state["params"]))
        if stopped is not None:
            err = RLPreempted(preemption.signum, stopped, ckpt.directory / str(stopped), records)
            print(f"GRPOTrainer {self.out_dir}: {err}", file=sys.stderr, flush=True)
            raise err
        return records
