"""Device mesh, sharding rules and a jitted, donated train step (jit over global arrays; no pmap).

Mesh axes ``("data", "fsdp", "tensor")``, built by ``jax.make_mesh`` with ``AxisType.Auto`` so
the compiler propagates shardings through model code that carries no annotations.

* batches: the leading (batch) dim is split over ``("data", "fsdp")``; other dims replicated;
* params and optimizer state (rule by shape, so Adam moments follow their params): a leaf with
  ``ndim >= 2`` puts its last dim on ``"tensor"`` (if divisible) and its largest remaining dim on
  ``"fsdp"`` (if divisible); scalars and vectors are replicated. ``"data"`` replicates params.

That is ZeRO-3-style FSDP (arXiv:1910.02054): each device holds ``1/fsdp`` of every matrix and
the compiler inserts the all-gathers / reduce-scatters. The rule is layout-agnostic: it is always
correct (GSPMD keeps the maths), and efficient tensor parallelism needs model-specific specs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Mesh shape. One axis may be ``-1`` (= all devices left over by the others)."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = self.shape
        for name, size in zip(AXES, sizes):
            if isinstance(size, bool) or not isinstance(size, int | np.integer):
                raise TypeError(f"MeshConfig.{name} must be an int, got {size!r}")
            if size == 0 or size < -1:
                raise ValueError(f"MeshConfig.{name} must be >= 1 or -1, got {size}")
        if sizes.count(-1) > 1:
            raise ValueError(f"MeshConfig: at most one axis may be -1, got {sizes}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.data, self.fsdp, self.tensor)

    def resolve(self, n_devices: int) -> tuple[int, int, int]:
        """Concrete axis sizes for ``n_devices`` available devices."""
        known = int(np.prod([s for s in self.shape if s != -1]))
        if -1 in self.shape:
            if n_devices % known:
                raise ValueError(
                    f"MeshConfig {self.shape}: {n_devices} devices not divisible by {known}"
                )
            return tuple(n_devices // known if s == -1 else s for s in self.shape)
        if known > n_devices:
            raise ValueError(
                f"MeshConfig {self.shape} needs {known} devices, only {n_devices} exist"
            )
        return self.shape


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence | None = None) -> jax.sharding.Mesh:
    """A ``("data", "fsdp", "tensor")`` mesh over the first ``data·fsdp·tensor`` devices."""
    devices = list(jax.devices() if devices is None else devices)
    shape = cfg.resolve(len(devices))
    n = int(np.prod(shape))
    return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices[:n])


def param_spec(shape: Sequence[int], mesh: jax.sharding.Mesh) -> P:
    """PartitionSpec for one parameter / optimizer-state leaf of ``shape`` (module rule)."""
    spec: list = [None] * len(shape)
    if len(shape) < 2:
        return P(*spec)
    tensor, fsdp = mesh.shape["tensor"], mesh.shape["fsdp"]
    last = len(shape) - 1
    if tensor > 1 and shape[last] % tensor == 0:
        spec[last] = "tensor"
    candidates = [i for i in range(len(shape)) if spec[i] is None and shape[i] % fsdp == 0]
    if fsdp > 1 and candidates:
        spec[max(candidates, key=lambda i: (shape[i], i))] = "fsdp"
    return P(*spec)


def state_shardings(tree, mesh: jax.sharding.Mesh):
    """``NamedSharding`` for every array leaf of ``tree`` by :func:`param_spec`."""
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), mesh)), tree)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading dim over ``("data", "fsdp")``; a prefix sharding for every batch leaf."""
    return NamedSharding(mesh, P(BATCH_AXES))


def shard_state(tree, mesh: jax.sharding.Mesh):
    """Place a params/optimizer pytree on ``mesh`` by :func:`param_spec`."""
    return jax.device_put(tree, state_shardings(tree, mesh))


def process_rows(global_rows: int, mesh: jax.sharding.Mesh) -> slice:
    """The rows of a ``[global_rows, ...]`` batch that live on this process's devices.

    Read from the batch sharding itself (so it holds whatever order the mesh puts the devices
    in); they form one contiguous block per process for a ``("data", "fsdp")`` split.
    """
    idx = batch_sharding(mesh).addressable_devices_indices_map((global_rows,))
    starts = [s[0].start or 0 for s in idx.values()]
    stops = [global_rows if s[0].stop is None else s[0].stop for s in idx.values()]
    lo, hi = min(starts), max(stops)
    covered = sorted(set(zip(starts, stops)))
    if sum(b - a for a, b in covered) != hi - lo:
        raise ValueError(f"this process's batch rows are not contiguous: {covered}")
    return slice(lo, hi)


def shard_batch(batch, mesh: jax.sharding.Mesh, *, local: bool = False):
    """Place a host batch (dict of ``[B, ...]`` arrays) with the batch dim over data+fsdp.

    By default ``batch`` is the *global* batch, the same on every process (deterministic data
    iterators); with several processes each keeps only its own rows (:func:`process_rows`).
    With ``local=True`` each process passes just its rows (``B / process_count`` of them).
    """
    n = mesh.shape["data"] * mesh.shape["fsdp"]
    sharding = batch_sharding(mesh)
    nproc = jax.process_count()
    for k, v in batch.items():
        rows = np.shape(v)[0] * (nproc if local else 1)
        if rows % n:
            raise ValueError(
                f"batch[{k!r}] has {rows} global rows, not divisible by data*fsdp = {n}"
            )
    if nproc == 1:
        return jax.device_put(batch, sharding)
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        rows = v.shape[0] * (nproc if local else 1)
        if not local:
            v = v[process_rows(rows, mesh)]
        out[k] = jax.make_array_from_process_local_data(sharding, v, (rows,) + v.shape[1:])
    return out


def jit_train_step(
    step_fn: Callable, mesh: jax.sharding.Mesh, state, *, donate: bool = True
) -> Callable:
    """``jax.jit(step_fn)`` for ``step_fn(state, batch) -> (state, metrics)`` on ``mesh``.

    ``state`` (or an abstract version) fixes the state shardings; the state argument is donated
    so the update happens in place; metrics come back replicated.
    """
    s_sh = state_shardings(state, mesh)
    return jax.jit(
        step_fn,
        in_shardings=(s_sh, batch_sharding(mesh)),
        out_shardings=(s_sh, replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )
