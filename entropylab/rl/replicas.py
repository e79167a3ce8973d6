"""Seeds as replicas of the whole RL step: K seeds of one arm as one compiled program per phase.

The PureJaxRL pattern (one ``vmap`` over a leading replica axis) applied to
:class:`~entropylab.rl.trainer.GRPOTrainer`'s step. For seeds ``s_0 … s_{K-1}`` every step is::

    problems_k  = task.sample(problem_rng(s_k, step))              host, per replica
    keys [K, B] = sample_keys(key(s_k), ROLLOUT, step, i, j)       one jitted vmap
    rollout     = vmap(generate)(params [K, …], prompts [K, B, P], keys)     one call
    rewards     = score(task, …) for each replica                  host (K × B verifications)
    extras_k    = trainer_k.extras(…); ref_logp = vmap(logprobs)(ref_params [K, …])
    batch       = vmap(prepare_batch)(rollout, rewards, ref_logp, extras)   one call
    state, m, _ = make_replicated_update(…)(state [K, …], batch, key(s_k) [K])  one call

so replica ``k`` draws the same problems, the same per-sample keys and the same minibatch / loss
keys as ``GRPOTrainer(replace(cfg, seed=s_k), model_k, …)`` and gives its records and parameters
to float rounding (``tests/rl/replicas_test.py``: K = 2, 3 steps, Clip-Cov + adaptive entropy:
sampled tokens and host statistics equal, update metrics within 1e-4 + 1e-3·|x|, final params
bit-identical on CPU). With a reference-KL regulariser (ARES) added to that test's setup, the
tokens and host statistics still agree exactly, but update metrics drift apart (``pg/ppo_kl``
−2.9e-3 vs −1.6e-3 at step 2). Diagnosed (2026-11-29): in that setup every reward is 0
(``groups/zero_adv_frac`` = 1), so the policy gradient is exactly 0, and at step 0 the policy
*is* the reference, so the KL gradient is 0 in exact arithmetic; what is left is the rounding
difference between the update's log-probs and the (vmapped or unbatched) reference forward:
a gradient of norm 9e-7 / 1.1e-6 that differs by ~25% between the two paths. Adam divides by
√v, which turns that noise into learning-rate-sized steps in different directions. So the
drift is rounding amplified by Adam on a zero gradient, not a defect of the replicated path.
Nothing is
copied from the trainer: one :class:`GRPOTrainer` per seed is built as a *template* (task,
objective, optimizer, step config, sampling config, reference params, extras providers,
evaluation) and only the device phases are batched here.

Caveats, measured in ``bench/rl_replicas.py``: the vmapped decode loop runs until the *last*
sequence of *all* K replicas has finished (a sequential run stops each replica at its own last
sequence); host scoring is K × B verifications either way.

Not supported (``ValueError`` at construction): the entropy-tree sampler, a stateful
``temperature_hook``, AEPO's temperature samples (they sample again from the trainer's own
state), checkpoints (``checkpoint_every`` must be 0; there is no resume), and meshes (one
device).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from entropylab.rl import hooks as H
from entropylab.rl import rng
from entropylab.rl import sampling as S
from entropylab.rl import tasks as T
from entropylab.rl.step import (
    make_logprob_fn,
    make_replicated_update,
    prepare_batch,
    stack_replicas,
    unstack_replica,
)
from entropylab.rl.trainer import GRPOTrainer, RLConfig, rollout_record
from entropylab.train.metrics import MetricWriter

__all__ = ["ReplicatedGRPO", "replica_rollout_keys"]


# -------------------------------------------------------------------------- batched device phases
@functools.partial(jax.jit, static_argnums=(2, 3))
def replica_rollout_keys(root_keys, step, n_problems: int, group: int):
    """Per-sample rollout keys ``[K, n_problems · group]``: row ``k`` is the single-seed
    trainer's ``sample_keys(root_keys[k], ROLLOUT, step, prompt, sample)`` (prompt-major)."""
    pidx = jnp.repeat(jnp.arange(n_problems), group)
    sidx = jnp.tile(jnp.arange(group), n_problems)
    return jax.vmap(lambda root: rng.sample_keys(root, rng.ROLLOUT, step, pidx, sidx))(root_keys)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _sample_replicas(graphdef, scfg, temperature_fn, procs, params, rest, prompts, mask, keys):
    def one(p, pt, pm, k):
        model = nnx.merge(graphdef, p, rest)
        return S.generate(
            model, pt, pm, k, scfg, temperature_fn=temperature_fn, logit_processors=procs
        )

    return jax.vmap(one)(params, prompts, mask, keys)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _logprobs_replicas(graphdef, step_cfg, params, rest, tokens, mask):
    fn = make_logprob_fn(graphdef, rest, step_cfg)
    return jax.vmap(lambda p, t, m: fn(p, t, m).logp)(params, tokens, mask)


@functools.partial(jax.jit, static_argnames=("group_size", "estimator"))
def _prepare_replicas(rollout, rewards, ref_logp, extras, *, group_size, estimator):
    def one(r, rew, ref, ex):
        return prepare_batch(
            r, rew, group_size=group_size, estimator=estimator, ref_logp=ref, extras=ex
        )

    return jax.vmap(one)(rollout, rewards, ref_logp, extras)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


# ---------------------------------------------------------------------------------- the driver
class ReplicatedGRPO:
    """K seeds of one :class:`RLConfig` as replicas of the whole RL step (see the module).

    Args:
      cfg: the arm (``cfg.seed`` is ignored: replica ``k`` runs ``replace(cfg, seed=seeds[k])``).
      models: one model (every replica starts from its parameters; it is not updated) or a
        sequence of K models of the same graph (replica ``k`` starts from, and after
        :meth:`run` writes its parameters back into, ``models[k]``).
      tokenizer: as for :class:`GRPOTrainer`.
      out_dir: :meth:`run` writes ``out_dir/seed_<s>/metrics.jsonl`` per replica.
      seeds: K distinct ints.

    ``state``: the trainer's state dict with a leading replica axis on every leaf.
    :meth:`step` returns one record per replica (the single-seed trainer's keys; ``time/*`` and
    ``perf/tokens_per_s`` are those of the whole K-replica step).
    """

    def __init__(
        self,
        cfg: RLConfig,
        models,
        tokenizer,
        out_dir=None,
        *,
        seeds: Sequence[int],
        task_kwargs=None,
    ):
        if not isinstance(cfg, RLConfig):
            raise TypeError(f"cfg must be an RLConfig, got {type(cfg).__name__}")
        if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
            raise ValueError(f"seeds must be a non-empty sequence of ints, got {seeds!r}")
        if not all(_is_int(s) for s in seeds):
            raise TypeError(f"seeds must be ints, got {seeds!r}")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct, got {seeds!r}")
        self.seeds = tuple(int(s) for s in seeds)
        k = len(self.seeds)
        if isinstance(models, (list, tuple)):
            if len(models) != k:
                raise ValueError(f"models: got {len(models)} models for {k} seeds")
            self._models = tuple(models)
        else:
            self._models = (models,) * k
        for name, bad in (
            ("tree_sampler", cfg.tree_sampler is not None),
            ("temperature_hook", cfg.temperature_hook is not None),
            ("checkpoint_every", cfg.checkpoint_every != 0),
        ):
            if bad:
                raise ValueError(f"ReplicatedGRPO does not support cfg.{name} (see the module)")
        self.cfg = cfg
        base = Path(out_dir) if out_dir is not None else None
        self.trainers = [
            GRPOTrainer(
                dataclasses.replace(cfg, seed=s),
                m,
                tokenizer,
                (base or Path(".")) / f"seed_{s}",
                task_kwargs=task_kwargs,
            )
            for s, m in zip(self.seeds, self._models)
        ]
        t0 = self.trainers[0]
        if "temperature_samples" in {
            H.provider_for(n[7:]) for n in t0.needs if n.startswith("extras.")
        }:
            raise ValueError(
                "ReplicatedGRPO does not support objectives that need AEPO's temperature samples"
            )
        for t in self.trainers[1:]:
            if t.graphdef != t0.graphdef:
                raise ValueError("models must share one graph (same config) across replicas")
        self.out_dir = base
        self.tok = tokenizer
        self.graphdef, self.rest = t0.graphdef, t0.rest
        # the replicated state owns the buffers; the templates' own copies are released
        self.state = stack_replicas([t.state for t in self.trainers])
        self.ref_params = (
            stack_replicas([t.ref_params for t in self.trainers])
            if t0.ref_params is not None
            else None
        )
        for t in self.trainers:
            t.state = t.ref_params = None
        self.root_keys = jnp.stack([t.root_key for t in self.trainers])
        self._donate = cfg.on_nonfinite == "stop"
        self._update = make_replicated_update(
            t0.objective, t0.tx, t0.graphdef, t0.rest, t0.step_config, donate=self._donate
        )
        self._sample_args = (t0.graphdef, cfg.sampling, cfg.temperature_fn, cfg.logit_processors)

    @property
    def k(self) -> int:
        """The number of replicas."""
        return len(self.seeds)

    def replica_params(self, k: int):
        """Replica ``k``'s parameters (a copy of that slice)."""
        return unstack_replica(self.state["params"], k)

    def rollout(self, step: int):
        """The K replicas' training rollouts of ``step``: ``(problems [K][B], rollout [K, …])``
        (one problem per row, ``B = prompts_per_step · group_size``)."""
        cfg = self.cfg
        g = cfg.group_size
        reps, toks, masks = [], [], []
        for t in self.trainers:
            T.at_step(t.task, step)  # the task's optional per-step hook (e.g. reseeding)
            problems = t.task.sample(
                T.problem_rng(t.cfg.seed, step), cfg.prompts_per_step, cfg.difficulties
            )
            rep = [p for p in problems for _ in range(g)]
            pt, pm = T.encode_fixed(self.tok, [p.prompt for p in rep], cfg.prompt_width)
            reps.append(rep)
            toks.append(pt)
            masks.append(pm)
        keys = replica_rollout_keys(self.root_keys, step, cfg.prompts_per_step, g)
        r = _sample_replicas(
            *self._sample_args,
            self.state["params"],
            self.rest,
            jnp.stack(toks),
            jnp.stack(masks),
            keys,
        )
        return reps, r

    def step(self, step: int) -> list[dict]:
        """One RL step of every replica; returns the K records (replica order = ``seeds``)."""
        cfg = self.cfg
        t0 = time.perf_counter()
        reps, r = self.rollout(step)
        response, finished, resp_mask, temp = jax.device_get(
            (r.response, r.finished, r.response_mask, r.temperature)
        )
        rewards = np.stack(
            [
                T.score(t.task, self.tok, rep, response[k], finished[k])
                for k, (t, rep) in enumerate(zip(self.trainers, reps))
            ]
        )
        t1 = time.perf_counter()
        extras = {}
        if any(n.startswith("extras.") for n in self.trainers[0].needs):
            extras = stack_replicas(
                [
                    t.extras(unstack_replica(r, k), rewards[k], reps[k], step)
                    for k, t in enumerate(self.trainers)
                ]
            )
        ref = None
        if self.ref_params is not None:
            ref = _logprobs_replicas(
                self.graphdef,
                self.trainers[0].step_config,
                self.ref_params,
                self.rest,
                r.tokens,
                r.mask,
            )
        batch = _prepare_replicas(
            r,
            jnp.asarray(rewards),
            ref,
            extras,
            group_size=cfg.group_size,
            estimator=cfg.estimator,
        )
        t2 = time.perf_counter()
        prev = self.state
        new_state, metrics, _ = self._update(self.state, batch, self.root_keys)
        metrics = jax.device_get(metrics)
        bad = [
            sorted(n for n, v in metrics.items() if not np.all(np.isfinite(v[k])))
            for k in range(self.k)
        ]
        guards = [{} for _ in range(self.k)]
        if any(bad):
            if cfg.on_nonfinite == "stop":
                which = {self.seeds[k]: b for k, b in enumerate(bad) if b}
                raise FloatingPointError(
                    f"RL step {step}: non-finite metrics in replicas (seed: names) {which} "
                    "(set on_nonfinite='skip' to skip such updates)"
                )
            skip = jnp.asarray([bool(b) for b in bad])

            def keep(old, new):
                return jnp.where(skip.reshape((-1,) + (1,) * (new.ndim - 1)), old, new)

            new_state = {
                **jax.tree.map(keep, prev, new_state),
                "step": new_state["step"],
            }
            for k, b in enumerate(bad):
                if b:
                    guards[k] = {"guard/skipped": 1.0, "guard/nonfinite": ",".join(b)}
        self.state = new_state
        t3 = time.perf_counter()
        n_tok = int(resp_mask.sum())
        recs = []
        for k in range(self.k):
            rec = rollout_record(
                cfg.group_size,
                rewards[k],
                resp_mask[k],
                finished[k],
                temp[k],
                reps[k],
                {n: v[k] for n, v in metrics.items()},
            )
            rec.update(guards[k])
            rec.update(
                {
                    "time/rollout_s": t1 - t0,
                    "time/prepare_s": t2 - t1,
                    "time/update_s": t3 - t2,
                    "perf/tokens_per_s": n_tok / max(t3 - t0, 1e-9),
                }
            )
            recs.append(rec)
        return recs

    def evaluate(self, k: int) -> dict:
        """Replica ``k``'s held-out evaluation (its template trainer's :meth:`evaluate`)."""
        return self.trainers[k].evaluate(self.replica_params(k))

    def run(self) -> list[list[dict]]:
        """Train every replica to ``cfg.steps`` (from the current step; no checkpoints); writes
        ``out_dir/seed_<s>/metrics.jsonl`` per replica (``eval_every`` as in the trainer) and
        returns the records per replica. Distinct ``models`` get their replica's parameters."""
        if self.out_dir is None:
            raise ValueError("run() writes metrics: construct ReplicatedGRPO with an out_dir")
        cfg = self.cfg
        start = int(self.state["step"][0])
        writers = [
            MetricWriter(
                t.out_dir / "metrics.jsonl",
                resume_step=start if start else None,
                tensorboard=False,
            )
            for t in self.trainers
        ]
        records: list[list[dict]] = [[] for _ in range(self.k)]
        try:
            if start == 0 and cfg.eval_every:
                for k, w in enumerate(writers):
                    records[k].append(w.write(0, self.evaluate(k)))
            for s in range(start, cfg.steps):
                recs = self.step(s)
                for k, (w, rec) in enumerate(zip(writers, recs)):
                    if cfg.eval_every and (s + 1) % cfg.eval_every == 0:
                        rec.update(self.evaluate(k))
                    records[k].append(w.write(s + 1, rec))
        finally:
            for w in writers:
                w.close()
        if len({id(m) for m in self._models}) == self.k:
            for k, m in enumerate(self._models):
                nnx.update(m, self.replica_params(k))
        return records
