"""The RL update as one pure, jitted, shardable function of ``(state, batch, key)``.

::

    batch  = prepare_batch(rollout, rewards, group_size=G, estimator="grpo")     RLBatch
    update = make_update(objective, tx, graphdef, rest, StepConfig(...), mesh=mesh)
    state, metrics, stats = update(state, batch, root_key)

``state`` is ``{"params", "opt_state", "obj_state", "step"}``; ``root_key`` the run's
``jax.random.key(seed)`` (every key inside derives from it and ``state["step"]`` by named
streams, :mod:`entropylab.rl.rng`). One call does, inside one compiled program:

1. **old log-probs**: with ``epochs = minibatches = 1`` the single update starts from the
   sampling params, so the old log-probs are the update's own forward under ``stop_gradient``
   (ratio exactly 1); otherwise one teacher-forced forward over the whole batch (as verl does).
2. **epochs × minibatches** optimizer steps (a ``lax.scan``): minibatch rows are a permutation
   of the batch per epoch (stream ``SHUFFLE``; whole groups move together when
   ``StepConfig.shuffle == "groups"``), no permutation for one minibatch. Each minibatch calls
   ``objective.loss_and_stats`` and returns its metrics and its *statistics* — a pytree of
   ``(sum, count)`` pairs.
3. **component state** (adaptive KL / entropy coefficients, ARES β, SIREN anchor) updated once
   from the statistics *summed* over the minibatches (``objective.update_state_from_stats``), so
   a pooled mean is Σsum/Σcount over all minibatch tokens — not a mean of minibatch means.
4. **diagnostics once per step** on the full batch at the pre-update policy
   (``objective.diagnostics``: entropy and covariance statistics) and the engine's own
   (rollout/trainer entropy gap, the covariance-predicted entropy change, optionally the entropy
   change observed on the same tokens after the step).

Logged ``metrics`` are the minibatch means of the objective's metrics (as before) plus the
diagnostics above (full batch) and ``objective/*`` from the state update.

Sharding: with ``mesh`` (:func:`entropylab.parallel.make_mesh`) the batch is split over the
``("data", "fsdp")`` axes, the objective runs inside ``jax.shard_map`` with that axis name — so
every statistic the losses take over "the batch" is global — and the gradient of the replicated
global loss is taken outside the ``shard_map`` (the transpose all-reduces it). 8 devices give the
one-device step to float rounding (``test_sharded_eight_devices_equals_one_device`` in
``tests/rl/step_test.py``; two processes equal one in ``tests/distributed_test.py``). The state
is donated.

Log-probs come from :func:`entropylab.logprobs.policy_logprobs` (fused over the vocabulary; full
``[B, T, V]`` logits only when the objective ``needs_logits``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from entropylab import parallel
from entropylab.logprobs import policy_logprobs
from entropylab.losses import advantages as adv_lib
from entropylab.losses.objective import ObjectiveInputs
from entropylab.ops import entropy_stats, masked_mean
from entropylab.rl import rng

__all__ = [
    "ADVANTAGE_ESTIMATORS",
    "RLBatch",
    "StepConfig",
    "advantage_estimator",
    "compute_advantages",
    "make_logprob_fn",
    "make_replicated_update",
    "make_update",
    "prepare_batch",
    "register_advantage_estimator",
    "stack_replicas",
    "unstack_replica",
]


# ------------------------------------------------------------------------ advantage estimators
ADVANTAGE_ESTIMATORS: dict[str, Callable] = {}


def register_advantage_estimator(name: str, fn: Callable | None = None):
    """Register ``fn(rewards [B], *, group_size, **kwargs) -> [B]`` (sequence advantages).

    Groups are ``group_size`` consecutive rows. Usable as a decorator. ``ValueError`` if taken.
    """

    def reg(f):
        if not isinstance(name, str) or not name:
            raise ValueError(f"estimator name must be a non-empty string, got {name!r}")
        if name in ADVANTAGE_ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ADVANTAGE_ESTIMATORS[name] = f
        return f

    return reg if fn is None else reg(fn)


def advantage_estimator(name: str) -> Callable:
    """The registered estimator; ``ValueError`` listing the names otherwise."""
    try:
        return ADVANTAGE_ESTIMATORS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown advantage estimator {name!r}; registered: {sorted(ADVANTAGE_ESTIMATORS)}"
        ) from None


register_advantage_estimator(
    "grpo",
    lambda r, *, group_size, eps=1e-6: adv_lib.grpo_advantages(r, group_size=group_size, eps=eps),
)
register_advantage_estimator(
    "dr_grpo", lambda r, *, group_size: adv_lib.dr_grpo_advantages(r, group_size=group_size)
)
register_advantage_estimator(
    "rloo", lambda r, *, group_size: adv_lib.rloo_advantages(r, group_size=group_size)
)
# plain REINFORCE: the reward itself, no baseline
register_advantage_estimator("reinforce", lambda r, *, group_size: jnp.asarray(r, jnp.float32))


def compute_advantages(rewards, response_mask, *, group_size: int, estimator="grpo", kwargs=()):
    """``[B, N]`` token advantages: the named estimator's ``[B]`` values on the response mask."""
    fn = advantage_estimator(estimator)
    seq = fn(jnp.asarray(rewards, jnp.float32), group_size=group_size, **dict(kwargs))
    return seq[:, None] * jnp.asarray(response_mask, seq.dtype)


# ------------------------------------------------------------------------------------ batch
@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, kw_only=True)
class RLBatch:
    """One RL batch (a pytree; every leaf has the batch as its leading dim ``B``).

    ``tokens, mask [B, P + N]`` (prompt left-padded, then the response); ``response_mask,
    advantages, old_entropy, sample_logp [B, N]`` (``old_entropy``/``sample_logp``: the
    sampler's entropy and log-prob per token); ``old_logp [B, N]`` or ``None`` (computed inside
    the step); ``ref_logp [B, N]`` or ``None``; ``rewards, group_ids [B]``; ``extras`` a dict of
    per-sample arrays for the objective (``ObjectiveInputs.extras``), e.g. ``difficulty [B]``
    for ARES, ``temp_tokens``/``temp_full_mask [B, P + N]`` + ``temp_mask [B, N]`` +
    ``temp_rewards [B]`` for AEPO's temperature samples (their log-probs under the current
    params are computed inside the loss as ``extras["temp_logp"]``).
    """

    tokens: Any
    mask: Any
    response_mask: Any
    advantages: Any
    old_entropy: Any
    sample_logp: Any
    rewards: Any
    group_ids: Any
    old_logp: Any = None
    ref_logp: Any = None
    extras: Any = dataclasses.field(default_factory=dict)


def prepare_batch(
    rollout,
    rewards,
    *,
    group_size: int,
    estimator: str = "grpo",
    estimator_kwargs=(),
    ref_logp=None,
    extras: Mapping | None = None,
) -> RLBatch:
    """:class:`RLBatch` from a :class:`~entropylab.rl.sampling.Rollout` and rewards ``[B]``.

    Advantages: the named estimator (:data:`ADVANTAGE_ESTIMATORS`) over groups of
    ``group_size`` consecutive rows, broadcast over the response mask. Jittable (``estimator``
    and ``group_size`` static).
    """
    rewards = jnp.asarray(rewards, jnp.float32)
    b = rollout.tokens.shape[0]
    if rewards.shape != (b,):
        raise ValueError(f"rewards must be [B] = ({b},), got {rewards.shape}")
    if b % group_size:
        raise ValueError(f"group_size={group_size} must divide the batch size {b}")
    adv = compute_advantages(
        rewards,
        rollout.response_mask,
        group_size=group_size,
        estimator=estimator,
        kwargs=estimator_kwargs,
    )
    return RLBatch(
        tokens=rollout.tokens,
        mask=rollout.mask,
        response_mask=rollout.response_mask,
        advantages=adv,
        old_entropy=rollout.entropy,
        sample_logp=rollout.logp,
        rewards=rewards,
        group_ids=jnp.arange(b, dtype=jnp.int32) // group_size,
        ref_logp=ref_logp,
        extras=dict(extras or {}),
    )


# ------------------------------------------------------------------------------------ config
_SHUFFLE = ("rows", "groups")


@dataclasses.dataclass(frozen=True, kw_only=True)
class StepConfig:
    """Static settings of :func:`make_update` (hashable).

    ``prompt_width`` P (response starts at column P); ``temperature`` of the training
    distribution (the sampler's); ``epochs``/``minibatches``; ``shuffle`` ``"rows"`` or
    ``"groups"`` (whole groups of ``group_size`` rows per minibatch, needed by group-based
    advantage shapers); ``learning_rate`` only scales the logged covariance-predicted entropy
    change; ``fused_logprobs``/``vocab_block`` select the log-prob path;
    ``measure_entropy_change`` adds a forward after the step (``cov/observed_dH``);
    ``recompute_old_logp`` forces the separate old-log-prob forward even for one epoch × one
    minibatch (to test that the fused path equals it).
    """

    prompt_width: int
    temperature: float = 1.0
    epochs: int = 1
    minibatches: int = 1
    group_size: int = 1
    shuffle: str = "rows"
    learning_rate: float = 1.0
    fused_logprobs: bool = True
    vocab_block: int = 1024
    measure_entropy_change: bool = False
    recompute_old_logp: bool = False

    def __post_init__(self):
        for name in ("prompt_width", "epochs", "minibatches", "group_size", "vocab_block"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.shuffle not in _SHUFFLE:
            raise ValueError(f"shuffle must be one of {_SHUFFLE}, got {self.shuffle!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def on_policy(self) -> bool:
        """One epoch × one minibatch (and not ``recompute_old_logp``): the old log-probs are the
        update's own forward under ``stop_gradient`` instead of a separate forward."""
        return self.epochs == 1 and self.minibatches == 1 and not self.recompute_old_logp


# ------------------------------------------------------------------------------------ pieces
def make_logprob_fn(graphdef, rest, cfg: StepConfig):
    """``fn(params, tokens, mask, *, with_logits=False) -> PolicyLogProbs`` of the response."""

    def fn(params, tokens, mask, *, with_logits=False):
        model = nnx.merge(graphdef, params, rest)
        return policy_logprobs(
            model,
            tokens,
            start=cfg.prompt_width,
            attention_mask=mask,
            temperature=cfg.temperature,
            with_logits=with_logits,
            fused=cfg.fused_logprobs,
            vocab_block=cfg.vocab_block,
        )

    return fn


def _step_diagnostics(objective, batch: RLBatch, old_lp, old_ent, ent_after, obj_state, lr, ax):
    """Full-batch statistics at the pre-update policy (see the module docstring)."""
    mask = batch.response_mask
    inputs = ObjectiveInputs(
        logp=old_lp,
        old_logp=old_lp,
        advantages=batch.advantages,
        mask=mask,
        entropy=old_ent,
        old_entropy=batch.old_entropy,
        ref_logp=batch.ref_logp,
        group_ids=batch.group_ids,
        extras={k: v for k, v in (batch.extras or {}).items() if k != "temp_logp"},
    )
    out = dict(objective.diagnostics(inputs, obj_state, axis_name=ax, learning_rate=lr))
    ent_roll = masked_mean(batch.old_entropy, mask, axis_name=ax)
    ent_train = masked_mean(old_ent, mask, axis_name=ax)
    lens = jnp.sum(mask.astype(jnp.float32), axis=1)
    n_rows = jnp.float32(lens.shape[0])
    tot = jnp.sum(lens)
    if ax is not None:
        tot, n_rows = jax.lax.psum(tot, ax), jax.lax.psum(n_rows, ax)
    out.update(
        {
            "rollout/entropy": ent_roll,
            "train/entropy": ent_train,
            "entropy/gap": ent_train - ent_roll,
            "rollout/logp_gap": masked_mean(
                jnp.abs(old_lp - batch.sample_logp), mask, axis_name=ax
            ),
            **{
                f"rollout/entropy_{k}": v
                for k, v in entropy_stats(batch.old_entropy, mask, axis_name=ax).items()
            },
            "response/length": tot / n_rows,
        }
    )
    if ent_after is not None:  # the same tokens after vs before the step
        out["cov/observed_dH"] = masked_mean(ent_after, mask, axis_name=ax) - ent_train
    return out


# ------------------------------------------------------------------------------------ update
def make_update(
    objective,
    tx: optax.GradientTransformation,
    graphdef,
    rest,
    cfg: StepConfig,
    *,
    mesh: jax.sharding.Mesh | None = None,
    donate: bool = True,
    jit: bool = True,
):
    """``update(state, batch, root_key) -> (state, metrics, stats)`` (see the module docstring).

    ``objective``: a built :class:`~entropylab.losses.objective.Objective`. ``tx``: the optax
    optimizer (:func:`entropylab.train.optim.make_optimizer`). ``graphdef, rest`` from
    ``nnx.split(model, nnx.Param, ...)``. ``mesh``: shard the batch over ``("data", "fsdp")``
    (``None``: no ``shard_map``, ``axis_name=None``). ``jit=False`` returns the pure function
    (e.g. to ``jax.vmap`` over seed replicas before jitting).
    """
    logprob_fn = make_logprob_fn(graphdef, rest, cfg)
    needs_logits = objective.needs_logits
    temp_logp = "extras.temp_logp" in objective.needs
    ax = None if mesh is None else parallel.BATCH_AXES
    if mesh is not None and mesh.shape["tensor"] != 1:
        raise ValueError("make_update shards the batch only: use a mesh with tensor=1")

    def sharded(fn, in_specs, out_specs):
        """``fn(*args, ax)`` on the local shard inside ``shard_map`` (or as is without a mesh)."""
        if mesh is None:
            return functools.partial(fn, ax=None)
        return jax.shard_map(
            functools.partial(fn, ax=ax), mesh=mesh, in_specs=in_specs, out_specs=out_specs
        )

    row, rep = P(parallel.BATCH_AXES), P()

    def local_objective(lp, ent, logits, temp_lp, mb: RLBatch, obj_state, key, step, *, ax):
        old = jax.lax.stop_gradient(lp) if mb.old_logp is None else mb.old_logp
        extras = dict(mb.extras or {})
        if temp_lp is not None:
            extras["temp_logp"] = temp_lp
        inputs = ObjectiveInputs(
            logp=lp,
            old_logp=old,
            advantages=mb.advantages,
            mask=mb.response_mask,
            entropy=ent,
            old_entropy=mb.old_entropy,
            ref_logp=mb.ref_logp,
            logits=logits,
            key=key,
            step=step,
            group_ids=mb.group_ids,
            extras=extras,
        )
        return objective.loss_and_stats(inputs, obj_state, axis_name=ax)

    # the objective runs per device (its batch statistics reduced over ``ax``); the forward
    # (fused over the vocabulary) runs on the global arrays, partitioned by the compiler
    objective_fn = sharded(
        local_objective, (row, row, row, row, row, rep, rep, rep), (rep, rep, rep)
    )

    def loss_fn(params, mb: RLBatch, obj_state, key, step):
        out = logprob_fn(params, mb.tokens, mb.mask, with_logits=needs_logits)
        temp_lp = None
        if temp_logp:
            temp_lp = logprob_fn(params, mb.extras["temp_tokens"], mb.extras["temp_full_mask"]).logp
        loss, metrics, stats = objective_fn(
            out.logp, out.entropy, out.logits, temp_lp, mb, obj_state, key, step
        )
        aux = (metrics, stats, jax.lax.stop_gradient(out.logp), jax.lax.stop_gradient(out.entropy))
        return loss, aux

    def forward(params, tokens, mask):
        out = logprob_fn(params, tokens, mask)
        return out.logp, out.entropy

    def local_diag(batch, old_lp, old_ent, ent_after, obj_state, *, ax):
        return _step_diagnostics(
            objective, batch, old_lp, old_ent, ent_after, obj_state, cfg.learning_rate, ax
        )

    diag = sharded(local_diag, (row, row, row, row, rep), rep)

    def sgd_step(carry, mb, key, obj_state, step):
        params, opt_state = carry
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, mb, obj_state, key, step
        )
        upd, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, upd)
        metrics = {**aux[0], "loss/total": loss, "train/grad_norm": optax.tree.norm(grads)}
        return (params, opt_state), (metrics, aux[1], aux[2], aux[3])

    def update(state, batch: RLBatch, root_key):
        step = state["step"]
        obj_state = state["obj_state"]
        carry = (state["params"], state["opt_state"])
        n = batch.tokens.shape[0]
        if cfg.on_policy:
            key = rng.stream(root_key, rng.LOSS, step, 0, 0)
            carry, (metrics, stats, old_lp, old_ent) = sgd_step(carry, batch, key, obj_state, step)
        else:
            if batch.old_logp is None:
                old_lp, old_ent = forward(state["params"], batch.tokens, batch.mask)
                batch = dataclasses.replace(batch, old_logp=old_lp)
            else:
                old_lp = batch.old_logp
                old_ent = forward(state["params"], batch.tokens, batch.mask)[1]
            idx, keys = _minibatch_plan(root_key, step, n, cfg)

            def body(c, xs):
                i, k = xs
                mb = jax.tree.map(lambda x: x[i], batch) if cfg.minibatches > 1 else batch
                return sgd_step(c, mb, k, obj_state, step)

            carry, (ms, ss, _, _) = jax.lax.scan(body, carry, (idx, keys))
            metrics = jax.tree.map(lambda x: jnp.mean(x, axis=0), ms)
            stats = jax.tree.map(lambda x: jnp.sum(x, axis=0), ss)
        params, opt_state = carry
        ent_after = (
            forward(params, batch.tokens, batch.mask)[1] if cfg.measure_entropy_change else None
        )
        obj_state, info = objective.update_state_from_stats(obj_state, stats)
        metrics = {
            **metrics,
            **diag(batch, old_lp, old_ent, ent_after, state["obj_state"]),
            **{f"objective/{k}": v for k, v in info.items()},
        }
        new_state = {
            "params": params,
            "opt_state": opt_state,
            "obj_state": obj_state,
            "step": step + 1,
        }
        return new_state, metrics, stats

    if not jit:
        return update
    if mesh is None:
        return jax.jit(update, donate_argnums=(0,) if donate else ())
    return _jit_on_mesh(update, mesh, donate)


def _minibatch_plan(root_key, step, n, cfg: StepConfig):
    """Row indices ``[E·M, n/M]`` of every minibatch and their loss keys ``[E·M]``."""
    e_, m_ = cfg.epochs, cfg.minibatches
    mb = n // m_
    idx, keys = [], []
    for epoch in range(e_):
        if m_ == 1:  # one minibatch is the whole batch: same rows, same order
            order = jnp.arange(n)
        elif cfg.shuffle == "groups":
            g = cfg.group_size
            perm = jax.random.permutation(rng.stream(root_key, rng.SHUFFLE, step, epoch), n // g)
            order = (perm[:, None] * g + jnp.arange(g)[None, :]).reshape(n)
        else:
            order = jax.random.permutation(rng.stream(root_key, rng.SHUFFLE, step, epoch), n)
        idx.append(order.reshape(m_, mb))
        keys.extend(rng.stream(root_key, rng.LOSS, step, epoch, m) for m in range(m_))
    return jnp.concatenate(idx), jnp.stack(keys)


def state_shardings(state, mesh):
    """Params/optimizer state by :func:`entropylab.parallel.param_spec`; the rest replicated."""
    rep = NamedSharding(mesh, P())
    return {
        "params": parallel.state_shardings(state["params"], mesh),
        "opt_state": parallel.state_shardings(state["opt_state"], mesh),
        "obj_state": jax.tree.map(lambda _: rep, state["obj_state"]),
        "step": rep,
    }


def _jit_on_mesh(update, mesh, donate):
    """jit with the state's shardings fixed at the first call (then cached per structure)."""
    cache = {}
    batch_sh = parallel.batch_sharding(mesh)
    rep = parallel.replicated(mesh)

    def call(state, batch, root_key):
        struct = jax.tree.structure((state, batch))
        if struct not in cache:
            s_sh = state_shardings(state, mesh)
            cache[struct] = jax.jit(
                update,
                in_shardings=(s_sh, batch_sh, rep),
                out_shardings=(s_sh, rep, rep),
                donate_argnums=(0,) if donate else (),
            )
        return cache[struct](state, batch, root_key)

    return call


def make_replicated_update(objective, tx, graphdef, rest, cfg: StepConfig, *, donate=True):
    """K seed replicas as one compiled program (the PureJaxRL pattern).

    ``update(states, batches, root_keys) -> (states, metrics, stats)`` where every leaf has a
    leading replica axis ``K`` (params, optimizer and component state, the batches, one root key
    per seed): :func:`make_update`'s pure function under ``jax.vmap``. Replica ``k`` equals a
    single run with ``root_keys[k]`` (``tests/rl/replicas_test.py``). No mesh (one device).
    """
    pure = make_update(objective, tx, graphdef, rest, cfg, jit=False)
    return jax.jit(jax.vmap(pure), donate_argnums=(0,) if donate else ())


def stack_replicas(trees):
    """Stack K pytrees of the same structure on a new leading axis (e.g. per-seed states)."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack_replica(tree, k: int):
    """Replica ``k`` of a stacked pytree."""
    return jax.tree.map(lambda x: x[k], tree)
