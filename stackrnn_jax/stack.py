"""The functional face: stacked (optionally bidirectional) RNNs as pure functions.

``params`` is a plain pytree: a list with one entry per layer, each entry either a
Keras-shaped dict ``{"kernel", "recurrent_kernel", "bias"}`` or, for a bidirectional
layer, ``{"forward": dict, "backward": dict}``. ``stacked_rnn`` works under
``jax.jit``, ``jax.grad`` and ``jax.vmap``; the Flax module in ``nn.py`` calls it too.

Validation of user input happens here, once; the strategies below trust their inputs.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from stackrnn_jax.cells import Cell, make_cell
from stackrnn_jax.strategies import get_strategy
from stackrnn_jax.strategies.registry import takes_sequences

PADDING_SIDES = ("post", "pre")
MERGE_MODES = ("concat", "sum")
POOLINGS = ("max", "mean")


def init_params(key, input_size: int, units: int | Sequence[int], *, cell: str = "simple",
                bidirectional: bool = False, merge: str = "concat", reset_after: bool = True,
                unit_forget_bias: bool = True, dtype=jnp.float32) -> list:
    """Initial parameters of a stack, Keras initialisers.

    Args:
      key: a ``jax.random`` key.
      input_size: features of the input ``x (batch, time, input_size)``.
      units: hidden size of every layer (int, with one layer) or one int per layer.
      cell: ``"simple"``, ``"lstm"`` or ``"gru"``.
      bidirectional / merge: forward + backward pass per layer, outputs concatenated or summed.
      reset_after, unit_forget_bias: GRU and LSTM variants (see ``cells.py``).
    Returns:
      a list of per-layer parameter dicts (see the module docstring).
    """
    units = _units_tuple(units)
    if input_size < 1:
        raise ValueError(f"input_size: expected a positive feature count, got {input_size}")
    _check_choice("merge", merge, MERGE_MODES)
    the_cell = make_cell(cell, reset_after=reset_after, unit_forget_bias=unit_forget_bias)
    layers: list[dict] = []
    width = input_size
    for layer_units, layer_key in zip(units, jax.random.split(key, len(units))):
        if bidirectional:
            fw_key, bw_key = jax.random.split(layer_key)
            layers.append({"forward": the_cell.init(fw_key, width, layer_units, dtype),
                           "backward": the_cell.init(bw_key, width, layer_units, dtype)})
            width = layer_units * (2 if merge == "concat" else 1)
        else:
            layers.append(the_cell.init(layer_key, width, layer_units, dtype))
            width = layer_units
    return layers


def stacked_rnn(params, x, *, cell: str = "simple", lengths=None, padding: str = "post",
                initial_state=None, return_sequences: bool = False, return_state: bool = False,
                strategy: str = "auto", unroll: int = 1, dropout: float = 0.0, dropout_rng=None,
                merge: str = "concat", activation: str = "tanh", compute_dtype=None,
                strategy_options: dict | None = None, check_lengths: bool = False):
    """Run a stacked RNN over a batch of sequences.

    Args:
      params: per-layer parameters (``init_params`` or Keras weights).
      x: ``(batch, time, features)``, or ``(time, features)`` for one sequence.
      cell: ``"simple"``, ``"lstm"`` or ``"gru"``; a GRU's ``reset_after`` is read from its bias.
      lengths: ``(batch,)`` ints, the real steps of each sequence; None means all ``time`` are real.
        Values outside ``[0, time]`` are refused when known (eager calls); under ``jax.jit``
        they are clamped to it, unless ``check_lengths``.
      padding: where the padding of a shorter sequence sits: ``"post"`` (right) or ``"pre"``
        (left, as Keras ``pad_sequences``). Either way the final state equals the state of
        the unpadded sequence, and padded output positions are zero.
      initial_state: one state per layer (see Returns), or None for zeros.
      return_sequences: return the top layer's outputs at every step, not only the last.
      return_state: also return the final state of every layer.
      strategy: how the steps execute (``strategies.STRATEGIES``); all compute the same
        function (float64: equal to 1e-10; float32: to ~1e-5, rounding differs).
        ``"auto"`` (default) runs the measured-fastest for the backend, cell and shape
        (``explain_auto`` says which and why); ``"scan"`` is the plain ``lax.scan``, and the
        one to pick for forward-mode differentiation (``jax.jvp``), which the custom-VJP
        strategies ``"auto"`` may choose (``"cpu_native"``, ``"scan_vjp"``) do not support.
      unroll: timesteps per loop iteration for ``"scan"``; with ``"auto"``, the default 1
        lets the chosen rule set it (``auto.RULES``: scan at 16 on a GPU where measured).
      dropout, dropout_rng: dropout rate on the inputs of layers 2..L; applied only when a
        ``dropout_rng`` key is given (training).
      merge: ``"concat"`` or ``"sum"`` of the two directions of a bidirectional layer.
      activation: ``"tanh"`` or ``"relu"`` (the cell's output nonlinearity).
      compute_dtype: e.g. ``jnp.bfloat16`` to compute in a lower precision than the params.
      strategy_options: keyword arguments for the strategy itself (e.g. ``{"method":
        "quasi"}`` for ``"parallel"``); None for none.
      check_lengths: also check traced ``lengths`` with ``jax.experimental.checkify``; the
        caller must then run the function under ``checkify.checkify`` (see the README).

    Returns:
      ``y``: ``(batch, time, out)`` with ``return_sequences``, else ``(batch, out)`` — the
      top layer's state after each sequence's last real step (``out`` = top units, doubled
      for a concatenated bidirectional layer). With ``return_state``, ``(y, states)`` where
      ``states[l]`` is ``h (batch, units_l)`` for SimpleRNN/GRU and ``(h, c)`` for LSTM,
      and a ``(forward, backward)`` pair of those for a bidirectional layer.
    """
    the_cell = make_cell(cell, activation=activation)
    _check_choice("padding", padding, PADDING_SIDES)
    _check_choice("merge", merge, MERGE_MODES)
    run_stack = get_strategy(strategy)
    if strategy_options:
        run_stack = functools.partial(run_stack, **strategy_options)
    if not isinstance(unroll, (int, np.integer)) or isinstance(unroll, bool) or unroll < 1:
        raise ValueError(f"unroll: expected a positive int, got {unroll!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a rate in [0, 1), got {dropout}")

    x = jnp.asarray(x)
    unbatched = x.ndim == 2
    if x.ndim not in (2, 3):
        raise ValueError(f"x: expected shape (batch, time, features) or (time, features), "
                         f"got shape {tuple(x.shape)}")
    if unbatched:
        x = x[None]
        lengths = None if lengths is None else jnp.reshape(jnp.asarray(lengths), (1,))
    batch, time, features = x.shape
    if time < 1:
        raise ValueError(f"x: expected at least one timestep, got shape {tuple(x.shape)}")

    bidirectional, units = _check_params(params, the_cell, features, merge)
    the_cell = _cell_for_params(the_cell, params, bidirectional)
    mask = _length_mask(lengths, batch, time, padding, check_lengths)
    carries = _initial_carries(initial_state, the_cell, units, batch, bidirectional, x.dtype)

    if compute_dtype is not None:
        params, x = jax.tree.map(lambda a: a.astype(compute_dtype), (params, x))
        carries = jax.tree.map(lambda a: a.astype(compute_dtype), carries)

    xs = jnp.swapaxes(x, 0, 1)  # time-major inside the loops: each step reads one slab
    mask = None if mask is None else mask.T
    between = _dropout_multipliers(dropout, dropout_rng, params, xs, bidirectional)

    if bidirectional:
        ys, finals = _run_bidirectional(run_stack, the_cell, params, xs, mask, carries,
                                        between, merge, unroll)
    else:
        # A strategy that can skip writing the top layer's outputs is told when they are
        # not read (it then returns ys None).
        unread = {} if return_sequences or not takes_sequences(run_stack) else {
            "sequences": False}
        ys, finals = run_stack(the_cell, params, xs, mask, carries, between, unroll=unroll,
                               **unread)

    if return_sequences:
        y = jnp.swapaxes(ys, 0, 1)
    elif bidirectional:
        y = _merge(finals[-1][0][0], finals[-1][1][0], merge)
    else:
        y = finals[-1][0]
    states = [_public_state(f, the_cell, bidirectional) for f in finals]
    if unbatched:
        y = y[0]
        states = jax.tree.map(lambda a: a[0], states)
    return (y, states) if return_state else y


def pool_over_time(ys, lengths=None, *, how: str, padding: str = "post"):
    """Max or mean of ``ys (batch, time, features)`` over each sequence's real steps.

    ``lengths (batch,)`` and ``padding`` say which steps are real, as in ``stacked_rnn``;
    None means all ``time``. A sequence of length 0 pools to zeros. Returns
    ``(batch, features)``.
    """
    _check_choice("how", how, POOLINGS)
    _check_choice("padding", padding, PADDING_SIDES)
    batch, time = ys.shape[:2]
    mask = _length_mask(lengths, batch, time, padding)
    if mask is None:
        return jnp.max(ys, axis=1) if how == "max" else jnp.mean(ys, axis=1)
    mask = mask[:, :, None]
    if how == "max":
        # -inf at padding keeps it out of the max; an empty sequence has no real step.
        pooled = jnp.max(jnp.where(mask, ys, -jnp.inf), axis=1)
        return jnp.where(jnp.any(mask, axis=1), pooled, 0.0).astype(ys.dtype)
    count = jnp.maximum(jnp.sum(mask, axis=1), 1).astype(ys.dtype)
    return jnp.sum(jnp.where(mask, ys, 0.0), axis=1) / count


def _run_bidirectional(run_stack, cell, params, xs, mask, carries, between, merge, unroll):
    """Layer by layer: the backward pass reads the time-reversed input.

    Reversing the whole padded sequence (not only its real part) is exact because masked
    steps hold the carry: the reversed padding just delays the start of the real steps.
    """
    finals = []
    flipped_mask = None if mask is None else mask[::-1]
    for index, layer in enumerate(params):
        if index > 0 and between[index - 1] is not None:
            xs = xs * between[index - 1]
        fw_carry, bw_carry = carries[index]
        fw_ys, (fw_final,) = run_stack(cell, [layer["forward"]], xs, mask, [fw_carry], [],
                                       unroll=unroll)
        bw_ys, (bw_final,) = run_stack(cell, [layer["backward"]], xs[::-1], flipped_mask,
                                       [bw_carry], [], unroll=unroll)
        xs = _merge(fw_ys, bw_ys[::-1], merge)
        finals.append((fw_final, bw_final))
    return xs, finals


def _merge(a, b, merge):
    return jnp.concatenate([a, b], axis=-1) if merge == "concat" else a + b


def _units_tuple(units) -> tuple[int, ...]:
    units = (units,) if isinstance(units, (int, np.integer)) else tuple(units)
    if not units:
        raise ValueError("units: expected at least one layer, got zero layers")
    if any(not isinstance(u, (int, np.integer)) or u < 1 for u in units):
        raise ValueError(f"units: expected positive ints, got {units}")
    return tuple(int(u) for u in units)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")


def _check_params(params, cell: Cell, features: int, merge: str):
    """Check the layer shapes chain; return ``(bidirectional, units per layer)``."""
    if not isinstance(params, (list, tuple)) or len(params) == 0:
        got = "zero layers" if isinstance(params, (list, tuple)) else type(params).__name__
        raise ValueError(f"params: expected a non-empty list of layers, got {got}")
    bidirectional = isinstance(params[0], dict) and "forward" in params[0]
    units, width = [], features
    for index, layer in enumerate(params):
        directions = ([layer.get("forward"), layer.get("backward")]
                      if bidirectional and isinstance(layer, dict) else [layer])
        for p in directions:
            if not (isinstance(p, dict) and {"kernel", "recurrent_kernel", "bias"} <= set(p)):
                raise ValueError(f"params[{index}]: expected a dict with kernel, recurrent_kernel "
                                 f"and bias{' under forward/backward' if bidirectional else ''}")
            # np.shape, not jnp.shape, here and below: shapes are static, and a converter
            # that traces with a patched jnp (jax2onnx's jnp.shape returns a tracer) still
            # gets tuples.
            kernel, recurrent = np.shape(p["kernel"]), np.shape(p["recurrent_kernel"])
            n = recurrent[0] if len(recurrent) == 2 else -1
            if len(recurrent) != 2 or recurrent != (n, cell.gates * n):
                raise ValueError(f"params[{index}]: recurrent_kernel shape {recurrent} "
                                 f"does not fit "
                                 f"cell {cell.name!r}; expected (units, {cell.gates}*units)")
            if kernel != (width, cell.gates * n):
                what = "x features" if index == 0 else f"layer {index - 1} output width"
                raise ValueError(f"params[{index}]: kernel shape {kernel} does not match the "
                                 f"{what} {width}; expected ({width}, {cell.gates * n})")
        units.append(n)
        width = n * (2 if bidirectional and merge == "concat" else 1)
    return bidirectional, units


def _cell_for_params(cell: Cell, params, bidirectional: bool) -> Cell:
    """A GRU's variant is read off its bias: ``(2, 3u)`` means reset_after."""
    if cell.name != "gru":
        return cell
    first = params[0]["forward"] if bidirectional else params[0]
    return make_cell("gru", activation=cell.activation, reset_after=np.ndim(first["bias"]) == 2)


def _length_mask(lengths, batch: int, time: int, padding: str, check: bool = False):
    """``(batch, time)`` bool, True at real steps; None when every step is real."""
    if lengths is None:
        return None
    if np.shape(lengths) != (batch,):
        raise ValueError(f"lengths: expected shape ({batch},), one per sequence, "
                         f"got {np.shape(lengths)}")
    if not jnp.issubdtype(jnp.result_type(lengths), jnp.integer):
        raise ValueError(f"lengths: expected integers, got dtype {jnp.result_type(lengths)}")
    if not isinstance(lengths, jax.core.Tracer):  # values are only known outside tracing
        values = np.asarray(lengths)
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > time:
            raise ValueError(f"lengths: expected values in [0, {time}] (the time axis), "
                             f"got min {low}, max {high}")
    lengths = jnp.asarray(lengths)
    if check:
        checkify.check(jnp.all((lengths >= 0) & (lengths <= time)),
                       f"lengths: expected values in [0, {time}] (the time axis), "
                       "got min {low}, max {high}", low=lengths.min(), high=lengths.max())
    lengths = jnp.clip(lengths, 0, time)  # traced values are not checked: keep results defined
    # An iota, not jnp.arange(time)[None]: the same op, also with a symbolic ``time``
    # under jax2onnx (`stackrnn export --format onnx`), whose arange cannot be sliced.
    steps = jax.lax.broadcasted_iota(jnp.int32, (1, time), 1)
    if padding == "post":
        return steps < lengths[:, None]
    return steps >= time - lengths[:, None]


def _initial_carries(initial_state, cell: Cell, units, batch, bidirectional, dtype):
    """Internal carries (tuples) from the public per-layer states, or zeros."""
    def zeros(n):
        return cell.initial_carry((batch,), n, dtype)

    def to_carry(state, n, where):
        carry = tuple(state) if cell.carry_size == 2 else (state,)
        if len(carry) != cell.carry_size or any(np.shape(c) != (batch, n) for c in carry):
            expected = "(h, c), each" if cell.carry_size == 2 else "h of shape"
            raise ValueError(f"initial_state{where}: expected {expected} ({batch}, {n})")
        return tuple(jnp.asarray(c, dtype) for c in carry)

    if initial_state is None:
        return [(zeros(n), zeros(n)) if bidirectional else zeros(n) for n in units]
    if len(initial_state) != len(units):
        raise ValueError(f"initial_state: expected one state per layer ({len(units)}), "
                         f"got {len(initial_state)}")
    carries = []
    for index, (state, n) in enumerate(zip(initial_state, units)):
        if bidirectional:
            carries.append((to_carry(state[0], n, f"[{index}][0]"),
                            to_carry(state[1], n, f"[{index}][1]")))
        else:
            carries.append(to_carry(state, n, f"[{index}]"))
    return carries


def _public_state(final, cell: Cell, bidirectional: bool):
    def one(carry):
        return carry if cell.carry_size == 2 else carry[0]
    return (one(final[0]), one(final[1])) if bidirectional else one(final)


def _dropout_multipliers(rate, rng, params, xs, bidirectional):
    """Scaled keep masks for the inputs of layers 2..L, each ``(time, batch, width)``."""
    count = len(params) - 1
    if rate == 0.0 or rng is None or count == 0:
        return [None] * count
    time, batch = xs.shape[:2]
    masks = []
    for index, key in zip(range(1, len(params)), jax.random.split(rng, count)):
        kernel = params[index]["forward" if bidirectional else "kernel"]
        width = (kernel["kernel"] if bidirectional else kernel).shape[0]
        keep = jax.random.bernoulli(key, 1.0 - rate, (time, batch, width))
        masks.append(keep.astype(xs.dtype) / (1.0 - rate))
    return masks
