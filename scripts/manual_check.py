"""Seed demonstration: a stacked SimpleRNN classifier's prediction, recomputed by hand.

Builds a small SentimentClassifier (Embedding -> 2 x SimpleRNN -> Dense(1) -> sigmoid),
runs it on a random review of token ids, then recomputes the same probability with the
plain NumPy reference from the model's own weights. Exits 1 if they differ by > 1e-6.

    python scripts/manual_check.py [--cell simple|lstm|gru] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np
from flax import nnx

from stackrnn_jax import SentimentClassifier
from stackrnn_jax.reference import reference_rnn, sigmoid

TOLERANCE = 1e-6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", default="simple", choices=["simple", "lstm", "gru"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    vocab, embed_dim, units, time = 100, 8, (16, 16), 20
    model = SentimentClassifier(vocab, embed_dim, units, cell=args.cell, rngs=nnx.Rngs(args.seed))
    model.eval()
    ids = jax.random.randint(jax.random.PRNGKey(args.seed + 1), (1, time), 3, vocab)

    network = np.asarray(jax.nn.sigmoid(model(ids))).reshape(1, 1)

    # By hand: embedding lookup, the NumPy recurrence, the dense layer, the sigmoid.
    table = np.asarray(model.embed.embedding[...], np.float64)
    x = table[np.asarray(ids)]
    h = reference_rnn(model.rnn.params(), x, cell=args.cell)
    logit = h @ np.asarray(model.head.kernel[...], np.float64) + np.asarray(model.head.bias[...])
    manual = sigmoid(logit[:, 0])

    print("Prediction from the neural network:", network)
    print("Prediction from manual computation:", manual)
    difference = float(np.abs(network[0] - manual).max())
    if difference > TOLERANCE:
        print(f"MISMATCH: the predictions differ by {difference:.3g} (> {TOLERANCE})",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
