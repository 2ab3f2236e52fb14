"""``"parallel"`` / ``"parallel_quasi"``: each layer solved parallel-in-time by Newton (DEER).

A layer's state ``s_t`` — ``h``, or ``concat(h, c)`` for an LSTM: ``D = units`` or
``2*units`` — obeys ``s_t = f(s_{t-1}, xw_t)``. Instead of ``T`` dependent steps, the whole
trajectory is found by Newton iterations (``newton.py``), each one linear recurrence solved
by an associative scan (``linear_scan.py``): O(log T) sequential depth per iteration.

Methods (``method=``):

* ``"deer"``: the full Jacobian ``(T, batch, D, D)``; few iterations (quadratic
  convergence) but O(T·batch·D^3) work and O(T·batch·D^2) memory per iteration: for small
  states.
* ``"quasi"``: only the Jacobian's diagonal ``(T, batch, D)``, read off the cell's
  elementwise head (``recurrent_split``) with one JVP per carry part; more iterations,
  each O(T·batch·D) besides the step's own matmul.
* ``"block"``: per unit the exact ``p x p`` block among the carry's ``p`` parts (an
  LSTM's ``(h_k, c_k)``: quasi drops ``dh_t/dc_{t-1} = o·act'(c)·f``), the couplings between
  units left out; for one-part carries the same as ``"quasi"``.
* ``"gain"`` (SimpleRNN only): its Jacobian is ``diag(a_t) W_h^T`` (``a = act'(z)``);
  the stand-in ``c_t W_h^T`` with ``c_t`` the mean of ``a_t`` over units keeps the
  rotation that quasi's diagonal loses, and is diagonal in ``W_h``'s eigenbasis: each
  correction is two complex ``D x D`` products around an elementwise complex scan
  (``eig(W_h)`` once per solve). Linear convergence at a rate set by the spread of
  ``a_t`` around its mean; the iteration count did not grow with T.
* ``"structured"``: ``"gain"`` for the SimpleRNN, ``"block"`` for the LSTM, ``"quasi"``
  for the GRU (strategy ``"parallel_structured"``).
* ``"auto"`` (the ``"parallel"`` default): ``"deer"`` up to ``DEER_MAX_STATE`` state
  components, ``"quasi"`` above. Deer is preferred while its memory is affordable because
  quasi's diagonal says little about a rotation: on a SimpleRNN with Keras' orthogonal
  recurrent kernel quasi needed about T updates (T 256-1024) where deer needed 5-7;
  GRU/LSTM (H 16, T 1024) took 9-11 quasi vs 2 deer updates.

``elk`` (method quasi): ELK's Levenberg-Marquardt correction (``kalman.py``) in place of
the exact linear solve, a trust region that keeps every update bounded; in the iteration
study it only added updates (``bench/results/parallel/iterations.md``).

``init="chunks"``: the first guess is the recurrence run exactly within chunks of
``chunk`` steps (all chunks at once, each from a zero state but the first): ``chunk``
sequential steps of ``T/chunk`` rows buy a guess already right wherever the state forgets
its start within a chunk.

``damping``: the largest gain the linearisation may have, a trust-region-like bound
on how far one update propagates: each ``J_t`` is scaled down to that gain (quasi: the
diagonal clipped to ``[-damping, damping]``; deer: scaled by ``min(1, damping /
|J_t|_2)`` with the spectral norm estimated by power iteration). Where the dynamics expand
(recurrent kernels with spectral radius > 1, a poor first guess) products of Jacobians grow
like ``gain^T`` and the bound keeps every update finite. Any stand-in for the Jacobian
leaves the solution unchanged (see ``newton.py``). Off by default: since the updates are
solved as corrections (``newton.py``), undamped iterations stayed finite in every case
measured here, and damping only added iterations (float32, T 300-1000, radius 1.1-3:
deer 7-15 undamped vs 12-109 with damping 1; at radius 8, where no variant beats one
step per update, 300 undamped vs 298 damped).

Exactness: iterations stop when every step's residual is below ``tol`` (relative; by
default 1e-13 in float64, 1e-6 in float32); after ``max_iters`` the rest of the trajectory
from the first unconverged step is computed sequentially. The step's matmuls (residuals,
Jacobians, the sequential finish, the gradients) are traced at ``"highest"`` precision:
TF32 rounding on a GPU would put a noise floor near 1e-3 under the residual, and Newton
would never meet a float32 tolerance. The correction solve may be coarser (``newton.py``).

Masked steps hold the state: ``f = s_{t-1}``, ``J = I`` (the linear recurrence holds it
too), outputs zero there, as the contract says.

Gradients: the layer is a ``jax.custom_vjp`` by the implicit-function rule, not by
differentiating the Newton loop. The adjoint ``λ_t = dL/ds_t + G_{t+1}^T λ_{t+1}``
(``G`` the masked step's Jacobian at the solution) is itself a recurrence, run backwards
in time through the same Newton solver (deer: exact transposed Jacobians, one update;
quasi, block: transposed stand-ins, iterated; gain: ``c_t W_h``, diagonal in the
transposed eigenbasis; the same sequential finish). Then one VJP of the step over all
``T*batch`` rows gives the input term's, the weights' (``dW_h = H_prev^T dU``, one large
matmul) and the initial state's gradients. Forward-mode (``jax.jvp``) is not supported.

``unroll`` is accepted and ignored (there is no time loop to unroll, except the
sequential finish whose length is only known at run time).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from stackrnn_jax.ops import newton
from stackrnn_jax.ops.kalman import damped_correction
from stackrnn_jax.ops.linear_scan import linear_recurrence, transpose
from stackrnn_jax.ops.recurrent_split import SPLIT_CELLS, head, recurrent_matmul
from stackrnn_jax.strategies.common import layer_by_layer
from stackrnn_jax.strategies.registry import register

METHODS = ("auto", "deer", "quasi", "block", "gain", "structured")
# "structured": the cheapest stand-in that keeps each cell's own coupling (see the module
# docstring; bench/results/parallel/iterations.md has the counts).
STRUCTURED = {"simple": "gain", "lstm": "block", "gru": "quasi"}
INITS = ("input", "zeros", "chunks")
DEER_MAX_STATE = 64        # "auto": full Jacobians up to this many state components
POWER_STEPS = 6            # power-iteration steps of deer's spectral-norm estimate
DEFAULT_MAX_ITERS = {"deer": 32, "quasi": 128, "block": 128, "gain": 128}


@dataclasses.dataclass(frozen=True)
class Options:
    """Solver settings (hashable: a static argument of the custom VJP).

    method: ``"auto"``, ``"deer"``, ``"quasi"``, ``"block"``, ``"gain"`` (SimpleRNN only)
      or ``"structured"`` (gain, block or quasi by cell).
    tol: relative residual tolerance; None: 1e-13 for 64-bit, 1e-6 for 32-bit, 1e-2 for
      16-bit floats.
    max_iters: Newton updates before the sequential finish; None: 32 (deer), 128 (the
      others).
    damping: largest gain of the linearisation, a positive float, or None (undamped).
    init: first guess: ``"input"`` (every step from a zero state, ``f(0, xw_t)``, in
      parallel), ``"zeros"``, or ``"chunks"`` (the recurrence run exactly within chunks
      of ``chunk`` steps, each from a zero state, all chunks at once: ``chunk``
      sequential steps).
    elk: the Levenberg-Marquardt weight ``λ`` of ELK's damped correction
      (``kalman.py``), a positive float, or None (the plain Newton correction). Needs
      diagonal Jacobians: method ``"quasi"``.
    chunk: steps per chunk of ``init="chunks"``.
    """

    method: str = "auto"
    tol: float | None = None
    max_iters: int | None = None
    damping: float | None = None
    init: str = "input"
    elk: float | None = None
    chunk: int = 32

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method: expected one of {list(METHODS)}, got {self.method!r}")
        if self.init not in INITS:
            raise ValueError(f"init: expected one of {list(INITS)}, got {self.init!r}")
        if self.tol is not None and not self.tol > 0:
            raise ValueError(f"tol: expected a positive float or None, got {self.tol!r}")
        if self.max_iters is not None and (not isinstance(self.max_iters, int)
                                           or self.max_iters < 0):
            raise ValueError(f"max_iters: expected an int >= 0 or None, got {self.max_iters!r}")
        if self.damping is not None and not (
                isinstance(self.damping, (int, float)) and self.damping > 0):
            raise ValueError(f"damping: expected a positive float or None, got {self.damping!r}")
        if self.elk is not None and not (isinstance(self.elk, (int, float)) and self.elk > 0):
            raise ValueError(f"elk: expected a positive float or None, got {self.elk!r}")
        if self.elk is not None and self.method != "quasi":
            raise ValueError(f"elk: the damped correction needs diagonal Jacobians; use "
                             f"method='quasi', not {self.method!r}")
        if not (isinstance(self.chunk, int) and self.chunk >= 1):
            raise ValueError(f"chunk: expected an int >= 1, got {self.chunk!r}")

    def for_layer(self, state_size: int, dtype, cell_name: str = "simple") -> "Options":
        """Every default filled in for a layer of ``state_size`` components in ``dtype``
        of cell ``cell_name``."""
        method = self.method
        if method == "auto":
            method = "deer" if state_size <= DEER_MAX_STATE else "quasi"
        elif method == "structured":
            method = STRUCTURED[cell_name]
        tol = self.tol
        if tol is None:
            tol = {8: 1e-13, 4: 1e-6}.get(jnp.dtype(dtype).itemsize, 1e-2)
        max_iters = DEFAULT_MAX_ITERS[method] if self.max_iters is None else self.max_iters
        return dataclasses.replace(self, method=method, tol=float(tol), max_iters=max_iters)

    def correction(self):
        """The ``correct`` argument of ``newton.solve``: exact, or ELK's damped solve."""
        if self.elk is None:
            return linear_recurrence
        return functools.partial(damped_correction, lam=float(self.elk))


# ----------------------------------------------------------------------------- the step


def _pack(carry) -> jax.Array:
    return jnp.concatenate(carry, axis=-1)


def _unpack(s, parts: int):
    return tuple(jnp.split(s, parts, axis=-1))


def _step(cell, params, s_prev, inputs):
    """The masked step on packed states: ``s_prev (..., D)``, ``inputs = (xw, mask)``
    with ``xw (..., gates*units)``, ``mask (..., 1)`` bool or None -> ``s (..., D)``."""
    xw, mask = inputs
    s = _pack(cell.step(params, _unpack(s_prev, cell.carry_size), xw))
    return s if mask is None else jnp.where(mask, s, s_prev)


def _full_jacobian(cell, params, s_prev, xw):
    """``(F, J)`` of the unmasked step: ``F (..., D)``, ``J (..., D, D)`` by forward mode."""
    def one_row(s, x):
        out = _pack(cell.step(params, _unpack(s, cell.carry_size), x))
        return out, out

    lead, d = s_prev.shape[:-1], s_prev.shape[-1]
    rows = jax.vmap(jax.jacfwd(one_row, has_aux=True))
    jac, f = rows(s_prev.reshape(-1, d), xw.reshape(-1, xw.shape[-1]))
    return f.reshape(*lead, d), jac.reshape(*lead, d, d)


def _diagonal_jacobian(cell, params, s_prev, xw):
    """``(F, diag J)`` of the unmasked step, both ``(..., D)``.

    ``head`` is elementwise per unit given ``u = h W_h``, and unit ``k`` of ``u``'s gate
    ``g`` moves with ``h_k`` by ``W_h[k, g*units + k]``. So carry part ``i``'s diagonal is
    one JVP: tangent ones on part ``i`` (and, for ``h``, the gate-wise diagonals of
    ``W_h`` on ``u``), read off part ``i`` of the output. For a GRU without reset_after
    the candidate's product also reads ``r(h)``; that path is left out of the diagonal
    (a stand-in only: it slows convergence at most, never changes the answer).
    """
    carry = _unpack(s_prev, cell.carry_size)
    u = recurrent_matmul(cell, params, carry, xw)
    w = params["recurrent_kernel"]
    units = w.shape[0]
    w_diag = jnp.diagonal(w.reshape(units, -1, units), axis1=0, axis2=2).reshape(-1)

    def part(i):
        tangent_carry = tuple(jnp.full_like(c, 1.0 if j == i else 0.0)
                              for j, c in enumerate(carry))
        tangent_u = jnp.broadcast_to(w_diag if i == 0 else jnp.zeros_like(w_diag), u.shape)
        out, d_out = jax.jvp(lambda c, v: head(cell, c, xw, v), (carry, u),
                             (tangent_carry, tangent_u))
        return out, d_out[i]

    parts = [part(i) for i in range(cell.carry_size)]
    return _pack(parts[0][0]), _pack([d for _, d in parts])


def _block_jacobian(cell, params, s_prev, xw):
    """``(F, J)`` with ``J (..., units, p, p)``: per unit ``k`` the exact derivatives among
    the ``p`` carry parts' unit ``k`` (an LSTM's ``(h_k, c_k)``), through the diagonal of
    ``W_h`` as in ``_diagonal_jacobian``; the couplings between units are left out.

    A one-part carry has ``1 x 1`` blocks: the diagonal is returned instead.
    """
    if cell.carry_size == 1:
        return _diagonal_jacobian(cell, params, s_prev, xw)
    carry = _unpack(s_prev, cell.carry_size)
    u = recurrent_matmul(cell, params, carry, xw)
    w = params["recurrent_kernel"]
    units = w.shape[0]
    w_diag = jnp.diagonal(w.reshape(units, -1, units), axis1=0, axis2=2).reshape(-1)

    def column(i):  # d (every part) / d (part i), per unit: (..., units, p)
        tangent_carry = tuple(jnp.full_like(c, 1.0 if j == i else 0.0)
                              for j, c in enumerate(carry))
        tangent_u = jnp.broadcast_to(w_diag if i == 0 else jnp.zeros_like(w_diag), u.shape)
        out, d_out = jax.jvp(lambda c, v: head(cell, c, xw, v), (carry, u),
                             (tangent_carry, tangent_u))
        return out, jnp.stack(d_out, axis=-1)

    columns = [column(i) for i in range(cell.carry_size)]
    return _pack(columns[0][0]), jnp.stack([d for _, d in columns], axis=-1)


def _gain_jacobian(cell, params, s_prev, xw):
    """``(F, c)``: ``c (..., 1)`` the mean over units of ``act'(z)``, the scalar gain of the
    stand-in ``c W_h^T`` for a SimpleRNN's Jacobian ``diag(act'(z)) W_h^T``."""
    carry = _unpack(s_prev, cell.carry_size)
    u = recurrent_matmul(cell, params, carry, xw)
    out, d_out = jax.jvp(lambda v: head(cell, carry, xw, v), (u,), (jnp.ones_like(u),))
    return _pack(out), jnp.mean(d_out[0], axis=-1, keepdims=True)


def _damped(jac, damping, full, blocks):
    """Scale each Jacobian to gain ``<= damping`` (diagonal: clip; blocks: by their
    Frobenius norm, a bound on the gain; full: spectral estimate)."""
    if damping is None:
        return jac
    if blocks:
        gain = jnp.sqrt(jnp.sum(jac * jac, axis=(-2, -1), keepdims=True))
        return jac * jnp.minimum(1.0, damping / jnp.maximum(gain, 1e-30))
    if not full:
        return jnp.clip(jac, -damping, damping)
    v = jnp.ones(jac.shape[:-1], jac.dtype)
    for _ in range(POWER_STEPS):  # v <- J^T J v, normalised: the top right singular vector
        v = jnp.einsum("...ji,...j->...i", jac, jnp.einsum("...ij,...j->...i", jac, v))
        v = v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-30)
    gain = jnp.linalg.norm(jnp.einsum("...ij,...j->...i", jac, v), axis=-1)
    return jac * jnp.minimum(1.0, damping / jnp.maximum(gain, 1e-30))[..., None, None]


def _linearize(cell, params, opts, s_prev, inputs):
    """``(F, J)`` of the masked step (``J = I`` at masked steps), damped; see ``newton``."""
    xw, mask = inputs
    if opts.method == "gain":
        return _linearize_gain(cell, params, opts, s_prev, inputs)
    jacobian = {"deer": _full_jacobian, "quasi": _diagonal_jacobian,
                "block": _block_jacobian}[opts.method]
    f, jac = jacobian(cell, params, s_prev, xw)
    extra = jac.ndim - f.ndim     # 0 diagonal, 1 full, 2 blocks
    jac = _damped(jac, opts.damping, extra == 1, extra == 2)
    if mask is None:
        return f, jac
    identity = (jnp.ones((), f.dtype) if extra == 0 else
                jnp.eye(jac.shape[-1], dtype=f.dtype))
    return jnp.where(mask, f, s_prev), jnp.where(mask[(...,) + (None,) * extra], jac, identity)


def _linearize_gain(cell, params, opts, s_prev, inputs):
    """``(F, g)`` with ``g (..., D)`` complex: the stand-in ``c_t W_h^T`` in ``W_h``'s
    eigenbasis, ``c_t λ_k`` (``I`` at masked steps: 1); ``|g|`` clipped to ``damping``."""
    xw, mask = inputs
    f, c = _gain_jacobian(cell, params, s_prev, xw)
    eigenvalues = jnp.linalg.eigvals(jax.lax.stop_gradient(params["recurrent_kernel"]))
    g = c * eigenvalues
    if opts.damping is not None:
        g = g * jnp.minimum(1.0, opts.damping / jnp.maximum(jnp.abs(g), 1e-30))
    if mask is None:
        return f, g
    return jnp.where(mask, f, s_prev), jnp.where(mask, g, jnp.ones((), g.dtype))


def _eigenbasis_correction(into, out_of, g, r):
    """``δ`` of ``δ_t = M_t δ_{t-1} + r_t`` with every ``M_t`` diagonal in one basis:
    rows ``r (T, batch, D)`` enter it by ``@ into``, the diagonal recurrence ``g`` runs
    there, and ``@ out_of`` brings them back (the real part: the imaginary one is rounding)."""
    return jnp.real(linear_recurrence(g, r.astype(into.dtype) @ into) @ out_of)


def _correction(opts, params, transposed: bool):
    """The ``correct`` argument of ``newton.solve`` for this layer's forward pass
    (``transposed`` False) or adjoint (True)."""
    if opts.method != "gain":
        return opts.correction()
    # Column states: J = diag(a) W^T and W^T = V Λ V^-1; row states enter the eigenbasis
    # by @ V^-T and leave by @ V^T. The adjoint's J^T = W diag(a) ~ c W = V^-T Λ V^T:
    # the roles swap.
    _, v = jnp.linalg.eig(jax.lax.stop_gradient(params["recurrent_kernel"]).T)
    v_inv_t = jnp.linalg.inv(v).T
    into, out_of = (v, v_inv_t) if transposed else (v_inv_t, v.T)
    return functools.partial(_eigenbasis_correction, into, out_of)


# ----------------------------------------------------------------------------- forward


def _chunked_guess(step, s0, inputs, chunk: int):
    """The recurrence run exactly within chunks of ``chunk`` steps, the first from ``s0``,
    the others from a zero state, all chunks side by side: ``chunk`` sequential steps
    -> ``(T, batch, D)``."""
    steps = inputs[0].shape[0]
    chunks = -(-steps // chunk)

    def by_chunk(a):  # (T, ...) -> (chunk, chunks, ...), zero-padded at the end
        if a is None:
            return None
        a = jnp.pad(a, [(0, chunks * chunk - steps)] + [(0, 0)] * (a.ndim - 1))
        return jnp.swapaxes(a.reshape(chunks, chunk, *a.shape[1:]), 0, 1)

    start = jnp.zeros((chunks,) + s0.shape, s0.dtype).at[0].set(s0)

    def one(s, inputs_k):
        s = step(s, inputs_k)
        return s, s

    _, states = jax.lax.scan(one, start, jax.tree.map(by_chunk, inputs))
    return jnp.swapaxes(states, 0, 1).reshape(chunks * chunk, *s0.shape)[:steps]


def _solve_layer(cell, opts, params, s0, xw, mask):
    """Newton solve of one layer -> ``(trajectory (T, batch, D), iterations, converged)``."""
    inputs = (xw, mask)
    step = functools.partial(_step, cell, params)
    if opts.init == "zeros":
        guess = jnp.zeros(xw.shape[:1] + s0.shape, s0.dtype)
    elif opts.init == "chunks":
        guess = _chunked_guess(step, s0, inputs, opts.chunk)
    else:
        guess = step(jnp.zeros(xw.shape[:1] + s0.shape, s0.dtype), inputs)
    return newton.solve(step, functools.partial(_linearize, cell, params, opts), s0, guess,
                        inputs, tol=opts.tol, scale=1.0, max_iters=opts.max_iters,
                        correct=_correction(opts, params, transposed=False))


def _states(cell, opts, params, s0, xw, mask):
    with jax.default_matmul_precision("highest"):
        return _solve_layer(cell, opts, params, s0, xw, mask)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _trajectory(cell, opts, params, s0, xw, mask):
    """``s0 (batch, D)``, ``xw (T, batch, gates*units)``, ``mask (T, batch, 1)`` or None
    -> the states ``(T, batch, D)``."""
    return _states(cell, opts, params, s0, xw, mask)


def _trajectory_fwd(cell, opts, params, s0, xw, mask):
    states = _states(cell, opts, params, s0, xw, mask)
    return states, (params, s0, xw, mask, states)


def _trajectory_bwd(cell, opts, residuals, d_states):
    params, s0, xw, mask, states = residuals
    with jax.default_matmul_precision("highest"):
        adjoint = _adjoint(cell, opts, params, xw, mask, states, d_states)[0]
        before = jnp.concatenate([s0[None], states[:-1]], axis=0)
        # Every step's local derivatives at once: the weight gradient becomes one
        # (T*batch)-row matmul; d_before[0] is the initial state's cotangent.
        _, pullback = jax.vjp(lambda p, b, x: _step(cell, p, b, (x, mask)), params, before, xw)
        d_params, d_before, d_xw = pullback(adjoint)
    return d_params, d_before[0], d_xw, None


_trajectory.defvjp(_trajectory_fwd, _trajectory_bwd)


# ----------------------------------------------------------------------------- backward


def _adjoint(cell, opts, params, xw, mask, states, d_states):
    """``λ_t = d_states_t + G_{t+1}^T λ_{t+1}`` for all t -> ``(λ, iterations, converged)``.

    Run as a forward recurrence in reversed time ``τ = T-1-t`` through ``newton.solve``:
    step ``τ`` applies the transposed Jacobian of the layer's step ``t+1`` (taken at
    ``states[t]`` with ``xw[t+1]``) by a VJP; the last step has no successor (its term
    multiplies a zero start, so any finite stand-in inputs do).
    """
    def later(a):  # a[t+1] at position t, a zero stand-in after the end
        return None if a is None else jnp.concatenate([a[1:], jnp.zeros_like(a[:1])], axis=0)

    inputs = jax.tree.map(lambda a: jnp.flip(a, 0), (states, later(xw), later(mask), d_states))

    def step(lam_prev, inputs):
        s, x, m, d = inputs
        _, pullback = jax.vjp(lambda b: _step(cell, params, b, (x, m)), s)
        return d + pullback(lam_prev)[0]

    def linearize(lam_prev, inputs):
        s, x, m, _ = inputs
        jac = _linearize(cell, params, opts, s, (x, m))[1]
        # The gain stand-in is diagonal in its basis; _correction transposes the basis.
        return step(lam_prev, inputs), jac if opts.method == "gain" else transpose(jac, s)

    zero = jnp.zeros_like(states[0])
    guess = step(jnp.zeros_like(states), inputs) if opts.init != "zeros" else jnp.zeros_like(states)
    scale = jnp.max(jnp.abs(d_states))
    lam, iterations, converged = newton.solve(step, linearize, zero, guess, inputs,
                                              tol=opts.tol, scale=scale,
                                              max_iters=opts.max_iters,
                                              correct=_correction(opts, params,
                                                                  transposed=True))
    return jnp.flip(lam, 0), iterations, converged


# ----------------------------------------------------------------------------- strategy


def _check_cell(cell, method: str = "auto"):
    if cell.name not in SPLIT_CELLS:
        raise ValueError(f"strategy: parallel has no recurrent split for cell {cell.name!r}; "
                         f"use 'scan'")
    if method == "gain" and cell.name != "simple":
        raise ValueError(f"strategy: parallel method 'gain' is for the SimpleRNN cell (its "
                         f"Jacobian is diag(a) W^T), not {cell.name!r}; use 'quasi' or 'block'")


def _run_layer(cell, params, xw, mask, carry, *, unroll=1, opts: Options):
    """One layer over ``xw (T, batch, gates*units)`` by Newton; ``ys (T, batch, units)``."""
    _check_cell(cell, opts.method)
    # The input kernel is used only by the hoisted projection outside the recurrence.
    step_params = {k: v for k, v in params.items() if k != "kernel"}
    units = carry[0].shape[-1]
    layer_opts = opts.for_layer(cell.carry_size * units, xw.dtype, cell.name)
    states = _trajectory(cell, layer_opts, step_params, _pack(carry), xw, mask)
    h = states[..., :units]
    ys = h if mask is None else jnp.where(mask, h, jnp.zeros_like(h))
    return ys, _unpack(states[-1], cell.carry_size)


def run_stack(cell, layers, xs, mask, carries, between, *, unroll=1, **options):
    """The strategy (``registry.RunStack``); ``options`` are ``Options`` fields."""
    opts = Options(**options)
    return layer_by_layer(functools.partial(_run_layer, opts=opts))(
        cell, layers, xs, mask, carries, between, unroll=unroll)


register("parallel", run_stack)
run_stack_quasi = register("parallel_quasi", functools.partial(run_stack, method="quasi"))
run_stack_structured = register("parallel_structured",
                                functools.partial(run_stack, method="structured"))


def parallel_solve(cell, params, xs, mask=None, carry=None, **options):
    """Solve one layer and report how: for diagnostics and benchmarks (not differentiable).

    Args:
      cell: a ``cells.Cell``; params: its parameter dict (Keras layout).
      xs: ``(time, batch, features)`` time-major input of the layer.
      mask: ``(time, batch)`` bool, True at real steps, or None.
      carry: the initial carry (tuple of ``(batch, units)``) or None for zeros.
      options: ``Options`` fields (method, tol, max_iters, damping, init, elk, chunk).
    Returns:
      ``(states, iterations, converged)``: ``states (time, batch, D)`` with ``D = units``
      (h) or ``2*units`` (h then c, LSTM); ``iterations`` the Newton updates done (int32);
      ``converged`` False when the sequential finish completed the trajectory.
    """
    _check_cell(cell, options.get("method", "auto"))
    units = params["recurrent_kernel"].shape[0]
    if carry is None:
        carry = cell.initial_carry(xs.shape[1:2], units, xs.dtype)
    layer_opts = Options(**options).for_layer(cell.carry_size * units, xs.dtype, cell.name)
    step_params = {k: v for k, v in params.items() if k != "kernel"}
    with jax.default_matmul_precision("highest"):
        return _solve_layer(cell, layer_opts, step_params, _pack(carry),
                            cell.project(params, xs), None if mask is None else mask[..., None])
