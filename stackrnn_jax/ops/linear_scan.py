"""Linear recurrences ``x_t = A_t x_{t-1} + b_t`` in O(log T) sequential depth.

Each step is an affine map ``x -> A x + b``. Composing "first ``(A1, b1)``, then
``(A2, b2)``" gives ``(A2 A1, A2 b1 + b2)``, an associative operation, so
``jax.lax.associative_scan`` computes every prefix composition — the whole trajectory —
with ``log2 T`` levels of independent work instead of ``T`` dependent steps.

``A`` is stored in one of three layouts, told apart by its rank against the states
``x (..., D)``:

* diagonal, its diagonal ``(..., D)``: elementwise products, O(T·batch·D) work and memory;
* block-diagonal ``(..., n, p, p)`` with ``D = p*n``: ``n`` blocks of ``p x p`` coupling
  components ``k, n+k, ..., (p-1)n+k`` — unit ``k`` of each of ``p`` packed state parts
  (an LSTM's ``h`` and ``c``); O(T·batch·n·p^3) work;
* full ``(..., D, D)``: batched matrix products, O(T·batch·D^3) work, O(T·batch·D^2) memory.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def is_full(a: jax.Array, x: jax.Array) -> bool:
    """Whether ``a`` holds full matrices (one more axis than the states ``x``)."""
    return a.ndim == x.ndim + 1


def is_blocks(a: jax.Array, x: jax.Array) -> bool:
    """Whether ``a`` holds ``p x p`` blocks (two more axes than the states ``x``)."""
    return a.ndim == x.ndim + 2


def transpose(a: jax.Array, x: jax.Array) -> jax.Array:
    """``A^T`` in ``a``'s own layout (a diagonal is its own transpose)."""
    return a if a.ndim == x.ndim else jnp.swapaxes(a, -1, -2)


def apply(a: jax.Array, x: jax.Array) -> jax.Array:
    """``A x`` per row: ``a`` in any layout above, ``x (..., D)``."""
    if is_full(a, x):
        return jnp.einsum("...ij,...j->...i", a, x)
    if is_blocks(a, x):
        n, p = a.shape[-3], a.shape[-1]
        parts = x.reshape(*x.shape[:-1], p, n)     # part-major packing: (..., p, n)
        return jnp.einsum("...nij,...jn->...in", a, parts).reshape(x.shape)
    return a * x


def _compose(a2: jax.Array, a1: jax.Array, x: jax.Array) -> jax.Array:
    """``A2 A1`` in the layout of both."""
    if a2.ndim == x.ndim:
        return a2 * a1
    return a2 @ a1


def linear_recurrence(a: jax.Array, b: jax.Array, x0: jax.Array | None = None) -> jax.Array:
    """Solve ``x_t = A_t x_{t-1} + b_t`` for ``t = 0..T-1`` from ``x_{-1} = x0``.

    ``a``: ``(T, batch, D)`` (diagonal), ``(T, batch, n, p, p)`` (blocks) or
    ``(T, batch, D, D)``; ``b (T, batch, D)``; ``x0 (batch, D)`` or None for zeros
    -> ``x (T, batch, D)``.
    """
    if x0 is not None:
        # The start state enters as part of the first step's offset: x_0 = A_0 x0 + b_0.
        b = b.at[0].add(apply(a[0], x0))

    def compose(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return _compose(a2, a1, b1), apply(a2, b1) + b2

    _, x = jax.lax.associative_scan(compose, (a, b))
    return x
