"""Plain NumPy reference of the stacked recurrences: the judge of every fast path.

Written straight from the equations, float64, with explicit loops over layers, over
sequences and over time; no vectorisation tricks, no masking arithmetic. Each
sequence is cut to its real steps and run on its own, so padding cannot leak in.
The parameter layout is the one of ``stack.init_params`` (Keras 3 shapes).
"""

from __future__ import annotations

import numpy as np


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


ACTIVATIONS = {"tanh": np.tanh, "relu": lambda z: np.maximum(z, 0.0)}


def simple_step(p, x_t, state, act):
    """h_t = act(x_t W_x + h_{t-1} W_h + b)."""
    (h,) = state
    return (act(x_t @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"]),)


def lstm_step(p, x_t, state, act):
    """Gates i, f, c, o; c_t = f c_{t-1} + i act(z_c); h_t = o act(c_t)."""
    h, c = state
    z = x_t @ p["kernel"] + h @ p["recurrent_kernel"] + p["bias"]
    n = h.shape[-1]
    i, f, g, o = z[:n], z[n:2 * n], z[2 * n:3 * n], z[3 * n:]
    c = sigmoid(f) * c + sigmoid(i) * act(g)
    h = sigmoid(o) * act(c)
    return (h, c)


def gru_step(p, x_t, state, act):
    """Gates z, r, h; reset_after when the bias is (2, 3u); h_t = z h_{t-1} + (1 - z) n."""
    (h,) = state
    n = h.shape[-1]
    w, u, bias = p["kernel"], p["recurrent_kernel"], p["bias"]
    reset_after = bias.ndim == 2
    b_in = bias[0] if reset_after else bias
    x_part = x_t @ w + b_in
    if reset_after:
        h_part = h @ u + bias[1]
        z = sigmoid(x_part[:n] + h_part[:n])
        r = sigmoid(x_part[n:2 * n] + h_part[n:2 * n])
        cand = act(x_part[2 * n:] + r * h_part[2 * n:])
    else:
        z = sigmoid(x_part[:n] + h @ u[:, :n])
        r = sigmoid(x_part[n:2 * n] + h @ u[:, n:2 * n])
        cand = act(x_part[2 * n:] + (r * h) @ u[:, 2 * n:])
    return (z * h + (1.0 - z) * cand,)


STEPS = {"simple": simple_step, "lstm": lstm_step, "gru": gru_step}


def _as_f64(params):
    return {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}


def _run_direction(step, p, seq, state, act):
    """Run one layer-direction over one unpadded sequence ``(steps, features)``."""
    outputs = []
    for x_t in seq:
        state = step(p, x_t, state, act)
        outputs.append(state[0])
    width = p["recurrent_kernel"].shape[0]
    return np.array(outputs).reshape(len(seq), width), state


def reference_rnn(params, x, *, cell="simple", lengths=None, padding="post",
                  initial_state=None, return_sequences=False, return_state=False,
                  merge="concat", activation="tanh"):
    """Same contract as ``stack.stacked_rnn`` (without dropout and strategies).

    ``x (batch, time, features)``; returns float64 NumPy arrays shaped like the fast path.
    """
    step, act = STEPS[cell], ACTIVATIONS[activation]
    x = np.asarray(x, dtype=np.float64)
    batch, time, _ = x.shape
    lengths = np.full(batch, time) if lengths is None else np.asarray(lengths)
    bidirectional = "forward" in params[0]
    carry_size = 2 if cell == "lstm" else 1

    outputs, all_states = [], []
    for b in range(batch):
        n_real = int(lengths[b])
        start = 0 if padding == "post" else time - n_real
        seq = x[b, start:start + n_real]          # the real steps only
        states_b = []
        for index, layer in enumerate(params):
            directions = [layer["forward"], layer["backward"]] if bidirectional else [layer]
            outs = []
            for d, p in enumerate(directions):
                p = _as_f64(p)
                width = p["recurrent_kernel"].shape[0]
                state = _start_state(initial_state, index, d, b, width, carry_size, bidirectional)
                inp = seq if d == 0 else seq[::-1]
                ys, state = _run_direction(step, p, inp, state, act)
                outs.append(ys if d == 0 else ys[::-1])
                states_b.append(state)
            if bidirectional:
                seq = np.concatenate(outs, axis=-1) if merge == "concat" else outs[0] + outs[1]
            else:
                seq = outs[0]
        if return_sequences:
            full = np.zeros((time, seq.shape[-1]))
            full[start:start + n_real] = seq
            outputs.append(full)
        else:
            top = states_b[-2:] if bidirectional else states_b[-1:]
            hs = [s[0] for s in top]
            outputs.append(np.concatenate(hs) if merge == "concat" else sum(hs))
        all_states.append(states_b)

    y = np.stack(outputs)
    if not return_state:
        return y
    return y, _collect_states(all_states, len(params), bidirectional, carry_size)


def _start_state(initial_state, layer, direction, b, width, carry_size, bidirectional):
    if initial_state is None:
        return tuple(np.zeros(width) for _ in range(carry_size))
    s = initial_state[layer]
    if bidirectional:
        s = s[direction]
    parts = tuple(s) if carry_size == 2 else (s,)
    return tuple(np.asarray(part, dtype=np.float64)[b] for part in parts)


def _collect_states(all_states, n_layers, bidirectional, carry_size):
    """Per-sequence states -> the public ``states`` layout of ``stacked_rnn``."""
    per_dir = 2 if bidirectional else 1
    states = []
    for index in range(n_layers):
        dirs = []
        for d in range(per_dir):
            parts = tuple(np.stack([s[index * per_dir + d][k] for s in all_states])
                          for k in range(carry_size))
            dirs.append(parts if carry_size == 2 else parts[0])
        states.append(tuple(dirs) if bidirectional else dirs[0])
    return states
