"""The LSTM and GRU native kernels (stackrnn_jax/native/gated.cc) and the SimpleRNN's
inference kernel there.

Against the float64 NumPy reference (1e-10) and, in float32, within float32 rounding
(1e-5); gradients against "scan" and by finite differences (check_grads); every cell
and both GRU variants; masks pre and post; batch sizes and unit counts that leave
partial register blocks and tiles; initial states; both directions; dropout; and the
custom calls really in the lowered program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from stackrnn_jax import init_params, native, stacked_rnn
from stackrnn_jax.reference import reference_rnn

pytestmark = pytest.mark.skipif(not native.available()[0],
                                reason=f"native kernels unavailable: {native.available()[1]}")

# (cell, reset_after): the LSTM and both GRU variants.
GATED = [("lstm", True), ("gru", True), ("gru", False)]
GATED_IDS = ["lstm", "gru-reset_after", "gru-reset_before"]


def _params(cell, reset_after, features, units, dtype, seed=0, bidirectional=False):
    """Keras-initialised weights with random (non-zero) biases, so that every bias term
    (the GRU's recurrent bias included) changes the numbers."""
    params = init_params(jax.random.key(seed), features, units, cell=cell, dtype=dtype,
                         reset_after=reset_after, bidirectional=bidirectional)

    paths, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(jax.random.key(seed + 7), len(paths))
    noisy = [leaf + 0.3 * jax.random.normal(key, leaf.shape, dtype)
             if "bias" in jax.tree_util.keystr(path) else leaf
             for (path, leaf), key in zip(paths, keys)]
    return jax.tree.unflatten(tree, noisy)


def _initial_state(cell, batch, units, dtype, seed=3):
    keys = iter(jax.random.split(jax.random.key(seed), 2 * len(units)))
    draw = lambda u: 0.5 * jax.random.normal(next(keys), (batch, u), dtype)  # noqa: E731
    return [(draw(u), draw(u)) if cell == "lstm" else draw(u) for u in units]


def _float64_problem(cell, reset_after, seed):
    """A float64 5 -> [21, 13] stack (column tiles of 16 plus tails in every gate block),
    inputs ``(9, 12, 5)`` (thread chunks of 4 and 5 rows), initial states and 9 lengths
    (one row empty, one a single step). Call under ``jax.enable_x64``."""
    units = [21, 13]
    params = _params(cell, reset_after, 5, units, jnp.float64)
    x = jax.random.normal(jax.random.key(seed), (9, 12, 5), jnp.float64)
    h0 = _initial_state(cell, 9, units, jnp.float64)
    return params, x, h0, np.array([12, 1, 0, 7, 11, 12, 5, 9, 3])


def _max_error(a, b):
    return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _hlo(fn, *args) -> str:
    return jax.jit(fn).lower(*args).as_text()


def _run(strategy, kw):
    """``(params, x, initial_state) -> stacked_rnn(...)`` with the options ``kw``."""
    return lambda p, x, s: stacked_rnn(p, x, strategy=strategy, initial_state=s, **kw)


def _assert_matches_reference_and_scan(kw, params, x, h0):
    """float64 outputs and final states (``kw`` asks for both) against the reference, and
    the gradients of sum(sin(y)) + sum(cos(state)^2) with respect to the weights, the
    input and the initial states against scan's, each to 1e-10."""
    ours = jax.jit(_run("cpu_native", kw))(params, x, h0)
    assert _max_error(ours, reference_rnn(params, x, initial_state=h0, **kw)) < 1e-10

    def grad(strategy):
        def loss(p, x, s):
            y, states = _run(strategy, kw)(p, x, s)
            return jnp.sum(jnp.sin(y)) + sum(jnp.sum(jnp.cos(leaf) ** 2)
                                             for leaf in jax.tree.leaves(states))
        return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, h0)
    assert _max_error(grad("cpu_native"), grad("scan")) < 1e-10


@pytest.mark.parametrize("cell,reset_after", GATED, ids=GATED_IDS)
def test_the_gated_kernels_are_in_the_lowered_program(cell, reset_after):
    params = _params(cell, reset_after, 3, [4, 3], jnp.float32)
    x = jnp.ones((2, 5, 3))
    run = lambda p, x: stacked_rnn(p, x, cell=cell, strategy="cpu_native")  # noqa: E731
    text = _hlo(run, params, x)
    # Inference: one call for the whole stack (its layers advance together), nothing stored.
    assert text.count("stackrnn_gated_infer_stack") == 1
    assert text.count("stackrnn_gated_infer") == 1 and "stackrnn_gated_train" not in text
    grad_text = _hlo(jax.grad(lambda p, x: run(p, x).sum()), params, x)
    assert grad_text.count("stackrnn_gated_train") == 2
    assert grad_text.count("stackrnn_gated_backward") == 2
    assert "stackrnn_gated_infer" not in grad_text


def test_the_simple_cell_infers_in_the_gated_kernel_and_trains_in_its_own():
    params = _params("simple", True, 3, [4, 3], jnp.float32)
    x = jnp.ones((2, 5, 3))
    run = lambda p, x: stacked_rnn(p, x, strategy="cpu_native")  # noqa: E731
    assert _hlo(run, params, x).count("stackrnn_gated_infer_stack") == 1
    grad_text = _hlo(jax.grad(lambda p, x: run(p, x).sum()), params, x)
    assert grad_text.count("stackrnn_simple_forward") == 2
    assert grad_text.count("stackrnn_simple_backward") == 2


SLOW = pytest.mark.slow


def test_a_stack_with_dropout_between_layers_infers_layer_by_layer():
    """Dropout between the layers (a training-mode forward pass) scales the layer below's
    outputs before the next reads them: the one-call stack does not apply, each layer has
    its own call."""
    params = _params("lstm", True, 3, [4, 3], jnp.float32)
    x = jnp.ones((2, 5, 3))
    text = _hlo(lambda p, x: stacked_rnn(p, x, cell="lstm", strategy="cpu_native", dropout=0.5,
                                         dropout_rng=jax.random.key(0)), params, x)
    assert "stackrnn_gated_infer_stack" not in text
    assert text.count("stackrnn_gated_infer") == 2


@pytest.mark.parametrize("cell,reset_after,padding", [
    ("lstm", True, "pre"), ("simple", True, "post"),
    pytest.param("gru", True, "pre", marks=SLOW), pytest.param("gru", False, "post", marks=SLOW)])
def test_final_state_only_inference_matches_the_reference(cell, reset_after, padding):
    """Without return_sequences the stack's inference kernel keeps only the final states
    (sequences = 0; the layers advance together, so none writes its states): float64
    final states against the reference, masked rows (one empty) and initial states
    included; the same model differentiated (the top layer's ys then not an output)
    against scan."""
    with jax.enable_x64(True):
        params, x, h0, lengths = _float64_problem(cell, reset_after, seed=5)
        kw = dict(cell=cell, lengths=lengths, padding=padding, return_state=True)
        text = _hlo(_run("cpu_native", kw), params, x, h0)
        calls = [line for line in text.splitlines() if "stackrnn_gated_infer" in line]
        assert len(calls) == 1 and "stackrnn_gated_infer_stack" in calls[0]
        assert "sequences = 0" in calls[0]
        _assert_matches_reference_and_scan(kw, params, x, h0)


@pytest.mark.parametrize("cell,reset_after", [("lstm", True), ("gru", False), ("simple", True)],
                         ids=["lstm", "gru-reset_before", "simple"])
def test_a_three_layer_stack_infers_in_one_call_like_the_reference(cell, reset_after):
    """Three layers of different widths in one inference call (the middle one reads the
    first's fresh state and feeds the third's): float64 outputs and every layer's final
    state against the reference, with masks and initial states."""
    with jax.enable_x64(True):
        units = [7, 5, 6]
        params = _params(cell, reset_after, 4, units, jnp.float64)
        x = jax.random.normal(jax.random.key(2), (5, 8, 4), jnp.float64)
        kw = dict(cell=cell, lengths=np.array([8, 3, 0, 5, 1]), padding="post",
                  initial_state=_initial_state(cell, 5, units, jnp.float64),
                  return_sequences=True, return_state=True)
        run = lambda p, x: stacked_rnn(p, x, strategy="cpu_native", **kw)  # noqa: E731
        assert _hlo(run, params, x).count("stackrnn_gated_infer_stack") == 1
        ours = jax.jit(run)(params, x)
        assert _max_error(ours, reference_rnn(params, x, **kw)) < 1e-10


@pytest.mark.parametrize("cell,reset_after,padding,activation", [
    ("lstm", True, "pre", "tanh"), ("gru", True, "post", "relu"), ("gru", False, "pre", "tanh"),
    pytest.param("lstm", True, "post", "relu", marks=SLOW),
    pytest.param("gru", True, "pre", "tanh", marks=SLOW),
    pytest.param("gru", False, "post", "relu", marks=SLOW)])
def test_float64_matches_the_reference_and_scan(cell, reset_after, padding, activation):
    """batch 9 -> thread chunks of 4 and 5 rows (one row tile each); units
    21 and 13 -> float64 column tiles of 16 plus tail columns in every gate block; some
    rows masked, one empty; initial states; outputs, every final state, gradients of the
    weights, the input and the initial states."""
    with jax.enable_x64(True):
        params, x, h0, lengths = _float64_problem(cell, reset_after, seed=1)
        kw = dict(cell=cell, lengths=lengths, padding=padding, activation=activation,
                  return_sequences=True, return_state=True)
        _assert_matches_reference_and_scan(kw, params, x, h0)


@pytest.mark.parametrize("cell,reset_after", GATED + [("simple", True)],
                         ids=GATED_IDS + ["simple"])
def test_float32_matches_the_float64_reference(cell, reset_after):
    """32 rows over the thread pool, 64 units (whole float32 tiles), T 60: the float32
    sigmoid and tanh stay within float32 rounding."""
    params = _params(cell, reset_after, 8, [64, 64], jnp.float32)
    x = jax.random.normal(jax.random.key(2), (32, 60, 8), jnp.float32)
    ours = jax.jit(lambda p, x: stacked_rnn(p, x, cell=cell, strategy="cpu_native",
                                            return_sequences=True))(params, x)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        want = reference_rnn(p64, np.asarray(x, np.float64), cell=cell, return_sequences=True)
    assert _max_error(ours, want) < 1e-5


@pytest.mark.parametrize("cell,reset_after", [
    ("lstm", True), ("gru", True), pytest.param("gru", False, marks=SLOW),
    pytest.param("simple", True, marks=SLOW)], ids=GATED_IDS + ["simple"])
def test_float32_partial_tiles_match_the_reference_and_scan(cell, reset_after):
    """float32 column panels of 64 cut short: units 40 and 23 leave one-vector tiles and
    single columns in the row matmuls (forward, and backward's dh and input gradient);
    batch 13 leaves single rows; masked rows. Outputs against the float64 reference,
    gradients against scan."""
    units = [40, 23]
    params = _params(cell, reset_after, 7, units, jnp.float32)
    x = jax.random.normal(jax.random.key(4), (13, 9, 7), jnp.float32)
    kw = dict(cell=cell, lengths=np.array([9, 3, 0, 9, 5, 8, 9, 1, 9, 7, 9, 2, 6]),
              return_sequences=True)
    ours = jax.jit(lambda p, x: stacked_rnn(p, x, strategy="cpu_native", **kw))(params, x)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        want = reference_rnn(p64, np.asarray(x, np.float64), **kw)
    assert _max_error(ours, want) < 1e-5

    def grad(strategy):
        def loss(p, x):
            return jnp.sum(jnp.sin(stacked_rnn(p, x, strategy=strategy, **kw)))
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
    assert _max_error(grad("cpu_native"), grad("scan")) < 1e-4


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_every_row_tile_size_matches_the_reference_and_scan(batch):
    """The row matmuls split a chunk's rows into near-equal tiles of up to 6 (AVX2) or 4
    (AVX-512) rows, and the weight gradients' output rows likewise; the other tests' batch
    sizes (9, 13, 32) leave tiles of 3 to 6 rows. Batches 1, 2 and 7 (one chunk: tiles
    of 1, 2, and 3 + 4 rows); 11 inputs and 17 units: weight-gradient blocks of 5 + 6
    and 5 + 6 + 6 rows (AVX2). float64, masked rows, outputs against the reference and
    gradients against scan."""
    with jax.enable_x64(True):
        params = _params("lstm", True, 11, [17, 17], jnp.float64)
        x = jax.random.normal(jax.random.key(5), (batch, 6, 11), jnp.float64)
        kw = dict(cell="lstm", lengths=np.array([6, 2, 0, 6, 5, 1, 4][:batch]),
                  return_sequences=True)
        ours = jax.jit(lambda p, x: stacked_rnn(p, x, strategy="cpu_native", **kw))(params, x)
        assert _max_error(ours, reference_rnn(params, x, **kw)) < 1e-10

        def grad(strategy):
            def loss(p, x):
                return jnp.sum(jnp.sin(stacked_rnn(p, x, strategy=strategy, **kw)))
            return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
        assert _max_error(grad("cpu_native"), grad("scan")) < 1e-10


@pytest.mark.parametrize("cell,reset_after", GATED, ids=GATED_IDS)
def test_weight_gradients_summed_over_several_blocks_match_scan(cell, reset_after):
    """The backward pass sums the weight gradients over blocks of about 64 rows: batch 32
    (chunks of at most 16 rows) and T 11 make blocks of 4 or more steps and a shorter
    last one; 19 units: ring rows of 57 or 76 gates plus their padding. float64, masked
    rows, gradients of the weights, the input and the initial states against scan."""
    with jax.enable_x64(True):
        units = [19, 19]
        params = _params(cell, reset_after, 6, units, jnp.float64)
        x = jax.random.normal(jax.random.key(8), (32, 11, 6), jnp.float64)
        h0 = _initial_state(cell, 32, units, jnp.float64)
        lengths = np.random.default_rng(0).integers(0, 12, size=32)
        kw = dict(cell=cell, lengths=lengths, return_sequences=True)

        def grad(strategy):
            def loss(p, x, s):
                ys = stacked_rnn(p, x, strategy=strategy, initial_state=s, **kw)
                return jnp.sum(jnp.sin(ys))
            return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, h0)
        assert _max_error(grad("cpu_native"), grad("scan")) < 1e-10


@pytest.mark.parametrize("time,padding", [(37, "pre"), (32, "post")])
def test_lstm_cell_states_recomputed_from_checkpoints_match_scan(time, padding):
    """The LSTM's stash keeps c every 16 steps (CHECKPOINT_STEPS) and the backward pass
    recomputes the others a block at a time: T 37 (two whole blocks and a short one) and
    T 32 (a checkpoint after the last step); lengths that end inside, at the edge of and
    just past a block, an empty row, masked steps at either end; initial states.
    float64 outputs and final states against the reference, gradients (the final c's
    included) against scan."""
    with jax.enable_x64(True):
        units = [21, 13]
        params = _params("lstm", True, 5, units, jnp.float64)
        x = jax.random.normal(jax.random.key(9), (9, time, 5), jnp.float64)
        h0 = _initial_state("lstm", 9, units, jnp.float64)
        lengths = np.array([time, 0, 1, 15, 16, 17, 31, 33, time - 1]).clip(0, time)
        kw = dict(cell="lstm", lengths=lengths, padding=padding, return_sequences=True,
                  return_state=True)
        _assert_matches_reference_and_scan(kw, params, x, h0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "simple"])
def test_weight_gradients_are_the_same_bits_every_call(cell):
    """Batch 96: six row chunks, more than the threads, so they finish in varying order;
    their shares of the weight gradients are summed in row order, so repeated calls give
    identical bits (added as the chunks finished, three or more chunks could round
    differently from call to call)."""
    params = _params(cell, True, 16, [48, 48], jnp.float32)
    x = jax.random.normal(jax.random.key(6), (96, 40, 16), jnp.float32)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(stacked_rnn(
        p, x, cell=cell, strategy="cpu_native", return_sequences=True))), argnums=(0, 1)))
    first = jax.tree.map(np.asarray, grad(params, x))
    for _ in range(12):
        jax.tree.map(np.testing.assert_array_equal, first, grad(params, x))


@pytest.mark.parametrize("cell,reset_after", [
    ("lstm", True), ("gru", True), pytest.param("gru", False, marks=SLOW)])
def test_gradients_by_finite_differences(cell, reset_after):
    with jax.enable_x64(True):
        params = _params(cell, reset_after, 3, [6], jnp.float64)
        x = jax.random.normal(jax.random.key(4), (5, 7, 3), jnp.float64)
        h0 = _initial_state(cell, 5, [6], jnp.float64)
        lengths = np.array([7, 3, 0, 6, 1])

        def loss(p, x, s):
            ys, states = stacked_rnn(p, x, cell=cell, strategy="cpu_native", lengths=lengths,
                                     initial_state=s, return_sequences=True, return_state=True)
            return jnp.sum(jnp.tanh(ys)) + sum(jnp.sum(leaf) for leaf in jax.tree.leaves(states))
        check_grads(loss, (params, x, h0), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("cell,reset_after", [
    ("gru", False), pytest.param("lstm", True, marks=SLOW), pytest.param("gru", True, marks=SLOW)])
def test_bidirectional_with_dropout_matches_scan(cell, reset_after):
    """Both directions (the backward one runs the kernel on the reversed sequence) and
    dropout between layers: outputs against the reference without dropout, gradients
    against scan with the same dropout masks."""
    with jax.enable_x64(True):
        params = _params(cell, reset_after, 4, [7, 5], jnp.float64, bidirectional=True)
        x = jax.random.normal(jax.random.key(5), (6, 9, 4), jnp.float64)
        kw = dict(cell=cell, lengths=np.array([9, 2, 0, 5, 9, 8]), padding="post",
                  return_sequences=True)
        ours = jax.jit(lambda p, x: stacked_rnn(p, x, strategy="cpu_native", **kw))(params, x)
        assert _max_error(ours, reference_rnn(params, x, **kw)) < 1e-10

        def grad(strategy):
            return jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(stacked_rnn(
                p, x, strategy=strategy, dropout=0.3, dropout_rng=jax.random.key(9), **kw))),
                argnums=(0, 1)))(params, x)
        assert _max_error(grad("cpu_native"), grad("scan")) < 1e-10
