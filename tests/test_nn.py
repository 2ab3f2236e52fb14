"""The Flax NNX face computes what the functional face computes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from stackrnn_jax import SentimentClassifier, StackedRNN, stacked_rnn
from stackrnn_jax.nn import bigram_ids
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


def test_bigram_ids_hash_each_pair_wherever_it_stands():
    ids = jnp.array([[0, 0, 5, 9, 5, 9], [5, 9, 7, 5, 9, 0]], jnp.int32)
    got = np.asarray(bigram_ids(ids, 1000))
    assert got.dtype == np.int32 and got.min() >= 0 and got.max() < 1000
    # (5, 9) at three places, (0, 5) at one: one id per pair
    assert got[0, 3] == got[0, 5] == got[1, 1]
    assert got[1, 0] == got[0, 2]  # the first column pairs with the padding id 0
    assert len({got[0, 3], got[0, 4], got[1, 2], got[1, 3]}) == 4  # (5,9) (9,5) (9,7) (7,5)
    # order matters: (a, b) and (b, a) differ for most pairs
    pairs = np.arange(2, 202)
    forward = np.asarray(bigram_ids(jnp.stack([pairs, pairs[::-1]], axis=1), 1 << 20))[:, 1]
    backward = np.asarray(bigram_ids(jnp.stack([pairs[::-1], pairs], axis=1), 1 << 20))[:, 1]
    assert (forward != backward).mean() > 0.95


def test_bigram_embeddings_add_to_the_words_and_leave_the_rest_as_without():
    with_pairs = SentimentClassifier(50, 8, (6,), bigram_buckets=64, rngs=nnx.Rngs(0))
    without = SentimentClassifier(50, 8, (6,), rngs=nnx.Rngs(0))
    state = nnx.state(with_pairs, nnx.Param)
    assert state["bigram_embed"]["embedding"].shape == (64, 8)
    # The other parameters are those of the model without the table (made last).
    del state["bigram_embed"]
    jax.tree.map(np.testing.assert_array_equal, nnx.state(without, nnx.Param), state)
    ids, lengths = jnp.array([[0, 3, 7, 9], [4, 4, 4, 4]], jnp.int32), jnp.array([3, 4])
    table = np.asarray(with_pairs.bigram_embed.embedding[...])
    want = (np.asarray(with_pairs.embed(ids))
            + table[np.asarray(bigram_ids(ids, 64))])
    np.testing.assert_allclose(with_pairs.embed_ids(ids), want, rtol=1e-6)
    with_pairs.bigram_embed.embedding[...] = jnp.zeros((64, 8))
    np.testing.assert_array_equal(with_pairs(ids, lengths), without(ids, lengths))


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
