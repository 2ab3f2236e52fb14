"""Each cell's step cut at its recurrent matmul, for hand-scheduled backward passes.

``cell.step(params, carry, xw_t) == head(cell, carry, xw_t, u)`` with
``u = recurrent_matmul(cell, params, carry, xw_t)``, where

* ``u (batch, gates*units)`` holds every product with ``recurrent_kernel`` (plus the
  GRU's recurrent bias), so the weights reach the step only through ``u``;
* ``head`` is elementwise given ``u``: no weights, no matmuls.

That cut is what lets ``scan_vjp`` keep weight gradients out of its time loop: the loop
carries only the state cotangent and emits ``du``; the weight gradient is then one VJP
of ``recurrent_matmul`` over all timesteps at once (``H_prev^T dU`` for a single matmul).
The split restates the equations of ``cells.py``; the tests check it against ``cell.step``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SPLIT_CELLS = frozenset({"simple", "lstm", "gru"})  # a new cell needs its own split here
# Cells whose step reads xw_t and u only through their sum xw_t + u: for them
# d(xw_t) = du and the recurrent product does not read xw_t.
SUM_CELLS = frozenset({"simple", "lstm"})


def recurrent_matmul(cell, params, carry, xw_t):
    """``carry`` (each ``(rows, units)``), ``xw_t (rows, gates*units)`` ->
    ``u (rows, gates*units)``."""
    h, w_h = carry[0], params["recurrent_kernel"]
    if cell.name != "gru":
        return h @ w_h
    if cell.reset_after:
        return h @ w_h + params["bias"][1]
    # reset_after=False: the candidate's product reads r * h, so r is needed first.
    units = h.shape[-1]
    u_zr = h @ w_h[:, :2 * units]
    r = jax.nn.sigmoid(xw_t[..., units:2 * units] + u_zr[..., units:])
    return jnp.concatenate([u_zr, (r * h) @ w_h[:, 2 * units:]], axis=-1)


def head(cell, carry, xw_t, u):
    """The elementwise rest of the step: ``(carry, xw_t, u) -> new carry``."""
    if cell.name == "simple":
        return (cell.act(xw_t + u),)
    if cell.name == "lstm":
        z_i, z_f, z_c, z_o = jnp.split(xw_t + u, 4, axis=-1)
        c = jax.nn.sigmoid(z_f) * carry[1] + jax.nn.sigmoid(z_i) * cell.act(z_c)
        return (jax.nn.sigmoid(z_o) * cell.act(c), c)
    (h,) = carry  # GRU
    x_z, x_r, x_h = jnp.split(xw_t, 3, axis=-1)
    u_z, u_r, u_h = jnp.split(u, 3, axis=-1)
    z = jax.nn.sigmoid(x_z + u_z)
    # reset_after applies r to the product; otherwise r was applied inside it.
    n = cell.act(x_h + jax.nn.sigmoid(x_r + u_r) * u_h if cell.reset_after else x_h + u_h)
    return (z * h + (1.0 - z) * n,)
