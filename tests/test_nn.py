"""The Flax NNX face computes what the functional face computes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from stackrnn_jax import SentimentClassifier, StackedRNN, stacked_rnn
from stackrnn_jax.nn import drop_recurrent_weights
from stackrnn_jax.reference import reference_rnn


def test_stacked_rnn_module_equals_function_and_reference():
    model = StackedRNN(4, [6, 5], cell="lstm", bidirectional=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 7, 4))
    lengths = jnp.array([7, 2, 5])
    y = model(x, lengths, padding="pre", return_sequences=True)
    params = model.params()
    assert y.shape == (3, 7, 10) and model.out_features == 10
    np.testing.assert_array_equal(
        y, stacked_rnn(params, x, cell="lstm", lengths=lengths, padding="pre",
                       return_sequences=True))
    ref = reference_rnn(params, x, cell="lstm", lengths=np.asarray(lengths), padding="pre",
                        return_sequences=True)
    np.testing.assert_allclose(y, ref, atol=1e-5)


def test_dropout_only_in_train_mode():
    model = StackedRNN(4, [6, 6, 5], dropout=0.5, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4))
    train_a, train_b = model(x), model(x)
    assert float(jnp.abs(train_a - train_b).max()) > 1e-4   # a fresh mask each call
    model.eval()
    np.testing.assert_array_equal(model(x), stacked_rnn(model.params(), x))


def test_weight_dropout_masks_only_the_recurrent_kernels():
    layers = StackedRNN(4, [40, 40], cell="gru", bidirectional=True, rngs=nnx.Rngs(0)).params()
    dropped = drop_recurrent_weights(layers, 0.25, jax.random.key(3))
    for before, after in zip(layers, dropped):
        for direction in ("forward", "backward"):
            b, a = before[direction], after[direction]
            np.testing.assert_array_equal(a["kernel"], b["kernel"])
            np.testing.assert_array_equal(a["bias"], b["bias"])
            kept = np.asarray(a["recurrent_kernel"]) != 0
            assert 0.65 < kept.mean() < 0.85
            np.testing.assert_allclose(np.asarray(a["recurrent_kernel"])[kept],
                                       np.asarray(b["recurrent_kernel"])[kept] / 0.75,
                                       rtol=1e-6)
    # each kernel its own mask
    assert not np.array_equal(np.asarray(dropped[0]["forward"]["recurrent_kernel"]) == 0,
                              np.asarray(dropped[0]["backward"]["recurrent_kernel"]) == 0)


def test_weight_dropout_only_in_train_mode():
    model = StackedRNN(4, [6, 5], cell="lstm", weight_dropout=0.5, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4))
    assert float(jnp.abs(model(x) - model(x)).max()) > 1e-4  # a fresh mask each call
    model.eval()
    np.testing.assert_array_equal(model(x), stacked_rnn(model.params(), x, cell="lstm"))


def test_word_dropout_drops_whole_tokens_and_leaves_the_model_as_without_it():
    with_words = SentimentClassifier(50, 8, (6,), word_dropout=0.5, rngs=nnx.Rngs(0))
    without = SentimentClassifier(50, 8, (6,), rngs=nnx.Rngs(0))
    # Same initial parameters: the extra module is made last (seeds keep their numbers).
    jax.tree.map(np.testing.assert_array_equal, nnx.state(without, nnx.Param),
                 nnx.state(with_words, nnx.Param))
    dropped = with_words.word_dropout(jnp.ones((4, 30, 8)))
    per_token = np.asarray(dropped).reshape(-1, 8)
    assert set(np.unique(per_token)) == {0.0, 2.0}  # kept tokens rescaled by 1 / (1 - 0.5)
    assert (per_token.min(axis=1) == per_token.max(axis=1)).all()  # all dims or none
    assert 0.3 < (per_token[:, 0] == 0).mean() < 0.7
    ids, lengths = jnp.array([[0, 3, 7, 9]], jnp.int32), jnp.array([3])
    with_words.eval()
    without.eval()
    np.testing.assert_array_equal(with_words(ids, lengths), without(ids, lengths))


def test_sentiment_classifier_logits_and_one_training_step():
    model = SentimentClassifier(50, 8, (6, 6), cell="gru", dropout=0.2, rngs=nnx.Rngs(0))
    ids = jnp.array([[0, 0, 7, 9], [3, 4, 5, 6]], jnp.int32)
    lengths = jnp.array([2, 4])
    labels = jnp.array([1.0, 0.0])
    assert model(ids, lengths).shape == (2,)

    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            return optax.sigmoid_binary_cross_entropy(model(ids, lengths), labels).mean()
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(30)]
    assert losses[-1] < losses[0] * 0.5
    model.eval()
    # Left padding is masked: the ids under the padding do not change the logit.
    changed = ids.at[0, :2].set(jnp.array([11, 12]))
    np.testing.assert_allclose(model(ids, lengths), model(changed, lengths), atol=1e-6)
