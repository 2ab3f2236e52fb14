"""``"loop"``: a Python for-loop over time, traced inside ``jit`` (fully unrolled).

Compile time grows linearly with the sequence length; kept as the textbook baseline.
"""

from __future__ import annotations

import jax.numpy as jnp

from stackrnn_jax.strategies.common import layer_by_layer, masked_step
from stackrnn_jax.strategies.registry import register


def _run_layer(cell, params, xw, mask, carry, *, unroll=1):
    """Unrolled loop over ``xw (time, batch, gates*units)``; ``unroll`` is ignored."""
    # Unstack once: slicing xw[t] inside the loop makes each slice's transpose a pad to
    # the full (time, batch, gates*units) array, an O(T^2) backward pass.
    xw_steps = jnp.unstack(xw)
    mask_steps = [None] * len(xw_steps) if mask is None else jnp.unstack(mask)
    outputs = []
    for xw_t, m_t in zip(xw_steps, mask_steps):
        carry, h = masked_step(cell, params, carry, xw_t, m_t)
        outputs.append(h)
    return jnp.stack(outputs), carry


run_stack = register("loop", layer_by_layer(_run_layer))
