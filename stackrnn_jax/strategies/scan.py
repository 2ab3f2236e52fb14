"""``"scan"``: one ``jax.lax.scan`` over time per layer, input projection hoisted."""

from __future__ import annotations

import jax

from stackrnn_jax.strategies.common import layer_by_layer, masked_step
from stackrnn_jax.strategies.registry import register


def _run_layer(cell, params, xw, mask, carry, *, unroll=1):
    """Scan ``cell.step`` over ``xw (time, batch, gates*units)``, ``unroll`` steps per loop
    iteration."""

    def body(carry, inputs):
        xw_t, m_t = inputs
        return masked_step(cell, params, carry, xw_t, m_t)

    carry, ys = jax.lax.scan(body, carry, (xw, mask), unroll=unroll)
    return ys, carry


run_stack = register("scan", layer_by_layer(_run_layer))
