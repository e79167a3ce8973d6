"""GRPO / PPO trainer on verifiable tasks.

One RL step:

1. **rollout** — sample ``prompts_per_step`` problems (seeded by ``(seed, step)``), ``group_size``
   completions each with the jitted KV-cache sampler (keys from ``(seed, step, prompt, sample)``);
2. **reward** — decode and verify on the host (verifiers never raise);
3. **advantages** — group-normalised GRPO (``norm_adv_by_std=False`` → Dr. GRPO), broadcast over
   the response tokens;
4. **old log-probs** — recomputed by the trainer's teacher-forced forward (as verl does); the gap
   to the sampler's log-probs/entropies is logged. With ``epochs = minibatches = 1`` the single
   update starts from the very params that sampled, so old log-probs are the update's own
   forward under ``stop_gradient`` (ratio exactly 1, as on-policy PPO/GRPO has it) and the
   separate recompute forward is skipped (:attr:`GRPOTrainer.fused_old_logp`);
5. **update** — ``epochs`` × ``minibatches`` AdamW steps on the configured objective from
   :mod:`entropylab.losses.objective` (policy loss + KL to a frozen reference + entropy terms).

Metrics per step go to ``metrics.jsonl`` (and a progress bar): reward/accuracy, pass@1 and
pass@k on a fixed held-out set every ``eval_every`` steps, rollout- and trainer-side entropy and
their gap, entropy p50/p80/p95, response length, fraction of zero-advantage groups, clip
fractions, KL, covariance statistics and the covariance-predicted entropy change, the objective's
adaptive coefficients, time per phase and tokens/s. Checkpoints (orbax) hold params, optimizer
state, objective state and the step; all randomness derives from ``(seed, step)``, so a resumed
run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from entropylab.losses import covariance as cov_lib
from entropylab.losses.advantages import grpo_advantages
from entropylab.losses.objective import ObjectiveConfig, ObjectiveInputs, build_objective
from entropylab.ops import entropy_stats, logprobs_and_entropy, masked_mean
from entropylab.rl import sampling as S
from entropylab.rl import tasks as T
from entropylab.rl.sft import encode_fixed, score
from entropylab.train.checkpoint import Checkpointer, abstract_like
from entropylab.train.metrics import MetricWriter, ProgressBar


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLConfig:
    """GRPO/PPO settings. ``objective`` selects the loss (see ``entropylab.losses.objective``).

    ``measure_entropy_change`` adds one teacher-forced forward after the update(s): the policy
    entropy on the *same* rollout tokens before and after the step, logged as
    ``cov/observed_dH`` (token mean of H_after − H_before over the response positions). That is
    the quantity the covariance theorem (arXiv:2505.22617 §4.2) predicts as ``cov/predicted_dH``;
    the change between consecutive rollout batches mixes in batch-to-batch noise.
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
    objective: ObjectiveConfig = dataclasses.field(default_factory=ObjectiveConfig)
    use_reference: bool = False
    eval_every: int = 10
    eval_problems: int = 64
    eval_k: int = 8
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    measure_entropy_change: bool = False

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "group_size", "epochs", "minibatches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if (self.prompts_per_step * self.group_size) % self.minibatches:
            raise ValueError(
                f"minibatches={self.minibatches} must divide prompts_per_step*group_size="
                f"{self.prompts_per_step * self.group_size}"
            )
        if self.task not in T.TASKS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {sorted(T.TASKS)}")
        if self.eval_k < 1 or self.eval_every < 0:
            raise ValueError("eval_k must be >= 1 and eval_every >= 0")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")

    @property
    def sampling(self) -> S.SamplingConfig:
        return S.SamplingConfig(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            eos_id=T.EOS,
            pad_id=T.PAD,
        )


def pass_at_k(correct: np.ndarray, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021, arXiv:2107.03374) averaged over problems.

    ``correct [P, n]`` booleans for n samples per problem: 1 − C(n−c, k) / C(n, k).
    """
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    c = correct.sum(1)
    vals = []
    for ci in c:
        if n - ci < k:
            vals.append(1.0)
        else:
            vals.append(1.0 - float(np.prod(1.0 - k / np.arange(n - ci + 1, n + 1))))
    return float(np.mean(vals))


def _forward_logp(graphdef, rest, prompt_width, temperature, params, tokens, mask):
    """Teacher-forced ``(logp, entropy, logits/T)`` of the response part of ``tokens``."""
    model = nnx.merge(graphdef, params, rest)
    logits, _ = model(tokens, positions=S._positions(mask), attention_mask=mask)
    z = logits[:, prompt_width - 1 : -1]
    lp, ent = logprobs_and_entropy(z, tokens[:, prompt_width:], temperature=temperature)
    return lp, ent, z / temperature


# graphdef, prompt width and temperature are static: trainers over the same model share the
# compiled function (``rest`` holds no arrays for these models and is passed as data).
_recompute_jit = jax.jit(_forward_logp, static_argnums=(0, 2, 3))


class GRPOTrainer:
    """Runs :class:`RLConfig` on ``model`` (trained in place); writes ``out_dir/metrics.jsonl``."""

    def __init__(self, cfg: RLConfig, model, tokenizer, out_dir, *, task_kwargs=None):
        self.cfg, self.model, self.tok = cfg, model, tokenizer
        self.out_dir = Path(out_dir)
        self.task = T.make_task(cfg.task, **(task_kwargs or {}))
        self.objective = build_objective(cfg.objective)
        self.graphdef, params, self.rest = nnx.split(model, nnx.Param, ...)
        # nnx.split's State aliases the model's Variables; copy the tree so that later
        # nnx.update(model, ...) calls cannot change the trainer's params or the reference.
        params = jax.tree.map(lambda x: x, params)
        tx = optax.adamw(cfg.learning_rate, b1=0.9, b2=0.99, weight_decay=0.0)
        if cfg.max_grad_norm:
            tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), tx)
        self.tx = tx
        self.state = {
            "params": params,
            "opt_state": tx.init(params),
            "obj_state": self.objective.init_state(),
            "step": jnp.zeros((), jnp.int32),
        }
        self.ref_params = params if cfg.use_reference else None
        gd_full, _ = nnx.split(model)
        self._sampler = S.make_sampler(gd_full, cfg.sampling)
        self._build_fns()
        n_eval = cfg.eval_problems
        self.eval_set = self.task.sample(
            T.problem_rng(cfg.seed, 0, stream=99), n_eval, cfg.difficulties
        )

    # -- jitted pieces -------------------------------------------------------------------------

    def _forward_logp(self, params, tokens, mask):
        return _forward_logp(
            self.graphdef,
            self.rest,
            self.cfg.prompt_width,
            self.cfg.temperature,
            params,
            tokens,
            mask,
        )

    def _build_fns(self):
        cfg = self.cfg

        def recompute(params, tokens, mask):
            lp, ent, _ = _recompute_jit(
                self.graphdef, self.rest, cfg.prompt_width, cfg.temperature, params, tokens, mask
            )
            return lp, ent

        def apply_update(state, batch, key, *, own_old_logp: bool):
            """One AdamW step on the objective. ``own_old_logp``: the old log-probs are this
            forward's own (stop-gradient), i.e. the update starts from the sampling params."""

            def loss_fn(params):
                lp, ent, z = self._forward_logp(params, batch["tokens"], batch["mask"])
                old = jax.lax.stop_gradient(lp) if own_old_logp else batch["old_logp"]
                inputs = ObjectiveInputs(
                    logp=lp,
                    old_logp=old,
                    advantages=batch["advantages"],
                    mask=batch["response_mask"],
                    entropy=ent,
                    old_entropy=batch["old_entropy"],
                    ref_logp=batch.get("ref_logp"),
                    logits=z,
                    key=key,
                    step=state["step"],
                )
                loss, metrics = self.objective.loss(inputs, state["obj_state"])
                return loss, (metrics, old, jax.lax.stop_gradient(ent))

            (loss, (metrics, old_logp, old_ent)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                state["params"]
            )
            upd, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
            params = optax.apply_updates(state["params"], upd)
            metrics = dict(
                metrics, **{"loss/total": loss, "train/grad_norm": optax.tree.norm(grads)}
            )
            new_state = {**state, "params": params, "opt_state": opt_state}
            return new_state, metrics, old_logp, old_ent

        @jax.jit
        def update(state, batch, key):
            return apply_update(state, batch, key, own_old_logp=False)[:2]

        @jax.jit
        def update_onpolicy(state, batch, key):
            return apply_update(state, batch, key, own_old_logp=True)

        @jax.jit
        def prepare(rewards, response_mask):
            adv_seq = grpo_advantages(
                rewards, group_size=cfg.group_size, norm_by_std=cfg.norm_adv_by_std
            )
            return adv_seq[:, None] * response_mask

        @jax.jit
        def step_stats(rollout, old_logp, old_ent, adv, ent_after):
            mask = rollout.response_mask
            ent_roll = masked_mean(rollout.entropy, mask)
            ent_train = masked_mean(old_ent, mask)
            stats = entropy_stats(rollout.entropy, mask)
            extra = {}
            if ent_after is not None:  # same states before/after the step
                extra["cov/observed_dH"] = masked_mean(ent_after, mask) - ent_train
            return {
                **extra,
                "rollout/entropy": ent_roll,
                "train/entropy": ent_train,
                "entropy/gap": ent_train - ent_roll,
                "rollout/logp_gap": masked_mean(jnp.abs(old_logp - rollout.logp), mask),
                **{f"rollout/entropy_{k}": v for k, v in stats.items()},
                "response/length": jnp.mean(jnp.sum(mask.astype(jnp.float32), axis=1)),
                "response/finished": jnp.mean(rollout.finished.astype(jnp.float32)),
                "response/tokens": jnp.sum(mask.astype(jnp.int32)),
                # full-rollout-batch covariance (overrides the objective's per-minibatch means)
                **cov_lib.covariance_stats(old_logp, adv, mask),
                "cov/predicted_dH": cov_lib.predicted_entropy_change(
                    old_logp, adv, mask, learning_rate=cfg.learning_rate
                ),
            }

        self._recompute, self._update = recompute, update
        self._update_onpolicy, self._prepare, self._step_stats = (
            update_onpolicy,
            prepare,
            step_stats,
        )

    @property
    def fused_old_logp(self) -> bool:
        """Old log-probs are the single update's own forward (``epochs = minibatches = 1``)."""
        return self.cfg.epochs == 1 and self.cfg.minibatches == 1

    def _full_state(self, params):
        nnx.update(self.model, params)
        return nnx.split(self.model)[1]

    # -- phases ---------------------------------------------------------------------------------

    def rollout(self, params, problems, step: int, group: int, *, sample_offset: int = 0):
        cfg = self.cfg
        prompts = [p.prompt for p in problems for _ in range(group)]
        pt, pm = encode_fixed(self.tok, prompts, cfg.prompt_width)
        pidx = jnp.repeat(jnp.arange(len(problems)), group)
        sidx = jnp.tile(jnp.arange(group), len(problems)) + sample_offset
        keys = S.sample_keys(cfg.seed, step, pidx, sidx)
        r = self._sampler(self._full_state(params), pt, pm, keys)
        rep = [p for p in problems for _ in range(group)]
        rewards = score(self.task, self.tok, rep, r.response, r.finished)
        return r, rewards

    def evaluate(self, params) -> dict:
        """pass@1 (mean over k samples at the training temperature) and pass@k, held-out set."""
        cfg = self.cfg
        r, rewards = self.rollout(params, self.eval_set, step=2**30, group=cfg.eval_k)
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
        cfg = self.cfg
        t0 = time.perf_counter()
        problems = self.task.sample(
            T.problem_rng(cfg.seed, step), cfg.prompts_per_step, cfg.difficulties
        )
        r, rewards = self.rollout(self.state["params"], problems, step, cfg.group_size)
        jax.block_until_ready(r.tokens)
        t1 = time.perf_counter()
        mask = r.response_mask
        adv = self._prepare(jnp.asarray(rewards), mask)
        batch = {
            "tokens": r.tokens,
            "mask": r.mask,
            "response_mask": mask,
            "old_entropy": r.entropy,
            "advantages": adv,
        }
        if self.ref_params is not None:
            batch["ref_logp"] = self._recompute(self.ref_params, r.tokens, r.mask)[0]
        if not self.fused_old_logp:
            old_logp, old_ent = self._recompute(self.state["params"], r.tokens, r.mask)
            batch["old_logp"] = old_logp
        t2 = time.perf_counter()
        n = r.tokens.shape[0]
        mb = n // cfg.minibatches
        collected = []
        if self.fused_old_logp:
            key = jax.random.fold_in(jax.random.key(cfg.seed + 2), step * 1000)
            self.state, metrics, old_logp, old_ent = self._update_onpolicy(self.state, batch, key)
            collected.append(metrics)
        else:
            for epoch in range(cfg.epochs):
                perm = jax.random.permutation(
                    jax.random.fold_in(jax.random.key(cfg.seed + 1), step * 1000 + epoch), n
                )
                for m in range(cfg.minibatches):
                    idx = perm[m * mb : (m + 1) * mb]
                    # one minibatch is the whole batch: no reshuffle (same rows, same order)
                    sub = (
                        batch
                        if cfg.minibatches == 1
                        else jax.tree.map(lambda x, i=idx: x[i], batch)
                    )
                    key = jax.random.fold_in(
                        jax.random.key(cfg.seed + 2), step * 1000 + epoch * 100 + m
                    )
                    self.state, metrics = self._update(self.state, sub, key)
                    collected.append(metrics)
        ent_after = None
        if cfg.measure_entropy_change:
            ent_after = self._recompute(self.state["params"], r.tokens, r.mask)[1]
        stats = self._step_stats(r, old_logp, old_ent, adv, ent_after)
        if len(collected) > 1:
            collected = [jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *collected)]
        metrics, stats = jax.device_get((collected[0], stats))
        obj_state, obj_info = self.objective.update_state(self.state["obj_state"], metrics)
        self.state = {**self.state, "obj_state": obj_state, "step": self.state["step"] + 1}
        t3 = time.perf_counter()

        groups = rewards.reshape(-1, cfg.group_size)
        n_tok = int(stats.pop("response/tokens"))
        diffs = np.array([p.difficulty for p in problems for _ in range(cfg.group_size)])
        cov_keys = [k for k in stats if k.startswith("cov/")]
        rec = {
            "reward/mean": float(rewards.mean()),
            "reward/acc": float(np.mean(rewards == 1.0)),
            **{
                f"reward/acc_d{d}": float(np.mean(rewards[diffs == d] == 1.0))
                for d in sorted(set(diffs.tolist()))
            },
            **{k: float(v) for k, v in stats.items() if k not in cov_keys},
            "groups/zero_adv_frac": float(np.mean(groups.max(1) == groups.min(1))),
            **{k: float(v) for k, v in metrics.items()},
            # full-rollout-batch covariance (overrides the per-minibatch means of the objective)
            **{k: float(stats[k]) for k in cov_keys},
            **{f"objective/{k}": float(v) for k, v in obj_info.items()},
            "time/rollout_s": t1 - t0,
            "time/prepare_s": t2 - t1,
            "time/update_s": t3 - t2,
            "perf/tokens_per_s": n_tok / max(t3 - t0, 1e-9),
        }
        return rec

    # -- driver ---------------------------------------------------------------------------------

    def run(self, *, resume: bool = True, progress: bool = True) -> list[dict]:
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(
            self.out_dir / "checkpoints", save_every=cfg.checkpoint_every, keep=cfg.keep_checkpoints
        )
        start = 0
        if resume and ckpt.latest_step() is not None:
            self.state, _ = ckpt.restore(abstract_like(self.state))
            start = int(self.state["step"])
        writer = MetricWriter(
            self.out_dir / "metrics.jsonl", resume_step=start if start else None, tensorboard=False
        )
        bar = ProgressBar(
            cfg.steps, initial=start, enabled=progress, desc=f"grpo {self.out_dir.name}"
        )
        records = []
        try:
            if start == 0 and cfg.eval_every:
                records.append(writer.write(0, self.evaluate(self.state["params"])))
            for s in range(start, cfg.steps):
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
        nnx.update(self.model, self.state["params"])
        return records
