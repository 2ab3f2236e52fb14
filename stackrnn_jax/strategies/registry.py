"""The strategy registry: names a user can pick, each bound to a ``run_stack`` function.

Every strategy module calls ``register(name, run_stack)`` once at import;
``strategies/__init__.py`` imports them all, so importing the package fills the registry.
Code outside the package (the benchmark-only strategies in ``bench/strategies.py``) uses
the same ``register`` / ``unregister``.
"""

from __future__ import annotations

import inspect
from typing import Protocol, Sequence

import jax


class RunStack(Protocol):
    """What a strategy is: run every layer of one direction over all timesteps.

    Args:
      cell: a ``cells.Cell``.
      layers: L parameter dicts (Keras layout), one direction.
      xs: ``(time, batch, features)``, the time-major input of the first layer.
      mask: ``(time, batch)`` bool, True where a step is real, or None (all real).
      carries: L initial carries, each a tuple of ``(batch, units_l)`` arrays.
      between: L-1 multipliers of the inputs of layers 1..L-1 (dropout, already
        scaled), each ``(time, batch, units)`` or None.
      unroll: timesteps per loop iteration, for strategies that loop (others ignore it).
      sequences: (only strategies whose signature has it; ``takes_sequences``) False when
        the caller reads only ``finals``: the strategy may then skip writing the top
        layer's outputs and return ``ys`` None.
    Returns:
      ``(ys, finals)``: ``ys (time, batch, units_top)`` the top layer's outputs, zero at
      masked steps; ``finals`` the L final carries (each sequence's state after its last
      real step). Masked steps hold the carry, so right- and left-padded sequences end
      in the state of the unpadded sequence.
    """

    def __call__(self, cell, layers: Sequence[dict], xs: jax.Array, mask: jax.Array | None,
                 carries: Sequence[tuple], between: Sequence[jax.Array | None], *,
                 unroll: int = 1) -> tuple[jax.Array, list[tuple]]: ...


STRATEGIES: dict[str, RunStack] = {}


def register(name: str, run_stack: RunStack) -> RunStack:
    """Add strategy ``name``; ValueError if the name is taken. Returns ``run_stack``."""
    if name in STRATEGIES:
        raise ValueError(f"strategy: {name!r} is already registered")
    STRATEGIES[name] = run_stack
    return run_stack


def unregister(name: str) -> None:
    """Remove strategy ``name`` (a no-op when it is not registered)."""
    STRATEGIES.pop(name, None)


def takes_sequences(run_stack) -> bool:
    """Whether ``run_stack`` accepts the ``sequences`` keyword (see ``RunStack``)."""
    try:
        return "sequences" in inspect.signature(run_stack).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False


def get_strategy(name: str) -> RunStack:
    """The ``run_stack`` function of strategy ``name``; ValueError if unknown."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy: unknown strategy {name!r}; "
                         f"expected one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]
