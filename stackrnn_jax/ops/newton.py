"""Newton's method on a whole trajectory (DEER), finished sequentially where it stops short.

The recurrence ``x_t = step(x_{t-1}, inputs_t)`` for ``t = 0..T-1`` from ``x_{-1} = x0`` is
one system of equations in the unknown trajectory ``x (T, batch, D)``. A Newton step
linearises every timestep around the current guess at once, in parallel over time, and
solves for the correction ``δ = x^new - x``::

    δ_t = J_t δ_{t-1} + (F_t - x_t),   δ_{-1} = 0,   F_t = step(x_{t-1}, inputs_t),
                                                     J_t = d step / d x_{t-1} (or a stand-in)

— a linear recurrence, solved by ``linear_scan`` in O(log T) depth. With the full
Jacobian this is DEER (Lim et al., 2024; quadratic convergence near the solution), with
its diagonal quasi-DEER (Gonzalez et al., 2024).

Whatever ``J_t`` is, one update makes ``x_k`` exact once ``x_0..x_{k-1}`` are (their
corrections vanish), so iteration ``k`` fixes at least the first ``k`` steps and the
iteration ends within ``T`` updates; ``J_t`` only decides how much faster. That is also
why any stand-in (diagonal, damped) leaves the solution unchanged, and why the correction
may be computed inexactly: it runs at the default matmul precision (TF32 on recent
NVIDIA GPUs), its rounding is relative to ``δ``, which shrinks, and the residual that
decides convergence is evaluated by the caller's ``linearize`` at its own precision.

A step counts as converged when its residual ``|x_t - F_t| <= tol * (scale + |F_t|)`` in
every row and component (NaN and inf never count). When the iteration cap is reached
first, the trajectory is kept up to the first unconverged step and the rest is computed
by the plain sequential recurrence, so the answer is always the recurrence's.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from stackrnn_jax.ops.linear_scan import linear_recurrence

Step = Callable[[jax.Array, object], jax.Array]
Linearize = Callable[[jax.Array, object], tuple[jax.Array, jax.Array]]
Correct = Callable[[jax.Array, jax.Array], jax.Array]


def solve(step: Step, linearize: Linearize, x0, guess, inputs, *, tol: float, scale,
          max_iters: int, correct: Correct = linear_recurrence):
    """Solve ``x_t = step(x_{t-1}, inputs_t)`` by Newton iterations plus a sequential finish.

    Args:
      step: ``(x_prev, inputs) -> x``, vectorised over leading axes: called on a whole
        trajectory (``x_prev (T, batch, D)``, ``inputs`` with leading axis T) and, in the
        sequential finish, on one step (``(batch, D)`` and the inputs at ``t``).
      linearize: ``(x_prev (T, batch, D), inputs) -> (F, J)`` with ``F = step(x_prev, inputs)``
        and ``J`` its Jacobian in ``x_prev`` or a stand-in: ``(T, batch, D, D)``, or the
        diagonal ``(T, batch, D)``.
      x0: ``(batch, D)`` the state before the first step.
      guess: ``(T, batch, D)`` the starting trajectory.
      inputs: a pytree of arrays with leading axis T (None leaves allowed).
      tol, scale: the convergence test above; ``scale`` a scalar (array or float).
      max_iters: at most this many Newton updates.
      correct: ``(J, r) -> δ``, the correction from the Jacobians and residuals
        ``r = F - x``; by default the exact solve of ``δ_t = J_t δ_{t-1} + r_t``, or a
        damped one (``kalman.damped_correction``: a fixed point is still the solution,
        but an update no longer makes the first unconverged step exact).
    Returns:
      ``(x (T, batch, D), iterations int32, converged bool)``; ``converged`` is False when
      the sequential finish had to complete the trajectory.
    """
    steps = guess.shape[0]

    def shifted(x):
        return jnp.concatenate([x0[None], x[:-1]], axis=0)

    def evaluate(x):
        f, j = linearize(shifted(x), inputs)
        ok = jnp.all(jnp.abs(x - f) <= tol * (scale + jnp.abs(f)), axis=(1, 2))
        return f, j, ok

    def unfinished(state):
        *_, ok, k = state
        return (k < max_iters) & ~jnp.all(ok)

    def newton(state):
        x, f, j, _, k = state
        with jax.default_matmul_precision("default"):
            x = x + correct(j, f - x)
        return (x, *evaluate(x), k + 1)

    x, _, _, ok, iterations = jax.lax.while_loop(
        unfinished, newton, (guess, *evaluate(guess), jnp.int32(0)))
    converged = jnp.all(ok)
    first_unconverged = jnp.where(converged, steps, jnp.argmin(ok))
    return sequential_finish(step, x0, x, inputs, first_unconverged), iterations, converged


def sequential_finish(step: Step, x0, x, inputs, start):
    """Recompute ``x[start:]`` one step at a time from ``x[start - 1]`` (``x0`` if 0).

    ``start`` is traced; the loop runs ``T - start`` steps, none when ``start == T``.
    """

    def one(t, x):
        before = jax.lax.dynamic_index_in_dim(x, jnp.maximum(t - 1, 0), keepdims=False)
        before = jnp.where(t == 0, x0, before)
        inputs_t = jax.tree.map(
            lambda a: jax.lax.dynamic_index_in_dim(a, t, keepdims=False), inputs)
        return jax.lax.dynamic_update_index_in_dim(x, step(before, inputs_t), t, 0)

    return jax.lax.fori_loop(start, x.shape[0], one, x)
