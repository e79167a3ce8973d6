"""Harness: an op or loss computed on 8 devices (``shard_map`` and ``pmap``) equals one device.

Shared by ``tests/ops`` and ``tests/losses``. ``tests/`` holds the root ``conftest.py`` and no
``__init__.py``, so pytest puts it on ``sys.path`` and any test can write::

    from dist_util import assert_matches_distributed

    assert_matches_distributed(
        ppo_clip_loss, (logp, old_logp, adv, mask), dict(clip_ratio_c=3.0), atol=1e-6
    )

``fn(*batch_args, **static_kwargs, axis_name=...)`` must return any pytree of arrays (typically
``(loss, metrics)``). Every ``batch_args`` leaf is split on axis 0 across the devices, so B must
be a multiple of ``n_devices``. An output leaf whose leading dimension equals B is treated as
per-example (e.g. advantages ``[B]`` or ``[B, T]``): the device shards are concatenated and
compared with the one-device result. Every other leaf (scalars: the loss and metrics) must be
identical on every device and equal the one-device value; under ``shard_map`` it is returned
with ``out_specs=P()``, so a statistic that is not reduced over ``axis_name`` fails at trace
time (``check_vma``) instead of silently being a per-device value.

With ``grad_argnums`` the gradient of the first output leaf (the loss) with respect to those
batch args is also compared: inside ``shard_map`` the gradient of the replicated global loss
with respect to each device's shard must equal the matching slice of the one-device gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"


def _is_batched(shape, batch: int) -> bool:
    return len(shape) >= 1 and shape[0] == batch


def _shard(args, mesh):
    """Place each batch arg split on axis 0 over the mesh (global arrays, as a user would)."""
    return tuple(jax.device_put(a, NamedSharding(mesh, P(AXIS))) for a in args)


def _first_leaf(tree):
    return jax.tree_util.tree_leaves(tree)[0]


def _assert_tree_close(got, want, *, atol, rtol, what):
    got_l, got_def = jax.tree_util.tree_flatten(got)
    want_l, want_def = jax.tree_util.tree_flatten(want)
    assert got_def == want_def, f"{what}: output structure {got_def} != {want_def}"
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(want)[0]]
    for path, g, w in zip(paths, got_l, want_l):
        g, w = np.asarray(g), np.asarray(w)
        msg = f"{what}: output {path} differs from the one-device result"
        assert g.shape == w.shape, f"{msg}: shape {g.shape} != {w.shape}"
        if w.dtype == bool or np.issubdtype(w.dtype, np.integer):
            np.testing.assert_array_equal(g, w, err_msg=msg)
        else:
            np.testing.assert_allclose(
                g.astype(np.float64), w.astype(np.float64), atol=atol, rtol=rtol, err_msg=msg
            )


def run_distributed(
    fn,
    batch_args: tuple,
    static_kwargs: dict | None = None,
    *,
    n_devices: int = 8,
    method: str = "shard_map",
):
    """Run ``fn`` on ``n_devices`` with the batch split on axis 0 and ``axis_name="data"``.

    Returns the output in the one-device layout: per-example leaves concatenated back to
    ``[B, ...]``; replicated leaves (``pmap``: the device-0 copy, after asserting all devices
    agree exactly).
    """
    kw = dict(static_kwargs or {})
    batch_args = tuple(jnp.asarray(a) for a in batch_args)
    batch = batch_args[0].shape[0]
    if batch % n_devices:
        raise ValueError(f"batch size {batch} must be a multiple of n_devices={n_devices}")
    if len(jax.devices()) < n_devices:
        raise RuntimeError(f"need {n_devices} devices, have {len(jax.devices())}")
    for a in batch_args:
        if a.shape[:1] != (batch,):
            raise ValueError(f"every batch arg needs leading dim {batch}, got {a.shape}")
    out_shape = jax.eval_shape(lambda *a: fn(*a, **kw, axis_name=None), *batch_args)
    batched = jax.tree_util.tree_map(lambda s: _is_batched(s.shape, batch), out_shape)

    if method == "shard_map":
        mesh = jax.make_mesh((n_devices,), (AXIS,), devices=jax.devices()[:n_devices])
        out_specs = jax.tree_util.tree_map(lambda b: P(AXIS) if b else P(), batched)
        sm = jax.shard_map(
            lambda *a: fn(*a, **kw, axis_name=AXIS),
            mesh=mesh,
            in_specs=tuple(P(AXIS) for _ in batch_args),
            out_specs=out_specs,
        )
        return jax.jit(sm)(*_shard(batch_args, mesh))
    if method == "pmap":
        local = batch // n_devices
        stacked = [a.reshape((n_devices, local) + a.shape[1:]) for a in batch_args]
        out = jax.pmap(
            lambda *a: fn(*a, **kw, axis_name=AXIS),
            axis_name=AXIS,
            devices=jax.devices()[:n_devices],
        )(*stacked)

        def unstack(x, is_b):
            x = np.asarray(x)
            if is_b:
                return x.reshape((batch,) + x.shape[2:])
            for d in range(1, n_devices):
                np.testing.assert_array_equal(
                    x[d], x[0], err_msg=f"pmap: replicated output differs on device {d}"
                )
            return x[0]

        return jax.tree_util.tree_map(unstack, out, batched)
    raise ValueError(f"method must be 'shard_map' or 'pmap', got {method!r}")


def grad_distributed(fn, batch_args, static_kwargs, argnums: Sequence[int], *, n_devices=8):
    """Gradient of the first output leaf w.r.t. ``batch_args[argnums]``, computed in shard_map."""
    kw = dict(static_kwargs or {})
    batch_args = tuple(jnp.asarray(a) for a in batch_args)
    mesh = jax.make_mesh((n_devices,), (AXIS,), devices=jax.devices()[:n_devices])

    def local(*a):
        return jax.grad(lambda *b: _first_leaf(fn(*b, **kw, axis_name=AXIS)), argnums=argnums)(*a)

    sm = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=tuple(P(AXIS) for _ in batch_args),
        out_specs=tuple(P(AXIS) for _ in argnums),
    )
    return jax.jit(sm)(*_shard(batch_args, mesh))


def assert_matches_distributed(
    fn,
    batch_args: tuple,
    static_kwargs: dict | None = None,
    *,
    n_devices: int = 8,
    atol: float = 1e-6,
    rtol: float = 1e-6,
    methods: Sequence[str] = ("shard_map", "pmap"),
    grad_argnums: Sequence[int] = (),
):
    """Assert ``fn`` gives the one-device answer under ``shard_map`` and ``pmap`` on 8 devices.

    (a) ``fn(*batch_args, **static_kwargs, axis_name=None)`` on the whole batch;
    (b) ``jax.shard_map`` over ``jax.make_mesh((n_devices,), ("data",))``, batch split on axis 0,
        ``axis_name="data"``;
    (c) ``jax.pmap(..., axis_name="data")`` on args reshaped to ``[n_devices, B/n_devices, ...]``.
    Every output leaf of (b) and (c) must equal (a) within ``atol``/``rtol``. With
    ``grad_argnums``, the shard_map gradient of the loss (first output leaf) must equal the
    one-device gradient. Returns the one-device output.
    """
    kw = dict(static_kwargs or {})
    batch_args = tuple(jnp.asarray(a) for a in batch_args)
    ref = jax.jit(lambda *a: fn(*a, **kw, axis_name=None))(*batch_args)
    for method in methods:
        got = run_distributed(fn, batch_args, kw, n_devices=n_devices, method=method)
        _assert_tree_close(got, ref, atol=atol, rtol=rtol, what=method)
    if grad_argnums:
        argnums = tuple(grad_argnums)
        want = jax.grad(lambda *b: _first_leaf(fn(*b, **kw, axis_name=None)), argnums=argnums)(
            *batch_args
        )
        got = grad_distributed(fn, batch_args, kw, argnums, n_devices=n_devices)
        _assert_tree_close(got, want, atol=atol, rtol=rtol, what="shard_map grad")
    return ref


# ---- multi-process (multi-host) LM test helpers -----------------------------------------------


def lm_setup(mesh_devices: int):
    """The tiny LM run of tests/distributed_test.py: ``(model, batches, cfg)``.

    ``mesh_devices`` sizes the ``data`` axis (``-1`` = every device of every process).
    """
    from flax import nnx

    from entropylab.models import Transformer, TransformerConfig
    from entropylab.parallel import MeshConfig
    from entropylab.train import LMBatches, OptimConfig, TrainConfig

    rng = np.random.default_rng(0)
    n = 4000
    base = np.tile(np.arange(64), n // 64 + 1)[:n]
    tokens = np.where(rng.random(n) < 0.1, rng.integers(0, 64, n), base).astype(np.int32)
    model = Transformer(TransformerConfig.smoke(vocab_size=64), rngs=nnx.Rngs(0))
    batches = LMBatches(tokens, batch_size=4, seq_len=16, seed=5)
    cfg = TrainConfig(
        steps=3,
        optim=OptimConfig(learning_rate=3e-3, warmup_steps=1, total_steps=3),
        mesh=MeshConfig(data=mesh_devices),
        progress=False,
    )
    return model, batches, cfg


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# ---- multi-process RL step helpers (tests/distributed_test.py) --------------------------------

RL_STEPS = 2


def rl_setup():
    """The sharded RL step of tests/distributed_test.py: ``(update_args, state, batches)``.

    ``update_args = (objective, tx, graphdef, rest, step_cfg)`` for
    :func:`entropylab.rl.step.make_update`; ``state`` the initial step state; ``batches`` a list
    of ``RL_STEPS`` host (NumPy) :class:`~entropylab.rl.step.RLBatch` es of 16 rows, identical in
    every process. The objective has batch-global statistics and component state that are
    continuous in the params (adaptive KL controller: pooled sequence KL; adaptive entropy
    coefficient: global token-mean entropy; token-mean aggregation), so runs that differ only by
    float rounding stay together over several steps. 2 epochs x 2 minibatches per step.
    """
    import dataclasses

    import jax.numpy as jnp
    from flax import nnx

    from entropylab.losses.objective import ObjectiveConfig, build_objective
    from entropylab.models import Transformer, TransformerConfig
    from entropylab.rl import step as S
    from entropylab.rl.trainer import RLConfig, rl_optimizer

    v, p, n, b = 24, 4, 5, 16
    mcfg = dataclasses.replace(TransformerConfig.smoke(vocab_size=v, max_seq_len=16), n_layers=1)
    graphdef, params, rest = nnx.split(Transformer(mcfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
    objective = build_objective(
        ObjectiveConfig(
            kl_controller="adaptive",
            kl_coef=0.05,
            regularizers=(("adaptive_entropy", {"target": 4.0}),),
        )
    )
    tx = rl_optimizer(RLConfig(learning_rate=1e-2, steps=RL_STEPS))
    cfg = S.StepConfig(prompt_width=p, epochs=2, minibatches=2, group_size=4, learning_rate=1e-2)
    state = {
        "params": params,
        "opt_state": tx.init(params),
        "obj_state": objective.init_state(),
        "step": jnp.zeros((), jnp.int32),
    }
    batches = []
    for seed in range(RL_STEPS):
        rng = np.random.default_rng(seed)
        tokens = rng.integers(3, v, (b, p + n)).astype(np.int32)
        pmask = np.ones((b, p), bool)
        pmask[::3, 0] = False  # some left padding
        rmask = np.arange(n)[None, :] < rng.integers(1, n + 1, b)[:, None]
        rewards = rng.integers(0, 2, b).astype(np.float32)
        adv = np.asarray(S.compute_advantages(rewards, rmask, group_size=4))
        batches.append(
            S.RLBatch(
                tokens=tokens,
                mask=np.concatenate([pmask, rmask], 1),
                response_mask=rmask,
                advantages=adv,
                old_entropy=rng.uniform(0.5, 2.0, (b, n)).astype(np.float32),
                sample_logp=-rng.uniform(0.5, 3.0, (b, n)).astype(np.float32),
                rewards=rewards,
                group_ids=np.arange(b, dtype=np.int32) // 4,
                ref_logp=-rng.uniform(0.5, 3.0, (b, n)).astype(np.float32),
            )
        )
    return (objective, tx, graphdef, rest, cfg), state, batches


def rl_run(mesh=None):
    """``RL_STEPS`` updates of :func:`rl_setup`; returns ``[(metrics, stats, state)]`` per step as
    NumPy pytrees. With ``mesh`` (it may span processes) the update is sharded over it and each
    process feeds only its own rows of every batch (``make_array_from_process_local_data``)."""
    from jax.experimental import multihost_utils

    from entropylab import parallel
    from entropylab.rl import step as S

    args, state, batches = rl_setup()
    update = S.make_update(*args, mesh=mesh, donate=mesh is not None)
    key = jax.random.key(3)
    if mesh is not None:
        state = jax.device_put(state, S.state_shardings(state, mesh))
        # a typed key cannot be device_put onto devices of other processes; its raw data can
        key_data = jax.device_put(jax.random.key_data(key), parallel.replicated(mesh))
        key = jax.random.wrap_key_data(key_data)

    def host(tree):
        if mesh is None:
            return jax.device_get(tree)
        return jax.tree.map(
            lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree
        )

    def place(x):
        if mesh is None:
            return jnp.asarray(x)
        rows = parallel.process_rows(x.shape[0], mesh)  # this process's rows only
        return jax.make_array_from_process_local_data(
            parallel.batch_sharding(mesh), x[rows], x.shape
        )

    out = []
    for batch in batches:
        state, metrics, stats = update(state, jax.tree.map(place, batch), key)
        out.append(host((metrics, stats, state)))
    return out
