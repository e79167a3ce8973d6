"""Orbax checkpoints of the full training state: params, optimizer state, step, RNG, data position.

Layout: ``<dir>/<step>/state`` (an Orbax ``StandardSave`` of the array pytree: params, optimizer
state, step counter, RNG key data) and ``<dir>/<step>/meta`` (JSON: data-iterator state, user
metadata). Orbax writes each step into a temporary folder and renames it when complete, so a
crash never leaves a half-written step that :meth:`Checkpointer.latest_step` would pick.

Restore goes into an *abstract* target (``jax.ShapeDtypeStruct`` leaves, optionally with
shardings), so a checkpoint can be restored onto a different mesh. A missing folder or step
raises ``FileNotFoundError``; a corrupt or mismatched checkpoint raises ``ValueError`` naming
the path.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp


def abstract_like(tree, shardings=None):
    """``jax.ShapeDtypeStruct`` leaves for ``tree`` (with the given or the leaves' shardings)."""
    if shardings is None:
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
            tree,
        )
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


class Checkpointer:
    """Save every ``save_every`` steps, keep the newest ``keep``, restore the latest.

    Args:
      directory: checkpoint root (created on first save).
      save_every: :meth:`maybe_save` saves when ``step % save_every == 0`` (0 = never).
      keep: how many newest checkpoints to keep (``None`` = all).
    """

    def __init__(self, directory, *, save_every: int = 0, keep: int | None = 3):
        if save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {save_every}")
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 or None, got {keep}")
        self.directory = Path(directory).absolute()
        self.save_every = save_every
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def save(self, step: int, state, *, data_state: dict | None = None, meta: dict | None = None):
        """Save ``state`` (a pytree of arrays) and JSON metadata at ``step``; blocks until done."""
        payload = {"step": int(step), "data": data_state or {}, "meta": meta or {}}
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(payload)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def maybe_save(self, step: int, state, **kw) -> bool:
        """Save if ``save_every`` divides ``step``; returns whether it saved."""
        if self.save_every and step % self.save_every == 0:
            self.save(step, state, **kw)
            return True
        return False

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def restore(self, abstract_state, step: int | None = None):
        """Restore ``(state, meta)`` at ``step`` (default: latest) into ``abstract_state``.

        ``meta`` is ``{"step": int, "data": dict, "meta": dict}``.
        """
        if not self.directory.is_dir():
            raise FileNotFoundError(f"checkpoint folder {self.directory} does not exist")
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
            step = steps[-1]
        elif step not in steps:
            raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} ({steps})")
        path = self.directory / str(step)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:  # noqa: BLE001 - orbax raises many types; re-raise one clear one
            raise ValueError(
                f"checkpoint {path} is corrupt or does not match the model: {e}"
            ) from e
        state, meta = restored["state"], restored["meta"]
        if not isinstance(meta, dict) or meta.get("step") != step:
            raise ValueError(f"checkpoint {path} has invalid metadata: {meta!r}")
        _check_structure(abstract_state, state, path)
        return state, meta

    def delete_after(self, step: int) -> list[int]:
        """Delete the checkpoints newer than ``step`` (a resume from an older one); returns them."""
        newer = [s for s in self.all_steps() if s > step]
        for s in newer:
            self._manager.delete(s)
        return newer

    def close(self) -> None:
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _check_structure(expected, got, path: os.PathLike) -> None:
    exp_leaves, exp_def = jax.tree.flatten(expected)
    got_leaves, got_def = jax.tree.flatten(got)
    if exp_def != got_def:
        raise ValueError(f"checkpoint {path} has a different tree structure than the target")
    for e, g in zip(exp_leaves, got_leaves):
        if tuple(e.shape) != tuple(g.shape) or e.dtype != g.dtype:
            raise ValueError(
                f"checkpoint {path} holds {g.dtype}{tuple(g.shape)} where the target has "
                f"{e.dtype}{tuple(e.shape)}"
            )
