"""stackrnn-jax: stacked SimpleRNN / LSTM / GRU in JAX, checked against a NumPy reference."""

from stackrnn_jax.cells import GRUCell, LSTMCell, SimpleRNNCell, make_cell
from stackrnn_jax.stack import init_params, stacked_rnn
from stackrnn_jax.strategies import STRATEGIES

__all__ = [
    "GRUCell", "LSTMCell", "SimpleRNNCell", "make_cell",
    "init_params", "stacked_rnn", "STRATEGIES",
    "StackedRNN", "SentimentClassifier",
]
__version__ = "0.1.0"


def __getattr__(name):
    # The Flax face loads flax only when asked for, keeping `import stackrnn_jax` light.
    if name in ("StackedRNN", "SentimentClassifier"):
        from stackrnn_jax import nn
        return getattr(nn, name)
    raise AttributeError(f"module 'stackrnn_jax' has no attribute {name!r}")
