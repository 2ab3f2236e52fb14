"""The benchmark workloads: the IMDB tutorial model and the sweeps around it.

Every workload is the same model, ``Embedding(vocab, E) -> L x RNN(H) -> Dense(1)``,
on random token ids ``(B, T)`` of full length (no padding, no mask: every peer computes
the same thing), with a sigmoid binary cross-entropy loss and Adam for the train step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

GATES = {"simple": 1, "gru": 3, "lstm": 4}


@dataclasses.dataclass(frozen=True)
class Workload:
    """Sizes of one benchmark point."""

    T: int = 500          # sequence length
    L: int = 2            # stacked layers
    H: int = 64           # hidden units per layer
    B: int = 32           # batch size
    cell: str = "simple"  # simple | lstm | gru
    E: int = 32           # embedding width
    vocab: int = 10_000   # embedding rows

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def label(self) -> str:
        return f"{self.cell} T={self.T} L={self.L} H={self.H} B={self.B} E={self.E}"

    def forward_flops(self) -> int:
        """Analytic matmul FLOPs of one forward pass (2 per multiply-add).

        Per layer ``2 B T (in G H + H G H)`` — the hoisted input projection and the
        recurrent matmul — plus the ``2 B H`` of the Dense head. Elementwise work
        (nonlinearities, gates, bias adds) and the embedding gather are not counted.
        """
        g = GATES[self.cell]
        flops, width = 0, self.E
        for _ in range(self.L):
            flops += 2 * self.B * self.T * (width * g * self.H + self.H * g * self.H)
            width = self.H
        return flops + 2 * self.B * self.H

    def train_flops(self) -> int:
        """Forward + backward: the usual 3x forward (the backward does two matmuls per one)."""
        return 3 * self.forward_flops()


TUTORIAL = Workload()

#: Sweep values on the default suite (each varies one size of the tutorial workload).
SWEEP_VALUES = {
    "T": [50, 100, 200, 500, 1000, 2000],
    "L": [1, 2, 4, 8],
    "H": [32, 64, 128, 256, 512, 1024],
    "B": [1, 8, 32, 128, 512],
    "cell": ["simple", "gru", "lstm"],
}

#: Tiny sizes for ``--quick`` (the smoke test): seconds in all.
QUICK_BASE = Workload(T=8, L=2, H=8, B=4, cell="simple", E=8, vocab=100)
QUICK_SWEEP_VALUES = {
    "T": [4, 8],
    "L": [1, 2],
    "H": [4, 8],
    "B": [1, 4],
    "cell": ["simple", "gru", "lstm"],
}
SWEEPS = tuple(SWEEP_VALUES)


def sweep_workloads(base: Workload, sweep: str, values: Iterable) -> list[Workload]:
    """``base`` with the swept field replaced by each value."""
    if sweep not in SWEEPS:
        raise ValueError(f"sweep: expected one of {list(SWEEPS)}, got {sweep!r}")
    return [dataclasses.replace(base, **{sweep: v}) for v in values]


def make_batch(w: Workload, seed: int = 0):
    """Random token ids ``(B, T)`` int32 in ``[1, vocab)`` and labels ``(B,)`` float32 in {0, 1}."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, w.vocab, size=(w.B, w.T), dtype=np.int32)
    labels = rng.integers(0, 2, size=(w.B,)).astype(np.float32)
    return ids, labels


def init_model(w: Workload, seed: int = 0) -> dict:
    """Our model's parameters: ``embedding``, ``rnn`` (Keras-layout list), ``dense_kernel``,
    ``dense_bias``.

    The dense head and embedding get small random values (not zeros) so that parity checks
    against peers see every weight.
    """
    import jax
    import jax.numpy as jnp

    from stackrnn_jax import init_params

    k_emb, k_rnn, k_dense, k_bias = jax.random.split(jax.random.key(seed), 4)
    rnn = init_params(k_rnn, w.E, [w.H] * w.L, cell=w.cell)
    # Non-zero biases, so that a bias mapped to the wrong place shows up in parity checks.
    rnn = [{**layer, "bias": 0.1 * jax.random.normal(jax.random.fold_in(k_bias, i),
                                                     layer["bias"].shape)}
           for i, layer in enumerate(rnn)]
    return {
        "embedding": 0.05 * jax.random.normal(k_emb, (w.vocab, w.E), jnp.float32),
        "rnn": rnn,
        "dense_kernel": 0.1 * jax.random.normal(k_dense, (w.H, 1), jnp.float32),
        "dense_bias": jnp.full((1,), 0.01, jnp.float32),
    }


def make_functions(w: Workload, *, strategy: str = "scan", unroll: int = 1,
                   learning_rate: float = 1e-3):
    """``(forward, train_step, optimizer)`` of our model for one strategy variant.

    ``forward(params, ids) -> logits (B,)``;
    ``train_step(params, opt_state, ids, labels) -> (params, opt_state, loss)``
    (forward, backward and an optax Adam update).
    """
    import jax
    import jax.numpy as jnp
    import optax

    from stackrnn_jax import stacked_rnn

    def forward(params, ids):
        x = jnp.take(params["embedding"], ids, axis=0)
        h = stacked_rnn(params["rnn"], x, cell=w.cell, strategy=strategy, unroll=unroll)
        return (h @ params["dense_kernel"] + params["dense_bias"])[:, 0]

    def loss_fn(params, ids, labels):
        return optax.sigmoid_binary_cross_entropy(forward(params, ids), labels).mean()

    optimizer = optax.adam(learning_rate)

    def train_step(params, opt_state, ids, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return forward, train_step, optimizer
