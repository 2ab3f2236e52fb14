"""A layer's whole time loop in one ``pallas_call``: the forward and the reverse-time kernel.

The batch rows are independent recurrences, so the grid splits them into blocks of
``block_rows`` rows, one program per block. A program loads the recurrent weights once,
then runs all ``T`` steps in a ``lax.fori_loop`` inside the kernel, reading one step's
input term and writing one step's state per iteration (no XLA loop, one launch).

Layout (padded by the caller, ``strategies/pallas.py``)::

    xw      (T, Bp, G, Up)   input terms x_t W_x + b, gate by gate
    mask    (T, Bp, 1) int32 1 at real steps; or None (every step real)
    w       (G, Up, Up)      w[k] = W_h[:, k*u:(k+1)*u]; the reverse kernel reads w[k]^T
    b_rec   (G, 1, Up)       the GRU's recurrent bias (reset_after), or None
    carry   C arrays (Bp, Up) (C = 1, or 2 for the LSTM's (h, c))

``Up`` and ``block_rows`` are powers of two of at least 16 and ``Bp`` is a multiple of
``block_rows``: Triton's tensors have power-of-two sizes and its ``dot`` wants every
dimension >= 16. Inside the kernels the state is float32 (float64 for float64 inputs),
whatever the inputs' dtype.

``interpret=True`` runs the same kernels through Pallas' interpreter (XLA ops on any
backend: how the CPU tests check them); ``False`` lowers them with Triton for a GPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from stackrnn_jax.cells import Cell
from stackrnn_jax.kernels import gate_steps

MIN_TILE = 16  # Triton's dot: every dimension at least 16


@dataclasses.dataclass(frozen=True)
class Config:
    """Static settings of one layer's kernels (hashable: a ``custom_vjp`` static argument)."""

    cell: Cell
    block_rows: int = MIN_TILE
    interpret: bool = True
    num_warps: int = 4

    @property
    def saved(self) -> int:
        return gate_steps.SAVED[gate_steps.kind(self.cell)]


def state_dtype(dtype):
    """The dtype the kernels carry the state and accumulate in."""
    return jnp.float64 if jnp.dtype(dtype) == jnp.float64 else jnp.float32


def check_layout(config: Config, w, b_rec, carry, xw, mask) -> None:
    """ValueError unless the arrays have the padded layout of the module docstring."""
    problems = []
    if xw.ndim != 4 or xw.shape[2] != config.cell.gates:
        problems.append(f"xw shape {xw.shape}, expected (T, Bp, {config.cell.gates}, Up)")
    else:
        steps, rows, gates, units = xw.shape
        if units < MIN_TILE or units & (units - 1):
            problems.append(f"units {units} is not a power of two >= {MIN_TILE}")
        if rows % config.block_rows:
            problems.append(f"rows {rows} are not a multiple of block_rows {config.block_rows}")
        if w.shape != (gates, units, units):
            problems.append(f"w shape {w.shape}, expected {(gates, units, units)}")
        if (b_rec is not None) != (gate_steps.kind(config.cell) == "gru_after") or (
                b_rec is not None and b_rec.shape != (gates, 1, units)):
            problems.append(f"b_rec {None if b_rec is None else b_rec.shape} does not fit "
                            f"the cell")
        if len(carry) != config.cell.carry_size or any(c.shape != (rows, units) for c in carry):
            problems.append(f"carry shapes {[c.shape for c in carry]}, expected "
                            f"{config.cell.carry_size} x {(rows, units)}")
        if mask is not None and mask.shape != (steps, rows, 1):
            problems.append(f"mask shape {mask.shape}, expected {(steps, rows, 1)}")
    if problems:
        raise ValueError("pallas kernels: " + "; ".join(problems))


def _specs(steps, block_rows, units, gates):
    """BlockSpecs: per-step arrays split by row block, weights whole."""
    return {
        "steps": pl.BlockSpec((steps, block_rows, units), lambda i: (0, i, 0)),
        "gated": lambda n: pl.BlockSpec((steps, block_rows, n, units), lambda i: (0, i, 0, 0)),
        "mask": pl.BlockSpec((steps, block_rows, 1), lambda i: (0, i, 0)),
        "rows": pl.BlockSpec((block_rows, units), lambda i: (i, 0)),
        "weights": pl.BlockSpec((gates, units, units), lambda i: (0, 0, 0)),
        "bias": pl.BlockSpec((gates, 1, units), lambda i: (0, 0, 0)),
    }


def _call(config, kernel, out_shape, in_specs, out_specs, grid, name):
    return pl.pallas_call(
        kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=out_specs,
        interpret=config.interpret, name=name,
        compiler_params=plgpu.CompilerParams(num_warps=config.num_warps, num_stages=2))


def forward(config: Config, w, b_rec, carry, xw, mask, *, save: bool):
    """All steps forward: ``(states, saved)``.

    ``states``: C arrays ``(T, Bp, Up)``, the carry after each step (held through masked
    steps), in the state dtype; ``saved``: ``(T, Bp, S, Up)`` tiles for the reverse
    kernel (``gate_steps.SAVED``), or None unless ``save``.
    """
    check_layout(config, w, b_rec, carry, xw, mask)
    steps, rows, gates, units = xw.shape
    dtype = state_dtype(xw.dtype)
    spec = _specs(steps, config.block_rows, units, gates)
    save = save and config.saved > 0
    kernel = functools.partial(_forward_kernel, cell=config.cell, masked=mask is not None,
                               has_bias=b_rec is not None, save=save)
    inputs = [(xw, spec["gated"](gates)), (mask, spec["mask"]), (w, spec["weights"]),
              (b_rec, spec["bias"])] + [(c, spec["rows"]) for c in carry]
    inputs = [(a, s) for a, s in inputs if a is not None]
    out_shape = [jax.ShapeDtypeStruct((steps, rows, units), dtype) for _ in carry]
    out_specs = [spec["steps"] for _ in carry]
    if save:
        out_shape.append(jax.ShapeDtypeStruct((steps, rows, config.saved, units), dtype))
        out_specs.append(spec["gated"](config.saved))
    outs = _call(config, kernel, out_shape, [s for _, s in inputs], out_specs,
                 (rows // config.block_rows,), f"stackrnn_{config.cell.name}_forward")(
        *(a for a, _ in inputs))
    return tuple(outs[:len(carry)]), (outs[-1] if save else None)


def _forward_kernel(*refs, cell, masked, has_bias, save):
    refs = list(refs)
    xw_ref = refs.pop(0)
    mask_ref = refs.pop(0) if masked else None
    w_ref = refs.pop(0)
    b_ref = refs.pop(0) if has_bias else None
    carry_refs = [refs.pop(0) for _ in range(cell.carry_size)]
    state_refs = [refs.pop(0) for _ in range(cell.carry_size)]
    saved_ref = refs.pop(0) if save else None
    gates, dtype = w_ref.shape[0], state_refs[0].dtype
    # The weights stay on chip for all steps.
    w = [w_ref[k] for k in range(gates)]
    b = None if b_ref is None else [b_ref[k].astype(dtype) for k in range(gates)]

    def body(t, carry):
        xw = [xw_ref[t, :, k, :].astype(dtype) for k in range(gates)]
        new, saved = gate_steps.forward_step(cell, w, b, carry, xw)
        if masked:
            real = mask_ref[t] != 0
            new = tuple(jnp.where(real, n, o) for n, o in zip(new, carry))
        for ref, value in zip(state_refs, new):
            ref[t] = value
        if save:
            for k, value in enumerate(saved):
                saved_ref[t, :, k, :] = value
        return new

    jax.lax.fori_loop(0, xw_ref.shape[0], body,
                      tuple(ref[...].astype(dtype) for ref in carry_refs))


def backward(config: Config, w, carry, states, saved, dys, dfinal, mask):
    """All steps in reverse: ``(dxw, dcarry)``.

    ``states``/``saved``: ``forward``'s outputs; ``dys``: ``(T, Bp, Up)`` cotangent of the
    outputs, or None (all zero); ``dfinal``: C arrays ``(Bp, Up)``, the cotangent of the
    final carry. ``dxw (T, Bp, G, Up)`` is zero at masked steps; ``dcarry`` is the
    cotangent of the initial carry. Both in the state dtype.
    """
    steps, rows, units = states[0].shape
    gates = w.shape[0]
    dtype = states[0].dtype
    spec = _specs(steps, config.block_rows, units, gates)
    kernel = functools.partial(_backward_kernel, cell=config.cell, masked=mask is not None,
                               with_dy=dys is not None, saved_count=config.saved)
    inputs = ([(jnp.swapaxes(w, 1, 2), spec["weights"]), (mask, spec["mask"])]
              + [(c, spec["rows"]) for c in carry] + [(s, spec["steps"]) for s in states]
              + [(saved, spec["gated"](config.saved) if config.saved else None),
                 (dys, spec["steps"])] + [(d, spec["rows"]) for d in dfinal])
    inputs = [(a, s) for a, s in inputs if a is not None]
    out_shape = ([jax.ShapeDtypeStruct((steps, rows, gates, units), dtype)]
                 + [jax.ShapeDtypeStruct((rows, units), dtype) for _ in carry])
    out_specs = [spec["gated"](gates)] + [spec["rows"] for _ in carry]
    dxw, *dcarry = _call(config, kernel, out_shape, [s for _, s in inputs], out_specs,
                         (rows // config.block_rows,),
                         f"stackrnn_{config.cell.name}_backward")(*(a for a, _ in inputs))
    return dxw, tuple(dcarry)


def _backward_kernel(*refs, cell, masked, with_dy, saved_count):
    refs = list(refs)
    w_t_ref = refs.pop(0)
    mask_ref = refs.pop(0) if masked else None
    carry_refs = [refs.pop(0) for _ in range(cell.carry_size)]
    state_refs = [refs.pop(0) for _ in range(cell.carry_size)]
    saved_ref = refs.pop(0) if saved_count else None
    dy_ref = refs.pop(0) if with_dy else None
    dfinal_refs = [refs.pop(0) for _ in range(cell.carry_size)]
    dxw_ref, *dcarry_refs = refs
    gates, dtype = w_t_ref.shape[0], state_refs[0].dtype
    steps = state_refs[0].shape[0]
    w_t = [w_t_ref[k] for k in range(gates)]
    needs_prev = gate_steps.kind(cell) != "simple"  # the SimpleRNN reads only h_t
    initial = [ref[...].astype(dtype) for ref in carry_refs] if needs_prev else []

    def body(s, dcarry):
        t = steps - 1 - s
        new = tuple(ref[t] for ref in state_refs)
        prev = tuple(jnp.where(t > 0, ref[jnp.maximum(t - 1, 0)], c0)
                     for ref, c0 in zip(state_refs, initial))
        saved = [saved_ref[t, :, k, :] for k in range(saved_count)]
        dh = dcarry[0] + dy_ref[t].astype(dtype) if with_dy else dcarry[0]
        dprev, dxw = gate_steps.backward_step(cell, w_t, prev, new, saved, (dh, *dcarry[1:]))
        if masked:
            # A masked step held the carry and emitted zero: its cotangent passes through.
            real = mask_ref[t] != 0
            dprev = tuple(jnp.where(real, a, b) for a, b in zip(dprev, dcarry))
            dxw = [jnp.where(real, d, 0.0) for d in dxw]
        for k, value in enumerate(dxw):
            dxw_ref[t, :, k, :] = value
        return dprev

    final = jax.lax.fori_loop(0, steps, body,
                              tuple(ref[...].astype(dtype) for ref in dfinal_refs))
    for ref, value in zip(dcarry_refs, final):
        ref[...] = value
