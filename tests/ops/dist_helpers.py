"""Run an op on 8 devices (``jax.shard_map`` over a mesh, or ``jax.pmap``) with the batch split
on axis 0 and ``axis_name="data"``; outputs come back in the one-device layout.

Outputs whose leading dimension equals the batch size are per-example and are concatenated;
every other output must be replicated (``shard_map``: ``out_specs=P()``, which fails at trace
time under ``check_vma`` if the op forgot to reduce over the axis; ``pmap``: asserted equal on
every device).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
N_DEV = 8


def run_distributed(fn, args: tuple, *, method: str = "shard_map"):
    args = tuple(jnp.asarray(a) for a in args)
    batch = args[0].shape[0]
    assert batch % N_DEV == 0, batch
    shapes = jax.eval_shape(lambda *a: fn(*a, axis_name=None), *args)
    batched = jax.tree_util.tree_map(lambda s: len(s.shape) >= 1 and s.shape[0] == batch, shapes)
    if method == "shard_map":
        mesh = jax.make_mesh((N_DEV,), (AXIS,), devices=jax.devices()[:N_DEV])
        out_specs = jax.tree_util.tree_map(lambda b: P(AXIS) if b else P(), batched)
        f = jax.shard_map(
            lambda *a: fn(*a, axis_name=AXIS),
            mesh=mesh,
            in_specs=tuple(P(AXIS) for _ in args),
            out_specs=out_specs,
        )
        placed = tuple(jax.device_put(a, NamedSharding(mesh, P(AXIS))) for a in args)
        return jax.tree_util.tree_map(np.asarray, jax.jit(f)(*placed))
    if method == "pmap":
        stacked = [a.reshape((N_DEV, batch // N_DEV) + a.shape[1:]) for a in args]
        out = jax.pmap(
            lambda *a: fn(*a, axis_name=AXIS), axis_name=AXIS, devices=jax.devices()[:N_DEV]
        )(*stacked)

        def unstack(x, is_b):
            x = np.asarray(x)
            if is_b:
                return x.reshape((batch,) + x.shape[2:])
            for d in range(1, N_DEV):
                np.testing.assert_array_equal(x[d], x[0], err_msg=f"pmap device {d} differs")
            return x[0]

        return jax.tree_util.tree_map(unstack, out, batched)
    raise ValueError(method)


def assert_distributed_equal(fn, args: tuple, *, atol=1e-6, rtol=1e-6):
    """``fn(*args, axis_name=...)`` under shard_map and pmap equals one device on the batch."""
    want = jax.tree_util.tree_map(np.asarray, jax.jit(lambda *a: fn(*a, axis_name=None))(*args))
    for method in ("shard_map", "pmap"):
        got = run_distributed(fn, args, method=method)
        jax.tree_util.tree_map(
            lambda g, w, method=method: np.testing.assert_allclose(
                g, w, atol=atol, rtol=rtol, err_msg=method
            ),
            got,
            want,
        )
    return want
