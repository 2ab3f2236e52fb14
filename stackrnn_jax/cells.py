"""The recurrent cells: parameters, the hoistable input projection, and one step.

Every cell splits its update into two parts so that strategies can run them apart:

* ``project(params, x)`` — the input term ``x W_x + b`` for *all* timesteps at once
  (one large matmul outside the time loop);
* ``step(params, carry, xw_t)`` — the part that depends on the previous state
  (``h_{t-1} W_h`` and the nonlinearity), run once per timestep.

Parameter names and shapes follow Keras 3, so a Keras layer's weights map one to one:
``kernel (in, gates*units)``, ``recurrent_kernel (units, gates*units)``, ``bias
(gates*units,)`` (GRU with ``reset_after``: ``bias (2, 3*units)``, input and recurrent
bias). A carry is always a tuple of ``(batch, units)`` arrays: ``(h,)`` for SimpleRNN
and GRU, ``(h, c)`` for LSTM.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

Params = dict[str, jax.Array]
Carry = tuple[jax.Array, ...]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
}


def _glorot_uniform(key, shape, dtype):
    limit = (6.0 / (shape[0] + shape[1])) ** 0.5
    return jax.random.uniform(key, shape, dtype, -limit, limit)


def _orthogonal_blocks(key, units, gates, dtype):
    # Keras initialises the whole (units, gates*units) matrix orthogonally.
    return jax.nn.initializers.orthogonal()(key, (units, gates * units), dtype)


@dataclasses.dataclass(frozen=True)
class Cell:
    """Common interface; subclasses define ``gates``, ``step`` and the bias layout."""

    activation: str = "tanh"

    name = "cell"
    gates = 1
    carry_size = 1

    @property
    def act(self):
        return ACTIVATIONS[self.activation]

    def init(self, key, input_size: int, units: int, dtype=jnp.float32) -> Params:
        """Keras defaults: glorot-uniform kernel, orthogonal recurrent kernel, zero bias."""
        k1, k2 = jax.random.split(key)
        return {
            "kernel": _glorot_uniform(k1, (input_size, self.gates * units), dtype),
            "recurrent_kernel": _orthogonal_blocks(k2, units, self.gates, dtype),
            "bias": self.init_bias(units, dtype),
        }

    def init_bias(self, units: int, dtype) -> jax.Array:
        return jnp.zeros((self.gates * units,), dtype)

    def input_bias(self, params: Params) -> jax.Array:
        return params["bias"]

    def project(self, params: Params, x: jax.Array) -> jax.Array:
        """``x (..., in)`` -> ``xw (..., gates*units)`` = x W_x + b (the hoisted part)."""
        return x @ params["kernel"] + self.input_bias(params)

    def initial_carry(self, batch_shape, units: int, dtype) -> Carry:
        return tuple(jnp.zeros((*batch_shape, units), dtype) for _ in range(self.carry_size))

    def step(self, params: Params, carry: Carry, xw_t: jax.Array) -> Carry:
        """One timestep: ``carry`` (each ``(batch, units)``) and ``xw_t (batch, gates*units)``."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class SimpleRNNCell(Cell):
    """Elman cell.

    h_t = act(x_t W_x + h_{t-1} W_h + b),   act = tanh (default) or relu.
    """

    name = "simple"
    gates = 1

    def step(self, params, carry, xw_t):
        (h,) = carry
        return (self.act(xw_t + h @ params["recurrent_kernel"]),)


@dataclasses.dataclass(frozen=True)
class LSTMCell(Cell):
    """Long short-term memory, gate order i, f, c, o (Keras).

    z = x_t W_x + h_{t-1} W_h + b,   [z_i, z_f, z_c, z_o] = split(z, 4)
    i = sigmoid(z_i),  f = sigmoid(z_f),  o = sigmoid(z_o)
    c_t = f * c_{t-1} + i * act(z_c)
    h_t = o * act(c_t)

    ``unit_forget_bias`` initialises the forget-gate bias to one (Keras default).
    """

    unit_forget_bias: bool = True

    name = "lstm"
    gates = 4
    carry_size = 2

    def init_bias(self, units, dtype):
        bias = jnp.zeros((4 * units,), dtype)
        return bias.at[units : 2 * units].set(1.0) if self.unit_forget_bias else bias

    def step(self, params, carry, xw_t):
        h, c = carry
        z = xw_t + h @ params["recurrent_kernel"]
        z_i, z_f, z_c, z_o = jnp.split(z, 4, axis=-1)
        c = jax.nn.sigmoid(z_f) * c + jax.nn.sigmoid(z_i) * self.act(z_c)
        h = jax.nn.sigmoid(z_o) * self.act(c)
        return (h, c)


@dataclasses.dataclass(frozen=True)
class GRUCell(Cell):
    """Gated recurrent unit, gate order z, r, h (Keras).

    With ``reset_after=True`` (default; bias ``(2, 3*units)`` = input and recurrent bias):
        [x_z, x_r, x_h] = split(x_t W_x + b_in, 3)
        [u_z, u_r, u_h] = split(h_{t-1} W_h + b_rec, 3)
        z = sigmoid(x_z + u_z),  r = sigmoid(x_r + u_r)
        n = act(x_h + r * u_h)
    With ``reset_after=False`` (bias ``(3*units,)``):
        z, r as above without b_rec,   n = act(x_h + (r * h_{t-1}) W_h[:, 2u:])
    Both: h_t = z * h_{t-1} + (1 - z) * n.

    ``reset_after`` is read from the bias shape when a GRU is applied, so Keras
    weights of either variant load without extra flags.
    """

    reset_after: bool = True

    name = "gru"
    gates = 3

    def init_bias(self, units, dtype):
        shape = (2, 3 * units) if self.reset_after else (3 * units,)
        return jnp.zeros(shape, dtype)

    def input_bias(self, params):
        return params["bias"][0] if self.reset_after else params["bias"]

    def step(self, params, carry, xw_t):
        (h,) = carry
        x_z, x_r, x_h = jnp.split(xw_t, 3, axis=-1)
        w_h = params["recurrent_kernel"]
        units = h.shape[-1]
        if self.reset_after:
            u_z, u_r, u_h = jnp.split(h @ w_h + params["bias"][1], 3, axis=-1)
            z = jax.nn.sigmoid(x_z + u_z)
            r = jax.nn.sigmoid(x_r + u_r)
            n = self.act(x_h + r * u_h)
        else:
            u_z, u_r = jnp.split(h @ w_h[:, : 2 * units], 2, axis=-1)
            z = jax.nn.sigmoid(x_z + u_z)
            r = jax.nn.sigmoid(x_r + u_r)
            n = self.act(x_h + (r * h) @ w_h[:, 2 * units :])
        return (z * h + (1.0 - z) * n,)


CELLS = {"simple": SimpleRNNCell, "lstm": LSTMCell, "gru": GRUCell}


def make_cell(name: str, *, activation: str = "tanh", reset_after: bool = True,
              unit_forget_bias: bool = True) -> Cell:
    """Build a cell from its name (``"simple"``, ``"lstm"``, ``"gru"``) and options."""
    if name not in CELLS:
        raise ValueError(f"cell: unknown cell {name!r}; expected one of {sorted(CELLS)}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation: unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
    if name == "lstm":
        return LSTMCell(activation=activation, unit_forget_bias=unit_forget_bias)
    if name == "gru":
        return GRUCell(activation=activation, reset_after=reset_after)
    return SimpleRNNCell(activation=activation)
