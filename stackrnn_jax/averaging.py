"""Weight averaging: an exponential moving average of the weights, kept by the optimizer.

The average rides in the optimizer's state (the last transform of its chain), so
checkpoints hold it and a resumed run continues it exactly. It starts at zero and is
read debiased, ``average / (1 - decay ** steps)``, as Adam debiases its moments, so the
random initial weights carry no weight in it (a plain average started at the initial
weights would still hold ``decay ** steps`` of them: a third after 1,000 steps at 0.999).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx


class AverageState(NamedTuple):
    """``steps``: float32 scalar, updates averaged; ``average``: the weights' tree, undebiased.

    ``steps`` is a float so that a skipped (non-finite) step reverts it with the average
    (train.make_train_step keeps the old value of every inexact leaf on such a step)."""

    steps: jax.Array
    average: optax.Params


def track_average(decay: float) -> optax.GradientTransformation:
    """Passes the updates through unchanged; keeps the moving average of the updated weights."""

    def init(params):
        return AverageState(jnp.zeros([], jnp.float32), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params):
        updated = optax.apply_updates(params, updates)
        average = optax.incremental_update(updated, state.average, 1.0 - decay)
        return updates, AverageState(state.steps + 1.0, average)

    return optax.GradientTransformation(init, update)


def averaged_model_state(state, decay: float):
    """The model's state with its parameters replaced by their debiased moving average.

    ``state``: ``nnx.split((model, optimizer))[1]`` of an optimizer whose chain ends with
    ``track_average(decay)``. Before the first update the parameters are returned as they are.
    """
    model_state, optimizer_state = state[0], state[1]
    chain = optimizer_state["opt_state"]  # nnx holds the chain's tuple as a State keyed 0..n-1
    tracked = chain[max(chain.keys())]
    (steps,) = jax.tree.leaves(tracked.steps)
    params = nnx.filter_state(model_state, nnx.Param)
    averages = jax.tree.leaves(tracked.average)
    current = jax.tree.leaves(params)
    if [a.shape for a in averages] != [p.shape for p in current]:
        raise ValueError("averaged_model_state: the optimizer's average does not match the "
                         "model's parameters")
    correction = 1.0 - decay ** steps
    debiased = [jnp.where(steps > 0, a / jnp.maximum(correction, 1e-30), p)
                for a, p in zip(averages, current, strict=True)]
    return nnx.merge_state(model_state, jax.tree.unflatten(jax.tree.structure(params), debiased))
