"""Fit the float32 tanh of the native kernels (stackrnn_jax/native/common.h, rational_tanh).

    python scripts/fit_tanh.py

tanh(x) ~ x P(x^2) / Q(x^2) with Q(0) = 1 on 0 <= x <= 9, degrees 4 and 4 in x^2: a
linearised least-squares fit (x P - tanh(x) Q ~ 0), reweighted toward the largest errors
(Lawson's iteration for a minimax fit). Prints the coefficients as float32 (highest power
first, as common.h's Horner form reads them) and the largest absolute error of the fit
evaluated in float32 over [-9, 9].
"""

from __future__ import annotations

import numpy as np

CLAMP = 9.0   # tanh(9) rounds to 1 in float32
DEGREES = (4, 4)


def fit(p_degree: int, q_degree: int, rounds: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of P and Q (lowest power first; Q[0] = 1)."""
    x = np.concatenate([np.linspace(0, 1, 4000), np.linspace(1, CLAMP, 8000)])
    t, s = np.tanh(x), x * x
    weights = np.ones_like(x)
    for _ in range(rounds):
        columns = ([x * s**k for k in range(p_degree + 1)]
                   + [-t * s**k for k in range(1, q_degree + 1)])
        a = np.stack(columns, 1)
        solution, *_ = np.linalg.lstsq(a * weights[:, None], t * weights, rcond=None)
        p, q = solution[:p_degree + 1], np.concatenate([[1.0], solution[p_degree + 1:]])
        error = np.abs(x * np.polyval(p[::-1], s) / np.polyval(q[::-1], s) - t)
        weights *= np.sqrt(error / error.max() + 1e-3)
        weights /= weights.max()
    return p, q


def float32_error(p: np.ndarray, q: np.ndarray) -> float:
    """Largest |approximation - tanh| with the arithmetic in float32, as the kernel does it."""
    x = np.linspace(-CLAMP, CLAMP, 2_000_001).astype(np.float32)
    s = x * x
    num, den = np.float32(0), np.float32(0)
    for c in p[::-1].astype(np.float32):
        num = num * s + c
    for c in q[::-1].astype(np.float32):
        den = den * s + c
    y = np.clip(x * num / den, -1, 1).astype(np.float32)
    return float(np.max(np.abs(y.astype(np.float64) - np.tanh(x.astype(np.float64)))))


def main() -> None:
    p, q = fit(*DEGREES)
    if np.any(q < 0):  # all-positive Q has no pole on the real line
        raise SystemExit("fit_tanh: Q has a negative coefficient; check for poles")
    for name, coefficients in (("P", p), ("Q", q)):
        print(name, ", ".join(f"{np.float32(c):.8e}f" for c in coefficients[::-1]))
    print(f"largest absolute error in float32 on [-{CLAMP:g}, {CLAMP:g}]: "
          f"{float32_error(p, q):.2e}")


if __name__ == "__main__":
    main()
