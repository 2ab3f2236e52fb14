"""The ``"pallas"`` strategy: its kernels against the NumPy reference and ``"scan"``.

On a CPU the kernels run in Pallas interpret mode (the same kernels as XLA ops): correct
but seconds of compile per configuration, so each test folds several features into one
compiled function at small sizes (T <= 12, batch 5 or 9: rows that do not fill a
16-row block; units 3..20: padded to 16 or 32). On a GPU (``scripts/gpu_check.sh``,
stage ``pallas``) the same tests run the Triton-compiled kernels.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import ClosedJaxpr, Jaxpr
from jax.test_util import check_grads

from stackrnn_jax import stacked_rnn
from stackrnn_jax.cells import make_cell
from stackrnn_jax.kernels import recurrence
from stackrnn_jax.reference import reference_rnn
from stackrnn_jax.strategies import auto

FEATURES = 4


def _max_error(ours, theirs):
    pairs = zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)
    return max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
               for a, b in pairs)


def _problem(cell, units, batch, time, *, bidirectional=False, dtype=jnp.float64, seed=0,
             reset_after=True):
    """Random parameters (Keras layout, non-zero biases) and input, built in NumPy: no
    eager JAX op to compile per shape."""
    rng = np.random.default_rng(seed)
    gates = make_cell(cell).gates

    def layer(width, n):
        bias_shape = (2, gates * n) if cell == "gru" and reset_after else (gates * n,)
        return {"kernel": rng.normal(0, 0.6, (width, gates * n)),
                "recurrent_kernel": rng.normal(0, 0.6 / np.sqrt(n), (n, gates * n)),
                "bias": rng.normal(0, 0.2, bias_shape)}

    params, width = [], FEATURES
    for n in units:
        params.append({"forward": layer(width, n), "backward": layer(width, n)}
                      if bidirectional else layer(width, n))
        width = 2 * n if bidirectional else n
    x = rng.normal(0, 1, (batch, time, FEATURES))
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), (params, x))


def _initial_state(cell, units, batch, bidirectional, dtype):
    """Non-zero initial states of every layer (and direction)."""
    def one(n, shift):
        h = 0.3 * jnp.cos(jnp.arange(batch * n, dtype=dtype).reshape(batch, n) + shift)
        return (h, 0.5 * h) if cell == "lstm" else h
    return [(one(n, i), one(n, i + 7)) if bidirectional else one(n, i)
            for i, n in enumerate(units)]


# One case per cell variant; between them: masks post and pre and none, bidirectional,
# initial states, 1-2 layers, rows 5 and 9, units 3..20, a 32-row block, relu, and a loss
# on the outputs only or the final states only (the other cotangent a symbolic zero).
CASES = {
    "simple-tanh": dict(cell="simple", units=[5, 20], batch=9, time=12, padding="post",
                        initial=True, options={"block_rows": 32}),
    "simple-relu": dict(cell="simple", units=[6], batch=5, time=7, padding="pre",
                        bidirectional=True, activation="relu", loss_on="sequences"),
    "lstm": dict(cell="lstm", units=[4], batch=5, time=7, padding="pre",
                 bidirectional=True, initial=True, loss_on="states"),
    "gru-reset-after": dict(cell="gru", units=[3, 17], batch=9, time=8, padding="post"),
    "gru-reset-before": dict(cell="gru", units=[5], batch=5, time=7, padding=None,
                             bidirectional=True, initial=True, reset_after=False),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_float64_forward_matches_reference_and_gradients_match_scan(name):
    case = CASES[name]
    cell, units, batch, time = case["cell"], case["units"], case["batch"], case["time"]
    bidirectional = case.get("bidirectional", False)
    with jax.enable_x64(True):
        params, x = _problem(cell, units, batch, time, bidirectional=bidirectional,
                             reset_after=case.get("reset_after", True))
        # Lengths from 0 to the full time, in no order.
        lengths = None if case["padding"] is None else (5 * np.arange(batch)) % (time + 1)
        initial = (_initial_state(cell, units, batch, bidirectional, jnp.float64)
                   if case.get("initial") else None)
        kw = dict(cell=cell, lengths=lengths, padding=case["padding"] or "post",
                  initial_state=initial, activation=case.get("activation", "tanh"))

        def run(strategy, options, params, x):
            return stacked_rnn(params, x, return_sequences=True, return_state=True,
                               strategy=strategy, strategy_options=options, **kw)

        def loss(strategy, options, params, x):
            sequences, states = run(strategy, options, params, x)
            on = case.get("loss_on", "both")
            return ((jnp.sum(jnp.sin(sequences)) if on != "states" else 0.0)
                    + (sum(jnp.sum(s ** 2) for s in jax.tree.leaves(states))
                       if on != "sequences" else 0.0))

        @functools.partial(jax.jit, static_argnums=(0,))
        def both(strategy, params, x):
            options = case.get("options") if strategy == "pallas" else None
            grads = jax.grad(functools.partial(loss, strategy, options), argnums=(0, 1))
            return run(strategy, options, params, x), grads(params, x)

        (sequences, states), grads = both("pallas", params, x)
        ref_sequences, ref_states = reference_rnn(params, x, return_sequences=True,
                                                  return_state=True, **kw)
        assert sequences.dtype == jnp.float64
        assert _max_error(sequences, ref_sequences) < 1e-10
        assert _max_error(states, ref_states) < 1e-10
        if lengths is not None:  # padded steps emit exact zeros
            steps = np.arange(time)[None, :, None]
            padded = (steps >= lengths[:, None, None] if case["padding"] == "post"
                      else steps < time - lengths[:, None, None])
            assert float(jnp.abs(jnp.where(padded, sequences, 0.0)).max()) == 0.0
        assert _max_error(grads, both("scan", params, x)[1]) < 1e-10


def test_check_grads_numerically():
    """Finite differences of the GRU without reset_after (the longest reverse step)."""
    with jax.enable_x64(True):
        params, x = _problem("gru", [3], 5, 4, reset_after=False)

        def loss(params, x):
            y = stacked_rnn(params, x, cell="gru", lengths=np.array([4, 2, 1, 0, 3]),
                            padding="pre", strategy="pallas", return_sequences=True)
            return jnp.sum(jnp.sin(y))

        check_grads(jax.jit(loss), (params, x), order=1, modes=["rev"])


def test_float32_lstm_matches_reference():
    params, x = _problem("lstm", [6], 5, 9, dtype=jnp.float32)
    kw = dict(cell="lstm", lengths=np.array([9, 4, 0, 1, 8]), padding="pre")
    ours = jax.jit(lambda p, x: stacked_rnn(p, x, strategy="pallas", return_sequences=True,
                                            return_state=True, **kw))(params, x)
    assert ours[0].dtype == jnp.float32
    assert _max_error(ours, reference_rnn(params, x, return_sequences=True, return_state=True,
                                          **kw)) < 1e-5


def test_bfloat16_inputs_and_weights_with_float32_state():
    params, x = _problem("gru", [6], 5, 9, dtype=jnp.float32)
    kw = dict(cell="gru", lengths=np.array([9, 4, 0, 1, 8]), return_sequences=True)

    def loss(params, x, **extra):
        return jnp.sum(stacked_rnn(params, x, **kw, **extra).astype(jnp.float32) ** 2)

    @jax.jit
    def run(params, x):
        low = functools.partial(loss, strategy="pallas", compute_dtype=jnp.bfloat16)
        return (stacked_rnn(params, x, strategy="pallas", compute_dtype=jnp.bfloat16, **kw),
                jax.grad(low)(params, x), jax.grad(loss)(params, x))  # the last: scan, float32

    low, low_grads, full_grads = run(params, x)
    assert low.dtype == jnp.bfloat16
    assert jax.tree.leaves(low_grads)[0].dtype == jnp.float32  # params stay float32
    assert _max_error(low, reference_rnn(params, x, **kw)) < 5e-2
    scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(full_grads))
    assert _max_error(low_grads, full_grads) < 5e-2 * scale


def test_dropout_between_layers_equals_scan():
    params, x = _problem("simple", [6, 5], 5, 7, dtype=jnp.float32)
    run = jax.jit(functools.partial(stacked_rnn, cell="simple", dropout=0.5,
                                    return_sequences=True), static_argnames="strategy")
    key = jax.random.PRNGKey(3)
    # "scan" applies the dropout (tests/test_stack.py), so an equal result applied it too.
    assert _max_error(run(params, x, dropout_rng=key, strategy="pallas"),
                      run(params, x, dropout_rng=key, strategy="scan")) < 1e-5


def _primitives(jaxpr):
    """Primitive names of ``jaxpr`` and its sub-jaxprs, not looking inside kernels."""
    for eqn in jaxpr.eqns:
        yield eqn
        if eqn.primitive.name == "pallas_call":
            continue
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(sub, ClosedJaxpr):
                    yield from _primitives(sub.jaxpr)
                elif isinstance(sub, Jaxpr):
                    yield from _primitives(sub)


def test_one_kernel_per_layer_and_direction_and_no_loop_over_time():
    params, x = _problem("simple", [4, 3], 5, 7, bidirectional=True, dtype=jnp.float32)
    kw = dict(cell="simple", lengths=np.array([7, 3, 0, 5, 6]), strategy="pallas",
              return_sequences=True)
    forward = jax.make_jaxpr(lambda p, x: stacked_rnn(p, x, **kw))(params, x)
    train = jax.make_jaxpr(jax.grad(lambda p, x: jnp.sum(stacked_rnn(p, x, **kw))))(params, x)
    for jaxpr, kernels in ((forward, 4), (train, 8)):  # 2 layers x 2 directions (x fwd, bwd)
        eqns = list(_primitives(jaxpr.jaxpr))
        calls = [e for e in eqns if e.primitive.name == "pallas_call"]
        assert len(calls) == kernels
        assert not {e.primitive.name for e in eqns} & {"while", "scan"}
        # Interpret mode exactly where there is no GPU to compile for.
        assert all(bool(e.params["interpret"]) == (jax.default_backend() != "gpu")
                   for e in calls)


@pytest.mark.parametrize("cell, reset_after", [("simple", True), ("lstm", True),
                                               ("gru", True), ("gru", False)])
def test_kernels_lower_to_triton(cell, reset_after):
    """The compiled (GPU) path lowers to Triton here too: power-of-two tiles, supported ops.

    Only the Pallas-to-Triton lowering runs on a CPU; Triton's own compilation needs the
    GPU (``scripts/gpu_check.sh``, stage ``pallas``).
    """
    params, x = _problem(cell, [5], 5, 3, reset_after=reset_after, dtype=jnp.bfloat16)

    def loss(params, x):
        y = stacked_rnn(params, x, cell=cell, lengths=np.array([3, 1, 0, 2, 3]),
                        strategy="pallas", strategy_options={"interpret": False},
                        return_sequences=True)
        return jnp.sum(y.astype(jnp.float32))

    lowered = jax.jit(jax.grad(loss)).trace(params, x).lower(lowering_platforms=("cuda",))
    assert lowered.as_text().count("__gpu$xla.gpu.triton") == 2  # forward and reverse kernel


@pytest.mark.parametrize("options, dtype, message", [
    ({"block_rows": 12}, jnp.float32, r"block_rows must be a power of two >= 16"),
    ({"block_rows": 8}, jnp.float32, r"block_rows must be a power of two >= 16"),
    ({"interpret": "yes"}, jnp.float32, r"interpret must be None, True or False"),
    ({"num_warps": 3}, jnp.float32, r"num_warps must be a power of two"),
    (None, jnp.float16, r"dtype float16 is not supported; use float32, float64 or bfloat16"),
])
def test_bad_options_and_dtypes_raise_one_clear_value_error(options, dtype, message):
    params, x = _problem("simple", [5], 5, 3, dtype=dtype)
    with pytest.raises(ValueError, match=message):
        stacked_rnn(params, x, strategy="pallas", strategy_options=options)


def test_bad_shapes_raise_before_any_kernel():
    params, x = _problem("simple", [5], 5, 3, dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"kernel shape \(4, 5\) does not match the x features 3"):
        stacked_rnn(params, x[..., :3], strategy="pallas")
    # The kernels' own entry checks their padded layout.
    config = recurrence.Config(cell=make_cell("lstm"))
    w, carry = jnp.zeros((4, 16, 16)), (jnp.zeros((16, 16)),) * 2
    with pytest.raises(ValueError, match=r"pallas kernels: units 12 is not a power of two"):
        recurrence.forward(config, jnp.zeros((4, 12, 12)), None, (jnp.zeros((16, 12)),) * 2,
                           jnp.zeros((3, 16, 4, 12)), None, save=False)
    with pytest.raises(ValueError, match=r"rows 24 are not a multiple of block_rows 16"):
        recurrence.forward(config, w, None, carry, jnp.zeros((3, 24, 4, 16)), None, save=False)
    with pytest.raises(ValueError, match=r"mask shape \(3, 16\), expected \(3, 16, 1\)"):
        recurrence.forward(config, w, None, carry, jnp.zeros((3, 16, 4, 16)),
                           jnp.ones((3, 16), jnp.int32), save=False)


def test_auto_never_picks_pallas_without_gpu_figures():
    """A rule for "pallas" must cite measured GPU figures (scripts/gpu_check.sh, stage
    pallas); until they exist, "auto" keeps to the measured strategies."""
    assert all(rule.strategy != "pallas" for rule in auto.RULES)
