"""Weight averaging (``average_decay``): the debiased moving average against NumPy, what a
run validates and keeps, and exact resume with the average in the optimizer's state."""

import os
import signal

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from stackrnn_jax import averaging, run_dir, train
from stackrnn_jax.interrupts import TrainingInterrupted
from tests.helpers import RESUMABLE, TRAIN_CONFIG, final_state, inject, run_fit

DECAY = 0.8


def numpy_average(snapshots, decay):
    """The debiased moving average of ``snapshots`` (the weights after each update)."""
    n = len(snapshots)
    weights = [(1 - decay) * decay ** (n - 1 - k) for k in range(n)]
    total = sum(w * np.asarray(s, np.float64) for w, s in zip(weights, snapshots, strict=True))
    return total / (1 - decay ** n)


def plain(tree):
    """NumPy arrays of a state's leaves (PRNG keys as their key data)."""
    return jax.tree.map(lambda a: np.asarray(jax.random.key_data(a) if jax.dtypes.issubdtype(
        a.dtype, jax.dtypes.prng_key) else a), jax.tree.leaves(tree))


def test_track_average_passes_updates_and_averages_the_updated_weights():
    params = {"w": np.arange(6.0, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}
    tx = optax.chain(optax.sgd(0.1), averaging.track_average(DECAY))
    state = tx.init(params)
    rng = np.random.default_rng(0)
    snapshots = []
    for _ in range(5):
        grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
        updates, state = tx.update(grads, state, params)
        np.testing.assert_allclose(updates["w"], -0.1 * grads["w"], rtol=1e-6)  # untouched
        params = optax.apply_updates(params, updates)
        snapshots.append(params)
    tracked = state[-1]
    assert float(tracked.steps) == 5.0
    for name in params:
        expected = numpy_average([s[name] for s in snapshots], DECAY) * (1 - DECAY ** 5)
        np.testing.assert_allclose(tracked.average[name], expected, rtol=1e-5, atol=1e-6)


def test_averaged_model_state_is_the_debiased_average_of_the_model_weights():
    config = TRAIN_CONFIG.replace(average_decay=DECAY)
    model = train.create_model(config)
    optimizer = nnx.Optimizer(model, train.create_optimizer(config, 10), wrt=nnx.Param)
    state = nnx.split((model, optimizer))[1]
    untouched = averaging.averaged_model_state(state, DECAY)  # no update yet: the weights
    jax.tree.map(np.testing.assert_array_equal, plain(untouched), plain(state[0]))
    rng = np.random.default_rng(1)
    snapshots = []
    for _ in range(4):
        grads = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32),
                             nnx.state(model, nnx.Param))
        optimizer.update(model, grads)
        snapshots.append(jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))
    averaged = averaging.averaged_model_state(nnx.split((model, optimizer))[1], DECAY)
    got = jax.tree.leaves(nnx.filter_state(averaged, nnx.Param))
    per_leaf = zip(*[jax.tree.leaves(s) for s in snapshots], strict=True)
    for leaf, history in zip(got, per_leaf, strict=True):
        np.testing.assert_allclose(leaf, numpy_average(list(history), DECAY), rtol=1e-5,
                                   atol=1e-6)
    # The rest of the model's state (RNG counters) is the model's own.
    rest = nnx.filter_state(averaged, nnx.Not(nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, plain(rest), plain(
        nnx.filter_state(nnx.split((model, optimizer))[1][0], nnx.Not(nnx.Param))))


def test_a_run_validates_and_keeps_the_averaged_weights(tmp_path):
    """One epoch: the best (only) epoch's saved weights are the average in the final
    checkpoint's optimizer state, not the last step's weights."""
    config = RESUMABLE.replace(epochs=1, average_decay=DECAY)
    run_fit(tmp_path, config)
    arrays, position = final_state(tmp_path, config)
    assert position["epoch"] == 2
    model = train.create_model(config)
    optimizer = nnx.Optimizer(model, train.create_optimizer(config, 13), wrt=nnx.Param)
    nnx.update(optimizer, arrays[1])
    nnx.update(model, arrays[0])
    state = nnx.split((model, optimizer))[1]
    expected = nnx.filter_state(averaging.averaged_model_state(state, DECAY), nnx.Param)
    kept, _ = run_dir.restore_best(tmp_path, nnx.state(model, nnx.Param))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), kept, expected)
    last = nnx.state(model, nnx.Param)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(kept),
                                                     jax.tree.leaves(last), strict=True))


def test_resume_with_averaging_is_bit_identical(tmp_path, monkeypatch):
    config = RESUMABLE.replace(average_decay=DECAY)
    uninterrupted = run_fit(tmp_path / "whole", config)
    inject(monkeypatch, 2, 5, lambda batch: (os.kill(os.getpid(), signal.SIGTERM), batch)[1])
    with pytest.raises(TrainingInterrupted):
        run_fit(tmp_path / "stopped", config)
    monkeypatch.undo()
    resumed = run_fit(tmp_path / "stopped", config)
    assert ([row["val_accuracy"] for row in resumed["epochs"]]
            == [row["val_accuracy"] for row in uninterrupted["epochs"]])
    assert ([row["val_loss"] for row in resumed["epochs"]]
            == [row["val_loss"] for row in uninterrupted["epochs"]])
    whole, _ = final_state(tmp_path / "whole", config)
    stopped, _ = final_state(tmp_path / "stopped", config)
    jax.tree.map(np.testing.assert_array_equal, whole, stopped)
