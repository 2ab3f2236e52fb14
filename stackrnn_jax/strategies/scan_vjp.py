"""``"scan_vjp"`` / ``"scan_vjp_remat"``: "scan" with a hand-scheduled backward pass.

The forward pass is the "scan" strategy (one scan per layer, input projection hoisted).
Reverse-mode autodiff of a scan leaves a weight-gradient outer product
``dW_h += h_{t-1}^T du_t`` inside the backward loop, a small matmul per step. Here the
recurrence has a ``jax.custom_vjp`` whose backward pass is a reverse scan that carries
only the state cotangent (h, and c for an LSTM) and emits, per step, the cotangents of
the input term ``d(xw_t)`` and of the recurrent product ``du_t`` (see
``recurrent_split``). After the loop the weight gradient is one VJP of the recurrent
product over all T*batch rows — ``dW_h = H_prev^T dU`` as a single large matmul — and
``dW_x = X^T d(XW)``, ``db``, ``dX = d(XW) W_x^T`` come from autodiff of the hoisted
projection, also single large matmuls (the cuDNN schedule).

Residuals: ``"scan_vjp"`` stores the carry entering each step and ``u_t``, so the
backward loop's only matmul is ``du_t W_h^T``. ``"scan_vjp_remat"`` stores only the
carries and recomputes ``u_t`` (and the gates) in the backward loop: one more matmul per
step for ``gates*units`` fewer stored numbers per step and row.

A SimpleRNN (tanh or relu) needs neither: ``act'`` is read off the stored output
``h_t`` (``1 - h_t^2`` or ``h_t > 0``), so both variants store only the states and the
backward step is one elementwise product and ``da W_h^T`` (``_simple_bwd``).

Masked steps hold the carry and emit zeros, so their state cotangent passes through
unchanged and their ``d(xw_t)`` and ``du_t`` are zero. Forward-mode differentiation
(``jax.jvp``) of a ``custom_vjp`` function is not supported by JAX; use "scan" for it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from stackrnn_jax.ops.recurrent_split import SPLIT_CELLS, SUM_CELLS, head, recurrent_matmul
from stackrnn_jax.strategies.common import layer_by_layer
from stackrnn_jax.strategies.registry import register


def _held(cell, carry, xw_t, u_t, m_t):
    """One step from ``u_t`` with the masking of ``common.masked_step``: ``(carry, h_out)``."""
    new = head(cell, carry, xw_t, u_t)
    if m_t is None:
        return new, new[0]
    new = tuple(jnp.where(m_t, n, o) for n, o in zip(new, carry))
    return new, jnp.where(m_t, new[0], jnp.zeros_like(new[0]))


def _scan_forward(cell, unroll, remat, params, carry, xw, mask):
    """Forward scan -> ``((ys, final), residuals per step)``."""

    def body(carry, inputs):
        xw_t, m_t = inputs
        u_t = recurrent_matmul(cell, params, carry, xw_t)
        new, y_t = _held(cell, carry, xw_t, u_t, m_t)
        return new, (y_t, (carry, None if remat else u_t))

    final, (ys, per_step) = jax.lax.scan(body, carry, (xw, mask), unroll=unroll)
    return (ys, final), per_step


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _recurrence(cell, unroll, remat, params, carry, xw, mask):
    """``xw (time, batch, gates*units)``, ``mask (time, batch, 1)`` or None -> ``(ys, final)``."""
    return _scan_forward(cell, unroll, remat, params, carry, xw, mask)[0]


# The SimpleRNN's activation derivative from its output h = act(a): no recomputation of
# the step in the backward loop, and no u_t stored in the forward one.
_DERIVATIVE_FROM_OUTPUT = {"tanh": lambda h: 1.0 - h * h,
                           "relu": lambda h: (h > 0).astype(h.dtype)}


def _output_derivative_cell(cell) -> bool:
    return cell.name == "simple" and cell.activation in _DERIVATIVE_FROM_OUTPUT


def _recurrence_fwd(cell, unroll, remat, params, carry, xw, mask):
    stores_u = not remat and not _output_derivative_cell(cell)
    outputs, per_step = _scan_forward(cell, unroll, not stores_u, params, carry, xw, mask)
    return outputs, (params, xw, mask, per_step, outputs[1])


def _simple_bwd(cell, unroll, params, carries, final, mask, dys, dfinal):
    """SimpleRNN backward from stored states only: ``(dparams, dcarry0, dxw)``.

    Per step ``da = (dh + dy_t) * act'(h_t)`` (``act'`` read off ``h_t``), ``dh_{t-1} = da
    W_h^T``; a masked step passes ``dh`` through and has ``da = 0``. ``d(xw) = da`` and
    ``dW_h = H_prev^T dA`` as one matmul after the loop.
    """
    (h_prev,), w_h = carries, params["recurrent_kernel"]
    h_next = jnp.concatenate([h_prev[1:], final[0][None]], axis=0)  # h_t; any value where masked
    derivative = _DERIVATIVE_FROM_OUTPUT[cell.activation]

    def body(dh, inputs):
        h_t, m_t, dy_t = inputs
        da = (dh + dy_t) * derivative(h_t)
        back = da @ w_h.T
        if m_t is not None:
            da = jnp.where(m_t, da, jnp.zeros_like(da))
            back = jnp.where(m_t, back, dh)
        return back, da

    dh0, da = jax.lax.scan(body, dfinal[0], (h_next, mask, dys), reverse=True, unroll=unroll)
    rows = da.reshape(-1, da.shape[-1])
    dparams = {"recurrent_kernel": h_prev.reshape(-1, h_prev.shape[-1]).T @ rows}
    return dparams, (dh0,), da


def _recurrence_bwd(cell, unroll, remat, residuals, cotangents):
    params, xw, mask, (carries, us), final = residuals
    dys, dfinal = cotangents
    if _output_derivative_cell(cell):
        dparams, dcarry0, dxw = _simple_bwd(cell, unroll, params, carries, final, mask, dys, dfinal)
        return {**jax.tree.map(jnp.zeros_like, params), **dparams}, dcarry0, dxw, None
    summed = cell.name in SUM_CELLS  # then d(xw_t) == du_t: emit one array, not two

    def body(dcarry, inputs):
        carry_t, xw_t, u_t, m_t, dy_t = inputs
        if u_t is None:
            u_t = recurrent_matmul(cell, params, carry_t, xw_t)
        _, local_vjp = jax.vjp(lambda c, x, u: _held(cell, c, x, u, m_t), carry_t, xw_t, u_t)
        dcarry_head, dxw_head, du_t = local_vjp((dcarry, dy_t))
        # Back through the product with W_h held constant: du_t W_h^T, no weight gradient.
        # (Its forward output is unused here, so XLA drops that matmul.)
        _, product_vjp = jax.vjp(lambda c, x: recurrent_matmul(cell, params, c, x),
                                 carry_t, xw_t)
        dcarry_product, dxw_product = product_vjp(du_t)
        dcarry = tuple(a + b for a, b in zip(dcarry_head, dcarry_product))
        if summed:
            return dcarry, du_t
        return dcarry, (dxw_head + dxw_product, du_t)

    dcarry0, per_step = jax.lax.scan(body, dfinal, (carries, xw, us, mask, dys),
                                     reverse=True, unroll=unroll)
    dxw, du = (per_step, per_step) if summed else per_step

    # The weight gradients after the loop: one VJP over all (time*batch) rows.
    def rows(a):
        return a.reshape(-1, a.shape[-1])

    _, params_vjp = jax.vjp(
        lambda p: recurrent_matmul(cell, p, tuple(map(rows, carries)), rows(xw)), params)
    (dparams,) = params_vjp(rows(du))
    return dparams, dcarry0, dxw, None


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def _layer_runner(remat):
    def run_layer(cell, params, xw, mask, carry, *, unroll=1):
        """Scan over ``xw (time, batch, gates*units)`` with the hand-scheduled backward pass."""
        if cell.name not in SPLIT_CELLS:
            raise ValueError(f"strategy: scan_vjp has no recurrent split for cell {cell.name!r}; "
                             f"use 'scan'")
        # The input kernel is used only by the hoisted projection outside the recurrence.
        step_params = {k: v for k, v in params.items() if k != "kernel"}
        return _recurrence(cell, unroll, remat, step_params, carry, xw, mask)

    return run_layer


run_layer = _layer_runner(remat=False)
run_stack = register("scan_vjp", layer_by_layer(run_layer))
run_stack_remat = register("scan_vjp_remat",
                           layer_by_layer(_layer_runner(remat=True)))
