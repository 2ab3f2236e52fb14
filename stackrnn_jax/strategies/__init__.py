"""Execution strategies: how the timesteps of a stack run. All give the same numbers.

See ``common.py`` for the contract every strategy follows.
"""

from __future__ import annotations

from stackrnn_jax.strategies import (auto, cpu_native, fused, loop, pallas, parallel, scan,
                                     scan_vjp, wavefront)

STRATEGIES = {
    "scan": scan.run_stack,
    "loop": loop.run_stack,
    "fused": fused.run_stack,
    "wavefront": wavefront.run_stack,
    "scan_vjp": scan_vjp.run_stack,
    "scan_vjp_remat": scan_vjp.run_stack_remat,
    "cpu_native": cpu_native.run_stack,
    "pallas": pallas.run_stack,
    "parallel": parallel.run_stack,
    "parallel_quasi": parallel.run_stack_quasi,
    "auto": auto.run_stack,
}


def get_strategy(name: str):
    """The ``run_stack`` function of strategy ``name``; ValueError if unknown."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy: unknown strategy {name!r}; expected one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]
