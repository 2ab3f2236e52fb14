"""``"fused"``: one ``jax.lax.scan`` over time that updates every layer in each step.

This is the Keras/Haiku schedule (a stacked cell): at step t layer 0 reads x_t, layer l
reads layer l-1's fresh output, so the L updates inside a step depend on each other and
the sequential depth stays L*T. Only layer 0's input projection can be hoisted; the
projections of layers 1..L-1 run inside the loop. Kept as the baseline that "scan" (one
scan per layer, every projection hoisted) and "wavefront" are measured against.
"""

from __future__ import annotations

import jax

from stackrnn_jax.strategies.common import masked_step
from stackrnn_jax.strategies.registry import register


def run_stack(cell, layers, xs, mask, carries, between, *, unroll=1):
    """One scan over ``xs (time, batch, features)`` carrying all L layer states."""
    mask = None if mask is None else mask[..., None]

    def body(carries, inputs):
        xw0_t, m_t, between_t = inputs
        carries = list(carries)
        carries[0], h = masked_step(cell, layers[0], carries[0], xw0_t, m_t)
        for index in range(1, len(layers)):
            if between_t[index - 1] is not None:
                h = h * between_t[index - 1]
            # The input term of an upper layer needs this step's output of the layer below.
            xw_t = cell.project(layers[index], h)
            carries[index], h = masked_step(cell, layers[index], carries[index], xw_t, m_t)
        return tuple(carries), h

    xw0 = cell.project(layers[0], xs)
    finals, ys = jax.lax.scan(body, tuple(carries), (xw0, mask, list(between)), unroll=unroll)
    return ys, list(finals)


register("fused", run_stack)
