"""Pooling heads: masked max / mean over time against a NumPy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from stackrnn_jax import SentimentClassifier, config, nn
from stackrnn_jax.reference import reference_rnn
from stackrnn_jax.stack import pool_over_time


def numpy_pool(ys: np.ndarray, lengths: np.ndarray, how: str, padding: str) -> np.ndarray:
    """Max or mean over each row's real steps, one row at a time (zeros for an empty row)."""
    time = ys.shape[1]
    out = []
    for row, length in zip(ys, lengths):
        real = row[:length] if padding == "post" else row[time - length:]
        if not len(real):
            out.append(np.zeros(ys.shape[2]))
        else:
            out.append(real.max(axis=0) if how == "max" else real.mean(axis=0))
    return np.stack(out)


@pytest.mark.parametrize("padding", ["pre", "post"])
@pytest.mark.parametrize("how", ["max", "mean"])
def test_pool_over_time_matches_numpy(how, padding):
    ys = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 6, 3)))
    lengths = np.array([6, 1, 3, 0])
    pooled = pool_over_time(jnp.asarray(ys), jnp.asarray(lengths), how=how, padding=padding)
    np.testing.assert_allclose(pooled, numpy_pool(ys, lengths, how, padding), rtol=1e-6)
    full = pool_over_time(jnp.asarray(ys), None, how=how)
    np.testing.assert_allclose(full, numpy_pool(ys, np.full(4, 6), how, padding), rtol=1e-6)
    grads = jax.grad(lambda y: jnp.sum(pool_over_time(y, jnp.asarray(lengths), how=how,
                                                      padding=padding)))(jnp.asarray(ys))
    assert np.isfinite(grads).all() and not np.asarray(grads)[3].any()  # empty row: no gradient


def test_pool_over_time_rejects_bad_choices():
    with pytest.raises(ValueError, match="how: expected one of"):
        pool_over_time(jnp.zeros((1, 2, 3)), how="min")
    with pytest.raises(ValueError, match="pooling: expected one of"):
        SentimentClassifier(10, 4, 3, pooling="sum", rngs=nnx.Rngs(0))


def test_the_config_offers_the_classifiers_poolings():
    """config.py keeps its own copy (it imports no model code): the two stay equal."""
    assert config.POOLINGS == nn.POOLINGS


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("padding,pooling", [("pre", "max"), ("post", "mean"), ("pre", "mean"),
                                             ("post", "max"), ("pre", "last")])
def test_classifier_pooling_heads_match_numpy(pooling, padding, bidirectional):
    model = SentimentClassifier(30, 5, (4, 3), cell="gru", bidirectional=bidirectional,
                                pooling=pooling, rngs=nnx.Rngs(1))
    model.eval()
    lengths = np.array([7, 2, 5])
    rng = np.random.default_rng(0)
    ids = np.zeros((3, 7), np.int32)
    for row, length in enumerate(lengths):
        real = rng.integers(3, 30, length)
        ids[row, :length] = real
        if padding == "pre":
            ids[row] = np.roll(ids[row], 7 - length)
    logits = model(jnp.asarray(ids), jnp.asarray(lengths), padding=padding)

    x = np.asarray(model.embed.embedding[...], np.float64)[ids]
    params = model.rnn.params()
    if pooling == "last":
        features = reference_rnn(params, x, cell="gru", lengths=lengths, padding=padding)
    else:
        ys = reference_rnn(params, x, cell="gru", lengths=lengths, padding=padding,
                           return_sequences=True)
        features = numpy_pool(ys, lengths, pooling, padding)
    expected = (features @ np.asarray(model.head.kernel[...], np.float64)
                + np.asarray(model.head.bias[...], np.float64))[:, 0]
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
