"""Linear recurrences ``x_t = A_t x_{t-1} + b_t`` in O(log T) sequential depth.

Each step is an affine map ``x -> A x + b``. Composing "first ``(A1, b1)``, then
``(A2, b2)``" gives ``(A2 A1, A2 b1 + b2)``, an associative operation, so
``jax.lax.associative_scan`` computes every prefix composition — the whole trajectory —
with ``log2 T`` levels of independent work instead of ``T`` dependent steps.

``A`` is either diagonal, stored as its diagonal ``(T, batch, D)`` (elementwise products:
O(T·batch·D) work and memory), or full ``(T, batch, D, D)`` (batched matrix products:
O(T·batch·D^3) work, O(T·batch·D^2) memory).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def is_full(a: jax.Array, x: jax.Array) -> bool:
    """Whether ``a`` holds full matrices (one more axis than the states ``x``)."""
    return a.ndim == x.ndim + 1


def apply(a: jax.Array, x: jax.Array) -> jax.Array:
    """``A x`` per row: ``a (..., D, D)`` or its diagonal ``(..., D)``, ``x (..., D)``."""
    if is_full(a, x):
        return jnp.einsum("...ij,...j->...i", a, x)
    return a * x


def linear_recurrence(a: jax.Array, b: jax.Array, x0: jax.Array | None = None) -> jax.Array:
    """Solve ``x_t = A_t x_{t-1} + b_t`` for ``t = 0..T-1`` from ``x_{-1} = x0``.

    ``a (T, batch, D)`` (diagonal) or ``(T, batch, D, D)``, ``b (T, batch, D)``,
    ``x0 (batch, D)`` or None for zeros -> ``x (T, batch, D)``.
    """
    full = is_full(a, b)
    if x0 is not None:
        # The start state enters as part of the first step's offset: x_0 = A_0 x0 + b_0.
        b = b.at[0].add(apply(a[0], x0))

    def compose(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return (a2 @ a1 if full else a2 * a1), apply(a2, b1) + b2

    _, x = jax.lax.associative_scan(compose, (a, b))
    return x
