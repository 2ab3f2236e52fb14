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


def _rnn_info(layer, where: str) -> dict:
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
    if len(weights) == 3:
        kernel, recurrent_kernel, bias = weights
    elif len(weights) == 2:  # use_bias=False
        kernel, recurrent_kernel = weights
        shape = (2, gates * units) if reset_after else (gates * units,)
        bias = np.zeros(shape, np.float32)
    else:
        raise ValueError(f"{where}: expected kernel, recurrent_kernel[, bias], got "
                         f"{len(weights)} weights")
    return {"cell": kind, "activation": activation, "units": units, "reset_after": reset_after,
            "go_backwards": bool(layer.go_backwards),
            "return_sequences": bool(layer.return_sequences),
            "params": {"kernel": kernel, "recurrent_kernel": recurrent_kernel, "bias": bias}}


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
    import jax.numpy as jnp

    keras_model = load_keras_model(source, model=model)
    out = {"embedding": None, "mask_zero": False, "rnn": [], "cell": None, "activation": None,
           "units": [], "bidirectional": None, "merge": "concat", "reset_after": None,
           "return_sequences": False, "dense_kernel": None, "dense_bias": None,
           "dense_activation": None}
    infos = []
    for index, layer in enumerate(keras_model.layers):
        kind = type(layer).__name__
        where = f"layer {index} {layer.name!r} ({kind})"
        if out["dense_kernel"] is not None:
            raise ValueError(f"{where}: only a single Dense layer at the end is supported")
        if kind in IDENTITY_LAYERS:
            continue
        if kind == "Embedding":
            if infos or out["embedding"] is not None:
                raise ValueError(f"{where}: an Embedding must come first")
            out["embedding"] = np.asarray(layer.get_weights()[0], np.float32)
            out["mask_zero"] = bool(getattr(layer, "mask_zero", False))
        elif kind in RNN_CELLS:
            info = _rnn_info(layer, where)
            if info["go_backwards"]:
                raise ValueError(f"{where}: go_backwards outside Bidirectional is not supported")
            infos.append((where, False, info, None))
        elif kind == "Bidirectional":
            merge = layer.merge_mode
            if merge not in ("concat", "sum"):
                raise ValueError(f"{where}: merge_mode {merge!r} is not supported (concat or sum)")
            if type(layer.forward_layer).__name__ not in RNN_CELLS:
                raise ValueError(f"{where}: wraps {type(layer.forward_layer).__name__}, "
                                 "expected SimpleRNN, LSTM or GRU")
            fw = _rnn_info(layer.forward_layer, where + " forward")
            bw = _rnn_info(layer.backward_layer, where + " backward")
            if fw["go_backwards"] or not bw["go_backwards"]:
                raise ValueError(f"{where}: expected a forward and a go_backwards layer")
            infos.append((where, True, fw, (bw, merge)))
        elif kind == "Dense":
            if not infos:
                raise ValueError(f"{where}: a Dense layer before the RNN layers is not supported")
            weights = [np.asarray(w, np.float32) for w in layer.get_weights()]
            kernel = weights[0]
            bias = weights[1] if len(weights) > 1 else np.zeros(kernel.shape[1], np.float32)
            activation = _activation_name(layer.activation)
            if activation not in DENSE_ACTIVATIONS:
                raise ValueError(f"{where}: activation {activation!r} is not supported "
                                 f"({', '.join(DENSE_ACTIVATIONS)})")
            out.update(dense_kernel=jnp.asarray(kernel), dense_bias=jnp.asarray(bias),
                       dense_activation=activation)
        else:
            raise ValueError(f"{where}: not supported by import_keras (Embedding, SimpleRNN, "
                             "LSTM, GRU, Bidirectional, Dropout, Dense)")
    if not infos:
        raise ValueError("source: the model has no SimpleRNN, LSTM or GRU layer")

    first_where, bidirectional, first, _ = infos[0]
    for position, (where, bidi, info, extra) in enumerate(infos):
        for key in ("cell", "activation", "reset_after"):
            if info[key] != first[key]:
                raise ValueError(f"{where}: {key} {info[key]!r} differs from {first_where}'s "
                                 f"{first[key]!r}; a stack has one {key}")
        if bidi != bidirectional:
            raise ValueError(f"{where}: mixing Bidirectional and plain RNN layers is not supported")
        if bidi and extra[1] != infos[0][3][1]:
            raise ValueError(f"{where}: merge_mode differs from {first_where}'s")
        if position < len(infos) - 1 and not info["return_sequences"]:
            raise ValueError(f"{where}: return_sequences=False but another RNN layer follows")
        if bidi:
            bw = extra[0]
            out["rnn"].append({"forward": _to_jax(info["params"]), "backward": _to_jax(bw["params"])})
        else:
            out["rnn"].append(_to_jax(info["params"]))
        out["units"].append(info["units"])
    out.update(cell=first["cell"], activation=first["activation"], bidirectional=bidirectional,
               reset_after=first["reset_after"], return_sequences=infos[-1][2]["return_sequences"])
    if bidirectional:
        out["merge"] = infos[0][3][1]
    if out["embedding"] is not None:
        out["embedding"] = jnp.asarray(out["embedding"])
    return out


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
