"""``"pallas"``: each layer's whole time loop in one Pallas kernel (persistent-RNN style).

On a GPU an XLA while-loop iteration costs microseconds whatever it computes
(``bench/loop_overhead.py``), and a stacked RNN runs ``L T`` of them forward and again
backward. Here each layer and direction is one ``pallas_call`` (``kernels/recurrence.py``):
the grid splits the batch into row blocks, each program loads ``W_h`` once and runs all
``T`` steps in a loop inside the kernel. The input term ``x W_x + b`` of every step stays
one large XLA matmul outside (``common.layer_by_layer``), as in the other strategies.

Backward (``jax.custom_vjp`` over the recurrence): one reverse-time kernel maps the
cotangents of the outputs and final carry to ``d(xw)`` per step and the initial carry's
cotangent, from the states and gate activations the forward kernel stored
(``kernels/gate_steps.py``); then the weight gradients are large XLA matmuls over all
``T * batch`` rows (``dW_h = H_prev^T dU``; the projection's ``dW_x``, ``db`` and the
input's gradient come from autodiff of the hoisted projection).

Layout: batch rows are padded to a multiple of ``block_rows`` and units to a power of
two of at least 16, gate block by gate block (Triton's limits; see ``recurrence``). The
padding is exact, as in ``wavefront``: a padded unit has zero weights, input term and
initial state, so every cell keeps it at zero; padded rows are sliced away.

Everything ``"scan"`` supports: SimpleRNN (tanh, relu), GRU (both ``reset_after``
variants), LSTM; masks with pre or post padding (a masked step holds the carry and
emits zeros; the mask is read inside the kernel), initial states, and, through the
stacking code, bidirectional layers and dropout. Dtypes: float32, float64, and bfloat16
inputs and weights with a float32 state and accumulation inside the kernels (the outputs
are bfloat16). ``unroll`` is ignored: there is no XLA loop to unroll.

Where it runs: compiled with Triton when the default backend (``jax.default_backend()``
at trace time) is a GPU; elsewhere in Pallas interpret mode (``interpret=True``: the
same kernels as XLA ops — slow, but how the CPU tests check them). Options
(``stacked_rnn(..., strategy_options={...})``): ``block_rows`` (rows per program, a
power of two >= 16; default 16), ``interpret`` (None: by backend), ``num_warps``
(Triton, default 4). No GPU measurement exists yet, so ``"auto"`` never picks this
strategy. Forward-mode differentiation (``jax.jvp``) is not supported (a
``custom_vjp``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero

from stackrnn_jax.kernels import gate_steps, recurrence
from stackrnn_jax.strategies.common import layer_by_layer
from stackrnn_jax.strategies.registry import register

DTYPES = (jnp.bfloat16, jnp.float32, jnp.float64)
DEFAULT_BLOCK_ROWS = recurrence.MIN_TILE


def _padded_units(units: int) -> int:
    return max(recurrence.MIN_TILE, 1 << (units - 1).bit_length())


def _pad_to(a, shape):
    """Zero-pad ``a`` at the end of each axis up to ``shape`` (no op where it fits)."""
    widths = [(0, n - s) for s, n in zip(a.shape, shape)]
    return a if not any(w for _, w in widths) else jnp.pad(a, widths)


def _outputs(states, mask, dtype):
    """``(ys, final carry)`` from the kernel's states: zeros at masked steps."""
    h = states[0]
    ys = h if mask is None else jnp.where(mask != 0, h, jnp.zeros_like(h))
    return ys.astype(dtype), tuple(s[-1].astype(dtype) for s in states)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _recurrence(config, w, b_rec, carry, xw, mask):
    """Padded layout of ``kernels/recurrence.py`` -> ``(ys (T, Bp, Up), final carry)``."""
    states, _ = recurrence.forward(config, w, b_rec, carry, xw, mask, save=False)
    return _outputs(states, mask, xw.dtype)


def _recurrence_fwd(config, w, b_rec, carry, xw, mask):
    # symbolic_zeros=True hands the primals over wrapped (value, perturbed).
    w, b_rec, carry, xw, mask = jax.tree.map(
        lambda p: p.value, (w, b_rec, carry, xw, mask),
        is_leaf=lambda p: isinstance(p, CustomVJPPrimal))
    states, saved = recurrence.forward(config, w, b_rec, carry, xw, mask, save=True)
    return _outputs(states, mask, xw.dtype), (w, carry, mask, states, saved)


def _weight_gradients(config, h_prev, dxw, saved):
    """``(dW (G, Up, Up), d b_rec or None)``: matmuls over all ``T * Bp`` rows."""
    which = gate_steps.kind(config.cell)
    if which == "gru_before":
        # The candidate's product reads r * h_prev (r is saved tile 1).
        return jnp.concatenate([
            jnp.einsum("tbu,tbgv->guv", h_prev, dxw[:, :, :2]),
            jnp.einsum("tbu,tbv->uv", saved[:, :, 1] * h_prev, dxw[:, :, 2])[None]]), None
    if which == "gru_after":
        # u_h = h W_h + b enters as r * u_h: its cotangent is r * d(xw_h).
        du = jnp.concatenate([dxw[:, :, :2], (saved[:, :, 1] * dxw[:, :, 2])[:, :, None]],
                             axis=2)
        return jnp.einsum("tbu,tbgv->guv", h_prev, du), du.sum(axis=(0, 1))[:, None, :]
    return jnp.einsum("tbu,tbgv->guv", h_prev, dxw), None


def _recurrence_bwd(config, residuals, cotangents):
    w, carry, mask, states, saved = residuals
    dys, dfinal = cotangents
    # Unused outputs arrive as symbolic zeros: a layer read only through its final state
    # (a classifier's top) passes no (T, B, units) zeros to the kernel.
    dys = None if isinstance(dys, SymbolicZero) else dys
    dfinal = tuple(jnp.zeros_like(s[-1]) if isinstance(d, SymbolicZero) else d
                   for d, s in zip(dfinal, states))
    dxw, dcarry = recurrence.backward(config, w, carry, states, saved, dys, dfinal, mask)
    h_prev = jnp.concatenate([carry[0][None].astype(states[0].dtype), states[0][:-1]])
    dw, db = _weight_gradients(config, h_prev, dxw, saved)
    dtype = w.dtype  # every input was cast to one dtype (see _run_layer)
    return (dw.astype(dtype), None if db is None else db.astype(dtype),
            tuple(d.astype(c.dtype) for d, c in zip(dcarry, carry)), dxw.astype(dtype), None)


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd, symbolic_zeros=True)


def _run_layer(config, cell, params, xw, mask, carry, *, unroll=1):
    """One layer over ``xw (time, batch, gates*units)``; ``mask (time, batch, 1)`` or None."""
    del unroll  # no XLA loop
    steps, batch, _ = xw.shape
    units, gates = carry[0].shape[-1], cell.gates
    dtype = jnp.result_type(xw, carry[0], params["recurrent_kernel"])
    if dtype not in map(jnp.dtype, DTYPES):
        raise ValueError(f"strategy pallas: dtype {dtype} is not supported; use float32, "
                         f"float64 or bfloat16 (compute_dtype=jnp.bfloat16)")
    rows = -(-batch // config.block_rows) * config.block_rows
    width = _padded_units(units)
    xw = _pad_to(xw.astype(dtype).reshape(steps, batch, gates, units),
                 (steps, rows, gates, width))
    # W_h (units, gates*units) -> one (units, units) block per gate.
    w = params["recurrent_kernel"].astype(dtype).reshape(units, gates, units).transpose(1, 0, 2)
    w = _pad_to(w, (gates, width, width))
    b_rec = None
    if gate_steps.kind(cell) == "gru_after":
        b_rec = _pad_to(params["bias"][1].astype(dtype).reshape(gates, 1, units),
                        (gates, 1, width))
    padded = tuple(_pad_to(c.astype(dtype), (rows, width)) for c in carry)
    steps_real = None if mask is None else _pad_to(mask.astype(jnp.int32), (steps, rows, 1))
    ys, final = _recurrence(config, w, b_rec, padded, xw, steps_real)
    return ys[:, :batch, :units], tuple(f[:batch, :units] for f in final)


def _check_options(block_rows, interpret, num_warps):
    if (not isinstance(block_rows, int) or isinstance(block_rows, bool)
            or block_rows < recurrence.MIN_TILE or block_rows & (block_rows - 1)):
        raise ValueError(f"strategy pallas: block_rows must be a power of two >= "
                         f"{recurrence.MIN_TILE} (Triton's tile limits), got {block_rows!r}")
    if interpret not in (None, True, False):
        raise ValueError(f"strategy pallas: interpret must be None, True or False, "
                         f"got {interpret!r}")
    if not isinstance(num_warps, int) or num_warps < 1 or num_warps & (num_warps - 1):
        raise ValueError(f"strategy pallas: num_warps must be a power of two, got {num_warps!r}")


def run_stack(cell, layers, xs, mask, carries, between, *, unroll=1,
              block_rows=DEFAULT_BLOCK_ROWS, interpret=None, num_warps=4):
    """The strategy contract (``registry.RunStack``), plus the kernel options of the docstring."""
    _check_options(block_rows, interpret, num_warps)
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    config = recurrence.Config(cell=cell, block_rows=block_rows, interpret=interpret,
                               num_warps=num_warps)
    return layer_by_layer(functools.partial(_run_layer, config))(
        cell, layers, xs, mask, carries, between, unroll=unroll)


register("pallas", run_stack)
