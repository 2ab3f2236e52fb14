"""Execution strategies: how the timesteps of a stack run. All give the same numbers.

See ``common.py`` for the contract every strategy follows.
"""

from __future__ import annotations

from stackrnn_jax.strategies import loop, scan

STRATEGIES = {
    "scan": scan.run_stack,
    "loop": loop.run_stack,
}


def get_strategy(name: str):
    """The ``run_stack`` function of strategy ``name``; ValueError if unknown."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy: unknown strategy {name!r}; expected one of {sorted(STRATEGIES)}")
    return STRATEGIES[name]
