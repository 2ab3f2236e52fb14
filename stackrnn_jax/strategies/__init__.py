"""Execution strategies: how the timesteps of a stack run. All compute the same function:
their results agree to 1e-10 in float64 and to ~1e-5 in float32, where summation order and
fused loops round differently (so float32 training runs drift apart over many steps).

Each module here is one strategy a user can pick (``strategy=`` of ``stacked_rnn``); it
registers itself in ``registry.STRATEGIES`` when imported, and the contract it follows
is ``registry.RunStack``. ``common.py`` holds the pieces they share; building blocks that
are not strategies live in ``stackrnn_jax/ops``.
"""

from __future__ import annotations

# Imported for their registration; the order is the registry's (and the benchmarks') order.
from stackrnn_jax.strategies import (  # noqa: F401
    auto,
    cpu_native,
    fused,
    loop,
    pallas,
    parallel,
    scan,
    scan_vjp,
    wavefront,
)
from stackrnn_jax.strategies.registry import STRATEGIES, get_strategy, register, unregister

__all__ = ["STRATEGIES", "get_strategy", "register", "unregister"]
