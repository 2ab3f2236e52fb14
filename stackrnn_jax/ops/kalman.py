"""The Levenberg-Marquardt (ELK) correction of a diagonal Newton step, by a Kalman smoother.

Newton on a trajectory (``newton.py``) takes the correction ``δ`` that solves
``δ_t = J_t δ_{t-1} + r_t`` exactly (``r_t = F_t - x_t``). Where the linearisation is poor
— a diagonal stand-in for a rotation, expanding dynamics — that exact solve can overshoot
by products of ``J`` over many steps. ELK (Gonzalez et al., NeurIPS 2024, "Towards
scalable and stable parallelization of nonlinear RNNs") instead takes the
Levenberg-Marquardt step, the minimiser of::

    sum_t |δ_t - J_t δ_{t-1} - r_t|^2 + λ |δ_t|^2,      δ_{-1} = 0,

a trust region of size ``~1/λ`` around the current guess (``λ -> 0``: the Newton step).
That is the MAP estimate of a linear-Gaussian state-space model — dynamics
``δ_t = J_t δ_{t-1} + r_t + w_t`` with unit noise, observations ``0 = δ_t + v_t`` with
noise variance ``1/λ`` — which a Kalman filter and Rauch-Tung-Striebel smoother give
exactly. With a diagonal ``J`` every component is its own scalar model, and each pass is
a prefix computation over time:

1. the filter variances obey the Riccati recursion ``P_t = ρ(J²P + 1)/(J²P + 1 + ρ)``
   (``ρ = 1/λ``), a Möbius map of ``P_{t-1}``: composing maps is multiplying their
   ``2 x 2`` matrices, an associative scan;
2. given the variances, the filter means are a linear recurrence (``linear_scan``);
3. so is the smoother, run backwards in time.

So one damped update costs three O(log T)-depth scans of elementwise work instead of one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stackrnn_jax.ops.linear_scan import linear_recurrence


def _riccati_variances(j2: jax.Array, rho: float) -> jax.Array:
    """Filter variances ``P_t`` for ``t = 0..T-1`` from ``P_{-1} = 0``: ``j2 = J²`` ``(T, ...)``.

    Step ``t`` maps ``P -> (a P + b) / (c P + d)`` with matrix ``[[ρJ², ρ], [J², 1 + ρ]]``;
    the prefix product applied to 0 is ``b / d`` of the product. Entries are >= 0, so a
    product can be rescaled freely (same map): each one is divided by its largest entry,
    which keeps products of expanding steps finite.
    """
    one = jnp.ones_like(j2)
    m = (rho * j2, rho * one, j2, (1.0 + rho) * one)     # the entries a, b, c, d

    def compose(earlier, later):  # later @ earlier, entrywise (2 x 2 matmuls are slow)
        a1, b1, c1, d1 = earlier
        a2, b2, c2, d2 = later
        product = (a2 * a1 + b2 * c1, a2 * b1 + b2 * d1, c2 * a1 + d2 * c1, c2 * b1 + d2 * d1)
        norm = jnp.maximum(jnp.maximum(product[0], product[1]),
                           jnp.maximum(product[2], product[3]))
        return tuple(e / norm for e in product)

    _, b, _, d = jax.lax.associative_scan(compose, m)
    return b / d


def damped_correction(j: jax.Array, r: jax.Array, lam: float) -> jax.Array:
    """The ELK correction: ``j`` the diagonal Jacobians ``(T, batch, D)``, ``r (T, batch, D)``
    the residuals, ``lam > 0`` the damping -> ``δ (T, batch, D)``, the minimiser above."""
    rho = 1.0 / lam
    j2 = j * j
    p = _riccati_variances(j2, rho)
    p_before = jnp.concatenate([jnp.zeros_like(p[:1]), p[:-1]], axis=0)
    p_pred = j2 * p_before + 1.0                 # predicted variance P⁻_t
    keep = rho / (p_pred + rho)                  # 1 - Kalman gain (observation: δ_t = 0)
    mean = linear_recurrence(keep * j, keep * r)
    mean_prev = jnp.concatenate([jnp.zeros_like(mean[:1]), mean[:-1]], axis=0)
    mean_pred = j * mean_prev + r                # predicted mean m⁻_t
    # RTS: s_t = m_t + C_t (s_{t+1} - m⁻_{t+1}), C_t = P_t J_{t+1} / P⁻_{t+1}; s_{T-1} = m_{T-1}.
    gain = jnp.concatenate([p[:-1] * j[1:] / p_pred[1:], jnp.zeros_like(p[:1])], axis=0)
    pred_next = jnp.concatenate([mean_pred[1:], jnp.zeros_like(mean[:1])], axis=0)
    smoothed = linear_recurrence(jnp.flip(gain, 0), jnp.flip(mean - gain * pred_next, 0))
    return jnp.flip(smoothed, 0)
