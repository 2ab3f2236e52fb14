"""One timestep of each cell on ``(rows, units)`` tiles, gate by gate: the kernels' body.

The equations are those of ``cells.py``; this module restates them in the form a Triton
kernel can run. Triton cannot slice a tensor held in registers, and ``gates * units`` is
rarely a power of two, so every gate is its own ``(rows, units)`` tile with its own dot
against its ``(units, units)`` block of ``W_h``: ``w[k]`` is ``W_h[:, k*u:(k+1)*u]``.
Tiles arrive in the state dtype (float32, or float64); ``dot`` casts the left operand
to the weights' dtype (bfloat16 weights: bfloat16 products) and accumulates in the
state dtype.

``forward_step`` also returns what the reverse step needs besides the carries
(``SAVED`` tiles per step: the gate activations, and the GRU's ``h W_h + b`` candidate
term when ``reset_after``); ``backward_step`` maps the cotangent of the carry after a
step to the cotangent of the carry before it and of the step's input term ``xw``.
Activation derivatives are read off outputs (``tanh' = 1 - y^2``, ``relu' = [y > 0]``),
so nothing else is recomputed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Saved tiles per step, by ``kind``.
SAVED = {"simple": 0, "lstm": 4, "gru_after": 4, "gru_before": 3}


def kind(cell) -> str:
    """``"simple"``, ``"lstm"``, ``"gru_after"`` or ``"gru_before"`` (the GRU's variant)."""
    if cell.name == "gru":
        return "gru_after" if cell.reset_after else "gru_before"
    return cell.name


def dot(a, w):
    """``a (rows, k) @ w (k, n)``: ``a`` cast to ``w``'s dtype, accumulated in ``a``'s."""
    return jnp.dot(a.astype(w.dtype), w, preferred_element_type=a.dtype)


def _act(activation, x):
    return jnp.tanh(x) if activation == "tanh" else jnp.maximum(x, 0.0)


def _act_grad(activation, y):
    """The activation's derivative from its output ``y``."""
    return 1.0 - y * y if activation == "tanh" else jnp.where(y > 0, 1.0, 0.0).astype(y.dtype)


def _sigmoid_grad(s):
    return s * (1.0 - s)


def forward_step(cell, w, b_rec, carry, xw):
    """``w``: per-gate ``(units, units)`` weights; ``b_rec``: per-gate ``(1, units)``
    recurrent biases or None; ``carry``: tuple of ``(rows, units)``; ``xw``: per-gate
    ``(rows, units)`` input terms. Returns ``(new carry, saved tiles)``."""
    act, h = cell.activation, carry[0]
    which = kind(cell)
    if which == "simple":
        return (_act(act, xw[0] + dot(h, w[0])),), []
    if which == "lstm":
        z = [x + dot(h, wk) for x, wk in zip(xw, w)]
        i, f, g, o = (jax.nn.sigmoid(z[0]), jax.nn.sigmoid(z[1]), _act(act, z[2]),
                      jax.nn.sigmoid(z[3]))
        c = f * carry[1] + i * g
        return (o * _act(act, c), c), [i, f, g, o]
    if which == "gru_after":
        u = [dot(h, wk) + bk for wk, bk in zip(w, b_rec)]
        z = jax.nn.sigmoid(xw[0] + u[0])
        r = jax.nn.sigmoid(xw[1] + u[1])
        n = _act(act, xw[2] + r * u[2])
        return (z * h + (1.0 - z) * n,), [z, r, n, u[2]]
    z = jax.nn.sigmoid(xw[0] + dot(h, w[0]))
    r = jax.nn.sigmoid(xw[1] + dot(h, w[1]))
    n = _act(act, xw[2] + dot(r * h, w[2]))
    return (z * h + (1.0 - z) * n,), [z, r, n]


def backward_step(cell, w_t, prev, new, saved, dcarry):
    """Reverse of one step. ``w_t``: per-gate ``W_k^T``; ``prev`` / ``new``: the carries
    before and after the step; ``saved``: ``forward_step``'s tiles; ``dcarry``: the
    cotangent of ``new`` (the output's cotangent already added to ``dh``).
    Returns ``(cotangent of prev, per-gate cotangents of xw)``."""
    act, dh = cell.activation, dcarry[0]
    which = kind(cell)
    if which == "simple":
        da = dh * _act_grad(act, new[0])
        return (dot(da, w_t[0]),), [da]
    if which == "lstm":
        i, f, g, o = saved
        act_c = _act(act, new[1])
        dc = dcarry[1] + dh * o * _act_grad(act, act_c)
        dz = [dc * g * _sigmoid_grad(i), dc * prev[1] * _sigmoid_grad(f),
              dc * i * _act_grad(act, g), dh * act_c * _sigmoid_grad(o)]
        dh_prev = dot(dz[0], w_t[0]) + dot(dz[1], w_t[1]) + dot(dz[2], w_t[2]) + dot(dz[3], w_t[3])
        return (dh_prev, dc * f), dz
    h_prev = prev[0]
    z, r, n = saved[:3]
    dz = dh * (h_prev - n) * _sigmoid_grad(z)
    dn = dh * (1.0 - z) * _act_grad(act, n)
    if which == "gru_after":
        dr = dn * saved[3] * _sigmoid_grad(r)
        dh_prev = dh * z + dot(dz, w_t[0]) + dot(dr, w_t[1]) + dot(dn * r, w_t[2])
        return (dh_prev,), [dz, dr, dn]
    d_reset_h = dot(dn, w_t[2])  # cotangent of r * h_prev
    dr = d_reset_h * h_prev * _sigmoid_grad(r)
    dh_prev = dh * z + d_reset_h * r + dot(dz, w_t[0]) + dot(dr, w_t[1])
    return (dh_prev,), [dz, dr, dn]
