"""Pieces shared by the execution strategies: the masked step and layer-by-layer stacking.

The contract every strategy follows is ``registry.RunStack``. Masking holds the carry
through a masked step and emits zeros there, so right- and left-padded sequences both end
in the state of the unpadded sequence.
"""

from __future__ import annotations

import jax.numpy as jnp


def masked_step(cell, params, carry, xw_t, m_t):
    """One step; ``m_t (batch, 1)`` bool or None. Returns ``(carry, h_out)``."""
    new = cell.step(params, carry, xw_t)
    if m_t is None:
        return new, new[0]
    new = tuple(jnp.where(m_t, n, o) for n, o in zip(new, carry))
    return new, jnp.where(m_t, new[0], jnp.zeros_like(new[0]))


def layer_by_layer(run_layer, *, projected: bool = True, final_only: bool = False):
    """Make a whole-stack strategy from a one-layer runner.

    ``run_layer(cell, params, xw, mask, carry, *, unroll) -> (ys, carry)`` gets the
    hoisted input projection ``xw (time, batch, gates*units)`` of its layer, or with
    ``projected=False`` the layer's input ``xs (time, batch, features)`` itself (a runner
    that forms the projection, and its gradient, on its own). ``final_only``: run_layer
    also takes ``sequences=False`` for the top layer when the caller reads only its
    final carry (the stack's ``sequences=False``); it may then return ys None.
    """

    def run_stack(cell, layers, xs, mask, carries, between, *, unroll=1, sequences=True):
        mask = None if mask is None else mask[..., None]
        finals = []
        for index, params in enumerate(layers):
            if index > 0 and between[index - 1] is not None:
                xs = xs * between[index - 1]
            # The input term for every timestep in one matmul, outside the time loop.
            inputs = cell.project(params, xs) if projected else xs
            top_unread = final_only and not sequences and index == len(layers) - 1
            extra = {"sequences": False} if top_unread else {}
            xs, carry = run_layer(cell, params, inputs, mask, carries[index], unroll=unroll,
                                  **extra)
            finals.append(carry)
        return xs, finals

    run_stack.__doc__ = run_layer.__doc__
    return run_stack
