"""Shared by the test modules: error measures, the cell list and tiny training problems.

Test modules import from here (``pythonpath`` in pyproject.toml puts the repository root
on ``sys.path``), never from each other.
"""

from __future__ import annotations

import jax
import numpy as np

from stackrnn_jax.config import TrainConfig
from stackrnn_jax.data import EncodedSplit

CELLS = ["simple", "lstm", "gru"]

# A training run small enough for a unit test: 20-word vocabulary, 12 steps, 8 units.
TRAIN_CONFIG = TrainConfig(num_words=20, maxlen=12, embed_dim=8, units=8, batch_size=16,
                           epochs=3, learning_rate=1e-2, mask=True, log_every=4)


def max_error(ours, theirs) -> float:
    """Largest absolute difference over matching leaves of two pytrees, in float64."""
    pairs = zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               for a, b in pairs)


def synthetic_split(n: int, seed: int, maxlen: int = 12) -> EncodedSplit:
    """``n`` pre-padded reviews of ids 4..19; the positive ones hold the id 3 somewhere."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, maxlen + 1, n).astype(np.int32)
    labels = (np.arange(n) % 2).astype(np.int32)
    ids = np.zeros((n, maxlen), np.int32)
    for row, (length, label) in enumerate(zip(lengths, labels)):
        tokens = rng.integers(4, 20, length)
        if label:
            tokens[rng.integers(length)] = 3
        ids[row, maxlen - length:] = tokens
    return EncodedSplit(ids, lengths, labels)
