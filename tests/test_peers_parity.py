"""Keras, Flax linen and PyTorch compute our function when given our weights.

The benchmark copies our weights into each peer before timing it (``bench/peers.py``);
these tests pin those converters, and double as a parity test of stackrnn_jax against
three independent RNN implementations. Each peer is skipped when its library is missing.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest

from bench.workloads import Workload, init_model, make_batch, make_functions
from tests.helpers import CELLS

ATOL = 1e-5


def _workload(cell):
    return Workload(T=9, L=2, H=6, B=3, cell=cell, E=4, vocab=30)


@functools.cache
def _case(cell):
    """Workload, our params, ids and our logits for ``cell`` (computed once per cell)."""
    import jax
    w = _workload(cell)
    params = init_model(w, seed=3)
    ids, _ = make_batch(w, seed=4)
    return w, params, ids, np.asarray(jax.jit(make_functions(w)[0])(params, ids))


@pytest.mark.parametrize("cell", CELLS)
def test_torch_matches(cell):
    torch = pytest.importorskip("torch")
    from bench.peers import torch_model

    w, params, ids, ours = _case(cell)
    model = torch_model(w, params, "cpu")
    with torch.no_grad():
        got = model(torch.as_tensor(ids, dtype=torch.long)).numpy()
    np.testing.assert_allclose(got, ours, atol=ATOL)


@pytest.mark.parametrize("cell", CELLS)
def test_flax_linen_matches(cell):
    pytest.importorskip("flax.linen")
    import jax

    from bench.peers import flax_model, flax_variables

    w, params, ids, ours = _case(cell)
    model = flax_model(w)
    variables = flax_variables(w, params)
    # Same tree and shapes as flax's own init, so no weight is missed or left at its init value.
    fresh = jax.eval_shape(model.init, jax.random.key(0), ids)
    assert jax.tree.map(lambda a: a.shape, fresh) == jax.tree.map(np.shape, variables)
    got = np.asarray(jax.jit(model.apply)(variables, ids))
    np.testing.assert_allclose(got, ours, atol=ATOL)


def test_keras_matches():
    """One forward comparison; the round trip below covers the other cells' weights, and
    tests/test_interop_keras.py shows Keras and we agree on every cell given equal weights."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("the Keras peer runs on the JAX backend")
    from bench.peers import keras_model

    w, params, ids, ours = _case("simple")
    model = keras_model(w, params)
    got = np.asarray(model(ids, training=False))[:, 0]
    np.testing.assert_allclose(got, ours, atol=ATOL)


@pytest.mark.parametrize("cell", CELLS)
def test_keras_round_trip_through_interop(cell):
    """The benchmark's Keras peer, imported back with interop.keras, gives our params."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("the Keras peer runs on the JAX backend")
    from bench.peers import keras_model
    from stackrnn_jax.interop.keras import import_keras

    w = _workload(cell)
    params = init_model(w, seed=3)
    got = import_keras(keras_model(w, params))
    assert got["cell"] == cell and got["units"] == [w.H] * w.L
    for ours, theirs in zip(params["rnn"], got["rnn"]):
        for key in ("kernel", "recurrent_kernel", "bias"):
            np.testing.assert_array_equal(np.asarray(ours[key]), np.asarray(theirs[key]))
    np.testing.assert_array_equal(np.asarray(params["embedding"]), np.asarray(got["embedding"]))
