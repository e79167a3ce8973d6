"""Multi-process (multi-host) start-up: ``jax.distributed`` from flags or the environment.

One Python process per host (TPU VM worker, GPU node, or several on one machine for tests);
every process runs the *same* script with the same arguments. After :func:`initialize`,
``jax.devices()`` lists the devices of all processes, so ``entropylab.parallel.make_mesh``
builds a mesh that spans them, the jitted train step runs SPMD over it, and Orbax
checkpoints are written cooperatively by all processes (each writes its own shards; process 0
the metadata) and can be restored on any other process count or mesh.

Data: every process builds the same global batch (the data iterators are deterministic in
``(seed, position)``) and :func:`entropylab.parallel.shard_batch` keeps only the rows that live
on the process's devices (:func:`entropylab.parallel.process_rows`), so no process ever needs
another's data and a run restarted on a different process count sees the same global batches.
Only process 0 writes metrics files, manifests and plots.

Settings, first match wins (flags > ``ENTROPYLAB_*`` > JAX's own variables):

===================  ============================  ===================================
argument             environment                   meaning
===================  ============================  ===================================
``coordinator``      ``ENTROPYLAB_COORDINATOR``    ``host:port`` of process 0
                     (``JAX_COORDINATOR_ADDRESS``)
``num_processes``    ``ENTROPYLAB_NUM_PROCESSES``  total number of processes
``process_id``       ``ENTROPYLAB_PROCESS_ID``     this process, 0 … num_processes − 1
``local_devices``    ``ENTROPYLAB_LOCAL_DEVICES``  comma-separated local device ids (optional)
===================  ============================  ===================================

With none of them set, :func:`initialize` does nothing (single process). ``auto=True`` calls
``jax.distributed.initialize()`` with no arguments, which detects Cloud TPU pod slices, SLURM
and Open MPI launches by itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import jax

ENV = {
    "coordinator": ("ENTROPYLAB_COORDINATOR", "JAX_COORDINATOR_ADDRESS"),
    "num_processes": ("ENTROPYLAB_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
    "process_id": ("ENTROPYLAB_PROCESS_ID", "JAX_PROCESS_ID"),
    "local_devices": ("ENTROPYLAB_LOCAL_DEVICES",),
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_devices: tuple[int, ...] | None = None
    auto: bool = False

    def __post_init__(self):
        given = [self.coordinator, self.num_processes, self.process_id]
        if self.auto and any(v is not None for v in given):
            raise ValueError("auto=True detects the cluster itself; pass no other setting")
        if any(v is not None for v in given) and not all(v is not None for v in given):
            raise ValueError(
                "coordinator, num_processes and process_id must be given together "
                f"(got coordinator={self.coordinator!r}, num_processes={self.num_processes!r}, "
                f"process_id={self.process_id!r})"
            )
        if self.coordinator is not None:
            host, sep, port = self.coordinator.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"coordinator must be 'host:port', got {self.coordinator!r}")
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        if self.process_id is not None and not 0 <= self.process_id < self.num_processes:
            raise ValueError(
                f"process_id must be in [0, num_processes={self.num_processes}), "
                f"got {self.process_id}"
            )

    @property
    def enabled(self) -> bool:
        return self.auto or self.coordinator is not None

    @classmethod
    def from_env(cls, env=None, **overrides) -> DistributedConfig:
        """Settings from ``env`` (default ``os.environ``); non-None ``overrides`` win."""
        env = os.environ if env is None else env
        vals: dict = {}
        for key, names in ENV.items():
            for name in names:
                if env.get(name):
                    vals[key] = env[name]
                    break
        for key, v in overrides.items():
            if v is not None:
                vals[key] = v
        for key in ("num_processes", "process_id"):
            if key in vals:
                try:
                    vals[key] = int(vals[key])
                except ValueError:
                    raise ValueError(f"{key} must be an integer, got {vals[key]!r}") from None
        if isinstance(vals.get("local_devices"), str):
            vals["local_devices"] = tuple(int(x) for x in vals["local_devices"].split(","))
        return cls(**vals)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--coordinator``, ``--num-processes``, ``--process-id`` (and ``--distributed-auto``)."""
    g = parser.add_argument_group("multi-host (see TPU_SETUP.md)")
    g.add_argument("--coordinator", default=None, help="host:port of process 0")
    g.add_argument("--num-processes", type=int, default=None, help="total processes")
    g.add_argument("--process-id", type=int, default=None, help="this process's index")
    g.add_argument(
        "--distributed-auto",
        action="store_true",
        help="let jax.distributed detect the cluster (Cloud TPU pod slices, SLURM, Open MPI)",
    )


def config_from_args(args) -> DistributedConfig:
    if getattr(args, "distributed_auto", False):
        return DistributedConfig(auto=True)
    return DistributedConfig.from_env(
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )


def initialize(cfg: DistributedConfig | None = None) -> DistributedConfig:
    """Start ``jax.distributed`` for ``cfg`` (default: from the environment); no-op if unset.

    Must run before anything touches a JAX device. Returns the config used.
    """
    cfg = DistributedConfig.from_env() if cfg is None else cfg
    if not cfg.enabled:
        return cfg
    if cfg.auto:
        jax.distributed.initialize()
        return cfg
    jax.distributed.initialize(
        coordinator_address=cfg.coordinator,
        num_processes=cfg.num_processes,
        process_id=cfg.process_id,
        local_device_ids=list(cfg.local_devices) if cfg.local_devices is not None else None,
    )
    return cfg


def is_main_process() -> bool:
    """True on process 0 (the one that writes metrics, manifests and plots)."""
    return jax.process_index() == 0
