"""Every strategy of ``stacked_rnn`` against the NumPy reference, plus its input checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from stackrnn_jax import STRATEGIES, init_params, stacked_rnn
from stackrnn_jax.reference import reference_rnn
from tests.helpers import CELLS, max_error

BATCH, TIME, FEATURES = 3, 7, 4
LENGTHS = np.array([7, 3, 0])  # full, partial and empty sequences
# "pallas" runs its kernels in Pallas interpret mode on a CPU: seconds of compile per
# configuration, too slow for this product of layouts; tests/test_pallas.py checks it
# (every cell, masks, directions, initial states, dropout) at small sizes.
PARITY_STRATEGIES = sorted(set(STRATEGIES) - {"pallas"})
# Checked here only with ``-m slow``: "parallel_structured" runs solver methods that
# tests/test_strategies_parallel.py checks in the default run (the SimpleRNN's "gain",
# the LSTM's "block"; the GRU's is "parallel_quasi"'s), and its eigendecompositions and
# blocks add ~10 s of compile per configuration.
SLOW_PARITY = {"parallel_structured"}
STRATEGY_PARAMS = [pytest.param(s, marks=pytest.mark.slow) if s in SLOW_PARITY else s
                   for s in PARITY_STRATEGIES]


def _problem(cell, units, bidirectional=False, dtype=jnp.float64, seed=0, **init_kw):
    key_p, key_x = jax.random.split(jax.random.PRNGKey(seed))
    params = init_params(key_p, FEATURES, units, cell=cell, bidirectional=bidirectional,
                         dtype=dtype, **init_kw)
    # Non-zero biases so that every bias term is exercised.
    params = jax.tree.map(lambda a: a + 0.1 * jnp.sin(jnp.arange(a.size).reshape(a.shape)), params)
    x = jax.random.normal(key_x, (BATCH, TIME, FEATURES), dtype)
    return params, x


@functools.lru_cache(maxsize=None)
def _jitted(**static):
    """One compiled function per configuration: both output modes and the states."""
    def run(params, x, lengths):
        full = stacked_rnn(params, x, lengths=lengths, return_sequences=True,
                           return_state=True, **static)
        return full, stacked_rnn(params, x, lengths=lengths, **static)
    return jax.jit(run)


# The default run covers every (cell, strategy) with these four layouts; the rest of the
# full product (units x direction x padding) runs with ``-m slow``.
FAST_LAYOUTS = {("1layer", False, None), ("3layers", False, "pre"),
                ("3layers", True, "post"), ("1layer", True, "pre")}
# The iterative solvers compile for 10-25 s per three-layer bidirectional stack; their
# other three fast layouts stay in the default run, where test_strategies_parallel.py
# also checks them with masks and gradients.
SLOW_FOR_SOLVERS = ("parallel", "parallel_quasi"), ("3layers", True, "post")


def _strategy_layouts():
    for strategy in PARITY_STRATEGIES:
        for name, units in (("1layer", (5,)), ("3layers", (5, 3, 4))):
            for bi in (False, True):
                for padding in (None, "post", "pre"):
                    layout = (name, bi, padding)
                    fast = (layout in FAST_LAYOUTS and strategy not in SLOW_PARITY
                            and not (strategy in SLOW_FOR_SOLVERS[0]
                                     and layout == SLOW_FOR_SOLVERS[1]))
                    yield pytest.param(strategy, name, units, bi, padding,
                                       id=f"{strategy}-{name}-{'bi' if bi else 'uni'}-{padding}",
                                       marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("strategy, name, units, bidirectional, padding",
                         list(_strategy_layouts()))
@pytest.mark.parametrize("cell", CELLS)
def test_float64_matches_reference(cell, strategy, name, units, bidirectional, padding):
    with jax.enable_x64(True):
        params, x = _problem(cell, list(units), bidirectional)
        lengths = None if padding is None else LENGTHS
        (sequences, states), last = _jitted(cell=cell, strategy=strategy,
                                            padding=padding or "post")(params, x, lengths)
        kw = dict(cell=cell, lengths=lengths, padding=padding or "post")
        ref_sequences, ref_states = reference_rnn(params, x, return_sequences=True,
                                                  return_state=True, **kw)
        assert sequences.dtype == jnp.float64
        assert max_error(sequences, ref_sequences) < 1e-10
        assert max_error(states, ref_states) < 1e-10
        assert max_error(last, reference_rnn(params, x, **kw)) < 1e-10


@pytest.mark.parametrize("strategy", STRATEGY_PARAMS)
@pytest.mark.parametrize("cell", CELLS)
def test_float32_matches_reference(cell, strategy):
    params, x = _problem(cell, [6, 5], bidirectional=(cell == "gru"), dtype=jnp.float32)
    (sequences, states), last = _jitted(cell=cell, strategy=strategy, padding="pre")(
        params, x, LENGTHS)
    kw = dict(cell=cell, lengths=LENGTHS, padding="pre")
    assert sequences.dtype == jnp.float32
    assert max_error((sequences, states),
                      reference_rnn(params, x, return_sequences=True, return_state=True,
                                    **kw)) < 1e-5
    assert max_error(last, reference_rnn(params, x, **kw)) < 1e-5


@pytest.mark.parametrize("cell", CELLS)
def test_initial_state_is_used(cell):
    with jax.enable_x64(True):
        params, x = _problem(cell, [5, 4])
        zero = stacked_rnn(params, x, cell=cell, return_state=True)[1]
        initial = jax.tree.map(lambda s: s + 0.3, zero)
        ours = stacked_rnn(params, x, cell=cell, initial_state=initial, lengths=LENGTHS,
                           return_state=True)
        ref = reference_rnn(params, x, cell=cell, initial_state=initial, lengths=LENGTHS,
                            return_state=True)
        assert max_error(ours, ref) < 1e-10
        # The zero-length sequence (index 2) ends where it started.
        assert max_error(jax.tree.map(lambda s: s[2], ours[1]),
                          jax.tree.map(lambda s: s[2], initial)) == 0


@pytest.mark.parametrize("cell", CELLS)
def test_padded_final_state_equals_unpadded(cell):
    with jax.enable_x64(True):
        params, x = _problem(cell, [5, 4])
        n = 4
        alone = stacked_rnn(params, x[:1, :n], cell=cell, return_state=True)
        right = jnp.zeros_like(x[:1]).at[:, :n].set(x[:1, :n])
        left = jnp.zeros_like(x[:1]).at[:, TIME - n:].set(x[:1, :n])
        for padded, padding in ((right, "post"), (left, "pre")):
            seqs, states = stacked_rnn(params, padded, cell=cell, lengths=np.array([n]),
                                       padding=padding, return_sequences=True, return_state=True)
            assert max_error(states, alone[1]) < 1e-12
            real = slice(0, n) if padding == "post" else slice(TIME - n, TIME)
            pad = slice(n, TIME) if padding == "post" else slice(0, TIME - n)
            assert float(jnp.abs(seqs[:, pad]).max()) == 0.0
            assert max_error(seqs[:, real][:, -1], alone[0]) < 1e-12


@pytest.mark.parametrize("cell", CELLS)
def test_variants_match_reference(cell):
    """relu activation, GRU without reset_after, LSTM without the unit forget bias, sum merge."""
    with jax.enable_x64(True):
        params, x = _problem(cell, [5, 5], bidirectional=True, merge="sum", reset_after=False,
                             unit_forget_bias=False)
        kw = dict(cell=cell, activation="relu", merge="sum", lengths=LENGTHS, return_state=True)
        assert max_error(stacked_rnn(params, x, **kw), reference_rnn(params, x, **kw)) < 1e-10
        if cell == "gru":
            assert params[0]["forward"]["bias"].shape == (15,)


def _loss_fn(cell, strategy, x, lengths, padding="post"):
    def loss(params, x=x):
        y = stacked_rnn(params, x, cell=cell, lengths=lengths, padding=padding,
                        strategy=strategy, return_sequences=True)
        return jnp.sum(jnp.sin(y))
    return loss


# A unidirectional stack reaches a strategy whole (wavefront and fused run its layers
# together); a bidirectional one one layer and direction at a time, the same path for
# every cell: the default run checks it on the LSTM, the other cells with ``-m slow``.
@pytest.mark.parametrize("strategies", [
    pytest.param(sorted(set(PARITY_STRATEGIES) - SLOW_PARITY), id="default"),
    pytest.param(sorted(SLOW_PARITY), id="slow-parity", marks=pytest.mark.slow)])
@pytest.mark.parametrize("cell, bidirectional", [
    *[(cell, False) for cell in CELLS], ("lstm", True),
    *[pytest.param(cell, True, marks=pytest.mark.slow) for cell in CELLS if cell != "lstm"]])
def test_gradients_of_every_strategy_equal_scan(cell, bidirectional, strategies):
    with jax.enable_x64(True):
        params, x = _problem(cell, [5, 4], bidirectional)
        grads = {s: jax.jit(jax.grad(_loss_fn(cell, s, x, LENGTHS, "pre"), argnums=(0, 1)))(
                     params, x) for s in ["scan", *strategies]}
        for strategy, g in grads.items():
            assert max_error(g, grads["scan"]) < 1e-10, strategy
        # Padded steps get no input gradient.
        assert float(jnp.abs(grads["scan"][1][2]).max()) == 0.0


@pytest.mark.parametrize("cell", CELLS)
def test_check_grads_numerically(cell):
    with jax.enable_x64(True):
        params, x = _problem(cell, [3, 2])
        loss = _loss_fn(cell, "scan", x[:, :4], np.array([4, 2, 1]))
        check_grads(jax.jit(loss), (params, x[:, :4]), order=1, modes=["rev"])


def test_jit_and_vmap_agree_with_eager():
    with jax.enable_x64(True):
        params, x = _problem("lstm", [5, 4])
        eager = stacked_rnn(params, x, cell="lstm", lengths=LENGTHS)
        jitted = jax.jit(lambda p, x, n: stacked_rnn(p, x, cell="lstm", lengths=n))
        assert max_error(jitted(params, x, LENGTHS), eager) < 1e-12
        # vmap over the batch: each call sees one (time, features) sequence.
        per_sequence = jax.vmap(lambda x, n: stacked_rnn(params, x, cell="lstm", lengths=n))
        assert max_error(per_sequence(x, LENGTHS), eager) < 1e-12


def test_bfloat16_compute_with_float32_params():
    params, x = _problem("gru", [6, 5], dtype=jnp.float32)
    full = stacked_rnn(params, x, cell="gru", lengths=LENGTHS)
    low = stacked_rnn(params, x, cell="gru", lengths=LENGTHS, compute_dtype=jnp.bfloat16)
    assert params[0]["kernel"].dtype == jnp.float32
    assert low.dtype == jnp.bfloat16
    assert float(jnp.abs(low.astype(jnp.float32) - full).max()) < 5e-2


def test_dropout_needs_a_key_and_is_reproducible():
    params, x = _problem("simple", [6, 6, 5], dtype=jnp.float32)
    run = jax.jit(functools.partial(stacked_rnn, cell="simple", dropout=0.5,
                                    return_sequences=True), static_argnames="strategy")
    without_key = run(params, x)
    assert max_error(without_key, stacked_rnn(params, x, cell="simple", return_sequences=True)) == 0
    key = jax.random.PRNGKey(3)
    a = run(params, x, dropout_rng=key)
    assert max_error(a, run(params, x, dropout_rng=key)) == 0
    assert max_error(a, without_key) > 1e-3
    # SLOW_PARITY share their dropout path (layer_by_layer) with a strategy checked here.
    for strategy in sorted(set(PARITY_STRATEGIES) - SLOW_PARITY):
        b = run(params, x, dropout_rng=key, strategy=strategy)
        assert max_error(a, b) < 1e-5, strategy


@pytest.mark.parametrize("call, message", [
    (lambda p, x: stacked_rnn(p, x[0, 0]),
     r"x: expected shape \(batch, time, features\).*got shape \(4,\)"),
    (lambda p, x: stacked_rnn(p, x[..., :3]),
     r"params\[0\]: kernel shape \(4, 5\) does not match the x features 3"),
    (lambda p, x: stacked_rnn(p, x, lengths=np.array([1, 2])), r"lengths: expected shape \(3,\)"),
    (lambda p, x: stacked_rnn(p, x, lengths=np.array([1, 2, 8])),
     r"lengths: expected values in \[0, 7\].*max 8"),
    (lambda p, x: stacked_rnn(p, x, lengths=np.array([1.0, 2.0, 3.0])),
     r"lengths: expected integers"),
    (lambda p, x: stacked_rnn(p, x, cell="transformer"), r"cell: unknown cell 'transformer'"),
    (lambda p, x: stacked_rnn(p, x, cell="lstm"),
     r"recurrent_kernel shape \(5, 5\) does not fit cell 'lstm'"),
    (lambda p, x: stacked_rnn(p, x, strategy="magic"), r"strategy: unknown strategy 'magic'"),
    (lambda p, x: stacked_rnn([], x),
     r"params: expected a non-empty list of layers, got zero layers"),
    (lambda p, x: stacked_rnn(p, x, padding="middle"),
     r"padding: expected one of \['post', 'pre'\]"),
    (lambda p, x: stacked_rnn(p, x, unroll=0), r"unroll: expected a positive int, got 0"),
    (lambda p, x: stacked_rnn(p, x, dropout=1.0), r"dropout: expected a rate in \[0, 1\)"),
    (lambda p, x: stacked_rnn(p, x, activation="gelu"), r"activation: unknown activation 'gelu'"),
    (lambda p, x: stacked_rnn(p, x, initial_state=[jnp.zeros((3, 5))]),
     r"initial_state: expected one state per layer \(2\), got 1"),
    (lambda p, x: stacked_rnn(p, x, initial_state=[jnp.zeros((3, 5)), jnp.zeros((2, 5))]),
     r"initial_state\[1\]: expected h of shape \(3, 5\)"),
    (lambda p, x: stacked_rnn(p, x[:, :0]), r"x: expected at least one timestep"),
    (lambda p, x: init_params(jax.random.PRNGKey(0), 4, []),
     r"units: expected at least one layer, got zero layers"),
    (lambda p, x: init_params(jax.random.PRNGKey(0), 4, [5, 0]), r"units: expected positive ints"),
])
def test_bad_input_raises_one_clear_value_error(call, message):
    params, x = _problem("simple", [5, 5], dtype=jnp.float32)
    with pytest.raises(ValueError, match=message):
        call(params, x)


def test_auto_is_the_default_strategy_everywhere():
    import inspect

    from stackrnn_jax.nn import SentimentClassifier, StackedRNN
    for function in (stacked_rnn, StackedRNN.__init__, SentimentClassifier.__init__):
        assert inspect.signature(function).parameters["strategy"].default == "auto"


def test_default_without_kernels_warns_once_per_process_and_matches_scan(monkeypatch):
    """No compiler: "auto" (the default) runs the SimpleRNN as scan_vjp, saying so once,
    however many traces follow (two here); an explicit ``strategy="scan"`` says nothing."""
    import warnings

    from stackrnn_jax import native
    monkeypatch.setattr(native, "available", lambda: (False, "no C++ compiler (test)"))
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    native.warn_unavailable.cache_clear()
    params, x = _problem("simple", [4, 3], dtype=jnp.float32)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scan = [stacked_rnn(params, x[:, :t], strategy="scan") for t in (7, 5)]
            assert not caught
            default = jax.jit(lambda p, x: stacked_rnn(p, x))   # a fresh function: new traces
            ours = [default(params, x[:, :t]) for t in (7, 5)]
            text = default.lower(params, x).as_text()
    finally:
        native.warn_unavailable.cache_clear()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "runs as scan_vjp" in messages[0], messages
    assert "no C++ compiler (test)" in messages[0]
    assert "stackrnn_simple" not in text
    assert max_error(ours, scan) < 1e-5
