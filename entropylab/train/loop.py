"""LM pre-training / SFT loop: functional NNX step under ``jax.jit``, eval, metrics, checkpoints.

Loss (token-mean over the loss mask m; m = 1 everywhere for pre-training, response tokens for SFT):

    L(θ) = Σ_{b,t} m_bt · (−log p_θ(y_bt | x_b,≤t)) / Σ_{b,t} m_bt,     ppl = exp(L)

The model is split once (``graphdef, params, rest = nnx.split(model, nnx.Param, ...)``) and the
step ``(state, batch) -> (state, metrics)`` is a pure function jitted over a
``("data", "fsdp", "tensor")`` mesh with the state donated (``entropylab.parallel``). The state
pytree ``{"params", "opt_state", "step", "rng"}`` plus the data position is what a checkpoint
holds, so a resumed run computes bit-identical steps: its metrics (all but wall-clock ones)
equal the uninterrupted run's.

Per-step JSONL record: ``loss, ppl, entropy`` (mean predictive token entropy over the mask),
``grad_norm`` (before clipping), ``lr`` (used by this update), ``tokens_per_s`` (loss-mask tokens
per wall second; wall-clock, so not reproducible), ``attn_entropy`` (``[L]`` per-layer mean over
heads, when enabled), and ``eval_loss, eval_ppl`` every ``eval_every`` steps. The host fetches
step t's metrics after dispatching step t+1 so logging does not stall the device.

Safety (``entropylab.runs``):

* **Resume** restores the latest checkpoint that the metrics file covers: the file is checked
  (torn last line dropped with a warning; a torn middle line or a step gap is an error naming
  the line); if the newest checkpoint is past the last complete record, an older checkpoint is
  used (with a warning) and the newer ones are deleted, so no history is ever truncated. A
  checkpoint written under a different :class:`TrainConfig` (fields that change the maths:
  steps, optimiser, seed, eval settings, attention-entropy logging) is refused with a message
  naming the fields.
* **Preemption**: with a ``workdir``, SIGTERM/SIGINT (or ``PreemptionGuard.request``) stops
  the loop at the next step boundary after writing a checkpoint there; the result has
  ``interrupted`` set to the signal number and the rerun continues bit-identically.
* **NaN/Inf guard**: a step whose loss or gradient norm is not finite never changes the
  parameters or optimizer state (the update is selected out on device); its record carries
  ``nonfinite = 1``. ``nan_policy="stop"`` (default) then raises ``FloatingPointError`` naming
  the step and the non-finite metrics; ``"skip"`` warns and goes on.

References: arXiv:1711.05101 (AdamW); flax ``examples/gemma/train.py`` (functional NNX step).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from entropylab import parallel, runs
from entropylab.ops import logprobs_and_entropy, masked_mean
from entropylab.train.checkpoint import Checkpointer, abstract_like
from entropylab.train.metrics import MetricWriter, ProgressBar, to_python
from entropylab.train.optim import OptimConfig, lr_schedule, make_optimizer

WALL_CLOCK_METRICS = ("tokens_per_s", "step_time_s")
NAN_POLICIES = ("stop", "skip")
# TrainConfig fields that may change between a run and its resume (they do not change the maths)
RESUME_FREE_FIELDS = ("save_every", "keep", "mesh", "progress", "nan_policy")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Loop settings (model and data are passed separately)."""

    steps: int
    optim: OptimConfig
    eval_every: int = 0
    eval_batches: int = 4
    save_every: int = 0
    keep: int = 3
    seed: int = 0
    attn_entropy: bool = False
    mesh: parallel.MeshConfig = parallel.MeshConfig()
    progress: bool = True
    nan_policy: str = "stop"

    def __post_init__(self):
        for name in ("steps", "eval_every", "eval_batches", "save_every", "keep", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
        for name in ("attn_entropy", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if not isinstance(self.mesh, parallel.MeshConfig):
            raise TypeError(f"mesh must be a MeshConfig, got {type(self.mesh).__name__}")
        if self.nan_policy not in NAN_POLICIES:
            raise ValueError(f"nan_policy must be one of {NAN_POLICIES}, got {self.nan_policy!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.steps <= 0:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        for name in ("eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = never), got {getattr(self, name)}")
        if self.eval_batches <= 0:
            raise ValueError(f"eval_batches must be >= 1, got {self.eval_batches}")
        if self.keep < 1:
            raise ValueError(f"keep must be >= 1, got {self.keep}")
        if not isinstance(self.optim, OptimConfig):
            raise ValueError(f"optim must be an OptimConfig, got {type(self.optim).__name__}")


def lm_loss(graphdef, params, rest, batch, *, attn_entropy: bool = False):
    """Token-mean next-token NLL under ``batch["loss_mask"]`` -> ``(loss, metrics)``.

    ``batch``: ``inputs``, ``targets`` int ``[B, T]``, ``loss_mask`` ``[B, T]`` and optionally
    ``attention_mask`` ``[B, T]`` (1 = real token).
    """
    model = nnx.merge(graphdef, params, rest)
    logits, aux = model(
        batch["inputs"],
        attention_mask=batch.get("attention_mask"),
        aux=("attn_entropy",) if attn_entropy else (),
    )
    logp, ent = logprobs_and_entropy(logits, batch["targets"])
    mask = batch["loss_mask"]
    loss = -masked_mean(logp, mask)
    metrics = {"loss": loss, "entropy": masked_mean(ent, mask)}
    if attn_entropy:
        metrics["attn_entropy"] = jnp.mean(aux.attn_entropy, axis=-1)  # [L]
    return loss, metrics


def resume_config(cfg: TrainConfig) -> dict:
    """The part of ``cfg`` a resumed run must share with the run that wrote the checkpoint."""
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in RESUME_FREE_FIELDS
    }


def init_state(model: nnx.Module, optimizer: optax.GradientTransformation, seed: int):
    """``(graphdef, rest, state)`` with ``state = {params, opt_state, step, rng}``."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    state = {
        "params": params,
        "opt_state": optimizer.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed)),
    }
    return graphdef, rest, state


def make_train_step(graphdef, rest, optimizer, schedule, *, attn_entropy: bool = False):
    """Pure ``step(state, batch) -> (state, metrics)`` (jit it with ``parallel.jit_train_step``)."""

    def step(state, batch):
        def loss_fn(params):
            return lm_loss(graphdef, params, rest, batch, attn_entropy=attn_entropy)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        grad_norm = optax.tree.norm(grads)
        # NaN/Inf guard: a non-finite step leaves params and optimizer state untouched
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        metrics = dict(
            metrics,
            grad_norm=grad_norm,
            lr=schedule(state["step"]),
            nonfinite=(~finite).astype(jnp.float32),
        )
        new_state = {
            "params": keep(params, state["params"]),
            "opt_state": keep(opt_state, state["opt_state"]),
            "step": state["step"] + 1,
            "rng": state["rng"],  # no stochastic layers; kept so checkpoints carry the key
        }
        return new_state, metrics

    return step


def make_eval_step(graphdef, rest):
    def eval_step(params, batch):
        return lm_loss(graphdef, params, rest, batch)[1]

    return jax.jit(eval_step)


@functools.lru_cache(maxsize=8)
def _compiled_steps(graphdef, optim_cfg, attn_entropy, mesh, treedef, shapes):
    """Jitted (train, eval) steps for a model with no non-parameter state, cached by structure."""
    rest = nnx.State({})
    step = make_train_step(
        graphdef, rest, make_optimizer(optim_cfg), lr_schedule(optim_cfg), attn_entropy=attn_entropy
    )
    abstract = treedef.unflatten([jax.ShapeDtypeStruct(s, d) for s, d in shapes])
    return parallel.jit_train_step(step, mesh, abstract), make_eval_step(graphdef, rest)


def evaluate(eval_fn, params, batches, mesh) -> dict[str, float]:
    """Mean loss over fixed eval batches (weighted by loss-mask tokens)."""
    tot, n = 0.0, 0.0
    for batch in batches:
        m = eval_fn(params, parallel.shard_batch(batch, mesh))
        w = float(np.sum(batch["loss_mask"]))
        tot += float(m["loss"]) * w
        n += w
    loss = tot / max(n, 1.0)
    return {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 80.0))}


@dataclasses.dataclass
class TrainResult:
    state: dict
    graphdef: object
    rest: object
    history: list[dict]
    resumed_from: int | None
    wall_s: float
    eval_fn: object = None  # jitted ``(params, batch) -> metrics`` (for evaluate())
    mesh: object = None
    interrupted: int | None = None  # the signal number when stopped by SIGTERM/SIGINT
    skipped_steps: tuple[int, ...] = ()  # non-finite steps skipped under nan_policy="skip"

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.state["params"], self.rest)


def train(
    model: nnx.Module,
    train_batches,
    cfg: TrainConfig,
    *,
    eval_batches=None,
    workdir=None,
    resume: bool = True,
    stop_after: int | None = None,
    preemption: runs.PreemptionGuard | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_batches`` (an :class:`~entropylab.train.data.LMBatches`-like
    iterator with ``state()``/``restore()``/``batch_at()``).

    Args:
      eval_batches: an iterator with ``batch_at(i)``; batches ``0 … cfg.eval_batches−1`` are the
        fixed eval set.
      workdir: writes ``metrics.jsonl`` and ``checkpoints/`` there (None = nothing on disk).
      resume: restore the latest checkpoint in ``workdir/checkpoints`` if there is one.
      stop_after: stop once this step is reached (a simulated interruption / time budget).
      preemption: the guard polled at step boundaries; default with a ``workdir``: a new
        :class:`~entropylab.runs.PreemptionGuard` catching SIGTERM/SIGINT for the call.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if stop_after is not None and (isinstance(stop_after, bool) or stop_after < 1):
        raise ValueError(f"stop_after must be >= 1 or None, got {stop_after!r}")
    if preemption is None and workdir is not None:
        with runs.PreemptionGuard() as guard:
            return train(
                model,
                train_batches,
                cfg,
                eval_batches=eval_batches,
                workdir=workdir,
                resume=resume,
                stop_after=stop_after,
                preemption=guard,
            )
    t_start = time.perf_counter()
    optimizer = make_optimizer(cfg.optim)
    schedule = lr_schedule(cfg.optim)
    graphdef, rest, state = init_state(model, optimizer, cfg.seed)
    mesh = parallel.make_mesh(cfg.mesh)
    state = parallel.shard_state(state, mesh)
    rest = jax.device_put(rest, parallel.replicated(mesh))

    ckpt = None
    resumed_from = None
    if workdir is not None:
        workdir = Path(workdir)
        ckpt = Checkpointer(workdir / "checkpoints", save_every=cfg.save_every, keep=cfg.keep)
        if not resume and ckpt.latest_step() is not None:
            raise ValueError(
                f"{workdir / 'checkpoints'} already holds checkpoints; resume or use a new workdir"
            )
        if resume and ckpt.latest_step() is not None:
            step = _resume_step(ckpt, workdir / "metrics.jsonl")
            state, meta = ckpt.restore(abstract_like(state), step=step)
            _check_resume_config(meta, cfg, ckpt.directory / str(step))
            ckpt.delete_after(step)
            train_batches.restore(meta["data"])
            resumed_from = meta["step"]
    start = int(state["step"])
    writer = (
        MetricWriter(workdir / "metrics.jsonl", resume_step=resumed_from)
        if workdir is not None
        else None
    )

    if jax.tree.leaves(rest):  # non-parameter model state: build fresh (closure constants)
        step_fn = parallel.jit_train_step(
            make_train_step(graphdef, rest, optimizer, schedule, attn_entropy=cfg.attn_entropy),
            mesh,
            state,
        )
        eval_fn = make_eval_step(graphdef, rest)
    else:  # the usual case: reuse compiled steps across train() calls in one process
        leaves, treedef = jax.tree.flatten(abstract_like(state))
        shapes = tuple((x.shape, x.dtype) for x in leaves)
        step_fn, eval_fn = _compiled_steps(
            graphdef, cfg.optim, cfg.attn_entropy, mesh, treedef, shapes
        )
    eval_set = [eval_batches.batch_at(i) for i in range(cfg.eval_batches)] if eval_batches else None
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    bar = ProgressBar(cfg.steps, initial=start, enabled=cfg.progress)
    history: list[dict] = []
    skipped: list[int] = []
    ckpt_meta = {
        "config": repr(cfg),
        "resume_config": runs.canonical_config(resume_config(cfg)),
        "resume_config_hash": runs.config_hash(resume_config(cfg)),
    }

    def finish(item, now, extra=None):
        s, metrics, n_tok, t_ref = item
        rec = {k: to_python(v) for k, v in metrics.items()}
        rec["ppl"] = math.exp(min(rec["loss"], 80.0)) if math.isfinite(rec["loss"]) else math.nan
        dt = now - t_ref
        rec["step_time_s"], rec["tokens_per_s"] = dt, n_tok / dt if dt > 0 else float("nan")
        rec.update(extra or {})
        record = writer.write(s, rec) if writer else {"step": s, **rec}
        history.append(record)
        bar.update(1, loss=rec["loss"])
        if rec["nonfinite"]:
            bad = _nonfinite_names(rec)
            msg = (
                f"step {s}: non-finite training metrics {bad}; the update was not applied "
                f"(nan_policy={cfg.nan_policy!r})"
            )
            if cfg.nan_policy == "stop":
                raise FloatingPointError(msg + "; stopping (use nan_policy='skip' to go on)")
            warnings.warn(msg + "; skipping this step", stacklevel=3)
            skipped.append(s)

    # Step t's metrics are fetched after step t+1 is dispatched, except at sync points (eval,
    # checkpoint, last step), where the state after step t is needed before going on.
    pending = None  # (step, metrics, n_tokens, t_ref): t_ref = when the device became free
    interrupted = None
    try:
        for s in range(start + 1, end + 1):
            batch = next(train_batches)
            t_dispatch = time.perf_counter()
            state, metrics = step_fn(state, parallel.shard_batch(batch, mesh))
            t_ref = t_dispatch
            if pending is not None:
                t_ref = _block(pending[1])
                finish(pending, t_ref)
            pending = (s, metrics, float(np.sum(batch["loss_mask"])), t_ref)
            stop = preemption is not None and preemption.agreed()  # all processes
            do_eval = (
                eval_set is not None
                and cfg.eval_every
                and (s % cfg.eval_every == 0 or s == cfg.steps)
            )
            do_save = ckpt is not None and (
                cfg.save_every and s % cfg.save_every == 0 or s == cfg.steps or stop
            )
            if do_eval or do_save or s == end or stop:
                now = _block(metrics)
                extra = evaluate(eval_fn, state["params"], eval_set, mesh) if do_eval else None
                finish(pending, now, extra)
                pending = None
            if do_save:
                ckpt.save(s, state, data_state=train_batches.state(), meta=ckpt_meta)
            if stop:
                interrupted = preemption.signum
                break
    finally:
        bar.close()
        if writer is not None:
            writer.close()
        if ckpt is not None:
            ckpt.close()
    return TrainResult(
        state=state,
        graphdef=graphdef,
        rest=rest,
        history=history,
        resumed_from=resumed_from,
        wall_s=time.perf_counter() - t_start,
        eval_fn=eval_fn,
        mesh=mesh,
        interrupted=interrupted,
        skipped_steps=tuple(skipped),
    )


def _nonfinite_names(rec: dict) -> list[str]:
    """Names of the non-finite float metrics of a record (``nan``/``inf`` values shown)."""
    out = []
    for k, v in rec.items():
        if k in WALL_CLOCK_METRICS:
            continue
        if isinstance(v, float) and not math.isfinite(v):
            out.append(f"{k}={v}")
        elif isinstance(v, list) and any(isinstance(x, float) and not math.isfinite(x) for x in v):
            out.append(f"{k}=[non-finite entries]")
    return out


def _resume_step(ckpt: Checkpointer, metrics_path: Path) -> int:
    """The newest checkpoint step that the metrics file still covers (see module docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the torn-last-line warning is given by MetricWriter
        _, steps = runs.scan_metrics(metrics_path)
    last = steps[-1] if steps else 0
    all_steps = ckpt.all_steps()
    usable = [s for s in all_steps if s <= last]
    if not usable:
        have = f"ends at step {last}" if steps else "has no records"
        raise runs.MetricsGapError(
            f"{metrics_path} {have} but the "
            f"oldest checkpoint in {ckpt.directory} is at step {all_steps[0]}: the history in "
            "between is lost; refusing to resume (start again in a new directory or overwrite)",
            path=metrics_path,
            last_step=steps[-1] if steps else None,
        )
    if usable[-1] != all_steps[-1]:
        warnings.warn(
            f"{metrics_path} ends at step {last}, before the newest checkpoint "
            f"(step {all_steps[-1]}); resuming from the checkpoint at step {usable[-1]} so that "
            "no history is lost",
            stacklevel=3,
        )
    return usable[-1]


def _check_resume_config(meta: dict, cfg: TrainConfig, path) -> None:
    saved = meta.get("meta", {})
    if "resume_config_hash" not in saved:
        return  # a checkpoint from before config hashes were stored
    want = runs.config_hash(resume_config(cfg))
    if saved["resume_config_hash"] != want:
        diffs = runs.manifest_differences(
            {"config": saved.get("resume_config", {}), "config_hash": saved["resume_config_hash"]},
            {"config": runs.canonical_config(resume_config(cfg)), "config_hash": want},
        )
        raise ValueError(
            f"checkpoint {path} was written by a different TrainConfig: {'; '.join(diffs)}; "
            "refusing to resume it (use a new workdir)"
        )


def _block(metrics) -> float:
    jax.block_until_ready(metrics)
    return time.perf_counter()
