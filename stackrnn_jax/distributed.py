"""Data parallelism over every device of every process, on JAX's own runtime.

One code path for 1 device, many local devices and many hosts: a 1-D mesh with axis
``"data"`` over ``jax.devices()``, the batch axis sharded over it, the train state
replicated. XLA inserts the gradient all-reduce; nothing here is device-count specific.

Multi-host: ``initialize()`` calls ``jax.distributed.initialize`` when asked to (a flag,
or the ``JAX_COORDINATOR_ADDRESS`` variable that JAX itself reads); every process then
runs the same program, builds the same global batch order from the seed and feeds only
its own rows of each batch (``global_batch``). Process 0 alone writes logs and files.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from stackrnn_jax.data.batches import DATA_AXIS


def initialize(enabled: bool = False, *, coordinator: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> bool:
    """Join a multi-process run if asked; returns whether one was joined.

    Asked means ``enabled`` (TPU pods, SLURM and other clusters JAX detects on its own),
    an explicit ``coordinator``, or ``JAX_COORDINATOR_ADDRESS`` in the environment;
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` stand in for the two counts.
    Must run before anything touches a device.
    """
    if not (enabled or coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        if num_processes is not None or process_id is not None:
            raise ValueError("--num-processes and --process-id need --coordinator HOST:PORT "
                             "(or --distributed on a cluster JAX detects by itself)")
        return False
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = int(os.environ["JAX_NUM_PROCESSES"])
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = int(os.environ["JAX_PROCESS_ID"])
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    except (RuntimeError, ValueError) as error:  # JAX's own, possibly many lines
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"jax.distributed.initialize failed: {first}") from error
    return True


def is_writer() -> bool:
    """Only process 0 writes logs, plots and run files (checkpoints are collective)."""
    return jax.process_index() == 0


class DataParallel:
    """A data-parallel layout for global batches of ``batch_size`` rows.

    Raises:
      ValueError: if ``batch_size`` does not divide evenly over the devices.
    """

    def __init__(self, batch_size: int, devices=None):
        devices = list(devices if devices is not None else jax.devices())
        if batch_size % len(devices):
            raise ValueError(
                f"batch_size {batch_size} does not divide evenly over the {len(devices)} devices "
                f"({jax.process_count()} process(es)); choose a multiple of {len(devices)}")
        self.batch_size = batch_size
        self.devices = len(devices)
        self.mesh = jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())
        self._rows = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self._process_rows = batch_size // jax.process_count()

    def replicate(self, tree):
        """Place every array of ``tree`` on every device (params, optimizer state, totals).

        Every process holds the same values (same seed, or the same checkpoint); with
        several processes each one supplies the copies on its own devices.
        """
        if jax.process_count() == 1:
            return jax.device_put(tree, self.replicated)
        return jax.tree.map(self._replicate_across_processes, tree)

    def _replicate_across_processes(self, leaf):
        is_key = jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        host = np.asarray(jax.random.key_data(leaf) if is_key else leaf)
        array = jax.make_array_from_callback(host.shape, self.replicated, lambda index: host[index])
        return jax.random.wrap_key_data(array, impl=jax.random.key_impl(leaf)) if is_key else array

    def global_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """The global batch as arrays sharded over ``"data"``, from this process's rows.

        ``batch`` holds the whole global batch (every process builds the same one); each
        process contributes only its contiguous block of ``batch_size / processes`` rows.
        """
        start = jax.process_index() * self._process_rows
        return {name: jax.make_array_from_process_local_data(
                    self._rows, np.ascontiguousarray(value[start:start + self._process_rows]),
                    value.shape)
                for name, value in batch.items()}
