"""``"cpu_native"``: each layer's whole time loop in one compiled CPU call.

XLA runs a scan step's ``(batch, units) @ (units, gates*units)`` matmul on one core,
inside a loop iteration's bookkeeping, at ~38 GFLOP/s on the development CPU
(``bench/loop_overhead.py``). The kernels in ``native/`` run all ``T`` steps of a layer
in one XLA FFI call: the batch rows are independent recurrences, so they are split into
one chunk per thread of XLA's CPU thread pool, each chunk running its steps with
register-blocked row matmuls and no synchronisation between chunks (chunks are claimed,
so a call on a busy, shared pool runs unclaimed chunks itself).

SimpleRNN (``simple_rnn.cc``). Training forward: ``xw = xs W_x + b`` for all steps (one
XLA matmul), then the kernel: the states ``hs (time, batch, units)`` (held through masked
steps); outputs ``where(mask, hs, 0)``. Backward (``jax.custom_vjp`` over the whole
layer): the kernel runs the reverse loop ``da_t = (dh + dy_t) * act'(h_t)``,
``dh <- da_t W_h^T`` (``act'`` read off the stored ``h_t``, as ``scan_vjp``) and, every 16
steps while their rows are still in cache, adds those steps' ``H_prev^T dA`` and
``X^T dA`` to ``dW_h`` and ``dW_x``; it returns them with ``dA`` and the initial state's
gradient. ``db = sum(dA)`` and the input's gradient ``dA W_x^T`` (one large matmul) are
left to XLA. Without differentiation (inference) it runs ``gated.cc``'s kernel instead,
which forms each step's input term itself, as for the gated cells.

LSTM and GRU (both ``reset_after`` variants; ``gated.cc``): each step's input term
``x_t W_x + b`` is formed in the kernel, so no ``(time, batch, gates*units)`` projection
is written and read back, then all gates' recurrent term in one row matmul against
``W_h (units, gates*units)``. Without differentiation the kernel keeps nothing but the
states, and of the top layer of a stack read only through its final state
(``stacked_rnn`` without ``return_sequences``) only that state; a stack of two or more
layers without dropout between them runs in one call whose layers advance a step at a
time together, each reading the state the layer below has just formed, so no layer
below the top writes its ``(time, batch, units)`` states (at batch 256, T 500 those were
tens of MB a layer, page-faulted in anew each call under glibc's default malloc); under
``jax.grad`` it
also stores each step's gate activations (and the LSTM's cell state), from which the
backward kernel runs the reverse loop, forms the input's gradient per step and sums
``dW_h``, ``dW_x`` and the biases' gradients per block of about 64 rows (no
``(time, batch, gates*units)`` gradient array is written out).

The kernels ask Linux for transparent huge pages on the large outputs they write in full
(the states, the stash, the input's gradient): XLA allocates them anew per call, and
under glibc's default settings their first writes otherwise fault in 4 KB pages one by
one (``common.h``'s ``prefer_huge_pages``; a hint, inert where THP is off).

What it covers: the three cells (tanh or relu) in float32 or float64, on the CPU
backend, with masks, initial states, dropout between layers and both directions. Anything
else — other dtypes, a GPU or TPU default backend, or a machine where the kernels cannot
be built (``native.available()`` says why; one warning per process) — runs as
``"scan_vjp"``, which gives the same numbers. Forward-mode differentiation (``jax.jvp``)
is not supported (a ``custom_vjp``); ``jax.vmap`` runs the kernel once per mapped element.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

from stackrnn_jax import native
from stackrnn_jax.strategies import scan_vjp
from stackrnn_jax.strategies.common import layer_by_layer
from stackrnn_jax.strategies.registry import register

ACTIVATION_CODES = {"tanh": 0, "relu": 1}   # the kernels' ``activation`` attribute
DTYPES = (jnp.float32, jnp.float64)
LSTM, GRU_AFTER, GRU_BEFORE, SIMPLE = 0, 1, 2, 3   # gated.cc's ``cell`` attribute
STASH_WIDTH = {LSTM: 4, GRU_AFTER: 4, GRU_BEFORE: 4}  # stored values per unit and step
CHECKPOINT_STEPS = 16  # the LSTM's stash keeps c every this many steps (gated.cc)


def _stash_size(code, time, batch, units) -> int:
    """The values in a layer's stash (gated.cc's stash_size): the gates of every step, then
    the LSTM's cell state after every ``CHECKPOINT_STEPS``-th step."""
    checkpoints = time // CHECKPOINT_STEPS if code == LSTM else 0
    return (time * STASH_WIDTH[code] + checkpoints) * batch * units


def _ffi(name, outputs, *args, **attributes):
    call = jax.ffi.ffi_call(name, outputs, vmap_method="sequential")
    return call(*args, **{key: np.int64(value) for key, value in attributes.items()})


def _forward(activation, masked, w_x, b, w_h, h0, xs, mask):
    """``(ys, final), hs``: outputs, the carry after the last step, the states."""
    xw = xs @ w_x + b  # the input term of every step: one large matmul
    hs = _ffi("stackrnn_simple_forward", jax.ShapeDtypeStruct(xw.shape, xw.dtype),
              xw, h0, w_h, mask, activation=ACTIVATION_CODES[activation])
    ys = jnp.where(mask[..., None], hs, jnp.zeros_like(hs)) if masked else hs
    return (ys, hs[-1]), hs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _layer(activation, masked, sequences, w_x, b, w_h, h0, xs, mask):
    """One layer: ``w_x (inputs, units)``, ``b (units,)``, ``w_h (units, units)``,
    ``h0 (batch, units)``, ``xs (time, batch, inputs)``, ``mask (time, batch)`` bool (all
    True when not ``masked``) -> ``(ys, final)``: ``ys = where(mask, hs, 0)`` (None when
    not ``sequences``: the caller reads the final state only) and the carry after the
    last step (``hs[-1]``). Without differentiation it runs gated.cc's inference kernel,
    which forms each step's input term itself (no hoisted ``(time, batch, units)``
    projection written and read back)."""
    ys, (final,) = _gated_forward(SIMPLE, activation, masked, False, w_x, b, w_h, (h0,), xs,
                                  mask, sequences)[0]
    return ys, final


def _layer_fwd(activation, masked, sequences, w_x, b, w_h, h0, xs, mask):
    # symbolic_zeros=True hands the primals over wrapped (value, perturbed).
    w_x, b, w_h, h0, xs, mask = (p.value for p in (w_x, b, w_h, h0, xs, mask))
    (ys, final), hs = _forward(activation, masked, w_x, b, w_h, h0, xs, mask)
    return (ys if sequences else None, final), (w_x, w_h, h0, xs, hs, mask)


def _layer_bwd(activation, masked, sequences, residuals, cotangents):
    w_x, w_h, h0, xs, hs, mask = residuals
    d_ys, d_final = cotangents
    # An unused output's cotangent arrives as a symbolic zero: a layer read only through
    # its final state (the top of a classifier) passes no (time, batch, units) zeros.
    with_dy = sequences and not isinstance(d_ys, SymbolicZero)
    if isinstance(d_final, SymbolicZero):
        d_final = jnp.zeros_like(h0)
    da, dh0, d_wh, d_wx = _ffi(
        "stackrnn_simple_backward",
        tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (hs, h0, w_h, w_x)),
        hs, h0, xs, d_ys if with_dy else hs, d_final, w_h, mask,
        activation=ACTIVATION_CODES[activation], with_dy=with_dy)
    # The kernel summed H_prev^T dA and X^T dA while each block of steps was in cache;
    # the input's gradient is one large matmul.
    return d_wx, da.sum(axis=(0, 1)), d_wh, dh0, da @ w_x.T, None


_layer.defvjp(_layer_fwd, _layer_bwd, symbolic_zeros=True)


def _code(cell) -> int:
    """gated.cc's ``cell`` attribute for a cell."""
    if cell.name == "simple":
        return SIMPLE
    return LSTM if cell.name == "lstm" else (GRU_AFTER if cell.reset_after else GRU_BEFORE)


def _split_bias(code, bias):
    """``(b_in, b_rec)``: reset_after's two bias rows, else the bias and zeros."""
    return (bias[0], bias[1]) if code == GRU_AFTER else (bias, jnp.zeros_like(bias))


def _gated_forward(code, activation, masked, train, w_x, bias, w_h, carry, xs, mask,
                   sequences=True):
    """``(ys, final), (hs, stash)``; the stash (what the backward kernel reads) only when
    ``train``, else None. Inference without ``sequences``: ys and hs are None, and the
    kernel writes the final state alone."""
    b_in, b_rec = _split_bias(code, bias)
    h0 = carry[0]
    c0 = carry[1] if code == LSTM else h0  # a GRU's c0 is not read
    time, batch = xs.shape[:2]
    units = h0.shape[-1]
    state = jax.ShapeDtypeStruct((batch, units), xs.dtype)
    if not (train or sequences):
        h_last, c_last = _ffi("stackrnn_gated_infer", (state, state), xs, w_x, b_in, w_h,
                              b_rec, h0, c0, mask, cell=code,
                              activation=ACTIVATION_CODES[activation], sequences=False)
        return (None, (h_last, c_last) if code == LSTM else (h_last,)), (None, None)
    shapes = [jax.ShapeDtypeStruct((time, batch, units), xs.dtype), state]
    attributes = {} if train else {"sequences": True}
    if train:
        shapes.append(jax.ShapeDtypeStruct((_stash_size(code, time, batch, units),), xs.dtype))
    outputs = _ffi("stackrnn_gated_train" if train else "stackrnn_gated_infer", tuple(shapes),
                   xs, w_x, b_in, w_h, b_rec, h0, c0, mask, cell=code,
                   activation=ACTIVATION_CODES[activation], **attributes)
    hs, c_last = outputs[:2]
    final = (hs[-1], c_last) if code == LSTM else (hs[-1],)
    ys = jnp.where(mask[..., None], hs, jnp.zeros_like(hs)) if masked else hs
    return (ys, final), (hs, outputs[2] if train else None)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def _gated_layer(code, activation, masked, sequences, w_x, bias, w_h, carry, xs, mask):
    """One LSTM (``code`` 0) or GRU layer (1: reset_after, 2: reset_before):
    ``w_x (inputs, G*units)``, ``bias`` (Keras layout), ``w_h (units, G*units)``, ``carry``
    ``(h0,)`` or ``(h0, c0)`` each ``(batch, units)``, ``xs (time, batch, inputs)``, ``mask
    (time, batch)`` bool -> ``(ys, final carry)`` (ys None when not ``sequences``)."""
    return _gated_forward(code, activation, masked, False, w_x, bias, w_h, carry, xs, mask,
                          sequences)[0]


def _gated_fwd(code, activation, masked, sequences, w_x, bias, w_h, carry, xs, mask):
    w_x, bias, w_h, xs, mask = (p.value for p in (w_x, bias, w_h, xs, mask))
    carry = tuple(p.value for p in carry)
    (ys, final), (hs, stash) = _gated_forward(code, activation, masked, True, w_x, bias, w_h,
                                              carry, xs, mask)
    return (ys if sequences else None, final), (w_x, w_h, carry, xs, hs, stash, mask)


def _gated_bwd(code, activation, masked, sequences, residuals, cotangents):
    w_x, w_h, carry, xs, hs, stash, mask = residuals
    d_ys, d_final = cotangents
    with_dy = sequences and not isinstance(d_ys, SymbolicZero)
    d_final = tuple(jnp.zeros_like(c) if isinstance(d, SymbolicZero) else d
                    for d, c in zip(d_final, carry))
    h0 = carry[0]
    c0, dc_last = (carry[1], d_final[1]) if code == LSTM else (h0, d_final[0])
    d_xs, dh0, dc0, d_wh, d_wx, db_in, db_rec = _ffi(
        "stackrnn_gated_backward",
        tuple(jax.ShapeDtypeStruct(a.shape, a.dtype) for a in
              (xs, h0, h0, w_h, w_x, w_h[0], w_h[0])),
        xs, w_x, w_h, h0, c0, mask, hs, stash, d_ys if with_dy else hs, d_final[0], dc_last,
        cell=code, activation=ACTIVATION_CODES[activation], with_dy=with_dy)
    d_bias = jnp.stack([db_in, db_rec]) if code == GRU_AFTER else db_in
    d_carry = (dh0, dc0) if code == LSTM else (dh0,)
    return d_wx, d_bias, d_wh, d_carry, d_xs, None


_gated_layer.defvjp(_gated_fwd, _gated_bwd, symbolic_zeros=True)


def covers(cell, dtype) -> bool:
    """Whether a layer of ``cell`` in ``dtype`` runs in the kernel (else as scan_vjp)."""
    return (cell.name in ("simple", "lstm", "gru") and cell.activation in ACTIVATION_CODES
            and jnp.dtype(dtype) in map(jnp.dtype, DTYPES)
            and jax.default_backend() == "cpu" and native.warn_unavailable())


def run_layer(cell, params, xs, mask, carry, *, unroll=1, sequences=True):
    """One layer over its input ``xs (time, batch, features)``; ``mask (time, batch, 1)`` or
    None. The layer's custom VJP spans the projection too, so that the backward kernel
    also forms ``dW_x`` (the gated kernels also form the projection itself). Not
    ``sequences``: the caller reads only the final carry; ys may then be None."""
    dtype = jnp.result_type(xs, carry[0], params["recurrent_kernel"])
    if not covers(cell, dtype):
        return scan_vjp.run_layer(cell, params, cell.project(params, xs), mask, carry,
                                  unroll=unroll)
    steps = jnp.ones(xs.shape[:2], bool) if mask is None else mask[..., 0]
    weights = (params[k].astype(dtype) for k in ("kernel", "bias", "recurrent_kernel"))
    if cell.name == "simple":
        ys, final = _layer(cell.activation, mask is not None, sequences, *weights,
                           carry[0].astype(dtype), xs.astype(dtype), steps)
        return ys, (final,)
    return _gated_layer(_code(cell), cell.activation, mask is not None, sequences, *weights,
                        tuple(c.astype(dtype) for c in carry), xs.astype(dtype), steps)


_by_layer = layer_by_layer(run_layer, projected=False, final_only=True)


def _infer_stack(cell, masked, sequences, layers, xs, mask, carries):
    """Every layer of a one-dtype stack in one ``gated.cc`` call (``stackrnn_gated_infer_stack``):
    the layers advance a step at a time together, so no layer below the top writes its
    ``(time, batch, units)`` states. Same ``(ys, finals)`` as the layer-by-layer path."""
    code = _code(cell)
    weights, finals_shapes = [], []
    for params, carry in zip(layers, carries, strict=True):
        b_in, b_rec = _split_bias(code, params["bias"])
        h0 = carry[0]
        weights += [params["kernel"], b_in, params["recurrent_kernel"], b_rec, h0,
                    carry[1] if code == LSTM else h0]
        finals_shapes += [jax.ShapeDtypeStruct(h0.shape, xs.dtype)] * 2
    time, batch = xs.shape[:2]
    top_units = carries[-1][0].shape[-1]
    shapes = finals_shapes + ([jax.ShapeDtypeStruct((time, batch, top_units), xs.dtype)]
                              if sequences else [])
    outputs = _ffi("stackrnn_gated_infer_stack", tuple(shapes), xs, mask, *weights, cell=code,
                   activation=ACTIVATION_CODES[cell.activation], sequences=sequences)
    finals = [(outputs[2 * i], outputs[2 * i + 1]) if code == LSTM else (outputs[2 * i],)
              for i in range(len(layers))]
    if not sequences:
        return None, finals
    hs = outputs[-1]
    return (jnp.where(mask[..., None], hs, jnp.zeros_like(hs)) if masked else hs), finals


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _fused_stack(cell, masked, sequences, layers, xs, mask, carries):
    """A unidirectional stack without dropout: one call for all layers without
    differentiation (``_infer_stack``); under ``jax.grad`` the layer-by-layer kernels,
    whose forward pass keeps what their backward pass reads."""
    return _infer_stack(cell, masked, sequences, layers, xs, mask, carries)


def _by_layer_stack(cell, masked, sequences, layers, xs, mask, carries):
    between = [None] * (len(layers) - 1)
    return _by_layer(cell, layers, xs, mask if masked else None, carries, between,
                     sequences=sequences)


def _fused_fwd(cell, masked, sequences, layers, xs, mask, carries):
    out, backward = jax.vjp(
        lambda ls, x, cs: _by_layer_stack(cell, masked, sequences, ls, x, mask, cs),
        layers, xs, carries)
    return out, backward  # jax.vjp's function is a pytree of its residuals


def _fused_bwd(cell, masked, sequences, backward, cotangents):
    d_layers, d_xs, d_carries = backward(cotangents)
    return d_layers, d_xs, None, d_carries


_fused_stack.defvjp(_fused_fwd, _fused_bwd)


def _stack_dtype(layers, xs, carries):
    """The one dtype of a stack's inputs, weights and carries, or None if they differ."""
    arrays = [xs, *(p[k] for p in layers for k in ("kernel", "recurrent_kernel", "bias")),
              *(c for carry in carries for c in carry)]
    dtypes = {jnp.dtype(a.dtype) for a in arrays}
    return dtypes.pop() if len(dtypes) == 1 else None


def run_stack(cell, layers, xs, mask, carries, between, *, unroll=1, sequences=True):
    """The stack layer by layer (``run_layer``), or, for two or more layers of one dtype
    with no dropout between them, ``_fused_stack``: its inference runs all layers in one
    kernel call. ``mask (time, batch)`` or None; ``sequences``: whether the top layer's
    outputs are read (else ys may be None)."""
    dtype = _stack_dtype(layers, xs, carries)
    if (len(layers) < 2 or any(b is not None for b in between) or dtype is None
            or not covers(cell, dtype)):
        return _by_layer(cell, layers, xs, mask, carries, between, unroll=unroll,
                         sequences=sequences)
    steps = jnp.ones(xs.shape[:2], bool) if mask is None else mask
    ys, finals = _fused_stack(cell, mask is not None, sequences, list(layers), xs, steps,
                              [tuple(c) for c in carries])
    return ys, finals


register("cpu_native", run_stack)
