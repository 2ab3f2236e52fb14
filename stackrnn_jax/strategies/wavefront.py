"""``"wavefront"``: one scan of T + L - 1 steps in which all L layers advance together.

At step s layer l computes its timestep t = s - l. Its input, layer l-1's output at t,
was produced one step earlier and sits in the carry, so the L updates of a step are
independent and run batched over a leading layer axis: one batched input projection
for layers 1..L-1 and one batched recurrent update (``vmap`` of ``cell.step``) for all
layers. The sequential depth drops from L*T to T + L - 1 loop iterations.

Layers of different widths are zero-padded to the widest, gate block by gate block.
The padding is exact: a padded unit has zero pre-activation and zero state, so every
cell keeps it at zero (tanh(0) = relu(0) = 0, c = f*0 + i*act(0) = 0, h = z*0 + (1-z)*0),
and the zero rows of the padded kernels keep it out of the real units.

The skew is a per-layer mask: layer l is masked (its carry held, its output zero) at
steps s < l and s >= T + l, and at the padded timesteps of the user mask, so each
layer's final carry is the carry after its own last real step. Dropout multipliers
are skewed the same way: layer l at step s uses ``between[l-1][s - l]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stackrnn_jax.strategies.common import masked_step
from stackrnn_jax.strategies.registry import register


def run_stack(cell, layers, xs, mask, carries, between, *, unroll=1):
    """Wavefront over ``xs (time, batch, features)``; ``unroll`` wavefront steps per iteration."""
    depth, time = len(layers), xs.shape[0]
    units = [layer["recurrent_kernel"].shape[0] for layer in layers]
    width = max(units)

    def gates(a, n):
        return _pad_gates(a, cell.gates, n, width)

    # Stacked (layer-major) parameters, every layer padded to `width` units.
    recurrent = {
        "recurrent_kernel": jnp.stack([gates(_pad_axis(p["recurrent_kernel"], 0, width), n)
                                       for p, n in zip(layers, units)]),
        "bias": jnp.stack([gates(p["bias"], n) for p, n in zip(layers, units)]),
    }
    upper = {  # the input projections of layers 1..L-1, whose inputs are `width` wide
        "kernel": jnp.stack([gates(_pad_axis(p["kernel"], 0, width), n)
                             for p, n in zip(layers[1:], units[1:])]),
        "bias": recurrent["bias"][1:],
    } if depth > 1 else None
    # Layer 0's input term for every timestep in one matmul, then L-1 empty steps.
    xw0 = _skew(gates(cell.project(layers[0], xs), units[0]), 0, depth)
    states = tuple(jnp.stack([_pad_axis(part, -1, width) for part in parts])
                   for parts in zip(*carries))            # each (L, batch, width)
    below = jnp.zeros((depth - 1, *states[0].shape[1:]), states[0].dtype)

    if mask is None and depth == 1:
        skewed_mask = None
    else:
        # Without a user mask the skew depends on (step, layer) only: broadcast over batch.
        real = jnp.ones((time, 1), bool) if mask is None else mask
        skewed = [_skew(real, layer, depth) for layer in range(depth)]
        skewed_mask = jnp.stack(skewed, axis=1)[..., None]
    if all(b is None for b in between):
        skewed_between = None
    else:
        skewed_between = jnp.stack(
            [_skew(jnp.ones((time, xs.shape[1], width), xs.dtype) if b is None
                   else _pad_axis(b, -1, width), layer, depth)
             for layer, b in enumerate(between, start=1)], axis=1)  # (S, L-1, batch, width)

    step_all = jax.vmap(lambda p, c, x, m: masked_step(cell, p, c, x, m))
    project_upper = jax.vmap(cell.project)

    def body(carry, inputs):
        states, below = carry
        xw0_s, m_s, between_s = inputs
        xw_s = xw0_s[None]
        if depth > 1:
            x_upper = below if between_s is None else below * between_s
            # Zero-pad and add rather than concatenate: exact (x + 0 == x), and a
            # concatenate fused with the mask's select ran 2x slower on XLA:CPU.
            xw_s = (_pad_axis(xw_s, 0, depth)
                    + jnp.pad(project_upper(upper, x_upper), [(1, 0), (0, 0), (0, 0)]))
        states, out = step_all(recurrent, states, xw_s, m_s)
        return (states, out[:-1]), out[-1]

    (states, _), tops = jax.lax.scan(body, (states, below), (xw0, skewed_mask, skewed_between),
                                     unroll=unroll)
    ys = tops[depth - 1:depth - 1 + time, :, :units[-1]]
    finals = [tuple(part[layer, :, :n] for part in states) for layer, n in enumerate(units)]
    return ys, finals


def _skew(a, layer, depth):
    """``a (time, ...)`` -> ``(time + depth - 1, ...)`` starting at step ``layer``, zero/False
    elsewhere."""
    return jnp.pad(a, [(layer, depth - 1 - layer)] + [(0, 0)] * (a.ndim - 1))


def _pad_axis(a, axis, size):
    """Zero-pad ``axis`` of ``a`` to ``size``."""
    missing = size - a.shape[axis]
    if missing == 0:
        return a
    pads = [(0, 0)] * a.ndim
    pads[axis] = (0, missing)
    return jnp.pad(a, pads)


def _pad_gates(a, gates, units, size):
    """Zero-pad each of the ``gates`` blocks of ``units`` in the last axis of ``a`` to ``size``."""
    if units == size:
        return a
    blocks = a.reshape(*a.shape[:-1], gates, units)
    return _pad_axis(blocks, -1, size).reshape(*a.shape[:-1], gates * size)


register("wavefront", run_stack)
