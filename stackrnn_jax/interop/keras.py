"""Import a Keras 3 stacked SimpleRNN / LSTM / GRU model into stackrnn_jax parameters.

Keras and stackrnn_jax store recurrent weights in the same layout (``kernel (in,
gates*units)``, ``recurrent_kernel (units, gates*units)``, ``bias``; gate orders LSTM
i, f, c, o and GRU z, r, h; GRU ``reset_after`` bias ``(2, 3*units)``), so the import is
a copy. The classic tutorial model::

    Embedding(10000, 32) -> SimpleRNN(64, return_sequences=True) -> SimpleRNN(64)
        -> Dense(1, activation="sigmoid")

becomes ``{"embedding", "rnn", "cell", "dense_kernel", "dense_bias", ...}``, and
``predict(imported, ids)`` gives Keras' ``model.predict(ids)``.

Supported: a linear chain of layers (``keras.Sequential`` or a chain-shaped functional
model) made of an optional ``Embedding`` first, one or more ``SimpleRNN`` / ``LSTM`` /
``GRU`` layers (all of one cell type and activation; all plain or all
``Bidirectional`` with ``merge_mode`` ``"concat"`` or ``"sum"``), optional ``Dropout`` /
``SpatialDropout1D`` (identity at inference), and an optional final ``Dense``. Anything
else raises ``ValueError`` naming the layer.

Masking: Keras' ``Embedding(mask_zero=True)`` passes a mask that makes each RNN hold
its state on token 0 wherever it appears. stackrnn_jax masks by sequence length
instead (``lengths`` + ``padding``). The two agree when 0 only appears as padding on
one side: for ``pad_sequences``' default pre-padding pass
``lengths=(ids != 0).sum(axis=1), padding="pre"``. ``import_keras`` reports the flag
as ``mask_zero`` and leaves the choice to the caller.

Keras is imported when a function here is called (``KERAS_BACKEND`` defaults to
``"jax"`` if unset; any backend can be the source of the weights).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

RNN_CELLS = {"SimpleRNN": "simple", "LSTM": "lstm", "GRU": "gru"}
IDENTITY_LAYERS = ("InputLayer", "Dropout", "SpatialDropout1D")
DENSE_ACTIVATIONS = ("linear", "sigmoid", "softmax", "tanh", "relu")


def _keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    return keras


def load_keras_model(source, *, model=None):
    """A live Keras model from ``source``.

    ``source`` is a ``keras.Model`` (returned as is), a path to a ``.keras`` file
    (``keras.saving.load_model``), or a path to a ``.weights.h5`` file — which holds no
    architecture, so ``model`` must then be a Keras model of the same architecture; a
    clone of it gets the weights (``model`` itself is left untouched).
    """
    keras = _keras()
    if isinstance(source, keras.Model):
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source: no such file {str(path)!r}")
    if path.name.endswith(".keras"):
        return keras.saving.load_model(path, compile=False)
    if path.name.endswith(".h5"):
        if model is None:
            raise ValueError(
                f"source: {path.name!r} holds weights only; pass model= (a Keras model of the "
                "same architecture) to load them into")
        clone = keras.models.clone_model(model)
        clone.load_weights(path)
        return clone
    raise ValueError(f"source: expected a keras.Model, a .keras file or a .weights.h5 file, "
                     f"got {str(source)!r}")


def _activation_name(fn) -> str:
    keras = _keras()
    name = keras.activations.serialize(fn)
    if isinstance(name, dict):  # newer Keras may return a config dict
        name = name.get("config", name).get("name", str(name))
    return str(name)


@dataclasses.dataclass(frozen=True)
class Direction:
    """One plain Keras RNN layer as read: its options and Keras-layout weights."""

    cell: str                      # "simple", "lstm" or "gru"
    activation: str
    units: int
    reset_after: bool | None       # GRU only
    go_backwards: bool
    return_sequences: bool
    params: dict                   # kernel, recurrent_kernel, bias (NumPy)


@dataclasses.dataclass(frozen=True)
class RNNLayer:
    """One RNN layer of the stack: plain (``backward`` None) or Bidirectional."""

    where: str                     # "layer 2 'gru' (GRU)", for error messages
    forward: Direction
    backward: Direction | None = None
    merge: str = "concat"


@dataclasses.dataclass
class ParsedModel:
    """What ``_parse`` read off the Keras layers, before the stack is checked."""

    embedding: np.ndarray | None = None
    mask_zero: bool = False
    rnn: list[RNNLayer] = dataclasses.field(default_factory=list)
    dense: tuple[np.ndarray, np.ndarray, str] | None = None   # kernel, bias, activation


def _read_direction(layer, where: str) -> Direction:
    """Cell type, options and weights of one plain (not Bidirectional) RNN layer."""
    kind = RNN_CELLS[type(layer).__name__]
    cell = layer.cell
    activation = _activation_name(cell.activation)
    if activation not in ("tanh", "relu"):
        raise ValueError(f"{where}: activation {activation!r} is not supported (tanh or relu)")
    if kind != "simple":
        recurrent = _activation_name(cell.recurrent_activation)
        if recurrent != "sigmoid":
            raise ValueError(f"{where}: recurrent_activation {recurrent!r} is not supported "
                             "(sigmoid only)")
    if getattr(layer, "stateful", False):
        raise ValueError(f"{where}: stateful RNN layers are not supported")
    units = int(cell.units)
    gates = {"simple": 1, "lstm": 4, "gru": 3}[kind]
    reset_after = bool(getattr(cell, "reset_after", True)) if kind == "gru" else None
    weights = [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]
    if len(weights) == 2:  # use_bias=False
        shape = (2, gates * units) if reset_after else (gates * units,)
        weights.append(np.zeros(shape, np.float32))
    if len(weights) != 3:
        raise ValueError(f"{where}: expected kernel, recurrent_kernel[, bias], got "
                         f"{len(weights)} weights")
    params = dict(zip(("kernel", "recurrent_kernel", "bias"), weights, strict=True))
    return Direction(kind, activation, units, reset_after, bool(layer.go_backwards),
                     bool(layer.return_sequences), params)


def _read_rnn(layer, where: str) -> RNNLayer:
    direction = _read_direction(layer, where)
    if direction.go_backwards:
        raise ValueError(f"{where}: go_backwards outside Bidirectional is not supported")
    return RNNLayer(where, direction)


def _read_bidirectional(layer, where: str) -> RNNLayer:
    if layer.merge_mode not in ("concat", "sum"):
        raise ValueError(f"{where}: merge_mode {layer.merge_mode!r} is not supported "
                         "(concat or sum)")
    wrapped = type(layer.forward_layer).__name__
    if wrapped not in RNN_CELLS:
        raise ValueError(f"{where}: wraps {wrapped}, expected SimpleRNN, LSTM or GRU")
    forward = _read_direction(layer.forward_layer, where + " forward")
    backward = _read_direction(layer.backward_layer, where + " backward")
    if forward.go_backwards or not backward.go_backwards:
        raise ValueError(f"{where}: expected a forward and a go_backwards layer")
    return RNNLayer(where, forward, backward, layer.merge_mode)


def _read_dense(layer, where: str) -> tuple[np.ndarray, np.ndarray, str]:
    weights = [np.asarray(w, np.float32) for w in layer.get_weights()]
    kernel = weights[0]
    bias = weights[1] if len(weights) > 1 else np.zeros(kernel.shape[1], np.float32)
    activation = _activation_name(layer.activation)
    if activation not in DENSE_ACTIVATIONS:
        raise ValueError(f"{where}: activation {activation!r} is not supported "
                         f"({', '.join(DENSE_ACTIVATIONS)})")
    return kernel, bias, activation


def _parse(keras_model) -> ParsedModel:
    """Read the layers in order; ValueError naming the first layer out of place."""
    parsed = ParsedModel()
    for index, layer in enumerate(keras_model.layers):
        kind = type(layer).__name__
        where = f"layer {index} {layer.name!r} ({kind})"
        if parsed.dense is not None:
            raise ValueError(f"{where}: only a single Dense layer at the end is supported")
        if kind in IDENTITY_LAYERS:
            continue
        if kind == "Embedding":
            if parsed.rnn or parsed.embedding is not None:
                raise ValueError(f"{where}: an Embedding must come first")
            parsed.embedding = np.asarray(layer.get_weights()[0], np.float32)
            parsed.mask_zero = bool(getattr(layer, "mask_zero", False))
        elif kind in RNN_CELLS:
            parsed.rnn.append(_read_rnn(layer, where))
        elif kind == "Bidirectional":
            parsed.rnn.append(_read_bidirectional(layer, where))
        elif kind == "Dense":
            if not parsed.rnn:
                raise ValueError(f"{where}: a Dense layer before the RNN layers is not supported")
            parsed.dense = _read_dense(layer, where)
        else:
            raise ValueError(f"{where}: not supported by import_keras (Embedding, SimpleRNN, "
                             "LSTM, GRU, Bidirectional, Dropout, Dense)")
    return parsed


def _check_stack(layers: list[RNNLayer]) -> None:
    """One cell type, activation and variant; all plain or all Bidirectional with one merge;
    every layer but the last returns sequences."""
    if not layers:
        raise ValueError("source: the model has no SimpleRNN, LSTM or GRU layer")
    first = layers[0]
    for position, layer in enumerate(layers):
        for key in ("cell", "activation", "reset_after"):
            mine, theirs = getattr(layer.forward, key), getattr(first.forward, key)
            if mine != theirs:
                raise ValueError(f"{layer.where}: {key} {mine!r} differs from {first.where}'s "
                                 f"{theirs!r}; a stack has one {key}")
        if (layer.backward is None) != (first.backward is None):
            raise ValueError(f"{layer.where}: mixing Bidirectional and plain RNN layers is "
                             "not supported")
        if layer.merge != first.merge:
            raise ValueError(f"{layer.where}: merge_mode differs from {first.where}'s")
        if position < len(layers) - 1 and not layer.forward.return_sequences:
            raise ValueError(f"{layer.where}: return_sequences=False but another RNN layer "
                             "follows")


def _assemble(parsed: ParsedModel) -> dict:
    """The ``import_keras`` dict (see its docstring) from a checked ``ParsedModel``."""
    import jax.numpy as jnp

    first, last = parsed.rnn[0].forward, parsed.rnn[-1].forward
    rnn = [_to_jax(layer.forward.params) if layer.backward is None else
           {"forward": _to_jax(layer.forward.params), "backward": _to_jax(layer.backward.params)}
           for layer in parsed.rnn]
    kernel, bias, activation = parsed.dense or (None, None, None)
    return {"embedding": None if parsed.embedding is None else jnp.asarray(parsed.embedding),
            "mask_zero": parsed.mask_zero, "rnn": rnn, "cell": first.cell,
            "activation": first.activation, "units": [layer.forward.units for layer in parsed.rnn],
            "bidirectional": parsed.rnn[0].backward is not None, "merge": parsed.rnn[0].merge,
            "reset_after": first.reset_after, "return_sequences": last.return_sequences,
            "dense_kernel": None if kernel is None else jnp.asarray(kernel),
            "dense_bias": None if bias is None else jnp.asarray(bias),
            "dense_activation": activation}


def import_keras(source, *, model=None) -> dict:
    """The weights of a Keras stacked-RNN model as stackrnn_jax parameters.

    Args:
      source: a live ``keras.Model``, a ``.keras`` file, or a ``.weights.h5`` file
        (then ``model`` gives the architecture; see ``load_keras_model``).
      model: the architecture for a ``.weights.h5`` source; ignored otherwise.

    Returns a dict:
      ``rnn``: our params list (one Keras-layout dict per layer, or
      ``{"forward", "backward"}`` per Bidirectional layer), as JAX arrays;
      ``cell`` (``"simple"``, ``"lstm"``, ``"gru"``), ``activation``, ``units`` (per
      layer), ``bidirectional``, ``merge``, ``reset_after`` (GRU, else None),
      ``return_sequences`` (of the last RNN layer);
      ``embedding`` ``(vocab, dim)`` or None, ``mask_zero`` (see the module docstring);
      ``dense_kernel`` ``(in, out)``, ``dense_bias`` ``(out,)`` and ``dense_activation``,
      or None each when the model has no Dense head.
    Pass ``rnn`` and the keyword options to ``stacked_rnn``, or everything to ``predict``.
    """
    parsed = _parse(load_keras_model(source, model=model))
    _check_stack(parsed.rnn)
    return _assemble(parsed)


def _to_jax(params: dict) -> dict:
    import jax.numpy as jnp
    return {k: jnp.asarray(v) for k, v in params.items()}


def predict(imported: dict, inputs, *, lengths=None, padding: str = "pre",
            strategy: str = "auto"):
    """What the Keras model outputs, computed by stackrnn_jax.

    ``inputs`` are token ids ``(batch, time)`` when the model has an Embedding, else
    float features ``(batch, time, features)``. ``lengths``/``padding`` are passed to
    ``stacked_rnn`` (see the module docstring on ``mask_zero``). Returns the Dense head's
    output ``(batch, out)`` (or ``(batch, time, out)`` when the last RNN layer returns
    sequences), or the RNN output when there is no Dense head.
    """
    import jax
    import jax.numpy as jnp

    from stackrnn_jax.stack import stacked_rnn

    x = jnp.asarray(inputs)
    if imported["embedding"] is not None:
        x = jnp.take(imported["embedding"], x.astype(jnp.int32), axis=0)
    y = stacked_rnn(imported["rnn"], x, cell=imported["cell"], lengths=lengths, padding=padding,
                    return_sequences=imported["return_sequences"], strategy=strategy,
                    merge=imported["merge"], activation=imported["activation"])
    if imported["dense_kernel"] is None:
        return y
    z = y @ imported["dense_kernel"] + imported["dense_bias"]
    act = {"linear": lambda a: a, "sigmoid": jax.nn.sigmoid,
           "softmax": lambda a: jax.nn.softmax(a, axis=-1), "tanh": jnp.tanh,
           "relu": jax.nn.relu}[imported["dense_activation"]]
    return act(z)
