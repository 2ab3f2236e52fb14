"""stackrnn_jax.interop.keras: Keras 3 stacked-RNN models give the same predictions here.

A few variations (relu SimpleRNN, Bidirectional ``sum``, float input without bias, mixed
cells) are marked ``slow`` to keep the default run short: ``pytest -m slow`` runs them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
keras = pytest.importorskip("keras")
if keras.backend.backend() != "jax":  # pragma: no cover - another backend was chosen first
    pytest.skip("these tests build Keras models on the JAX backend", allow_module_level=True)

from stackrnn_jax.interop.keras import import_keras, predict  # noqa: E402 (after the backend)

VOCAB, EMBED, T, BATCH = 40, 5, 7, 3
ATOL = 1e-5


def _randomize(model, seed=0):
    """Random weights everywhere (Keras starts biases at zero: that would hide bias mix-ups)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([0.4 * rng.standard_normal(w.shape).astype(np.float32)
                               for w in weights])
    return model


def _ids(seed=1):
    return np.random.default_rng(seed).integers(1, VOCAB, size=(BATCH, T)).astype(np.int32)


def _model(rnn_layers, *, head="sigmoid", embedding=True, mask_zero=False, seed=0):
    layers = [keras.Input((T,), dtype="int32") if embedding else keras.Input((T, EMBED))]
    if embedding:
        layers.append(keras.layers.Embedding(VOCAB, EMBED, mask_zero=mask_zero))
    layers += rnn_layers
    if head:
        layers.append(keras.layers.Dense(1, activation=head))
    return _randomize(keras.Sequential(layers), seed)


def _keras_out(model, x):
    return np.asarray(model(x, training=False))


def _ours(imported, x, **kwargs):
    import jax
    return np.asarray(jax.jit(lambda x: predict(imported, x, **kwargs))(x))


def test_tutorial_model_maps_onto_our_params():
    model = _model([keras.layers.SimpleRNN(6, return_sequences=True), keras.layers.SimpleRNN(6)])
    got = import_keras(model)
    assert got["cell"] == "simple" and got["activation"] == "tanh"
    assert got["units"] == [6, 6] and not got["bidirectional"] and not got["mask_zero"]
    assert got["embedding"].shape == (VOCAB, EMBED)
    assert got["dense_kernel"].shape == (6, 1) and got["dense_bias"].shape == (1,)
    assert got["dense_activation"] == "sigmoid"
    assert [set(p) for p in got["rnn"]] == [{"kernel", "recurrent_kernel", "bias"}] * 2
    ids = _ids()
    np.testing.assert_allclose(_ours(got, ids), _keras_out(model, ids), atol=ATOL)


@pytest.mark.parametrize("make", [
    pytest.param(lambda **k: keras.layers.LSTM(5, **k), id="lstm"),
    pytest.param(lambda **k: keras.layers.GRU(5, reset_after=True, **k), id="gru-reset_after"),
    pytest.param(lambda **k: keras.layers.GRU(5, reset_after=False, **k), id="gru-reset_before"),
    pytest.param(lambda **k: keras.layers.SimpleRNN(5, activation="relu", **k), id="simple-relu",
                 marks=pytest.mark.slow),
])
def test_cells_match_keras(make):
    model = _model([make(return_sequences=True), keras.layers.Dropout(0.5), make()])
    got = import_keras(model)
    ids = _ids()
    np.testing.assert_allclose(_ours(got, ids), _keras_out(model, ids), atol=ATOL)


@pytest.mark.parametrize("merge", ["concat", pytest.param("sum", marks=pytest.mark.slow)])
def test_bidirectional(merge):
    model = _model([
        keras.layers.Bidirectional(keras.layers.GRU(4, return_sequences=True), merge_mode=merge),
        keras.layers.Bidirectional(keras.layers.GRU(4), merge_mode=merge),
    ], head=None)
    got = import_keras(model)
    assert got["bidirectional"] and got["merge"] == merge and got["dense_kernel"] is None
    assert set(got["rnn"][0]) == {"forward", "backward"}
    ids = _ids()
    np.testing.assert_allclose(_ours(got, ids), _keras_out(model, ids), atol=ATOL)


@pytest.mark.slow
def test_float_input_sequences_and_no_bias():
    model = _model([keras.layers.LSTM(4, return_sequences=True, use_bias=False)],
                   head=None, embedding=False)
    got = import_keras(model)
    assert got["embedding"] is None and got["return_sequences"]
    x = np.random.default_rng(2).standard_normal((BATCH, T, EMBED)).astype(np.float32)
    np.testing.assert_allclose(_ours(got, x), _keras_out(model, x), atol=ATOL)


def test_saved_keras_file_and_weights_file(tmp_path):
    model = _model([keras.layers.GRU(5, return_sequences=True), keras.layers.GRU(5)])
    ids = _ids()
    want = _keras_out(model, ids)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(_ours(import_keras(tmp_path / "m.keras"), ids),
                               want, atol=ATOL)
    model.save_weights(tmp_path / "m.weights.h5")
    fresh = _model([keras.layers.GRU(5, return_sequences=True), keras.layers.GRU(5)], seed=9)
    got = import_keras(str(tmp_path / "m.weights.h5"), model=fresh)
    np.testing.assert_allclose(_ours(got, ids), want, atol=ATOL)
    with pytest.raises(ValueError, match="model="):
        import_keras(tmp_path / "m.weights.h5")


def test_mask_zero_with_pre_padding_equals_lengths():
    """The documented mapping of Keras' mask_zero onto lengths + padding='pre'."""
    model = _model([keras.layers.SimpleRNN(4, return_sequences=True), keras.layers.SimpleRNN(4)],
                   mask_zero=True)
    ids = _ids()
    ids[0, :3] = 0  # pre-padding, as keras pad_sequences does by default
    ids[1, :5] = 0
    got = import_keras(model)
    assert got["mask_zero"]
    lengths = (ids != 0).sum(axis=1)
    ours = _ours(got, ids, lengths=lengths, padding="pre")
    np.testing.assert_allclose(ours, _keras_out(model, ids), atol=ATOL)


def test_unsupported_layers_are_named():
    # Unbuilt models suffice: the layer is refused before any weight is read.
    model = keras.Sequential([keras.layers.Masking(), keras.layers.SimpleRNN(3)])
    with pytest.raises(ValueError, match="Masking"):
        import_keras(model)


@pytest.mark.slow
def test_mixed_cells_are_refused():
    mixed = keras.Sequential([keras.Input((T, 3)), keras.layers.LSTM(3, return_sequences=True),
                              keras.layers.GRU(3)])
    with pytest.raises(ValueError, match="cell"):
        import_keras(mixed)
