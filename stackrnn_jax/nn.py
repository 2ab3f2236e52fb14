"""The Flax NNX face: ``StackedRNN``, the IMDB model ``SentimentClassifier`` and
``SentimentEnsemble`` (several of them, their logits averaged).

Both hold their weights as ``nnx.Param`` in the same Keras layout as the functional
API and call ``stack.stacked_rnn`` on them, so the module and the pure function
compute the same numbers by construction. ``StackedRNN.params()`` hands the weights
out as the plain pytree the functional API takes.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from stackrnn_jax.stack import init_params, pool_over_time, stacked_rnn

POOLINGS = ("last", "max", "mean")


def drop_recurrent_weights(layers: list, rate: float, key) -> list:
    """DropConnect on the recurrent kernels (AWD-LSTM's weight drop): each entry of every
    ``recurrent_kernel`` zeroed with probability ``rate`` (the rest scaled by
    ``1 / (1 - rate)``), one mask for all timesteps of a call; the other weights as they
    are. ``layers``: ``stacked_rnn``'s weights."""
    paths, tree = jax.tree_util.tree_flatten_with_path(layers)
    keys = iter(jax.random.split(key, len(paths)))
    dropped = []
    for path, leaf in paths:
        if getattr(path[-1], "key", None) == "recurrent_kernel":
            keep = jax.random.bernoulli(next(keys), 1.0 - rate, leaf.shape)
            leaf = jnp.where(keep, leaf / (1.0 - rate), 0.0).astype(leaf.dtype)
        dropped.append(leaf)
    return jax.tree.unflatten(tree, dropped)


def _to_nnx(tree):
    """Nested dict of arrays -> nested ``nnx.Dict`` of ``nnx.Param``."""
    if isinstance(tree, dict):
        return nnx.Dict({k: _to_nnx(v) for k, v in tree.items()})
    return nnx.Param(tree)


def _from_nnx(tree):
    if isinstance(tree, nnx.Dict):
        return {k: _from_nnx(v) for k, v in tree.items()}
    return tree[...]


class StackedRNN(nnx.Module):
    """Stacked SimpleRNN / LSTM / GRU layers, optionally bidirectional.

    Call it on ``x (batch, time, input_size)`` (optionally with ``lengths (batch,)``);
    it returns ``(batch, time, out)`` with ``return_sequences`` else ``(batch, out)``.
    Dropout between layers, and ``weight_dropout`` on the recurrent kernels
    (``drop_recurrent_weights``), are active unless the module is in eval mode
    (``model.eval()`` / ``deterministic=True``). ``strategy`` (default ``"auto"``, the
    measured-fastest) and ``unroll`` are those of ``stacked_rnn``.
    """

    def __init__(self, input_size: int, units: int | Sequence[int], *, cell: str = "simple",
                 bidirectional: bool = False, merge: str = "concat", activation: str = "tanh",
                 reset_after: bool = True, unit_forget_bias: bool = True, dropout: float = 0.0,
                 weight_dropout: float = 0.0, strategy: str = "auto", unroll: int = 1,
                 compute_dtype=None,
                 param_dtype=jnp.float32, deterministic: bool = False, rngs: nnx.Rngs):
        layers = init_params(rngs.params(), input_size, units, cell=cell,
                             bidirectional=bidirectional, merge=merge, reset_after=reset_after,
                             unit_forget_bias=unit_forget_bias, dtype=param_dtype)
        self.layers = nnx.List([_to_nnx(layer) for layer in layers])
        self.cell, self.merge, self.activation = cell, merge, activation
        self.bidirectional = bidirectional
        self.dropout, self.strategy, self.unroll = dropout, strategy, unroll
        self.weight_dropout = weight_dropout
        self.compute_dtype = compute_dtype
        self.deterministic = deterministic
        self.rngs = (rngs["dropout"].fork() if dropout > 0 or weight_dropout > 0
                     else nnx.data(None))
        out = (units if isinstance(units, int) else units[-1])
        self.out_features = out * (2 if bidirectional and merge == "concat" else 1)

    def params(self) -> list:
        """The weights as the plain pytree that ``stacked_rnn`` takes."""
        return [_from_nnx(layer) for layer in self.layers]

    def __call__(self, x, lengths=None, *, padding: str = "post", initial_state=None,
                 return_sequences: bool = False, return_state: bool = False,
                 deterministic: bool | None = None):
        deterministic = self.deterministic if deterministic is None else deterministic
        # self.rngs is a dropout RNG stream exactly when either dropout is on; the weights'
        # mask is drawn after the layers' (a model without it keeps its stream).
        rng = None if deterministic or self.dropout == 0 else self.rngs()  # type: ignore[misc]
        params = self.params()
        if not deterministic and self.weight_dropout > 0:
            params = drop_recurrent_weights(params, self.weight_dropout,
                                            self.rngs())  # type: ignore[misc]
        return stacked_rnn(params, x, cell=self.cell, lengths=lengths, padding=padding,
                           initial_state=initial_state, return_sequences=return_sequences,
                           return_state=return_state, strategy=self.strategy,
                           unroll=self.unroll, dropout=self.dropout, dropout_rng=rng,
                           merge=self.merge, activation=self.activation,
                           compute_dtype=self.compute_dtype)


class SentimentClassifier(nnx.Module):
    """Embedding -> StackedRNN -> pooling -> Dense(1): a review's logit (sigmoid: P(positive)).

    Call on token ids ``(batch, time)`` int32 and their real ``lengths (batch,)``;
    returns logits ``(batch,)``. ``pooling`` is what the head reads: ``"last"`` the top
    layer's final state (both directions' for a bidirectional stack), ``"max"`` / ``"mean"``
    the max / mean of the top layer's outputs over the real steps (``pool_over_time``).
    ``word_dropout`` drops whole tokens' embeddings, ``embed_dropout`` single entries.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 32, units: int | Sequence[int] = (64, 64),
                 *, cell: str = "simple", bidirectional: bool = False, pooling: str = "last",
                 dropout: float = 0.0, embed_dropout: float = 0.0, word_dropout: float = 0.0,
                 weight_dropout: float = 0.0, strategy: str = "auto",
                 unroll: int = 1, compute_dtype=None, rngs: nnx.Rngs):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected one of {list(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.embed = nnx.Embed(vocab_size, embed_dim, rngs=rngs)
        self.embed_dropout = nnx.Dropout(embed_dropout, rngs=rngs)
        self.rnn = StackedRNN(embed_dim, units, cell=cell, bidirectional=bidirectional,
                              dropout=dropout, weight_dropout=weight_dropout,
                              strategy=strategy, unroll=unroll, compute_dtype=compute_dtype,
                              rngs=rngs)
        self.head_dropout = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(self.rnn.out_features, 1, rngs=rngs)
        # The same draw for every embedding dim of a token: whole words vanish (rescaled as
        # dropout does), so the model cannot lean on any single word, e.g. a film's name.
        # Made last and only when used: the other modules' initial values and a checkpoint's
        # layout stay those of a model without it.
        self.word_dropout = (nnx.Dropout(word_dropout, broadcast_dims=(2,), rngs=rngs)
                             if word_dropout > 0 else nnx.data(None))

    def __call__(self, ids, lengths=None, *, padding: str = "pre"):
        x = self.embed(ids)
        if self.word_dropout is not None:
            x = self.word_dropout(x)
        x = self.embed_dropout(x)
        if self.pooling == "last":
            h = self.rnn(x, lengths, padding=padding)
        else:
            ys = self.rnn(x, lengths, padding=padding, return_sequences=True)
            h = pool_over_time(ys, lengths, how=self.pooling, padding=padding)
        return self.head(self.head_dropout(h.astype(jnp.float32)))[..., 0]


class SentimentEnsemble(nnx.Module):
    """Several ``SentimentClassifier`` members read the same review; its logit is the mean
    of theirs. Trained side by side, each on its own loss (``train.make_train_step``), they
    differ by their initial weights and dropout draws.

    Call as a ``SentimentClassifier``: ids ``(batch, time)``, ``lengths (batch,)`` ->
    logits ``(batch,)``; ``member_logits`` gives each member's, ``(members, batch)``.
    """

    def __init__(self, members: Sequence[SentimentClassifier]):
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nnx.List(members)

    def member_logits(self, ids, lengths=None, *, padding: str = "pre"):
        return jnp.stack([member(ids, lengths, padding=padding) for member in self.members])

    def __call__(self, ids, lengths=None, *, padding: str = "pre"):
        return jnp.mean(self.member_logits(ids, lengths, padding=padding), axis=0)
