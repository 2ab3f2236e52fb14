"""stackrnn-jax: stacked SimpleRNN / LSTM / GRU in JAX, checked against a NumPy reference."""

import importlib

__all__ = [
    "GRUCell", "LSTMCell", "SimpleRNNCell", "make_cell",
    "init_params", "stacked_rnn", "STRATEGIES",
    "StackedRNN", "SentimentClassifier",
]
__version__ = "0.1.0"

# Everything loads on first use: `stackrnn` installs its signal handlers before JAX is
# imported (seconds), and the Flax face loads flax only when asked for.
_HOMES = {"GRUCell": "cells", "LSTMCell": "cells", "SimpleRNNCell": "cells", "make_cell": "cells",
          "init_params": "stack", "stacked_rnn": "stack", "STRATEGIES": "strategies",
          "StackedRNN": "nn", "SentimentClassifier": "nn"}


def __getattr__(name):
    if name in _HOMES:
        return getattr(importlib.import_module(f"stackrnn_jax.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'stackrnn_jax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
