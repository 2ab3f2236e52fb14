"""Resumable training checkpoints: the whole train state plus where the loop stood.

A checkpoint is one orbax ``CheckpointManager`` step under ``<workdir>/train_state``,
indexed by the global step, holding two items:

* ``state``: the pytree of ``nnx.split((model, optimizer))[1]`` — parameters, optimizer
  state (with its step count, so the learning-rate schedule resumes), dropout RNG keys
  and counters — as plain arrays (RNG keys as their raw key data);
* ``position`` (JSON): the next epoch and batch to run, the current epoch's running
  metric sums, the history so far, and the config fields that define the model, so a
  checkpoint from another config is refused instead of silently loaded.

orbax writes each step into a temporary folder and renames it when complete, so a kill
at any moment leaves the previous steps intact; the latest ``keep`` steps are kept. A
step that fails to load (truncated or corrupted files) is skipped with a warning in
favour of the one before it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from stackrnn_jax.run_dir import TRAIN_STATE, first_line, with_defaults


class CheckpointError(ValueError):
    """No usable checkpoint, or one from another config; one line for the user."""


def _to_savable(state: nnx.State) -> dict:
    """``state`` as a nested dict of plain arrays (typed PRNG keys -> their uint32 data)."""
    return jax.tree.map(lambda a: jax.random.key_data(a) if _is_key(a) else a,
                        nnx.to_pure_dict(state))


def _from_savable(template: nnx.State, pure: dict) -> nnx.State:
    """Inverse of ``_to_savable``, shaped like ``template``."""
    keyed = jax.tree.map(lambda t, a: jax.random.wrap_key_data(a, impl=jax.random.key_impl(t))
                         if _is_key(t) else a, nnx.to_pure_dict(template), pure)
    restored = jax.tree.map(lambda a: a, template)  # a copy: replace_by_pure_dict mutates
    nnx.replace_by_pure_dict(restored, keyed)
    return restored


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jax.dtypes.prng_key)


class TrainCheckpoints:
    """The resumable checkpoints of one work directory.

    Args:
      workdir: the run's directory.
      keep: how many of the latest steps to keep.
      identity: the config fields a checkpoint must match to be resumed (a plain dict).
    """

    def __init__(self, workdir: str | Path, *, keep: int, identity: dict[str, Any]):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = (Path(workdir) / TRAIN_STATE).absolute()
        self.identity = identity
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Global steps of the checkpoints on disk, oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: nnx.State, position: dict[str, Any]) -> None:
        """Write checkpoint ``step`` (blocking; atomic: complete or absent)."""
        args = self._ocp.args
        self._manager.save(step, args=args.Composite(
            state=args.StandardSave(_to_savable(state)),
            position=args.JsonSave({**position, "identity": self.identity})), force=True)
        self._manager.wait_until_finished()

    def restore_latest(self, template: nnx.State) -> tuple[nnx.State, dict[str, Any]] | None:
        """``(state, position)`` of the newest loadable checkpoint, or None if there is none.

        ``template`` gives the tree, shapes, dtypes and shardings. A checkpoint of another
        config raises ``CheckpointError``; an unreadable one is skipped with a warning.
        """
        args = self._ocp.args
        abstract = jax.tree.map(_abstract, _to_savable(template))
        for step in reversed(self.steps()):
            try:
                restored = self._manager.restore(step, args=args.Composite(
                    state=args.StandardRestore(abstract), position=args.JsonRestore()))
                position = dict(restored["position"])
            except Exception as error:  # noqa: BLE001 - any failure to read means a damaged step
                warnings.warn(f"checkpoint step {step} in {self.directory} is unreadable "
                              f"({type(error).__name__}: {first_line(error)}); "
                              "falling back to the previous one", stacklevel=2)
                continue
            recorded = with_defaults(position.get("identity"))
            if recorded != self.identity:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} was written by another config "
                    f"({_identity_diff(recorded, self.identity)}); pass "
                    "--overwrite to start a new run, or choose another --workdir")
            return _from_savable(template, restored["state"]), position
        return None

    def close(self) -> None:
        self._manager.close()


def _abstract(a) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None))


def _identity_diff(old: Any, new: dict[str, Any]) -> str:
    if not isinstance(old, dict):
        return "no config recorded"
    names = sorted(set(old) | set(new))
    return ", ".join(f"{n}: {old.get(n)!r} -> {new.get(n)!r}" for n in names
                     if old.get(n) != new.get(n))
