"""Will a training run fit in memory? Checked before the first step, not found out by a crash.

Two checks, both against the memory the device has free now (``available_bytes``):

* ``check_config``, before anything is allocated: an estimate from the config alone
  (``estimate_bytes``: parameters, their gradients and Adam's two moments, plus the
  activations the backward pass keeps; temporaries left out, so it errs low). It refuses
  ``--units 100000000`` in milliseconds instead of letting the kernel's OOM killer end
  the process (and others) minutes later.
* ``check_compiled``, once the train step is compiled: XLA's own figure for the step's
  arguments, outputs and temporaries (``Compiled.memory_analysis()``).

Both raise ``OutOfMemory`` (a ValueError: one ``error:`` line in the CLI).
"""

from __future__ import annotations

from pathlib import Path

import jax

from stackrnn_jax.config import TrainConfig

FLOAT_BYTES = 4  # parameters and optimizer state are float32; activations too unless bfloat16
GATES = {"simple": 1, "gru": 3, "lstm": 4}
MEMINFO = Path("/proc/meminfo")


class OutOfMemory(ValueError):
    """The run would not fit in the memory free on its device; one line for the user."""


def parameter_count(config: TrainConfig) -> int:
    """Parameters of the classifier ``config`` describes (embedding, RNN layers, head;
    each member's, for an ensemble)."""
    gates, directions, units = GATES[config.cell], 1 + config.bidirectional, config.units
    count, width = config.num_words * config.embed_dim, config.embed_dim
    for _ in range(config.layers):
        bias_rows = 2 if config.cell == "gru" else 1  # the GRU's reset_after bias: (2, 3u)
        count += directions * gates * units * (width + units + bias_rows)
        width = directions * units
    return config.members * (count + width + 1)


def estimate_bytes(config: TrainConfig) -> int:
    """A train step's memory, estimated low: every parameter four times (value,
    gradient, Adam's two moments) and, per example and timestep, the embedding and
    each layer's input projection and output (kept for the backward pass), per member."""
    directions = 1 + config.bidirectional
    per_layer = directions * config.units * (GATES[config.cell] + 1)  # projection and output
    per_step = config.embed_dim + config.layers * per_layer
    activations = config.members * config.batch_size * config.maxlen * per_step
    activation_bytes = 2 if config.dtype == "bfloat16" else FLOAT_BYTES
    return FLOAT_BYTES * 4 * parameter_count(config) + activation_bytes * activations


def available_bytes(device: jax.Device | None = None) -> int | None:
    """Bytes free now on ``device`` (default: the first local one); None if unknown.

    An accelerator reports its allocator's limit and use (``memory_stats``); on the CPU
    it is the kernel's ``MemAvailable`` (free plus reclaimable page cache).
    """
    device = device or jax.local_devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the file counts kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_config(config: TrainConfig) -> None:
    """Refuse a config whose (low) estimate already exceeds the free memory."""
    needed, free = estimate_bytes(config), available_bytes()
    if free is not None and needed > free:
        raise OutOfMemory(
            f"this model needs at least {_size(needed)} to train ({parameter_count(config):,} "
            f"parameters, batch {config.batch_size} x {config.maxlen} steps) but {_size(free)} is "
            "available; lower --units, --layers, --embed-dim, --num-words, --batch-size or "
            "--maxlen")


def check_compiled(compiled: jax.stages.Compiled, config: TrainConfig) -> None:
    """Refuse a compiled train step that needs more than the free memory (XLA's estimate)."""
    stats = compiled.memory_analysis()
    if stats is None:  # not every backend reports it
        return
    needed = (stats.argument_size_in_bytes + stats.output_size_in_bytes
              - stats.alias_size_in_bytes + stats.temp_size_in_bytes)
    # The arguments (the train state) are allocated already: only the rest must still fit.
    free = available_bytes()
    if free is not None and needed - stats.argument_size_in_bytes > free:
        raise OutOfMemory(
            f"the compiled train step needs {_size(needed)} (XLA's memory analysis) but "
            f"{_size(free)} is available; lower --batch-size or --maxlen (batch "
            f"{config.batch_size} x {config.maxlen} steps), or --units")


def _size(count: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
